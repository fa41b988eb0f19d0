"""Redis slower than the client's socket timeout (a long script, a failover, a saturated node):
the request fails fast with StoreUnavailable, its checkout runs at most once, and a VM it took
nonetheless goes back to the pool within a minute instead of running with no owner.

A command that timed out may still run once Redis gets to it; it must never run again because
the client retried it (redis-py 8 retried every command 10 times: one checkout took up to 11
VMs). The busy script of another client stands in for the slow Redis.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

import chalicelib.auth.tokens
import chalicelib.store.ondemand
import chalicelib.store.store
from chalicelib.auth.base import canonical_user
from chalicelib.clock import FakeClock
from chalicelib.config import Config, parse
from chalicelib.manager.reconcile import reconcile_pool
from chalicelib.providers.dummy import DummyProvider
from chalicelib.store import (
    CheckoutRequest,
    Quota,
    QuotaExceeded,
    ReplicaAcks,
    Store,
    StoreUnavailable,
    connect,
)
from chalicelib.store.names import NAMES_PER_CALL, NamesStore
from chalicelib.store.ondemand import FAILED, OPEN, READY, OnDemandEntry, OnDemandStore
from chalicelib.store.pool_overrides import PoolOverride, PoolOverrides
from chalicelib.store.scripts import script_source
from chalicelib.store.store import UNCONFIRMED_SECONDS
from chalicelib.store.vm_tasks import VMTaskStore
from local.processes import on_a_free_port
from local.redis_server import RedisServer
from tests.harness import HarnessFactory, basic
from tests.redis_pair import InterposedProxy, RedisPair
from tests.support import eventually, free_port, port_in_use

BUSY_SECONDS = 2.0
SOCKET_TIMEOUT = 0.2
BUSY_SCRIPT = """
local t0 = redis.call('TIME')
while true do
  local t = redis.call('TIME')
  if (t[1] - t0[1]) * 1000000 + (t[2] - t0[2]) > tonumber(ARGV[1]) then return 1 end
end
"""


def _slow_pool(redis_server: RedisServer, redis_client: redis.Redis) -> tuple[Config, FakeClock, Store, DummyProvider]:
    """A full pool of 20, and a store on the client a Lambda builds from the config."""
    config = parse(f"""
:config: {{task_limit: 100}}
:redis: {{server: 127.0.0.1, port: {redis_server.port}, socket_timeout: {SOCKET_TIMEOUT}}}
:providers:
  :dummy: {{createvm_max_time: 0, boot_time: 0}}
:pools:
  - {{name: slow, size: 20, provider: dummy}}
