"""The local stack's scheduler stops whole: ``stop`` returns once no thread of it runs, so
nothing it does (a pass, a metric printed) happens after the caller closed its services. A nudge
that comes while a pool's run goes on is that run's next pass, not a run of its own."""

from __future__ import annotations

import functools
import threading
from typing import Any

import pytest
import redis

import local.scheduler
from chalicelib.clock import FakeClock
from chalicelib.config import parse
from chalicelib.manager.dispatch import look_at
from chalicelib.manager.pool_queue import DRAIN, FOLLOWUP, NUDGE, TICK, PoolMessage
from chalicelib.services import Services
from chalicelib.store import StoreUnavailable, connect
from chalicelib.store.connection import breaker_of
from local.scheduler import LocalScheduler
from tests.support import eventually

CONFIG = """\
providers:
  dummy: {provider_class: dummy, createvm_max_time: 0, boot_time: 0}
pools:
  - {name: alpha, size: 1, provider: dummy}
"""


def test_stop_waits_for_a_pass_in_progress_and_says_whether_every_thread_ended(
        redis_client: redis.Redis, clock: FakeClock, monkeypatch: pytest.MonkeyPatch) -> None:
    in_pass, let_go = threading.Event(), threading.Event()

    def slow_pass(*args: Any, **kwargs: Any) -> None:
        in_pass.set()
        let_go.wait(30)

    monkeypatch.setattr(local.scheduler, "look_at", slow_pass)
    scheduler = LocalScheduler(Services(parse(CONFIG), redis_client, clock=clock), interval_seconds=60)
    scheduler.start()
    try:
        assert in_pass.wait(30), "the tick never queued the pool"
        # A pass longer than the caller waits: stop says so rather than pretend it stopped.
        assert scheduler.stop(timeout=0.2) is False
        let_go.set()
        assert scheduler.stop(timeout=30) is True
        assert not [thread for thread in threading.enumerate() if thread in scheduler._threads]
    finally:
        let_go.set()
        scheduler.stop(timeout=30)


def test_nudges_queued_while_a_pool_runs_are_its_next_passes_under_the_same_lease(
        redis_client: redis.Redis, clock: FakeClock) -> None:
    """Issue 14 item 3: under checkout load every delete nudges its pool, and the listener turns
    each nudge into a queued message before the run's own look at the wake list. Each pass was
    then a run of its own (a lease taken and released, a follow-up claimed and cleared)."""
    services = Services(parse(CONFIG), redis_client, clock=clock)
    scheduler = LocalScheduler(services)  # not started: this test is its worker
    leases: list[str] = []
    deletes = 2

    def a_delete_during_the_pass(step: str) -> None:
        nonlocal deletes
        if step == "done":
            leases.append(redis_client.get(services.store.keys.lease("alpha")) or "")
            if deletes:
                deletes -= 1
                scheduler.queue.send([(PoolMessage("alpha", NUDGE), 0.0)])  # what the listener does

    report = look_at(services, PoolMessage("alpha", NUDGE), scheduler.queue, budget_seconds=30,
                     checkpoint=a_delete_during_the_pass, nudged=functools.partial(scheduler.take_nudge, "alpha"))

    assert report is not None and len(report.passes) == 3
    assert len(set(leases)) == 1 and leases[0]
    assert scheduler.queue.take(timeout=0) is None  # no run left to do: the run took both nudges


def test_a_follow_up_queued_while_a_pool_runs_waits_for_a_run_of_its_own(
        redis_client: redis.Redis, clock: FakeClock) -> None:
    """A follow-up's marker in Redis is cleared when its message runs: taken by the run going on,
    the marker would stay and hold every later follow-up of the pool until it expired."""
    services = Services(parse(CONFIG), redis_client, clock=clock)
    scheduler = LocalScheduler(services)

    def a_follow_up_during_the_pass(step: str) -> None:
        if step == "done":
            scheduler.queue.send([(PoolMessage("alpha", FOLLOWUP), 0.0)])

    report = look_at(services, PoolMessage("alpha", NUDGE), scheduler.queue, budget_seconds=30,
                     checkpoint=a_follow_up_during_the_pass, nudged=functools.partial(scheduler.take_nudge, "alpha"))

    assert report is not None and len(report.passes) == 1
    queued = scheduler.queue.take(timeout=0)
    assert queued is not None and queued.reason == FOLLOWUP


