"""The deployment tests' moto server when the port it chose was taken before it bound it."""

from __future__ import annotations

import socket

import boto3
import moto_endpoint
import pytest


def test_a_moto_server_whose_port_was_taken_after_it_was_chosen_starts_on_another(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """moto's ThreadedMotoServer.start() waited for ever when its bind failed (the thread binding
    it died without a word): the deploy and package tests hung until CI's timeout."""
    with socket.socket() as taker:
        taker.bind(("127.0.0.1", 0))
        taker.listen()
        taken = taker.getsockname()[1]
        chosen = iter([taken])
        fresh = moto_endpoint.free_port
        monkeypatch.setattr(moto_endpoint, "free_port", lambda: next(chosen, 0) or fresh())
        with moto_endpoint.moto_endpoint() as url:
            assert url != f"http://127.0.0.1:{taken}"
            sqs = boto3.client("sqs", region_name="us-east-1", endpoint_url=url, aws_access_key_id="test",
                               aws_secret_access_key="test")
            assert sqs.create_queue(QueueName="answers")["QueueUrl"].endswith("/answers")
