"""HTTP-level auth tests: the Chalice app driven through local/gateway.py, with a real slapd and a
real redis-server behind it.

``make_api(document(...), client=..., secrets=...)`` builds the config document (documents.py)
into a Harness (tests/harness.py) served by the app, calling from CLIENT_IP.
"""

from __future__ import annotations

import json
import logging
import secrets
from typing import Any, Callable, Iterator

import pytest
import redis

from chalicelib.auth.secrets import SecretResolver
from chalicelib.config import build
from chalicelib.observability import logger as powertools_logger
from tests.auth.slapd import SlapdServer
from tests.auth_api.documents import CLIENT_IP, POOL, document
from tests.harness import Harness, HarnessFactory


@pytest.fixture
def ldap_auth(slapd: SlapdServer) -> Callable[..., dict[str, Any]]:
    """An ``:auth:`` section for the test slapd (service-account mode unless ``direct=True``)."""

    def make(direct: bool = False, **auth_keys: Any) -> dict[str, Any]:
        ldap = slapd.ldap_config() if direct else slapd.service_account_config()
        return {"provider": "ldap", "ldap": ldap, **auth_keys}

    return make


@pytest.fixture
def private_slapd() -> Iterator[SlapdServer]:
    """A slapd of the test's own, to stop, kill and start again."""
    with SlapdServer() as server:
        yield server


@pytest.fixture
def leaver(slapd: SlapdServer) -> Iterator[tuple[str, str]]:
    """A user of the test's own in the shared directory: (name, password); removed afterwards."""
    name, password = f"leaver{secrets.token_hex(4)}", secrets.token_urlsafe(12)
    dn = slapd.add_user(name, password)
    yield name, password
    slapd.remove(dn)


@pytest.fixture
def make_api(make_harness: HarnessFactory) -> HarnessFactory:
    """Build the service for a config document and serve it through the gateway."""

    def make(doc: dict[str, Any], client: redis.Redis | None = None, secrets: SecretResolver | None = None) -> Harness:
        return make_harness(build(doc), client, secrets=secrets or SecretResolver(), client_ip=CLIENT_IP)

    return make


@pytest.fixture
def ldap_api(make_api: HarnessFactory, ldap_auth: Callable[..., dict[str, Any]]) -> Harness:
    """The service with LDAP auth (service-account mode) and a full pool."""
    api = make_api(document(ldap_auth()))
    api.fill(POOL)
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
