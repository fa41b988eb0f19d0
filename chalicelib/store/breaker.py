"""After Redis has not answered in time, answer 503 at once instead of making every caller wait.

Without it, while Redis was stopped (SIGSTOP, a frozen node, a saturated one) each request waited
its socket timeout (2 s) before its 503, and a process's requests queued behind one another: 24
clients of the one-process local stack (4 loops) waited up to 10 s for their 503s.

One ``RedisBreaker`` per Redis client (``connection.connect`` makes it; a process builds its
client once, a warm Lambda keeps it between invocations). A command that times out (its reply, or
opening its connection) opens it; while it is open ``admit`` says no and the API answers 503 with
Retry-After at once (``routes.handle``), sending nothing to Redis. What tells that Redis is back is
a ``PING`` kept in flight on a connection of its own (``_Probe``; while requests are refused, a
new one every socket timeout, the earlier ones still waiting: a failover's new primary answers
the newest), not a request: a request as
the probe made its caller wait a socket timeout per probe, and on Lambda (one request at a time
per process) every request was a probe. The ``PING`` waits in Redis's socket while Redis is stopped
and is answered the moment it runs again (SIGCONT): the breaker closes then, so no request that
would have succeeded is refused once Redis answers. ``admit`` also looks whether the ``PING``'s
answer has arrived before its thread has read it (a Lambda's process thawed for the next
invocation, a busy machine).

It stays open at most ``OPEN_SECONDS`` (the probe waits as long): then requests go to Redis again
(one that times out opens it again). A reply refused by Redis (an error) is an answer too: Redis
runs; and a refused connection closes it (requests fail at once anyway).
"""

from __future__ import annotations

import select
import socket
import threading
import time
from typing import Any, Callable

import redis

from chalicelib.observability import logger

OPEN_SECONDS = 5.0
"""Longest a breaker stays open after the timeout that opened it (a probe waits as long)."""

MIN_PROBE_EVERY = 0.5
"""The least time between two probes of an open breaker: at most 11 in one opening."""


class RedisBreaker:
    """Whether this process sends requests to Redis now (``admit``); opened by a timeout
    (``timed_out``), closed by Redis's answer to a probe or after ``OPEN_SECONDS``."""

    def __init__(self, probe_connection: Callable[[], Any] | None = None, probe_every: float = 1.0,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self.probe_connection = probe_connection
        """Makes a probe's connection (not opened yet; its timeouts do not come here)."""
        self.probe_every = probe_every
        """While open and asked, a new probe this often (the client's socket timeout, at least
        ``MIN_PROBE_EVERY``), the earlier ones still waiting: a new connection reaches the node
        the endpoint names now (a failover away from a frozen primary), the earlier PINGs the
        node that resumes."""
        self.monotonic = monotonic
        self._lock = threading.Lock()
        self._opened_at: float | None = None
        self._probes: list[_Probe] = []
        self.refused = 0
        """Requests refused since this process started (for tests and logs)."""

    @property
    def is_open(self) -> bool:
        return self._opened_at is not None

    def admit(self) -> bool:
        """Whether a request may go to Redis now; False counts it refused (answer 503 at once)."""
        opened_at = self._opened_at
        if opened_at is None:  # the common case: one attribute read
            return True
        with self._lock:
            if self._opened_at is None:
                return True
            if any(probe.answer_waiting() for probe in self._probes):
                self._close("answered")
                return True
            now = self.monotonic()
            if now - self._opened_at >= OPEN_SECONDS:
                self._close("bounded")
                return True
            self._probe_if_due(now)
            self.refused += 1
            return False

    def timed_out(self) -> None:
        """A command (or opening a connection) found Redis not answering within the socket
        timeout: open, and start a probe unless a recent one waits."""
        with self._lock:
            now = self.monotonic()
            if self._opened_at is None:
                self._opened_at = now
                logger.warning("Redis did not answer in time: requests are answered 503 at once until it "
                               "answers a PING (at most %s s)", OPEN_SECONDS)
            self._probe_if_due(now)

    def _probe_if_due(self, now: float) -> None:
        # Called with the lock held.
        self._probes = [probe for probe in self._probes if probe.outcome is None]
        if self.probe_connection is None or (
                self._probes and now - self._probes[-1].started_at < self.probe_every):
            return
        probe = _Probe(self, self.probe_connection(), now)
        self._probes.append(probe)
        probe.start()

    def _answered(self, probe: "_Probe", how: str) -> None:
        with self._lock:
            if probe in self._probes and self._opened_at is not None:
                self._close(how)

    def _close(self, how: str) -> None:
        # Called with the lock held. Probes still waiting end on their own (their PING's answer
        # or timeout) and close nothing since they are no longer listed.
        self._opened_at = None
        self._probes = []
        logger.info("Redis breaker closed", extra={"how": how, "refused": self.refused})


class _Probe(threading.Thread):
    """One PING on a connection of its own, waiting up to ``OPEN_SECONDS`` for Redis's answer."""

    def __init__(self, breaker: RedisBreaker, connection: Any, started_at: float) -> None:
        super().__init__(name="vmpool-redis-probe", daemon=True)
        self.breaker = breaker
        self.connection = connection
        self.started_at = started_at
        self.outcome: str | None = None
        """Once it has ended: "answered", "failed fast" (the connection refused or reset: a request
        fails at once too) or "timed out"."""

    def answer_waiting(self) -> bool:
        """Whether the PING's answer (or the connection's end) has arrived, read or not."""
        if self.outcome is not None:
            return self.outcome != "timed out"
        sock = getattr(self.connection, "_sock", None)  # set before the handshake it may wait in
        if sock is None:
            return False
        try:
            return bool(select.select([sock], [], [], 0)[0])
        except (OSError, ValueError):  # closed by its thread meanwhile: it has its outcome
            return True

    def run(self) -> None:
        outcome = "answered"
        try:
            self.connection.connect()
            self.connection.send_command("PING", check_health=False)
            self.connection.read_response()
        except redis.ResponseError:  # Redis's own answer (BUSY, LOADING, NOAUTH): it runs
            pass
        except (redis.TimeoutError, socket.timeout):
            outcome = "timed out"
        except Exception:  # noqa: BLE001 - refused, reset: requests fail at once without the breaker
            outcome = "failed fast"
        finally:
            try:
                self.connection.disconnect()
            except Exception:  # noqa: BLE001 - closing a socket that is gone
                pass
        self.outcome = outcome
        if outcome != "timed out":
            self.breaker._answered(self, outcome)
