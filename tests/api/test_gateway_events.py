"""The API function invoked with the proxy events an API Gateway REST API delivers, hostile ones
included: bodies marked base64 (or not Unicode), repeated and empty query keys, null headers and
parameters, header names in any case, a stage in the path, a body of API Gateway's 10 MB limit.
Each answer is JSON with ``ok: false`` and a 4xx, or the right answer: never Chalice's own 500,
and a refused request changes nothing in Redis.

Driven through ``app.app`` itself (not local/gateway.py, which builds only well-formed events)."""

from __future__ import annotations

import base64
import gzip
import io
import json
import logging
from typing import Any, Callable, Iterator

import pytest

import app
from chalicelib.api.http import MAX_BASE64_BODY_CHARS, MAX_BODY_BYTES
from chalicelib.api.proxy_event import MAX_EVENT_CHARS, MAX_EVENT_FIELDS
from chalicelib.observability import logger
from tests.harness import Harness
from tests.infra.packaged_functions import Context, api_event
from tests.support import json_lines

CHECKOUT = ("POST", "/api/v3/vm", "/api/v3/vm")


def invoke(event: dict[str, Any]) -> tuple[int, Any]:
    """(status, JSON body) of the API function's answer to ``event``."""
    answer = app.app(event, Context())
    assert answer["headers"].get("Content-Type") == "application/json", answer
    return answer["statusCode"], json.loads(answer["body"])


@pytest.mark.parametrize("body, error", [
    ("eyJwb29sMSI6ICIxIn0=!", "not valid base64"),  # a character outside the alphabet
    ("eyJwb29sMSI6ICIxIn0", "not valid base64"),  # padding cut off
    (base64.b64encode(b'{"pool1": "1"}\xff').decode(), "Invalid JSON"),  # decodes, not UTF-8
], ids=["bad-character", "bad-padding", "not-utf8"])
def test_a_base64_body_that_cannot_be_read_is_a_400_and_takes_no_vm(full: Harness, body: str, error: str) -> None:
    before = full.redis_state()
    status, answer = invoke(api_event(*CHECKOUT, body=body, base64_body=True))
    assert (status, answer["ok"]) == (400, False) and error in answer["error"], answer
    assert full.redis_state() == before


def test_a_base64_body_is_read_as_the_client_sent_it(full: Harness) -> None:
    body = base64.b64encode(json.dumps({"pool1": "1"}).encode()).decode()
    status, answer = invoke(api_event(*CHECKOUT, body=body, base64_body=True))
    assert status == 200 and answer["pool1"]["hostname"], answer
    assert full.count("pool1", "running") == 1


@pytest.mark.parametrize("body", [
    '{"pool1": "\ud800"}',  # a lone surrogate: a JSON escape the Lambda runtime decodes to one
    12,  # not text at all (a direct invoke; API Gateway always sends a string or null)
], ids=["lone-surrogate", "number"])
def test_a_body_that_is_not_text_is_a_400_and_takes_no_vm(full: Harness, body: Any) -> None:
    before = full.redis_state()
    status, answer = invoke(api_event(*CHECKOUT, body=body))
    assert (status, answer["ok"]) == (400, False), answer
    assert full.redis_state() == before


@pytest.mark.parametrize("encode", [str, lambda text: base64.b64encode(text.encode()).decode()],
                         ids=["text", "base64"])
def test_a_body_of_api_gateways_10_mb_limit_is_a_413_and_takes_no_vm(full: Harness,
                                                                     encode: Callable[[str], str]) -> None:
    before = full.redis_state()
    body = '{"pool1": "1", "padding": "' + "x" * 10 * 1024 * 1024 + '"}'
    status, answer = invoke(api_event(*CHECKOUT, body=encode(body), base64_body=encode is not str))
    assert (status, answer["ok"]) == (413, False) and "too large" in answer["error"], answer
    assert full.redis_state() == before


@pytest.mark.parametrize("base64_body", [True, False], ids=["base64", "text"])
def test_a_body_over_the_limit_is_a_413_on_a_route_that_reads_none_before_it_is_decoded(
        full: Harness, base64_body: bool) -> None:
    """A body longer than any the API reads is refused from its length, on every route, as the
    local front refuses it: a 6 MB base64 body was decoded first (30-40 ms of CPU per request),
    then ignored by ``GET /status`` (a 200) or, not being base64, answered a 400."""
    before = full.redis_state()
    oversized = "A" * (MAX_BASE64_BODY_CHARS + 4 if base64_body else MAX_BODY_BYTES + 1)
    for body in (oversized, oversized[:-1] + "!"):  # readable, and not base64 at its last character
        status, answer = invoke(api_event("GET", "/api/v3/status", "/api/v3/status", body=body,
                                          base64_body=base64_body))
        assert (status, answer["ok"]) == (413, False) and "too large" in answer["error"], answer
        status, answer = invoke(api_event(*CHECKOUT, body=body, base64_body=base64_body))
        assert (status, answer["ok"]) == (413, False), answer
    assert full.redis_state() == before


