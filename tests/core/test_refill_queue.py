"""The AWS refill path: the API puts a pool on the SQS queue after a checkout, and the queue's
Chalice consumer reconciles that pool at once (moto for SQS, a real Redis)."""

from __future__ import annotations

import json
import time
from types import SimpleNamespace
from typing import Iterator

import boto3
import pytest
import redis
from moto import mock_aws

import app
from chalicelib.clock import FakeClock
from chalicelib.config import parse
from chalicelib.manager.refill import SqsRefill
from chalicelib.manager.runner import run_pool
from chalicelib.services import Services
from local.gateway import Gateway

CONFIG = """
:config:
  domain: example.com
:providers:
  :dummy: {}
:pools:
  - {name: debian, size: 2, provider: dummy}
"""

LAMBDA_CONTEXT = SimpleNamespace(
    function_name="vmpool-dev-refill", memory_limit_in_mb=512, aws_request_id="test",
    invoked_function_arn="arn:aws:lambda:us-east-1:123456789012:function:vmpool-dev-refill",
)


@pytest.fixture
def services(redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch) -> Iterator[Services]:
    services = Services(parse(CONFIG), redis_client, clock=FakeClock(), prefix="refilltest:")
    monkeypatch.setattr(app, "_services", services)
    monkeypatch.setattr(app, "CONFIG", services.config)
    monkeypatch.setattr(app, "REFILL_BUDGET_SECONDS", 0)  # one pass, no waiting for the next
    yield services


def sqs_event(*bodies: str) -> dict:
    return {"Records": [
        {"messageId": str(n), "receiptHandle": "r", "body": body,
         "attributes": {"SentTimestamp": str(int(time.time() * 1000))},
         "eventSource": "aws:sqs", "eventSourceARN": "arn:aws:sqs:us-east-1:123456789012:vmpool-refill"}
        for n, body in enumerate(bodies)
    ]}


def test_a_checkout_puts_its_pool_on_the_refill_queue(services: Services, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    with mock_aws():
        sqs = boto3.client("sqs")
        queue_url = sqs.create_queue(QueueName="vmpool-refill")["QueueUrl"]
        services.refill = SqsRefill(queue_url, client_factory=lambda: sqs)
        run_pool(services, "debian", budget_seconds=0)
        services.clock.advance(1)
        run_pool(services, "debian", budget_seconds=0)
        status, _, body = Gateway(app.app)("POST", "/api/v3/vm/debian", {}, b"", "127.0.0.1")
        assert status == 200, body
        messages = sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10)["Messages"]
        assert [json.loads(m["Body"]) for m in messages] == [{"pool": "debian"}]


def test_the_queue_consumer_reconciles_the_pool_and_drops_what_is_not_ours(services: Services) -> None:
    app.refill(sqs_event('{"pool": "debian"}', "not json", '{"pool": "nosuchpool"}', "[1]"), LAMBDA_CONTEXT)
    counts = services.store.counts(["debian"])["debian"]
    assert counts["pending"] == 2  # the pool's clones, started by the consumer itself
    assert services.store.counts(["nosuchpool"])["nosuchpool"]["pending"] == 0
