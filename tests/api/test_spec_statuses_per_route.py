"""What docs/openapi.yaml declares of each route, checked against what the service answers, route
by route of the route table (a route added to ``routes.ROUTES`` is covered from the moment it
exists). Every request goes through ``Harness.request``, which fails on a status the spec does
not list for the operation, or a body its schema refuses.

- a body over 64 KiB is a 413 on every route, those that read no body too (api/routes.py
  refuses it from its length alone, as the local front does): the spec must list it everywhere;
- with ``:auth:``, a dead ``X-AUTH-TOKEN`` is a 401 on every operation the spec marks as reading
  a token (``x-auth-token``), whatever else is wrong with the request (no body, ``{}``, an
  unknown pool, VM or request id): docs/auth.md; but with ``experimental_features`` off the
  runtime config routes are a 405 first, whatever the token (they read none, as in vmpooler);
- a path parameter the spec's schema refuses is one the service refuses (400 or 404), and the
  spec's schemas are the service's own rules (pool names, snapshot ids, tokens and their ids).
"""

from __future__ import annotations

import re
from typing import Any

import pytest

from chalicelib.api.http import MAX_BODY_BYTES
from chalicelib.api.routes import ROUTES, Route
from chalicelib.auth.tokens import hash_token, token_id
from chalicelib.config import POOL_NAME_PATTERN, build
from tests.compat.pooler import pooler_document
from tests.harness import SPEC, Harness, HarnessFactory, basic, route_target

POOL = "pool1"
PARAMS = {"name": "nothing-here", "pool": POOL, "size": "8", "snapshot": "0" * 32, "token": "0" * 32,
          "section": "boot", "key": "nothing-here"}
"""A value for each path parameter of the route table, as a client would fill it in."""
DEAD_TOKEN = "0" * 32


@pytest.fixture
def pooler(make_harness: HarnessFactory) -> Harness:
    """One pool, vmpooler's ``dummy`` authentication (alice an administrator), the runtime pool
    changes enabled."""
    document = pooler_document([{"name": POOL, "size": 1}], {"example": "example.com"}, auth=True,
                               experimental_features=True)
    document["auth"]["admins"] = ["alice"]
    return make_harness(build(document), headers={"Content-Type": "application/json"})


def target(route: Route, **params: str) -> str:
    return route_target(route, {**PARAMS, **params}, "/api/v3" if route.versioned else "")


def parameter_schema(spec_path: str, method: str, name: str) -> dict[str, Any]:
    """The schema of a path parameter of an operation (declared on the path or the operation)."""
    item = SPEC.spec["paths"][spec_path]
    for parameter in [*item.get("parameters", []), *item[method.lower()].get("parameters", [])]:
        if "$ref" in parameter:
            parameter = SPEC.spec["components"]["parameters"][parameter["$ref"].rsplit("/", 1)[1]]
        if parameter["name"] == name and parameter["in"] == "path":
            schema: dict[str, Any] = parameter["schema"]
            return schema
    raise AssertionError(f"{method} {spec_path}: no path parameter {name}")


@pytest.mark.parametrize("route", ROUTES, ids=lambda route: route.name)
def test_a_body_over_64_kib_is_a_413_on_every_route_and_the_spec_lists_it(pooler: Harness, route: Route) -> None:
    oversized = b'{"pool1": "1", "padding": "' + b"x" * MAX_BODY_BYTES + b'"}'
    before = pooler.redis_state()
    reply = pooler.request(route.method, target(route), oversized)  # fails on a status the spec lacks
    assert (reply.status, reply.json) == (413, {"ok": False, "error": "Request body too large (at most 65536 bytes)"})
    assert pooler.redis_state() == before


RUNTIME_CONFIG_ROUTES = [route for route in ROUTES if route.handler.__module__ == "chalicelib.api.pool_config"]


@pytest.mark.parametrize("route", RUNTIME_CONFIG_ROUTES, ids=lambda route: route.name)
def test_a_disabled_runtime_config_route_is_a_405_whatever_the_token(make_harness: HarnessFactory,
                                                                     route: Route) -> None:
    """With ``experimental_features`` off the route is switched off: a dead, an empty, no or an
    administrator's token all get the spec's 405 (docs/auth.md, "Administrators"), and nothing
    changes."""
    document = pooler_document([{"name": POOL, "size": 1}], {"example": "example.com"}, auth=True)
    document["auth"]["admins"] = ["alice"]
    harness = make_harness(build(document), headers={"Content-Type": "application/json"})
    live = harness.new_token("alice", "any-password")
    before = harness.redis_state()
    for token in (DEAD_TOKEN, "", None, live):
        headers = {} if token is None else {"X-AUTH-TOKEN": token}
        for body in [None, {POOL: "2"}] if route.method == "POST" else [None]:
            reply = harness.request(route.method, target(route), body, headers=headers)  # fails off the spec
            assert (reply.status, reply.json) == (405, {"ok": False}), (token, body)
    assert harness.redis_state() == before


TOKEN_ROUTES = [route for route in ROUTES
                if "x-auth-token" in SPEC.operation(route.method, target(route))[1]]  # type: ignore[index]


def test_the_routes_that_read_a_token_are_the_ones_the_spec_marks() -> None:
    assert {route.name for route in TOKEN_ROUTES} >= {"checkout", "checkout_path", "modify_vm", "return_vm",
                                                       "ondemand_create", "config_poolsize", "vm_revert"}


