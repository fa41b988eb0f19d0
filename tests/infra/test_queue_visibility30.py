"""The reconcile queue's visibility timeout against its consumer, as Lambda recommends for an SQS
event source: at least six times the function's timeout plus the event source's batching window
(a message is hidden from the poll that receives it, and the window may hold it before the
invocation starts). With the 1 s window the queue's 360 s was 1 s short of that, in the packaged
stack and in the ``chalice deploy`` path's infrastructure stack alike."""

from __future__ import annotations

import json

import pytest
from chalice.app import SQSEventConfig

import app
from infra import template
from infra.sync_config import CHALICE_DIR, RECONCILE_FUNCTION, STAGES


def consumer_settings(stage: str) -> tuple[int, int]:
    """The consumer's timeout as the stage deploys it (.chalice/config.json) and the batching
    window its event source is declared with (app.py's ``on_sqs_message``)."""
    chalice = json.loads((CHALICE_DIR / "config.json").read_text())["stages"][stage]
    timeout = chalice["lambda_functions"][RECONCILE_FUNCTION].get("lambda_timeout", chalice["lambda_timeout"])
    (source,) = [event for event in app.app.event_sources if isinstance(event, SQSEventConfig)]
    return int(timeout), int(source.maximum_batching_window_in_seconds or 0)


@pytest.mark.parametrize("infra_only", [False, True], ids=["packaged", "chalice-deploy"])
@pytest.mark.parametrize("stage", sorted(STAGES))
def test_the_queue_hides_a_message_six_consumer_timeouts_and_the_batching_window(stage: str,
                                                                                 infra_only: bool) -> None:
    timeout, window = consumer_settings(stage)
    assert window >= 1  # the window this is about (app.py): batches of 10 at 1,000 pools
    queue = template.build(STAGES[stage], infra_only=infra_only)["Resources"]["ReconcileQueue"]["Properties"]
    assert queue["VisibilityTimeout"] >= 6 * timeout + window
    # Still long enough for a message failing every delivery to reach the dead-letter queue.
    redeliveries = queue["RedrivePolicy"]["maxReceiveCount"]
    assert queue["MessageRetentionPeriod"] >= template.MAX_DELAY_SECONDS + redeliveries * queue["VisibilityTimeout"]
