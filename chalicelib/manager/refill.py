"""Instant refill: when a checkout or delete leaves a pool short, reconcile it now.

Two parts. The store's checkout and return scripts push a nudge onto the pool's wake list in the
same atomic step: a run already reconciling the pool sees it when its pass ends and looks again
at once (and the local scheduler turns it into a run). In AWS the API also puts the pool on the
reconcile queue (``SqsRefill``), the same queue the schedule's tick fans out to, whose consumer
runs the pool's pass (chalicelib/manager/dispatch.py).
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Protocol

from chalicelib.manager.pool_queue import NUDGE, PoolMessage, SqsPoolQueue
from chalicelib.observability import logger

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


class SqsRefill:
    """One message per pool on the reconcile queue, with no delay."""

    def __init__(self, queue_url: str, client_factory: Callable[[], Any] | None = None) -> None:
        self.queue = SqsPoolQueue(queue_url, client_factory, budget_seconds=NUDGE_SEND_SECONDS)

    def pools_changed(self, pools: Iterable[str]) -> None:
        messages = [(PoolMessage(pool, NUDGE), 0.0) for pool in sorted(set(pools))]
        try:
            self.queue.send(messages)
        except Exception as error:  # noqa: BLE001 - a lost nudge only delays refill to the tick
            logger.warning("refill request not sent", extra={"error": type(error).__name__})
