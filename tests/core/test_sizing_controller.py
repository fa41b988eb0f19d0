"""Pool sizing decisions without Redis: config validation, schedule windows, the forecast, the
cooldown and the safety floors, on the controller the reconcile pass and the replay both use."""

from __future__ import annotations

import itertools
import json
from datetime import datetime, timezone

import pytest

from chalicelib.config import ConfigError, PoolConfig, parse
from chalicelib.sizing.controller import DemandState, SizeController, decide, hold_for_cooldown
from chalicelib.sizing.demand import epoch_minute, seasonal_peak
from chalicelib.sizing.schedule import current_window
from tools.sizing_replay.simulator import MemoryBackend

MONDAY = datetime(2027, 1, 4, tzinfo=timezone.utc).timestamp()
"""Monday 2027-01-04 00:00 UTC."""
HOUR = 3600.0


def pool_with(sizing: str, size: int = 5, service: str = "") -> PoolConfig:
    config = parse(f"config: {{{service}}}\npools:\n  - name: p\n    size: {size}\n    provider: dummy\n"
                   f"    sizing: {sizing}\n")
    pool = config.pool("p")
    assert pool is not None
    return pool


def at(day: int, hour: float) -> float:
    """A moment ``day`` days after Monday 2027-01-04 (0 = that Monday), at ``hour`` UTC."""
    return MONDAY + day * 24 * HOUR + hour * HOUR


# --- config ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("sizing, problem", [
    ('{schedule: [{days: weekdays, start: "7am", end: "19:00", size: 40}]}',
     'pools[0].sizing: schedule[0].start: must be a time HH:MM, got \'7am\''),
    # Digits of other scripts matched \d and int() read them: an hour in them loaded (\u0667:00 as 07:00).
    ('{schedule: [{days: weekdays, start: "\u0667:00", end: "19:00", size: 40}]}',
     "pools[0].sizing: schedule[0].start: must be a time HH:MM"),
    ('{schedule: [{days: workdays, start: "07:00", end: "19:00", size: 40}]}',
     "pools[0].sizing: schedule[0].days: must name days"),
    # A typo fails the load rather than sizing the pool on some other day (mon..., sat..., sun...).
    ('{schedule: [{days: monkey, start: "07:00", end: "19:00", size: 40}]}',
     "pools[0].sizing: schedule[0].days: must name days"),
    ('{schedule: [{days: satan, start: "07:00", end: "19:00", size: 40}]}',
     "pools[0].sizing: schedule[0].days: must name days"),
    ('{schedule: [{days: "mon-", start: "07:00", end: "19:00", size: 40}]}',
     "pools[0].sizing: schedule[0].days: must name days"),
    ('{schedule: [{days: "tue-fir", start: "07:00", end: "19:00", size: 40}]}',
     "pools[0].sizing: schedule[0].days: must name days"),
    ('{schedule: [{days: [], start: "07:00", end: "19:00", size: 40}]}',
     "pools[0].sizing: schedule[0].days: must name at least one day"),
    ('{schedule: [{start: "07:00", end: "19:00"}]}', "pools[0].sizing: schedule[0].size: is required"),
    ('{timezone: Mars/Olympus}', "pools[0].sizing: timezone: unknown time zone 'Mars/Olympus'"),
    ('{demand: {min: 5, max: 2}}', "pools[0].sizing: demand.max: must be at least min (5), got 2"),
    ('{demand: {min: 1}}', "pools[0].sizing: demand.max: is required"),
    ('{demand: {max: 10, cooldwn: 5}}', "pools[0].sizing: demand: unknown keys cooldwn"),
    ('{demand: {max: 100000}}', "pools[0].sizing: demand.max: must be an integer from 0 to 10000"),
    ("[40]", "pools[0].sizing: must be a mapping"),
])
def test_invalid_sizing_fails_the_load_naming_the_key(sizing: str, problem: str) -> None:
    with pytest.raises(ConfigError) as raised:
        pool_with(sizing)
    assert any(p.startswith(problem) for p in raised.value.problems), raised.value.problems


def test_unknown_global_time_zone_fails_the_load() -> None:
    with pytest.raises(ConfigError) as raised:
        parse("config: {sizing_timezone: Nowhere/Town}\n")
    assert raised.value.problems == ["config.sizing_timezone: unknown time zone 'Nowhere/Town'"]


