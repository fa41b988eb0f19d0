"""The second request of a race, between callers of distinct identities each served by a process
of its own (its own Services: its own production Redis client, its own caches), as concurrent
Lambdas serve them. Each race runs in both orders, then at once (threads released by a barrier)
round after round, on the real redis-server; each check is what a caller is told and what the
store holds afterwards. (The deterministic interleavings, the second request between any two
Redis operations of the first, are tests/chaos/test_api_crash_points.py.)"""

from __future__ import annotations

import threading
from typing import Any, Callable, Iterator

import pytest

import app as chalice_app
from chalicelib.api.vms import RETURNED
from chalicelib.config import build
from chalicelib.store.vm_tasks import VMTaskStore, in_flight
from local.redis_server import RedisServer
from tests.auth_api.documents import OTHER_POOL, POOL, document
from tests.chaos.test_api_crash_points import holdings, redis_operations
from tests.harness import Harness, HarnessFactory, Reply, assert_consistent, at_once, basic
from tests.support import production_client

ROUNDS = 50
ORDERS = ("first", "second", "together")
"""The first caller's request answered before the second's is sent, the reverse, and both at once."""

_serving = threading.local()


@pytest.fixture
def processes(make_api: HarnessFactory, redis_server: RedisServer,
              monkeypatch: pytest.MonkeyPatch) -> Callable[[dict[str, Any], int], list[Harness]]:
    """``processes(doc, n)``: n processes of one service on the test's Redis and clock. A request
    sent through ``sent_by`` is served by its process's Services (the app keeps each thread's
    request apart: chalicelib/api/chalice_app.RequestLocalChalice)."""
    shared = chalice_app.services
    monkeypatch.setattr(chalice_app, "services", lambda: getattr(_serving, "services", None) or shared())

    def make(doc: dict[str, Any], count: int) -> list[Harness]:
        config = build(doc)
        return [make_api(doc, client=production_client(config.redis, redis_server.port)) for _ in range(count)]

    return make


def sent_by(process: Harness, method: str, target: str, body: Any = None,
            headers: dict[str, str] | None = None) -> Callable[[], Reply]:
    """The request as ``process`` serves it."""

    def send() -> Reply:
        _serving.services = process.services
        try:
            return process.request(method, target, body, headers)
        finally:
            del _serving.services

    return send


def passed_by(process: Harness, pool: str) -> Callable[[], None]:
    """A reconcile pass over ``pool`` run by ``process`` (a reconcile Lambda of its own)."""
    return lambda: process.reconcile(pool) and None


def raced(order: str, first: Callable[[], Any], second: Callable[[], Any]) -> tuple[Any, Any]:
    """The two sent in ``order``; their answers as (first's, second's)."""
    if order == "first":
        answer = first()
        return answer, second()
    if order == "second":
        answer = second()
        return first(), answer
    answers = at_once(first, second)
    return answers[0], answers[1]


def rounds() -> Iterator[tuple[int, str]]:
    """Each order once first, then the races at once."""
    yield 0, "first"
    yield 1, "second"
    for number in range(2, ROUNDS + 2):
        yield number, "together"


def token(process: Harness, user: str) -> dict[str, str]:
    return {"X-AUTH-TOKEN": process.new_token(user, f"{user}-pw")}


def hostname_of(reply: Reply, name: str = POOL) -> str:
    return str(reply.json[name]["hostname"]).split(".")[0]


def raced_with_its_token_delete(order: str, number: int, sender: Harness, deleting: Harness, method: str,
                                target: str, body: Any = None) -> tuple[Reply, tuple[Any, ...]]:
    """Alice's request sent by ``sender`` with a new token of hers, raced in ``order`` with her
    ``DELETE`` of that token by ``deleting`` (always a 200): the request's answer, and what to
    print when an assert fails."""
    headers = token(sender, "alice")
    reply, deleted = raced(order, sent_by(sender, method, target, body, headers=headers),
                           sent_by(deleting, "DELETE", f"/api/v3/token/{headers['X-AUTH-TOKEN']}",
                                   headers=basic("alice", "alice-pw")))
    where = (number, order, reply.raw, deleted.raw)
    assert deleted.status == 200, where
    return reply, where


