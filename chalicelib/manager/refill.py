"""Instant refill: when a checkout or delete leaves a pool short, reconcile it now.

In AWS the API Lambda puts the pool's name on an SQS queue that a Chalice SQS handler consumes
(``run_pool`` there). Locally the API nudges the local scheduler through a Redis list that
its per-pool threads block on. Either way a reconcile loop already running for the pool is nudged
too and looks again at once instead of after its delay.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, Callable, Iterable, Protocol

from chalicelib.observability import logger
from chalicelib.store import StoreUnavailable

if TYPE_CHECKING:
    from chalicelib.store import Store

REFILL_QUEUE_ENV = "VMPOOL_REFILL_QUEUE_URL"


class RefillTrigger(Protocol):
    def pools_changed(self, pools: Iterable[str]) -> None:
        """Ask for the given pools to be reconciled soon. Never raises."""
        ...


class NoRefill:
    """Refill waits for the schedule (tests that drive the manager by hand)."""

    def pools_changed(self, pools: Iterable[str]) -> None:
        return None


class SqsRefill:
    """One SQS message per pool; the queue's consumer runs the pool's reconcile."""

    def __init__(self, queue_url: str, client_factory: Callable[[], Any] | None = None) -> None:
        self.queue_url = queue_url
        self._client_factory = client_factory or _default_sqs_client
        self._client: Any = None

    def pools_changed(self, pools: Iterable[str]) -> None:
        entries = [
            {"Id": str(index), "MessageBody": json.dumps({"pool": pool})}
            for index, pool in enumerate(sorted(set(pools)))
        ]
        if not entries:
            return
        try:
            if self._client is None:
                self._client = self._client_factory()
            for start in range(0, len(entries), 10):
                self._client.send_message_batch(QueueUrl=self.queue_url, Entries=entries[start:start + 10])
        except Exception as error:  # noqa: BLE001 - a lost nudge only delays refill to the schedule
            logger.warning("refill request not sent", extra={"error": type(error).__name__})


def _default_sqs_client() -> Any:
    import boto3

    return boto3.client("sqs")


class WakeRefill:
    """Nudges the pool's reconciler through Redis (the local stack: its scheduler waits on it)."""

    def __init__(self, store: "Store") -> None:
        self.store = store

    def pools_changed(self, pools: Iterable[str]) -> None:
        for pool in set(pools):
            try:
                self.store.wake(pool)
            except StoreUnavailable:
                return  # the schedule refills anyway
