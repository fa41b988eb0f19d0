"""Redis frozen (SIGSTOP; a long fork or a slow AOF rewrite alike) while a pass reserves its
clones, past the client's socket timeout, then resumed: the pass gave up (StoreUnavailable) and
starts no clone, and the reservation Redis runs late reserves nothing (lua/reserve_clones.lua's
deadline), so the next pass refills the pool at once. Before, the late reservation's names held
the pool's clone slots, unasked, for the start grace (CLONE_START_GRACE_SECONDS, 2 minutes):
every freeze delayed the refill of every pool with a pass in flight by up to 2 minutes.

The names hold after Redis lost its data likewise (lua/names_hold.lua): run late, it set the
provider's names-known mark from a read whose pass had given up (third test).

An on-demand request's claim (lua/ondemand_claim.lua) run late carries no deadline, on purpose:
what it marks holds nothing back (second test)."""

from __future__ import annotations

import dataclasses
import signal
import time
from typing import Any, Iterator

import pytest
import redis

from chalicelib.clock import FakeClock
from chalicelib.config import parse
from chalicelib.manager.reconcile import reconcile_pool
from chalicelib.providers.dummy import DummyProvider
from chalicelib.store import Store, StoreUnavailable, connect
from chalicelib.store import names as names_store
from chalicelib.store.names import NamesStore
from chalicelib.store.ondemand import CLONE_CLAIMED, OnDemandEntry, OnDemandStore
from local.redis_server import RedisServer
from tests.support import eventually, pausable_redis_server

SOCKET_TIMEOUT = 0.3
FROZEN_AFTER_TIMEOUT = 0.5
"""How long Redis stays frozen after the pass gave up (a freeze outlasts the timeout)."""


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    """A redis-server of this test's own: it is frozen, and never the session's."""
    with pausable_redis_server() as server:
        yield server


def test_a_reservation_run_after_a_freeze_holds_no_clone_slot(own_redis: RedisServer) -> None:
    config = parse(f"""
:config: {{task_limit: 10}}
:redis: {{server: 127.0.0.1, port: {own_redis.port}, socket_timeout: {SOCKET_TIMEOUT}}}
:providers:
  :dummy: {{createvm_max_time: 0, boot_time: 0}}
:pools:
  - {{name: frozen, size: 4, provider: dummy}}
""")
    process = own_redis.process
    assert process is not None
    plain = redis.Redis(port=own_redis.port, decode_responses=True)
    clock = FakeClock()
    store = Store(connect(config.redis))
    provider = DummyProvider(config.providers["dummy"], plain, clock)
    # As in a warm Lambda: Redis knows the script (a late EVALSHA runs it, not NOSCRIPT) and the
    # process has measured Redis's clock (store/deadline.py: no TIME while Redis is frozen).
    plain.script_load(store.scripts.reserve_clones.script)
    store.answer_deadline()
    connection = store.client.client_id()
    reserve = store.scripts.reserve_clones

    def reserve_while_frozen(*args: Any, **kwargs: Any) -> Any:
        process.send_signal(signal.SIGSTOP)
        try:
            return reserve(*args, **kwargs)
        finally:
            time.sleep(FROZEN_AFTER_TIMEOUT)
            process.send_signal(signal.SIGCONT)

    store.scripts.reserve_clones = reserve_while_frozen  # type: ignore[method-assign]
    with pytest.raises(StoreUnavailable):
        reconcile_pool(store, provider, config.pool("frozen"), clock, config.service)
    store.scripts.reserve_clones = reserve  # type: ignore[method-assign]
    eventually(lambda: all(client["id"] != str(connection) for client in plain.client_list()), 10,
               "the reservation queued in the frozen Redis to run")
    assert plain.zcard(store.keys.pool_state("frozen", "pending")) == 0  # it reserved nothing

    clock.advance(1)
    # On a loaded machine a round trip may outlast the short timeout, which is for the freeze.
    patient = Store(connect(dataclasses.replace(config.redis, socket_timeout=5.0)))
    report = reconcile_pool(patient, provider, config.pool("frozen"), clock, config.service)
    assert len(report.clones_started) == 4
    assert patient.counts(["frozen"])["frozen"]["ready"] == 4