def undone_with_a_new_token(deleting: Harness, method: str, target: str) -> None:
    """Alice undoes what a won race made (``method target``) with a token of hers made for it,
    then deletes that token, each a 200."""
    other = token(deleting, "alice")
    assert sent_by(deleting, method, target, headers=other)().status == 200
    assert sent_by(deleting, "DELETE", f"/api/v3/token/{other['X-AUTH-TOKEN']}",
                   headers=basic("alice", "alice-pw"))().status == 200


def held(process: Harness, user: str) -> set[str]:
    """The VMs the user's quota counts: its holdings that still run (lua/quota.lua drops the
    others lazily, while counting)."""
    return {host for host in holdings(process, user) if process.state_of(host) == "running"}


def assert_returned_once(process: Harness, host: str, owner: str) -> None:
    """The VM returned by its user, counted by nothing that counts VMs in use."""
    record = process.store.get_vm(host)
    assert record is not None and record.state == "completed" and record.reason == RETURNED, record
    assert host not in process.hosts(POOL, "running")
    assert process.client.zscore(process.store.keys.running, host) is None, "still counted running"
    assert host not in held(process, owner), f"still held by {owner}"
    assert_consistent(process, POOL, pass_completed=False)


# --- a VM returned by its owner while another user changes it -------------------------------------

CHANGES: dict[str, tuple[str, str, Any]] = {
    "lifetime": ("PUT", "/api/v3/vm/{host}", {"lifetime": 40}),
    "tags": ("PUT", "/api/v3/vm/{host}", {"tags": {"project": "bobs"}}),
    "disk in a PUT": ("PUT", "/api/v3/vm/{host}", {"disk": 8}),
    "disk": ("POST", "/api/v3/vm/{host}/disk/8", None),
    "snapshot": ("POST", "/api/v3/vm/{host}/snapshot", None),
}


@pytest.mark.parametrize("change", CHANGES)
def test_a_vm_returned_by_its_owner_while_another_user_changes_it(processes, change: str) -> None:
    """Alice returns her VM while bob changes it. Her return is a 200 whatever the order. Bob may
    tag any running VM (vmpooler's contract): his tag is on the record exactly when he was told
    200; anything else of his is refused, 403 (another user's VM) or 404 (no longer running),
    and nothing he asked for lands on the returned VM: its lifetime stays, no task is queued."""
    alices, bobs = processes(document({"provider": "dummy"}), 2)
    alice, bob = token(alices, "alice"), token(bobs, "bob")
    method, target, body = CHANGES[change]
    for number, order in rounds():
        alices.fill(POOL)
        host = alices.checkout(POOL, alice["X-AUTH-TOKEN"])
        returned, changed = raced(order, sent_by(alices, "DELETE", f"/api/v3/vm/{host}", headers=alice),
                                  sent_by(bobs, method, target.format(host=host), body, headers=bob))
        where = f"round {number} ({order}): {returned.raw!r} {changed.raw!r}"
        assert returned.status == 200, where
        record = alices.client.hgetall(alices.store.keys.vm(host))
        if change == "tags":
            assert changed.status in (200, 404), where
            assert changed.status == (200 if order == "second" else 404) or order == "together", where
            assert (record.get("tag:project") == "bobs") == (changed.status == 200), where
        else:
            assert changed.status in (403, 404), where
            assert changed.status == (403 if order == "second" else 404) or order == "together", where
            assert record.get("lifetime") == "12", where
            assert alices.client.llen(alices.store.keys.vm_tasks(host)) == 0, where
        assert "alice" not in changed.raw.decode(), where  # bob learns nothing of hers
        assert_returned_once(alices, host, "alice")


# --- one user's return sent twice at once ---------------------------------------------------------


