"""The service's clock in the Lambdas and the local stack (store/redis_clock.py): Redis's time,
read once and followed on this process's wall clock; its own clock while Redis cannot answer."""

from __future__ import annotations

import threading

import redis

from chalicelib.clock import FakeClock
from chalicelib.config import parse
from chalicelib.store import connect
from chalicelib.store.deadline import OFFSET_KEPT_SECONDS
from chalicelib.store.redis_clock import RETRY_SECONDS, RedisAlignedClock


class Monotonic:
    def __init__(self) -> None:
        self.value = 1000.0

    def __call__(self) -> float:
        return self.value


def counted_time(client: redis.Redis) -> list[int]:
    """Count the client's TIME calls (the real command still runs)."""
    calls: list[int] = []
    real = client.time

    def time() -> tuple[int, int]:
        calls.append(1)
        return real()

    client.time = time  # type: ignore[method-assign]
    return calls


def test_reads_redis_time_once_and_follows_the_wall_clock(redis_client: redis.Redis) -> None:
    """Two processes whose wall clocks are an hour apart read the same time; a reading costs no
    round trip until the offset is OFFSET_KEPT_SECONDS old."""
    monotonic, calls = Monotonic(), counted_time(redis_client)
    ahead, behind = FakeClock(1_800_003_600.0), FakeClock(1_800_000_000.0)
    ahead_clock = RedisAlignedClock(redis_client, ahead, monotonic)
    behind_clock = RedisAlignedClock(redis_client, behind, monotonic)
    assert abs(ahead_clock.now() - behind_clock.now()) < 1.0
    assert abs(ahead_clock.now() - float(redis_client.time()[0])) < 2.0
    calls.clear()
    ahead.advance(30)
    behind.advance(30)
    monotonic.value += 30
    assert abs(ahead_clock.now() - behind_clock.now()) < 1.0 and calls == []
    monotonic.value += OFFSET_KEPT_SECONDS
    ahead_clock.now()
    assert calls == [1]  # measured again


def test_redis_down_is_the_process_own_clock_asked_again_later(closed_port: int) -> None:
    """Redis unreachable: the process's own time, no exception, and one attempt per RETRY_SECONDS
    (a stalled Redis costs one socket timeout, not one per reading)."""
    config = parse(f"redis: {{server: 127.0.0.1, port: {closed_port}, socket_timeout: 0.2}}\n")
    client = connect(config.redis)
    monotonic, calls, wall = Monotonic(), counted_time(client), FakeClock()
    clock = RedisAlignedClock(client, wall, monotonic)
    assert clock.now() == wall.now() and calls == [1]
    assert clock.now() == wall.now() and calls == [1]
    monotonic.value += RETRY_SECONDS
    clock.now()
    assert calls == [1, 1]


def test_readings_while_one_thread_measures_use_the_offset_kept(redis_client: redis.Redis) -> None:
    """Threads reading while another measures the offset again (its TIME in flight) answer the
    offset kept at once and send no TIME of their own; once it is measured, every reading uses
    the new one without a round trip (readings take no lock: store/redis_clock.py)."""
    monotonic, wall = Monotonic(), FakeClock(1_800_000_000.0)
    clock = RedisAlignedClock(redis_client, wall, monotonic)
    first = clock.now()
    real, calls = redis_client.time, []
    entered, release = threading.Event(), threading.Event()

    def slow_time() -> tuple[int, int]:
        calls.append(1)
        entered.set()
        assert release.wait(10)
        return real()

    redis_client.time = slow_time  # type: ignore[method-assign]
    monotonic.value += OFFSET_KEPT_SECONDS
    measuring = threading.Thread(target=clock.now)
    measuring.start()
    assert entered.wait(10)
    answers = []
    readers = [threading.Thread(target=lambda: answers.append(clock.now())) for _ in range(4)]
    for reader in readers:
        reader.start()
    for reader in readers:
        reader.join(10)
    assert answers == [first] * 4 and calls == [1]  # none waited for the measure, none sent TIME
    release.set()
    measuring.join(10)
    assert not measuring.is_alive()
    assert abs(clock.now() - float(real()[0])) < 2.0 and calls == [1]