def test_a_base64_body_of_the_largest_size_read_is_still_read(full: Harness) -> None:
    padded = b'{"pool1": "1", "x": "' + b"x" * MAX_BODY_BYTES
    body = padded[:MAX_BODY_BYTES - 2] + b'"}'
    encoded = base64.b64encode(body).decode()
    assert len(encoded) == MAX_BASE64_BODY_CHARS
    status, answer = invoke(api_event(*CHECKOUT, body=encoded, base64_body=True))
    assert status != 413 and "too large" not in answer.get("error", ""), answer


def test_repeated_query_keys_take_the_last_value_and_an_empty_one_is_absent(full: Harness) -> None:
    event = api_event("GET", "/api/v3/status", "/api/v3/status", query={"view": "pools"})
    event["multiValueQueryStringParameters"] = {"view": ["everything", "pools"]}
    status, answer = invoke(event)
    assert status == 200 and set(answer) == {"pools", "status"}, answer

    event["multiValueQueryStringParameters"] = {"view": []}  # no value: the whole status
    status, answer = invoke(event)
    assert status == 200 and "capacity" in answer, answer


def test_null_headers_query_and_path_parameters_are_none_sent(full: Harness) -> None:
    """What API Gateway's console test (or a client sending nothing) delivers."""
    status, answer = invoke(api_event("GET", "/api/v3/vm", "/api/v3/vm", headers=None, query=None, params=None))
    assert (status, sorted(answer)) == (200, ["pool1", "pool2", "pool3"])


