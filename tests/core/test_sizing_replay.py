"""The replay simulator (tools/sizing_replay): deterministic traces, the controller's decisions on
small traces, and the issue's criterion on a shipped trace."""

from __future__ import annotations

import pytest

from chalicelib.config import PoolConfig
from chalicelib.sizing.controller import SizeController, SizeDecision
from tools.sizing_replay import simulator as sizing
from tools.sizing_replay import traces
from tools.sizing_replay.traces import MINUTES_PER_DAY, Trace

HOUR = 60


def tiny_trace(bursts: dict[int, int], days: int = 8) -> Trace:
    """``days`` days from Monday with nothing but ``bursts``: minute of the trace -> VMs asked for."""
    demand = [0] * (days * MINUTES_PER_DAY)
    for minute, count in bursts.items():
        demand[minute] = count
    return Trace("tiny", "", 0, traces.START, tuple(demand))


def test_traces_are_the_same_for_the_same_seed_and_shaped_like_ci() -> None:
    first = traces.all_traces()
    again = traces.all_traces()
    assert [t.demand for t in first] == [t.demand for t in again]
    fleet = {t.name: t for t in first}["ci-fleet"].demand

    def total(day: int, start_hour: float, end_hour: float) -> int:
        base = day * MINUTES_PER_DAY
        return sum(fleet[base + int(start_hour * HOUR):base + int(end_hour * HOUR)])

    for weekday in (0, 1, 2, 3, 4, 7, 8):
        assert total(weekday, 9, 9.5) > 3 * total(weekday, 8.5, 9)  # the 09:00 burst
        assert total(weekday, 13, 13.5) > 2 * total(weekday, 12, 12.5)  # after lunch
        assert total(weekday, 2, 2 + 1 / 60) >= 8  # the nightly batch
    assert total(5, 0, 24) + total(6, 0, 24) < total(0, 0, 24) / 2  # quiet weekend
    release = {t.name: t for t in first}["release-week"].demand
    spike = sum(release[10 * MINUTES_PER_DAY + 15 * HOUR:10 * MINUTES_PER_DAY + 16 * HOUR + 30])
    week_before = sum(release[3 * MINUTES_PER_DAY + 15 * HOUR:3 * MINUTES_PER_DAY + 16 * HOUR + 30])
    assert spike > 5 * week_before


def test_a_burst_seen_last_week_is_met_with_a_ready_pool() -> None:
    # 12 VMs at 09:00 on both Mondays, nothing else; clones take 5 minutes.
    monday_0900 = 9 * HOUR
    trace = tiny_trace({monday_0900: 12, 7 * MINUTES_PER_DAY + monday_0900: 12})
    sized = sizing.simulate_demand(trace, sizing.demand_pool(), lead_minutes=5, keep_sizes=True)
    assert sized.misses == 0 and sized.checkouts == 12
    # The pool grew ahead of the burst and went back to min after it (sizes: from the second Monday).
    assert sized.sizes[monday_0900 - 1] >= 12
    assert sized.sizes[monday_0900 - HOUR] == 1 and sized.sizes[monday_0900 + HOUR] == 1
    # A fixed pool needs 12 VMs all day for the same result: 12 x 24 VM-hours.
    fixed_size, fixed = sizing.smallest_size(trace, 5, lambda outcome: outcome.misses == 0)
    assert fixed_size == 12 and fixed.idle_vm_minutes == 12 * MINUTES_PER_DAY
    assert sized.idle_vm_minutes < fixed.idle_vm_minutes / 5


def test_an_unseen_burst_is_partly_missed_but_grows_the_pool() -> None:
    # Week 1 is quiet; week 2 has 3 VMs a minute for 20 minutes from Tuesday 15:00.
    start = 8 * MINUTES_PER_DAY + 15 * HOUR
    trace = tiny_trace({start + minute: 3 for minute in range(20)}, days=9)
    sized = sizing.simulate_demand(trace, sizing.demand_pool(), lead_minutes=5, keep_sizes=True)
    first_minutes = sized.sizes[start - 7 * MINUTES_PER_DAY:start - 7 * MINUTES_PER_DAY + 20]
    assert max(first_minutes) >= 10  # reacts to the recent rate within the burst
    assert 0 < sized.misses < 3 * 20 / 2  # fewer than half of the burst missed


def test_the_replay_drives_the_reconcile_passs_controller(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[float] = []
    original = SizeController.target

    def counting(self: SizeController, pool: PoolConfig, now: float) -> SizeDecision:
        calls.append(now)
        return original(self, pool, now)

    monkeypatch.setattr(SizeController, "target", counting)
    sizing.simulate_demand(tiny_trace({}, days=1), sizing.demand_pool(), lead_minutes=5)
    assert len(calls) == MINUTES_PER_DAY


@pytest.mark.slow
def test_demand_sizing_beats_the_best_fixed_size_on_the_ci_fleet_trace() -> None:
    scenario = sizing.scenarios()[0]
    result = sizing.compare(scenario)
    assert result["passed"], result
    assert result["idle_saving_percent"] >= 30 or result["miss_saving_percent"] >= 50