def test_the_owners_return_sent_twice_at_once_returns_the_vm_once(processes) -> None:
    """Alice's DELETE /vm/<host> from two processes at once (a client's retry while the first is
    under way): both told ok, as a retry after the first answered is (docs/api.md: vmfloaty lists
    a VM whose DELETE is not ok as "Unable to delete"); the VM returned once: completed, counted
    by neither the pool's nor the service's running VMs nor alice's holdings, and her quota whole
    again."""
    doc = document({"provider": "dummy"}, config={"max_running_vms_per_user": 1})
    first, second = processes(doc, 2)
    alice = token(first, "alice")
    for number, order in rounds():
        first.fill(POOL)
        host = first.checkout(POOL, alice["X-AUTH-TOKEN"])
        replies = raced(order, sent_by(first, "DELETE", f"/api/v3/vm/{host}", headers=alice),
                        sent_by(second, "DELETE", f"/api/v3/vm/{host}", headers=alice))
        assert [reply.status for reply in replies] == [200, 200], (number, order, [reply.raw for reply in replies])
        assert_returned_once(first, host, "alice")
        assert first.count(POOL, "completed") == 1, first.hosts(POOL, "completed")
        first.reconcile(POOL)  # destroys it: the next round's VM is the one completed


# --- the last ready VM asked for by eight users -------------------------------------------------

USERS = ("alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi")


def test_eight_users_ask_for_the_last_ready_vm_at_once(processes) -> None:
    """Exactly one of eight users, each from a process of its own, gets the pool's last ready VM,
    recorded as that user's and counted once; the seven others are told vmpooler's 503
    ``{"ok":false}`` and hold nothing, and no answer names the VM but the winner's."""
    doc = document({"provider": "dummy"}, pools=[
        {"name": POOL, "size": 1, "provider": "dummy", "template": "t/debian", "domain": "example.com"}])
    callers = processes(doc, len(USERS))
    tokens = [token(process, user) for process, user in zip(callers, USERS, strict=True)]
    for number in range(ROUNDS):
        callers[0].fill(POOL)
        (ready,) = callers[0].ready(POOL)
        replies = at_once(*[sent_by(process, "POST", f"/api/v3/vm/{POOL}", headers=headers)
                            for process, headers in zip(callers, tokens, strict=True)])
        statuses = [reply.status for reply in replies]
        assert sorted(statuses) == [200] + [503] * 7, (number, [reply.raw for reply in replies])
        winner = statuses.index(200)
        host = hostname_of(replies[winner])
        assert host == ready
        for loser, reply in enumerate(replies):
            if loser != winner:
                assert reply.json == {"ok": False} and host not in reply.raw.decode(), reply.raw
                assert not held(callers[0], USERS[loser]), USERS[loser]
        assert callers[0].store.get_vm(host).raw.get("token_user") == USERS[winner]
        assert held(callers[0], USERS[winner]) == {host}
        assert callers[0].client.zrange(callers[0].store.keys.running, 0, -1) == [host]
        assert callers[0].hosts(POOL, "running") == {host} and not callers[0].ready(POOL)
        returned = sent_by(callers[winner], "DELETE", f"/api/v3/vm/{host}", headers=tokens[winner])()
        assert returned.status == 200, returned.raw
        callers[0].reconcile(POOL)


# --- a user's quota asked past by checkouts at once ---------------------------------------------


