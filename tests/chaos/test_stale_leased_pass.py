"""A reconcile run (``run_pool``, with its lease) frozen after any of its Redis round trips past
its lease: the lease runs out, another invocation runs the pool whole and users act, then the
frozen one wakes up and goes on with what it read before. From then on every write it makes
must be refused: by the lease (``RunLease``: its next step renews and finds the lease another
run's) or by the conditions of the write itself (Lua scripts that check the state they change).

tests/chaos/test_crash_every_write.py checks that the pools converge after a bare pass (no lease
at all) paused so; this checks the stronger promise a leased run makes: once another run took
over, the woken one changes nothing in Redis (the dummy provider's VMs and tasks included).
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from chalicelib.manager.runner import LEASE_SECONDS, run_pool
from tests.chaos.fleet import Fleet, fleet_fixture
from tests.chaos.test_crash_every_write import (
    CONFIG,
    POOL,
    SCENARIOS,
    Start,
    assert_whole,
    leases_run_out,
    users_act,
)
from tests.harness import Fuse, SavedState, fused_services, save_state

fleet = fleet_fixture(CONFIG)


def changed_keys(before: SavedState, after: SavedState) -> dict[str, str]:
    """The keys whose value differs (time to live aside): key -> how."""
    changes = {}
    for key in before.keys() | after.keys():
        if key.endswith(":changes") and key.count(":") == 1:
            continue  # the counter a replica wait bumps (Store.writes_replicated): changes nothing
        if key not in after:
            changes[key] = "deleted"
        elif key not in before:
            changes[key] = "created"
        elif before[key][0] != after[key][0]:
            changes[key] = "changed"
    return changes


@dataclass
class FrozenReport:
    round_trips: int
    failures: list[str]
    passes: int


def frozen_run(fleet: Fleet, pause_after: int | None) -> tuple[FrozenReport, dict[str, str]]:
    """Alpha's leased run frozen after ``pause_after`` round trips while its lease runs out and
    another run and users act. Returns its round trips and the keys it changed after waking."""
    world = fleet.world
    woke: list[SavedState] = []

    def meanwhile() -> None:
        world.clock.advance(LEASE_SECONDS + 1)
        leases_run_out(world.client)
        world.clock.advance(100)
        assert fleet.run(POOL).leased
        users_act(fleet)
        woke.append(save_state(world.client))

    fuse = Fuse(pause_after=pause_after, meanwhile=meanwhile)
    services = fused_services(world, fuse)
    try:
        report = run_pool(services, POOL, 0.0, fuse.step)
    finally:
        services.client.close()
    frozen = FrozenReport(fuse.sent, report.failures, len(report.passes))
    if pause_after is None:
        return frozen, {}
    assert woke, "the run ended before its pause"
    return frozen, changed_keys(woke[0], save_state(world.client))


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_a_run_frozen_after_taking_its_lease_changes_nothing_once_another_took_it(fleet: Fleet, scenario: str) -> None:
    """Frozen right after the SET that took its lease (a stopped scheduler, a frozen Lambda), woken
    once another run has had the pool: it stops at its first step. Before, the lease's age was
    counted from the pass's start, after the freeze: the woken run ran a whole pass beside the
    new holder (in ``steady`` it started a clone for the VM a user had just taken), no step
    renewing the lease it no longer had."""
    SCENARIOS[scenario](fleet)
    start = Start.of(fleet)
    frozen_run(start.again(fleet), None)  # loads the Lua scripts the session's Redis lacks
    current = start.again(fleet)
    report, changes = frozen_run(current, 1)
    assert report.failures and "lease" in report.failures[0] and not report.passes, report
    assert set(changes) <= {current.world.store.keys.wake(POOL)}, changes
    assert_whole(current, scenario)


@pytest.mark.audit
@pytest.mark.parametrize("scenario", SCENARIOS)
def test_a_run_woken_after_its_lease_was_taken_at_any_round_trip_converges(fleet: Fleet, scenario: str) -> None:
    """The same frozen after each of its round trips in turn: what it writes once woken (before
    its next step finds the lease lost) is refused or right for the pool as it is then (a clone
    slot reserved by lua/reserve_clones.lua's own count, a nudge taken); the pools converge."""
    SCENARIOS[scenario](fleet)
    start = Start.of(fleet)
    frozen_run(start.again(fleet), None)  # loads the Lua scripts the session's Redis lacks
    report, _ = frozen_run(start.again(fleet), None)
    total = report.round_trips
    for pause_after in range(1, total):
        current = start.again(fleet)
        frozen_run(current, pause_after)
        assert_whole(current, f"{scenario}: woken after round trip {pause_after} of {total}")
