"""Migrations at checkout (``migration_limit``; manager/migrations.py) with the run that takes
their slots, notes their targets, starts and follows their moves killed after each of its Redis
round trips (the dummy provider keeps its VMs and tasks in Redis: each provider call is one too),
or paused at each while another run acts (the harness of tests/chaos/test_crash_every_write.py).

What must hold: never more moves running at the provider than migration_limit; once ordinary
runs went on (past the grace a never-noted move is judged after), no migration left in flight or
holding a slot, the VMs in use still their users', and each one's ``host`` where the provider
says it is; the pools whole.
"""

from __future__ import annotations

from typing import Callable

import pytest

from chalicelib.manager.migrations import MIGRATION_START_GRACE_SECONDS
from tests.chaos.fleet import Fleet, fleet_fixture, tasks_running
from tests.chaos.test_crash_every_write import (
    CONFIG,
    POOL,
    after_every_kill,
    after_every_pause,
    assert_whole,
    leases_run_out,
)
from tests.harness import Harness

LIMIT = 1
MIGRATING_CONFIG = CONFIG.replace(
    "config: {task_limit: 2,", f"config: {{task_limit: 2, migration_limit: {LIMIT},").replace(
    "destroyvm_max_time: 20}",
    "destroyvm_max_time: 20,\n          migratevm_couldmove_percent: 100, migratevm_max_time: 40}")
"""Every VM checked out is on a busy host and moves, taking up to 40 s; one move at a time."""
assert MIGRATING_CONFIG.count("migrat") == 3


fleet = fleet_fixture(MIGRATING_CONFIG)


def moves_running(world: Harness) -> int:
    return tasks_running(world, "migrate")


def queued(fleet: Fleet) -> None:
    """Two VMs checked out through the API: both queued for a move, one slot."""
    fleet.converge()
    for _ in range(2):
        fleet.kept.setdefault(POOL, set()).add(fleet.world.checkout(POOL))
    assert all(fleet.world.store.get_vm(host).raw.get("migration") == "queued" for host in fleet.kept[POOL])


def moving(fleet: Fleet) -> None:
    """The first VM's move started (its slot taken, its task noted), the second waiting."""
    queued(fleet)
    fleet.run(POOL)
    assert fleet.world.migrations_in_flight() == LIMIT and moves_running(fleet.world) == LIMIT


def moved(fleet: Fleet) -> None:
    """The first VM's move done: the run notes it and starts the second's."""
    moving(fleet)
    fleet.world.clock.advance(41)


SCENARIOS: dict[str, Callable[[Fleet], None]] = {"queued": queued, "moving": moving, "moved": moved}


def assert_moved_within_limit(fleet: Fleet, where: str) -> None:
    """At most migration_limit moves at the provider after the dead run and every later run; then
    every migration ended, its slot back, GET /vm's host the provider's, and the pools whole."""
    world = fleet.world
    assert moves_running(world) <= LIMIT, f"{where}: {moves_running(world)} moves running"
    leases_run_out(world.client)
    for _ in range(int(MIGRATION_START_GRACE_SECONDS / 30) + 6):
        world.clock.advance(30)
        fleet.run(POOL)
        assert moves_running(world) <= LIMIT, f"{where}: {moves_running(world)} moves running"
    assert world.migrations_in_flight() == 0, f"{where}: a migration slot still held"
    hosts = {vm.name: vm.host for vm in world.provider.list_vms(world.pool(POOL))}
    for host in fleet.kept[POOL]:
        record = world.store.get_vm(host)
        assert record is not None and not record.raw.get("migration"), f"{where}: {host} {record and record.raw}"
        assert world.describe(host)["host"] == hosts[host], f"{where}: GET /vm says {host} is elsewhere"
    assert_whole(fleet, where)


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_a_run_migrating_killed_after_any_round_trip_converges(fleet: Fleet, scenario: str) -> None:
    SCENARIOS[scenario](fleet)
    after_every_kill(fleet, scenario, assert_moved_within_limit)


def another_run(current: Fleet) -> None:
    """The clock 100 s on, alpha's run: it takes the slot, starts, follows or judges the moves
    the paused pass read as they were."""
    current.world.clock.advance(100)
    assert current.run(POOL).leased


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_a_pass_migrating_paused_at_any_round_trip_converges(fleet: Fleet, scenario: str) -> None:
    SCENARIOS[scenario](fleet)
    after_every_pause(fleet, scenario, another_run, assert_moved_within_limit)