def test_a_users_quota_of_three_vms_is_never_passed_by_four_checkouts_at_once(processes) -> None:
    """``max_running_vms_per_user: 3``: alice's four checkouts at once, each with a token of its
    own from a process of its own, while bob checks out from a fifth: exactly three of hers get a
    VM, the fourth is told 403 naming the limit, and bob gets his. Alice holds three, bob one."""
    doc = document({"provider": "dummy"}, config={"max_running_vms_per_user": 3}, pools=[
        {"name": POOL, "size": 6, "provider": "dummy", "template": "t/debian", "domain": "example.com"}])
    callers = processes(doc, 5)
    tokens = [token(process, "alice") for process in callers[:4]] + [token(callers[4], "bob")]
    for number in range(ROUNDS):
        callers[0].fill(POOL)
        replies = at_once(*[sent_by(process, "POST", f"/api/v3/vm/{POOL}", headers=headers)
                            for process, headers in zip(callers, tokens, strict=True)])
        statuses = [reply.status for reply in replies[:4]]
        assert sorted(statuses) == [200, 200, 200, 403], (number, [reply.raw for reply in replies])
        refused = replies[statuses.index(403)]
        assert refused.json == {"ok": False, "error": "you may hold at most 3 VMs at once; return some first"}
        assert replies[4].status == 200, replies[4].raw
        hers = {hostname_of(reply) for reply in replies[:4] if reply.status == 200}
        bobs = hostname_of(replies[4])
        assert held(callers[0], "alice") == hers and held(callers[0], "bob") == {bobs}
        for host in hers | {bobs}:
            headers = tokens[4] if host == bobs else tokens[0]
            assert sent_by(callers[0], "DELETE", f"/api/v3/vm/{host}", headers=headers)().status == 200
        callers[0].reconcile(POOL)


# --- a token deleted while a checkout made with it is under way -----------------------------------


def test_a_token_deleted_while_a_checkout_made_with_it_is_under_way(processes) -> None:
    """Alice checks out with a token from one process while she deletes that token from another:
    the delete is a 200; the checkout either got a VM (200, hers, counted) or nothing (401, the
    pool's ready VMs as they were): never a VM taken without an answer naming it."""
    checking_out, deleting = processes(document({"provider": "dummy"}), 2)
    for number, order in rounds():
        checking_out.fill(POOL)
        ready = set(checking_out.ready(POOL))
        checkout, where = raced_with_its_token_delete(order, number, checking_out, deleting, "POST",
                                                      f"/api/v3/vm/{POOL}")
        assert checkout.status == (200 if order == "first" else 401) or order == "together", where
        if checkout.status == 200:
            host = hostname_of(checkout)
            assert checking_out.store.get_vm(host).raw.get("token_user") == "alice", where
            assert held(checking_out, "alice") == {host}, where
            assert set(checking_out.ready(POOL)) == ready - {host}, where
            undone_with_a_new_token(deleting, "DELETE", f"/api/v3/vm/{host}")
        else:
            assert checkout.status == 401, where
            assert set(checking_out.ready(POOL)) == ready and not held(checking_out, "alice"), where
        checking_out.reconcile(POOL)


# --- on-demand requests -------------------------------------------------------------------------


def vms_of_request(process: Harness, request_id: str) -> dict[str, dict[str, str]]:
    """Every VM record that names the request."""
    keys, client = process.store.keys, process.client
    found = {}
    for key in client.scan_iter(keys.vm("*")):
        record = client.hgetall(key) if client.type(key) == "hash" else {}
        if record.get("request") == request_id:
            found[key.removeprefix(keys.vm(""))] = record
    return found


PHASES = {
    "its clones started by the pass": (0, 0),
    "its clones done, delivered by the pass": (20, 1),
    "its slow clones started by the pass": (20, 0),
}
"""(the dummy's clone time, passes before the race) for each phase of a request the race meets."""