@pytest.mark.parametrize("route", TOKEN_ROUTES, ids=lambda route: route.name)
def test_a_dead_token_is_a_401_whatever_else_is_wrong(pooler: Harness, route: Route) -> None:
    """A client holding a dead token is told so first: before, an empty ``POST /vm`` (or one naming
    no pool there is) answered 404 and the client went on sending the dead token."""
    revoked = pooler.new_token("alice", "any-password")
    pooler.delete(f"/api/v3/token/{revoked}", headers=basic("alice", "any-password"))
    bodies: list[Any] = [None, {}, {"nothing-here": 1}, b"{not json", []]
    names = ["nothing-here", POOL] if "{name}" in route.path else [PARAMS["name"]]
    before = pooler.redis_state()
    for dead in (DEAD_TOKEN, revoked, ""):
        for name in names:
            for body in bodies if route.method in ("POST", "PUT") else [None]:
                reply = pooler.request(route.method, target(route, name=name), body, headers={"X-AUTH-TOKEN": dead})
                assert reply.status == 401, (route.method, route.path, name, body, dead, reply.json)
                assert reply.headers["WWW-Authenticate"] == 'Basic realm="Authentication required"'
    assert pooler.redis_state() == before


def test_the_spec_pool_parameter_is_the_config_pool_name_rule() -> None:
    for spec_path, method in (("/config/poolsize/{pool}", "DELETE"), ("/config/pooltemplate/{pool}", "DELETE"),
                              ("/config/clonetarget/{pool}", "DELETE")):
        schema = parameter_schema(spec_path, method, "pool")
        assert schema["pattern"] == POOL_NAME_PATTERN.pattern, spec_path
        assert schema["maxLength"] == 100, spec_path


OUTSIDE = ["-pool1", "pool1!", "pool%201", "%2E%2E", "a" * 101, "pool1%E2%80%AE", "%00", "b" * 100_000]
"""Path values outside the spec's schemas for a pool name and a snapshot id."""


@pytest.mark.parametrize("route", [route for route in ROUTES if "{pool}" in route.path or "{snapshot}" in route.path],
                         ids=lambda route: route.name)
def test_a_path_value_the_spec_refuses_is_refused_and_changes_nothing(pooler: Harness, route: Route) -> None:
    pooler.fill(POOL)
    token = pooler.new_token("alice", "any-password")
    host = pooler.checkout(POOL, token)
    taken = pooler.post(f"/api/v3/vm/{host}/snapshot", headers={"X-AUTH-TOKEN": token})
    snapshot = taken.json[host]["snapshot"]
    parameter = "pool" if "{pool}" in route.path else "snapshot"
    spec_path = SPEC.operation(route.method, target(route))[0]  # type: ignore[index]
    pattern = re.compile(parameter_schema(spec_path, route.method, parameter)["pattern"])
    assert pattern.match(POOL if parameter == "pool" else snapshot), "the spec refuses what the service takes"
    before = pooler.redis_state()
    for value in [*OUTSIDE, snapshot.upper(), snapshot + "0", snapshot[:-1]]:
        reply = pooler.request(route.method, target(route, name=host, **{parameter: value}),
                               headers={"X-AUTH-TOKEN": token})
        assert reply.status in (400, 404), (value[:40], reply.json)
        assert len(reply.raw) < 300, reply.raw[:300]
        assert pooler.redis_state() == before, value[:40]


@pytest.mark.parametrize("route", [route for route in ROUTES if "{token}" in route.path], ids=lambda route: route.name)
def test_the_spec_token_parameter_is_what_the_service_takes(pooler: Harness, route: Route) -> None:
    """``GET /token/<t>`` takes a token (32 of ``[a-z0-9]``), ``DELETE`` also its listed id (or an
    unambiguous prefix of 8 or more hex digits of it): the spec's pattern says so, and any value
    it refuses (hostile ones too) is a short JSON 404 that deletes nothing."""
    token = pooler.new_token("alice", "any-password")
    listed = token_id(hash_token(token))
    spec_path = SPEC.operation(route.method, target(route))[0]  # type: ignore[index]
    pattern = re.compile(parameter_schema(spec_path, route.method, "token")["pattern"])
    served = [token, listed, listed[:8], hash_token(token)] if route.method == "DELETE" else [token]
    assert all(pattern.match(value) for value in served), "the spec refuses what the service takes"
    refused = [*OUTSIDE, token.upper(), token + "0", token[:-1] + "-", listed[:7], listed.upper(), "g" * 16,
               "0" * 65, f"{token}%0A", "%20" + token]
    if route.method == "GET":
        refused += [listed, hash_token(token)]
    headers = basic("alice", "any-password") if route.method == "DELETE" else {}
    pooler.request(route.method, target(route, token="0" * 32), headers=headers)  # the login's own writes
    before = pooler.redis_state()
    for value in refused:
        assert not pattern.match(value), value[:40]
        reply = pooler.request(route.method, target(route, token=value), headers=headers)
        assert reply.status == 404, (value[:40], reply.json)
        assert reply.json["ok"] is False and len(reply.raw) < 300, reply.raw[:300]
    assert pooler.redis_state() == before
    assert pooler.get(f"/token/{token}").status == 200  # still there
