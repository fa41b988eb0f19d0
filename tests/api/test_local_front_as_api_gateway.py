"""The local front (``make run``: local/gateway.py's ASGI app, as uvicorn hands it a request) and
API Gateway (a REST API's Lambda proxy event, built by hand as AWS delivers it) give the app the
same request, so the same request answers alike on both.

What API Gateway delivers is taken from AWS's documented event format and from a live capture of
a REST API's event (hotsock/voker, vokerhttp/testdata/apigwv1-request.json, us-west-2, July 2026):
the path and its parameters as sent, percent-escapes and all (``/capture/space%20value``); the
query decoded (``a+b`` is ``a b``, ``a%2Bb`` is ``a+b``, ``empty=`` is ``""``), a repeated name
every value in ``multiValueQueryStringParameters`` and its last in ``queryStringParameters``; a
repeated header its last value in ``headers`` and every value in ``multiValueHeaders``; the
stage in ``requestContext.path`` only."""

from __future__ import annotations

import asyncio
import base64
import json
from typing import Any, Iterator
from urllib.parse import quote

import pytest
import redis
from chalice import Chalice, Response

import app
from chalicelib.api.chalice_app import RequestLocalChalice
from local.gateway import AsgiApp
from local.redis_server import RedisServer
from tests.harness import Harness
from tests.infra.packaged_functions import Context

STAGE = "/api"
"""The stage every deployed API has (infra/sync_config.py): in the URL and in
``requestContext.path``, never in the event's ``path``."""

BINARY_TYPES = frozenset(Chalice("binary").api.binary_types)
"""The API's binary media types (Chalice's, deployed with it): a body of one of these types is
base64 in the event, any other body text."""


def through_front(asgi: AsgiApp, method: str, target: str, headers: list[tuple[str, str]],
                  body: bytes = b"") -> tuple[int, dict[str, str], bytes]:
    """The local front's answer to a request as uvicorn hands it over: the target's bytes as
    sent, header names lower-cased, a header sent twice twice."""
    path, _, query = target.partition("?")
    scope = {"type": "http", "method": method, "path": path, "raw_path": path.encode(),
             "query_string": query.encode(), "client": ("10.0.0.1", 40000),
             "headers": [(name.lower().encode(), value.encode()) for name, value in
                         [*headers, *([("content-length", str(len(body)))] if body else [])]]}
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    asyncio.run(asgi(scope, receive, send))
    start, answer = sent
    out = {name.decode().lower(): value.decode() for name, value in start["headers"]}
    return start["status"], out, answer["body"]


def api_gateway_event(method: str, resource: str, path: str, *, params: dict[str, str] | None = None,
                      query: dict[str, list[str]] | None = None, headers: list[tuple[str, str]] = (),
                      body: bytes = b"") -> dict[str, Any]:
    """A REST API's proxy event as AWS delivers it. ``path`` and ``params`` as sent (not decoded),
    ``query`` as API Gateway decodes it, ``headers`` in the order and spelling sent."""
    multi_headers: dict[str, list[str]] = {}
    for name, value in headers:
        multi_headers.setdefault(name, []).append(value)
    content_type = next((value for name, value in headers if name.lower() == "content-type"), "")
    binary = content_type in BINARY_TYPES
    return {
        "resource": resource, "path": path, "httpMethod": method,
        "headers": {name: values[-1] for name, values in multi_headers.items()} or None,
        "multiValueHeaders": multi_headers or None,
        "queryStringParameters": {name: values[-1] for name, values in query.items()} if query else None,
        "multiValueQueryStringParameters": query or None,
        "pathParameters": params, "stageVariables": None,
        "requestContext": {"resourcePath": resource, "httpMethod": method, "path": STAGE + path,
                           "stage": STAGE.strip("/"), "requestId": "c0ffee00-0000-4000-8000-000000000000",
                           "identity": {"sourceIp": "10.0.0.1"}},
        "body": (base64.b64encode(body).decode() if binary else body.decode("utf-8", "replace")) if body else None,
        "isBase64Encoded": bool(body) and binary,
    }


def through_api_gateway(event: dict[str, Any]) -> tuple[int, bytes]:
    answer = app.app(event, Context())
    body = answer.get("body") or ""
    return answer["statusCode"], base64.b64decode(body) if answer.get("isBase64Encoded") else body.encode()