# --- schedule ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("days, expected", [
    ("weekdays", {0, 1, 2, 3, 4}), ("Monday", {0}), ("tues", {1}), ("thurs", {3}), ("Sundays", {6}),
    ("fri-mon", {4, 5, 6, 0}), ("mon - wed, sat", {0, 1, 2, 5}), (["sat", "sunday"], {5, 6}),
])
def test_days_spelled_as_people_do(days: object, expected: set[int]) -> None:
    pool = pool_with(f'{{schedule: [{{days: {json.dumps(days)}, start: "07:00", end: "19:00", size: 4}}]}}')
    assert pool.sizing.windows[0].days == expected



WORKDAY = '{schedule: [{days: weekdays, start: "07:00", end: "19:00", size: 40}]}'


@pytest.mark.parametrize("moment, size, reason", [
    (at(0, 6.99), 5, "config"),
    (at(0, 7), 40, "schedule weekdays 07:00-19:00"),
    (at(4, 18.99), 40, "schedule weekdays 07:00-19:00"),
    (at(4, 19), 5, "config"),
    (at(5, 12), 5, "config"),  # Saturday
])
def test_schedule_window_sets_the_size_otherwise_the_configured_one(moment: float, size: int, reason: str) -> None:
    pool = pool_with(WORKDAY)
    decision = decide(pool, pool.sizing, moment, None, None, None)
    assert (decision.size, decision.reason) == (size, reason)


def test_schedule_follows_the_pools_time_zone_then_the_global_one() -> None:
    berlin = pool_with('{timezone: Europe/Berlin, schedule: [{days: mon, start: "07:00", end: "08:00", size: 9}]}')
    utc_pool = pool_with('{schedule: [{days: mon, start: "07:00", end: "08:00", size: 9}]}')
    # 06:30 UTC is 07:30 in Berlin in January (CET, UTC+1).
    assert current_window(berlin.sizing, at(0, 6.5), "UTC") is not None
    assert current_window(utc_pool.sizing, at(0, 6.5), "UTC") is None
    assert current_window(utc_pool.sizing, at(0, 6.5), "Europe/Berlin") is not None
    # In July Berlin is UTC+2: 05:30 UTC is 07:30 local.
    july_monday = datetime(2027, 7, 5, 5, 30, tzinfo=timezone.utc).timestamp()
    assert current_window(berlin.sizing, july_monday, "UTC") is not None


def utc(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=timezone.utc).timestamp()


@pytest.mark.parametrize("zone, window, moment, covered", [
    # Berlin springs forward on Sunday 2027-03-28 02:00 -> 03:00 (01:00 UTC): a window in the gap
    # does not apply, one starting in it applies from the gap's end, for its wall-clock length.
    ("Europe/Berlin", "sun 02:30-02:45", "2027-03-28 00:59", False),
    ("Europe/Berlin", "sun 02:30-02:45", "2027-03-28 01:00", False),
    ("Europe/Berlin", "sun 02:30-03:30", "2027-03-28 01:00", True),
    ("Europe/Berlin", "sun 02:30-03:30", "2027-03-28 01:30", False),
    # ... and falls back on 2027-10-31 03:00 -> 02:00: the repeated hour is covered twice.
    ("Europe/Berlin", "sun 02:30-02:45", "2027-10-31 00:35", True),
    ("Europe/Berlin", "sun 02:30-02:45", "2027-10-31 01:35", True),
    # Lord Howe moves 30 minutes: 02:00 -> 02:30 on 2027-10-03 (15:30 UTC the day before).
    ("Australia/Lord_Howe", "sun 01:30-02:15", "2027-10-02 15:25", True),
    ("Australia/Lord_Howe", "sun 01:30-02:15", "2027-10-02 15:30", False),
    ("Australia/Lord_Howe", "sun 02:30-03:00", "2027-10-02 15:30", True),
    # Sao Paulo's DST began at midnight (2018-11-04 00:00 -> 01:00): a Saturday-night window past
    # midnight ends with the Saturday.
    ("America/Sao_Paulo", "sat 22:00-00:30", "2018-11-04 02:59", True),
    ("America/Sao_Paulo", "sat 22:00-00:30", "2018-11-04 03:00", False),
])
def test_windows_are_wall_clock_times_across_daylight_saving_changes(
        zone: str, window: str, moment: str, covered: bool) -> None:
    days, times = window.split()
    start, end = times.split("-")
    pool = pool_with(f'{{timezone: {zone}, schedule: [{{days: {days}, start: "{start}", end: "{end}", size: 9}}]}}')
    assert (current_window(pool.sizing, utc(moment), None) is not None) is covered


