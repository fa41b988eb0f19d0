"""Pool sizing through Redis and the reconcile pass: demand counted by the checkout script, the
schedule and demand applied by the pass, overrides winning, scale-down draining only ready VMs
past the grace, broken history never going below min."""

from __future__ import annotations

import io
import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

import pytest

from chalicelib import observability as m
from chalicelib.clock import FakeClock
from chalicelib.config import parse
from chalicelib.manager.reconcile import reconcile_pool
from chalicelib.services import Services, demand_sized_pools
from chalicelib.sizing.controller import RedisSizingBackend, SizeController, current_sizes
from chalicelib.sizing.demand import HISTORY_TTL_SECONDS, Window, day_and_minute, epoch_minute
from chalicelib.store import CheckoutRequest
from chalicelib.store.pool_overrides import PoolOverrides
from tests.harness import Harness, HarnessFactory
from tests.support import json_lines

# FakeClock starts on Friday 2027-01-15 08:00:00 UTC. Clones take up to 60 s, boots 30 s more.
CONFIG = """\
config: {{task_limit: 50, timeout: 5, ready_ttl: 600, vm_lifetime: 2, prefix: "ci-"}}
providers:
  dummy: {{provider_class: dummy, seed: 7, createvm_max_time: 60, boot_time: 30, destroyvm_max_time: 0}}
pools:
  - name: sched
    size: 1
    provider: dummy
    sizing: {{schedule: [{{days: weekdays, start: "08:00", end: "09:00", size: 4}}]}}
  - name: dem
    size: 2
    provider: dummy
    sizing: {{demand: {{min: 1, max: {max}, cooldown: 10, drain_grace: 5, lead_time: 2}}}}
  - name: plain
    size: 1
    provider: dummy
"""


@pytest.fixture
def world(make_world: HarnessFactory) -> Harness:
    return sized_world(make_world)


def sized_world(make_world: HarnessFactory, max_size: int = 30) -> Harness:
    world = make_world(CONFIG.format(max=max_size))
    world.store.demand_pools = demand_sized_pools(world.config)
    return world


def settle(world: Harness, name: str, passes: int = 6) -> None:
    """A few passes 45 s apart: enough for every clone and boot."""
    for _ in range(passes):
        world.clock.advance(45)
        world.reconcile(name)


def take(world: Harness, name: str, count: int) -> bool:
    result = world.store.checkout([CheckoutRequest(name, [name], count)], world.clock.now(), {"lifetime": "2"})
    return result.ok


def bucket(world: Harness, name: str) -> dict[str, str]:
    day, _ = day_and_minute(epoch_minute(world.clock.now()))
    return world.client.hgetall(world.store.keys.demand(name, day))


# --- demand counted in the checkout script ---------------------------------------------------------


def test_checkouts_and_misses_of_demand_pools_are_counted_per_minute(world: Harness) -> None:
    settle(world, "dem")
    settle(world, "plain")
    minute = epoch_minute(world.clock.now()) % 1440
    assert take(world, "dem", 2)
    assert not take(world, "dem", 3)  # none ready: a miss of 3
    assert not take(world, "plain", 5)

    counts = bucket(world, "dem")
    assert (counts[f"c{minute}"], counts[f"m{minute}"]) == ("2", "3")
    day, _ = day_and_minute(epoch_minute(world.clock.now()))
    ttl = world.client.ttl(world.store.keys.demand("dem", day))
    assert HISTORY_TTL_SECONDS - 5 < ttl <= HISTORY_TTL_SECONDS
    # A pool without demand sizing keeps nothing, and its miss wrote nothing at all.
    assert bucket(world, "plain") == {}
    assert world.client.keys("*demand:plain*") == []


def test_a_miss_counts_at_most_the_pools_max_per_request(make_world: HarnessFactory) -> None:
    """A request the pool could never serve counts as demand only what the pool could hand out
    at once, its sizing max: it counted every VM asked for, so one caller asking for 100 VMs of
    a pool of max 3 wrote a demand of 100 a request into the pool's history."""
    world = sized_world(make_world, max_size=3)
    minute = epoch_minute(world.clock.now()) % 1440
    assert not take(world, "dem", 100)
    assert not world.store.checkout([CheckoutRequest("linux", ["plain", "dem"], 60)], world.clock.now(), {}).ok
    assert bucket(world, "dem") == {f"m{minute}": "6"}  # 3 a request
    settle(world, "dem")
    assert world.count("dem", "ready") + world.count("dem", "pending") <= 3


def test_an_alias_miss_counts_once_against_its_first_demand_pool(make_world: HarnessFactory) -> None:
    world = sized_world(make_world)
    minute = epoch_minute(world.clock.now()) % 1440
    assert not world.store.checkout([CheckoutRequest("linux", ["plain", "dem", "sched"], 2)],
                                    world.clock.now(), {}).ok
    assert bucket(world, "dem") == {f"m{minute}": "2"}


