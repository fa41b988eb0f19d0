"""The store's batch writes (a pass's moves, record updates, finished clones): each VM is still
checked on its own, and the batch costs Redis one script run and one write per record, not a
script run and a write per field (counted by the server: INFO commandstats, exact)."""

from __future__ import annotations

from typing import Callable

import pytest
import redis

from chalicelib.config import parse
from chalicelib.store import ModifyResult, Store, connect
from chalicelib.store import store as store_module
from chalicelib.store.history import PoolHistory, Sample
from chalicelib.store.migrations import MigrationStore
from chalicelib.store.scripts import registered
from chalicelib.store.vm_tasks import EnqueueResult, VMTaskStore, new_task
from tests.support import RedisRoundTrips, redis_commands

POOL = "alpha"


def pending_vms(store: Store, hostnames: list[str]) -> None:
    """Records of VMs in the pool's pending set (as reserve_clones leaves them), with a field
    the move deletes."""
    for hostname in hostnames:
        store.client.hset(store.keys.vm(hostname), mapping={
            "name": hostname, "pool": POOL, "state": "pending", "not_ready_reason": "booting"})
        store.client.zadd(store.keys.pool_state(POOL, "pending"), {hostname: 100.0})
        store.client.zadd(store.keys.cloning, {hostname: 100.0})


def commands_of(client: redis.Redis, action: Callable[[], object]) -> dict[str, int]:
    """The commands Redis ran for ``action``."""
    client.config_resetstat()
    action()
    return redis_commands(client)


def test_moving_many_vms_is_one_script_run_with_one_write_per_record(redis_client: redis.Redis) -> None:
    store = Store(redis_client)
    hosts = [f"vm-{n}" for n in range(6)]
    pending_vms(store, hosts)
    store.client.incr(store.keys.changes)
    store.client.zrem(store.keys.pool_state(POOL, "pending"), "vm-5")  # checked out meanwhile, say
    store.move("nothing", POOL, "ready", "running", 1.0)  # loads the script; moves nothing

    moved: list[str] = []
    commands = commands_of(redis_client, lambda: moved.extend(store.move_many(POOL, "pending", "ready", 200.0, {
        host: {"ready_at": 200.0, "ip": f"10.0.0.{n}", "host": "esx-1", "not_ready_reason": None}
        for n, host in enumerate(hosts)})))

    assert moved == hosts[:5]  # each VM checked on its own: the one no longer pending stays put
    for n, host in enumerate(hosts[:5]):
        record = store.get_vm(host)
        assert (record.state, record.ready_at, record.ip, record.host) == ("ready", 200.0, f"10.0.0.{n}", "esx-1")
        assert "not_ready_reason" not in record.raw and record.raw["change_seq"] == "1"
    assert store.get_vm("vm-5").state == "pending"
    assert store.state_members(POOL, "ready") == {host: 200.0 for host in hosts[:5]}
    assert redis_client.zrange(store.keys.cloning, 0, -1) == ["vm-5"]
    # ZREM: from the pending set (6 tries), then from the cloning set and the service's running set
    # (keys.running: a VM not running is never counted, whatever state it left) for each VM moved,
    # and from the pools' clones in flight (keys.pool_clones) for each that was still cloning
    assert commands == {"evalsha": 1, "get": 1, "zrem": 6 + 5 + 5 + 5, "hset": 5, "hdel": 5, "zadd": 5}


def test_a_move_sets_its_fields_after_the_states_own_and_deletes_after_both(redis_client: redis.Redis) -> None:
    store = Store(redis_client)
    pending_vms(store, ["vm-0"])
    assert store.move("vm-0", POOL, "pending", "completed", 300.0, completed_at=299.5, reason="boot timeout",
                      change_seq=None, not_ready_reason=None)
    assert store.get_vm("vm-0").raw == {"name": "vm-0", "pool": POOL, "state": "completed",
                                        "completed_at": "299.5", "reason": "boot timeout"}
    assert not store.move("vm-0", POOL, "pending", "completed", 301.0, reason="again")  # no longer pending


