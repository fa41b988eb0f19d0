"""run_pool: the per-pool lease, looping while work is in flight, and surviving failed passes.

The runner's budget is wall-clock time (a Lambda's timeout), so these tests use small real
budgets, each under a second; the VMs themselves move on a fake clock unless a test says so.
"""

from __future__ import annotations

import threading
import time

import pytest
import redis

from chalicelib.clock import FakeClock, SystemClock
from chalicelib.config import parse
from chalicelib.manager.runner import run_pool
from chalicelib.providers.base import ProviderError
from chalicelib.services import Services
from chalicelib.store import StoreUnavailable

CONFIG = """\
config: {{check_loop_delay_min: 0.1, task_limit: 10}}
providers:
  dummy: {{provider_class: dummy, seed: 3, createvm_max_time: {clone}, boot_time: {boot}}}
pools:
  - {{name: alpha, size: 2, provider: dummy}}
  - {{name: empty, size: 0, provider: dummy}}
"""


def services_with(client: redis.Redis, clock: object, clone: float = 30, boot: float = 10) -> Services:
    return Services(parse(CONFIG.format(clone=clone, boot=boot)), client, clock=clock, prefix="vmpool:")


@pytest.fixture
def services(redis_client: redis.Redis, clock: FakeClock) -> Services:
    return services_with(redis_client, clock)


def timed(function, *args, **kwargs):  # type: ignore[no-untyped-def]
    started = time.monotonic()
    result = function(*args, **kwargs)
    return result, time.monotonic() - started


def test_second_invocation_exits_at_once_and_nudges_the_holder(services: Services, redis_client: redis.Redis) -> None:
    holder = services.store.acquire_lease("alpha", 60)
    assert holder

    report, seconds = timed(run_pool, services, "alpha", budget_seconds=5)

    assert not report.leased and report.passes == [] and report.failures == []
    assert seconds < 0.2
    assert redis_client.llen(services.store.keys.wake("alpha")) == 1
    assert redis_client.get(services.store.keys.lease("alpha")) == holder  # not taken, not released
    assert services.store.counts(["alpha"])["alpha"]["pending"] == 0  # it did no work


def test_lease_is_released_after_a_run(services: Services, redis_client: redis.Redis) -> None:
    report = run_pool(services, "empty", budget_seconds=1)

    assert report.leased and len(report.passes) == 1
    assert not redis_client.exists(services.store.keys.lease("empty"))
    assert run_pool(services, "empty", budget_seconds=1).leased  # the next invocation gets it


def test_a_crashed_holders_lease_expires(services: Services) -> None:
    assert services.store.acquire_lease("empty", 0.2)  # a holder that died without releasing
    assert not run_pool(services, "empty", budget_seconds=1).leased
    time.sleep(0.25)
    assert run_pool(services, "empty", budget_seconds=1).leased


def test_idle_pool_returns_after_one_pass(services: Services, clock: FakeClock) -> None:
    for _ in range(5):  # fill the pool on the fake clock
        run_pool(services, "alpha", budget_seconds=0)
        clock.advance(60)
    assert services.store.counts(["alpha"])["alpha"]["ready"] == 2

    report, seconds = timed(run_pool, services, "alpha", budget_seconds=5)

    assert len(report.passes) == 1 and not report.passes[0].work_in_flight
    assert seconds < 0.5


def test_pool_with_work_in_flight_loops_until_its_budget(services: Services) -> None:
    # On the fake clock the clones never finish, so every pass finds work in flight.
    report, seconds = timed(run_pool, services, "alpha", budget_seconds=0.6)

    assert report.leased and report.failures == []
    assert 3 <= len(report.passes) <= 7, len(report.passes)  # one pass per check_loop_delay_min
    assert all(p.work_in_flight for p in report.passes)
    assert seconds <= 0.6 + 0.15
    assert len(report.passes[0].clones_started) == 2
    assert all(p.clones_started == [] for p in report.passes[1:])  # no over-cloning while looping


