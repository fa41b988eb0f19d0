"""Clones that outran their pool's timeout (held: completed, keeping their task_limit slot until
the provider says the clone ended, asked to cancel once; manager/completed.py), with the run
that handles them killed after each of its Redis round trips, or paused there while another run
and users act (the harness of tests/chaos/test_crash_every_write.py).

What must hold at every kill point and pause: never more clones running at the provider than
task_limit (a slot freed twice, or freed while its clone still runs, lets the pool start more),
no destroy asked while the VM's clone still runs, and the pools whole once ordinary runs went
on (no slot left counted, nothing leaked in the provider, VMs in use kept).

A run killed after the provider took a clone and before the task was noted (``filling``, and
the clones ``cancel_asked`` starts) leaves a pending VM without a task. Before, past
CLONE_START_GRACE_SECONDS the pending step gave it up and freed its slot while the provider still
cloned it (clones slower than 120 s: task_limit + 1 ran). Now each VM is marked just before its
clone is asked for (``pending.CLONE_ASKED``): an asked one keeps its slot until its VM shows, or
past the pool's timeout while the provider still makes it; one never asked still gives its place
back at 120 s (tests/core/test_unnoted_clones.py).
"""

from __future__ import annotations

from typing import Callable

import pytest

from chalicelib.config import parse
from chalicelib.manager.completed import CLONE_CANCELLED
from tests.chaos.fleet import Fleet, fleet_fixture, tasks_running
from tests.chaos.test_crash_every_write import (
    CONFIG,
    POOL,
    after_every_kill,
    after_every_pause,
    another_run,
    assert_whole,
    leases_run_out,
)
from tests.harness import Harness, assert_consistent

LIMIT = 2
"""task_limit in CONFIG."""
FILLING_CONFIG = CONFIG.replace(
    "  - {name: alpha, size: 3, provider: dummy}",
    "  - {name: alpha, size: 3, provider: dummy, createvm_min_time: 200, createvm_max_time: 200}")
"""Alpha's clones take 200 s: longer than the start grace, within the pool's timeout."""
SLOW_CONFIG = CONFIG.replace(
    "  - {name: alpha, size: 3, provider: dummy}",
    "  - {name: alpha, size: 3, provider: dummy, createvm_min_time: 400, createvm_max_time: 400,\n"
    "     createvm_cancel_time: 20}")
"""Alpha's clones take 400 s, past its 5 minute timeout; a cancel ends one 20 s later."""
assert SLOW_CONFIG != CONFIG


fleet = fleet_fixture(SLOW_CONFIG)


def running_count(world: Harness) -> int:
    return tasks_running(world, "clone")


def filling(fleet: Fleet) -> None:
    """An empty pool: the run reserves both slots and starts clones slower than the grace a
    never-noted clone task is waited for (FILLING_CONFIG): one killed after the clone call and
    before the note must keep its slot while the provider clones."""


def timed_out(fleet: Fleet) -> None:
    """Alpha's clones (both slots) still running past its timeout: the run takes them out of
    service, holds their slots and asks the provider to cancel them."""
    fleet.round()
    assert running_count(fleet.world) == LIMIT
    fleet.world.clock.advance(5 * 60 + 1)


def held(fleet: Fleet) -> None:
    """Taken out of service, their slots held: the run asks the provider to cancel them."""
    timed_out(fleet)
    fleet.round()
    assert len(fleet.world.hosts(POOL, "completed")) == LIMIT and fleet.world.store.cloning_count() == LIMIT


def cancel_asked(fleet: Fleet) -> None:
    """Held and asked to cancel, the cancel now ended: the run frees the slots, destroys what is
    left and starts the next clones."""
    held(fleet)
    fleet.round()
    completed = fleet.world.hosts(POOL, "completed")
    assert all(fleet.world.store.get_vm(host).raw.get(CLONE_CANCELLED) for host in completed), completed
    fleet.world.clock.advance(21)


SCENARIOS: dict[str, Callable[[Fleet], None]] = {"timed_out": timed_out, "held": held, "cancel_asked": cancel_asked}
CONFIGS = {"filling": FILLING_CONFIG}
"""A scenario's config, when not SLOW_CONFIG."""
KILLED: list[object] = ["timed_out", "held", "cancel_asked", "filling"]
"""cancel_asked: the run frees the cancelled clones' slots and starts two more, whose task notes
a kill can cut off as in filling."""
SCENARIOS["filling"] = filling


def assert_whole_within_limit(fleet: Fleet, where: str, config: str = SLOW_CONFIG) -> None:
    """At most task_limit clones running at the provider after the dead run and at every later
    run (new clones fast again, so the pools can fill), then the pools whole."""
    world = fleet.world
    assert running_count(world) <= LIMIT, f"{where}: {running_count(world)} clones running"
    leases_run_out(world.client)
    world.services.use_config(parse(CONFIG))
    try:
        for _ in range(12):
            world.clock.advance(45)
            for pool in fleet.pools:
                fleet.run(pool)
                assert running_count(world) <= LIMIT, f"{where}: {running_count(world)} clones running"
                assert_consistent(world, pool, pass_completed=False)
        assert_whole(fleet, where)
    finally:
        world.services.use_config(parse(config))


@pytest.mark.parametrize("scenario", KILLED)
def test_a_run_holding_clones_killed_after_any_round_trip_converges(fleet: Fleet, scenario: str) -> None:
    config = CONFIGS.get(scenario, SLOW_CONFIG)
    fleet.world.services.use_config(parse(config))
    SCENARIOS[scenario](fleet)
    after_every_kill(fleet, scenario, lambda current, where: assert_whole_within_limit(current, where, config))


@pytest.mark.parametrize("scenario", [*SCENARIOS])
def test_a_pass_holding_clones_paused_at_any_round_trip_converges(fleet: Fleet, scenario: str) -> None:
    config = CONFIGS.get(scenario, SLOW_CONFIG)
    fleet.world.services.use_config(parse(config))
    SCENARIOS[scenario](fleet)
    after_every_pause(fleet, scenario, another_run,
                      lambda current, where: assert_whole_within_limit(current, where, config))