def test_moves_of_a_large_batch_run_in_several_scripts_in_one_round_trip(
        redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(store_module, "MOVE_BATCH", 2)
    store = Store(redis_client)
    hosts = [f"vm-{n}" for n in range(5)]
    pending_vms(store, hosts)
    store.move("nothing", POOL, "ready", "running", 1.0)

    moved: list[str] = []
    commands = commands_of(redis_client, lambda: moved.extend(
        store.move_many(POOL, "pending", "destroyed", 400.0, {host: {"destroy_task": None} for host in hosts})))

    assert moved == hosts and commands["evalsha"] == 3
    assert all(redis_client.ttl(store.keys.vm(host)) > 0 for host in hosts)
    assert store.counts([POOL])[POOL]["pending"] == 0


def test_updating_many_records_is_one_script_run_and_never_creates_a_record(redis_client: redis.Redis) -> None:
    store = Store(redis_client)
    pending_vms(store, ["vm-0", "vm-1", "vm-2"])
    store.update_vms({"vm-9": {"clone_task": "t"}})  # loads the script

    updated: list[str] = []
    commands = commands_of(redis_client, lambda: updated.extend(store.update_vms({
        "vm-0": {"clone_task": "task-0", "not_ready_reason": None}, "gone": {"clone_task": "task-x"},
        "vm-2": {"clone_task": "task-2"}})))

    assert updated == ["vm-0", "vm-2"]
    assert not redis_client.exists(store.keys.vm("gone"))
    assert store.get_vm("vm-0").raw == {"name": "vm-0", "pool": POOL, "state": "pending", "clone_task": "task-0"}
    assert store.get_vm("vm-2").clone_task == "task-2" and store.get_vm("vm-1").clone_task == ""
    assert commands == {"evalsha": 1, "exists": 3, "hset": 2, "hdel": 1}
    assert store.update_vm("vm-1", ip="10.0.0.1") and not store.update_vm("gone", ip="10.0.0.2")
    assert store.get_vm("vm-1").ip == "10.0.0.1" and not redis_client.exists(store.keys.vm("gone"))


def test_finishing_many_clones_frees_their_slots_in_one_command(redis_client: redis.Redis) -> None:
    store = Store(redis_client)
    pending_vms(store, ["vm-0", "vm-1", "vm-2"])
    redis_client.delete(store.keys.vm("vm-1"))  # its record is gone (data_ttl): not recreated
    store.finish_clones(["nothing"], 1.0)

    commands = commands_of(redis_client, lambda: store.finish_clones(["vm-0", "vm-1", "vm-2"], 500.0))

    assert redis_client.zcard(store.keys.cloning) == 0
    assert store.get_vm("vm-0").clone_end == 500.0 and store.get_vm("vm-2").clone_end == 500.0
    assert not redis_client.exists(store.keys.vm("vm-1"))
    # one ZREM from the cloning set, one from its pools' own part (keys.pool_clones)
    assert commands == {"evalsha": 1, "zrem": 2, "exists": 3, "hset": 2}


def test_a_partial_snapshot_looks_up_only_the_changed_vms_it_has_not_listed(redis_client: redis.Redis) -> None:
    """The provider's changed VMs are looked for in ready and running unless the snapshot lists
    them already (pending, completed and discovered are listed whole): a pass's new clones and
    destroys cost no lookup."""
    store = Store(redis_client)
    pending_vms(store, ["new-0", "new-1"])
    redis_client.zadd(store.keys.pool_state(POOL, "completed"), {"old-0": 50.0})
    redis_client.zadd(store.keys.pool_state(POOL, "ready"), {"ready-0": 900.0, "ready-1": 950.0})
    redis_client.zadd(store.keys.pool_state(POOL, "running"), {"busy-0": 800.0})
    store.pool_snapshot_due(POOL, 1000.0, 600.0)  # loads the script

    snapshot: list[object] = []
    commands = commands_of(redis_client, lambda: snapshot.append(store.pool_snapshot_due(
        POOL, 1000.0, 600.0, ["new-0", "new-1", "old-0", "ready-1", "busy-0", "gone-0"])))

    (seen,) = snapshot
    assert seen.members == {"pending": {"new-0": 100.0, "new-1": 100.0}, "ready": {"ready-1": 950.0},
                            "running": {"busy-0": 800.0}, "completed": {"old-0": 50.0}, "discovered": {}}
    # ready-1, busy-0 and gone-0, in ready and in running; and whether the pool claims clone slots
    assert commands["zscore"] == 2 * 3 + 1


@pytest.mark.parametrize("other_clones", [1, 40])
def test_a_reservation_reads_only_its_pools_records_however_many_clones_other_pools_run(
        redis_client: redis.Redis, other_clones: int) -> None:
    """reserve_clones counted the slots in use by reading the record of every VM in the
    service's cloning set, so at 1,000 pools each pool's reservation cost as much as the fleet's
    clones in flight. The other pools' clones are now one ZCARD (keys.pool_clones): what a
    reservation runs does not grow with them, and the counts are the same."""
    store = Store(redis_client)
    pending_vms(store, [f"vm-{n}" for n in range(4)])  # the pool's own clones in flight
    pending_vms(store, ["od-0"])  # an on-demand request's: neither fills the pool nor uses its slots
    store.client.hset(store.keys.vm("od-0"), "request", "req-1")
    others = [f"beta-{n}" for n in range(other_clones)]  # another pool's clones: they use slots
    assert store.reserve_clones("beta", other_clones, 100, "tmpl", "example.com", others, 100.0) == others
    assert store.reserve_clones(POOL, 1, 10, "tmpl", "example.com", [], 150.0) == []  # full; loads the script

    reserved: list[str] = []
    commands = commands_of(redis_client, lambda: reserved.extend(store.reserve_clones(
        POOL, 7, 4 + other_clones + 2, "tmpl", "example.com", [f"new-{n}" for n in range(4)], 200.0)))

    # deficit 7 - 4 = 3; the task limit less the 4 + other_clones clones in flight no request's: 2
    assert reserved == ["new-0", "new-1"]
    # the 5 pending VMs' records once each, none of the other pool's; the rest does not depend on it
    # (a ZINTERCARD of the pool's completed VMs with the pools' clones: its clones held there while
    # vCenter still runs them count in its fair share), and the pool's size override (one lowered
    # since the pass read its size caps it); each candidate tried is looked up among the names
    # held after a Redis data loss (manager/names.py): two more ZSCOREs, one a candidate; and
    # Redis's clock read once, against the reservation's deadline (a late run reserves nothing)
    assert commands.get("hmget") == 5 and "hexists" not in commands
    assert commands == {"evalsha": 1, "exists": 3, "hget": 1, "hmget": 5, "hset": 2, "zadd": 8, "zcard": 4,
                        "zintercard": 4, "zrange": 3, "zrangebyscore": 1, "zrank": 1, "zscore": 2 + 2,
                        "time": 1}
    assert store.get_vm("new-0").state == "pending"


@pytest.mark.parametrize("short_pools", [3, 1000])
def test_a_reservation_finds_its_fair_share_without_reading_every_short_pools_demand(
        redis_client: redis.Redis, short_pools: int) -> None:
    """reserve_clones read every short pool's demand (HGETALL of the clone_demand hash) and sorted
    them in Lua to find one pool's share: 2.2 ms of Redis's one thread per pass at 1,000 short
    pools, 21 ms at 5,000. The demands are now a sorted set: a pass reads its rank, the count and
    the task_limit + 1 smallest demands, the same commands however many pools are short."""
    store = Store(redis_client)
    for n in range(short_pools):  # each short of 1 to 7 VMs, none cloning yet
        assert store.reserve_clones(f"other-{n:04d}", 1 + n % 7, 10, "tmpl", "example.com", [], 100.0) == []

    reserved: list[str] = []
    commands = commands_of(redis_client, lambda: reserved.extend(store.reserve_clones(
        POOL, 3, 10, "tmpl", "example.com", ["new-0", "new-1", "new-2"], 150.0)))

    assert len(reserved) == (3 if short_pools == 3 else 0)  # 1,000 others wanting 1 or more: no slot left
    assert "hgetall" not in commands and "zrangebyscore" in commands
    # The smallest demands, 9 then 16 more at most (task_limit 10: its 11 smallest at most), after
    # the pool's pending set and the oldest of its clones in flight.
    assert 3 <= commands.pop("zrange") <= 4
    # (each candidate reserved also looked up among the held names: a ZSCORE, like its EXISTS;
    # Redis's clock read once against the deadline)
    assert {name: count for name, count in commands.items() if name not in ("hset", "zadd", "exists", "zscore")} == {
        "evalsha": 1, "hget": 1, "zcard": 4, "zintercard": 4, "zrangebyscore": 1, "zrank": 1, "time": 1}


@pytest.mark.parametrize("pool_clones", [1, 40])
def test_an_ondemand_reservation_reads_no_pools_clones_however_many_run(
        redis_client: redis.Redis, pool_clones: int) -> None:
    """ondemand_reserve counted the requests' clones in flight (``ondemand_clone_limit``, counted
    across pools) by reading the record of every VM in the service's cloning set: each pass of an
    open request cost as much as the fleet's clones. Since the pools' own clones have their set
    (keys.pool_clones), the requests' are the cloning set less it: what a reservation runs does
    not grow with the pools' clones, and the limit counts the same."""
    from chalicelib.store.ondemand import OnDemandEntry, OnDemandStore

    store = Store(redis_client)
    ondemand = OnDemandStore(store)
    others = [f"beta-{n}" for n in range(pool_clones)]  # a pool's own clones: not the requests'
    assert store.reserve_clones("beta", pool_clones, 100, "tmpl", "example.com", others, 100.0) == others
    assert ondemand.create("req-1", [OnDemandEntry(POOL, POOL, 2)], 100.0, 3600, 2)
    assert ondemand.create("req-2", [OnDemandEntry(POOL, POOL, 5)], 100.0, 3600, 2)
    first = ondemand.reserve("req-1", POOL, 4, 3, "tmpl", "example.com", ["od-0", "od-1"], 110.0)
    assert first.reserved == ("od-0", "od-1")

    reserved: list[str] = []
    commands = commands_of(redis_client, lambda: reserved.extend(ondemand.reserve(
        "req-2", POOL, 4, 3, "tmpl", "example.com", [f"od-{n}" for n in range(2, 7)], 120.0).reserved))

    assert reserved == ["od-2", "od-3"]  # the clone limit, 4, less req-1's 2 in flight
    assert "hexists" not in commands  # no VM of the cloning set read one by one
    assert commands["zintercard"] == 1 and commands["zcard"] == 1


# --- the checkout a change was asked for --------------------------------------------------------
# PUT /vm/<host> (lua/vm_modify.lua), a queued disk or snapshot (lua/vm_task_enqueue.lua) and
# DELETE /vm/<host> with :auth: (lua/move.lua's same_checkout) each land only while the VM is
# still held by the checkout whose owner the API checked. What each does when the record changed
# in between, one row per change (lua/vm_owner.lua: one check for the three).

SEEN = {"name": "vm-1", "pool": POOL, "state": "running", "checkout": "100.0", "token_user": "alice"}
SINCE = {
    "nothing": ({}, (True, True, True)),
    "checked out again": ({"checkout": "200.0"}, (False, False, False)),
    "by another user": ({"token_user": "bob"}, (False, False, False)),
    "by a caller without a token": ({"token_user": None}, (False, False, False)),
    "without a checkout time": ({"checkout": None}, (False, False, False)),
    "its checkout never confirmed": ({"confirm_by": "160.0"}, (False, False, True)),
    "its state no longer running": ({"state": "ready"}, (False, False, True)),
}


@pytest.mark.parametrize("since", SINCE)
def test_a_change_lands_only_while_the_checkout_the_api_checked_holds_the_vm(redis_client: redis.Redis,
                                                                            since: str) -> None:
    changes, (modified, queued, returned) = SINCE[since]
    store = Store(redis_client)
    store.client.hset(store.keys.vm("vm-1"), mapping=SEEN)
    store.client.zadd(store.keys.pool_state(POOL, "running"), {"vm-1": 100.0})
    seen = store.get_vm("vm-1")
    assert seen is not None
    for name, value in changes.items():
        if value is None:
            store.client.hdel(store.keys.vm("vm-1"), name)
        else:
            store.client.hset(store.keys.vm("vm-1"), name, value)
    assert (store.modify_vm(seen, {"tag:a": "b"}, 32, 300.0) is ModifyResult.CHANGED) is modified
    assert (VMTaskStore(store).enqueue(seen, new_task("disk", 300.0, size_gb=10), 300.0)
            is EnqueueResult.QUEUED) is queued
    assert store.move("vm-1", POOL, "running", "completed", 300.0, checked_out_as=seen) is returned


def test_dashboard_series_and_a_migrations_end_cost_one_round_trip_and_no_script_check(
        redis_client: redis.Redis) -> None:
    """Before, both handed a Script object to a pipeline, which asks SCRIPT EXISTS first: a
    second round trip for every graph of the dashboard and every migration's end."""
    store = Store(redis_client)
    history = PoolHistory(store)
    for minute in (100, 101):
        history.record(POOL, Sample(minute, 1, 2, 3, 6))
    migrations = MigrationStore(store)
    redis_client.hset(store.keys.vm("vm-0"), mapping={"name": "vm-0", "pool": POOL, "state": "running",
                                                      "migration": "queued"})
    assert migrations.take_slot("vm-0", 2, 500.0) == "started"
    history.series([POOL], 100, 2, 1)  # loads the script
    for flushed in (False, True):  # True: a Redis without the scripts (a new primary)
        if flushed:
            redis_client.script_flush()
        with RedisRoundTrips() as trips:
            commands = commands_of(redis_client, lambda: history.series([POOL, "beta"], 100, 3, 1))
        assert history.series([POOL], 100, 2, 1)[POOL] == [Sample(100, 1, 2, 3, 6), Sample(101, 1, 2, 3, 6)]
        # Flushed: NOSCRIPT, then the calls again with the script's text (EVAL), not a SCRIPT LOAD
        # and a third round trip (the first checkout after a failover confirmed in its window).
        assert "script|exists" not in commands and "script|load" not in commands
        assert trips.count == (2 if flushed else 1) + 2  # + commands_of's own
    redis_client.script_flush()
    with RedisRoundTrips() as trips:
        commands = commands_of(redis_client, lambda: migrations.finish("vm-0", host="esx-2", migrated="true"))
    assert "script|exists" not in commands and trips.count == 1 + 2
    assert redis_client.zcard(store.keys.migrating) == 0
    record = store.get_vm("vm-0").raw
    assert record["host"] == "esx-2" and record["migrated"] == "true" and "migration" not in record


def test_a_script_redis_lacks_runs_once_in_two_round_trips(redis_client: redis.Redis) -> None:
    """The service's client (store/connection.py) runs a script alone by EVALSHA; on a Redis that
    lacks it (a new primary after a failover) NOSCRIPT, then its text by EVAL: it runs once, and
    in 2 round trips, not NOSCRIPT, SCRIPT LOAD and EVALSHA again (3, the first checkout after a
    failover past its confirm window on a slow link)."""
    port = redis_client.connection_pool.connection_kwargs["port"]
    client = connect(parse(":redis: {socket_timeout: 5.0}").redis, url=f"redis://127.0.0.1:{port}/0")
    try:
        counted = registered(client, "return redis.call('INCR', KEYS[1])")
        assert counted(keys=["runs"]) == 1
        redis_client.script_flush()
        with RedisRoundTrips() as trips:
            commands = commands_of(redis_client, lambda: counted(keys=["runs"]))
        assert redis_client.get("runs") == "2"  # ran once more, not twice
        assert commands == {"evalsha": 1, "eval": 1, "incr": 1}
        assert trips.count == 2 + 2  # + commands_of's own
    finally:
        client.close()