""")
    clock = FakeClock()
    store = Store(connect(config.redis))
    provider = DummyProvider(config.providers["dummy"], redis_client, clock)
    # Filled on the default timeout: on a loaded machine a round trip of the passes may outlast
    # SOCKET_TIMEOUT, which is for the requests the tests stall, not for the setup.
    filler = Store(connect(dataclasses.replace(config.redis, socket_timeout=5.0)))
    for _ in range(2):
        reconcile_pool(filler, provider, config.pool("slow"), clock, config.service)
    assert filler.counts(["slow"])["slow"]["ready"] == 20
    # The store's connection warm, as a Lambda's: a handshake Redis is too busy to answer would
    # send no script at all. A read that outlasts the short timeout is tried again.
    eventually(lambda: store.counts(["slow"])["slow"]["ready"] == 20, 10, "the store's connection",
               ignoring=(StoreUnavailable,))
    # As in a warm Lambda, Redis knows the checkout script: a slow EVALSHA runs it, not NOSCRIPT.
    redis_client.script_load(store.scripts.checkout.script)
    return config, clock, store, provider


def _patient(store: Store) -> Store:
    """A store on ``store``'s Redis on a 5 s socket timeout, for a test's passes and checks: on a
    loaded machine their round trips may outlast SOCKET_TIMEOUT, which is for the calls a test
    stalls (a pass after a hold, StoreUnavailable, when Redis was held 0.3 s at random moments)."""
    patient = store.__dict__.get("_patient_store")
    if patient is None:
        kwargs = store.client.connection_pool.connection_kwargs
        patient = Store(redis.Redis(host=kwargs["host"], port=kwargs["port"], socket_timeout=5.0,
                                    decode_responses=True))
        store.__dict__["_patient_store"] = patient
    return patient


def _redis_is_busy(port: int) -> bool:
    """True once Redis no longer answers a PING within the checkout's socket timeout: the busy
    script holds it (the PING is answered once the script ends). No retry: redis-py's default
    one would reconnect and wait again, until the script ends."""
    probe = redis.Redis(port=port, socket_timeout=SOCKET_TIMEOUT, retry=Retry(NoBackoff(), 0))
    try:
        probe.ping()
        return False
    except redis.TimeoutError:
        return True
    finally:
        probe.close()


def test_a_checkout_that_timed_out_runs_at_most_once_and_its_vm_comes_back(
        redis_server: RedisServer, redis_client: redis.Redis) -> None:
    config, clock, store, provider = _slow_pool(redis_server, redis_client)
    busy_ended = threading.Event()

    def hold_redis() -> None:
        redis.Redis(port=redis_server.port).eval(BUSY_SCRIPT, 0, int(BUSY_SECONDS * 1_000_000))
        busy_ended.set()

    busy = threading.Thread(target=hold_redis)
    busy.start()
    # Not a fixed sleep: on a loaded machine the thread may not have sent the script yet, and a
    # checkout that runs first succeeds. Redis answers nobody while the script runs.
    eventually(lambda: _redis_is_busy(redis_server.port), 10, "the busy script to hold Redis")
    try:
        store.checkout([CheckoutRequest("slow", ["slow"], 1)], clock.now(), {"lifetime": "2"})
        raised = False
    except StoreUnavailable:
        raised = True
    # Read at once (no other Redis call first): whether the checkout gave up while the script
    # still held Redis. Not its duration, which a loaded machine stretches.
    gave_up_while_busy = not busy_ended.is_set()
    busy.join()

    assert raised, "the checkout answered although Redis was busy for longer than the timeout"
    # The checkout gave up on its own socket timeout (0.2 s) instead of waiting for Redis to
    # answer after the busy script (2 s; the retries that could add up to it are counted below).
    assert gave_up_while_busy, "the failed checkout waited for the busy script to end"
    # The checkout queued behind the busy script runs once Redis gets to it; any retry was sent
    # before the checkout raised, so it is queued ahead of this poll and has run too.
    taken = eventually(lambda: _patient(store).hostnames("slow", "running"), 10, "the queued checkout to run")
    assert len(taken) == 1, f"the checkout queued behind the busy script took {len(taken)} VMs"

    # The request answered 503, so nobody has the VM it took: within a minute a pass returns it
    # to ready, and the pool is whole again.
    clock.advance(UNCONFIRMED_SECONDS + 1)
    report = reconcile_pool(_patient(store), provider, config.pool("slow"), clock, config.service)
    assert report.returned == taken
    counts = _patient(store).counts(["slow"])["slow"]
    assert (counts["running"], counts["ready"]) == (0, 20), counts
    record = store.get_vm(taken[0])
    assert record is not None and record.state == "ready" and not record.checkout and not record.lifetime_hours


def test_a_confirmed_checkout_is_never_returned(redis_server: RedisServer, redis_client: redis.Redis) -> None:
    config, clock, store, provider = _slow_pool(redis_server, redis_client)
    result = store.checkout([CheckoutRequest("slow", ["slow"], 2)], clock.now(), {"lifetime": "2"})

    clock.advance(UNCONFIRMED_SECONDS + 1)
    report = reconcile_pool(_patient(store), provider, config.pool("slow"), clock, config.service)

    assert report.returned == []
    assert set(_patient(store).hostnames("slow", "running")) == {vm.hostname for vm in result.vms}


def _failed_once_unconfirmed(requests: OnDemandStore, request_id: str, config: Config, clock: FakeClock,
                             provider: DummyProvider) -> None:
    """Once its confirmation is overdue (``UNCONFIRMED_SECONDS``), the passes of ``slow`` fail the
    request ``request_id`` and build nothing for it."""
    clock.advance(UNCONFIRMED_SECONDS + 1)
    for _ in range(3):
        reconcile_pool(_patient(requests.store), provider, config.pool("slow"), clock, config.service)
    request = requests.get(request_id)
    assert request is not None and request.state == FAILED, request
    assert _patient(requests.store).counts(["slow"])["slow"]["running"] == 0


def test_an_ondemand_request_whose_answer_was_lost_is_never_built_for_nobody(
        redis_server: RedisServer, redis_client: redis.Redis) -> None:
    """POST /ondemandvm while Redis is slower than the socket timeout: the caller is answered 503,
    but the create script queued behind the busy one runs once Redis gets to it. Before, that
    request was served like any other: its VMs were built and ran for the caller's token until
    their lifetime ended (counted against its quota), and the caller, told it failed, asked
    again. It is now kept unbuilt until the API confirms it, as a checkout is, and failed by a
    pass once its confirmation is overdue."""
    config, clock, store, provider = _slow_pool(redis_server, redis_client)
    requests = OnDemandStore(store)
    redis_client.script_load(store.scripts.ondemand_create.script)
    busy = threading.Thread(target=lambda: redis.Redis(port=redis_server.port).eval(
        BUSY_SCRIPT, 0, int(BUSY_SECONDS * 1_000_000)))
    busy.start()
    eventually(lambda: _redis_is_busy(redis_server.port), 10, "the busy script to hold Redis")
    with pytest.raises(StoreUnavailable):
        requests.create("lost-answer", [OnDemandEntry("slow", "slow", 1)], clock.now(), 300, 2, "someone")
    busy.join()
    eventually(lambda: requests.get("lost-answer"), 10, "the queued create to run")

    for _ in range(3):  # nothing is built for it while its confirmation may still come
        reconcile_pool(_patient(store), provider, config.pool("slow"), clock, config.service)
    request = requests.get("lost-answer")
    assert request is not None and request.state == OPEN and not request.vms, request

    _failed_once_unconfirmed(requests, "lost-answer", config, clock, provider)


def test_a_confirmed_ondemand_request_is_built_at_once(redis_server: RedisServer, redis_client: redis.Redis) -> None:
    config, clock, store, provider = _slow_pool(redis_server, redis_client)
    requests = OnDemandStore(store)
    assert requests.create("answered", [OnDemandEntry("slow", "slow", 1)], clock.now(), 300, 2, "someone")
    for _ in range(3):
        reconcile_pool(_patient(store), provider, config.pool("slow"), clock, config.service)
    request = requests.get("answered")
    assert request is not None and request.state == READY, request

    clock.advance(UNCONFIRMED_SECONDS + 1)
    reconcile_pool(_patient(store), provider, config.pool("slow"), clock, config.service)
    assert _patient(store).counts(["slow"])["slow"]["running"] == 1


ALICE = Quota(owner="user:alice", max_owner_vms=1, max_vms=100, pools=["slow"], max_owner_requests=1,
              max_requests=100)
"""One VM and one on-demand request at a time: a lost answer that counted would refuse the retry."""


def _lost_while_redis_is_busy(redis_server: RedisServer, send: Any) -> None:
    """``send()`` while a busy script holds Redis: it raises StoreUnavailable (its caller is
    answered 503), and the script it sent runs once Redis gets to it (the service's running set
    counted first, as a running service has it: else the script asks for a recount and takes nothing)."""
    Store(redis.Redis(port=redis_server.port, decode_responses=True)).recount_running(["slow"], 0.0)
    busy = threading.Thread(target=lambda: redis.Redis(port=redis_server.port).eval(
        BUSY_SCRIPT, 0, int(BUSY_SECONDS * 1_000_000)))
    busy.start()
    eventually(lambda: _redis_is_busy(redis_server.port), 10, "the busy script to hold Redis")
    with pytest.raises(StoreUnavailable):
        send()
    busy.join()


def _past_confirm_window(redis_client: redis.Redis, key: str) -> None:
    """Wait until Redis's clock has passed the record's confirmation window (the API's socket
    timeout after its script ran): no confirmation can land from then on."""
    window = int(redis_client.hget(key, "confirm_window") or 0)
    assert window, redis_client.hgetall(key)

    def passed() -> bool:
        seconds, micros = redis_client.time()
        return seconds * 1000 + micros // 1000 > window

    eventually(passed, 10, "Redis's clock to pass the confirmation window")


def test_a_checkout_whose_answer_was_lost_does_not_count_against_its_owners_retry(
        redis_server: RedisServer, redis_client: redis.Redis) -> None:
    """A user allowed one VM whose checkout was answered 503 (the script ran once Redis got to
    it) sends it again, as the 503 says. Before, the retry was refused 403 ("you may hold at most
    1 VMs at once; return some first") until a pass gave the lost VM back, a minute later: the
    user was charged for a VM nobody can ever confirm to them."""
    config, clock, store, provider = _slow_pool(redis_server, redis_client)
    _lost_while_redis_is_busy(redis_server, lambda: store.checkout(
        [CheckoutRequest("slow", ["slow"], 1)], clock.now(), {"lifetime": "2", "token_user": "alice"}, ALICE))
    lost = eventually(lambda: _patient(store).hostnames("slow", "running"), 10, "the queued checkout to run")
    _past_confirm_window(redis_client, store.keys.vm(lost[0]))

    retried = store.checkout([CheckoutRequest("slow", ["slow"], 1)], clock.now(),
                             {"lifetime": "2", "token_user": "alice"}, ALICE)
    assert retried.ok and retried.vms[0].hostname != lost[0]
    # Within its limit once the lost VM is back: still one VM, the retry's.
    clock.advance(UNCONFIRMED_SECONDS + 1)
    reconcile_pool(_patient(store), provider, config.pool("slow"), clock, config.service)
    assert _patient(store).hostnames("slow", "running") == [retried.vms[0].hostname]
    with pytest.raises(QuotaExceeded):
        store.checkout([CheckoutRequest("slow", ["slow"], 1)], clock.now(), {"lifetime": "2"}, ALICE)


def _ondemand_create_answered_503(requests: OnDemandStore, request_id: str, clock: FakeClock,
                                  redis_server: RedisServer, redis_client: redis.Redis) -> None:
    """Alice's on-demand request for one VM of ``slow``, whose create times out while a busy
    script holds Redis (a 503) and runs once Redis gets to it; then its confirmation window is
    made to have passed."""
    redis_client.script_load(requests.store.scripts.ondemand_create.script)
    _lost_while_redis_is_busy(redis_server, lambda: requests.create(
        request_id, [OnDemandEntry("slow", "slow", 1)], clock.now(), 300, 2, "alice", quota=ALICE))
    eventually(lambda: requests.get(request_id), 10, "the queued create to run")
    _past_confirm_window(redis_client, requests.store.keys.ondemand(request_id))


def test_an_ondemand_request_whose_answer_was_lost_does_not_count_against_its_owners_retry(
        redis_server: RedisServer, redis_client: redis.Redis) -> None:
    """The same for POST /ondemandvm: docs/api.md says the caller of a request never confirmed
    "is not charged for it. Send the request again." It was, for a minute: the retry was refused
    403 (its VMs past the owner's limit, or its open requests) until a pass failed the lost one."""
    config, clock, store, provider = _slow_pool(redis_server, redis_client)
    requests = OnDemandStore(store)
    _ondemand_create_answered_503(requests, "lost-answer", clock, redis_server, redis_client)

    assert requests.create("retried", [OnDemandEntry("slow", "slow", 1)], clock.now(), 300, 2, "alice", quota=ALICE)
    for _ in range(3):
        reconcile_pool(_patient(store), provider, config.pool("slow"), clock, config.service)
    retried, lost = requests.get("retried"), requests.get("lost-answer")
    assert retried is not None and retried.state == READY, retried
    assert lost is not None and lost.state == OPEN and not lost.vms, lost  # never built, failed at its deadline



def test_an_ondemand_request_whose_answer_was_lost_does_not_count_against_the_services_limits(
        redis_server: RedisServer, redis_client: redis.Redis) -> None:
    """The service's limits too: with room for one more open request (and one more VM), one lost
    while Redis was held kept every other user's request out, answered 503 "the service has its
    maximum of on-demand requests open", until a pass failed it a minute later."""
    _, clock, store, _ = _slow_pool(redis_server, redis_client)
    requests = OnDemandStore(store)
    full = Quota(owner="user:bob", max_owner_vms=5, max_vms=1, pools=["slow"], max_owner_requests=5, max_requests=1)
    redis_client.script_load(store.scripts.ondemand_create.script)
    _lost_while_redis_is_busy(redis_server, lambda: requests.create(
        "lost-answer", [OnDemandEntry("slow", "slow", 1)], clock.now(), 300, 2, "bob", quota=full))
    eventually(lambda: requests.get("lost-answer"), 10, "the queued create to run")
    _past_confirm_window(redis_client, store.keys.ondemand("lost-answer"))

    other = dataclasses.replace(full, owner="user:alice")
    assert requests.create("alices", [OnDemandEntry("slow", "slow", 1)], clock.now(), 300, 2, "alice", quota=other)
    with pytest.raises(QuotaExceeded):  # the service's one place is alice's now
        requests.create("third", [OnDemandEntry("slow", "slow", 1)], clock.now(), 300, 2, "carol",
                        quota=dataclasses.replace(full, owner="user:carol"))


@contextmanager
def _redis_held_at_confirmation(confirmer: Store | OnDemandStore, store: Store, redis_server: RedisServer,
                                redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Redis held by a busy script from the moment ``confirmer`` sends its confirmation (on the
    store's one connection) for BUSY_SECONDS; on leaving, the hold is over and the timed-out
    connection's confirmation has run (or been refused): Redis lets the connection go only then."""
    connection = store.client.client_id()
    confirm = confirmer._confirm
    busy = threading.Thread(target=lambda: redis.Redis(port=redis_server.port).eval(
        BUSY_SCRIPT, 0, int(BUSY_SECONDS * 1_000_000)))

    def confirm_while_redis_is_held(*args: Any) -> None:
        busy.start()
        eventually(lambda: _redis_is_busy(redis_server.port), 10, "the busy script to hold Redis")
        confirm(*args)

    monkeypatch.setattr(confirmer, "_confirm", confirm_while_redis_is_held)
    yield
    busy.join()
    eventually(lambda: all(client["id"] != str(connection) for client in redis_client.client_list()), 10,
               "the queued confirmation to run")


def _nothing_written_behind_a_lost_reply(monkeypatch: pytest.MonkeyPatch) -> None:
    """The undo written behind a confirmation whose reply is lost never reaches Redis either (its
    connection reset): what is left is the confirmation's own window and the pass."""
    @contextmanager
    def nothing(*commands: Any) -> Iterator[None]:
        yield None

    monkeypatch.setattr(chalicelib.store.store, "written_behind_a_lost_reply", nothing)
    monkeypatch.setattr(chalicelib.store.ondemand, "written_behind_a_lost_reply", nothing)


def test_a_confirmation_run_after_its_caller_gave_up_confirms_nothing(
        redis_server: RedisServer, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch) -> None:
    """Redis paused (SIGSTOP, a slow fork) right after a checkout script answered: the
    confirmation times out, and so does the release that follows (a new connection's handshake
    waits on the same pause), so the caller is answered 503. Before, the confirmation queued in
    Redis ran once it resumed and the VM stayed checked out to a caller told it got nothing,
    until its lifetime ended (found by tests/local/test_crash_handout.py: a 4 s SIGSTOP of
    redis-server). A confirmation that runs after its caller's socket timeout has passed now
    confirms nothing, and the VM goes back to ready within a minute as any unconfirmed one."""
    config, clock, store, provider = _slow_pool(redis_server, redis_client)
    redis_client.script_load(store.scripts.confirm.script)
    monkeypatch.setattr(store, "_release_after_failure", lambda *args: None)  # it cannot reach Redis either
    _nothing_written_behind_a_lost_reply(monkeypatch)
    with _redis_held_at_confirmation(store, store, redis_server, redis_client, monkeypatch):
        with pytest.raises(StoreUnavailable):
            store.checkout([CheckoutRequest("slow", ["slow"], 1)], clock.now(), {"lifetime": "2"})
    (taken,) = _patient(store).hostnames("slow", "running")

    clock.advance(UNCONFIRMED_SECONDS + 1)
    report = reconcile_pool(_patient(store), provider, config.pool("slow"), clock, config.service)
    assert report.returned == [taken]
    counts = _patient(store).counts(["slow"])["slow"]
    assert (counts["running"], counts["ready"]) == (0, 20), counts


def test_an_ondemand_confirmation_run_after_its_caller_gave_up_confirms_nothing(
        redis_server: RedisServer, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch) -> None:
    """As for a checkout: Redis paused right after the create script answered, the confirmation
    and the end that follows it both time out (503); the confirmation run once Redis resumes
    must not make the request one to build."""
    config, clock, store, provider = _slow_pool(redis_server, redis_client)
    requests = OnDemandStore(store)
    redis_client.script_load(store.scripts.ondemand_confirm.script)
    monkeypatch.setattr(requests, "end", lambda *args, **kwargs: None)  # it cannot reach Redis either
    _nothing_written_behind_a_lost_reply(monkeypatch)
    with _redis_held_at_confirmation(requests, store, redis_server, redis_client, monkeypatch):
        with pytest.raises(StoreUnavailable):
            requests.create("paused", [OnDemandEntry("slow", "slow", 1)], clock.now(), 300, 2, "someone")

    _failed_once_unconfirmed(requests, "paused", config, clock, provider)


@pytest.mark.parametrize("path, body", [("/api/v3/config/poolsize", {"slow": "5"}),
                                        ("/api/v3/config/pooltemplate", {"slow": "templates/v2"}),
                                        ("/api/v3/poolreset", {"slow": "1"})], ids=["size", "template", "reset"])
def test_a_pool_change_answered_503_because_redis_was_held_changes_nothing(
        make_harness: HarnessFactory, redis_server: RedisServer, redis_client: redis.Redis,
        monkeypatch: pytest.MonkeyPatch, path: str, body: dict[str, str]) -> None:
    """Redis held (SIGSTOP, a slow script) from the moment the change's script is sent, past the
    API's socket timeout: the administrator is answered 503. Before, the script queued in Redis
    ran once it resumed: the pool's size, template or reset changed after the 503 had said it
    failed. A change's script run after its caller's socket timeout now changes nothing."""
    config = parse(f"""
:config: {{experimental_features: true}}
:redis: {{server: 127.0.0.1, port: {redis_server.port}, socket_timeout: {SOCKET_TIMEOUT}}}
:providers:
  :dummy: {{createvm_max_time: 0, boot_time: 0}}
:pools:
  - {{name: slow, size: 2, provider: dummy, template: templates/v1}}
""")
    stack = make_harness(config, client=connect(config.redis))
    store = stack.store
    # As in a warm Lambda, Redis knows the script: a held EVALSHA runs it later, not NOSCRIPT.
    redis_client.script_load(store.scripts.pool_overrides.script)
    connection = store.client.client_id()
    busy = threading.Thread(target=lambda: redis.Redis(port=redis_server.port).eval(
        BUSY_SCRIPT, 0, int(BUSY_SECONDS * 1_000_000)))
    change = PoolOverrides._set

    def change_while_redis_is_held(self: PoolOverrides, *args: Any) -> list[str]:
        busy.start()
        eventually(lambda: _redis_is_busy(redis_server.port), 10, "the busy script to hold Redis")
        return change(self, *args)

    monkeypatch.setattr(PoolOverrides, "_set", change_while_redis_is_held)
    assert stack.answer("POST", path, body) == (503, {"ok": False, "error": StoreUnavailable.public_message})
    busy.join()
    eventually(lambda: all(client["id"] != str(connection) for client in redis_client.client_list()), 10,
               "the queued change to run")
    monkeypatch.undo()

    assert stack.services.pool("slow") == config.pool("slow")
    assert PoolOverrides(store).get("slow") == PoolOverride()
    # The same request again makes it; on a loaded machine a round trip may outlast the short
    # socket timeout again, a 503 that (as above) changes nothing, so the administrator retries.
    eventually(lambda: stack.answer("POST", path, body) == (201, {"ok": True}), 10, "the change to be made")


@pytest.mark.parametrize("method, path, body", [("POST", "/api/v3/vm/{host}/disk/8", None),
                                                 ("PUT", "/api/v3/vm/{host}", {"disk": 8, "lifetime": 5})],
                         ids=["disk_route", "put_with_disk"])
def test_a_disk_asked_for_while_redis_was_held_is_added_once_by_the_retry(
        make_harness: HarnessFactory, redis_server: RedisServer, redis_client: redis.Redis,
        monkeypatch: pytest.MonkeyPatch, method: str, path: str, body: Any) -> None:
    """Redis held (SIGSTOP, a slow script) from the moment a disk's script is sent, past the API's
    socket timeout: the user is answered 503 and sends the request again, as the 503 says. Before,
    the script queued in Redis ran once it resumed and the retry queued a second one: the VM got
    two disks for one asked (vmfloaty's `modify --disk` and beaker's disk POST alike). A task's
    script run after its caller's socket timeout now queues nothing."""
    config = parse(f"""
:redis: {{server: 127.0.0.1, port: {redis_server.port}, socket_timeout: {SOCKET_TIMEOUT}}}
:providers:
  :dummy: {{createvm_max_time: 0, boot_time: 0, createdisk_max_time: 0}}
:pools:
  - {{name: slow, size: 1, provider: dummy}}
""")
    stack = make_harness(config, client=connect(config.redis))
    stack.run_passes("slow", seconds=1, passes=2)
    host = stack.checkout("slow")
    target = path.format(host=host)
    store = stack.store
    # As in a warm Lambda, Redis knows the scripts: a held EVALSHA runs them later, not NOSCRIPT.
    for script in (store.scripts.vm_task_enqueue, store.scripts.vm_modify):
        redis_client.script_load(script.script)
    connection = store.client.client_id()
    busy = threading.Thread(target=lambda: redis.Redis(port=redis_server.port).eval(
        BUSY_SCRIPT, 0, int(BUSY_SECONDS * 1_000_000)))
    queueing = VMTaskStore.queueing

    def held_once_queued(self: VMTaskStore, *args: Any) -> Any:
        task = queueing(self, *args)  # its deadline read: Redis is held right after
        busy.start()
        eventually(lambda: _redis_is_busy(redis_server.port), 10, "the busy script to hold Redis")
        return task

    monkeypatch.setattr(VMTaskStore, "queueing", held_once_queued)
    assert stack.answer(method, target, body) == (503, {"ok": False, "error": StoreUnavailable.public_message})
    busy.join()
    eventually(lambda: all(client["id"] != str(connection) for client in redis_client.client_list()), 10,
               "the held script to run")
    monkeypatch.undo()

    # The retry the 503 asks for (on a loaded machine a round trip may outlast the short socket
    # timeout again: a 503 that, as above, queues nothing).
    eventually(lambda: stack.answer(method, target, body)[0] in (200, 202), 10, "the retry to be answered")
    stack.run_passes("slow", seconds=1, passes=3)
    status, shown = stack.answer("GET", f"/api/v3/vm/{host}")
    assert status == 200 and shown[host]["disk"] == ["+8gb"], shown


def test_a_login_answered_503_because_redis_was_held_makes_no_token(
        make_harness: HarnessFactory, redis_server: RedisServer, redis_client: redis.Redis,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Redis held (SIGSTOP, a slow script) from the moment a token's script is sent, past the
    API's socket timeout: the user is answered 503. Before, the script ran once Redis resumed: a
    token nobody ever saw, counted against ``max_tokens_per_user`` until it expired, so at a
    limit of 1 the retry the 503 asks for was refused. A token's script run after its caller's
    socket timeout now makes nothing."""
    config = parse(f"""
:config: {{max_tokens_per_user: 1}}
:auth: {{provider: dummy}}
:redis: {{server: 127.0.0.1, port: {redis_server.port}, socket_timeout: {SOCKET_TIMEOUT}}}
:providers:
  :dummy: {{createvm_max_time: 0, boot_time: 0}}
:pools:
  - {{name: slow, size: 0, provider: dummy}}
""")
    stack = make_harness(config, client=connect(config.redis))
    alice = basic("alice", "alice-pw")
    # Set-up on the short socket timeout (a loaded machine may outlast it: a 503, nothing made),
    # the token script then known to Redis, as in a warm Lambda: a held EVALSHA runs it later.
    eventually(lambda: stack.answer("GET", "/api/v3/token", headers=alice)[0] == 404, 10, "a first login (no tokens)")
    redis_client.script_load(script_source("token_create"))
    busy = threading.Thread(target=lambda: redis.Redis(port=redis_server.port).eval(
        BUSY_SCRIPT, 0, int(BUSY_SECONDS * 1_000_000)))
    deadline = chalicelib.auth.tokens.answer_deadline

    def held_once_read(*args: Any) -> str:
        found = deadline(*args)  # the deadline read: Redis is held right after
        busy.start()
        eventually(lambda: _redis_is_busy(redis_server.port), 10, "the busy script to hold Redis")
        return found

    monkeypatch.setattr(chalicelib.auth.tokens, "answer_deadline", held_once_read)
    assert stack.answer("POST", "/api/v3/token", headers=alice)[0] == 503
    busy.join()
    monkeypatch.undo()
    eventually(lambda: not _redis_is_busy(redis_server.port), 10, "Redis to answer again")
    hashes = stack.store.keys.user_tokens(canonical_user("alice"))
    assert redis_client.scard(hashes) == 0, "the late login made a token nobody saw"
    # The retry the 503 asks for gets the one token alice may hold.
    eventually(lambda: stack.answer("POST", "/api/v3/token", headers=alice)[0] == 200, 10, "the retry's token")
    assert redis_client.scard(hashes) == 1


class ReplyHoldingProxy(InterposedProxy):
    """A TCP proxy to Redis that passes commands on at once and, while ``held``, keeps Redis's
    replies back: Redis runs what it is sent, its answers arrive late (as from a Redis stopped
    just after it ran a command, its reply not yet written)."""

    def __init__(self, upstream_port: int) -> None:
        self.held = threading.Event()
        self.released = threading.Event()
        super().__init__(upstream_port)

    def _serve(self, client: socket.socket, server: socket.socket) -> None:
        threading.Thread(target=self._pump, args=(client, server, False), daemon=True).start()
        threading.Thread(target=self._pump, args=(server, client, True), daemon=True).start()

    def _pump(self, source: socket.socket, target: socket.socket, replies: bool) -> None:
        while True:
            try:
                data = source.recv(65536)
                if replies and self.held.is_set():
                    self.released.wait()
                if not data:
                    target.shutdown(socket.SHUT_WR)
                    return
                target.sendall(data)
            except OSError:
                return

    def close(self) -> None:
        self.released.set()
        super().close()


@contextmanager
def _through_reply_holding_proxy(config: Config,
                                 redis_server: RedisServer) -> Iterator[tuple[Store, ReplyHoldingProxy]]:
    """A store whose client reaches Redis through a ReplyHoldingProxy (the service's running set
    counted, as a running service has it)."""
    proxy = ReplyHoldingProxy(redis_server.port)
    try:
        store = Store(connect(dataclasses.replace(config.redis, port=proxy.port)))
        # Set-up, on the short socket timeout (its connection warm for the test, as a Lambda's):
        # on a loaded machine a round trip may outlast it, and a recount is safe to run again.
        eventually(lambda: store.recount_running(["slow"], 0.0) or True, 10, "the running set counted",
                   ignoring=(StoreUnavailable,))
        yield store, proxy
    finally:
        proxy.close()


def _replies_held_from_confirmation(confirmer: Store | OnDemandStore, proxy: ReplyHoldingProxy,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """From the moment ``confirmer`` sends its confirmation, Redis's replies are held: the
    confirmation runs, its answer comes late (after the socket timeout: it is lost)."""
    confirm = confirmer._confirm

    def confirm_then_stall(*args: Any) -> None:
        proxy.held.set()
        confirm(*args)

    monkeypatch.setattr(confirmer, "_confirm", confirm_then_stall)


def test_a_confirmation_whose_reply_is_lost_after_it_ran_is_undone(
        redis_server: RedisServer, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch) -> None:
    """Redis runs the confirmation, then stalls before its reply leaves (SIGSTOP, preempted under
    load): the reply arrives after the socket timeout and the caller is answered 503. Before,
    the release sent next needed a new connection whose handshake waited on the same stall, so
    it never ran: the VM stayed confirmed to a caller told it got nothing, for its whole lifetime,
    and at a per-user limit of 1 that user was refused 403 meanwhile (found by
    tests/local/test_redis_stop_burst.py: 4 VMs in 72 stops). The release is now written behind
    the confirmation on its own connection, and Redis runs it as soon as it gets to it."""
    config, clock, direct, provider = _slow_pool(redis_server, redis_client)
    with _through_reply_holding_proxy(config, redis_server) as (store, proxy):
        _replies_held_from_confirmation(store, proxy, monkeypatch)
        with pytest.raises(StoreUnavailable):
            store.checkout([CheckoutRequest("slow", ["slow"], 1)], clock.now(),
                           {"lifetime": "2", "token_user": "alice"}, ALICE)
        # Redis ran the confirmation and, right behind it, the release: the VM is ready again,
        # with no pass, while every reply is still held.
        eventually(lambda: _patient(direct).counts(["slow"])["slow"]["ready"] == 20, 10,
                   "the lost checkout's VM to be back")
        assert _patient(direct).hostnames("slow", "running") == []
        assert not redis_client.zrange(ALICE.holdings_key(direct.keys), 0, -1)
    # Its owner's retry is served at once (the VM confirmed counted against the limit of 1).
    retried = direct.checkout([CheckoutRequest("slow", ["slow"], 1)], clock.now(),
                              {"lifetime": "2", "token_user": "alice"}, ALICE)
    assert retried.ok
    clock.advance(UNCONFIRMED_SECONDS + 1)
    reconcile_pool(_patient(direct), provider, config.pool("slow"), clock, config.service)
    assert _patient(direct).hostnames("slow", "running") == [retried.vms[0].hostname]


def _ondemand_request_whose_confirmation_reply_is_lost(
        request_id: str, config: Config, clock: FakeClock, direct: Store, redis_server: RedisServer,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Alice's on-demand request for one VM of ``slow``, whose confirmation Redis runs and whose
    reply is held past the socket timeout: the create raises StoreUnavailable (a 503), and the
    end written behind the confirmation fails the request (read on ``direct``)."""
    with _through_reply_holding_proxy(config, redis_server) as (store, proxy):
        requests = OnDemandStore(store)
        _replies_held_from_confirmation(requests, proxy, monkeypatch)
        with pytest.raises(StoreUnavailable):
            requests.create(request_id, [OnDemandEntry("slow", "slow", 1)], clock.now(), 300, 2, "alice", quota=ALICE)

        def failed() -> bool:
            request = OnDemandStore(direct).get(request_id)
            return request is not None and request.state == FAILED

        eventually(failed, 10, "the lost request to be failed")


def test_an_ondemand_confirmation_whose_reply_is_lost_after_it_ran_is_undone(
        redis_server: RedisServer, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch) -> None:
    """The same for POST /ondemandvm: before, the request confirmed to a caller answered 503 was
    built and its VMs ran for that caller's token, counted against its limits; now it is failed
    by the end written behind its confirmation, before any pass could build it."""
    config, clock, direct, provider = _slow_pool(redis_server, redis_client)
    _ondemand_request_whose_confirmation_reply_is_lost("stalled", config, clock, direct, redis_server, monkeypatch)
    assert OnDemandStore(direct).create("retried", [OnDemandEntry("slow", "slow", 1)], clock.now(), 300, 2, "alice",
                                        quota=ALICE)
    for _ in range(3):
        reconcile_pool(_patient(direct), provider, config.pool("slow"), clock, config.service)
    assert _patient(direct).counts(["slow"])["slow"]["running"] == 1


def test_a_confirmation_answered_late_but_in_time_is_kept(
        redis_server: RedisServer, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch) -> None:
    """Replies slowed but within the socket timeout: the checkout is answered, and nothing written
    for a lost reply undoes it (the VM stays the caller's, through a pass past its deadline)."""
    config, clock, direct, provider = _slow_pool(redis_server, redis_client)
    patient = dataclasses.replace(config, redis=dataclasses.replace(config.redis, socket_timeout=5.0))
    with _through_reply_holding_proxy(patient, redis_server) as (store, proxy):
        _replies_held_from_confirmation(store, proxy, monkeypatch)
        threading.Timer(0.2, proxy.released.set).start()
        result = store.checkout([CheckoutRequest("slow", ["slow"], 1)], clock.now(), {"lifetime": "2"})
    clock.advance(UNCONFIRMED_SECONDS + 1)
    report = reconcile_pool(_patient(direct), provider, config.pool("slow"), clock, config.service)
    assert report.returned == []
    assert _patient(direct).hostnames("slow", "running") == [result.vms[0].hostname]


BOB = dataclasses.replace(ALICE, owner="user:bob")


def test_an_ondemand_request_whose_creation_was_answered_503_is_made_by_its_owners_retry(
        redis_server: RedisServer, redis_client: redis.Redis) -> None:
    """POST /ondemandvm with its own request_id, answered 503 (the create script ran once Redis got
    to it): the caller sends the same request again, as the 503 says. Before, the retry was
    refused 409 ("has already been created") and the request it named was failed a minute later,
    never built: the caller could never get that request_id served. The same owner's same request
    is now made again; another user's, or another body under that id, is still a duplicate."""
    config, clock, store, provider = _slow_pool(redis_server, redis_client)
    requests = OnDemandStore(store)
    _ondemand_create_answered_503(requests, "build-42", clock, redis_server, redis_client)

    assert not requests.create("build-42", [OnDemandEntry("slow", "slow", 1)], clock.now(), 300, 2, "bob", quota=BOB)
    assert not requests.create("build-42", [OnDemandEntry("slow", "slow", 2)], clock.now(), 300, 2, "alice",
                               quota=ALICE)
    assert requests.create("build-42", [OnDemandEntry("slow", "slow", 1)], clock.now(), 300, 2, "alice", quota=ALICE)
    clock.advance(UNCONFIRMED_SECONDS + 1)  # past the first creation's deadline: the retry's is its own
    for _ in range(3):
        reconcile_pool(_patient(store), provider, config.pool("slow"), clock, config.service)
    request = requests.get("build-42")
    assert request is not None and request.state == READY and request.token_user == "alice", request
    assert _patient(store).counts(["slow"])["slow"]["running"] == 1
    # Served now: the same request sent once more is vmpooler's duplicate, and takes nothing.
    assert not requests.create("build-42", [OnDemandEntry("slow", "slow", 1)], clock.now(), 300, 2, "alice",
                               quota=ALICE)


def test_an_ondemand_request_whose_confirmation_reply_was_lost_is_made_by_its_owners_retry(
        redis_server: RedisServer, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch) -> None:
    """The confirmation ran and its reply was lost: the end written behind it failed the request
    ("never confirmed"), and the caller was answered 503. Its retry under the same request_id was
    refused 409 for good; it is now made again and built."""
    config, clock, direct, provider = _slow_pool(redis_server, redis_client)
    _ondemand_request_whose_confirmation_reply_is_lost("build-7", config, clock, direct, redis_server, monkeypatch)
    retry = OnDemandStore(direct)
    assert retry.create("build-7", [OnDemandEntry("slow", "slow", 1)], clock.now(), 300, 2, "alice", quota=ALICE)
    for _ in range(3):
        reconcile_pool(_patient(direct), provider, config.pool("slow"), clock, config.service)
    request = retry.get("build-7")
    assert request is not None and request.state == READY, request
    assert _patient(direct).counts(["slow"])["slow"]["running"] == 1



def _waiting_for_a_slow_replica(redis_pair: RedisPair, size: int) -> tuple[Config, FakeClock, Store, Store]:
    """A pool of ``size`` filled on the pair's primary, a store on it (its client straight to
    the primary) and one that waits for a replica for 2 s, ten times its socket timeout."""
    config = parse(f"""
:redis: {{server: 127.0.0.1, port: {redis_pair.primary.port}, socket_timeout: {SOCKET_TIMEOUT}}}
:providers:
  :dummy: {{createvm_max_time: 0, boot_time: 0}}
:pools:
  - {{name: slow, size: {size}, provider: dummy}}
""")
    clock = FakeClock()
    direct = Store(redis_pair.client(redis_pair.primary))
    provider = DummyProvider(config.providers["dummy"], direct.client, clock)
    for _ in range(2):
        reconcile_pool(direct, provider, config.pool("slow"), clock, config.service)
    store = Store(connect(config.redis), replica_acks=ReplicaAcks(1, 2000))
    store.recount_running(["slow"], 0.0)
    direct.client.script_load(store.scripts.confirm.script)  # as in a warm Lambda
    redis_pair.wait_synced()
    assert store._replicas_to_wait_for() == 1
    return config, clock, direct, store


def _primary_stopped_in(redis_pair: RedisPair, owner: Any, method: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """``owner.method`` (the fallback a failed confirmation runs on a new connection) runs with
    the primary stopped (SIGSTOP), as when Redis stalls: its handshake times out."""
    assert redis_pair.primary.process is not None
    pid = redis_pair.primary.process.pid
    fallback = getattr(owner, method)

    def while_the_primary_is_stopped(*args: Any, **kwargs: Any) -> Any:
        os.kill(pid, signal.SIGSTOP)
        try:
            return fallback(*args, **kwargs)
        finally:
            os.kill(pid, signal.SIGCONT)

    monkeypatch.setattr(owner, method, while_the_primary_is_stopped)


@contextmanager
def _replication_link_held(redis_pair: RedisPair) -> Iterator[None]:
    redis_pair.link.hold()
    try:
        yield
    finally:
        redis_pair.link.release()


def test_a_confirmation_waiting_for_a_replica_whose_reply_is_lost_is_undone(
        redis_pair: RedisPair, monkeypatch: pytest.MonkeyPatch) -> None:
    """With replica acknowledgements (``min_replica_acks``) the confirmation is followed by WAIT on
    its connection. The replica slow (its link held) and the WAIT's timeout past the socket
    timeout, the caller is answered 503 while WAIT still blocks the connection; the release
    written behind the confirmation then reached Redis, which drops what a blocked client sent
    once it disconnects (checked on 7.0: a SET behind a blocked WAIT never runs), and the release
    tried on a new connection timed out, the primary stopped (SIGSTOP) by then. Before, the VM
    stayed confirmed to a caller told it got nothing, for its whole lifetime."""
    _, clock, direct, store = _waiting_for_a_slow_replica(redis_pair, 5)
    _primary_stopped_in(redis_pair, store, "_release_after_failure", monkeypatch)
    with _replication_link_held(redis_pair), pytest.raises(StoreUnavailable):
        store.checkout([CheckoutRequest("slow", ["slow"], 1)], clock.now(), {"lifetime": "2"})
    eventually(lambda: direct.counts(["slow"])["slow"]["ready"] == 5, 10, "the lost checkout's VM to be back")
    assert direct.hostnames("slow", "running") == []


def test_an_ondemand_request_whose_replica_wait_reply_is_lost_is_never_built(
        redis_pair: RedisPair, monkeypatch: pytest.MonkeyPatch) -> None:
    """POST /ondemandvm with replica acknowledgements: the request is confirmed, then WAIT asks a
    replica for it. The replica slow and WAIT's timeout past the socket timeout, the caller is
    answered 503; before, nothing ended the request (only a WAIT answered short did), so it was
    built and its VMs ran for a caller told it failed, and its retry under the same request_id
    was a 409. The end is now written on a spare connection (the end tried afterwards on a new
    one timed out, the primary stopped by then), and the retry makes it again."""
    _, clock, direct, store = _waiting_for_a_slow_replica(redis_pair, 0)
    requests = OnDemandStore(store)
    _primary_stopped_in(redis_pair, requests, "end", monkeypatch)
    with _replication_link_held(redis_pair), pytest.raises(StoreUnavailable):
        requests.create("build-9", [OnDemandEntry("slow", "slow", 1)], clock.now(), 300, 2, "alice", quota=ALICE)

    def failed() -> bool:
        request = OnDemandStore(direct).get("build-9")
        return request is not None and request.state == FAILED

    eventually(failed, 10, "the request answered 503 to be failed")
    monkeypatch.undo()
    redis_pair.wait_synced()
    assert requests.create("build-9", [OnDemandEntry("slow", "slow", 1)], clock.now(), 300, 2, "alice", quota=ALICE)
    request = OnDemandStore(direct).get("build-9")
    assert request is not None and request.state == OPEN, request


def stop_server(server: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL if it has not exited within 10 s."""
    server.terminate()
    try:
        server.wait(10)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait()


@pytest.fixture
def tls_redis(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """A redis-server serving TLS only, as ElastiCache with in-transit encryption (``rediss://``):
    its port and the certificate a client verifies it with (self-signed, for 127.0.0.1)."""
    with tls_redis_server(tmp_path) as served:
        yield served


@contextmanager
def tls_redis_server(tmp_path: Path, choose_port: Any = free_port) -> Iterator[tuple[int, Path]]:
    """``tls_redis``, its port chosen by ``choose_port()``."""
    binary = shutil.which("redis-server")
    if binary is None or shutil.which("openssl") is None:
        pytest.skip("needs redis-server and openssl")
    cert, key = tmp_path / "redis.crt", tmp_path / "redis.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)

    def start(port: int) -> subprocess.Popen[bytes]:
        """redis-server on TLS port ``port``, answering; RuntimeError if it exits first (its port
        taken after free_port() chose it: started again on another, ``on_a_free_port``)."""
        server = subprocess.Popen([binary, "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1",
                                   "--tls-cert-file", str(cert), "--tls-key-file", str(key),
                                   "--tls-ca-cert-file", str(cert), "--tls-auth-clients", "no", "--save", "",
                                   "--appendonly", "no", "--dir", str(tmp_path), "--loglevel", "warning"])
        client = redis.Redis(host="127.0.0.1", port=port, ssl=True, ssl_ca_certs=str(cert), socket_timeout=1)

        def answers() -> bool:
            if server.poll() is not None:
                raise RuntimeError(f"redis-server exited ({server.returncode}) on TLS port {port}")
            return bool(client.ping())

        try:
            eventually(answers, 10, "redis-server to answer over TLS", ignoring=(redis.RedisError,))
        except BaseException:
            stop_server(server)
            raise
        finally:
            client.close()
        return server

    port, server = on_a_free_port(choose_port, start, port_in_use)
    try:
        yield port, cert
    finally:
        stop_server(server)


def test_a_tls_redis_whose_port_was_taken_before_it_bound_it_starts_on_another(tmp_path: Path) -> None:
    """The port free_port() chose taken by another process before redis-server bound it (tests and
    helpers pick ports at once): redis-server exited, and the fixture waited 10 s for it and failed."""
    with socket.socket() as taker:
        taker.bind(("127.0.0.1", 0))
        taker.listen()
        taken = taker.getsockname()[1]
        chosen = iter([taken])
        with tls_redis_server(tmp_path, lambda: next(chosen, 0) or free_port()) as (port, cert):
            assert port != taken
            client = redis.Redis(host="127.0.0.1", port=port, ssl=True, ssl_ca_certs=str(cert), socket_timeout=5)
            assert client.ping()
            client.close()


def test_a_confirmation_whose_reply_is_lost_over_tls_is_undone(
        tls_redis: tuple[int, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """The release written behind a confirmation whose reply is lost, over TLS (ElastiCache's
    in-transit encryption): written on the TLS connection after its read timed out, it reaches
    Redis and runs, the VM back in ready with no pass."""
    port, cert = tls_redis
    config = parse(f"""
:redis: {{server: 127.0.0.1, port: {port}, socket_timeout: {SOCKET_TIMEOUT}, tls: true}}
:providers:
  :dummy: {{createvm_max_time: 0, boot_time: 0}}
:pools:
  - {{name: slow, size: 5, provider: dummy}}
""")
    clock = FakeClock()
    direct = Store(redis.Redis(host="127.0.0.1", port=port, ssl=True, ssl_ca_certs=str(cert), socket_timeout=5,
                               decode_responses=True))
    provider = DummyProvider(config.providers["dummy"], direct.client, clock)
    for _ in range(2):
        reconcile_pool(direct, provider, config.pool("slow"), clock, config.service)
    direct.client.script_load(direct.scripts.confirm.script)  # as in a warm Lambda
    proxy = ReplyHoldingProxy(port)
    try:
        store = Store(connect(config.redis, url=f"rediss://127.0.0.1:{proxy.port}/0?ssl_ca_certs={cert}"))
        store.recount_running(["slow"], 0.0)
        _replies_held_from_confirmation(store, proxy, monkeypatch)
        with pytest.raises(StoreUnavailable):
            store.checkout([CheckoutRequest("slow", ["slow"], 1)], clock.now(), {"lifetime": "2"})
        eventually(lambda: direct.counts(["slow"])["slow"]["ready"] == 5, 10, "the lost checkout's VM to be back")
        assert direct.hostnames("slow", "running") == []
    finally:
        proxy.close()


class SlowLinkProxy(InterposedProxy):
    """A TCP proxy to Redis that passes commands on at ``bytes_per_second`` (a slow network) and
    Redis's replies at once: a pipeline of large calls reaches Redis over seconds, each call run
    (on Redis's clock) as its last byte arrives, however fast or loaded the machine is."""

    def __init__(self, upstream_port: int, bytes_per_second: float) -> None:
        self.bytes_per_second = bytes_per_second
        super().__init__(upstream_port)

    def _serve(self, client: socket.socket, server: socket.socket) -> None:
        threading.Thread(target=self._pump, args=(client, server, True), daemon=True).start()
        threading.Thread(target=self._pump, args=(server, client, False), daemon=True).start()

    def _pump(self, source: socket.socket, target: socket.socket, slow: bool) -> None:
        while True:
            try:
                data = source.recv(8192)
                if not data:
                    target.shutdown(socket.SHUT_WR)
                    return
                if slow:
                    time.sleep(len(data) / self.bytes_per_second)
                target.sendall(data)
            except OSError:
                return


NAMES_TIMEOUT = 2.0
"""The socket timeout of the names test: no answer on a loaded machine comes that late (at 0.2 s,
with Redis's own speed making the calls long, answers and the mark's window were lost at load ~20)."""


def test_a_names_read_held_by_calls_longer_than_the_socket_timeout_is_marked(
        redis_server: RedisServer, redis_client: redis.Redis) -> None:
    """Names held by several calls in one pipeline, then the mark by a last call. Redis answers
    each call as it runs, so the client (waiting for each answer within its socket timeout) waits
    out a pipeline longer than the timeout. One deadline for those calls passed meanwhile and
    refused the later ones: a read of 200,000 names at a 0.2 s timeout was never marked (random
    clone names for good, a claim lapsing and a full vCenter read every 40 s). Only the last
    call, sent alone, takes a deadline now. Here the link to Redis passes each call on in a
    quarter of the timeout, the six calls together in 1.5 times it: on Redis's clock the pipeline
    outlasts the timeout on any machine, and each answer comes well within it."""
    calls = 6
    found = [f"word-name-{index:07d}" for index in range(calls * NAMES_PER_CALL)]
    call_bytes = sum(len(f"${len(name)}\r\n{name}\r\n") for name in found[:NAMES_PER_CALL])
    proxy = SlowLinkProxy(redis_server.port, bytes_per_second=call_bytes / (NAMES_TIMEOUT / 4))
    try:
        config = parse(f":redis: {{server: 127.0.0.1, port: {proxy.port}, socket_timeout: {NAMES_TIMEOUT}}}\n")
        names = NamesStore(Store(connect(config.redis)))
        assert names.claim("vsphere", 100.0, 40.0, "reader")
        started = time.monotonic()
        marked = names.hold("vsphere", found, 100.0, 3600, "reader")
        took = time.monotonic() - started
    finally:
        proxy.close()
    assert took > NAMES_TIMEOUT, f"the premise: the calls outlast the socket timeout ({took:.1f} s)"
    assert marked is True
    assert redis_client.zcard(names.keys.names_held) == len(found)
    assert redis_client.exists(names.keys.names_known("vsphere"))