@pytest.mark.parametrize("phase", PHASES)
def test_an_on_demand_request_deleted_while_a_pass_fulfils_it(processes, phase: str) -> None:
    """Alice deletes her request for two VMs from one process while a reconcile pass of another
    builds or delivers them: the delete is a 200, the request ends deleted and never ready, and
    once the passes have run no VM of it is left running, ready or pending, counted by the
    service, held by alice or waited for by the open requests; the provider keeps nothing the
    pool does not know."""
    clone_seconds, passes_before = PHASES[phase]
    doc = document({"provider": "dummy"}, config={"experimental_features": True})
    doc["providers"]["dummy"]["createvm_max_time"] = clone_seconds
    api, reconciler = processes(doc, 2)
    alice = token(api, "alice")
    keys = api.store.keys
    for number, order in rounds():
        request_id = f"race-{number}"
        made = sent_by(api, "POST", "/api/v3/ondemandvm", {OTHER_POOL: 2, "request_id": request_id}, headers=alice)()
        assert made.status == 201, made.raw
        for _ in range(passes_before):
            api.reconcile(OTHER_POOL)
            api.clock.advance(clone_seconds + 1)
        deleted, _ = raced(order, sent_by(api, "DELETE", f"/api/v3/ondemandvm/{request_id}", headers=alice),
                           passed_by(reconciler, OTHER_POOL))
        where = f"round {number} ({order})"
        assert deleted.status == 200, (where, deleted.raw)
        shown = sent_by(api, "GET", f"/api/v3/ondemandvm/{request_id}", headers=alice)()
        assert shown.status == 200 and shown.json.get("ready") is False, (where, shown.raw)
        for _ in range(4):
            api.clock.advance(clone_seconds + 1)
            api.reconcile(OTHER_POOL)
        assert api.client.hget(keys.ondemand(request_id), "state") == "deleted", where
        for host, record in vms_of_request(api, request_id).items():
            assert record.get("state") in ("completed", "destroyed"), (where, host, record)
        assert_consistent(api, OTHER_POOL)
        assert not api.client.zrange(keys.running, 0, -1), where
        assert not held(api, "alice"), (where, held(api, "alice"))
        assert not api.client.zrange(keys.ondemand_open_requests, 0, -1), where
        assert int(api.client.get(keys.ondemand_open_waiting) or 0) == 0, where
        assert not api.client.zrange(keys.cloning, 0, -1), where


def test_the_same_on_demand_request_posted_twice_at_once_is_made_once(processes) -> None:
    """Alice posts the same request (her id, the same body) from two processes at once, as a
    client's retry racing its first try: both are told its id (201; a 409 once the first was
    confirmed), one request is made, and it is counted once: with two VMs asked under
    ``max_running_vms_per_user: 2`` she may check nothing out beside it, and once she deletes it
    she may check out two."""
    doc = document({"provider": "dummy"}, config={"experimental_features": True, "max_running_vms_per_user": 2})
    first, second = processes(doc, 2)
    alice = token(first, "alice")
    for number, order in rounds():
        request_id = f"twice-{number}"
        body = {OTHER_POOL: 2, "request_id": request_id}
        replies = raced(order, sent_by(first, "POST", "/api/v3/ondemandvm", body, headers=alice),
                        sent_by(second, "POST", "/api/v3/ondemandvm", body, headers=alice))
        statuses = sorted(reply.status for reply in replies)
        where = (number, order, [reply.raw for reply in replies])
        assert statuses == [201, 409] or (order == "together" and statuses == [201, 201]), where
        assert all(reply.json["request_id"] == request_id for reply in replies), where
        first.fill(POOL)
        refused = sent_by(first, "POST", f"/api/v3/vm/{POOL}", headers=alice)()
        assert refused.status == 403, (where, refused.raw)
        assert sent_by(second, "DELETE", f"/api/v3/ondemandvm/{request_id}", headers=alice)().status == 200
        hosts = first.checkout_vms(POOL, 2, alice["X-AUTH-TOKEN"])
        for host in hosts:
            assert sent_by(first, "DELETE", f"/api/v3/vm/{host}", headers=alice)().status == 200
        first.run_passes(POOL, OTHER_POOL)


# --- a VM returned while a pass runs a task its owner asked for -----------------------------------

TASKS: dict[str, tuple[str, dict[str, Any]]] = {
    "disk": ("/api/v3/vm/{host}/disk/8", {"createdisk_max_time": 60}),
    "snapshot": ("/api/v3/vm/{host}/snapshot", {"createsnapshot_max_time": 60}),
}


