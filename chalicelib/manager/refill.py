"""Instant refill: when a checkout or delete leaves a pool short, reconcile it now.

Two parts. The store's checkout and return scripts push a nudge onto the pool's wake list in the
same atomic step: a reconcile loop already running for the pool (a Lambda, or the local
scheduler's thread) blocks on that list and looks again at once. When no loop is running, which
is the usual case in AWS, the API Lambda also puts the pool's name on an SQS queue whose Chalice
consumer runs the pool's reconcile (``SqsRefill``).
"""

from __future__ import annotations

import json
from typing import Any, Callable, Iterable, Protocol

from chalicelib.observability import logger

REFILL_QUEUE_ENV = "VMPOOL_REFILL_QUEUE_URL"


class RefillTrigger(Protocol):
    def pools_changed(self, pools: Iterable[str]) -> None:
        """Ask for the given pools to be reconciled soon. Never raises."""
        ...


class NoRefill:
    """Only the store's nudge: enough where a loop always listens (the local stack, tests)."""

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
