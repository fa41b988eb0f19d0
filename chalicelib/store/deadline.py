"""When a change's script must no longer act: its caller's answer deadline on Redis's clock.

A request whose Redis call outlasts the socket timeout answers 503, but its script still runs
when Redis gets to it (Redis paused, behind a slow script): a change made then would be made
again by the retry the 503 asks for. A script that must not act twice takes a deadline (ms of
Redis's clock) and compares it with Redis's ``TIME`` as it runs: past it, it changes nothing.

The deadline is this process's estimate of Redis's clock now, plus the socket timeout. Reading
Redis's clock (``TIME``) for each request costs a round trip; instead the offset between Redis's
clock and this process's monotonic clock is measured once by a ``TIME`` and kept for
``OFFSET_KEPT_SECONDS`` (then measured again), per connection pool and failover (a new primary
has its own clock). The offset is taken on the early side (Redis's time against the moment its
reply arrived), a measurement whose round trip was slow is used once and not kept (its error is
its round trip), and a kept one is moved earlier by ``DRIFT_ALLOWED`` of its age (the two clocks
drift apart, NTP slews at most 0.05 %): the deadline is never later than the moment the caller
gives up, so a late script never acts after its 503; at worst a script that reaches Redis in the
last few ms of its window is refused as late (a 503, which the caller retries).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any, Callable
from weakref import WeakKeyDictionary

OFFSET_KEPT_SECONDS = 60.0
"""How long a measured offset is used before ``TIME`` is read again."""

DRIFT_ALLOWED = 0.001
"""How far apart the clocks may drift, per second of the offset's age (1 ms a second)."""

SLOW_MEASURE_SHARE = 20
"""A ``TIME`` whose round trip took more than 1/20 of the socket timeout is not kept."""


@dataclass(frozen=True)
class _Offset:
    offset: float
    """Redis's clock minus this process's monotonic clock, seconds (on the early side)."""
    measured_at: float
    """This process's monotonic clock when it was measured."""
    epoch: int
    """The client's failover count then."""


_offsets: WeakKeyDictionary[Any, _Offset] = WeakKeyDictionary()
_lock = threading.Lock()


def socket_timeout_ms(client: Any) -> int | None:
    """The ``client``'s socket timeout in ms (at least 1); None without one."""
    timeout = client.connection_pool.connection_kwargs.get("socket_timeout")
    return None if timeout is None else max(int(float(timeout) * 1000), 1)


def answer_deadline(client: Any, monotonic: Callable[[], float] = time.monotonic) -> str:
    """The time on Redis's clock (ms) after which a change's script sent now by ``client`` changes
    nothing: its caller has given up on the answer by then and said the change failed (503). ""
    without a socket timeout. A ``TIME`` round trip only once per OFFSET_KEPT_SECONDS (and after
    a failover), not per call."""
    window = socket_timeout_ms(client)
    if window is None:
        return ""
    pool = client.connection_pool
    epoch_counter = pool.connection_kwargs.get("failover_epoch")
    epoch = epoch_counter.value if epoch_counter is not None else 0
    now = monotonic()
    with _lock:
        known = _offsets.get(pool)
    if known is None or known.epoch != epoch or not 0 <= now - known.measured_at <= OFFSET_KEPT_SECONDS:
        sent = monotonic()
        seconds, microseconds = client.time()
        now = monotonic()
        known = _Offset(int(seconds) + int(microseconds) / 1_000_000 - now, now, epoch)
        if (now - sent) * 1000 <= window / SLOW_MEASURE_SHARE:
            with _lock:
                _offsets[pool] = known
    age = now - known.measured_at
    redis_now_ms = (now + known.offset - age * DRIFT_ALLOWED) * 1000
    return str(int(redis_now_ms) + window)