@pytest.mark.parametrize("task", TASKS)
def test_a_vm_returned_while_a_pass_starts_its_task(processes, task: str) -> None:
    """Alice asks for a disk (or a snapshot), then returns the VM from one process while a pass
    of another starts the task on the provider. The return is a 200; once the passes have run
    the VM is destroyed, its task queue and the pool's list of VMs with tasks are empty, and
    nothing of it is left in the provider or counted anywhere."""
    target, times = TASKS[task]
    doc = document({"provider": "dummy"})
    doc["providers"]["dummy"].update(times)
    api, reconciler = processes(doc, 2)
    alice = token(api, "alice")
    keys = api.store.keys
    for number, order in rounds():
        api.fill(POOL)
        host = api.checkout(POOL, alice["X-AUTH-TOKEN"])
        asked = sent_by(api, "POST", target.format(host=host), headers=alice)()
        assert asked.status == 202, asked.raw
        returned, _ = raced(order, sent_by(api, "DELETE", f"/api/v3/vm/{host}", headers=alice),
                            passed_by(reconciler, POOL))
        where = f"round {number} ({order})"
        assert returned.status == 200, (where, returned.raw)
        assert_returned_once(api, host, "alice")
        for _ in range(4):
            api.clock.advance(61)
            api.reconcile(POOL)
            assert_consistent(api, POOL)
        assert api.state_of(host) in ("destroyed", None), (where, api.store.get_vm(host))
        assert host not in api.provider_vms(POOL), where
        assert not api.client.exists(keys.vm_tasks(host)), (where, api.client.lrange(keys.vm_tasks(host), 0, -1))
        assert not api.client.zscore(keys.pool_vm_tasks(POOL), host), where


# --- a revert sent while a pass starts the snapshot it names --------------------------------------


def snapshot_queued(api: Harness, alice: dict[str, str]) -> tuple[str, str]:
    """A VM of alice's with a snapshot queued, not yet started: (hostname, snapshot id)."""
    api.fill(POOL)
    host = api.checkout(POOL, alice["X-AUTH-TOKEN"])
    taken = sent_by(api, "POST", f"/api/v3/vm/{host}/snapshot", headers=alice)()
    assert taken.status == 202, taken.raw
    return host, taken.json[host]["snapshot"]


def assert_revert_queued_behind(api: Harness, host: str, snapshot: str, reverted: Reply, where: str) -> None:
    """The revert was accepted (202) and waits behind its snapshot, taken or in flight."""
    assert reverted.status == 202, (where, reverted.raw)
    queued = [task["kind"] for task in VMTaskStore(api.store).queued(host)]
    assert queued == ["revert"], (where, queued)
    record = api.store.get_vm(host)
    assert record is not None and (snapshot in record.snapshots or (in_flight(record) or {}).get("snapshot")
                                   == snapshot), (where, record.raw)


SLOW_SNAPSHOTS = {"createsnapshot_max_time": 60, "revertsnapshot_max_time": 60}


def test_a_revert_sent_while_a_pass_starts_its_snapshot(processes) -> None:
    """Alice reverts to the snapshot she has just asked for from one process while a pass of
    another takes it from the VM's queue and starts it: accepted (202) whatever the order, as
    docs/api.md promises a revert queued while its snapshot is still being taken. Before, a
    revert that read the VM before the pass took the snapshot and its queue after was told 404
    "snapshot not found" (it looked for it where it no longer was)."""
    doc = document({"provider": "dummy"})
    doc["providers"]["dummy"].update(SLOW_SNAPSHOTS)
    api, reconciler = processes(doc, 2)
    alice = token(api, "alice")
    for number, order in rounds():
        host, snapshot = snapshot_queued(api, alice)
        reverted, _ = raced(order, sent_by(api, "POST", f"/api/v3/vm/{host}/snapshot/{snapshot}", headers=alice),
                            passed_by(reconciler, POOL))
        assert_revert_queued_behind(api, host, snapshot, reverted, f"round {number} ({order})")
        assert sent_by(api, "DELETE", f"/api/v3/vm/{host}", headers=alice)().status == 200
        api.reconcile(POOL)


