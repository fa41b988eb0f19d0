"""An in-process API client for the real Chalice app, and the state it runs against.

Requests go through ``local.gateway.Gateway`` (route matching, API Gateway proxy events, the
Chalice app, our handlers) with no socket. Every answer to a route the spec documents is checked
against ``docs/openapi.yaml``: the status must be listed for that operation and the JSON body must
match its schema, so any test that calls the API also keeps the spec true.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import redis
import yaml
from openapi_schema_validator import OAS30Validator

import app
from chalicelib.clock import FakeClock
from chalicelib.config import Config
from chalicelib.manager.reconcile import reconcile_pool
from chalicelib.services import Services
from local.gateway import Gateway

SPEC_PATH = Path(__file__).resolve().parents[2] / "docs" / "openapi.yaml"
VERSION_PREFIX = re.compile(r"^/api/v[123](?=/)")

PROVIDER_PASSWORD = "provider-secret-7Qz"
REDIS_PASSWORD = "redis-secret-4Kw"
LDAP_PASSWORD = "ldap-secret-9Xv"

CONFIG_YAML = f"""
:config:
  domain: example.com
  vm_lifetime: 2
  max_lifetime_upper_limit: 168
  allowed_tags: [project, owner, created_by, url]
:redis:
  server: 127.0.0.1
  password: {REDIS_PASSWORD}
:providers:
  :dummy:
    provider_class: dummy
    username: admin
    password: {PROVIDER_PASSWORD}
    createvm_max_time: 0
    boot_time: 0
:dns_configs:
  :three:
    dns_class: dynamic
    domain: three.example.com
:tagfilter:
  url: '(.*)\\/'
:pools:
  - name: pool1
    alias: [linux]
    template: templates/pool1
    size: 2
    provider: dummy
    domain: one.example.com
  - name: pool2
    alias: [linux, two]
    template: templates/pool2
    size: 2
    provider: dummy
  - name: pool3
    template: templates/pool3
    size: 1
    provider: dummy
    dns_plugin: three
