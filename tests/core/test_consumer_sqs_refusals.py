"""The reconcile consumer when SQS will not take what a pass queues next (its follow-up, its
retry): throttled, timing out, refusing. The pass ran: its message is done, the refusal is said
as SQS's (a warning, ``AwsCallFailures``), not as a pool the consumer could not reconcile, and
the follow-up's mark is freed so the next pass queues one once SQS takes it again."""

from __future__ import annotations

from typing import Any

import pytest

import app
from chalicelib.manager.pool_queue import FOLLOWUP, PoolMessage, QueueRefused
from chalicelib.services import Services
from tests.core.test_reconcile_queue import queue, services
from tests.support import Context, RecordingQueue, counts_by_reason, emf_documents, emitted, sqs_event

__all__ = ["queue", "services"]  # fixtures


class RefusingQueue(RecordingQueue):
    """SQS throttling every send while ``refusing``."""

    def __init__(self) -> None:
        super().__init__()
        self.refusing = True

    def send(self, messages: list[tuple[PoolMessage, float]], budget_seconds: float | None = None) -> None:
        if self.refusing:
            raise QueueRefused([(message.pool, "ThrottlingException") for message, _ in messages])
        super().send(messages, budget_seconds)


def test_a_pass_whose_follow_up_sqs_refuses_is_done_and_the_next_pass_queues_it(
        services: Services, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
        caplog: pytest.LogCaptureFixture) -> None:
    refusing = RefusingQueue()
    monkeypatch.setattr(app, "_queue", refusing)

    answer = app.reconcile(sqs_event('{"pool": "debian", "reason": "tick"}'), Context())

    # Before: the message failed (SQS delivered it again 6 minutes on, and to the DLQ after 5),
    # logged as a bug with a traceback and counted as ReconcileErrors{reason=unexpected}.
    assert answer == {"batchItemFailures": []}
    assert services.store.counts(["debian"])["debian"]["pending"] == 2  # the pass ran
    documents = emf_documents(capsys.readouterr().out)
    assert "unexpected" not in counts_by_reason(documents, "ReconcileErrors")
    assert emitted(documents)[("AwsCallFailures", ("service",))] == [1.0]
    [warning] = [record for record in caplog.records if record.levelname != "INFO"]
    assert (warning.levelname, vars(warning)["pool"], vars(warning)["codes"]) == (
        "WARNING", "debian", ["ThrottlingException"])
    assert "not queued" in warning.getMessage()

    # SQS takes messages again: the next pass queues the follow-up. Before, the mark of the one
    # never queued kept every pass from queuing one until it expired (the check delay + 30 s).
    refusing.refusing = False
    assert app.reconcile(sqs_event('{"pool": "debian", "reason": "nudge"}'), Context()) == {"batchItemFailures": []}
    assert [(message.pool, message.reason) for message, _ in refusing.sent] == [("debian", FOLLOWUP)]


def test_a_retry_sqs_refuses_after_a_failed_pass_is_said_as_sqs_refusing_it(
        services: Services, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    from chalicelib.providers.base import ProviderError

    refusing = RefusingQueue()
    monkeypatch.setattr(app, "_queue", refusing)
    provider = services.provider("dummy")

    def down(*args: Any, **kwargs: Any) -> Any:
        raise ProviderError("vCenter: connection refused")

    monkeypatch.setattr(provider, "list_vms", down)
    monkeypatch.setattr(provider, "find_vms", down)

    assert app.reconcile(sqs_event('{"pool": "debian"}'), Context()) == {"batchItemFailures": []}
    assert not [record for record in caplog.records if record.levelname == "ERROR"]
    [refused] = [record for record in caplog.records if "not queued" in record.getMessage()]
    assert vars(refused)["reason"] == "retry"
