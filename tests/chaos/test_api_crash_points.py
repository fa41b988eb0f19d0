"""Every state-changing API request killed right after each of its Redis operations, then the
client's retry and reconcile passes: nothing is half done, nothing leaks.

A Lambda (or a local worker) serving a request can be SIGKILLed at any line: timeout, OOM. Here
the request goes through the real app (``local/gateway.py``) on the real redis-server; its Redis
operations (commands, pipelines, EVALSHA: each one write to a connection) are counted, and for
each N the request is sent again on the same state with the process dying right after its N-th
operation (every later one raises ``Died``, which no handler catches, as a SIGKILLed process runs
no ``finally``). A new process (new services) then sends what the client sends when it got no
answer (the same request again), the pools are reconciled, and the invariants are checked:
every VM in one state, the service's running set the pools' running VMs, each owner's holdings
those it has, tokens whole, VM changes applied whole or not at all.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import re
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import pytest
import redis
import redis.connection

from chalicelib.api.routes import ROUTES
from chalicelib.api.vms import RETURNED
from chalicelib.auth.base import canonical_user
from chalicelib.config import parse
from chalicelib.store import Quota, connect
from chalicelib.store.connection import ReplyLost
from chalicelib.store.keys import quota_owner
from chalicelib.store.pool_overrides import SETTINGS
from chalicelib.store.store import UNCONFIRMED_SECONDS
from chalicelib.timestamps import day_of
from local.redis_server import RedisServer
from tests.api.test_input_bounds import EXPERIMENTAL_CONFIG
from tests.harness import (
    Harness,
    HarnessFactory,
    Reply,
    assert_consistent,
    basic,
    redis_state,
    restore_state,
    save_state,
)

CONFIG = EXPERIMENTAL_CONFIG.replace(":pools:", ":auth:\n  provider: dummy\n  admins: [root]\n:pools:", 1).replace(
    ":config:\n", ":config:\n  max_tags_per_vm: 2\n", 1)
"""The API tests' three dummy pools, with dummy auth (``root`` an administrator), the
experimental routes (/ondemandvm, /config/*, /poolreset) and two tags a VM."""

ALICE, ROOT = basic("alice", "alice-pw"), basic("root", "root-pw")


class Died(BaseException):
    """The process was killed here: not an Exception, so nothing in the service catches it."""


@contextmanager
def redis_operations(die_after: int | None = None, between: tuple[int, Callable[[], object]] | None = None,
                     ) -> Iterator[list[int]]:
    """Count what this thread's request writes to Redis (one per command, pipeline or script
    run) in ``[0]``. With ``die_after``, every write after that many raises Died (nothing reaches
    Redis). With ``between`` (N, action), ``action`` runs whole in another thread (another
    caller, its writes not counted) right after the N-th write, before the next."""
    sent, fired = [0], [between is None]
    original = redis.connection.AbstractConnection.send_packed_command
    counting = threading.get_ident()

    def run_between() -> None:
        assert between is not None
        fired[0] = True
        errors: list[BaseException] = []

        def other() -> None:
            try:
                between[1]()
            except BaseException as error:  # noqa: BLE001 - re-raised below
                errors.append(error)

        worker = threading.Thread(target=other)
        worker.start()
        worker.join()
        if errors:
            raise errors[0]

    def sending(connection: object, command: object, check_health: bool = True) -> None:
        if threading.get_ident() == counting:
            if not fired[0] and between is not None and sent[0] == between[0]:
                run_between()
            if die_after is not None and sent[0] >= die_after:
                raise Died(f"after Redis operation {die_after}")
            sent[0] += 1
        original(connection, command, check_health)  # type: ignore[arg-type]

    redis.connection.AbstractConnection.send_packed_command = sending  # type: ignore[method-assign]
    try:
        yield sent
        if not fired[0]:
            run_between()  # after the request's last write
    finally:
        redis.connection.AbstractConnection.send_packed_command = original  # type: ignore[method-assign]


@dataclass
class World:
    """The state every request starts from: pools full, alice with a token and a VM (with a
    snapshot), an on-demand request of hers open, root with a token."""

    alice_token: str
    root_token: str
    bob_token: str
    mine: str
    snapshot_id: str
    request_id: str
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Case:
    method: str
    target: str
    """With ``{mine}``, ``{snapshot}``, ``{request}``, ``{alice_token}``, ``{root_token}`` filled
    from the World."""
    body: Any = None
    who: str = "alice"
    """alice / bob / root: their token; alice-basic, root-basic: their Basic credentials;
    anonymous: nothing."""
    done: int | None = None
    """The retry's answer when the killed request had done its work: the VM returned already
    (404), the request id taken (409), the setting already so (200)."""

    def headers(self, world: World) -> dict[str, str]:
        return {"alice": {"X-AUTH-TOKEN": world.alice_token}, "root": {"X-AUTH-TOKEN": world.root_token},
                "bob": {"X-AUTH-TOKEN": world.bob_token}, "alice-basic": ALICE, "root-basic": ROOT,
                "anonymous": {}}[self.who]

    def path(self, world: World) -> str:
        return self.target.format(mine=world.mine, snapshot=world.snapshot_id, request=world.request_id,
                                  alice_token=world.alice_token, root_token=world.root_token)

    def send(self, harness: Harness, world: World) -> Reply:
        return harness.request(self.method, self.path(world), self.body, self.headers(world))


CASES: dict[str, Case] = {
    "checkout_body": Case("POST", "/api/v3/vm", {"pool1": 1, "pool2": 1}),
    "checkout_path": Case("POST", "/api/v3/vm/pool2+pool3"),
    "checkout_anonymous": Case("POST", "/api/v3/vm/pool1", who="anonymous"),
    "checkout_fallback": Case("POST", "/api/v3/vm?ondemand=true", {"pool3": 2}),
    "return": Case("DELETE", "/api/v3/vm/{mine}", done=404),
    "modify_all": Case("PUT", "/api/v3/vm/{mine}", {"tags": {"project": "crash"}, "lifetime": 5, "disk": 8}),
    "modify_tags": Case("PUT", "/api/v3/vm/{mine}", {"tags": {"project": "crash", "owner": "alice"}}),
    "disk": Case("POST", "/api/v3/vm/{mine}/disk/8"),
    "disk_beaker": Case("POST", "/api/v3/api/v1/vm/{mine}/disk/8"),
    "snapshot": Case("POST", "/api/v3/vm/{mine}/snapshot"),
    "revert": Case("POST", "/api/v3/vm/{mine}/snapshot/{snapshot}"),
    "ondemand_create": Case("POST", "/api/v3/ondemandvm", {"pool2": 2}),
    "ondemand_create_id": Case("POST", "/api/v3/ondemandvm", {"pool2": 1, "request_id": "chosen-1"}, done=409),
    "ondemand_create_path": Case("POST", "/api/v3/ondemandvm/pool2+pool3"),
    "ondemand_show": Case("GET", "/api/v3/ondemandvm/{request}"),
    "ondemand_delete": Case("DELETE", "/api/v3/ondemandvm/{request}"),
    "token_create": Case("POST", "/api/v3/token", who="alice-basic"),
    "token_delete": Case("DELETE", "/api/v3/token/{alice_token}", who="alice-basic", done=404),
    "poolreset": Case("POST", "/api/v3/poolreset", {"pool1": "1"}, who="root"),
    "poolsize": Case("POST", "/api/v3/config/poolsize", {"pool1": "3"}, who="root", done=200),
    "poolsize_clear": Case("DELETE", "/api/v3/config/poolsize/pool2", who="root", done=200),
    "pooltemplate": Case("POST", "/api/v3/config/pooltemplate", {"pool1": "templates/pool1-new"}, who="root", done=200),
    "pooltemplate_clear": Case("DELETE", "/api/v3/config/pooltemplate/pool1", who="root"),
    "clonetarget": Case("POST", "/api/v3/config/clonetarget", {"pool1": "cluster1"}, who="root", done=200),
    "clonetarget_clear": Case("DELETE", "/api/v3/config/clonetarget/pool1", who="root"),
}


def build_world(harness: Harness) -> World:
    harness.fill()
    alice_token = harness.new_token("alice", "alice-pw")
    root_token = harness.new_token("root", "root-pw")
    bob_token = harness.new_token("bob", "bob-pw")
    mine = harness.checkout("pool1", alice_token)
    reply = harness.post(f"/api/v3/vm/{mine}/snapshot", headers={"X-AUTH-TOKEN": alice_token})
    assert reply.status == 202, reply.raw
    snapshot_id = reply.json[mine]["snapshot"]
    reply = harness.post("/api/v3/config/poolsize", {"pool2": "1"}, headers={"X-AUTH-TOKEN": root_token})
    assert reply.status == 201, reply.raw
    reply = harness.post("/api/v3/ondemandvm", {"pool3": 1}, headers={"X-AUTH-TOKEN": alice_token})
    assert reply.status == 201, reply.raw
    request_id = reply.json["request_id"]
    harness.run_passes()
    assert snapshot_id in harness.describe(mine)["snapshots"]
    return World(alice_token, root_token, bob_token, mine, snapshot_id, request_id)


# --- the invariants ------------------------------------------------------------------------------


def vm_records(harness: Harness) -> dict[str, dict[str, str]]:
    client = harness.client
    return {key.removeprefix(harness.store.keys.vm("")): client.hgetall(key)
            for key in client.scan_iter(harness.store.keys.vm("*")) if client.type(key) == "hash"}


def assert_whole(harness: Harness, where: str) -> None:
    """The invariants of the whole service (after passes: pass_completed)."""
    keys = harness.store.keys
    for pool in harness.config.pool_names:
        try:
            assert_consistent(harness, pool)
        except AssertionError as error:
            raise AssertionError(f"{where}: {error}") from None
    running = set().union(*(harness.hosts(pool, "running") for pool in harness.config.pool_names))
    counted = set(harness.client.zrange(keys.running, 0, -1))
    assert counted == running, f"{where}: service running set {counted} != pools' running VMs {running}"
    # Tokens: every token record is in its user's index, but one a login made and never counted
    # (pending: lua/token_confirm.lua never ran, so it was never handed out, and counts for
    # nothing); every index entry has its record.
    client = harness.client
    users = set()
    for key in client.scan_iter(keys.token("*")):
        user, pending = client.hmget(key, "user", "pending")
        assert user, f"{where}: token record {key} without a user"
        users.add(user)
        assert pending or client.sismember(keys.user_tokens(user), key.removeprefix(keys.token(""))), \
            f"{where}: token {key} not in {user}'s index"
        assert not (pending and client.sismember(keys.user_tokens(user), key.removeprefix(keys.token("")))), \
            f"{where}: pending token {key} counted"
    for user in ("alice", "root", *users):
        for token_hash in client.smembers(keys.user_tokens(user)):
            assert client.exists(keys.token(token_hash)), f"{where}: {user}'s index names a token that is gone"
        counted = set(client.zrange(keys.user_token_times(user), 0, -1))
        assert counted == client.smembers(keys.user_tokens(user)), f"{where}: {user}'s token times {counted}"
    # Quota: every VM alice checked out and has running is held by her (else she could pass her
    # quota); an on-demand request's VMs are held through the request.
    for host, record in vm_records(harness).items():
        if record.get("state") == "running" and record.get("token_user") == "alice" and not record.get("request"):
            assert host in holdings(harness, "alice"), f"{where}: alice's {host} is not in her holdings"


def assert_requests_end(harness: Harness, where: str) -> None:
    """Past their time to live and a few passes on: no on-demand request is open any more, none
    is listed as open, and no VM runs for a request that did not end ready."""
    harness.clock.advance(harness.config.service.ondemand_request_ttl * 60 + 1)
    harness.run_passes()
    keys, client = harness.store.keys, harness.client
    states = {key.removeprefix(keys.ondemand("")): client.hget(key, "state")
              for key in client.scan_iter(keys.ondemand("*")) if client.type(key) == "hash"}
    assert "open" not in states.values(), f"{where}: requests still open: {states}"
    listed = set(client.zrange(keys.ondemand_open_requests, 0, -1))
    for pool in harness.config.pool_names:
        listed |= set(client.zrange(keys.ondemand_open(pool), 0, -1))
    assert not listed, f"{where}: ended requests listed as open: {listed}"
    for host, record in vm_records(harness).items():
        request = record.get("request")
        if request and record.get("state") in ("running", "pending", "ready"):
            assert states.get(request) == "ready" and record.get("state") == "running", \
                f"{where}: {host} is {record.get('state')} for request {request} ({states.get(request)})"


def holdings(harness: Harness, user: str) -> set[str]:
    """The VMs the user's quota counts as held ('vm:<host>' entries of the holdings set)."""
    owner = quota_owner(canonical_user(user), "")
    key = Quota(owner, 0, 0, ()).holdings_key(harness.store.keys)
    return {member[3:] for member in harness.client.zrange(key, 0, -1) if member.startswith("vm:")}


def killed(case: Case, harness: Harness, world: World) -> bool:
    """Send the request; whether the process died before it answered."""
    try:
        case.send(harness, world)
    except Died:
        return True
    return False


def checked_out(reply: Reply) -> set[str]:
    """The short hostnames a checkout's answer hands out."""
    if reply.status != 200 or not isinstance(reply.json, dict):
        return set()
    names: set[str] = set()
    for answer in reply.json.values():
        if isinstance(answer, dict) and "hostname" in answer:
            hostnames = answer["hostname"]
            names |= {name.split(".")[0] for name in ([hostnames] if isinstance(hostnames, str) else hostnames)}
    return names


def checked_out_by(harness: Harness, user: str) -> set[str]:
    """The VMs running for ``user`` ("" for anonymous callers) out of checkouts (not on-demand)."""
    return {host for host, record in vm_records(harness).items()
            if record.get("state") == "running" and record.get("token_user", "") == user and not record.get("request")}


# --- the test ------------------------------------------------------------------------------------


@pytest.fixture
def make_service(make_harness: HarnessFactory) -> Callable[[], Harness]:
    config = parse(CONFIG)

    def make() -> Harness:
        harness = make_harness(config, headers={"Content-Type": "application/json"})
        for script in vars(harness.store.scripts).values():
            script.load_into(harness.client)  # every script loaded: an operation count is the same each run
        return harness

    return make


def saved_world(make_service: Callable[[], Harness], client: redis.Redis,
                setup: Callable[[Harness, World], None] | None = None) -> tuple[World, Callable[[], Harness]]:
    """The World built once (then ``setup``), and what puts it back (Redis and the clock) for the
    next run, in a new process (new services)."""
    first = make_service()
    world = build_world(first)
    if setup is not None:
        setup(first, world)
    saved, start = save_state(client), first.clock.now()

    def reset() -> Harness:
        restore_state(client, saved)
        first.clock.advance(start - first.clock.now())
        return make_service()

    return world, reset


@pytest.mark.parametrize("name", CASES)
def test_a_request_killed_after_any_redis_operation_leaves_nothing_half_done(
        make_service: Callable[[], Harness], redis_client: redis.Redis, name: str) -> None:
    case = CASES[name]
    world, reset = saved_world(make_service, redis_client)
    case.send(reset(), world)  # loads every script the route runs into Redis
    healthy = reset()
    with redis_operations() as sent:
        expected = case.send(healthy, world)
    total = sent[0]
    assert expected.status < 500, expected.raw
    user = {"alice": "alice", "anonymous": ""}.get(case.who)
    for die_after in range(total + 1):
        # The last: every operation done, the answer lost on its way (the client's timeout).
        where = f"{case.method} {case.target} killed after Redis operation {die_after} of {total}"
        dying = reset()
        before = checked_out_by(dying, user) if user is not None else set()
        with redis_operations(die_after):
            assert killed(case, dying, world) == (die_after < total), f"{where}: it answered"
        after_crash = make_service()  # a new process: nothing of the killed one's memory
        check_not_half_done(name, after_crash, world, where)
        retry = case.send(after_crash, world)
        check_counted_once(name, after_crash, where)
        handed_out = checked_out(retry)
        if retry.status == 503 and case.target.startswith("/api/v3/vm") and case.method == "POST":
            # The killed checkout took the last ready VMs, unconfirmed: a pass gives them back
            # once their deadline passes, and the client's next try (beaker's) gets them.
            after_crash.clock.advance(UNCONFIRMED_SECONDS + 1)
            after_crash.run_passes()
            retry = case.send(after_crash, world)
            handed_out = checked_out(retry)
        assert retry.status in (expected.status, case.done), f"{where}: the retry answered {retry.status} {retry.raw!r}"
        after_crash.clock.advance(UNCONFIRMED_SECONDS + 1)
        after_crash.run_passes()
        assert_whole(after_crash, where)
        assert_requests_end(after_crash, where)
        if user is not None and case.method == "POST" and checked_out(expected):
            # What the caller holds is what it was told, but for a checkout answered whose
            # answer was lost (docs/reliability.md: the caller cannot know it).
            lost = checked_out_by(after_crash, user) - before - handed_out
            assert die_after == total or not lost, f"{where}: {user or 'anonymous'} holds {lost} unknowingly"


def tag_counted(harness: Harness) -> int:
    """How many times today's tag statistics counted the tag ``project: crash``."""
    day = harness.store.keys.daily_tags(day_of(harness.clock.now()))
    return int(harness.client.hget(day, "tag:project:crash") or 0)


def check_not_half_done(name: str, harness: Harness, world: World, where: str) -> None:
    """What the killed request left before any retry: a VM change applied whole or not at all,
    its tags counted in the day's statistics exactly when they were set."""
    record = harness.client.hgetall(harness.store.keys.vm(world.mine))
    if name == "modify_all":
        tasks = harness.client.lrange(harness.store.keys.vm_tasks(world.mine), 0, -1)
        disk_queued = any(json.loads(task)["kind"] == "disk" for task in tasks)
        changed = (record.get("tag:project") == "crash", record.get("lifetime") == "5", disk_queued)
        assert changed in ((False, False, False), (True, True, True)), f"{where}: half applied {changed}"
    if name in ("modify_all", "modify_tags"):
        tagged = record.get("tag:project") == "crash"
        assert tag_counted(harness) == int(tagged), f"{where}: tag set {tagged}, counted {tag_counted(harness)}"


def check_counted_once(name: str, harness: Harness, where: str) -> None:
    """After the client's retry: the tags of the one change asked for are counted once (before,
    a retry after the statistics' answer was lost counted them twice: /summary skewed)."""
    if name in ("modify_all", "modify_tags"):
        assert tag_counted(harness) == 1, f"{where}: the tag counted {tag_counted(harness)} times"


# --- an answer lost after Redis ran the operation -------------------------------------------------


@contextmanager
def reply_lost_at(operation: int, timed_out: bool = False) -> Iterator[list[int]]:
    """Count this thread's Redis operations as ``redis_operations`` does; the ``operation``-th
    one (0-based) reaches Redis and runs, and its connection is then reset before the client
    reads the answer (``ReplyLost``, as a connection reset when the reply comes). ``timed_out``:
    the reply comes after the socket timeout instead (``redis.TimeoutError``, the connection
    still open: production's client writes there what the caller asked to follow a lost reply,
    ``written_behind_a_lost_reply``). ``[0]`` holds the operations sent."""
    sent = [0]
    connection_class = redis.connection.AbstractConnection
    send, read = connection_class.send_packed_command, connection_class.read_response
    counting, losing = threading.get_ident(), set()

    def sending(connection: Any, command: object, check_health: bool = True) -> None:
        send(connection, command, check_health)
        if threading.get_ident() == counting:
            if sent[0] == operation:
                losing.add(id(connection))
            sent[0] += 1

    def reading(connection: Any, *args: Any, **kwargs: Any) -> Any:
        if id(connection) not in losing:
            return read(connection, *args, **kwargs)
        losing.discard(id(connection))
        read(connection, *args, **kwargs)  # Redis ran it and answered...
        if timed_out:  # ...too late: redis-py closes the connection unless told not to
            if kwargs.get("disconnect_on_error", True):
                connection.disconnect()
            raise redis.TimeoutError("Timeout reading from socket (the test's)")
        connection.disconnect()  # ...and the answer never arrives
        raise ReplyLost("Connection reset by peer (the test's)")

    connection_class.send_packed_command = sending  # type: ignore[method-assign]
    connection_class.read_response = reading  # type: ignore[method-assign]
    try:
        yield sent
    finally:
        connection_class.send_packed_command = send  # type: ignore[method-assign]
        connection_class.read_response = read  # type: ignore[method-assign]


def overrides(harness: Harness) -> dict[str, dict[str, str]]:
    """The pools' runtime settings (POST /config/*, /poolreset): a reset is the time it was made."""
    return {setting: harness.client.hgetall(harness.store.keys.pool_override(setting)) for setting in SETTINGS}


def made(harness: Harness, world: World) -> dict[str, Any]:
    """What the requests made that a retry could make twice: each user's tokens, the tasks
    queued on alice's VM, the pools' runtime settings (a reset made again later drains the VMs
    cloned since the first), and (after the passes that give back what no caller confirmed) the
    VMs running for alice and her on-demand requests not failed."""
    keys, client = harness.store.keys, harness.client
    before_passes = {
        "tokens": {user: client.scard(keys.user_tokens(user)) for user in ("alice", "bob", "root")},
        "tasks": [json.loads(task)["kind"] for task in client.lrange(keys.vm_tasks(world.mine), 0, -1)],
        "overrides": overrides(harness),
    }
    harness.clock.advance(UNCONFIRMED_SECONDS + 1)
    harness.run_passes()
    requests = [client.hget(key, "state") for key in client.scan_iter(keys.ondemand("*"))
                if client.type(key) == "hash"]
    return {**before_passes, "vms": len(checked_out_by(harness, "alice")),
            "requests": sum(1 for state in requests if state != "failed")}


@pytest.fixture
def make_production_service(make_harness: HarnessFactory, redis_server: RedisServer) -> Callable[[], Harness]:
    """``make_service`` on the client the service builds (``connect``: a command whose answer
    was lost is never sent again; redis-py's own client sends it again)."""
    config = parse(CONFIG)
    redis_config = dataclasses.replace(config.redis, server="127.0.0.1", port=redis_server.port)

    def make() -> Harness:
        harness = make_harness(config, client=connect(redis_config), headers={"Content-Type": "application/json"})
        for script in vars(harness.store.scripts).values():
            script.load_into(harness.client)
        return harness

    return make


FOLLOWED_UP = ("checkout_body", "checkout_fallback", "ondemand_create", "token_create", "token_delete", "disk",
               "modify_all", "poolreset", "poolsize_clear")
"""Cases whose requests write something behind a reply that times out (a checkout's release, an
on-demand request's end, store/settle.py's undo, a login attempt's undo), or settle it on another
connection while the late one may still be on its way (the admin's changes): the timeout's path
differs from a reset's there only."""


@pytest.mark.parametrize(("name", "how"), [(name, "reset") for name in CASES] +
                         [(name, "timeout") for name in FOLLOWED_UP])
def test_a_request_whose_redis_answer_is_lost_is_made_once(
        make_production_service: Callable[[], Harness], redis_client: redis.Redis, name: str, how: str) -> None:
    """Each Redis operation of the request in turn runs and its answer is lost (the connection
    reset as the reply comes, or the reply late past the socket timeout). The request is answered
    as if it had arrived, or 503 and the retry the 503 asks for makes it: either way it is made
    once (before, POST /token made two tokens, a disk or snapshot two tasks, POST /poolreset reset
    the pool twice: store/settle.py). A 503 from an administrator's change made none (before,
    POST /config/poolsize answered 503 for a size set)."""
    case, make_service = CASES[name], make_production_service
    world, reset = saved_world(make_service, redis_client)
    case.send(reset(), world)  # loads every script the route runs into Redis
    healthy = reset()
    before = overrides(healthy)
    with redis_operations() as sent:
        expected = case.send(healthy, world)
    total, once = sent[0], made(healthy, world)
    for operation in range(total):
        where = f"{case.method} {case.target}, the answer of Redis operation {operation} of {total} lost ({how})"
        service = reset()
        with reply_lost_at(operation, timed_out=how == "timeout"):
            first = case.send(service, world)
        answer = first
        if first.status != 503 and case.who == "root":  # as made, with what it removed (the answer kept)
            assert first.json == expected.json, f"{where}: answered {first.raw!r}, not {expected.raw!r}"
        if first.status == 503:
            # Else its retry made it again: a reset, again later, drains the VMs cloned since.
            assert overrides(service) == before, f"{where}: answered 503, and changed the pools' settings"
            answer = case.send(make_service(), world)  # the retry the 503 asks for
            if answer.status == 503 and case.target.startswith("/api/v3/vm") and case.method == "POST":
                service.clock.advance(UNCONFIRMED_SECONDS + 1)  # the last ready VMs taken, unconfirmed
                service.run_passes()
                answer = case.send(service, world)
        assert answer.status in (expected.status, case.done), f"{where}: answered {answer.status} {answer.raw!r}"
        assert made(service, world) == once, f"{where}: answered {first.status}"


def test_every_state_changing_route_is_killed_at_every_step() -> None:
    """A route added that changes state is added to CASES."""
    sent = [(case.method, case.target.removeprefix("/api/v3").split("?")[0]) for case in CASES.values()]
    for route in ROUTES:
        pattern = re.compile("^" + re.sub(r"\\{[^}]+\\}", "[^/]+", re.escape(route.path)) + "$")
        if route.method != "GET":
            assert any(method == route.method and pattern.match(target) for method, target in sent), route.name


# --- the second request of a race, between any two of the first's operations ---------------------


def disk_and_tag(harness: Harness, world: World) -> tuple[bool, bool]:
    """Whether the VM in use has a disk queued, and the tag ``project``."""
    tasks = harness.client.lrange(harness.store.keys.vm_tasks(world.mine), 0, -1)
    record = harness.client.hgetall(harness.store.keys.vm(world.mine))
    return any(json.loads(task)["kind"] == "disk" for task in tasks), "tag:project" in record


def whole_change(harness: Harness, world: World, first: Reply, second: Any) -> None:
    """A PUT with a disk and a tag: both done (200) or neither (a 4xx)."""
    done = (True, True) if first.status == 200 else (False, False)
    assert disk_and_tag(harness, world) == done, (first.status, first.raw)


def one_owner(harness: Harness, world: World, first: Reply, second: Any) -> None:
    """Two callers for the last VM: one has it, and it is recorded as his; the other a 503."""
    assert sorted([first.status, second.status]) == [200, 503], (first.raw, second.raw)
    (winner,) = [reply for reply in (first, second) if reply.status == 200]
    (host,) = checked_out(winner)
    user = "alice" if winner is first else "bob"
    assert harness.client.hget(harness.store.keys.vm(host), "token_user") == user


def returned_stays_returned(harness: Harness, world: World, first: Reply, second: Any) -> None:
    """The VM returned is not running, whatever the other request did meanwhile."""
    assert harness.state_of(world.mine) != "running"


def no_check(harness: Harness, world: World, first: Reply, second: Any) -> None:
    return None


def returned_for_both(harness: Harness, world: World, first: Reply, second: Any) -> None:
    """The owner's return sent twice at once (a client's retry while the first is under way): the
    VM is returned, and both are told so (vmfloaty lists a VM whose DELETE is not ok as "Unable to
    delete", exit 1), as a retry after the first answered is."""
    assert (first.status, second.status) == (200, 200), (first.raw, second.raw)
    assert harness.state_of(world.mine) == "completed"


def changed_once(harness: Harness, world: World, first: Reply, second: Any) -> None:
    """The same change sent twice at once: one caller made it (201), the other found it made (200)."""
    assert sorted([first.status, second.status]) == [200, 201], (first.raw, second.raw)


@dataclass(frozen=True)
class ReconcilePass:
    """A reconcile pass over ``pool`` as the second of a race (the scheduler's, not a caller's)."""

    pool: str
    method: str = "a pass over"

    @property
    def target(self) -> str:
        return self.pool

    def send(self, harness: Harness, world: World) -> None:
        harness.reconcile(self.pool)


@dataclass(frozen=True)
class ForgottenAndTaken:
    """An ended on-demand request forgotten (the service keeps its newest requests only, and a
    record's time to live ends), then its id taken by bob's new request: the race's second step."""

    request_id: str
    method: str = "forgotten and taken by bob:"

    @property
    def target(self) -> str:
        return self.request_id

    def send(self, harness: Harness, world: World) -> Reply:
        keys = harness.store.keys
        harness.client.delete(keys.ondemand(self.request_id), keys.ondemand_vms(self.request_id))
        reply = harness.post("/api/v3/ondemandvm", {"pool2": 1, "request_id": self.request_id},
                             headers={"X-AUTH-TOKEN": world.bob_token})
        assert reply.status == 201, reply.raw
        return reply


def others_request_untouched(harness: Harness, world: World, first: Reply, second: Any) -> None:
    """Alice deleting her ended request again never ends bob's, which took its id meanwhile."""
    assert first.status in (200, 403, 404), first.raw
    assert harness.client.hget(harness.store.keys.ondemand("ended-1"), "state") == "open", first.raw


def lifetime_honoured(harness: Harness, world: World, first: Reply, second: Reply | None) -> None:
    """A lifetime extended (200) keeps the VM running; one refused (404) was ended first."""
    assert first.status in (200, 404), first.raw
    state = harness.state_of(world.mine)
    assert (state == "running") == (first.status == 200), (first.raw, state)


def lifetime_ended(harness: Harness, world: World) -> None:
    """The VM in use past its lifetime (2 hours), no pass having looked yet."""
    harness.clock.advance(2 * 3600 + 1)


def ondemand_building(harness: Harness, world: World) -> None:
    """An on-demand request of alice's in pool2 with its clone started and done, not delivered."""
    reply = harness.post("/api/v3/ondemandvm", {"pool2": 1, "request_id": "racing"},
                         headers={"X-AUTH-TOKEN": world.alice_token})
    assert reply.status == 201, reply.raw
    harness.reconcile("pool2")
    harness.clock.advance(1)


def ondemand_ended(harness: Harness, world: World) -> None:
    """An on-demand request of alice's with an id she chose, deleted (ended)."""
    headers = {"X-AUTH-TOKEN": world.alice_token}
    reply = harness.post("/api/v3/ondemandvm", {"pool2": 1, "request_id": "ended-1"}, headers=headers)
    assert reply.status == 201, reply.raw
    reply = harness.delete("/api/v3/ondemandvm/ended-1", headers=headers)
    assert reply.status == 200, reply.raw


def returned_by_its_owner_only(bob_first: bool) -> Callable[[Harness, World, Reply, Any], None]:
    """Alice and bob each return alice's VM at once: hers is returned (200), his refused (403, or
    404 once it was returned: he may learn no more), whichever ran first."""

    def check(harness: Harness, world: World, first: Reply, second: Any) -> None:
        bobs, alices = (first, second) if bob_first else (second, first)
        assert alices.status == 200, alices.raw
        assert bobs.status in (403, 404), bobs.raw
        record = harness.store.get_vm(world.mine)
        assert record is not None and record.state == "completed" and record.reason == RETURNED, record

    return check


def tagged_as_answered(put_first: bool) -> Callable[[Harness, World, Reply, Any], None]:
    """A tag put while the VM is returned: the VM returned (200) whatever the order, and the tag
    on its record exactly when the PUT answered 200 (its 404 changed nothing)."""

    def check(harness: Harness, world: World, first: Reply, second: Any) -> None:
        put, returned = (first, second) if put_first else (second, first)
        assert returned.status == 200 and put.status in (200, 404), (returned.raw, put.raw)
        record = harness.client.hgetall(harness.store.keys.vm(world.mine))
        assert record.get("state") == "completed", record
        assert ("tag:project" in record) == (put.status == 200), (put.raw, record)

    return check


def tasks_as_answered(kind: str) -> Callable[[Harness, World, Reply, Any], None]:
    """Two tasks of ``kind`` asked at once: as many queued as were answered 202 (or 200, a PUT),
    none for a request refused, and each snapshot id answered queued."""

    def check(harness: Harness, world: World, first: Reply, second: Any) -> None:
        replies = [reply for reply in (first, second) if reply is not None]
        assert all(reply.status in (200, 202) for reply in replies), [reply.raw for reply in replies]
        tasks = [json.loads(task) for task in harness.client.lrange(harness.store.keys.vm_tasks(world.mine), 0, -1)]
        queued = [task for task in tasks if task["kind"] == kind]
        assert len(queued) == len(replies), (tasks, [reply.raw for reply in replies])
        if kind == "snapshot":
            answered = {reply.json[world.mine]["snapshot"] for reply in replies}
            assert {task["snapshot"] for task in queued} == answered, (queued, answered)

    return check


def deleted_for_both(harness: Harness, world: World, first: Reply, second: Any) -> None:
    """The owner's DELETE /ondemandvm/<id> sent twice at once: both ok, the request deleted."""
    assert (first.status, second.status) == (200, 200), (first.raw, second.raw)
    assert harness.client.hget(harness.store.keys.ondemand(world.request_id), "state") == "deleted"


def hidden_from_bob(bob_first: bool) -> Callable[[Harness, World, Reply, Any], None]:
    """Bob asks for alice's request while it changes: a 403, never its hostnames."""

    def check(harness: Harness, world: World, first: Reply, second: Any) -> None:
        bobs = first if bob_first else second
        assert bobs.status == 403, bobs.raw

    return check


def kept_by_its_user(harness: Harness, world: World, first: Reply, second: Any) -> None:
    """A checkout while the pool is emptied or its template changes: a VM handed out stays its
    user's through the passes that drain the pool (never drained, never handed out again); and one
    cloned from the old template only when the checkout had taken it before the change ran."""
    handed_out = checked_out(first)
    template = harness.pool("pool1").template
    for host in handed_out:
        assert host in world.extra["running_before_change"] or harness.store.get_vm(host).template == template, \
            f"{host} of the old template handed out after the change"
    harness.run_passes()
    for host in handed_out:
        assert harness.state_of(host) == "running", host
    assert not handed_out & set(harness.ready("pool1")), "a VM in use is ready again"


@dataclass(frozen=True)
class PoolChange:
    """An administrator's change of pool1 as the race's second step, noting which VMs were in use
    (checked out, confirmed or not) as it began."""

    case: Case

    @property
    def method(self) -> str:
        return self.case.method

    @property
    def target(self) -> str:
        return self.case.target

    def send(self, harness: Harness, world: World) -> Reply:
        world.extra["running_before_change"] = harness.hosts("pool1", "running")
        return self.case.send(harness, world)


def no_race_setup(harness: Harness, world: World) -> None:
    return None


DISK_IN_A_PUT = Case("PUT", "/api/v3/vm/{mine}", {"disk": 8})
"""`floaty modify --disk 8`."""

Race = tuple[Case, "Case | ReconcilePass | ForgottenAndTaken | PoolChange",
             Callable[[Harness, World, Reply, Any], None]]

RACES: dict[str, Race] = {
    "disk_and_tag_while_tags_fill": (
        Case("PUT", "/api/v3/vm/{mine}", {"disk": 8, "tags": {"project": "a"}}),
        Case("PUT", "/api/v3/vm/{mine}", {"tags": {"owner": "b", "url": "c"}}, who="anonymous"), whole_change),
    "last_vm_two_callers": (Case("POST", "/api/v3/vm/pool3"), Case("POST", "/api/v3/vm/pool3", who="bob"), one_owner),
    "lifetime_while_returned": (Case("PUT", "/api/v3/vm/{mine}", {"lifetime": 40}), CASES["return"],
                                returned_stays_returned),
    "returned_while_lifetime": (CASES["return"], Case("PUT", "/api/v3/vm/{mine}", {"lifetime": 40}),
                                returned_stays_returned),
    "disk_while_returned": (CASES["disk"], CASES["return"], returned_stays_returned),
    "returned_twice": (CASES["return"], CASES["return"], returned_for_both),
    "checkout_while_token_deleted": (CASES["checkout_body"], CASES["token_delete"], no_check),
    "ondemand_while_deleted": (CASES["ondemand_show"], CASES["ondemand_delete"], no_check),
    "checkout_while_pool_reset": (CASES["checkout_anonymous"], CASES["poolreset"], no_check),
    "poolsize_while_cleared": (CASES["poolsize"], Case("DELETE", "/api/v3/config/poolsize/pool1", who="root"),
                               no_check),
    "poolsize_set_twice": (CASES["poolsize"], CASES["poolsize"], changed_once),
    "poolsize_cleared_twice": (CASES["poolsize_clear"], CASES["poolsize_clear"], changed_once),
    "lifetime_extended_while_reaped": (Case("PUT", "/api/v3/vm/{mine}", {"lifetime": 40}), ReconcilePass("pool1"),
                                       lifetime_honoured),
    "ondemand_deleted_while_delivered": (Case("DELETE", "/api/v3/ondemandvm/racing"), ReconcilePass("pool2"),
                                         no_check),
    "checkout_while_pass": (CASES["checkout_body"], ReconcilePass("pool1"), no_check),
    "ondemand_deleted_again_while_its_id_is_taken": (Case("DELETE", "/api/v3/ondemandvm/ended-1"),
                                                     ForgottenAndTaken("ended-1"), others_request_untouched),
    "returned_by_bob_while_returned": (Case("DELETE", "/api/v3/vm/{mine}", who="bob"), CASES["return"],
                                       returned_by_its_owner_only(bob_first=True)),
    "returned_while_bob_returns_it": (CASES["return"], Case("DELETE", "/api/v3/vm/{mine}", who="bob"),
                                      returned_by_its_owner_only(bob_first=False)),
    "tags_while_returned": (Case("PUT", "/api/v3/vm/{mine}", {"tags": {"project": "late"}}, who="anonymous"),
                            CASES["return"], tagged_as_answered(put_first=True)),
    "returned_while_tagged": (CASES["return"], Case("PUT", "/api/v3/vm/{mine}", {"tags": {"project": "late"}},
                                                    who="anonymous"), tagged_as_answered(put_first=False)),
    "snapshot_while_returned": (CASES["snapshot"], CASES["return"], returned_stays_returned),
    "revert_while_returned": (CASES["revert"], CASES["return"], returned_stays_returned),
    "returned_while_disk": (CASES["return"], CASES["disk"], returned_stays_returned),
    "disk_twice": (CASES["disk"], CASES["disk"], tasks_as_answered("disk")),
    "disk_in_a_put_twice": (DISK_IN_A_PUT, DISK_IN_A_PUT, tasks_as_answered("disk")),
    "snapshot_twice": (CASES["snapshot"], CASES["snapshot"], tasks_as_answered("snapshot")),
    "ondemand_deleted_twice": (CASES["ondemand_delete"], CASES["ondemand_delete"], deleted_for_both),
    "ondemand_shown_to_bob_while_deleted": (Case("GET", "/api/v3/ondemandvm/{request}", who="bob"),
                                            CASES["ondemand_delete"], hidden_from_bob(bob_first=True)),
    "ondemand_deleted_while_bob_looks": (CASES["ondemand_delete"], Case("GET", "/api/v3/ondemandvm/{request}",
                                                                        who="bob"), hidden_from_bob(bob_first=False)),
    "ondemand_shown_to_bob_while_delivered": (Case("GET", "/api/v3/ondemandvm/racing", who="bob"),
                                              ReconcilePass("pool2"), hidden_from_bob(bob_first=True)),
    "checkout_while_pool_emptied": (CASES["checkout_anonymous"],
                                    PoolChange(Case("POST", "/api/v3/config/poolsize", {"pool1": "0"}, who="root")),
                                    kept_by_its_user),
    "checkout_while_template_changed": (CASES["checkout_anonymous"], PoolChange(CASES["pooltemplate"]),
                                        kept_by_its_user),
}
RACE_SETUP: dict[str, Callable[[Harness, World], None]] = {
    "lifetime_extended_while_reaped": lifetime_ended, "ondemand_deleted_while_delivered": ondemand_building,
    "ondemand_deleted_again_while_its_id_is_taken": ondemand_ended,
    "ondemand_shown_to_bob_while_delivered": ondemand_building}
"""What a race's world needs besides the World: its VM past its lifetime, a request being built."""


@pytest.mark.parametrize("name", RACES)
def test_a_second_request_between_any_two_operations_of_the_first(
        make_service: Callable[[], Harness], redis_client: redis.Redis, name: str) -> None:
    first_case, second_case, check = RACES[name]
    world, reset = saved_world(make_service, redis_client, RACE_SETUP.get(name, no_race_setup))
    first_case.send(reset(), world)  # loads every script the route runs into Redis
    healthy = reset()
    with redis_operations() as sent:
        first_case.send(healthy, world)
    total = sent[0]
    for between in range(total + 1):
        where = (f"{second_case.method} {second_case.target} after operation {between} of {total} of "
                 f"{first_case.method} {first_case.target}")
        harness = reset()
        answers: list[Reply | None] = []
        second_request = functools.partial(lambda h, out: out.append(second_case.send(h, world)), harness, answers)
        with redis_operations(between=(between, second_request)):
            first = first_case.send(harness, world)
        (second,) = answers
        assert first.status != 500 and (second is None or second.status != 500), f"{where}: {first.raw!r} {second!r}"
        try:
            check(harness, world, first, second)
        except AssertionError as error:
            raise AssertionError(f"{where}: {error}") from None
        harness.clock.advance(UNCONFIRMED_SECONDS + 1)
        harness.run_passes()
        assert_whole(harness, where)
        assert_requests_end(harness, where)


# --- a token deleted while a request made with it is under way ------------------------------------

TOKEN_CHANGES = [name for name, case in CASES.items() if case.who in ("alice", "root") and case.method != "GET"]
"""Every state change made with a token."""
TOKEN_KEYS = ("token:", "user:", "ratelimit:", "login:", "dircheck:")
"""The keys of tokens and of who called (a request's token use, its rate): not the state it changes."""


def state_besides_tokens(harness: Harness) -> dict[str, Any]:
    prefix = harness.store.keys.prefix
    return {key: value for key, value in redis_state(harness.client).items()
            if not key.removeprefix(prefix).startswith(TOKEN_KEYS)}


@pytest.mark.parametrize("name", TOKEN_CHANGES)
def test_no_change_lands_once_its_token_is_deleted(
        make_service: Callable[[], Harness], redis_client: redis.Redis, name: str) -> None:
    """``DELETE /token/<t>`` between any two Redis operations of a request made with the token:
    when nothing had changed yet as the delete answered, nothing changes afterwards either, and
    the request is a 401 (it authenticated before the delete; its change landed after)."""
    case = CASES[name]
    deleting = Case("DELETE", f"/api/v3/token/{{{case.who}_token}}", who=f"{case.who}-basic")
    world, reset = saved_world(make_service, redis_client)
    case.send(reset(), world)  # loads every script the route runs into Redis
    healthy = reset()
    untouched = state_besides_tokens(healthy)
    with redis_operations() as sent:
        case.send(healthy, world)
    total = sent[0]
    changes = state_besides_tokens(healthy) != untouched  # some change nothing (a setting as it is)
    for between in range(total + 1):
        where = f"{case.method} {case.target}: its token deleted after operation {between} of {total}"
        harness = reset()
        seen: dict[str, Any] = {}

        def delete_token(harness: Harness = harness, seen: dict[str, Any] = seen) -> None:
            seen["before"] = state_besides_tokens(harness)
            seen["reply"] = deleting.send(harness, world)

        with redis_operations(between=(between, delete_token)):
            first = case.send(harness, world)
        assert seen["reply"].status == 200, f"{where}: the delete answered {seen['reply'].raw!r}"
        if seen["before"] == untouched:
            after = state_besides_tokens(harness)
            changed = sorted(key for key in set(after) | set(untouched) if after.get(key) != untouched.get(key))
            assert not changed, f"{where}: {changed} changed after the delete ({first.status} {first.raw!r})"
            assert first.status == 401 or not changes, f"{where}: answered {first.status} {first.raw!r}"