def test_an_idle_scheduler_on_a_short_socket_timeout_never_finds_redis_slow(
        redis_client: redis.Redis, clock: FakeClock, monkeypatch: pytest.MonkeyPatch) -> None:
    """The nudge listener's BLPOP blocked 1 s on a client that waits ``socket_timeout`` (here
    0.5 s): with no checkout to nudge a pool, every wait timed out and opened the process's
    breaker (an API request of the same process answered 503, Redis well), and a nudge popped as
    the reply was given up was lost. Now each wait is half the socket timeout at most.

    The margin is a quarter of a second: a loaded machine may hold one reply past it now and
    then (CI: 1 of 3 waits timed out, 1 run in 33 on a core shared with two busy loops), so the
    waits Redis was asked for are checked, and one timeout in four waits is allowed; before, each
    asked for 1 s and every one timed out."""
    config = parse(":redis: {socket_timeout: 0.5}\n" + CONFIG)
    port = redis_client.connection_pool.connection_kwargs["port"]
    client = connect(config.redis, url=f"redis://127.0.0.1:{port}/0")
    breaker = breaker_of(client)
    assert breaker is not None
    timeouts: list[int] = []
    waits: list[float] = []  # the block each BLPOP asked Redis for, in seconds
    monkeypatch.setattr(breaker, "timed_out", lambda: timeouts.append(1))
    blpop = client.blpop

    def counted_blpop(*args: Any, **kwargs: Any) -> Any:
        try:
            return blpop(*args, **kwargs)
        finally:
            waits.append(float(kwargs.get("timeout", args[1] if len(args) > 1 else 0)))

    monkeypatch.setattr(client, "blpop", counted_blpop)
    scheduler = LocalScheduler(Services(config, client, clock=clock), interval_seconds=60)
    scheduler.start()
    try:
        eventually(lambda: len(waits) >= 4, 20, "four waits for a nudge")
    finally:
        assert scheduler.stop()
        client.close()
    assert all(0 < wait <= 0.25 for wait in waits), f"waits for a nudge of {waits} s on a 0.5 s socket timeout"
    assert len(timeouts) <= 1, f"{len(timeouts)} of {len(waits)} waits for a nudge timed out"


TWO_POOLS = CONFIG + "  - {name: beta, size: 1, provider: dummy}\n"


def test_every_nudge_runs_its_pool_not_only_the_first(
        redis_client: redis.Redis, clock: FakeClock, monkeypatch: pytest.MonkeyPatch) -> None:
    """A checkout or delete nudges its pool so that the refill starts at once. The listener reused
    its BLPOP timeout's variable for the first nudge's delay (a negative number of seconds): every
    later BLPOP was refused ("timeout is negative"), and every checkout's refill on the stack
    waited for the next tick instead (~10 s at the default interval, measured at 1,000 pools)."""
    looked: list[tuple[str, str]] = []

    def recorded_pass(services: Services, message: PoolMessage, *args: Any, **kwargs: Any) -> None:
        looked.append((message.pool, message.reason))

    monkeypatch.setattr(local.scheduler, "look_at", recorded_pass)
    services = Services(parse(TWO_POOLS), redis_client, clock=clock)
    scheduler = LocalScheduler(services, interval_seconds=3600)  # one tick: the start's
    scheduler.start()
    try:
        eventually(lambda: len(looked) >= 2, 20, "the start's tick of both pools")
        for nudge, pool in enumerate(["alpha", "beta", "alpha"], start=1):
            services.store.wake(pool)  # what the API's checkout or delete does
            eventually(lambda nudges=nudge: len([m for m in looked if m[1] == NUDGE]) >= nudges,
                       10, f"nudge {nudge} ({pool}) run")
        assert [m for m in looked if m[1] == NUDGE] == [("alpha", NUDGE), ("beta", NUDGE), ("alpha", NUDGE)]
    finally:
        assert scheduler.stop()


def test_a_wait_for_nudges_redis_refuses_is_logged_as_a_warning(
        redis_client: redis.Redis, clock: FakeClock, caplog: pytest.LogCaptureFixture) -> None:
    """A BLPOP Redis refuses is not Redis being away: every nudge is lost while it lasts, so it is
    a warning an operator sees, not the debug line of an outage (a negative timeout once lost
    every nudge after the first with nobody told)."""
    services = Services(parse(CONFIG), redis_client, clock=clock)
    wake = services.store.keys.wake("alpha")
    scheduler = LocalScheduler(services, interval_seconds=3600)

    def refused_wait_logged() -> list[Any]:
        # The first tick's pass clears the pool's wake-ups, and it may do so before the listener's
        # first BLPOP: put the key of the wrong type back until the listener has met it.
        redis_client.set(wake, "not a list", nx=True)  # BLPOP answers WRONGTYPE
        return [r for r in caplog.records if "refused the wait for nudges" in r.getMessage()]

    with caplog.at_level("DEBUG", logger="vmpool"):
        scheduler.start()
        try:
            eventually(refused_wait_logged, 20, "the refused wait logged")
        finally:
            assert scheduler.stop()
    refused = [r for r in caplog.records if "refused the wait for nudges" in r.getMessage()]
    assert refused[0].levelname == "WARNING"
    assert "ResponseError" in str(getattr(refused[0], "error", ""))  # the class: messages may hold secrets


def many_pools(count: int) -> str:
    return CONFIG + "".join(f"  - {{name: pool-{n:04d}, size: 0, provider: dummy}}\n" for n in range(count))


