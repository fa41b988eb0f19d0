"""A body that Python's json module reads but JSON (RFC 8259) forbids is a 400 on every route
that reads a body, and changes nothing: ``NaN``, ``Infinity``, a number too large for a float
(``1e309``, which Python reads as infinity), a name given twice in one object (Python keeps the
last value, a proxy or WAF may check the first), a body in UTF-16 or UTF-32 (which json.loads
detects and decodes), a lone surrogate escape. Before, a tag of ``NaN`` or ``1e999`` was stored as
``nan``/``inf``, a reset with ``NaN`` done, a duplicated lifetime set from its last value."""

from __future__ import annotations

import gzip
from typing import Callable

import pytest

from tests.api.test_input_bounds import EXPERIMENTAL_CONFIG
from tests.harness import Harness

ROUTES = [
    # (method, target, a valid body with {value} where a number goes)
    ("PUT", "/api/v3/vm/{running}", '{{"tags": {{"project": {value}}}}}'),
    ("PUT", "/api/v3/vm/{running}", '{{"lifetime": {value}}}'),
    ("POST", "/api/v3/vm", '{{"pool1": {value}}}'),
    ("POST", "/api/v3/ondemandvm", '{{"pool1": {value}}}'),
    ("POST", "/api/v3/config/poolsize", '{{"pool1": {value}}}'),
    ("POST", "/api/v3/config/pooltemplate", '{{"pool1": {value}}}'),
    ("POST", "/api/v3/config/clonetarget", '{{"pool1": {value}}}'),
    ("POST", "/api/v3/poolreset", '{{"pool1": {value}}}'),
]

NOT_JSON_VALUES = ["NaN", "Infinity", "-Infinity", "1e309", "-1e400", '"\\ud800"', '"x\\udc00"']

BODY_ROUTES = {(method, target) for method, target, _ in ROUTES}

VMPOOLER_UNPARSABLE = "JSON payload could not be parsed"
"""The answer of the routes that answer a bad body as vmpooler (ondemand, config, poolreset)."""


@pytest.fixture
def busy(make_stack: Callable[[str], Harness]) -> Harness:
    stack = make_stack(EXPERIMENTAL_CONFIG)
    stack.fill("pool1", "pool2")
    stack.running = stack.checkout("pool2")  # type: ignore[attr-defined]
    return stack


def _refused(stack: Harness, method: str, target: str, body: bytes, says: str) -> None:
    before = stack.redis_state()
    reply = stack.request(method, target.format(running=stack.running), body)  # type: ignore[attr-defined]
    assert reply.status == 400, reply.raw[:300]
    answer = reply.json
    assert answer["ok"] is False
    message = str(answer.get("error") or answer.get("message"))
    assert says in message or message == VMPOOLER_UNPARSABLE, answer
    assert stack.redis_state() == before, "the request changed Redis"


@pytest.mark.parametrize(("method", "target", "template"), ROUTES, ids=[f"{m} {t} {b[:12]}" for m, t, b in ROUTES])
def test_values_json_does_not_have_are_a_400_on_every_body_route(busy: Harness, method: str, target: str,
                                                                 template: str) -> None:
    for value in NOT_JSON_VALUES:
        _refused(busy, method, target, template.format(value=value).encode(), "Invalid JSON")


@pytest.mark.parametrize(("method", "target"), sorted(BODY_ROUTES))
def test_a_name_twice_in_an_object_is_a_400(busy: Harness, method: str, target: str) -> None:
    body = '{"lifetime": 3, "lifetime": 4}' if method == "PUT" else '{"pool1": 1, "pool1": 2}'
    _refused(busy, method, target, body.encode(), "given more than once")
    _refused(busy, method, target, b'{"tags": {"project": "a", "project": "b"}}', "given more than once")


@pytest.mark.parametrize(("method", "target"), sorted(BODY_ROUTES))
@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-be", "utf-32", "utf-32-le"])
def test_a_body_not_in_utf8_is_a_400(busy: Harness, method: str, target: str, encoding: str) -> None:
    body = '{"lifetime": 3}' if method == "PUT" else '{"pool1": 1}'
    _refused(busy, method, target, body.encode(encoding), "Invalid JSON")


@pytest.mark.parametrize(("method", "target"), sorted(BODY_ROUTES))
@pytest.mark.parametrize("coding", ["gzip", "deflate", "br", "identity, gzip"])
def test_a_body_sent_with_a_content_coding_is_a_415(busy: Harness, method: str, target: str, coding: str) -> None:
    """The API reads bodies as sent. Before, a gzipped body was a 400 "the body is not UTF-8
    text" (a coding it does not take, not bad JSON); now a 415 naming the header, with
    ``Accept-Encoding: identity`` (RFC 9110), and nothing changed."""
    body = '{"lifetime": 3}' if method == "PUT" else '{"pool1": 1}'
    before = busy.redis_state()
    reply = busy.request(method, target.format(running=busy.running), gzip.compress(body.encode()),  # type: ignore[attr-defined]
                         {"Content-Encoding": coding})
    assert reply.status == 415, reply.raw[:300]
    assert reply.json["ok"] is False and "Content-Encoding" in reply.json["error"], reply.json
    assert reply.headers.get("Accept-Encoding") == "identity", reply.headers
    assert busy.redis_state() == before, "the request changed Redis"


def test_a_body_sent_as_identity_is_read(busy: Harness) -> None:
    reply = busy.put(f"/api/v3/vm/{busy.running}", b'{"lifetime": 5}',  # type: ignore[attr-defined]
                     headers={"Content-Encoding": "Identity"})
    assert reply.status == 200, reply.raw[:300]
    assert busy.describe(busy.running)["lifetime"] == 5  # type: ignore[attr-defined]


def test_a_utf8_byte_order_mark_is_skipped(busy: Harness) -> None:
    """RFC 8259 lets a parser ignore one; clients written for Windows send it."""
    reply = busy.put(f"/api/v3/vm/{busy.running}", b'\xef\xbb\xbf{"lifetime": 5, "tags": {"project": "ci"}}')  # type: ignore[attr-defined]
    assert reply.status == 200, reply.raw[:300]
    described = busy.describe(busy.running)  # type: ignore[attr-defined]
    assert described["lifetime"] == 5
    assert described["tags"] == {"project": "ci"}