def answered_alike(raw: redis.Redis, method: str, target: str, event: dict[str, Any],
                   headers: list[tuple[str, str]] = (), body: bytes = b"") -> tuple[int, Any]:
    """The status and JSON body both give ``target`` (and ``event``, the same request as API
    Gateway hands it over), asserted equal. Redis is put back between the two: each sees the
    request on the same state (a checkout takes its VM once)."""
    saved = snapshot(raw)
    status, _, local_body = through_front(AsgiApp(app.app), method, target, list(headers), body)
    local = (status, json.loads(local_body))
    restore(raw, saved)
    status, aws_body = through_api_gateway(event)
    aws = (status, json.loads(aws_body))
    assert local == aws, f"{method} {target}: local front {local}, API Gateway {aws}"
    return local


@pytest.fixture
def raw_redis(redis_server: RedisServer) -> Iterator[redis.Redis]:
    """The test Redis read as bytes (DUMP's payloads are no text)."""
    client = redis.Redis(port=redis_server.port)
    yield client
    client.close()


def snapshot(client: redis.Redis) -> dict[bytes, tuple[bytes, int]]:
    return {key: (client.dump(key), client.pttl(key)) for key in client.scan_iter()}


def restore(client: redis.Redis, saved: dict[bytes, tuple[bytes, int]]) -> None:
    client.flushdb()
    for key, (dumped, ttl) in saved.items():
        client.restore(key, max(ttl, 0), dumped)


SUMMARY = "/api/v3/summary"


@pytest.mark.parametrize("query, decoded", [
    ("from=2026+12", {"from": ["2026 12"]}),  # "+" is a space
    ("from=2026%2B12", {"from": ["2026+12"]}),  # "%2B" a "+"
    ("from=2026%2012", {"from": ["2026 12"]}),
    ("from=first&from=second", {"from": ["first", "second"]}),  # the last value is the one read
    ("from=&to=", {"from": [""], "to": [""]}),  # empty: today
    ("from&to", {"from": [""], "to": [""]}),
    ("from=%C3%A9t%C3%A9", {"from": ["\u00e9t\u00e9"]}),  # UTF-8
    ("from=%FF", {"from": ["\ufffd"]}),  # not UTF-8: U+FFFD (API Gateway's decoder; not seen live)
], ids=["plus", "encoded-plus", "encoded-space", "repeated", "empty", "no-equals", "utf8", "not-utf8"])
def test_a_query_is_read_alike(
        full: Harness, raw_redis: redis.Redis, query: str, decoded: dict[str, list[str]]) -> None:
    status, answer = answered_alike(raw_redis, "GET", f"{SUMMARY}?{query}",
                                    api_gateway_event("GET", SUMMARY, SUMMARY, query=decoded))
    assert status in (200, 400), answer


@pytest.mark.parametrize("target", [
    *(f"{SUMMARY}?{query}" for query in ["from=%", "from=%zz", "from=100%", "from=%2", "a%%=1"]),
    "/api/v3/no-such-route?from=%zz", "/api/v3/no-such-route%zz", "/api/v3/vm/a%2", "/api/v3/vm/100%",
    "/api/v3/%/status",
], ids=["lone", "not-hex", "trailing", "one-digit", "in-a-name", "unknown-route-query", "unknown-route-path",
        "path-parameter", "path-parameter-trailing", "path-segment"])
def test_a_url_with_a_malformed_escape_is_a_400_as_api_gateway_answers_it(full: Harness, target: str) -> None:
    """API Gateway refuses such a URL itself (400), before routing: the Lambda never sees it. The
    local front read ``%zz`` in a query as the text ``%zz`` and served the request, answered a
    path no route has 404, and handed a path parameter (``a%2``) to the app."""
    for method in ("GET", "POST"):
        status, headers, body = through_front(AsgiApp(app.app), method, target, [])
        assert status == 400 and headers["content-type"] == "application/json", body
        answer = json.loads(body)
        assert answer["ok"] is False and "%25" in answer["error"], answer


