"""A clone slot is reused as soon as its clone is done, not at the next check_loop_delay_min.

Before issue 14 a pool filled at task_limit clones per check_loop_delay_min whatever the clone
time (500 VMs: 308 s, vmpooler 38 s). The passes here follow the runner's own choice of delay
(``check_delay``) on a fake clock, as the local scheduler and the re-queued Lambda do.
"""

from __future__ import annotations

import json

import pytest
import redis

from chalicelib.clock import FakeClock
from chalicelib.config import parse
from chalicelib.manager.reconcile import PassReport, reconcile_pool
from chalicelib.manager.runner import check_delay
from chalicelib.services import Services

CONFIG = """\
config: {{task_limit: 10, check_loop_delay_min: 5, clone_poll_interval: 0.5, prefix: "ci-"}}
providers:
  dummy: {{provider_class: dummy, seed: 11, createvm_max_time: {clone}, boot_time: 0}}
pools:
  - {{name: alpha, size: 40, provider: dummy}}
"""


def services_with(client: redis.Redis, clock: FakeClock, clone: float) -> Services:
    return Services(parse(CONFIG.format(clone=clone)), client, clock=clock, prefix="vmpool:")


def one_pass(services: Services) -> tuple[PassReport, float]:
    pool = services.pool("alpha")
    assert pool is not None
    report = reconcile_pool(services.store, services.provider(pool.provider), pool, services.clock,
                            services.config.service)
    return report, check_delay(services, pool, report)


def clone_due(client: redis.Redis, hostname: str) -> float:
    """When the dummy provider finishes the VM's clone task."""
    task = client.hget(f"vmpool:vm:{hostname}", "clone_task")
    raw = client.get(f"vmpool:dummy:dummy:task:{task}")
    assert raw is not None
    return float(json.loads(raw)["due"])


@pytest.mark.parametrize("clone_seconds", [0, 3])
def test_a_finished_clones_slot_is_reused_within_the_poll_interval(
    redis_client: redis.Redis, clock: FakeClock, clone_seconds: float
) -> None:
    services = services_with(redis_client, clock, clone_seconds)
    started_at = clock.now()
    finishes: list[float] = []
    starts: list[float] = []
    for _ in range(200):
        report, delay = one_pass(services)
        starts += [clock.now()] * len(report.clones_started)
        finishes += [clone_due(redis_client, host) for host in report.clones_started]
        if services.store.counts(["alpha"])["alpha"]["ready"] == 40:
            break
        # While clones run, the pool is looked at again after the poll interval, not after 5 s;
        # after starting clones the provider finishes sooner (instant ones), when they are done.
        assert delay == (min(0.5, clone_seconds) if report.clones_started else 0.5)
        clock.advance(delay)
    assert services.store.counts(["alpha"])["alpha"]["ready"] == 40
    assert len(starts) == 40

    # Each clone after the first ten took the slot of a clone that finished at most one poll
    # interval earlier: the k-th start follows the (k-10)-th finish within 0.5 s.
    finishes.sort()
    for k in range(10, 40):
        assert starts[k] - finishes[k - 10] <= 0.5 + 1e-9, (k, starts[k], finishes[k - 10])
    # Four rounds of ten: with instant clones a pass per round, never a 5 s wait between them.
    assert clock.now() - started_at <= 4 * clone_seconds + 5 * 0.5


def test_an_idle_or_booting_pool_is_not_polled_faster(redis_client: redis.Redis, clock: FakeClock) -> None:
    services = Services(parse(CONFIG.format(clone=0).replace("boot_time: 0", "boot_time: 60")),
                        redis_client, clock=clock, prefix="vmpool:")
    for _ in range(4):
        one_pass(services)
        clock.advance(0.5)
    report, delay = one_pass(services)  # every clone done, the VMs still booting
    assert services.store.counts(["alpha"])["alpha"]["pending"] == 40
    assert not report.waiting_for_clones and delay == 5

    clock.advance(60)
    one_pass(services)
    report, delay = one_pass(services)
    assert not report.work_in_flight and not report.waiting_for_clones  # idle: the runner stops