def test_loop_stops_once_the_pool_is_full(redis_client: redis.Redis) -> None:
    services = services_with(redis_client, SystemClock(), clone=0.2, boot=0.1)

    report, seconds = timed(run_pool, services, "alpha", budget_seconds=0.9)

    assert services.store.counts(["alpha"])["alpha"]["ready"] == 2
    assert not report.passes[-1].work_in_flight  # it stopped because the work was done...
    assert seconds < 0.9  # ...before the budget ran out


def test_a_nudge_wakes_the_loop_before_its_delay(redis_client: redis.Redis, clock: FakeClock) -> None:
    services = Services(parse(CONFIG.format(clone=30, boot=10).replace(
        "check_loop_delay_min: 0.1", "check_loop_delay_min: 5")), redis_client, clock=clock)
    pass_starts: list[float] = []

    def note(step: str) -> None:
        if step == "inventory":
            pass_starts.append(time.monotonic())

    thread = threading.Thread(target=run_pool, args=(services, "alpha", 8.0, note),
                              kwargs={"stopping": lambda: len(pass_starts) >= 2})
    thread.start()
    while not pass_starts:
        time.sleep(0.01)
    time.sleep(0.1)  # the holder is now waiting out its 5-second delay
    nudged_at = time.monotonic()
    assert not run_pool(services, "alpha", budget_seconds=1).leased  # a checkout's refill request
    thread.join(3)

    assert not thread.is_alive()
    assert len(pass_starts) == 2 and pass_starts[1] - nudged_at < 0.5


def test_provider_error_in_a_pass_is_reported_not_raised(services: Services, redis_client: redis.Redis,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    provider = services.provider("dummy")

    def broken_inventory(pool: object) -> list[object]:
        raise ProviderError("vCenter unreachable")

    monkeypatch.setattr(provider, "list_vms", broken_inventory)

    report = run_pool(services, "alpha", budget_seconds=1)

    assert report.leased and report.passes == [] and report.failures == ["vCenter unreachable"]
    assert not redis_client.exists(services.store.keys.lease("alpha"))
    assert services.store.counts(["alpha"])["alpha"]["pending"] == 0


def test_store_failure_in_a_pass_is_reported_not_raised(services: Services, redis_client: redis.Redis) -> None:
    def redis_fails_mid_pass(step: str) -> None:
        if step == "snapshot":
            raise StoreUnavailable("redis: ConnectionError")

    report = run_pool(services, "alpha", budget_seconds=1, checkpoint=redis_fails_mid_pass)

    assert report.leased and report.failures == ["redis: ConnectionError"]
    assert not redis_client.exists(services.store.keys.lease("alpha"))


def test_loop_ends_when_its_lease_was_taken_over(services: Services, redis_client: redis.Redis) -> None:
    def lease_expires_and_another_takes_it(step: str) -> None:
        if step == "done":
            redis_client.set(services.store.keys.lease("alpha"), "someone-else")

    report = run_pool(services, "alpha", budget_seconds=0.6, checkpoint=lease_expires_and_another_takes_it)

    assert len(report.passes) == 1 and report.passes[0].work_in_flight
    assert redis_client.get(services.store.keys.lease("alpha")) == "someone-else"  # not released by us


def test_redis_down_at_lease_time_is_a_failure_not_an_exception(redis_server) -> None:
    """A scheduled invocation that cannot reach Redis reports it and returns: no crashed Lambda."""
    import redis as redis_lib

    from chalicelib.config import parse
    from chalicelib.manager.runner import run_pool
    from chalicelib.services import Services
    from local.redis_server import free_port

    config = parse(":providers:\n  :dummy: {}\n:pools:\n  - name: alpha\n    size: 1\n    provider: dummy\n")
    unreachable = redis_lib.Redis(port=free_port(), decode_responses=True, socket_connect_timeout=0.2)
    report = run_pool(Services(config, unreachable), "alpha", budget_seconds=1)
    assert report.leased is False
    assert report.failures and "redis" in report.failures[0]