# --- schedules applied by the pass -----------------------------------------------------------------


def test_pass_applies_the_schedule_window_then_shrinks_after_it_without_touching_running_vms(world: Harness) -> None:
    settle(world, "sched")  # Friday 08:04: inside weekdays 08:00-09:00
    assert world.count("sched", "ready") == 4
    assert take(world, "sched", 2)
    running = world.hosts("sched", "running")
    settle(world, "sched")
    assert world.count("sched", "ready") == 4  # refilled to the window's size

    world.clock.advance(3600)  # 09:xx: outside every window
    report = world.reconcile("sched")
    assert len(report.completed) == 3 and set(report.completed.values()) == {"pool size reduced to 1"}
    assert world.count("sched", "ready") == 1
    assert world.hosts("sched", "running") == running


def settle_overridden(world: Harness, name: str, size: int | None, passes: int) -> PoolOverrides:
    """Set (or with None, clear) the pool's runtime size, then run passes on the pool as the runner
    hands it over (override applied)."""
    services = Services(world.config, world.client, clock=world.clock)
    overrides = PoolOverrides(world.store)
    overrides.set("size", name, size)
    for _ in range(passes):
        world.clock.advance(45)
        reconcile_pool(world.store, world.provider, services.pool(name), world.clock, world.config.service)
    return overrides


def test_override_wins_over_the_schedule_until_reset(world: Harness) -> None:
    overrides = settle_overridden(world, "sched", 2, passes=6)
    assert world.count("sched", "ready") + world.count("sched", "pending") == 2

    overrides.set("size", "sched", None)
    settle(world, "sched")
    assert world.count("sched", "ready") == 4


# --- demand sizing through the pass ----------------------------------------------------------------


def test_demand_grows_the_pool_and_shrinks_it_only_by_ready_vms_past_the_grace(world: Harness) -> None:
    settle(world, "dem")
    assert world.count("dem", "ready") == 2  # no history yet: the configured size
    # A burst: 5 VMs asked for a minute for 5 minutes (served or missed, both are demand). The
    # pass reads the recent rate and grows the pool.
    for _ in range(5):
        take(world, "dem", 5)
        world.clock.advance(60)
        world.reconcile("dem")
    grown = world.count("dem", "ready") + world.count("dem", "pending")
    assert grown >= 8, grown
    settle(world, "dem")
    running = world.hosts("dem", "running")
    assert running

    # Demand stops. The recent window empties after 10 minutes and the cooldown has passed; the
    # VMs that just became ready stay until they have been ready for the 5-minute grace.
    world.clock.advance(9 * 60)
    ready_times = world.client.zrange(world.store.keys.pool_state("dem", "ready"), 0, -1, withscores=True)
    report = world.reconcile("dem")
    for hostname in report.completed:
        assert world.clock.now() - dict(ready_times)[hostname] >= 5 * 60
    assert report.completed, "nothing retired though demand stopped"
    world.clock.advance(10 * 60)
    world.reconcile("dem")
    assert world.count("dem", "ready") + world.count("dem", "pending") == 2  # yesterday unknown: the configured 2
    assert world.hosts("dem", "running") == running  # running VMs never touched


def test_burst_beyond_max_keeps_the_pool_at_max(make_world: HarnessFactory) -> None:
    world = sized_world(make_world, max_size=3)
    settle(world, "dem")
    for _ in range(3):
        take(world, "dem", 5)  # misses count as demand too
        world.clock.advance(60)
        world.reconcile("dem")
    assert world.count("dem", "ready") + world.count("dem", "pending") == 3


def test_broken_history_never_goes_below_min(world: Harness) -> None:
    keys = world.store.keys
    now_minute = epoch_minute(world.clock.now())
    for offset in (0, 1440, 7 * 1440):
        day, minute = day_and_minute(now_minute - offset)
        world.client.hset(keys.demand("dem", day), mapping={"seen": "1", f"c{minute}": "lots", f"m{minute}": "-900"})
    world.client.hset(keys.sizing_state, "dem", "{broken")
    settle(world, "dem")
    assert world.count("dem", "ready") >= 1
    state = json.loads(world.client.hget(keys.sizing_state, "dem"))
    assert state["size"] >= 1


