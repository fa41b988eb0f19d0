"""The service's one clock: Redis's, as this process estimates it from its own wall clock.

Times one process writes and another compares were on each process's own clock: a checkout's
time (the API's) against a lifetime's end (a reconcile pass's), a VM's ``ready`` time against
``ready_ttl``, a clone's start against the pool's ``timeout``, a reset's time against a clone's
start. Clocks S seconds apart shifted each by S: a VM in use was reaped S seconds early by a
pass whose clock ran ahead of the API that checked it out. Every process of a deployment talks
to the same Redis, so its clock is the one they share.

``RedisAlignedClock`` reads Redis's ``TIME`` once per ``deadline.OFFSET_KEPT_SECONDS`` (and after
a failover: a new primary has its own clock), keeps the offset from this process's wall clock,
and answers ``now`` as the wall clock plus that offset: no round trip per reading. Redis out of
reach, it keeps the offset it had for ``OFFSET_KEPT_SECONDS`` more (none at first: its own
clock, as before, asked again ``RETRY_SECONDS`` later), so a stalled Redis costs a process one
socket timeout now and then, not one per reading.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Callable

import redis

from chalicelib.clock import Clock, SystemClock
from chalicelib.store.deadline import OFFSET_KEPT_SECONDS, SLOW_MEASURE_SHARE, socket_timeout_ms

RETRY_SECONDS = 5.0
"""How long after a failed or slow ``TIME`` a process that never measured the offset uses its
own clock before asking again (one that did keeps its offset ``OFFSET_KEPT_SECONDS`` more)."""


class RedisAlignedClock:
    """``now``: Redis's clock, estimated (its ``TIME`` against the middle of the round trip, within
    half of it: ms); ``monotonic``: the wall clock's, for budgets and durations."""

    def __init__(self, client: redis.Redis, wall: Clock | None = None,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self._client = client
        self._wall = wall or SystemClock()
        self._monotonic = monotonic
        self._lock = threading.Lock()
        """Held to change ``_kept``, and while deciding which thread measures; not to read it."""
        self._kept: tuple[float, float | None, int | None] = (0.0, None, None)
        """(offset, next measure, failover epoch), replaced whole, so a reading takes it in one
        look without the lock: the offset is Redis's clock minus the wall clock, seconds (0
        until measured); the next measure is when (this process's monotonic clock) to read
        ``TIME`` again (None: at once); the epoch is the client's when it was measured."""

    def now(self) -> float:
        return self._wall.now() + self._current_offset()

    def monotonic(self) -> float:
        return self._wall.monotonic()

    def _current_offset(self) -> float:
        epoch_counter: Any = self._client.connection_pool.connection_kwargs.get("failover_epoch")
        epoch = epoch_counter.value if epoch_counter is not None else 0
        now = self._monotonic()
        # Nearly every reading: the offset kept, read without the lock (it was taken for every
        # reading, ~3 a provider call: 5 % of the scheduler thread's CPU).
        offset, next_measure, measured_epoch = self._kept
        if next_measure is not None and measured_epoch == epoch and now < next_measure:
            return offset
        with self._lock:
            offset, next_measure, measured_epoch = self._kept  # another thread may have measured since
            if next_measure is not None and measured_epoch == epoch and now < next_measure:
                return offset
            # Asked again only after this, however the measure below ends: the process's other
            # threads use the offset kept meanwhile instead of each waiting on the same TIME. An
            # offset once measured stays good for a while yet (clocks drift by ms a minute): a
            # stalled Redis then costs this process one socket timeout a minute, not one per call.
            wait = OFFSET_KEPT_SECONDS if next_measure is not None else RETRY_SECONDS
            self._kept = (offset, now + wait, epoch)
        try:
            sent, sent_wall = self._monotonic(), self._wall.now()
            seconds, microseconds = self._client.time()
            took = self._monotonic() - sent
        except (redis.RedisError, OSError):
            return offset  # Redis unreachable: the offset kept (or this process's own clock)
        offset = int(seconds) + int(microseconds) / 1_000_000 - (sent_wall + took / 2)
        window = socket_timeout_ms(self._client)
        kept = window is None or took * 1000 <= window / SLOW_MEASURE_SHARE
        with self._lock:
            _, next_measure, measured_epoch = self._kept
            # A slow round trip's estimate is off by up to half of it: measured again soon.
            self._kept = (offset, sent + OFFSET_KEPT_SECONDS if kept else next_measure, measured_epoch)
        return offset
