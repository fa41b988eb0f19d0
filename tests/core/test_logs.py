"""Logs are JSON lines a person can search by pool, hostname and request (CloudWatch Logs
Insights): the API's checkout and return, and the manager's moves, each name their VM."""

from __future__ import annotations

import io
import json

import pytest
import redis

import app
from chalicelib.clock import FakeClock
from chalicelib.config import parse
from chalicelib.manager.reconcile import reconcile_pool
from chalicelib.services import Services
from local.gateway import Gateway
from tests.support import json_lines

CONFIG = (
    ":config:\n  domain: example.com\n:providers:\n  :dummy: {}\n"
    ":pools:\n  - {name: debian, size: 1, provider: dummy}\n"
)




def test_api_and_manager_logs_carry_pool_hostname_and_correlation_id(
        redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch, log_output: io.StringIO) -> None:
    services = Services(parse(CONFIG), redis_client, clock=FakeClock(), prefix="logtest:")
    monkeypatch.setattr(app, "_services", services)
    pool = services.config.pool("debian")
    provider = services.provider("dummy")
    reconcile_pool(services.store, provider, pool, services.clock, services.config.service)
    reconcile_pool(services.store, provider, pool, services.clock, services.config.service)
    gateway = Gateway(app.app)
    status, _, body = gateway("POST", "/api/v3/vm/debian", {}, b"", "127.0.0.1")
    assert status == 200
    hostname = json.loads(body)["debian"]["hostname"].split(".")[0]
    assert gateway("DELETE", f"/api/v3/vm/{hostname}", {}, b"", "127.0.0.1")[0] == 200

    logs = json_lines(log_output.getvalue())
    by_message = {record["message"]: record for record in logs}
    ready = by_message["VM ready"]
    assert (ready["pool"], ready["hostname"]) == ("debian", hostname)
    checked_out, returned = by_message["VM checked out"], by_message["VM returned"]
    assert (checked_out["pool"], checked_out["hostname"]) == ("debian", hostname)
    assert (returned["pool"], returned["hostname"]) == ("debian", hostname)
    # Each API request's lines carry its own request id, as API Gateway would give it.
    assert checked_out["correlation_id"] and returned["correlation_id"]
    assert checked_out["correlation_id"] != returned["correlation_id"]