@pytest.mark.parametrize("method, path, name", [
    ("GET", "/api/v3/status", "view"), ("GET", "/api/v1/poolstat", "pool"), ("GET", SUMMARY, "to"),
    ("GET", "/dashboard/stats/vmpooler/pool", "history"), ("GET", "/dashboard/stats/history", "hours"),
    ("POST", "/api/v3/vm/pool1", "ondemand"),
], ids=["status-view", "poolstat-pool", "summary-to", "history-flag", "history-hours", "checkout-ondemand"])
@pytest.mark.parametrize("escaped", ["%FF", "%C0%AF", "%E2%82", "%ED%A0%80"],
                         ids=["not-utf8", "overlong-slash", "cut-short", "surrogate"])
def test_a_query_value_that_is_not_utf8_is_read_alike_on_every_route_reading_one(
        full: Harness, raw_redis: redis.Redis, method: str, path: str, name: str, escaped: str) -> None:
    """Escapes that decode to no UTF-8 (a lone byte, an overlong ``/``, a sequence cut short, half
    a surrogate pair) are U+FFFD per bad sequence on both, as Python's and API Gateway's decoders
    read them: the app answers them as the value they make (never a 500); an overlong ``%C0%AF``
    is no ``/``."""
    query = {name: [bytes.fromhex(escaped.replace("%", "")).decode("utf-8", "replace")]}
    event = (api_gateway_event(method, "/api/v3/vm/{name}", path, params={"name": "pool1"}, query=query)
             if method == "POST" else api_gateway_event(method, path, path, query=query))
    status, answer = answered_alike(raw_redis, method, f"{path}?{name}={escaped}", event)
    assert status < 500, answer


def test_a_query_that_is_not_utf8_on_an_unknown_route_is_a_404(full: Harness) -> None:
    """Refused for its path, as API Gateway routes before the function reads any query."""
    status, _, body = through_front(AsgiApp(app.app), "GET", "/api/v3/no-such-route?view=%FF%C0%AF", [])
    assert (status, json.loads(body)) == (404, {"ok": False})


def test_a_percent_escaped_path_parameter_is_read_alike(full: Harness, raw_redis: redis.Redis) -> None:
    """API Gateway hands the app a path parameter as sent (``%2D``, not ``-``); the local front
    decoded it. ``GET /vm/<host>`` with an escaped letter (a client quoting every path segment)
    found the VM locally and was a 400 in AWS; vmpooler decoded it. Both find it now."""
    host = full.ready("pool1")[0]
    escaped = "".join(f"%{ord(c):02X}" if c == "-" or i == 0 else c for i, c in enumerate(host))
    path = f"/api/v3/vm/{escaped}"
    status, answer = answered_alike(raw_redis, "GET", path, api_gateway_event(
        "GET", "/api/v3/vm/{name}", path, params={"name": escaped}))
    assert status == 200 and host in answer, answer


def test_pools_joined_by_an_escaped_plus_in_the_path_are_checked_out_alike(
        full: Harness, raw_redis: redis.Redis) -> None:
    """``POST /vm/pool1%2Bpool2`` (a client that quotes the path: Python's ``quote(s, safe="")``)
    is vmpooler's ``pool1+pool2``: one VM of each, locally and in AWS."""
    path = "/api/v3/vm/" + quote("pool1+pool2", safe="")
    status, answer = answered_alike(raw_redis, "POST", path, api_gateway_event(
        "POST", "/api/v3/vm/{name}", path, params={"name": quote("pool1+pool2", safe="")}))
    assert status == 200 and {"pool1", "pool2"} <= set(answer), answer


@pytest.mark.parametrize("segment", ["a%2Fb", "a%25b", "%FF%FE", "a+b"],
                         ids=["encoded-slash", "encoded-percent", "not-utf8", "plus"])
def test_a_path_segment_with_escapes_is_one_segment_answered_alike(
        full: Harness, raw_redis: redis.Redis, segment: str) -> None:
    """``%2F`` does not split the segment (API Gateway routes the path as sent); the hostname it
    decodes to is refused alike."""
    path = f"/api/v3/vm/{segment}"
    status, answer = answered_alike(raw_redis, "GET", path, api_gateway_event(
        "GET", "/api/v3/vm/{name}", path, params={"name": segment}))
    assert status == 400, answer