def test_decisions_are_logged_with_inputs_and_published_as_metrics(
        world: Harness, capsys: pytest.CaptureFixture[str], log_output: io.StringIO) -> None:
    world.reconcile("dem")
    (decision,) = [line for line in json_lines(log_output.getvalue()) if line["message"] == "pool size decision"]
    assert decision["pool"] == "dem" and decision["size"] == 2 and decision["reason"] == "demand"
    for field in ("lead_minutes", "recent_rate", "seasonal_peak", "predicted", "min", "max", "held_by_cooldown"):
        assert field in decision
    found: dict[str, Any] = {}
    for line in [json.loads(text) for text in capsys.readouterr().out.splitlines() if text.startswith("{")]:
        if "_aws" in line:
            directive = line["_aws"]["CloudWatchMetrics"][0]
            for metric in directive["Metrics"]:
                found[metric["Name"]] = (line[metric["Name"]], tuple(sorted(directive["Dimensions"][0])))
    assert found[m.TARGET_SIZE] == ([2.0], m.METRICS[m.TARGET_SIZE].dimension_sets[0])
    assert found[m.PREDICTED_DEMAND][0] == [0.0]
    # A pool without sizing publishes neither.
    world.reconcile("plain")
    assert m.TARGET_SIZE not in capsys.readouterr().out


def test_sizing_in_the_example_config_loads() -> None:
    pool = parse((Path(__file__).resolve().parents[2] / "vmpool.yaml.example").read_text()).pools[0]
    sizing = pool.sizing
    assert sizing.windows[0].label == "weekdays 07:00-19:00" and sizing.demand.max == 60


def test_scale_down_waits_for_the_drain_grace_of_freshly_ready_vms(world: Harness) -> None:
    overrides = settle_overridden(world, "dem", 6, passes=4)
    assert world.count("dem", "ready") == 6
    newest_ready = max(score for _, score in world.client.zrange(
        world.store.keys.pool_state("dem", "ready"), 0, -1, withscores=True))

    overrides.set("size", "dem", None)  # back to demand sizing: no history, so the configured 2
    world.clock.advance(newest_ready + 4 * 60 - world.clock.now())
    report = world.reconcile("dem")
    for hostname in report.completed:  # only VMs ready for 5 minutes or more may leave
        assert world.clock.now() - float(world.store.get_vm(hostname).raw["ready_at"]) >= 5 * 60
    assert world.count("dem", "ready") > 2

    world.clock.advance(60)
    report = world.reconcile("dem")
    assert world.count("dem", "ready") == 2
    assert set(report.completed.values()) == {"pool size reduced to 2 (demand)"}


def test_runner_publishes_and_samples_the_effective_size(world: Harness, capsys: pytest.CaptureFixture[str]) -> None:
    from chalicelib.manager.runner import run_pool
    from chalicelib.store.history import PoolHistory, minute_of

    services = Services(world.config, world.client, clock=world.clock)
    run_pool(services, "sched", budget_seconds=0.1)  # Friday 08:00: the window's 4, not the configured 1
    minute = minute_of(world.clock.now())
    (sample,) = PoolHistory(world.store).series(["sched"], minute, 1, 1)["sched"]
    assert sample is not None and sample.size == 4
    target = [json.loads(line)[m.TARGET_SIZE] for line in capsys.readouterr().out.splitlines()
              if line.startswith("{") and f'"{m.TARGET_SIZE}"' in line]
    assert target == [[4.0]]
    # The tick's service-wide capacity counts the window's size too.
    from chalicelib.manager.dispatch import publish_totals

    publish_totals(services)
    capacity = [json.loads(line)[m.CAPACITY] for line in capsys.readouterr().out.splitlines()
                if line.startswith("{") and f'"{m.CAPACITY}"' in line]
    sizes = current_sizes(services.store, services.pools(), world.clock.now(), None)
    assert capacity == [[4.0 + sizes["dem"].size + sizes["plain"].size]]  # not sched's configured 1


def _write_broken(world: Harness, where: str, value: str) -> None:
    """Write ``value`` where a pass of the demand pool reads a number."""
    keys = world.store.keys
    day, minute = day_and_minute(epoch_minute(world.clock.now()))
    if where == "bucket":
        world.client.hset(keys.demand("dem", day), mapping={"seen": "1", f"c{minute}": value, f"m{minute}": value})
    elif where == "state":
        world.client.hset(keys.sizing_state, "dem", value)
    elif where == "lead":
        world.client.hset(keys.daily(day), mapping={"boot:pool:dem:total": value, "boot:pool:dem:count": "1"})
    else:
        world.client.hset(keys.pool_override("poolsize"), "dem", value)


@pytest.mark.parametrize("where, value", [
    ("bucket", "nan"), ("bucket", "inf"), ("bucket", "1e400"),
    ("state", '{"size": Infinity, "changed_at": 1, "direction": "up"}'),
    ("state", '{"size": 3, "changed_at": NaN, "direction": "up", "predicted": Infinity}'),
    ("lead", "inf"), ("lead", "1e300"),
    ("override", "nan"), ("override", "1e400"), ("override", "2.5"),
])
def test_numbers_broken_in_redis_never_break_the_pass_nor_status(world: Harness, where: str, value: str) -> None:
    # NaN, infinities and absurd values (a hand edit, a bad write) read as no value: the pool is
    # sized as without them, every pass still runs, and /status answers.
    _write_broken(world, where, value)
    settle(world, "dem")
    assert 1 <= world.count("dem", "ready") <= 30
    reply = world.get("/api/v3/status?view=pools")
    assert reply.status == 200
    shown = reply.json["pools"]["dem"]
    assert shown["size_reason"] == "demand" and 1 <= shown["max"] <= 30


