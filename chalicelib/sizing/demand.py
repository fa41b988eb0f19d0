"""Demand history and the forecast made from it.

Every checkout from a pool with demand sizing (and every miss that asked for it) is counted in a
per-minute bucket: hash ``demand:<pool>:<UTC day>``, fields ``c<minute of day>`` (VMs checked out)
and ``m<minute of day>`` (VMs asked for in vain), kept ``HISTORY_TTL_SECONDS``: today and the
same weekday a week ago, a bounded 9 days at most 2 * 1440 fields each. The checkout script does
the counting in the same step as the checkout (store/lua/checkout.lua). The reconcile pass sets
the field ``seen`` on today's hash before it reads the history, so a day the service ran with no
checkout at all reads as a day of zero demand, and a day it did not run (or history lost with a
Redis failover) as unknown.
Bounded: a few small hashes per pool, whatever callers do (misses count into existing fields).

The forecast (pure): the pool must cover, from its ready VMs, whatever is checked out while a
replacement clones and boots (the lead time L). The expected demand over the next L minutes is
the larger of the recent rate times L and the busiest L minutes within the horizon ahead on the
same weekday a week ago (raised halfway toward yesterday's when yesterday was busier); the
pool's target is that plus ``safety`` standard deviations (Poisson: the square root).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Sequence

from chalicelib.sizing.settings import MAX_LEAD_TIME_MINUTES, DemandSettings

MINUTES_PER_DAY = 1440
WEEK_MINUTES = 7 * MINUTES_PER_DAY
HISTORY_TTL_SECONDS = 9 * 24 * 3600
"""Long enough for the same weekday a week ago (plus a window past midnight) to be there."""
CHECKOUT_FIELD = "c"
MISS_FIELD = "m"
SEEN_FIELD = "seen"


def epoch_minute(now: float) -> int:
    """Minutes since the epoch: UTC days are 1440 of them, so the day and bucket follow."""
    return int(now // 60)


def day_and_minute(minute: int) -> tuple[str, int]:
    """The UTC day (``YYYY-MM-DD``) an epoch minute falls on, and its minute of that day."""
    day = datetime.fromtimestamp(minute * 60, timezone.utc).strftime("%Y-%m-%d")
    return day, minute % MINUTES_PER_DAY


@dataclass(frozen=True)
class Window:
    """``length`` minutes of history from epoch minute ``start``."""

    start: int
    length: int

    def segments(self) -> list[tuple[str, range]]:
        """(UTC day, minutes of that day) pieces: a window may cross midnight."""
        pieces: list[tuple[str, range]] = []
        minute, end = self.start, self.start + self.length
        while minute < end:
            day, first = day_and_minute(minute)
            last = min(MINUTES_PER_DAY, first + end - minute)
            pieces.append((day, range(first, last)))
            minute += last - first
        return pieces


def lead_minutes(measured_seconds: float | None, settings: DemandSettings) -> int:
    """Whole minutes a replacement takes: the measured clone+boot time, else the setting; at most
    ``MAX_LEAD_TIME_MINUTES``. The history read grows with the lead (``horizon_minutes``): a
    measured average that is absurd (a boot timed across a clock jump, a total broken in Redis)
    must not make a pass read years of minutes."""
    seconds = settings.lead_time_minutes * 60
    if measured_seconds is not None and math.isfinite(measured_seconds) and measured_seconds > 0:
        seconds = measured_seconds
    return max(1, min(math.ceil(seconds / 60), MAX_LEAD_TIME_MINUTES))


def horizon_minutes(settings: DemandSettings, lead: int) -> int:
    """How far ahead the same-weekday history is read: a VM wanted at T must start cloning at
    T - L, and a target set now may have to stand for a cooldown; so the busiest L minutes in
    the next cooldown + 2 L."""
    return settings.cooldown_minutes + 2 * lead


SEASONS = (WEEK_MINUTES, MINUTES_PER_DAY)
"""Where the history of the time ahead is read: the same weekday a week ago, and yesterday (the
nightly jobs and the working day repeat daily too; a single week-old sample is a noisy one)."""


def windows(settings: DemandSettings, now: float, lead: int) -> list[Window]:
    """The recent window (just before now), then each season's window (the horizon ahead, a
    season ago)."""
    minute = epoch_minute(now)
    recent = Window(minute - settings.recent_minutes + 1, settings.recent_minutes)
    return [recent, *(Window(minute - season, horizon_minutes(settings, lead)) for season in SEASONS)]


@dataclass(frozen=True)
class Forecast:
    """What the target size was computed from, for the decision log and metrics."""

    lead_minutes: int
    recent_rate: float
    """VMs asked for per minute over the recent window."""
    seasonal_peak: float | None
    """The most VMs asked for in L minutes within the horizon ahead, from a week and a day ago
    (``seasonal_peak()``); None when the service has no record of either day."""
    expected: float
    """Expected VMs asked for over the next L minutes: the predicted demand."""
    wanted: int
    """The size that covers it (before min/max and the cooldown)."""


def _peak(counts: Sequence[int], lead: int) -> int:
    """The most VMs asked for in any ``lead`` consecutive minutes."""
    return max((sum(counts[start:start + lead]) for start in range(max(len(counts) - lead + 1, 1))), default=0)


def seasonal_peak(week: int | None, yesterday: int | None) -> float | None:
    """The busiest L minutes expected ahead from history: the same weekday's, raised halfway
    toward yesterday's when yesterday was busier (one week-old sample is noisy, and the nightly
    jobs repeat daily), never lowered by it (a quiet Sunday must not shrink Monday's 09:00 burst).
    Either alone when the other day is unknown; None when both are."""
    if week is None:
        return None if yesterday is None else float(yesterday)
    if yesterday is None:
        return float(week)
    return max(float(week), (week + yesterday) / 2)


def forecast(settings: DemandSettings, recent: Sequence[int], seasons: Sequence[Sequence[int] | None],
             lead: int) -> Forecast:
    """The pool's wanted size from recent, same-weekday and yesterday's demand (pure). ``seasons``
    are the windows of ``SEASONS``: a week ago, then a day ago."""
    recent_rate = sum(recent) / len(recent) if recent else 0.0
    week, yesterday = (None if counts is None else _peak(counts, lead) for counts in seasons)
    peak = seasonal_peak(week, yesterday)
    expected = max(recent_rate * lead, peak or 0.0)
    wanted = math.ceil(expected + settings.safety * math.sqrt(expected) - 1e-9) if expected > 0 else 0
    return Forecast(lead, round(recent_rate, 3), peak, round(expected, 2), wanted)
