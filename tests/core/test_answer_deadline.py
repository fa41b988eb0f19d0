"""store/deadline.py: a change's answer deadline on Redis's clock, without a TIME round trip per
request, and never later than the moment its caller gives up (socket timeout)."""

from __future__ import annotations

from typing import Any

import redis

from chalicelib.config import parse
from chalicelib.store import connect
from chalicelib.store.connection import FailoverEpoch
from chalicelib.store.deadline import OFFSET_KEPT_SECONDS, answer_deadline
from local.redis_server import RedisServer


class _Pool:
    def __init__(self, socket_timeout: float | None) -> None:
        self.connection_kwargs: dict[str, Any] = {"socket_timeout": socket_timeout, "failover_epoch": FailoverEpoch()}


class _Clocks:
    """Redis's clock (epoch seconds) and this process's monotonic clock; ``time()`` is a TIME
    round trip taking ``round_trip`` seconds, Redis reading its clock halfway."""

    def __init__(self) -> None:
        self.redis = 1_800_000_000.0
        self.local = 500.0
        self.round_trip = 0.001
        self.times_read = 0

    def advance(self, seconds: float) -> None:
        self.redis += seconds
        self.local += seconds

    def monotonic(self) -> float:
        return self.local


class _Client:
    def __init__(self, clocks: _Clocks, socket_timeout: float | None = 2.0) -> None:
        self.clocks = clocks
        self.connection_pool = _Pool(socket_timeout)

    def time(self) -> tuple[int, int]:
        self.clocks.times_read += 1
        self.clocks.advance(self.clocks.round_trip / 2)
        read = self.clocks.redis
        self.clocks.advance(self.clocks.round_trip / 2)
        return int(read), int((read - int(read)) * 1_000_000)


def _redis_now_ms(clocks: _Clocks) -> float:
    return clocks.redis * 1000


def test_the_deadline_reads_redis_clock_once_a_minute_not_per_request() -> None:
    clocks = _Clocks()
    client = _Client(clocks)
    for _ in range(100):
        deadline = int(answer_deadline(client, clocks.monotonic))
        # Never past the moment the caller gives up (now + its 2 s socket timeout), at most a
        # round trip and the drift allowed (1 ms a second of the offset's age) before it.
        assert _redis_now_ms(clocks) + 2000 - 60 <= deadline <= _redis_now_ms(clocks) + 2000
        clocks.advance(0.5)  # 50 s in all
    assert clocks.times_read == 1
    clocks.advance(OFFSET_KEPT_SECONDS)
    answer_deadline(client, clocks.monotonic)
    assert clocks.times_read == 2


def test_a_deadline_is_never_later_than_the_callers_give_up_time_whatever_the_drift() -> None:
    """Redis's clock running slower than this process's (NTP slewing it) within what is allowed:
    a deadline from an offset kept a minute is still not past the caller's give-up time."""
    clocks = _Clocks()
    client = _Client(clocks)
    answer_deadline(client, clocks.monotonic)
    for _ in range(59):
        clocks.local += 1.0
        clocks.redis += 1.0 - 0.0005  # 500 ppm, NTP's largest slew
        assert int(answer_deadline(client, clocks.monotonic)) <= _redis_now_ms(clocks) + 2000


def test_a_slow_measure_is_used_once_and_not_kept() -> None:
    """A TIME answered slowly (Redis busy) gives an offset early by its round trip: kept, every
    disk for a minute would be refused as late; it serves that one request only."""
    clocks = _Clocks()
    client = _Client(clocks)
    clocks.round_trip = 1.5
    answer_deadline(client, clocks.monotonic)
    clocks.round_trip = 0.001
    answer_deadline(client, clocks.monotonic)
    answer_deadline(client, clocks.monotonic)
    assert clocks.times_read == 2


def test_a_failover_measures_the_new_primarys_clock() -> None:
    clocks = _Clocks()
    client = _Client(clocks)
    answer_deadline(client, clocks.monotonic)
    epoch = client.connection_pool.connection_kwargs["failover_epoch"]
    epoch.advance(epoch.value)
    clocks.redis += 3.0  # the new primary's clock is 3 s ahead
    assert int(answer_deadline(client, clocks.monotonic)) >= _redis_now_ms(clocks) + 2000 - 5
    assert clocks.times_read == 2


def test_no_socket_timeout_no_deadline() -> None:
    clocks = _Clocks()
    assert answer_deadline(_Client(clocks, socket_timeout=None), clocks.monotonic) == ""
    assert clocks.times_read == 0


def test_on_a_real_redis_the_deadline_is_redis_time_plus_the_timeout(redis_server: RedisServer) -> None:
    client = connect_to(redis_server.port)
    deadline = int(answer_deadline(client))
    seconds, microseconds = client.time()
    now_ms = seconds * 1000 + microseconds // 1000
    # Read after the deadline: at most the socket timeout (1.5 s) ahead, and not far behind it.
    assert now_ms + 1500 - 1000 <= deadline <= now_ms + 1500


def connect_to(port: int) -> redis.Redis:
    config = parse(f":redis: {{server: 127.0.0.1, port: {port}, socket_timeout: 1.5}}\n:pools: []\n")
    return connect(config.redis)
