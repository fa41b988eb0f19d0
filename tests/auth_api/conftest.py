"""HTTP-level auth tests: the Chalice app driven through local/gateway.py, with a real slapd and a
real redis-server behind it.

``make_api(auth=..., config=..., redis=...)`` builds a config, a Services on the test Redis and the
fake clock, puts it in place of ``app._services`` and returns an ``Api`` that sends HTTP requests
and fills pools with ready VMs (dummy provider, fake clock).
"""

from __future__ import annotations

import base64
import json
import logging
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import pytest
import redis

import app as chalice_app
from chalicelib.auth.secrets import SecretResolver
from chalicelib.clock import FakeClock
from chalicelib.config import Config, build
from chalicelib.manager.reconcile import reconcile_pool
from chalicelib.observability import logger as powertools_logger
from chalicelib.services import Services
from local.gateway import Gateway
from tests.api.client import Reply, SpecOperations, load_spec
from tests.auth.slapd import SlapdServer

SPEC = SpecOperations(load_spec())
"""Every reply is checked against docs/openapi.yaml, so these tests keep the spec true too."""

POOL = "debian"
OTHER_POOL = "ubuntu"


@dataclass
class Api:
    services: Services
    clock: FakeClock
    gateway: Gateway
    replies: list[Reply] = field(default_factory=list)
    """Every reply this Api received, for the secret scan."""

    def call(self, method: str, path: str, *, headers: dict[str, str] | None = None,
             body: Any = None, client_ip: str = "192.0.2.10") -> Reply:
        raw = b"" if body is None else body if isinstance(body, bytes) else json.dumps(body).encode()
        status, out_headers, data = self.gateway(method, path, dict(headers or {}), raw, client_ip)
        reply = Reply(status, out_headers, data)
        self.replies.append(reply)
        assert out_headers.get("Content-Type") == "application/json", (method, path, out_headers)
        SPEC.check(method, path, status, reply.body)
        return reply

    def fill(self, pool: str = POOL) -> list[str]:
        """Run reconcile passes until the pool is full of ready VMs; their names."""
        pool_config = self.services.config.pool(pool)
        provider = self.services.provider(pool_config.provider)
        for _ in range(10):
            reconcile_pool(self.services.store, provider, pool_config, self.clock, self.services.config.service)
            ready = self.services.store.hostnames(pool, "ready")
            if len(ready) >= pool_config.size:
                return ready
            self.clock.advance(5)
        raise AssertionError(f"pool {pool} did not fill")

    def new_token(self, user: str, password: str, version: int = 3) -> str:
        reply = self.call("POST", f"/api/v{version}/token", headers=basic(user, password))
        assert reply.status == 200, reply.raw
        return reply.body["token"]

    def checkout(self, token: str | None = None, pool: str = POOL) -> str:
        headers = {"X-AUTH-TOKEN": token} if token else {}
        reply = self.call("POST", "/api/v3/vm", headers=headers, body={pool: 1})
        assert reply.status == 200, reply.raw
        return reply.body[pool]["hostname"].split(".")[0]


def basic(user: str, password: str) -> dict[str, str]:
    """An HTTP Basic Authorization header."""
    encoded = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {encoded}"}


def document(auth: dict[str, Any] | None, **sections: Any) -> dict[str, Any]:
    """A config document: two small dummy pools that fill at once, and the given ``:auth:``."""
    doc: dict[str, Any] = {
        "config": {"vm_lifetime": 2, "vm_lifetime_auth": 12, "max_lifetime_upper_limit": 48, "domain": "example.com"},
        "providers": {"dummy": {"provider_class": "dummy", "createvm_max_time": 0, "boot_time": 0,
                                "destroyvm_max_time": 0}},
        "pools": [
            {"name": POOL, "size": 3, "provider": "dummy", "template": "t/debian", "domain": "example.com"},
            {"name": OTHER_POOL, "size": 1, "provider": "dummy", "template": "t/ubuntu"},
        ],
    }
    if auth is not None:
        doc["auth"] = auth
    for name, value in sections.items():
        doc[name] = {**doc.get(name, {}), **value} if isinstance(value, dict) else value
    return doc


@pytest.fixture
def ldap_auth(slapd: SlapdServer) -> Callable[..., dict[str, Any]]:
    """An ``:auth:`` section for the test slapd (service-account mode unless ``direct=True``)."""

    def make(direct: bool = False, **auth_keys: Any) -> dict[str, Any]:
        ldap = slapd.ldap_config()
        if not direct:
            ldap["service_account_hash"] = {"user_dn": slapd.service_dn, "password": slapd.service_password}
        return {"provider": "ldap", "ldap": ldap, **auth_keys}

    return make


@pytest.fixture
def make_api(redis_client: redis.Redis, clock: FakeClock, monkeypatch: pytest.MonkeyPatch) -> Callable[..., Api]:
    """Build the service for a config document and serve it through the gateway."""

    def make(doc: dict[str, Any], client: redis.Redis | None = None, secrets: SecretResolver | None = None) -> Api:
        config: Config = build(doc)
        services = Services(config, client or redis_client, clock, secrets=secrets or SecretResolver())
        monkeypatch.setattr(chalice_app, "_services", services)
        return Api(services, clock, Gateway(chalice_app.app))

    return make


@pytest.fixture
def ldap_api(make_api: Callable[..., Api], ldap_auth: Callable[..., dict[str, Any]]) -> Api:
    """The service with LDAP auth (service-account mode) and a full pool."""
    api = make_api(document(ldap_auth()))
    api.fill()
    return api


class _Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def handle(self, record: logging.LogRecord) -> bool:
        # No handler filters: the scan sees what the code logs, not what RedactingFilter masks.
        self.emit(record)
        return True

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage()
        if record.exc_info:
            text += "\n" + logging.Formatter().formatException(record.exc_info)
        text += " " + json.dumps({k: str(v) for k, v in record.__dict__.items()
                                  if k not in ("msg", "args", "exc_info")})
        self.lines.append(text)


@pytest.fixture
def all_logs() -> Iterator[_Capture]:
    """Every log record of the run at DEBUG (root, chalicelib.*, the Powertools logger), message,
    traceback and extra fields, captured *before* any redacting filter runs on a handler."""
    capture = _Capture()
    root = logging.getLogger()
    targets = [root, powertools_logger._logger]
    levels = [target.level for target in targets]
    for target in targets:
        target.addHandler(capture)
        target.setLevel(logging.DEBUG)
    try:
        yield capture
    finally:
        for target, level in zip(targets, levels, strict=True):
            target.removeHandler(capture)
            target.setLevel(level)


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fake credentials and a region so boto3 never reaches real AWS (moto answers)."""
    for name, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                        "AWS_SESSION_TOKEN": "testing", "AWS_DEFAULT_REGION": "us-east-1",
                        "AWS_REGION": "us-east-1"}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
