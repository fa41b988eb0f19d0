"""The day's clone and boot duration statistics (/summary, /status): a pass records the
durations of every VM it saw in one script call, and many VMs cost Redis the commands of one but
for the totals, which Redis itself adds sample by sample."""

from __future__ import annotations

import math

import pytest
import redis

from chalicelib.api.summary import day_metrics
from chalicelib.store import DurationSample, Store
from tests.support import redis_commands

DAY = "2026-12-03"

SAMPLES = [
    DurationSample("clone", "alpha", 12.344), DurationSample("clone", "alpha", 3.5),
    DurationSample("clone", "beta", 7.25), DurationSample("clone", "alpha", 30.0),
    DurationSample("boot", "alpha", 61.2), DurationSample("boot", "beta", 0.0),
    DurationSample("boot", "alpha", 233.05), DurationSample("boot", "alpha", 233.05),
    DurationSample("boot", "alpha", 233.05),
]


def test_samples_recorded_together_give_the_figures_of_samples_recorded_one_by_one(
        redis_client: redis.Redis) -> None:
    together, one_by_one = Store(redis_client, prefix="together:"), Store(redis_client, prefix="each:")
    together.record_durations(DAY, SAMPLES[:2])  # the day already has figures
    together.record_durations(DAY, SAMPLES[2:])
    for sample in SAMPLES:
        one_by_one.record_durations(DAY, [sample])

    (stats,) = together.day_stats([DAY])
    assert stats.values == one_by_one.day_stats([DAY])[0].values  # every field, to the last digit
    assert {name: value for name, value in stats.values.items() if not name.endswith(":total")} == {
        "clone:count": "4", "clone:min": "3.5", "clone:max": "30",
        "clone:pool:alpha:count": "3", "clone:pool:alpha:min": "3.5", "clone:pool:alpha:max": "30",
        "clone:pool:beta:count": "1", "clone:pool:beta:min": "7.25", "clone:pool:beta:max": "7.25",
        "boot:count": "5", "boot:min": "0", "boot:max": "233.05000000000001",
        "boot:pool:alpha:count": "4", "boot:pool:alpha:min": "61.200000000000003",
        "boot:pool:alpha:max": "233.05000000000001",
        "boot:pool:beta:count": "1", "boot:pool:beta:min": "0", "boot:pool:beta:max": "0",
    }
    assert day_metrics(stats, "clone") == {
        "duration": {"average": 13.3, "min": 3.5, "max": 30, "total": 53.09,
                     "pool": {"alpha": {"total": 45.84, "average": 15.3, "min": 3.5, "max": 30},
                              "beta": {"total": 7.25, "average": 7.2, "min": 7.25, "max": 7.25}}},
        "count": {"total": 4, "pool": {"alpha": {"total": 3}, "beta": {"total": 1}}},
    }
    assert day_metrics(stats, "boot")["duration"]["pool"]["alpha"] == {
        "total": 760.35, "average": 190.1, "min": 61.2, "max": 233.05}
    assert redis_client.ttl("together:daily:" + DAY) > 399 * 24 * 3600


def test_a_call_with_many_samples_costs_the_commands_of_one_but_for_the_totals(
        redis_client: redis.Redis) -> None:
    store = Store(redis_client)
    store.record_durations(DAY, SAMPLES[:1])  # the script is loaded

    def commands_of(samples: list[DurationSample]) -> dict[str, int]:
        redis_client.config_resetstat()
        store.record_durations(DAY, samples)
        return redis_commands(redis_client)

    one = commands_of([DurationSample("clone", "alpha", 5.0), DurationSample("boot", "alpha", 9.0)])
    many = commands_of([DurationSample(kind, "alpha", float(n)) for n in range(20) for kind in ("clone", "boot")])

    assert one.pop("hincrbyfloat") == 2 * 2 and many.pop("hincrbyfloat") == 2 * 40  # overall and per pool
    assert many == one == {"evalsha": 1, "hmget": 1, "hset": 1, "expire": 1}


@pytest.mark.parametrize("figure", ["total", "count", "min", "max"])
@pytest.mark.parametrize("broken", ["inf", "nan", "-inf", "not a number"])
def test_a_figure_broken_in_redis_starts_again_instead_of_failing_every_pass(
        redis_client: redis.Redis, figure: str, broken: str) -> None:
    # A pass records its durations near its end: a figure HINCRBYFLOAT cannot add to would fail
    # every pass of every pool that saw a VM boot, for the rest of the day (demand sizing reads
    # the boot average as its lead time).
    store = Store(redis_client)
    store.record_durations(DAY, [DurationSample("boot", "alpha", 40.0)])
    redis_client.hset(store.keys.daily(DAY), f"boot:pool:alpha:{figure}", broken)

    store.record_durations(DAY, [DurationSample("boot", "alpha", 20.0)])

    (stats,) = store.day_stats([DAY])
    figures = {name: float(stats.values[f"boot:pool:alpha:{name}"]) for name in ("total", "count", "min", "max")}
    assert all(math.isfinite(value) for value in figures.values()), figures
    assert figures[figure] == {"total": 20.0, "count": 1.0, "min": 20.0, "max": 20.0}[figure]
    assert float(stats.values["boot:total"]) == 60.0  # the other scopes carry on
