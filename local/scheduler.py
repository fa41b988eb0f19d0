"""The local stand-in for the EventBridge tick, the reconcile queue and its consumer.

The same code as in AWS (chalicelib/manager/dispatch.py): ``Ticker.tick`` every ``interval``
seconds puts one message per pool on a queue, and worker threads run ``look_at`` for each
message as it falls due, which re-queues a pool with work in flight after its check delay. The
queue is in-process (``LocalQueue``): one pending message per pool, the earliest kept.

The API (in its own processes) nudges a pool through Redis after a checkout or delete (the
store pushes onto the pool's wake list); a listener thread turns each nudge into a message at
once, as the API's SQS message does in AWS.
"""

from __future__ import annotations

import dataclasses
import heapq
import itertools
import threading
import time
from typing import Sequence

from chalicelib.manager.dispatch import Ticker, look_at
from chalicelib.manager.pool_queue import FOLLOWUP, NUDGE, Delayed, PoolMessage
from chalicelib.observability import logger
from chalicelib.services import Services
from chalicelib.store import StoreUnavailable

WORKERS = 8
STOP_SECONDS = 60.0
"""How long ``LocalScheduler.stop`` waits for a pass in progress: longer than a pass takes on
a loaded machine, short enough that Ctrl-C of `make run` does not seem to hang."""


def merged(first: PoolMessage, second: PoolMessage) -> PoolMessage:
    """One message doing what both ask: a follow-up stays one (its Redis marker is cleared when
    it runs), a lease to release is kept."""
    reason = FOLLOWUP if FOLLOWUP in (first.reason, second.reason) else second.reason
    return dataclasses.replace(second, reason=reason, lease=second.lease or first.lease)


class LocalQueue:
    """Delayed messages in memory, at most one per pool (the one due first; a lease to release
    is kept). ``take`` blocks until a message is due or ``timeout`` passes."""

    def __init__(self) -> None:
        self._due: dict[str, tuple[float, PoolMessage]] = {}
        self._heap: list[tuple[float, int, str]] = []
        self._order = itertools.count()
        self._changed = threading.Condition()

    def send(self, messages: Sequence[Delayed]) -> None:
        now = time.monotonic()
        with self._changed:
            for message, delay in messages:
                due = now + max(delay, 0.0)
                queued = self._due.get(message.pool)
                if queued is not None:
                    message = merged(queued[1], message)
                    if queued[0] <= due:
                        self._due[message.pool] = (queued[0], message)
                        continue
                self._due[message.pool] = (due, message)
                heapq.heappush(self._heap, (due, next(self._order), message.pool))
            self._changed.notify_all()

    def take(self, timeout: float) -> PoolMessage | None:
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                now = time.monotonic()
                while self._heap and self._due.get(self._heap[0][2], (None,))[0] != self._heap[0][0]:
                    heapq.heappop(self._heap)  # superseded by an earlier message for the pool
                if self._heap and self._heap[0][0] <= now:
                    _, _, pool = heapq.heappop(self._heap)
                    return self._due.pop(pool)[1]
                wait = deadline - now
                if self._heap:
                    wait = min(wait, self._heap[0][0] - now)
                if deadline <= now:
                    return None
                self._changed.wait(max(wait, 0.001))

    def __len__(self) -> int:
        with self._changed:
            return len(self._due)


class LocalScheduler:
    def __init__(self, services: Services, interval_seconds: float = 10.0, budget_seconds: float = 30.0) -> None:
        self.services = services
        self.interval_seconds = interval_seconds
        self.budget_seconds = budget_seconds
        self.queue = LocalQueue()
        self._ticker = Ticker(spread_seconds=0)
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self._running: set[str] = set()
        self._again: dict[str, PoolMessage] = {}
        self._lock = threading.Lock()

    def start(self) -> None:
        workers = min(WORKERS, max(len(self.services.config.pool_names), 1))
        targets = [(self._tick_loop, "tick"), (self._listen_for_nudges, "nudges")]
        targets += [(self._work, f"reconcile-{n}") for n in range(workers)]
        for target, name in targets:
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self, timeout: float = STOP_SECONDS) -> bool:
        """Stop ticking and reconciling, and wait up to ``timeout`` seconds in all for the
        threads to end (a pass in progress is finished first, no new one starts). Returns
        whether they all did: one still running goes on using the services, and printing their
        metrics, after the caller has closed them (before, stop gave each thread 5 s and went
        on: a pass slower than that on a loaded machine ran on into the next test)."""
        self._stopping.set()
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(deadline - time.monotonic(), 0.0))
        running = [thread.name for thread in self._threads if thread.is_alive()]
        if running:
            logger.warning("scheduler threads still running after stop", extra={"threads": running})
        return not running

    def _tick_loop(self) -> None:
        while not self._stopping.is_set():
            try:
                self._ticker.tick(self.services, self.queue)
            except StoreUnavailable as error:
                logger.warning("tick skipped: redis unavailable", extra={"error": str(error)})
            except Exception:  # noqa: BLE001 - keep the local stack alive and say what broke
                logger.exception("tick crashed")
            self._stopping.wait(self.interval_seconds)

    def _listen_for_nudges(self) -> None:
        """A checkout or delete in an API process pushed onto the pool's wake list: run the pool."""
        store = self.services.store
        while not self._stopping.is_set():
            pools = {store.keys.wake(name): name for name in self.services.config.pool_names}
            try:
                popped = store.client.blpop(list(pools), timeout=1) if pools else None
            except Exception as error:  # noqa: BLE001 - redis away: listen again in a second
                logger.debug("nudge listener: redis unavailable", extra={"error": repr(error)})
                self._stopping.wait(1.0)
                continue
            if popped:
                self.queue.send([(PoolMessage(pools[str(popped[0])], NUDGE), 0.0)])

    def _work(self) -> None:
        while not self._stopping.is_set():
            message = self.queue.take(timeout=0.5)
            if message is None:
                continue
            with self._lock:
                if message.pool in self._running:
                    # This process runs the pool now: one more run when it ends, no lease traffic.
                    held = self._again.get(message.pool)
                    self._again[message.pool] = merged(held, message) if held else message
                    continue
                self._running.add(message.pool)
            try:
                look_at(self.services, message, self.queue, self.budget_seconds, stopping=self._stopping.is_set)
            except StoreUnavailable as error:
                logger.warning("reconcile skipped: redis unavailable",
                               extra={"pool": message.pool, "error": str(error)})
                self.queue.send([(message, 1.0)])
            except Exception:  # noqa: BLE001 - keep the local stack alive and say what broke
                logger.exception("reconcile crashed", extra={"pool": message.pool})
            finally:
                with self._lock:
                    self._running.discard(message.pool)
                    again = self._again.pop(message.pool, None)
                if again:
                    self.queue.send([(again, 0.0)])
