"""The read-only feeds cost a fixed number of Redis round trips whatever the number of pools and
open on-demand requests: at 1,000 pools a feed that waited for Redis once per pool (about 0.1 ms
each locally, more across a network) took a second of a worker per answer, and a dashboard's
readers held the API's workers away from checkouts. Counted on the client's sockets, as
tests/core/test_refill_round_trips.py counts a pass's."""

from __future__ import annotations

from typing import Callable

import pytest

from tests.harness import Harness
from tests.support import RedisRoundTrips

FEEDS = (
    "/api/v3/status",
    "/api/v3/status?view=queue",
    "/api/v3/poolstat?pool=p0000,p0001",
    "/api/v3/totalrunning",
    "/api/v3/summary",
    "/api/v3/summary/clone",
    "/api/v3/summary/boot",
    "/api/v3/config",
    "/api/v3/vm",
    "/healthcheck",
    "/dashboard/stats/vmpooler/pool?history=true",
    "/dashboard/stats/vmpooler/running?history=true",
    "/dashboard/stats/history?hours=168",
)


def fleet(make_stack: Callable[..., Harness], pools: int) -> Harness:
    lines = "".join(f"  - {{name: p{n:04d}, size: 1, provider: dummy}}\n" for n in range(pools))
    return make_stack(":config: {experimental_features: true, max_ondemand_requests_per_user: 100}\n"
                      ":providers:\n  :dummy: {}\n:pools:\n" + lines)


def round_trips(stack: Harness, path: str) -> int:
    stack.get(path)  # its scripts loaded, its connections open
    with RedisRoundTrips() as sent:
        assert stack.get(path).status == 200, path
    return sent.count


def open_requests(stack: Harness, count: int) -> None:
    """``count`` open on-demand requests, each for two VMs of two pools (no pass builds them)."""
    for n in range(count):
        reply = stack.post("/api/v3/ondemandvm", {f"p{n % 5:04d}": 1, f"p{(n + 1) % 5:04d}": 1})
        assert reply.status == 201, reply.json


@pytest.mark.parametrize("path", FEEDS)
def test_a_feed_costs_the_same_round_trips_at_5_and_300_pools(make_stack: Callable[..., Harness],
                                                               path: str) -> None:
    small = fleet(make_stack, 5)
    open_requests(small, 3)
    few = round_trips(small, path)
    small.client.flushall()
    large = fleet(make_stack, 300)
    open_requests(large, 3)
    assert round_trips(large, path) == few


def test_status_costs_the_same_round_trips_with_1_and_30_open_ondemand_requests(
        make_stack: Callable[..., Harness]) -> None:
    stack = fleet(make_stack, 5)
    open_requests(stack, 1)
    one = round_trips(stack, "/api/v3/status")
    open_requests(stack, 29)
    assert round_trips(stack, "/api/v3/status") == one
    # Each VM asked for and not yet being built is counted once.
    assert stack.get("/api/v3/status?view=queue").json["queue"]["requested"] == 60
