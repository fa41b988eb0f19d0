"""run_pool: the per-pool lease, one pass per run (never a wait), extra passes only when nudged,
when to look again, and surviving failed passes and Redis stalls.

The runner's time is the services' clock (a FakeClock here): no test measures wall time.
"""

from __future__ import annotations

from typing import Iterator

import pytest
import redis

from chalicelib.clock import FakeClock
from chalicelib.config import parse
from chalicelib.manager.dispatch import look_at
from chalicelib.manager.pool_queue import RETRY, PoolMessage
from chalicelib.manager.runner import LEASE_RENEW_SECONDS, LEASE_SECONDS, RETRY_SECONDS, LeaseLost, RunLease, run_pool
from chalicelib.providers.base import ProviderError
from chalicelib.services import Services
from chalicelib.store import StoreUnavailable, connect
from local.redis_server import RedisServer
from tests.support import RecordingQueue

CONFIG = """\
config: {{check_loop_delay_min: 7, task_limit: 10}}
providers:
  dummy: {{provider_class: dummy, seed: 3, createvm_max_time: {clone}, boot_time: {boot}}}
pools:
  - {{name: alpha, size: 2, provider: dummy}}
  - {{name: empty, size: 0, provider: dummy}}
"""


def services_with(client: redis.Redis, clock: FakeClock, clone: float = 30, boot: float = 10) -> Services:
    return Services(parse(CONFIG.format(clone=clone, boot=boot)), client, clock=clock, prefix="vmpool:")


@pytest.fixture
def services(redis_client: redis.Redis, clock: FakeClock) -> Services:
    return services_with(redis_client, clock)


def test_second_invocation_exits_at_once_and_nudges_the_holder(services: Services, redis_client: redis.Redis) -> None:
    holder = services.store.acquire_lease("alpha", 60)
    assert holder

    report = run_pool(services, "alpha", budget_seconds=5)

    assert not report.leased and report.passes == [] and report.failures == []
    assert report.look_again_in is None  # the holder looks again: it was nudged
    assert redis_client.llen(services.store.keys.wake("alpha")) == 1
    assert redis_client.get(services.store.keys.lease("alpha")) == holder  # not taken, not released
    assert services.store.counts(["alpha"])["alpha"]["pending"] == 0  # it did no work


def test_lease_is_released_after_a_run(services: Services, redis_client: redis.Redis) -> None:
    report = run_pool(services, "empty")

    assert report.leased and len(report.passes) == 1
    assert not redis_client.exists(services.store.keys.lease("empty"))
    assert run_pool(services, "empty").leased  # the next invocation gets it


def test_a_crashed_holders_lease_expires(services: Services, redis_client: redis.Redis) -> None:
    assert services.store.acquire_lease("empty", 90)  # a holder that died without releasing
    assert not run_pool(services, "empty").leased  # held: nobody else runs the pool meanwhile
    lease = services.store.keys.lease("empty")
    assert 0 < redis_client.pttl(lease) <= 90_000  # Redis ends it on its own: a TTL, not a wait
    redis_client.delete(lease)  # what Redis does when the TTL runs out (not waited for)
    assert run_pool(services, "empty").leased


def test_idle_pool_runs_one_pass_and_leaves_the_rest_to_the_schedule(services: Services, clock: FakeClock) -> None:
    for _ in range(5):  # fill the pool on the fake clock
        run_pool(services, "alpha")
        clock.advance(60)
    assert services.store.counts(["alpha"])["alpha"]["ready"] == 2

    report = run_pool(services, "alpha", budget_seconds=5)

    assert len(report.passes) == 1 and not report.passes[0].work_in_flight
    assert report.look_again_in is None


def test_work_in_flight_is_one_pass_and_a_request_to_look_again_after_the_check_delay(services: Services) -> None:
    # Before: the run slept check_loop_delay_min between passes until its 240 s budget was spent.
    report = run_pool(services, "alpha", budget_seconds=240)

    assert report.leased and report.failures == []
    assert len(report.passes) == 1 and report.passes[0].work_in_flight
    assert len(report.passes[0].clones_started) == 2
    # Its clones run: the caller re-queues it after clone_poll_interval (not the pool's
    # check_loop_delay_min of 7 s), so a finished clone's slot is reused at once.
    assert report.look_again_in == services.config.service.clone_poll_interval == 0.25


