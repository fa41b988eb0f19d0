"""Redis down: every route of the route table that needs Redis answers a JSON 503 to retry, never a
500; the others answer as usual.

Parametrised over ``chalicelib.api.routes.ROUTES`` (under each version prefix), so a new route is
tested here from the moment it is added; ``REQUESTS`` gives the path parameters and body that get
a route past its input checks to Redis (a route missing there is sent ``somevm`` and no body)."""

from __future__ import annotations

import base64
import json
import re
from typing import Any

import pytest

import app
from chalicelib.api.routes import ROUTES, Route, versioned_paths
from chalicelib.services import Services
from tests.harness import SPEC
from tests.support import production_client

AUTH = "\n:auth:\n  provider: dummy\n"
"""Token routes answer 404 without authentication configured: with it they reach Redis."""

CREDENTIALS = {"Authorization": "Basic " + base64.b64encode(b"alice:secret").decode()}

REQUESTS: dict[str, tuple[dict[str, str], Any]] = {
    "checkout": ({}, {"debian": 1}),
    "checkout_path": ({"name": "debian+debian"}, None),
    "modify_vm": ({}, {"lifetime": 3}),
    "summary_section": ({"section": "tag"}, None),
    "summary_key": ({"section": "tag", "key": "project"}, None),
    "token_describe": ({"token": "a" * 32}, None),
    "token_delete": ({"token": "a" * 32}, None),
    "ondemand_create": ({}, {"debian": 1}),
    "ondemand_create_path": ({"name": "debian+debian"}, None),
    "ondemand_show": ({"name": "some-request"}, None),
    "ondemand_delete": ({"name": "some-request"}, None),
    "config_poolsize": ({}, {"debian-12": 1}),
    "config_poolsize_clear": ({"pool": "debian-12"}, None),
    "config_pooltemplate": ({}, {"debian-12": "a/b"}),
    "config_pooltemplate_clear": ({"pool": "debian-12"}, None),
    "poolreset": ({}, {"debian-12": 1}),
    "vm_disk": ({"size": "8"}, None),
    "vm_revert": ({"snapshot": "abc"}, None),
}
"""route name -> (path parameters, JSON body) of a request that reaches Redis."""

WITHOUT_REDIS = {
    "list_pools": (200, "the pool names come from the configuration"),
    "root": (302, "a redirect to the dashboard"),
    "healthcheck": (200, "it says the API answers, as vmpooler's"),
    "dashboard": (200, "the page; its data comes from the stats routes"),
}
"""Routes that answer as usual without Redis: route name -> (status, why)."""


def paths_of(route: Route) -> list[str]:
    """The route's path under v3 and v1, or unversioned when it has no versions."""
    params = REQUESTS.get(route.name, ({}, None))[0]
    served = [path for path, _ in versioned_paths(route)]
    chosen = [path for path in served if path.startswith(("/api/v3", "/api/v1"))] or served
    return [re.sub(r"\{(\w+)\}", lambda found: params.get(found.group(1), "somevm"), path) for path in chosen]


CASES = [pytest.param(route, path, id=f"{route.method} {path}") for route in ROUTES for path in paths_of(route)]


@pytest.mark.parametrize(("route", "path"), CASES)
def test_redis_down_is_a_503_to_retry(make_stack, route: Route, path: str, closed_port: int) -> None:
    stack = make_stack(extra=AUTH)
    # Production's client (connect: a refused connection is tried once more, at once).
    dead = production_client(stack.services.config.redis, closed_port, socket_timeout=0.2)
    app._services = Services(stack.services.config, dead, clock=stack.clock)  # the fixture restores it
    body = REQUESTS.get(route.name, ({}, None))[1]
    data = json.dumps(body).encode() if body is not None else b""
    status, headers, payload = stack.gateway(route.method, path, {"X-AUTH-TOKEN": "a" * 32, **CREDENTIALS},
                                             data, "127.0.0.1")
    if route.name in WITHOUT_REDIS:
        assert status == WITHOUT_REDIS[route.name][0], payload[:200]
        return
    answer = json.loads(payload)
    SPEC.check(route.method, path, status, answer)  # and the answer is one docs/openapi.yaml documents
    assert status == 503, answer
    assert answer["ok"] is False and "unavailable" in answer["error"]
    assert headers.get("Retry-After") == "1"


def test_every_route_named_here_is_in_the_table() -> None:
    """A renamed route must not leave a stale entry that silently stops applying."""
    assert set(REQUESTS) | set(WITHOUT_REDIS) <= {route.name for route in ROUTES}
