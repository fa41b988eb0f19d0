"""Instant refill: when a checkout or delete leaves a pool short, reconcile it now.

Two parts. The store's checkout and return scripts push a nudge onto the pool's wake list in the
same atomic step: a run already reconciling the pool sees it when its pass ends and looks again
at once (and the local scheduler turns it into a run). In AWS the API also puts the pool on the
reconcile queue (``SqsRefill``), the same queue the schedule's tick fans out to, whose consumer
runs the pool's pass (chalicelib/manager/dispatch.py). At most twice a window
(``NUDGE_WINDOW_SECONDS``) per pool, however many requests change it: each message is a function
invocation and a pass, which reads the provider's inventory.

A change to a pool the API's config no longer has (a VM of a removed pool returned) asks for its
drain (``DRAIN``), not a nudge: the consumer drops a nudge for a pool it does not configure (the
sender had it configured: the consumer is a push behind), so the returned VM waited for the
next tick, up to a minute, to be destroyed.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Iterable, Protocol

from chalicelib import observability as metric
from chalicelib.clock import Clock, SystemClock
from chalicelib.manager.pool_queue import DRAIN, NUDGE, Delayed, PoolMessage, QueueRefused, SqsPoolQueue
from chalicelib.observability import emit, logger
from chalicelib.store.fleet import Fleet
from chalicelib.store.store import Store

REFILL_QUEUE_ENV = "VMPOOL_RECONCILE_QUEUE_URL"
"""The reconcile queue's URL: the API's nudges and the tick's messages go there."""


class RefillTrigger(Protocol):
    def pools_changed(self, pools: Iterable[str]) -> None:
        """Ask for the given pools to be reconciled soon. Never raises."""
        ...


class NoRefill:
    """Only the store's nudge: enough where a scheduler watches the wake lists (the local stack, tests)."""

    def pools_changed(self, pools: Iterable[str]) -> None:
        return None


NUDGE_SEND_SECONDS = 1.0
"""How long a nudge goes on trying (``SqsPoolQueue.budget_seconds``): SQS's quick refusals are
tried again, a call that timed out is not (the API's answer would wait for it)."""


NUDGE_WINDOW_SECONDS = 1
"""Per pool and window of the clock this long, the API's first change puts the pool on the
queue at once and its second when the window ends (that pass sees every change of the window);
the others add nothing. Before, every change sent a message: a client opening and deleting
on-demand requests in a loop started two reconcile functions (and, once the pool's lease was
free, two passes reading the provider's inventory) per loop, however fast it went."""


class SqsRefill:
    """A message per changed pool on the reconcile queue: at once, or when the window ends, or
    none when one is queued for then already (``NUDGE_WINDOW_SECONDS``; counted in Redis with
    ``store``, so every API process shares the count; without it, every change at once)."""

    def __init__(self, queue_url: str, client_factory: Callable[[], Any] | None = None,
                 store: Store | None = None, clock: Clock | None = None,
                 configured: Callable[[str], bool] = lambda pool: True) -> None:
        self.queue = SqsPoolQueue(queue_url, client_factory, budget_seconds=NUDGE_SEND_SECONDS)
        self.store = store
        self.clock = clock or SystemClock()
        self.configured = configured
        """Whether the API's config has the pool now (``Services.configures``): a change to one it
        has not is a removed pool's, whose message asks for its drain."""

    def _message(self, pool: str) -> PoolMessage:
        return PoolMessage(pool, NUDGE if self.configured(pool) else DRAIN)

    def pools_changed(self, pools: Iterable[str]) -> None:
        try:
            messages = self._nudges(sorted(set(pools)))
        except Exception as error:  # noqa: BLE001 - Redis out of reach: nudge each pool, as before
            logger.warning("refill requests not counted", extra={"error": type(error).__name__})
            messages = [(self._message(pool), 0.0) for pool in sorted(set(pools))]
        try:
            self.queue.send(messages)
        except QueueRefused as error:  # SQS failed (typed: pool_queue): refill waits for the tick
            codes = sorted({code for _, code in error.refused})[:10]
            logger.warning("refill request not sent: SQS did not take it; the tick refills the pool",
                           extra={"error": type(error).__name__, "codes": codes})
            emit(None, {metric.AWS_CALL_FAILURES: 1})
        except Exception:  # noqa: BLE001 - a bug of ours must not fail the request that changed the pool
            logger.exception("refill request not sent")

    def _nudges(self, pools: list[str]) -> list[Delayed]:
        """The messages for the changed ``pools``: the first change of a pool in the window goes
        at once, the second when the window ends, the others none."""
        if self.store is None or not pools:
            return [(self._message(pool), 0.0) for pool in pools]
        now = self.clock.now()
        window = math.floor(now / NUDGE_WINDOW_SECONDS)
        counts = Fleet(self.store).count_nudges(pools, window, 2 * NUDGE_WINDOW_SECONDS)
        window_end = (window + 1) * NUDGE_WINDOW_SECONDS - now
        return [(self._message(pool), 0.0 if count == 1 else window_end)
                for pool, count in zip(pools, counts, strict=True) if count <= 2]