def test_clones_the_provider_finishes_within_the_poll_are_looked_at_when_done(
        redis_client: redis.Redis, clock: FakeClock) -> None:
    """Issue 14 item 3: a pass that started clones the provider finishes in 0.1 s (shorter than
    clone_poll_interval) asks to be looked at again after 0.1 s; instant ones are done in the
    pass. A small pool under load otherwise refilled one batch of task_limit clones per poll
    interval."""
    quick = run_pool(services_with(redis_client, clock, clone=0.1, boot=0), "alpha")
    assert len(quick.passes[0].clones_started) == 2
    assert quick.look_again_in == 0.1

    redis_client.flushdb()
    instant = run_pool(services_with(redis_client, clock, clone=0, boot=0), "alpha")
    # Instant clones are looked at in the pass that started them (manager/rounds.py):
    # ready at once, nothing left in flight to look at again for.
    assert sorted(instant.passes[0].became_ready) == sorted(instant.passes[0].clones_started)
    assert len(instant.passes[0].became_ready) == 2 and instant.look_again_in is None


def test_a_nudge_during_the_pass_runs_another_at_once_within_the_budget(services: Services, clock: FakeClock) -> None:
    """Each pass takes 10 s (on the fake clock) and a checkout nudges the pool during each: the
    run passes again while its 25 s budget lasts, then asks to be looked at again at once."""

    def a_checkout_during_the_pass(step: str) -> None:
        if step == "done":
            clock.advance(10)
            services.store.wake("alpha")

    report = run_pool(services, "alpha", budget_seconds=25, checkpoint=a_checkout_during_the_pass)

    assert len(report.passes) == 3
    assert report.look_again_in == 0