def test_repeated_and_mixed_case_headers_are_read_alike(full: Harness, raw_redis: redis.Redis) -> None:
    """Headers sent twice, in two spellings (API Gateway keeps the spelling; uvicorn lower-cases):
    a checkout answered alike."""
    path = "/api/v3/vm/pool1"
    headers = [("Content-Encoding", "identity"), ("content-encoding", "identity"), ("Accept", "*/*"),
               ("ACCEPT", "application/json"), ("X-Forwarded-For", "10.9.9.9"), ("x-forwarded-for", "10.8.8.8")]
    status, answer = answered_alike(raw_redis, "POST", path, api_gateway_event(
        "POST", "/api/v3/vm/{name}", path, params={"name": "pool1"}, headers=headers), headers)
    assert status == 200 and "pool1" in answer, answer


@pytest.mark.parametrize("content_type", [None, "application/json", "application/x-www-form-urlencoded",
                                          "application/octet-stream"],
                         ids=["none", "json", "curl-d", "binary"])
def test_a_checkout_body_is_read_alike_whatever_its_content_type(
        full: Harness, raw_redis: redis.Redis, content_type: str | None) -> None:
    """A body without Content-Type (API Gateway: text), curl -d's form type (text) and a binary
    media type (base64 in the event) are the same JSON to the app."""
    body = json.dumps({"pool1": 1}).encode()
    headers = [("Content-Type", content_type)] if content_type else []
    path = "/api/v3/vm"
    status, answer = answered_alike(raw_redis, "POST", path, api_gateway_event("POST", path, path, headers=headers,
                                                                          body=body), headers, body)
    assert status == 200 and "pool1" in answer, answer


@pytest.mark.parametrize("content_type", [None, "application/json", "application/json; charset=iso-8859-1"],
                         ids=["none", "json", "json-latin1"])
def test_a_body_that_is_not_utf8_is_read_alike(
        full: Harness, raw_redis: redis.Redis, content_type: str | None) -> None:
    """A Latin-1 tag (``caf\xe9``, from a client that does not write UTF-8) sent with a text type:
    API Gateway hands the body over as text, the bad byte U+FFFD, and the app read it as a value
    (a tag's 400 here; a clone target named U+FFFD was set); the local front sent every body
    base64, so the app read the bytes and answered another 400. Both refuse it as not UTF-8 now."""
    host = full.checkout("pool1")
    path = f"/api/v3/vm/{host}"
    body = '{"tags": {"project": "caf\xe9"}}'.encode("latin-1")
    headers = [("Content-Type", content_type)] if content_type else []
    status, answer = answered_alike(raw_redis, "PUT", path, api_gateway_event(
        "PUT", "/api/v3/vm/{name}", path, params={"name": host}, headers=headers, body=body), headers, body)
    assert (status, answer) == (400, {"ok": False, "error": "Invalid JSON: the body is not UTF-8 text"}), answer


def test_a_replacement_character_sent_escaped_is_read(full: Harness) -> None:
    """Only a raw U+FFFD (a bad byte's remains) is refused; the JSON escape is the character."""
    host = full.checkout("pool1")
    reply = full.request("PUT", f"/api/v3/vm/{host}", b'{"lifetime": 3, "tags": {"note": "x\\ufffd"}}')
    assert reply.status in (200, 400) and reply.json.get("error") != "Invalid JSON: the body is not UTF-8 text", \
        reply.json


def test_a_get_with_a_body_is_answered_alike(full: Harness, raw_redis: redis.Redis) -> None:
    """A regional API passes a GET's body on; no GET route reads one."""
    path = "/api/v3/status"
    body = b'{"view": "pools"}'
    headers = [("Content-Type", "application/json")]
    answered_alike(raw_redis, "GET", path, api_gateway_event("GET", path, path, headers=headers, body=body),
                   headers, body)


# --- the event itself ---------------------------------------------------------------------------

probe = RequestLocalChalice(app_name="probe", configure_logs=False)


@probe.route("/capture/{name}", methods=["POST"], content_types=["*/*"])
def capture(name: str) -> Response:
    event = probe.current_request.to_original_event()
    fields = ("path", "pathParameters", "headers", "multiValueHeaders", "queryStringParameters",
              "multiValueQueryStringParameters")
    seen = {key: event[key] for key in fields}
    seen["body"] = probe.current_request.raw_body.decode()
    return Response(body=seen, status_code=200, headers={"Content-Type": "application/json"})


