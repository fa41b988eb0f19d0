"""GET /status and /poolstat show each pool's effective size (``max``) and why (``size_reason``):
its schedule window, demand sizing, a runtime override, or the config."""

from __future__ import annotations

from typing import Any, Callable

import pytest

from chalicelib.manager.reconcile import reconcile_pool
from chalicelib.sizing.demand import CHECKOUT_FIELD, MINUTES_PER_DAY, SEEN_FIELD, day_and_minute, epoch_minute
from tests.harness import Harness

# FakeClock starts on Friday 2027-01-15 08:00 UTC.
CONFIG = """
:config:
  experimental_features: true
  sizing_timezone: Europe/London
:providers:
  :dummy: {provider_class: dummy, createvm_max_time: 0, boot_time: 0}
:pools:
  - name: sched
    alias: [linux]
    size: 1
    provider: dummy
    sizing:
      schedule: [{days: weekdays, start: "08:00", end: "09:00", size: 3}]
  - name: dem
    size: 4
    provider: dummy
    sizing: {demand: {min: 1, max: 2}}
  - name: plain
    size: 2
    provider: dummy
"""


def sizes(stack: Harness) -> dict[str, tuple[int, str]]:
    pools = stack.get("/api/v3/status?view=pools").json["pools"]
    return {name: (entry["max"], entry["size_reason"]) for name, entry in pools.items()}


def test_status_and_poolstat_show_effective_size_and_reason(make_stack: Callable[[str], Harness]) -> None:
    stack = make_stack(CONFIG)
    assert sizes(stack) == {"sched": (3, "schedule weekdays 08:00-09:00"), "dem": (2, "demand"),
                            "plain": (2, "config")}
    body: dict[str, Any] = stack.get("/api/v3/status?view=capacity").json
    assert body["capacity"]["total"] == 3 + 2 + 2
    poolstat = stack.get("/api/v3/poolstat?pool=linux,plain").json["pools"]
    assert poolstat["sched"] == {"max": 3, "ready": 0, "alias": ["linux"],
                                 "size_reason": "schedule weekdays 08:00-09:00"}
    assert poolstat["plain"]["size_reason"] == "config"

    stack.clock.advance(3600)  # 09:00 in London: the window is over
    assert sizes(stack)["sched"] == (1, "config")


def test_an_override_shows_until_reset(make_stack: Callable[[str], Harness]) -> None:
    stack = make_stack(CONFIG)
    assert stack.post("/api/v3/config/poolsize", {"sched": "7", "dem": "5", "plain": "1"}).status == 201
    assert sizes(stack) == {"sched": (7, "override"), "dem": (5, "override"), "plain": (1, "override")}
    assert stack.delete("/api/v3/config/poolsize/sched").status == 201
    assert sizes(stack)["sched"] == (3, "schedule weekdays 08:00-09:00")


def test_demand_size_shown_is_the_last_pass_decision(make_stack: Callable[[str], Harness]) -> None:
    stack = make_stack(CONFIG.replace("{min: 1, max: 2}", "{min: 1, max: 20}"))
    assert sizes(stack)["dem"] == (4, "demand")  # no decision yet: the configured size
    pool = stack.config.pool("dem")
    reconcile_pool(stack.services.store, stack.services.provider("dummy"), pool, stack.clock, stack.config.service)
    for _ in range(3):
        stack.post("/api/v3/vm/dem")
    stack.clock.advance(30)
    reconcile_pool(stack.services.store, stack.services.provider("dummy"), pool, stack.clock, stack.config.service)
    shown, reason = sizes(stack)["dem"]
    assert reason == "demand" and shown == stack.services.store.counts(["dem"])["dem"]["ready"] + \
        stack.services.store.counts(["dem"])["dem"]["pending"]
    config = {p["name"]: p for p in stack.get("/api/v3/config").json["pool_configuration"]}
    assert config["dem"]["sizing"] == {"demand": {"min": 1, "max": 20}}


def test_vmpooler_pool_feed_shows_the_effective_size(make_stack: Callable[[str], Harness]) -> None:
    stack = make_stack(CONFIG)
    feed = stack.get("/dashboard/stats/vmpooler/pool").json
    assert (feed["sched"]["size"], feed["dem"]["size"], feed["plain"]["size"]) == (3, 2, 2)


@pytest.mark.parametrize("stored", ["-1", "2.5", "9" * 5000, "inf", "nan", "three"],
                         ids=["-1", "2.5", "5000 digits", "inf", "nan", "three"])
def test_a_stored_size_override_that_is_not_a_size_is_ignored(make_stack: Callable[[str], Harness],
                                                                stored: str) -> None:
    """A size override the API would refuse (stored by hand or by an old version) leaves each
    pool at the size it would have without one. Before, ``-1`` became the pool's size, and the
    others failed every pass and every /status (``int()`` of them raised: a 500)."""
    stack = make_stack(CONFIG)
    stack.client.hset(stack.store.keys.pool_override("poolsize"),
                      mapping={"sched": stored, "dem": stored, "plain": stored})
    assert sizes(stack) == {"sched": (3, "schedule weekdays 08:00-09:00"), "dem": (2, "demand"),
                            "plain": (2, "config")}
    for pool in ("sched", "dem", "plain"):
        stack.reconcile(pool)
    assert stack.count("plain", "pending") + stack.count("plain", "ready") == 2


@pytest.mark.parametrize("stored", ["inf", "-inf", "nan", "1e400"])
def test_demand_history_that_is_not_a_finite_count_is_none(make_stack: Callable[[str], Harness],
                                                            stored: str) -> None:
    """Broken history reads as none: before, an infinite count raised out of the pass
    (``int(float('inf'))``) and /status."""
    stack = make_stack(CONFIG)
    now = epoch_minute(stack.clock.now())
    for days_back in range(9):
        day, _ = day_and_minute(now - days_back * MINUTES_PER_DAY)
        fields = {f"{CHECKOUT_FIELD}{minute}": stored for minute in range(MINUTES_PER_DAY)}
        stack.client.hset(stack.store.keys.demand("dem", day), mapping={SEEN_FIELD: "1", **fields})
    stack.reconcile("dem")
    assert sizes(stack)["dem"] == (1, "demand")  # no demand seen: its minimum


def test_an_override_to_the_configured_size_holds_against_schedule_and_demand(
        make_stack: Callable[[str], Harness]) -> None:
    # Friday 08:00: the window sizes sched 3 (configured 1), demand sizes dem 2 (configured 4).
    # An administrator asks for the configured sizes: that is an override like any other.
    stack = make_stack(CONFIG)
    reply = stack.post("/api/v3/config/poolsize", {"sched": "1", "dem": "4", "plain": "2"})
    assert reply.status == 201
    assert sizes(stack) == {"sched": (1, "override"), "dem": (4, "override"), "plain": (2, "config")}
    assert stack.post("/api/v3/config/poolsize", {"sched": "1"}).status == 200  # already so
    pool = stack.services.pool("sched")
    report = reconcile_pool(stack.services.store, stack.services.provider("dummy"), pool, stack.clock,
                            stack.config.service)
    assert report.size == 1
    assert stack.delete("/api/v3/config/poolsize/sched").status == 201
    assert sizes(stack)["sched"] == (3, "schedule weekdays 08:00-09:00")