def test_provider_error_in_a_pass_is_reported_not_raised(services: Services, redis_client: redis.Redis,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    provider = services.provider("dummy")

    def broken_inventory(pool: object) -> list[object]:
        raise ProviderError("vCenter unreachable")

    monkeypatch.setattr(provider, "list_vms", broken_inventory)

    report = run_pool(services, "alpha")

    assert report.leased and report.passes == [] and report.failures == ["vCenter unreachable"]
    assert report.look_again_in == RETRY_SECONDS
    assert not redis_client.exists(services.store.keys.lease("alpha"))
    assert services.store.counts(["alpha"])["alpha"]["pending"] == 0


def test_store_failure_in_a_pass_is_reported_not_raised(services: Services, redis_client: redis.Redis) -> None:
    def redis_fails_mid_pass(step: str) -> None:
        if step == "snapshot":
            raise StoreUnavailable("redis: ConnectionError")

    report = run_pool(services, "alpha", checkpoint=redis_fails_mid_pass)

    assert report.leased and report.failures == ["redis: ConnectionError"]
    assert not redis_client.exists(services.store.keys.lease("alpha"))


def test_a_long_pass_renews_its_lease_and_stops_when_another_took_it(services: Services, clock: FakeClock,
                                                                     redis_client: redis.Redis) -> None:
    lease = services.store.keys.lease("alpha")

    def slow_steps_and_a_takeover(step: str) -> None:
        clock.advance(LEASE_RENEW_SECONDS)  # every step is slow: the lease is renewed at each
        if step == "snapshot":
            assert redis_client.pttl(lease) > 50_000
        if step == "reserved":
            redis_client.set(lease, "someone-else")  # our lease expired; another run took it

    report = run_pool(services, "alpha", checkpoint=slow_steps_and_a_takeover)

    assert report.passes == [] and "expired" in report.failures[0]
    assert redis_client.get(lease) == "someone-else"  # not released by us
    assert services.store.counts(["alpha"])["alpha"]["pending"] <= 2


def test_redis_down_at_lease_time_is_a_failure_not_an_exception(closed_port: int) -> None:
    """A run that cannot reach Redis reports it and returns: no crashed Lambda. The client is the
    service's own (``connect``: one immediate retry), not redis-py's default with its backoff."""
    config = parse(":providers:\n  :dummy: {}\n:pools:\n  - name: alpha\n    size: 1\n    provider: dummy\n"
                   f"redis: {{server: 127.0.0.1, port: {closed_port}, socket_timeout: 0.2}}\n")
    unreachable = connect(config.redis)
    report = run_pool(Services(config, unreachable), "alpha")
    assert report.leased is False
    assert report.failures and "redis" in report.failures[0]
    assert report.look_again_in == RETRY_SECONDS


# --- issue 10, defect 3: a Redis stall must not stop refills until the lease expires ------------


@pytest.fixture
def stalling_redis() -> Iterator[RedisServer]:
    """A redis-server of its own: CLIENT PAUSE stalls every client of it."""
    with RedisServer() as server:
        yield server


def test_pools_refill_right_after_a_redis_stall_mid_pass(stalling_redis: RedisServer, clock: FakeClock) -> None:
    """A 1.5 s CLIENT PAUSE hits a pass: its commands and the lease's release time out. Before,
    the release error was swallowed and the lease lived on (60-90 s without refills for every
    pool caught by the stall). Now the run reports the lease it may still hold, the retry is
    queued RETRY_SECONDS later carrying it, and the retry releases it and refills the pool."""
    config = parse(CONFIG.format(clone=30, boot=10) + f"redis: {{server: 127.0.0.1, port: {stalling_redis.port}, "
                                                         "socket_timeout: 0.2}\n")
    client = connect(config.redis)  # the service's own client settings
    services = Services(config, client, clock=clock)
    admin = redis.Redis(port=stalling_redis.port, decode_responses=True)
    queue = RecordingQueue()

    def redis_stalls(step: str) -> None:
        if step == "inventory":
            admin.execute_command("CLIENT", "PAUSE", 1500, "ALL")

    report = look_at(services, PoolMessage("alpha", "tick"), queue, checkpoint=redis_stalls)
    assert report is not None and report.failures and report.unreleased_lease

    admin.ping()  # answers once the pause is over
    assert admin.get(services.store.keys.lease("alpha")) == report.unreleased_lease  # the stalled run's
    assert services.store.counts(["alpha"])["alpha"]["pending"] == 0  # nothing refilled yet

    [(retry, delay)] = queue.sent
    assert (retry.reason, retry.lease, delay) == (RETRY, report.unreleased_lease, RETRY_SECONDS)
    again = look_at(services, retry, queue)

    assert again is not None and again.leased and again.failures == []
    assert services.store.counts(["alpha"])["alpha"]["pending"] == 2  # the pool refills
    assert not admin.exists(services.store.keys.lease("alpha"))


def test_a_run_woken_after_another_took_its_lease_calls_no_provider(services: Services, clock: FakeClock,
                                                                     redis_client: redis.Redis) -> None:
    """A run frozen between a step's Redis round trips (its checkpoint passed) and woken once
    another run had the pool: its next provider call is refused before it is made. Before, the
    lease was looked at only after a slow call, so the woken run started the clones of slots the
    other run had since judged never started and reserved again (more clones at the provider
    than task_limit; tests/chaos/test_stale_leased_pass.py measures the rest)."""
    pool = services.config.pool("alpha")
    assert pool is not None
    lease = RunLease(services, "alpha", "frozen-run")
    redis_client.set(services.store.keys.lease("alpha"), "frozen-run")
    provider = lease.fenced(services.provider("dummy"))
    provider.clone(pool, "ci-before")  # within its lease: made
    clock.advance(LEASE_SECONDS + 1)  # frozen past its lease...
    redis_client.set(services.store.keys.lease("alpha"), "another-run")  # ...which another run took

    with pytest.raises(LeaseLost):
        provider.clone(pool, "ci-after")

    assert {vm.name for vm in services.provider("dummy").list_vms(pool)} == {"ci-before"}