def test_the_local_front_hands_the_app_the_event_api_gateway_delivered_live() -> None:
    """The request of the live capture (the module's docstring) through the local front: the
    event holds what API Gateway's held. The front had decoded the path parameter
    (``space value``), and joined a repeated header into one value of both forms
    (``first, second``), where API Gateway gives ``headers`` the last and ``multiValueHeaders``
    each."""
    body = '{"message":"hello from the public internet","unicode":"lambda-\u03bb"}'.encode()
    target = ("/capture/space%20value?empty=&encodedPlus=a%2Bb&literalPlus=a+b"
              "&redirect=https%3A%2F%2Fexample.com%2Fa%2Fb&repeat=one&repeat=two")
    headers = [("content-type", "application/json"), ("x-voker-probe", "first"), ("x-voker-probe", "second")]
    status, _, raw = through_front(AsgiApp(probe), "POST", target, headers, body)
    assert status == 200, raw
    seen = json.loads(raw)
    assert seen["path"] == "/capture/space%20value"
    assert seen["pathParameters"] == {"name": "space%20value"}
    assert seen["queryStringParameters"] == {"empty": "", "encodedPlus": "a+b", "literalPlus": "a b",
                                             "redirect": "https://example.com/a/b", "repeat": "two"}
    assert seen["multiValueQueryStringParameters"] == {
        "empty": [""], "encodedPlus": ["a+b"], "literalPlus": ["a b"], "redirect": ["https://example.com/a/b"],
        "repeat": ["one", "two"]}
    assert seen["headers"]["x-voker-probe"] == "second"
    assert seen["multiValueHeaders"]["x-voker-probe"] == ["first", "second"]
    assert seen["headers"]["content-type"] == "application/json"
    assert seen["body"] == body.decode()


# --- the headers every answer carries -------------------------------------------------------------

SAFE_HEADERS = {"x-content-type-options": "nosniff", "x-frame-options": "DENY",
                "content-security-policy": "default-src 'none'; frame-ancestors 'none'"}
"""What keeps a browser from sniffing a JSON answer as HTML or framing it in another site's page
(the dashboard's page has its own, stricter policy)."""


@pytest.mark.parametrize("method, target, resource, status", [
    ("GET", "/api/v3/status", "/api/v3/status", 200),
    ("HEAD", "/api/v3/status", "/api/v3/status", 200),
    ("GET", "/api/v3/vm/no-such-host", "/api/v3/vm/{name}", 404),
    ("GET", "/api/v3/vm/not_a_hostname", "/api/v3/vm/{name}", 400),
    ("GET", "/", "/", 302),
    ("POST", "/api/v3/status", None, 405),  # the local front's; API Gateway's own 404 in AWS
    ("GET", "/api/v3/no-such-route", None, 404),
    ("GET", "/api/v3/summary?from=%zz", None, 400),
], ids=["200", "head", "404", "400", "302", "405", "unknown-route", "malformed-query"])
def test_every_json_answer_carries_nosniff_and_a_frame_ancestors_policy(
        full: Harness, method: str, target: str, resource: str | None, status: int) -> None:
    """Only the dashboard's page had a Content-Security-Policy and X-Frame-Options; a JSON answer
    (tokens, owners, hostnames a caller chose) could be framed by any site. Locally and from the
    Lambda alike (API Gateway's own answers carry X-Frame-Options too: infra/stage_settings.py)."""
    got, headers, _ = through_front(AsgiApp(app.app), method, target, [])
    assert got == status, headers
    assert {name: headers.get(name) for name in SAFE_HEADERS} == SAFE_HEADERS, headers
    if resource is not None:  # what the Lambda answers API Gateway
        path = target.partition("?")[0]
        params = {"name": path.rsplit("/", 1)[1]} if "{name}" in resource else None
        answer = app.app(api_gateway_event(method, resource, path, params=params), Context())
        assert answer["statusCode"] == status, answer
        lambda_headers = {name.lower(): value for name, value in answer["headers"].items()}
        assert {name: lambda_headers.get(name) for name in SAFE_HEADERS} == SAFE_HEADERS, answer["headers"]


def test_a_revalidated_answer_keeps_the_headers(full: Harness) -> None:
    """A 304 (the dashboard's If-None-Match on /status) carries the 200's headers."""
    _, first, _ = through_front(AsgiApp(app.app), "GET", "/api/v3/status", [])
    status, headers, _ = through_front(AsgiApp(app.app), "GET", "/api/v3/status", [("If-None-Match", first["etag"])])
    assert status == 304, headers
    assert {name: headers.get(name) for name in SAFE_HEADERS} == SAFE_HEADERS, headers