def test_an_ondemand_claim_run_after_a_freeze_holds_no_clone_slot(own_redis: RedisServer) -> None:
    """Redis frozen while a pass claims the start of an on-demand request's clones: the pass gave
    up and asked for no clone, and the claim runs once Redis resumes (it has no deadline). Its
    mark is harmless: a pass judges a clone started by ``clone_asked`` (lua/clone_asked.lua, which
    a late copy does not write), and the request ended by its owner destroys the VMs claimed and
    not asked at once, their on-demand clone slots free (lua/ondemand_end.lua). Fails if either
    ever reads the claim as a clone that may run (slots held for the start grace, or until the
    pool's timeout)."""
    config = parse(f"""
:redis: {{server: 127.0.0.1, port: {own_redis.port}, socket_timeout: {SOCKET_TIMEOUT}}}
:providers:
  :dummy: {{}}
:pools:
  - {{name: frozen, size: 0, provider: dummy}}
""")
    process = own_redis.process
    assert process is not None
    plain = redis.Redis(port=own_redis.port, decode_responses=True)
    store = Store(connect(config.redis))
    requests = OnDemandStore(store)
    assert requests.create("req-1", [OnDemandEntry("frozen", "frozen", 2)], 100.0, 3600, 2)
    reserved = requests.reserve("req-1", "frozen", 4, 3, "tmpl", "", ["od-0", "od-1"], 110.0).reserved
    assert reserved == ("od-0", "od-1")
    plain.script_load(store.scripts.ondemand_claim.script)  # a warm Lambda's: a late EVALSHA runs
    connection = store.client.client_id()

    process.send_signal(signal.SIGSTOP)
    try:
        with pytest.raises(StoreUnavailable):
            requests.claim("req-1", reserved, 111.0)
    finally:
        time.sleep(FROZEN_AFTER_TIMEOUT)
        process.send_signal(signal.SIGCONT)
    eventually(lambda: all(client["id"] != str(connection) for client in plain.client_list()), 10,
               "the claim queued in the frozen Redis to run")
    records = [plain.hgetall(store.keys.vm(host)) for host in reserved]
    assert [record.get(CLONE_CLAIMED) for record in records] == ["111.0", "111.0"]  # it ran, late
    assert not any("clone_asked" in record for record in records)

    patient = OnDemandStore(Store(connect(dataclasses.replace(config.redis, socket_timeout=5.0))))
    assert patient.end("req-1", "deleted", "deleted by its owner", "request deleted", 112.0).result == "ended"
    assert [plain.hget(store.keys.vm(host), "state") for host in reserved] == ["destroyed", "destroyed"]
    assert plain.zcard(store.keys.cloning) == 0  # no on-demand clone slot held


def test_a_names_hold_run_after_a_freeze_sets_no_mark(own_redis: RedisServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """Redis frozen from the moment the hold is sent, past the socket timeout: the pass gives up
    (StoreUnavailable, random names). Before, the hold Redis ran once resumed set the mark all
    the same: word names back from a read nobody waited for."""
    config = parse(f"""
:redis: {{server: 127.0.0.1, port: {own_redis.port}, socket_timeout: {SOCKET_TIMEOUT}}}
""")
    process = own_redis.process
    assert process is not None
    plain = redis.Redis(port=own_redis.port, decode_responses=True)
    store = Store(connect(config.redis))
    names = NamesStore(store)
    plain.script_load(store.scripts.names_hold.script)  # as in a warm Lambda: a late EVALSHA runs
    assert names.claim("vsphere", 100.0, 40.0, "frozen-pass")  # measures Redis's clock too
    connection = store.client.client_id()
    run_many = names_store.run_many

    def hold_while_frozen(*args: Any) -> Any:
        process.send_signal(signal.SIGSTOP)
        try:
            return run_many(*args)
        finally:
            time.sleep(FROZEN_AFTER_TIMEOUT)
            process.send_signal(signal.SIGCONT)

    monkeypatch.setattr(names_store, "run_many", hold_while_frozen)
    with pytest.raises(StoreUnavailable):
        names.hold("vsphere", ["alpha-one"], 100.0, 3600, "frozen-pass")
    eventually(lambda: all(client["id"] != str(connection) for client in plain.client_list()), 10,
               "the hold queued in the frozen Redis to run")
    assert not plain.exists(store.keys.names_known("vsphere"))  # random names until read again
    assert not plain.exists(store.keys.names_held)
