"""Redis down: every new route answers a JSON 503 to retry, never a 500."""

from __future__ import annotations

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

import app
from chalicelib.services import Services
from tests.support import free_port


@pytest.mark.parametrize("method, path, body", [
    ("POST", "/api/v3/ondemandvm", {"debian": 1}),
    ("POST", "/api/v3/ondemandvm/debian+debian", None),
    ("GET", "/api/v3/ondemandvm/some-request", None),
    ("DELETE", "/api/v3/ondemandvm/some-request", None),
    ("POST", "/api/v3/config/poolsize", {"debian-12": 1}),
    ("DELETE", "/api/v3/config/poolsize/debian-12", None),
    ("POST", "/api/v3/config/pooltemplate", {"debian-12": "a/b"}),
    ("DELETE", "/api/v3/config/pooltemplate/debian-12", None),
    ("POST", "/api/v3/poolreset", {"debian-12": 1}),
    ("GET", "/api/v3/config", None),
    ("POST", "/api/v1/vm/somevm/disk/8", None),
    ("POST", "/api/v3/vm/somevm/snapshot", None),
    ("POST", "/api/v3/vm/somevm/snapshot/abc", None),
])
def test_redis_down_is_a_503_to_retry(make_stack, method, path, body):
    stack = make_stack()
    dead = redis.Redis(port=free_port(), socket_connect_timeout=0.2, decode_responses=True,
                       retry=Retry(NoBackoff(), 0))
    app._services = Services(stack.services.config, dead, clock=stack.clock)  # the fixture restores it
    status, answer = stack.call(method, path, body)
    assert status == 503
    assert answer["ok"] is False and "unavailable" in answer["error"]