def test_a_revert_with_a_pass_between_any_two_of_its_redis_operations(processes) -> None:
    """The race above, the pass run between each two of the revert's Redis operations (the
    place where the race at once lands by chance)."""
    doc = document({"provider": "dummy"})
    doc["providers"]["dummy"].update(SLOW_SNAPSHOTS)
    api, reconciler = processes(doc, 2)
    alice = token(api, "alice")
    host, snapshot = snapshot_queued(api, alice)
    with redis_operations() as sent:
        assert sent_by(api, "POST", f"/api/v3/vm/{host}/snapshot/{snapshot}", headers=alice)().status == 202
    total = sent[0]
    assert sent_by(api, "DELETE", f"/api/v3/vm/{host}", headers=alice)().status == 200
    for between in range(total + 1):
        host, snapshot = snapshot_queued(api, alice)
        with redis_operations(between=(between, passed_by(reconciler, POOL))):
            reverted = sent_by(api, "POST", f"/api/v3/vm/{host}/snapshot/{snapshot}", headers=alice)()
        assert_revert_queued_behind(api, host, snapshot, reverted, f"the pass after operation {between} of {total}")
        assert sent_by(api, "DELETE", f"/api/v3/vm/{host}", headers=alice)().status == 200
        api.reconcile(POOL)


# --- two users tag one VM at once, one tag short of the bound -----------------------------------


def test_two_users_tag_a_vm_one_tag_short_of_its_bound_at_once(processes) -> None:
    """Alice's VM carries ``max_tags_per_vm`` - 1 tags; she and bob each add one more at once from
    processes of their own: exactly one is told 200 and its tag is on the VM, the other 400 naming
    the bound, and the VM carries the bound, no more."""
    doc = document({"provider": "dummy"}, config={"max_tags_per_vm": 2})
    alices, bobs = processes(doc, 2)
    alice, bob = token(alices, "alice"), token(bobs, "bob")
    for number in range(ROUNDS):
        alices.fill(POOL)
        host = alices.checkout(POOL, alice["X-AUTH-TOKEN"])
        first = sent_by(alices, "PUT", f"/api/v3/vm/{host}", {"tags": {"project": "ci"}}, headers=alice)()
        assert first.status == 200, first.raw
        replies = at_once(sent_by(alices, "PUT", f"/api/v3/vm/{host}", {"tags": {"owner": "alice"}}, headers=alice),
                          sent_by(bobs, "PUT", f"/api/v3/vm/{host}", {"tags": {"url": "bobs"}}, headers=bob))
        assert sorted(reply.status for reply in replies) == [200, 400], (number, [reply.raw for reply in replies])
        refused = next(reply for reply in replies if reply.status == 400)
        assert refused.json == {"ok": False, "failure": ["A VM carries at most 2 tags."]}, refused.raw
        tags = alices.describe(host)["tags"]
        won = ("owner", "alice") if replies[0].status == 200 else ("url", "bobs")
        assert tags == {"project": "ci", won[0]: won[1]}, (number, tags)
        assert sent_by(alices, "DELETE", f"/api/v3/vm/{host}", headers=alice)().status == 200
        alices.reconcile(POOL)


# --- a token deleted while an on-demand request made with it is under way ------------------------


def test_a_token_deleted_while_an_on_demand_request_made_with_it_is_under_way(processes) -> None:
    """Alice opens an on-demand request with a token from one process while she deletes that
    token from another: the delete is a 200; the request is made (201, hers, open) or not at all
    (401, no record under its id, nothing counted against her)."""
    doc = document({"provider": "dummy"}, config={"experimental_features": True})
    opening, deleting = processes(doc, 2)
    keys = opening.store.keys
    for number, order in rounds():
        request_id = f"doomed-{number}"
        made, where = raced_with_its_token_delete(order, number, opening, deleting, "POST", "/api/v3/ondemandvm",
                                                  {OTHER_POOL: 1, "request_id": request_id})
        assert made.status == (201 if order == "first" else 401) or order == "together", where
        if made.status == 201:
            assert opening.client.hmget(keys.ondemand(request_id), "state", "token_user") == ["open", "alice"], where
            undone_with_a_new_token(deleting, "DELETE", f"/api/v3/ondemandvm/{request_id}")
        else:
            assert made.status == 401, where
            assert not opening.client.exists(keys.ondemand(request_id)), where
            assert not opening.client.zscore(keys.ondemand_open_requests, request_id), where
        opening.run_passes(OTHER_POOL)
