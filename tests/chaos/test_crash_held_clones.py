"""Clones that outran their pool's timeout (held: completed, keeping their task_limit slot until
the provider says the clone ended, asked to cancel once; manager/completed.py), with the run
that handles them killed after each of its Redis round trips, or paused there while another run
and users act (the harness of tests/chaos/test_crash_every_write.py).

What must hold at every kill point and pause: never more clones running at the provider than
task_limit (a slot freed twice, or freed while its clone still runs, lets the pool start more),
no destroy asked while the VM's clone still runs, and the pools whole once ordinary runs went
on (no slot left counted, nothing leaked in the provider, VMs in use kept).
"""

from __future__ import annotations

from typing import Callable

import pytest

from chalicelib.config import parse
from chalicelib.manager.completed import CLONE_CANCELLED
from chalicelib.providers.base import TaskState
from tests.chaos.fleet import Fleet
from tests.chaos.test_crash_every_write import (
    CONFIG,
    POOL,
    Start,
    another_run,
    assert_whole,
    killed_run,
    stale_pass,
)
from tests.harness import Harness, HarnessFactory, assert_consistent

LIMIT = 2
"""task_limit in CONFIG."""
SLOW_CONFIG = CONFIG.replace(
    "  - {name: alpha, size: 3, provider: dummy}",
    "  - {name: alpha, size: 3, provider: dummy, createvm_min_time: 400, createvm_max_time: 400,\n"
    "     createvm_cancel_time: 20}")
"""Alpha's clones take 400 s, past its 5 minute timeout; a cancel ends one 20 s later."""
assert SLOW_CONFIG != CONFIG


@pytest.fixture
def fleet(make_harness: HarnessFactory) -> Fleet:
    world = make_harness(parse(SLOW_CONFIG))
    return Fleet(world.services, world)


def running_count(world: Harness) -> int:
    """The clones the provider still runs (its own view, not the service's count)."""
    pattern = world.store.keys.dummy_task(world.provider.name, "clone-*")
    refs = [key.rsplit(":", 1)[1] for key in world.client.scan_iter(match=pattern)]
    return sum(1 for status in world.provider.task_statuses(refs).values() if status.state is TaskState.RUNNING)


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


def assert_whole_within_limit(fleet: Fleet, where: str) -> None:
    """At most task_limit clones running at the provider after the dead run and at every later
    run (new clones fast again, so the pools can fill), then the pools whole."""
    world = fleet.world
    assert running_count(world) <= LIMIT, f"{where}: {running_count(world)} clones running"
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
        world.services.use_config(parse(SLOW_CONFIG))


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_a_run_holding_clones_killed_after_any_round_trip_converges(fleet: Fleet, scenario: str) -> None:
    SCENARIOS[scenario](fleet)
    start = Start.of(fleet)
    killed_run(start.again(fleet), None)  # loads the Lua scripts the session's Redis lacks
    total = killed_run(start.again(fleet), None)
    assert total > 3, total
    for die_after in range(1, total):
        current = start.again(fleet)
        killed_run(current, die_after)
        assert_whole_within_limit(current, f"{scenario}: killed after round trip {die_after} of {total}")
    assert_whole_within_limit(start.again(fleet), f"{scenario}: not killed")


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_a_pass_holding_clones_paused_at_any_round_trip_converges(fleet: Fleet, scenario: str) -> None:
    SCENARIOS[scenario](fleet)
    start = Start.of(fleet)
    stale_pass(start.again(fleet), None, lambda: None)  # loads the Lua scripts the session's Redis lacks
    total = stale_pass(start.again(fleet), None, lambda: None)
    for pause_after in range(total):
        current = start.again(fleet)
        stale_pass(current, pause_after, lambda current=current: another_run(current))  # type: ignore[misc]
        assert_whole_within_limit(current, f"{scenario}: paused after round trip {pause_after} of {total}")
