"""A pass's scripts run by Redis after the pass gave up on their answer (Redis frozen by SIGSTOP,
a long fork or a slow AOF rewrite past the client's socket timeout, then resumed) leave nothing
that holds the pool back: each takes its caller's deadline on Redis's clock (store/deadline.py)
and, past it, changes nothing. Here the deadline is already past when the script runs (a run
late by one socket timeout); tests/chaos/test_frozen_reservation.py freezes a real Redis."""

from __future__ import annotations

import pytest
import redis

from chalicelib.store import Store
from chalicelib.store.migrations import MigrationStore
from chalicelib.store.names import NamesStore
from chalicelib.store.ondemand import OnDemandEntry, OnDemandStore
from chalicelib.store.vm_tasks import EnqueueResult, VMTaskStore, new_task

POOL = "alpha"


@pytest.fixture
def late(monkeypatch: pytest.MonkeyPatch, redis_client: redis.Redis) -> None:
    """Every deadline handed to a script is already past on Redis's clock when it runs."""
    def past(_: Store) -> str:
        seconds, microseconds = redis_client.time()
        return str(int(seconds) * 1000 + int(microseconds) // 1000 - 1)

    monkeypatch.setattr(Store, "answer_deadline", past)


def test_a_reservation_run_after_its_deadline_reserves_nothing(redis_client: redis.Redis, late: None) -> None:
    """Before, it wrote pending records for names no pass would clone: the pool's clone slots
    were held for the start grace (2 minutes) after every freeze."""
    store = Store(redis_client)
    assert store.reserve_clones(POOL, 3, 10, "tmpl", "example.com", ["new-0", "new-1", "new-2"], 100.0) == []
    assert redis_client.keys("*") == []  # no record, no pending or cloning entry, no demand


def test_a_reservation_in_time_reserves(redis_client: redis.Redis) -> None:
    store = Store(redis_client)
    assert store.reserve_clones(POOL, 2, 10, "tmpl", "example.com", ["new-0", "new-1", "new-2"], 100.0) == [
        "new-0", "new-1"]


def test_a_clone_asked_mark_run_after_its_deadline_marks_nothing(redis_client: redis.Redis,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Before, it marked VMs whose pass had given up and asked for no clone: held as asked past
    the start grace, up to the pool's timeout when the provider cannot tell a clone is made."""
    store = Store(redis_client)
    reserved = store.reserve_clones(POOL, 2, 10, "tmpl", "example.com", ["new-0", "new-1"], 100.0)
    assert store.mark_clones_asked(POOL, reserved[:1], 101.0) == reserved[:1]  # in time: marked

    late_deadline = str(int(store.answer_deadline()) - 10_000_000)
    monkeypatch.setattr(Store, "answer_deadline", lambda _: late_deadline)
    assert store.mark_clones_asked(POOL, reserved[1:], 102.0) == []
    assert "clone_asked" not in redis_client.hgetall(store.keys.vm(reserved[1]))


def test_a_names_claim_run_after_its_deadline_claims_nothing(redis_client: redis.Redis, late: None) -> None:
    """Before, a claim whose pass had given up kept every other pass from reading the names of
    the VMs Redis forgot for a claim's hold (word names came back that much later)."""
    store = Store(redis_client)
    names = NamesStore(store)
    assert not names.claim("vsphere", 100.0, 300.0, "late-pass")
    assert not redis_client.exists(store.keys.names_reading("vsphere"))


def test_a_names_claim_in_time_claims(redis_client: redis.Redis) -> None:
    names = NamesStore(Store(redis_client))
    assert names.claim("vsphere", 100.0, 300.0, "pass-1")
    assert not names.claim("vsphere", 101.0, 300.0, "pass-2")


def test_a_names_hold_run_after_its_deadline_holds_nothing_and_sets_no_mark(
        redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch) -> None:
    """Before, a hold whose pass had given up (and said the names were not held) set the
    provider's mark from that pass's read all the same: word names back on a read nobody waited
    for. The claim stays until it lapses; the next pass reads again."""
    store = Store(redis_client)
    names = NamesStore(store)
    assert names.claim("vsphere", 100.0, 40.0, "pass-1")
    late_deadline = str(int(store.answer_deadline()) - 10_000_000)
    monkeypatch.setattr(Store, "answer_deadline", lambda _: late_deadline)
    assert not names.hold("vsphere", ["alpha-one"], 100.0, 3600, "pass-1")
    assert not redis_client.exists(store.keys.names_known("vsphere"))
    assert not redis_client.exists(store.keys.names_held)

    monkeypatch.undo()
    assert names.hold("vsphere", ["alpha-one"], 100.0, 3600, "pass-1")
    assert redis_client.exists(store.keys.names_known("vsphere"))


def test_an_ondemand_reservation_run_after_its_deadline_reserves_nothing(
        redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch) -> None:
    """Before, its names held the request's VMs and the on-demand clone slots for the start grace."""
    store = Store(redis_client)
    ondemand = OnDemandStore(store)
    assert ondemand.create("req-1", [OnDemandEntry(POOL, POOL, 2)], 100.0, 3600, 2)
    late_deadline = str(int(store.answer_deadline()) - 10_000_000)
    monkeypatch.setattr(Store, "answer_deadline", lambda _: late_deadline)
    late = ondemand.reserve("req-1", POOL, 4, 3, "tmpl", "example.com", ["od-0", "od-1"], 110.0)
    assert (late.state, late.reserved) == ("open", ())
    assert not redis_client.exists(store.keys.vm("od-0"))

    monkeypatch.undo()
    in_time = ondemand.reserve("req-1", POOL, 4, 3, "tmpl", "example.com", ["od-0", "od-1"], 111.0)
    assert in_time.reserved == ("od-0", "od-1")


def test_a_task_take_run_after_its_deadline_takes_nothing(redis_client: redis.Redis,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Before, it took a user's disk or snapshot that its pass, gone, never started: after the
    start grace (2 minutes) the task failed as "never started" instead of being done."""
    store = Store(redis_client)
    store.client.hset(store.keys.vm("vm-1"), mapping={"name": "vm-1", "pool": POOL, "state": "running",
                                                       "checkout": "100.0"})
    store.client.zadd(store.keys.pool_state(POOL, "running"), {"vm-1": 100.0})
    seen = store.get_vm("vm-1")
    assert seen is not None
    tasks = VMTaskStore(store)
    assert tasks.enqueue(seen, new_task("disk", 200.0, size_gb=8), 200.0) is EnqueueResult.QUEUED
    late_deadline = str(int(store.answer_deadline()) - 10_000_000)
    monkeypatch.setattr(Store, "answer_deadline", lambda _: late_deadline)
    assert tasks.take("vm-1", POOL, 201.0) == (None, False)
    assert "task" not in redis_client.hgetall(store.keys.vm("vm-1"))

    monkeypatch.undo()
    task, new = tasks.take("vm-1", POOL, 202.0)
    assert new and task is not None and task["size_gb"] == 8


def test_a_migration_slot_take_run_after_its_deadline_takes_no_slot(redis_client: redis.Redis,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Before, it held a service-wide migration slot for a move nobody sent, for the start grace
    (2 minutes), while other checked-out VMs waited for one."""
    store = Store(redis_client)
    store.client.hset(store.keys.vm("vm-1"), mapping={"name": "vm-1", "pool": POOL, "state": "running",
                                                       "migration": "queued"})
    migrations = MigrationStore(store)
    late_deadline = str(int(store.answer_deadline()) - 10_000_000)
    monkeypatch.setattr(Store, "answer_deadline", lambda _: late_deadline)
    assert migrations.take_slot("vm-1", 1, 100.0) == "limit"
    assert redis_client.zcard(store.keys.migrating) == 0
    assert redis_client.hget(store.keys.vm("vm-1"), "migration") == "queued"

    monkeypatch.undo()
    assert migrations.take_slot("vm-1", 1, 101.0) == "started"
