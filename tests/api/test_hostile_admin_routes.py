"""The administrators' routes (/config/*, /poolreset) and the token and on-demand routes under
hostile paths, methods, queries, bodies and tokens, with ``:auth:`` and experimental features
on: each is a 4xx in JSON that says what was wrong (vmpooler's bare ``{"ok": false}`` where it
answers so), never a 500, and changes nothing in Redis. What an administrator's token may do
through them is in tests/ondemand/test_pool_config.py; the JSON rules of every body in
test_hostile_json.py."""

from __future__ import annotations

from typing import Any, Callable

import pytest

from tests.api.test_input_bounds import EXPERIMENTAL_CONFIG
from tests.harness import Harness, basic

AUTH_CONFIG = EXPERIMENTAL_CONFIG.replace(":pools:", ":auth:\n  provider: dummy\n  admins: [root]\n:pools:", 1)

ADMIN, USER, NONE, BASIC = "admin", "user", "none", "basic"
"""Who sends the request: an administrator's token, another user's, none, Basic credentials."""

HOSTILE_SEGMENTS = ["%00", "pool1%00", "pool1%2F..", "%2E%2E", "%C0%AF", "%ED%A0%80", "%FF", "POOL1", "linux",
                    "pool1%0A", "m" * 1_000_000]
"""Path segments naming no pool: NUL, an escaped slash, dots, overlong and broken UTF-8, another
case, an alias, a line break, a million characters."""

UNPARSABLE = "JSON payload could not be parsed"

Case = tuple[str, str, Any, str, int, str]
"""(method, target, body, who, status, text the answer must contain ("" for a bare {"ok": false}))."""

CASES: list[Case] = [
    *[("DELETE", f"/api/v3/config/{setting}/{segment}", None, ADMIN, 404, "")
      for setting in ("poolsize", "pooltemplate", "clonetarget") for segment in HOSTILE_SEGMENTS],
    *[(method, f"/api/v3/{path}", {"pool1": "1"}, ADMIN, 405, f"method {method} not allowed; use POST")
      for path in ("config/poolsize", "config/pooltemplate", "config/clonetarget", "poolreset")
      for method in ("PUT", "PATCH", "GET", "DELETE", "OPTIONS", "TRACE")],
    # the settings are in the body, not the query: no body is vmpooler's "no payload"
    ("POST", "/api/v3/config/poolsize?pool1=1", None, ADMIN, 404, ""),
    ("POST", "/api/v3/poolreset?pool1=1", None, ADMIN, 404, ""),
    ("POST", "/api/v3/config/poolsize", b"pool1=1", ADMIN, 400, UNPARSABLE),
    ("POST", "/api/v3/config/pooltemplate", b'--x\r\nContent-Disposition: form-data; name="pool1"\r\n\r\na/b\r\n--x--',
     ADMIN, 400, UNPARSABLE),
    ("POST", "/api/v3/config/poolsize", {"pool1": {"$gt": ""}}, ADMIN, 400, "not_configured"),
    ("POST", "/api/v3/config/poolsize", {"pool1": ["1"]}, ADMIN, 400, "not_configured"),
    ("POST", "/api/v3/config/pooltemplate", {"pool1": {"path": "a/b"}}, ADMIN, 400, "bad_templates"),
    ("POST", "/api/v3/config/clonetarget", {"pool1\u0000": "cluster1"}, ADMIN, 400, "bad_templates"),
    ("POST", "/api/v3/poolreset", {"pool1\u0000": "1"}, ADMIN, 400, "bad_pools"),
    ("POST", "/api/v3/poolreset", {"__proto__": "1"}, ADMIN, 400, "bad_pools"),
    ("POST", "/api/v3/poolreset", {"pool1": "1", "m" * 60_000: "1"}, ADMIN, 400, "bad_pools"),
    # who may: only an administrator's token, sent as X-AUTH-TOKEN
    ("POST", "/api/v3/config/poolsize", {"pool1": "1"}, USER, 403, "administrator"),
    ("POST", "/api/v3/poolreset", {"pool1": "1"}, USER, 403, "administrator"),
    ("DELETE", "/api/v3/config/poolsize/pool1", None, USER, 403, "administrator"),
    ("POST", "/api/v3/config/poolsize", {"pool1": "1"}, NONE, 401, "token is required"),
    ("POST", "/api/v3/config/poolsize", {"pool1": "1"}, BASIC, 401, "token is required"),
    ("POST", "/api/v3/config/pooltemplate", {"pool1": "a/b"}, "token\x00", 401, "invalid or expired token"),
    ("POST", "/api/v3/poolreset", {"pool1": "1"}, "t" * 100_000, 401, "invalid or expired token"),
    # paths that only look like the routes
    ("POST", "/api/v3/config%2Fpoolsize", {"pool1": "1"}, ADMIN, 404, ""),
    ("POST", "/api/v3/config/poolsize%00", {"pool1": "1"}, ADMIN, 404, ""),
    ("POST", "/api/v3/config/../config/poolsize", {"pool1": "1"}, ADMIN, 404, ""),
    ("POST", "/API/V3/config/poolsize", {"pool1": "1"}, ADMIN, 404, ""),
    ("POST", "/api/v3/poolreset/pool1", None, ADMIN, 404, ""),
    ("GET", "/api/v3/config/%00", None, ADMIN, 404, ""),
    # on-demand requests and tokens named by hostile ids
    *[("GET", f"/api/v3/ondemandvm/{segment}", None, ADMIN, 404, "no request found")
      for segment in HOSTILE_SEGMENTS],
    *[("DELETE", f"/api/v3/ondemandvm/{segment}", None, ADMIN, 404, "no request found")
      for segment in HOSTILE_SEGMENTS],
    *[("DELETE", f"/api/v3/token/{segment}", None, BASIC, 404, "unknown or expired token")
      for segment in HOSTILE_SEGMENTS],
    ("POST", "/api/v3/ondemandvm", {"pool1": 1, "request_id": "a/b"}, ADMIN, 400, "request_id must be"),
    ("POST", "/api/v3/ondemandvm", {"pool1": 1, "request_id": "r" * 1000}, ADMIN, 400, "request_id must be"),
    ("POST", "/api/v3/ondemandvm", {"pool1": 1, "request_id": "\u0000"}, ADMIN, 400, "request_id must be"),
    ("POST", "/api/v3/ondemandvm/%00", None, ADMIN, 400, "Invalid pool name"),
]