"""
"""pool1 has its own domain, pool2 takes the global one, pool3 its dns_config's; ``linux``
aliases pool1 and pool2. Passwords are planted so tests can prove no answer shows them."""


def load_spec() -> dict[str, Any]:
    return yaml.safe_load(SPEC_PATH.read_text())


def spec_template(path: str) -> str:
    """A path with its parameter names erased, so /vm/{name} and /vm/{hostname} compare equal."""
    return re.sub(r"{[^}]+}", "{}", path)


def _resolve(node: Any, spec: Mapping[str, Any]) -> Any:
    """The node with every local ``$ref`` replaced by its target (the spec has no cycles)."""
    if isinstance(node, dict):
        if "$ref" in node:
            target: Any = spec
            for part in node["$ref"].lstrip("#/").split("/"):
                target = target[part]
            return _resolve(target, spec)
        return {key: _resolve(value, spec) for key, value in node.items()}
    if isinstance(node, list):
        return [_resolve(item, spec) for item in node]
    return node


class SpecOperations:
    """Finds the operation of ``docs/openapi.yaml`` that a concrete request path belongs to."""

    def __init__(self, spec: Mapping[str, Any]) -> None:
        self.spec = spec
        self._patterns = []
        for path in spec["paths"]:
            regex = "^" + re.sub(r"\\{[^}]+\\}", "[^/]+", re.escape(path)) + "/?$"
            literals = len(re.sub(r"{[^}]+}", "", path))
            self._patterns.append((literals, path, re.compile(regex)))
        # Literal segments win over parameters, as in the gateway (/summary/boot vs /summary/{x}).
        self._patterns.sort(key=lambda entry: -entry[0])

    def operation(self, method: str, target: str) -> tuple[str, dict[str, Any]] | None:
        full_path = target.split("?", 1)[0]
        path = VERSION_PREFIX.sub("", full_path)
        for _, spec_path, pattern in self._patterns:
            if pattern.match(path):
                operation = self.spec["paths"][spec_path].get(method.lower())
                if operation is None or (path == full_path and not operation.get("x-unversioned")):
                    return None  # not served without a version prefix
                if path != full_path and operation.get("x-unversioned-only"):
                    return None  # not served with one
                return spec_path, operation
        return None

    def check(self, method: str, target: str, status: int, body: Any) -> None:
        """Fail unless ``status`` is documented for the operation and ``body`` fits its schema."""
        found = self.operation(method, target)
        if found is None:
            return  # an unknown route or method: the gateway's own 404/405
        spec_path, operation = found
        responses = operation["responses"]
        assert str(status) in responses, f"{method} {spec_path}: status {status} is not in the spec"
        content = _resolve(responses[str(status)], self.spec).get("content", {})
        schema = content.get("application/json", {}).get("schema")
        assert schema is not None, f"{method} {spec_path} {status}: no JSON schema in the spec"
        OAS30Validator(_resolve(schema, self.spec)).validate(body)


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    raw: bytes

    @property
    def json(self) -> Any:
        return json.loads(self.raw)

    body = json


class ApiClient:
    """Calls the Chalice app in-process, as an HTTP client would, and checks replies against
    the spec."""

    def __init__(self, operations: SpecOperations) -> None:
        self.gateway = Gateway(app.app)
        self.operations = operations

    def request(self, method: str, target: str, body: Any = None, headers: Mapping[str, str] | None = None) -> Reply:
        """``body``: bytes or str as sent, anything else as JSON, None for no body."""
        if body is None:
            data = b""
        elif isinstance(body, bytes):
            data = body
        elif isinstance(body, str):
            data = body.encode()
        else:
            data = json.dumps(body).encode()
        sent = {"Content-Type": "application/json", **(headers or {})}
        status, out_headers, raw = self.gateway(method, target, sent, data, "127.0.0.1")
        reply = Reply(status, out_headers, raw)
        assert out_headers.get("Content-Type") == "application/json", f"{method} {target}: {out_headers}"
        self.operations.check(method, target, status, reply.json)
        return reply

    def get(self, target: str, **kwargs: Any) -> Reply:
        return self.request("GET", target, **kwargs)

    def post(self, target: str, body: Any = None, **kwargs: Any) -> Reply:
        return self.request("POST", target, body, **kwargs)

    def put(self, target: str, body: Any = None, **kwargs: Any) -> Reply:
        return self.request("PUT", target, body, **kwargs)

    def delete(self, target: str, **kwargs: Any) -> Reply:
        return self.request("DELETE", target, **kwargs)


def redis_state(client: redis.Redis) -> dict[str, Any]:
    """Every key with its type, value and whether it expires: compare two to prove nothing changed."""
    state: dict[str, Any] = {}
    for key in sorted(client.keys("*")):
        kind = client.type(key)
        if kind == "string":
            value: Any = client.get(key)
        elif kind == "hash":
            value = client.hgetall(key)
        elif kind == "zset":
            value = client.zrange(key, 0, -1, withscores=True)
        elif kind == "set":
            value = sorted(client.smembers(key))
        elif kind == "list":
            value = client.lrange(key, 0, -1)
        else:
            value = None
        state[key] = (kind, value, client.ttl(key) > 0)
    return state


class Stack:
    """The services the app runs on in a test, and helpers to put VMs in known states."""

    def __init__(self, config: Config, client: redis.Redis, clock: FakeClock, api: ApiClient) -> None:
        self.config = config
        self.client = client
        self.clock = clock
        self.api = api
        self.services = Services(config, client, clock=clock, prefix="vmpool:")

    def fill(self, *pools: str) -> None:
        """Run reconcile passes (the dummy clones and boots at once) until the pools are full."""
        chosen = [p for p in self.config.pools if not pools or p.name in pools]
        for _ in range(6):
            for pool in chosen:
                provider = self.services.provider(pool.provider)
                reconcile_pool(self.services.store, provider, pool, self.clock, self.config.service)
            counts = self.services.store.counts(p.name for p in chosen)
            if all(counts[p.name]["ready"] >= p.size for p in chosen):
                return
            self.clock.advance(1)
        raise AssertionError(f"pools did not fill: {counts}")

    def ready(self, pool: str) -> list[str]:
        return self.services.store.hostnames(pool, "ready")

    def state(self) -> dict[str, Any]:
        return redis_state(self.client)

    def checkout(self, pool: str) -> str:
        """Check one VM out through the API; its short hostname."""
        reply = self.api.post(f"/api/v1/vm/{pool}")
        assert reply.status == 200, reply.json
        return reply.json[pool]["hostname"]