def test_services_that_cannot_be_built_answer_a_json_503_until_they_can(full: Harness,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """The first request of a process builds its services (Redis client, Lua scripts read from
    disk, secrets fetched). When that fails (out of descriptors: `ulimit -n` reached under a
    burst of connections; a secret that could not be fetched), the request gets our JSON 503
    and the next one builds them again. Before, it escaped to Chalice: its own 500 body, for
    every request until the build succeeded."""
    built = app._services
    failures = [OSError(24, "Too many open files")]

    def build(*args: Any, **kwargs: Any) -> Any:
        if failures:
            raise failures.pop()
        return built

    monkeypatch.setattr(app, "_services", None)
    monkeypatch.setattr(app.Services, "from_environment", build)
    status, answer = invoke(api_event("GET", "/api/v3/status", "/api/v3/status"))
    assert (status, answer["ok"]) == (503, False), answer
    assert "Too many" not in answer["error"]  # nothing of the server's inside is shown
    status, answer = invoke(api_event("GET", "/api/v3/status", "/api/v3/status"))
    assert status == 200 and answer["status"]["ok"], answer


@pytest.mark.parametrize("method, resource, path, body, status", [
    ("POST", "/api/v3/vm", "/api/v3/vm", '{"pool1": "1"}', 200),  # a hostname handed to one caller
    ("POST", "/api/v3/vm", "/api/v3/vm", '{"pool1": ', 400),
    ("GET", "/api/v3/status", "/api/v3/status", None, 200),
], ids=["checkout", "error", "status"])
def test_no_cache_between_the_caller_and_api_gateway_may_keep_an_answer(
        full: Harness, method: str, resource: str, path: str, body: str | None, status: int) -> None:
    answer = app.app(api_event(method, resource, path, body=body), Context())
    assert answer["statusCode"] == status, answer
    assert answer["headers"]["Cache-Control"] == "no-store", answer["headers"]
    assert answer["headers"]["X-Content-Type-Options"] == "nosniff", answer["headers"]


def _without(event: dict[str, Any], *keys: str) -> dict[str, Any]:
    return {key: value for key, value in event.items() if key not in keys}


CHECKOUT_PATH = ("POST", "/api/v3/vm/{name}", "/api/v3/vm/pool1")


@pytest.mark.parametrize("event", [
    # A direct invoke (the Lambda console's test, a script) of a route with a path parameter.
    api_event(*CHECKOUT_PATH, params=None),
    _without(api_event(*CHECKOUT_PATH, params={"name": "pool1"}), "pathParameters"),
    api_event(*CHECKOUT_PATH, params={"other": "pool1"}),
    api_event(*CHECKOUT_PATH, params={"name": 5}),  # type: ignore[dict-item]
    api_event(*CHECKOUT_PATH, params="pool1"),  # type: ignore[arg-type]
], ids=["null", "missing", "other-name", "not-text", "not-a-mapping"])
def test_an_event_without_the_routes_path_parameters_is_a_400_and_takes_no_vm(full: Harness,
                                                                              event: dict[str, Any]) -> None:
    """Before: Chalice's own 500 {"Code": "InternalServerError"} (or a KeyError out of the
    function: API Gateway's 502) for a direct invoke of a route with a path parameter."""
    before = full.redis_state()
    status, answer = invoke(event)
    assert (status, answer["ok"]) == (400, False), answer
    assert "'name'" in answer["error"] or "pathParameters" in answer["error"], answer
    assert full.redis_state() == before


@pytest.mark.parametrize("event", [
    _without(api_event("GET", "/api/v3/vm", "/api/v3/vm"), "headers", "multiValueHeaders"),
    _without(api_event("GET", "/api/v3/vm", "/api/v3/vm"), "queryStringParameters",
             "multiValueQueryStringParameters"),
    _without(api_event("GET", "/api/v3/vm", "/api/v3/vm"), "body", "isBase64Encoded", "stageVariables"),
    {**api_event("GET", "/api/v3/vm", "/api/v3/vm"), "requestContext": None},
    _without(api_event("GET", "/api/v3/vm", "/api/v3/vm"), "requestContext"),
], ids=["no-headers", "no-query", "no-body", "null-request-context", "no-request-context"])
def test_an_event_missing_keys_api_gateway_always_sends_is_served_from_what_it_has(
        full: Harness, event: dict[str, Any]) -> None:
    """A direct invoke may leave out what API Gateway always sends (null when empty). Before: a
    KeyError or AttributeError out of the function, or Chalice's 500."""
    status, answer = invoke(event)
    assert (status, sorted(answer)) == (200, ["pool1", "pool2", "pool3"]), answer


def test_headers_and_query_given_only_in_their_multi_value_form_are_read(full: Harness) -> None:
    event = api_event("GET", "/api/v3/status", "/api/v3/status", headers=None, query=None)
    event["multiValueHeaders"] = {"Accept": ["*/*"]}
    event["multiValueQueryStringParameters"] = {"view": ["pools"]}
    status, answer = invoke(event)
    assert status == 200 and set(answer) == {"pools", "status"}, answer
    event = api_event("GET", "/api/v3/status", "/api/v3/status", headers={"Accept": "*/*"})
    event["queryStringParameters"], event["multiValueQueryStringParameters"] = {"view": "pools"}, None
    status, answer = invoke(event)
    assert status == 200 and set(answer) == {"pools", "status"}, answer


@pytest.mark.parametrize("change", [
    {"headers": {"Accept": 5}},
    {"headers": "Accept: */*"},
    {"multiValueHeaders": {"Accept": "*/*"}},
    {"queryStringParameters": {"view": 1}, "multiValueQueryStringParameters": {"view": [1]}},
    {"multiValueQueryStringParameters": "view=pools"},
    {"isBase64Encoded": "yes"},
    {"httpMethod": None, "requestContext": {"resourcePath": "/api/v3/status", "httpMethod": 7}},
], ids=["header-not-text", "headers-not-a-mapping", "multi-header-not-a-list", "query-not-text",
        "multi-query-not-a-mapping", "base64-flag-not-a-boolean", "method-not-text"])
def test_an_event_whose_values_have_the_wrong_types_is_a_400(full: Harness, change: dict[str, Any]) -> None:
    """Before: our 500 "internal error", Chalice's 500, or an exception out of the function."""
    status, answer = invoke({**api_event("GET", "/api/v3/status", "/api/v3/status"), **change})
    assert (status, answer["ok"]) == (400, False) and answer["error"], answer


@pytest.mark.parametrize("event", [{}, [], "GET /api/v3/status", None], ids=["empty", "list", "text", "null"])
def test_an_event_that_is_not_an_api_gateway_request_is_a_400(full: Harness, event: Any) -> None:
    status, answer = invoke(event)
    assert (status, answer["ok"]) == (400, False), answer


def test_a_resource_the_api_does_not_have_is_a_404_ok_false(full: Harness) -> None:
    """As API Gateway answers it (infra/template.yaml's gateway responses). Before: Chalice's 405
    {"Code": "MethodNotAllowedError"}."""
    status, answer = invoke(api_event("GET", "/api/v3/nothing", "/api/v3/nothing"))
    assert (status, answer) == (404, {"ok": False})


@pytest.mark.parametrize("method", ["PATCH", "OPTIONS", "TRACE", "get", ""])
def test_a_method_the_resource_does_not_have_is_a_405_json_naming_the_allowed_ones(full: Harness,
                                                                                   method: str) -> None:
    """As the local front answers it. Before: Chalice's 405 {"Code": "MethodNotAllowedError"},
    without our JSON headers."""
    answer = app.app(api_event(method, "/api/v3/vm", "/api/v3/vm"), Context())
    assert answer["statusCode"] == 405 and answer["headers"]["Content-Type"] == "application/json", answer
    assert answer["headers"]["Allow"] == "GET, HEAD, POST"
    body = json.loads(answer["body"])
    assert body["ok"] is False
    assert answer["body"] == json.dumps(body, separators=(",", ":")), answer  # compact, as every answer


def test_a_405_shows_a_method_with_control_characters_as_their_escapes(full: Harness) -> None:
    """A direct invoke may name any method. Before, the 405 put it in its message as sent: the
    message a client prints (vmfloaty prints the error) began a line the API seemed to have
    written at its CR/LF, and ran its escape sequence (here: clear the screen) in the terminal."""
    answer = app.app(api_event("\x1b[2J\r\nOK", "/api/v3/vm", "/api/v3/vm"), Context())
    assert answer["statusCode"] == 405, answer
    error = json.loads(answer["body"])["error"]
    assert error == "method \\x1b[2J\\r\\nOK not allowed; use GET, HEAD, POST", error


@pytest.mark.parametrize("resource, path, params", [
    ("/api/v3/status", "/api/v3/status", None),
    ("/api/v3/vm/{name}", "/api/v3/vm/nosuchvm", {"name": "nosuchvm"}),
    ("/dashboard", "/dashboard", None),
], ids=["status", "not-found", "dashboard-page"])
def test_head_is_answered_as_get_without_a_body(full: Harness, resource: str, path: str,
                                                params: dict[str, str] | None) -> None:
    """As vmpooler's Sinatra answers it (``curl -I``, monitors) and docs/api.md promises. Before,
    the API function had no HEAD route: API Gateway answered 404 {"ok": false} in AWS."""
    got = app.app(api_event("GET", resource, path, params=params), Context())
    head = app.app(api_event("HEAD", resource, path, params=params), Context())
    assert head["statusCode"] == got["statusCode"] and got["body"], (got, head)
    assert head["headers"]["Content-Type"] == got["headers"]["Content-Type"]
    assert head["body"] == ""


@pytest.mark.parametrize("source_ip", ["\udc80", "test-invoke-source-ip", "x" * 1_000_000],
                         ids=["lone-surrogate", "console-test", "million-characters"])
def test_a_source_address_that_is_no_ip_address_is_a_caller_of_its_own(full: Harness, source_ip: str) -> None:
    """API Gateway's console test sends ``test-invoke-source-ip``; a direct invoke anything. Any
    text that is not an address is counted by its hash (quotas, rates). Before, one with a lone
    surrogate (the JSON escape ``\\udc80``, which the Lambda runtime decodes to one) could not
    be hashed: our 500 "internal error" for every checkout and on-demand request."""
    event = api_event(*CHECKOUT, body='{"pool1": "1"}')
    event["requestContext"]["identity"]["sourceIp"] = source_ip
    status, answer = invoke(event)
    assert status == 200 and answer["pool1"]["hostname"], answer
    assert full.client.keys("*holdings:*"), "the checkout is counted for its owner"
    assert max(len(str(item)) for item in full.redis_state().items()) < 10_000  # the address is kept hashed


def test_a_request_id_a_million_characters_long_is_not_written_into_every_log_line(
        full: Harness, log_output: io.StringIO) -> None:
    """A direct invoke's ``requestContext.requestId`` became each log line's ``correlation_id``
    whole: one request wrote a megabyte into every line of its invocation. A long one is logged
    by its hash, which still tells two requests apart; an API Gateway id (a UUID) as sent."""
    correlation_ids = []
    for filler in "xy":
        event = api_event(*CHECKOUT, body='{"pool1": "1"}')
        event["requestContext"]["requestId"] = filler * 1_000_000
        status, answer = invoke(event)
        assert status == 200 and answer["pool1"]["hostname"], answer
        lines = log_output.getvalue().splitlines()
        assert lines and max(len(line) for line in lines) < 4096
        checked_out = [record for record in json_lines(log_output.getvalue()) if record["message"] == "VM checked out"]
        correlation_ids.append(checked_out[-1]["correlation_id"])
    assert len(set(correlation_ids)) == 2
    event = api_event(*CHECKOUT, body='{"pool2": "1"}')
    assert invoke(event)[0] == 200
    assert event["requestContext"]["requestId"] in log_output.getvalue()


@pytest.fixture
def utf8_log() -> Iterator[io.BytesIO]:
    """What the service logs, written as Lambda's stdout writes it: encoded as UTF-8 (a StringIO
    takes any text, a lone surrogate too)."""
    written = io.BytesIO()
    stream = io.TextIOWrapper(written, encoding="utf-8", write_through=True)
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logger.registered_formatter)
    logger.addHandler(handler)
    yield written
    logger.removeHandler(handler)