def _case_id(case: Case) -> str:
    method, target, body, who, status, _ = case
    return f"{method} {target[:50]} {repr(body)[:30]} {who[:8]} -> {status}"


@pytest.fixture
def admin_stack(make_stack: Callable[[str], Harness]) -> Harness:
    """pool1 and pool2 full, one pool2 VM checked out; tokens of root (an administrator) and bob."""
    stack = make_stack(AUTH_CONFIG)
    stack.fill("pool1", "pool2")
    stack.tokens = {ADMIN: stack.new_token("root", "root-pw"), USER: stack.new_token("bob", "bob-pw")}  # type: ignore[attr-defined]
    stack.checkout("pool2", stack.tokens[USER])  # type: ignore[attr-defined]
    return stack


def _headers(stack: Harness, who: str) -> dict[str, str]:
    tokens: dict[str, str] = stack.tokens  # type: ignore[attr-defined]
    if who in tokens:
        return {"X-AUTH-TOKEN": tokens[who]}
    if who == BASIC:
        return basic("root", "root-pw")
    return {} if who == NONE else {"X-AUTH-TOKEN": who}


@pytest.mark.parametrize("case", CASES, ids=[_case_id(c) for c in CASES])
def test_hostile_admin_requests_are_json_4xx_and_change_nothing(admin_stack: Harness, case: Case) -> None:
    method, target, body, who, status, text = case
    before = admin_stack.redis_state()
    reply = admin_stack.request(method, target, body, headers=_headers(admin_stack, who))
    assert reply.status == status, reply.raw[:300]
    answer = reply.json
    assert answer["ok"] is False
    if text:
        assert text in reply.raw.decode(), answer
    else:
        assert answer == {"ok": False}
    assert len(reply.raw) < 70_000, "the answer echoes more than the body sent"
    assert admin_stack.redis_state() == before, "the request changed Redis"
