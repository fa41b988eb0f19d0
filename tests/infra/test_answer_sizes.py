"""The API's largest answers at the config's most pools still fit one Lambda response.

API Gateway hands the API function's answer over as one synchronous Lambda response, at most 6 MB
(6,291,456 bytes) of JSON holding the body as an escaped string: past it Lambda fails the
invocation and API Gateway answers 502 with no JSON, in AWS only (the local front has no such
limit). The answers that grow with the pools are built here in process, from a vmpooler.yaml-style
config of 10,000 pools (tests/infra/packaged.py ``pools_config``), and measured as Lambda would
send them. Measured on 2026-12-05 (docs/deploy.md), as Lambda sends them: ``/config`` 2.8 MB,
``/status`` 1.5 MB, ``/dashboard/stats/history?hours=168`` 4.1 MB. A guard (passes on main too)."""

from __future__ import annotations

import json
from typing import Iterator

import pytest
import redis
from packaged import pools_config
from packaged_functions import Context, api_event

import app as app_module
from chalicelib.clock import FakeClock
from chalicelib.config import MAX_POOLS, parse
from chalicelib.services import Services
from local.redis_server import RedisServer

LAMBDA_RESPONSE_BYTES = 6 * 1024 * 1024


@pytest.fixture(scope="module")
def fleet() -> Iterator[Services]:
    with RedisServer() as server:
        yield from _fleet(redis.Redis(port=server.port, decode_responses=True))


def _fleet(client: redis.Redis) -> Iterator[Services]:
    """10,000 pools of one ready VM each, served by the app's API function."""
    services = Services(parse(pools_config(MAX_POOLS)), client, clock=FakeClock())
    keys = services.store.keys
    pipe = client.pipeline(transaction=False)
    for n, pool in enumerate(services.config.pool_names):
        host = f"vm{n:06d}"
        pipe.hset(keys.vm(host), mapping={"pool": pool, "state": "ready"})
        pipe.zadd(keys.pool_state(pool, "ready"), {host: 1})
    pipe.execute()
    saved = app_module._services, app_module._config
    app_module._services, app_module._config = services, None
    try:
        yield services
    finally:
        app_module._services, app_module._config = saved


@pytest.mark.parametrize("path, query", [
    ("/api/v3/config", None), ("/api/v3/status", None), ("/api/v1/status", None), ("/api/v3/vm", None),
    ("/dashboard/stats/vmpooler/pool", {"history": "true"}), ("/dashboard/stats/history", {"hours": "168"}),
])
def test_answers_at_the_most_pools_fit_one_lambda_response(fleet: Services, path: str,
                                                           query: dict[str, str] | None) -> None:
    response = app_module.app(api_event("GET", path, path, query=query), Context())
    assert response["statusCode"] == 200, response["body"][:200]
    assert len(json.dumps(response)) < LAMBDA_RESPONSE_BYTES
