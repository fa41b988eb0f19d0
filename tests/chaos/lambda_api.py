"""The API function as AWS Lambda runs it against a Redis pair, for the failover tests: the
function's Services on the pair's endpoint, waiting for a replica as in AWS, and a call of it as
API Gateway makes one."""

from __future__ import annotations

import json
from typing import Any

import pytest

import app
from chalicelib.services import Services
from tests.core.test_reconcile_queue import Context, RecordingQueue
from tests.infra.packaged_functions import api_event
from tests.redis_pair import RedisPair


def serve(services: Services, monkeypatch: pytest.MonkeyPatch) -> Services:
    """Make ``services`` what the API function serves with (its queue recorded, not sent)."""
    monkeypatch.setattr(app, "_services", services)
    monkeypatch.setattr(app, "_config", None)
    monkeypatch.setattr(app, "_queue", RecordingQueue())
    return services


def serving(pair: RedisPair, monkeypatch: pytest.MonkeyPatch, config: str) -> Services:
    """The API function on the pair's endpoint with ``config``, waiting for a replica as in AWS."""
    return serve(Services.from_environment({"VMPOOL_CONFIG": config, "VMPOOL_REDIS_URL": pair.endpoint.url,
                                            "VMPOOL_REDIS_MIN_REPLICA_ACKS": "1",
                                            "POWERTOOLS_METRICS_DISABLED": "true"}), monkeypatch)


def call(method: str, resource: str, path: str, params: dict[str, str] | None = None, body: Any = None,
         headers: dict[str, str] | None = None) -> tuple[int, Any]:
    """One request to the API function: its status and JSON answer (None for an empty body)."""
    answer = app.app(api_event(method, resource, path, params=params,
                               body=json.dumps(body) if body is not None else None,
                               headers={"Content-Type": "application/json", **(headers or {})}), Context())
    return answer["statusCode"], json.loads(answer["body"]) if answer["body"] else None