def test_window_past_midnight_and_first_window_wins() -> None:
    pool = pool_with('{schedule: [{days: fri, start: "22:00", end: "02:00", size: 12},'
                     ' {days: daily, start: "00:00", end: "24:00", size: 3}]}')
    sizing = pool.sizing
    assert current_window(sizing, at(4, 23), None).size == 12  # Friday night
    assert current_window(sizing, at(5, 1.5), None).size == 12  # Saturday 01:30 belongs to Friday's window
    assert current_window(sizing, at(5, 2), None).size == 3
    assert current_window(sizing, at(3, 23), None).size == 3  # Thursday night


def test_override_wins_over_schedule_and_demand() -> None:
    pool = pool_with('{schedule: [{days: daily, start: "00:00", end: "24:00", size: 40}], demand: {max: 50}}')
    decision = decide(pool, pool.sizing, at(0, 9), None, 2, 30)
    assert (decision.size, decision.reason) == (2, "override")


# --- demand ---------------------------------------------------------------------------------------------

DEMAND = "{demand: {min: 2, max: 30, cooldown: 10, drain_grace: 5, lead_time: 5}}"


def controller_with(history: dict[float, int], lead_measured: bool = True) -> tuple[SizeController, MemoryBackend]:
    """A controller over an in-memory history: moment -> VMs asked for in that minute. Every day
    of the history has been seen by a reconcile pass."""
    backend = MemoryBackend(lead_seconds=5 * 60.0)
    backend.measured = lead_measured
    for moment, count in history.items():
        backend.record(epoch_minute(moment), count)
    for day in range(-8, 15):
        backend.seen_days.add(datetime.fromtimestamp(at(day, 12), timezone.utc).strftime("%Y-%m-%d"))
    return SizeController(backend, "UTC"), backend


def test_same_weekday_burst_is_prepared_for_before_it_starts() -> None:
    # Last Monday 25 VMs were asked for at 09:00; nothing else happened.
    controller, _ = controller_with({at(-7, 9): 25})
    pool = pool_with(DEMAND)
    assert controller.target(pool, at(0, 8)).size == 2  # an hour early: just min
    decision = controller.target(pool, at(0, 8.75))  # 15 minutes ahead: within cooldown + 2 x lead
    assert decision.reason == "demand" and decision.predicted == 25.0
    assert decision.size == 30  # 25 + 2 * sqrt(25) = 35, capped at max
    assert controller.last_forecast.seasonal_peak == 25


def test_recent_demand_raises_the_size_at_once() -> None:
    minutes = {at(0, 15) + 60 * i: 2 for i in range(10)}  # 2 per minute for 10 minutes, never seen before
    controller, _ = controller_with(minutes)
    decision = controller.target(pool_with(DEMAND), at(0, 15) + 9 * 60)
    # 2/min over a 5-minute lead: 10 expected, 10 + 2 * sqrt(10) -> 17
    assert (decision.size, decision.predicted) == (17, 10.0)


def test_burst_beyond_max_stays_at_max() -> None:
    controller, _ = controller_with({at(-7, 9): 500})
    decision = controller.target(pool_with(DEMAND), at(0, 8.9))
    assert decision.size == 30 and decision.predicted == 500.0