def test_a_decision_stamped_by_a_clock_running_ahead_holds_the_pool_no_longer_than_a_cooldown(
        world: Harness) -> None:
    settle(world, "dem")

    def burst(minutes: int) -> None:
        for _ in range(minutes):
            take(world, "dem", 5)
            world.clock.advance(60)
            world.reconcile("dem")

    def demand_state() -> dict[str, Any]:
        return dict(json.loads(world.client.hget(world.store.keys.sizing_state, "dem")))

    burst(3)
    assert demand_state()["direction"] == "up"
    # A pass on a process whose clock runs an hour ahead sees no recent demand and shrinks the
    # pool's demand size, stamping the change an hour in the future.
    ahead = FakeClock(world.clock.now() + 3600)
    reconcile_pool(world.store, world.provider, world.pool("dem"), ahead, world.config.service)
    assert demand_state()["direction"] == "down"
    # Back on the right time, the burst goes on: the pool grows again once a cooldown (10
    # minutes) has passed as this clock sees it, not an hour and ten minutes later.
    burst(11)
    assert demand_state()["size"] > 10
    assert world.count("dem", "ready") + world.count("dem", "pending") > 10


def test_a_stale_pass_does_not_overwrite_the_decision_a_newer_pass_saved(world: Harness) -> None:
    # Two passes of one pool at once (one paused past its lease): the stale one read the demand
    # before a burst, the newer one saw the burst and grew the pool. The stale shrink must not
    # replace that growth: it would hold the pool small through the burst for a cooldown.
    settle(world, "dem")
    for _ in range(3):
        take(world, "dem", 5)
        world.clock.advance(60)
        world.reconcile("dem")
    world.clock.advance(11 * 60)  # quiet for longer than the recent window and the cooldown
    grown: list[int] = []

    class BurstDuringTheRead(RedisSizingBackend):
        def demand(self, pool: str, windows: Sequence[Window]) -> list[list[int] | None]:
            counts = super().demand(pool, windows)  # no recent demand: this pass will shrink
            take(world, "dem", 100)  # the burst; the newer pass sees it and grows
            world.reconcile("dem")
            grown.append(int(json.loads(world.client.hget(world.store.keys.sizing_state, "dem"))["size"]))
            return counts

    stale = SizeController(BurstDuringTheRead(world.store), "UTC").target(world.config.pool("dem"), world.clock.now())
    assert stale.size == grown[0] > 10  # the newer decision stands, in this pass too
    world.clock.advance(60)
    world.reconcile("dem")
    assert json.loads(world.client.hget(world.store.keys.sizing_state, "dem"))["size"] >= grown[0]


def test_steady_demand_keeps_its_size_across_midnight_utc(world: Harness) -> None:
    # The demand history is kept per UTC day. The first pass after midnight must still see the
    # last minutes' demand: reading them as unknown (today not yet marked as a day the service
    # ran) shrank the pool, and the cooldown then held the shrink for 10 minutes of steady load.
    settle(world, "dem")
    world.clock.advance(16 * 3600 - 25 * 60)  # Friday 23:35 UTC or so
    sizes: dict[str, int] = {}
    for _ in range(40):
        take(world, "dem", 2)
        world.clock.advance(60)
        world.reconcile("dem")
        state = json.loads(world.client.hget(world.store.keys.sizing_state, "dem"))
        sizes[datetime.fromtimestamp(world.clock.now(), timezone.utc).strftime("%H:%M")] = state["size"]
    before = sizes["23:59"]
    assert before > 2
    assert min(size for minute, size in sizes.items() if minute < "01") >= before, sizes


@pytest.mark.parametrize("broken", ["not a number", "1.5", "99999999999999999999"])
def test_a_demand_count_broken_in_redis_does_not_fail_checkouts(world: Harness, broken: str) -> None:
    # The checkout script counts demand in the same step: a bucket it cannot add to must not
    # turn every checkout of the pool in that minute into an error.
    settle(world, "dem")
    day, minute = day_and_minute(epoch_minute(world.clock.now()))
    world.client.hset(world.store.keys.demand("dem", day), mapping={f"c{minute}": broken, f"m{minute}": broken})
    assert take(world, "dem", 1)
    assert not take(world, "dem", 5)  # a miss is counted too
    counts = bucket(world, "dem")
    assert (counts[f"c{minute}"], counts[f"m{minute}"]) == ("1", "5")
