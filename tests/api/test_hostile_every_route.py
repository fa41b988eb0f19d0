"""Hostile path and query values on every route of the route table, as an outsider sends them:
a million characters, NUL, a lone surrogate, right-to-left and combining marks, percent-encoded
slashes and dots, invalid percent escapes, Latin-1 bytes, thousands of ``+``. Each answer is JSON
(the dashboard's page aside), never a 5xx, an error never echoes the value back at length, and a
request answered with an error leaves Redis exactly as it was (every key, value and expiry).

Parametrised over ``routes.ROUTES``: a route added to the table is covered from the moment it
exists. Bodies have their own checks (tests/api/test_hostile_json.py), the local front's bounds
on targets and heads theirs (tests/local/test_malformed_http.py).
"""

from __future__ import annotations

import json

import pytest

from chalicelib.api.routes import ROUTES, Route
from chalicelib.config import build
from tests.compat.pooler import pooler_document
from tests.harness import Harness, HarnessFactory, route_target

HOSTILE = {
    "a million characters": "a" * 1_000_000,
    "NUL": "%00",
    "lone surrogate": "%ED%A0%80",
    "right-to-left override": "pool1%E2%80%AE",
    "combining mark": "pool1%CC%81",
    "encoded slashes": "..%2F..%2Fstatus",
    "encoded dots": "%2E%2E",
    "dot": ".",
    "invalid escape": "%zz",
    "Latin-1 byte": "%E9",
    "line break": "pool1%0D%0AX-Injected:%201",
    "5,000 pluses": "+" * 5000,
    "100,000 pool names": "pool1+" * 100_000,
}
QUERY_NAMES = ("view", "pool", "from", "to", "history", "hours", "user", "ondemand")
"""Every query parameter a route reads, and one none does (the value itself as its name)."""
LONGEST_ERROR = 2000
"""An error answer is at most this long: a message shows a client's value cut short."""


@pytest.fixture
def pooler(make_harness: HarnessFactory) -> Harness:
    """One pool (no VMs: hostile input needs none), vmpooler's ``dummy`` authentication, the
    runtime pool changes enabled."""
    document = pooler_document([{"name": "pool1", "size": 0}], {"example": "example.com"}, auth=True,
                               experimental_features=True)
    return make_harness(build(document), headers={"Content-Type": "application/json"})


def targets(route: Route, value: str) -> list[str]:
    """The route with ``value`` as each of its path parameters, and with harmless parameters
    (names of nothing that exists) and ``value`` in its query."""
    prefix = "/api/v3" if route.versioned else ""
    names = [part.strip("{}") for part in route.path.split("/") if part.startswith("{")]
    found = [route_target(route, dict.fromkeys(names, value), prefix)] if names else []
    query = "&".join(f"{name}={value}" for name in (*QUERY_NAMES, value))
    return [*found, route_target(route, dict.fromkeys(names, "nothing-here"), prefix) + "?" + query]


@pytest.mark.parametrize("route", ROUTES, ids=lambda route: route.name)
def test_hostile_path_and_query_values_are_refused_cleanly_and_change_nothing(pooler: Harness, route: Route) -> None:
    token = pooler.new_token("alice", "any-password")
    for headers in ({}, {"X-AUTH-TOKEN": token}):
        for label, value in HOSTILE.items():
            for target in targets(route, value):
                before = pooler.redis_state()
                status, sent_headers, raw = pooler.gateway(route.method, target, {**pooler.headers, **headers}, b"",
                                                           "192.0.2.1")
                what = f"{route.method} {target[:80]} ({label}, {'a token' if headers else 'no token'})"
                assert status < 500, (what, raw[:300])
                if route.name == "dashboard" and status == 200:
                    continue  # the page, HTML
                assert sent_headers.get("Content-Type") == "application/json", (what, sent_headers)
                answer = json.loads(raw)
                if status >= 400:
                    assert answer["ok"] is False and len(raw) <= LONGEST_ERROR, (what, raw[:300])
                    assert pooler.redis_state() == before, what