def test_the_default_tick_queues_every_pool_at_once_first_then_spread_over_the_minute(
        redis_client: redis.Redis, clock: FakeClock) -> None:
    """At 1,000 pools the local tick queued every pool every 10 s, all in the same instant: 13-17 s
    of CPU a minute idle, and each burst held up the nudges queued behind it. As in AWS it ticks
    once a minute now, its pools spread over 50 s of it; the first tick stays unspread, so a
    started stack fills at once."""
    services = Services(parse(many_pools(199)), redis_client, clock=clock)
    scheduler = LocalScheduler(services)  # not started: its ticks are called here
    assert scheduler.interval_seconds == 60
    assert scheduler.tick(at_once=True)
    due_now = [scheduler.queue.take(timeout=0) for _ in range(200)]
    assert None not in due_now and len({m.pool for m in due_now if m}) == 200
    assert scheduler.tick(at_once=False)
    assert len(scheduler.queue) == 200  # every pool queued...
    due_now = [m for m in iter(lambda: scheduler.queue.take(timeout=0), None)]
    assert len(due_now) < 20, f"{len(due_now)} of 200 pools due at once"  # ...over 50 s (1 in 50 at 0 s)


def test_a_pool_added_to_the_config_is_looked_at_without_waiting_for_the_tick(
        redis_client: redis.Redis, clock: FakeClock, monkeypatch: pytest.MonkeyPatch) -> None:
    """``make run`` re-reads an edited config file: a pool added there is filled at once, not up
    to a minute (the interval) later."""
    looked: list[tuple[str, str]] = []

    def recorded_pass(services: Services, message: PoolMessage, *args: Any, **kwargs: Any) -> None:
        looked.append((message.pool, message.reason))

    monkeypatch.setattr(local.scheduler, "look_at", recorded_pass)
    services = Services(parse(CONFIG), redis_client, clock=clock)
    scheduler = LocalScheduler(services, interval_seconds=3600)
    scheduler.start()
    try:
        eventually(lambda: ("alpha", TICK) in looked, 20, "the start's tick")
        services.use_config(parse(TWO_POOLS))  # what run.py does once the edited file checks
        eventually(lambda: ("beta", TICK) in looked, 20, "the added pool looked at")
    finally:
        assert scheduler.stop()



def test_a_first_tick_redis_failed_is_tried_again_within_seconds_not_an_interval_later(
        redis_client: redis.Redis, clock: FakeClock, monkeypatch: pytest.MonkeyPatch) -> None:
    """A stack started while its Redis is still loading its data: the first tick fails. With a
    minute's interval the pools would stay empty for that minute."""
    looked: list[tuple[str, str]] = []

    def recorded_pass(services: Services, message: PoolMessage, *args: Any, **kwargs: Any) -> None:
        looked.append((message.pool, message.reason))

    monkeypatch.setattr(local.scheduler, "look_at", recorded_pass)
    scheduler = LocalScheduler(Services(parse(CONFIG), redis_client, clock=clock), interval_seconds=3600)
    tick, failures = scheduler._ticker.tick, [StoreUnavailable("redis: LOADING")]

    def failing_once(*args: Any, **kwargs: Any) -> Any:
        if failures:
            raise failures.pop()
        return tick(*args, **kwargs)

    monkeypatch.setattr(scheduler._ticker, "tick", failing_once)
    scheduler.start()
    try:
        eventually(lambda: ("alpha", TICK) in looked, 20, "the tick tried again")
    finally:
        assert scheduler.stop()


def test_a_vm_returned_to_a_draining_pool_is_drained_at_its_nudge_not_at_the_next_tick(
        redis_client: redis.Redis, clock: FakeClock, monkeypatch: pytest.MonkeyPatch) -> None:
    """A pool removed from the config with a VM still checked out drains; its user returns the
    VM (the store's return nudges the pool, as DELETE /vm does). The listener heard the configured
    pools' nudges only: the returned VM waited for the next tick (up to a minute) to be destroyed,
    where a configured pool's is handled at once. Now the nudge runs the pool's drain."""
    looked: list[tuple[str, str]] = []

    def recorded_pass(services: Services, message: PoolMessage, *args: Any, **kwargs: Any) -> None:
        looked.append((message.pool, message.reason))

    with_beta = Services(parse(TWO_POOLS), redis_client, clock=clock)
    assert LocalScheduler(with_beta).tick(at_once=True)  # beta known: a removal drains it
    monkeypatch.setattr(local.scheduler, "look_at", recorded_pass)
    services = Services(parse(CONFIG), redis_client, clock=clock)  # beta removed
    scheduler = LocalScheduler(services, interval_seconds=3600)  # one tick: the start's
    scheduler.start()
    try:
        eventually(lambda: ("beta", DRAIN) in looked, 20, "the start's tick draining beta")
        services.store.wake("beta")  # what the return of one of its VMs does
        eventually(lambda: looked.count(("beta", DRAIN)) >= 2, 10, "the return's nudge draining beta")
        assert ("beta", NUDGE) not in looked  # a nudge for a pool not configured is dropped by look_at
    finally:
        assert scheduler.stop()
