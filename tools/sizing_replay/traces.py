"""Checkout traces that look like a CI fleet's, generated from a seed (docs/sizing.md).

A trace is the number of VMs asked for from one pool in each minute of two weeks, starting on a
Monday at 00:00 UTC. Arrivals are Poisson around a rate that follows the working day:

- weekdays: quiet nights; nightly jobs fire together at 02:00 (and a smaller batch at 02:30);
  the 09:00 burst (everyone pushes, the merge queue starts); steady mornings; a lull at lunch;
  the after-lunch burst at 13:00; a slow evening;
- weekends: nearly nothing but a smaller nightly batch;
- ``release``: one Thursday of the second week has a release: a batch of pipelines at 15:00 and
  an hour and a half of heavy load, seen in no earlier week.

The same name and seed give the same trace, byte for byte (``random.Random(seed)``).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

MINUTES_PER_DAY = 1440
DAYS = 14
START = 1_799_020_800.0
"""Monday 2027-01-04 00:00 UTC."""


@dataclass(frozen=True)
class Profile:
    """The shape of a fleet's demand (rates are VMs per minute)."""

    scale: float = 1.0
    night: float = 0.02
    morning_ramp: float = 0.1
    burst_0900: float = 1.2
    morning: float = 0.3
    lunch: float = 0.1
    burst_1300: float = 0.9
    afternoon: float = 0.25
    evening: float = 0.05
    weekend: float = 0.01
    nightly_batch: int = 20
    late_batch: int = 8
    weekend_batch: int = 10
    release_day: int | None = None
    """Day of the trace (0 = first Monday) with a release spike, or None."""
    release_batch: int = 15
    release_rate: float = 1.5


@dataclass(frozen=True)
class Trace:
    name: str
    description: str
    seed: int
    start: float
    demand: tuple[int, ...]
    """VMs asked for in each minute from ``start``."""


def _rate(profile: Profile, day: int, minute: int) -> float:
    weekday = day % 7
    if weekday >= 5:
        return profile.weekend
    hour = minute / 60
    if profile.release_day == day and 15 <= hour < 16.5:
        return profile.release_rate
    for until, rate in ((7, profile.night), (9, profile.morning_ramp), (9.5, profile.burst_0900),
                        (12, profile.morning), (13, profile.lunch), (13.75, profile.burst_1300),
                        (18, profile.afternoon)):
        if hour < until:
            return rate * profile.scale
    return profile.evening * profile.scale


def _batch(profile: Profile, day: int, minute: int) -> float:
    """Jobs started together by cron (or the release pipeline) at this minute."""
    weekend = day % 7 >= 5
    if minute == 120:
        return profile.weekend_batch if weekend else profile.nightly_batch * profile.scale
    if minute == 150 and not weekend:
        return profile.late_batch * profile.scale
    if profile.release_day == day and minute == 900:
        return profile.release_batch
    return 0.0


def _poisson(rng: random.Random, mean: float) -> int:
    """Knuth's method (small means), a rounded normal for large ones: deterministic per seed."""
    if mean <= 0:
        return 0
    if mean > 30:
        return max(0, round(rng.gauss(mean, math.sqrt(mean))))
    limit, product, count = math.exp(-mean), rng.random(), 0
    while product > limit:
        product *= rng.random()
        count += 1
    return count


def generate(name: str, description: str, profile: Profile, seed: int, days: int = DAYS) -> Trace:
    rng = random.Random(seed)
    demand = []
    for day in range(days):
        for minute in range(MINUTES_PER_DAY):
            batch = _batch(profile, day, minute)
            demand.append(_poisson(rng, _rate(profile, day, minute)) + (_poisson(rng, batch) if batch else 0))
    return Trace(name, description, seed, START, tuple(demand))


def all_traces() -> list[Trace]:
    """The shipped traces."""
    return [
        generate("ci-fleet", "weekday bursts at 09:00 and 13:00, nightly jobs, quiet weekends",
                 Profile(), seed=1),
        generate("nightly-heavy", "a fleet whose nightly batch (60 jobs at 02:00) dwarfs the day",
                 Profile(scale=0.6, nightly_batch=60, late_batch=20), seed=2),
        generate("release-week", "the CI fleet with a release on the second Thursday (15:00-16:30)",
                 Profile(release_day=10, release_batch=25, release_rate=1.5), seed=3),
        generate("small-team", "a small team: the same shape at a third of the load",
                 Profile(scale=0.35, nightly_batch=6, late_batch=3, weekend_batch=3), seed=4),
    ]