def test_a_lone_surrogate_in_the_request_id_loses_no_log_line(full: Harness, utf8_log: io.BytesIO,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    """A direct invoke's ``requestContext.requestId`` of ``\\ud800`` is every log line's
    ``correlation_id``: no line of the invocation could be encoded, and each was lost, a
    "--- Logging error ---" traceback on stderr in its place (a checkout left no trace in the
    logs). Now each is written, the surrogate escaped."""
    event = api_event(*CHECKOUT, body='{"pool1": "1"}')
    event["requestContext"]["requestId"] = "\ud800"
    status, answer = invoke(event)
    assert status == 200 and answer["pool1"]["hostname"], answer
    records = json_lines(utf8_log.getvalue().decode("utf-8"))
    checked_out = [record for record in records if record["message"] == "VM checked out"]
    assert checked_out and checked_out[0]["hostname"] == answer["pool1"]["hostname"].split(".")[0], records
    assert checked_out[0]["correlation_id"] == "\ud800"
    assert "Logging error" not in capsys.readouterr().err


def test_a_gzipped_body_api_gateway_passes_through_is_a_415_and_takes_no_vm(full: Harness) -> None:
    """API Gateway hands the function a compressed body as sent (base64, its Content-Encoding
    header kept): a 415, as from the local front, not a 400 "not UTF-8 text"."""
    before = full.redis_state()
    body = base64.b64encode(gzip.compress(b'{"pool1": "1"}')).decode()
    answer = app.app(api_event(*CHECKOUT, body=body, base64_body=True, headers={"Content-Encoding": "gzip"}),
                     Context())
    assert answer["statusCode"] == 415 and answer["headers"].get("Accept-Encoding") == "identity", answer
    assert "Content-Encoding" in json.loads(answer["body"])["error"], answer
    assert full.redis_state() == before


OVERSIZED = MAX_EVENT_FIELDS + 1
"""More entries than API Gateway can pass (10,240 bytes of request line and headers)."""


@pytest.mark.parametrize("change, status", [
    ({"headers": {**{f"x-padding-{n}": "" for n in range(OVERSIZED)}, "Content-Type": "application/json"}}, 431),
    ({"headers": {"X-Padding": "x" * (MAX_EVENT_CHARS + 1)}}, 431),
    ({"multiValueHeaders": {"X-Padding": [""] * OVERSIZED}}, 431),
    ({"queryStringParameters": {f"q{n}": "" for n in range(OVERSIZED)}}, 414),
    ({"multiValueQueryStringParameters": {"ondemand": ["false"] * OVERSIZED}}, 414),
    ({"pathParameters": {"name": "+".join(["pool1"] * (MAX_EVENT_CHARS // 6 + 1))}}, 414),
], ids=["10241-headers", "a-1-MiB-header", "multi-value-headers", "query", "multi-value-query", "1-MiB-path"])
def test_an_event_larger_than_any_api_gateway_request_is_refused_before_it_is_read(
        full: Harness, change: dict[str, Any], status: int) -> None:
    """Only a direct invoke sends more than API Gateway passes; each took the API function
    seconds to read (500,000 headers: 7 s and 87 MB; a million-part ``/vm/a+b+...``: 4 s) and
    served it: a checkout with 10,241 headers took a VM. Now a 431 (headers) or 414 (query and
    path parameters) in JSON, as the local front answers a head or target that large, and
    nothing taken."""
    before = full.redis_state()
    event = {**api_event("POST", "/api/v3/vm/{name}", "/api/v3/vm/pool1", params={"name": "pool1"}), **change}
    if "multiValueHeaders" in change:
        event["headers"] = None
    if "queryStringParameters" in change:
        event["multiValueQueryStringParameters"] = None
    answer_status, answer = invoke(event)
    assert (answer_status, answer["ok"]) == (status, False), answer
    assert "more than any API Gateway request" in answer["error"] and len(json.dumps(answer)) < 300, answer
    assert full.redis_state() == before