def test_size_flaps_at_most_once_per_cooldown() -> None:
    pool = pool_with(DEMAND)
    controller, backend = controller_with({})
    sizes = []
    moment = at(0, 10)
    # 20 VMs asked for every 15 minutes: the recent rate swings between 2/min and nothing.
    for minute in range(120):
        backend.record(epoch_minute(moment), 20 if minute % 15 == 0 else 0)
        sizes.append(controller.target(pool, moment).size)
        moment += 60
    changes = [(minute, sizes[minute] - sizes[minute - 1]) for minute in range(1, len(sizes))
               if sizes[minute] != sizes[minute - 1]]
    assert any(step < 0 for _, step in changes) and any(step > 0 for _, step in changes)
    for (earlier, before), (later, after) in itertools.pairwise(changes):
        if after < 0 or before * after < 0:  # a decrease, or a reversal: not within the cooldown
            assert later - earlier >= 10, (earlier, later, sizes)


def test_cooldown_rule() -> None:
    up = DemandState(10, changed_at=1000.0, direction="up")
    assert hold_for_cooldown(up, 15, 1010.0, 600).size == 15  # up after up: at once
    assert hold_for_cooldown(up, 5, 1599.0, 600).size == 10  # down within the cooldown: held
    assert hold_for_cooldown(up, 5, 1600.0, 600).size == 5
    down = DemandState(5, changed_at=1000.0, direction="down")
    assert hold_for_cooldown(down, 8, 1100.0, 600).size == 5  # a reversal waits too
    assert hold_for_cooldown(down, 8, 1600.0, 600).size == 8
    ahead = DemandState(5, changed_at=1000.0 + 3600, direction="down")  # stamped by a clock an hour ahead
    assert hold_for_cooldown(ahead, 8, 1000.0 + 3600 - 599, 600).size == 5
    assert hold_for_cooldown(ahead, 8, 1000.0, 600).size == 8


def test_missing_history_keeps_the_configured_size_and_never_goes_below_min() -> None:
    pool = pool_with("{demand: {min: 3, max: 30}}", size=8)
    backend = MemoryBackend(lead_seconds=300.0)  # no day ever seen: no history at all
    decision = SizeController(backend, "UTC").target(pool, at(0, 3))
    assert (decision.size, decision.reason) == (8, "demand")
    small = pool_with("{demand: {min: 3, max: 30}}", size=0)
    assert SizeController(MemoryBackend(300.0), "UTC").target(small, at(0, 3)).size == 3


def test_broken_stored_state_starts_afresh() -> None:
    assert DemandState.from_json("not json") is None
    assert DemandState.from_json('{"size": "many"}') is None
    assert DemandState.from_json('{"changed_at": 1}') is None
    assert DemandState.from_json('{"size": Infinity, "changed_at": 1}') is None
    assert DemandState.from_json('{"size": 4, "changed_at": NaN}') is None
    assert DemandState.from_json(DemandState(4, 1.0, "up", 2.5).to_json()) == DemandState(4, 1.0, "up", 2.5)


def test_schedule_is_a_floor_for_demand_sizing() -> None:
    pool = pool_with('{schedule: [{days: weekdays, start: "08:00", end: "18:00", size: 6}],'
                     ' demand: {min: 1, max: 30}}')
    controller, _ = controller_with({})
    assert (controller.target(pool, at(0, 9)).size, controller.target(pool, at(0, 9)).reason) == (
        6, "schedule weekdays 08:00-18:00")
    assert controller.target(pool, at(0, 20)).reason == "demand"
    assert controller.target(pool, at(0, 20)).size == 1


def test_yesterday_raises_but_never_lowers_the_same_weekday_peak() -> None:
    assert seasonal_peak(30, 0) == 30.0  # a quiet Sunday does not shrink Monday's burst
    assert seasonal_peak(10, 30) == 20.0  # a busier yesterday pulls it halfway up
    assert (seasonal_peak(None, 8), seasonal_peak(8, None), seasonal_peak(None, None)) == (8.0, 8.0, None)
    # A pool one day old already prepares for the burst it saw yesterday.
    backend = MemoryBackend(lead_seconds=300.0)
    backend.measured = True
    backend.record(epoch_minute(at(-1, 9)), 12)
    for day in (-1, 0):
        backend.seen_days.add(datetime.fromtimestamp(at(day, 12), timezone.utc).strftime("%Y-%m-%d"))
    decision = SizeController(backend, "UTC").target(pool_with(DEMAND), at(0, 8.9))
    assert decision.predicted == 12.0 and decision.size == 19  # 12 + 2 * sqrt(12), rounded up
