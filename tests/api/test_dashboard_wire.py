"""What the dashboard costs on the wire: its page and the feeds it polls carry an ETag, and a
caller naming it in If-None-Match gets 304 with no body (on the local front and as API Gateway
hands the API function its event); answers of COMPRESS_FROM_BYTES or more are compressed for a
caller that prefers gzip or deflate, as API Gateway's ``minimumCompressionSize`` has them, and
read as before by Ruby's Net::HTTP (vmfloaty, beaker); small answers stay as they were."""

from __future__ import annotations

import gzip
import json
import shutil
import subprocess
import zlib
from typing import Any, Callable, Iterator

import pytest

import app
from chalicelib.api.conditional import COMPRESS_FROM_BYTES, entity_tag
from chalicelib.api.status import status_tag_basis
from local.gateway import Gateway
from tests.api.test_dashboard import CONFIG, tick
from tests.harness import Harness
from tests.in_process_http import serving

FEEDS = ["/api/v3/status", "/api/v3/summary/clone", "/api/v3/summary/boot", "/dashboard/stats/history?hours=1",
         "/dashboard/stats/vmpooler/pool?history=true", "/status", "/api/v1/poolstat?pool=debian-12-x86_64"]
PAGE_AND_FEEDS = ["/dashboard/", *FEEDS]
NET_HTTP = {"Accept-Encoding": "gzip;q=1.0,deflate;q=0.6,identity;q=0.3", "Accept": "*/*", "User-Agent": "Ruby"}


@pytest.fixture
def dash(make_stack: Callable[[str], Harness]) -> Harness:
    stack = make_stack(CONFIG)
    for _ in range(2):
        tick(stack)
        stack.clock.advance(60)
    return stack


def raw(method: str, target: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    """One request through the local gateway, the answer as it goes on the wire."""
    return Gateway(app.app)(method, target, headers or {}, b"", "127.0.0.1")


@pytest.mark.parametrize("target", PAGE_AND_FEEDS)
def test_an_unchanged_answer_is_a_304_without_a_body(dash: Harness, target: str) -> None:
    status, headers, body = raw("GET", target)
    assert status == 200 and headers["ETag"] == tag_of(target, body)
    again, again_headers, empty = raw("GET", target, {"If-None-Match": headers["ETag"]})
    assert (again, empty, again_headers["ETag"]) == (304, b"", headers["ETag"])
    # The 304 carries the headers the 200 would (RFC 9110, 15.4.5): the page's policy, no-store.
    assert again_headers["Cache-Control"] == headers["Cache-Control"]
    # Another tag, or the tag among others, as browsers and caches send them.
    assert raw("GET", target, {"If-None-Match": '"other"'})[0] == 200
    assert raw("GET", target, {"If-None-Match": f'"a", W/{headers["ETag"].removeprefix("W/")}'})[0] == 304
    assert raw("HEAD", target, {"If-None-Match": headers["ETag"]})[0] == 304


def tag_of(target: str, body: bytes) -> str:
    """The ETag of an answer: its bytes' (strong), or for /status its bytes but its uptime's (weak)."""
    if target.split("?")[0] in ("/status", "/api/v3/status"):
        return "W/" + entity_tag(status_tag_basis(body.decode()).encode())
    return entity_tag(body)


def test_a_changed_answer_gets_a_new_tag_and_its_body(dash: Harness) -> None:
    _, headers, before = raw("GET", "/api/v3/status?view=pools")
    dash.checkout("debian-12-x86_64")
    again, new_headers, after = raw("GET", "/api/v3/status?view=pools", {"If-None-Match": headers["ETag"]})
    assert again == 200 and after != before and new_headers["ETag"] == tag_of("/status", after) != headers["ETag"]


@pytest.mark.parametrize("target", ["/api/v3/status", "/status", "/api/v3/status?view=queue"])
def test_status_polled_again_when_only_time_passed_is_a_304(dash: Harness, target: str) -> None:
    """/status carries the service's uptime, which changes every tenth of a second: its ETag (the
    answer's bytes' hash) changed at every poll, so a dashboard never got 304 for it (121 KB at
    1,000 pools, every 5 s). The tag now leaves the uptime out (a weak tag: the answers are
    equivalent, not the same bytes)."""
    _, headers, before = raw("GET", target)
    dash.clock.advance(30)
    again, again_headers, empty = raw("GET", target, {"If-None-Match": headers["ETag"]})
    assert (again, empty, again_headers["ETag"]) == (304, b"", headers["ETag"])
    assert headers["ETag"].startswith('W/"')
    _, _, after = raw("GET", target)
    assert json.loads(after)["status"]["uptime"] == json.loads(before)["status"]["uptime"] + 30
    dash.checkout("debian-12-x86_64")  # the pools' counts change: a new tag, the answer sent
    assert raw("GET", target, {"If-None-Match": headers["ETag"]})[0] == 200


def test_answers_of_any_other_route_or_status_carry_no_tag(dash: Harness) -> None:
    host = dash.checkout("debian-12-x86_64")
    for method, target in [("GET", f"/api/v3/vm/{host}"), ("GET", "/api/v3/vm"),
                           ("GET", "/dashboard/stats/history?hours=0"), ("GET", "/api/v3/summary/nope")]:
        status, headers, _ = raw(method, target, {"If-None-Match": "*"})
        assert status != 304 and "ETag" not in headers, (target, status, headers)


def test_through_api_gateway_the_function_answers_304_with_an_empty_body(dash: Harness) -> None:
    """The API function's answer to API Gateway's event (Lambda proxy), no local front between."""
    def event(headers: dict[str, str]) -> dict[str, Any]:
        return {"resource": "/api/v3/status", "path": "/api/v3/status", "httpMethod": "GET", "headers": headers,
                "multiValueHeaders": {k: [v] for k, v in headers.items()}, "queryStringParameters": None,
                "multiValueQueryStringParameters": None, "pathParameters": None, "stageVariables": None,
                "body": None, "isBase64Encoded": False,
                "requestContext": {"resourcePath": "/api/v3/status", "httpMethod": "GET", "requestId": "r1",
                                   "path": "/api/prod/v3/status", "identity": {"sourceIp": "192.0.2.1"}}}

    first = app.app(event({}), None)
    tag = first["headers"]["ETag"]
    assert first["statusCode"] == 200 and tag == tag_of("/status", first["body"].encode())
    second = app.app(event({"If-None-Match": tag}), None)
    assert (second["statusCode"], second["body"], second["headers"]["ETag"]) == (304, "", tag)


@pytest.mark.parametrize(("accept", "coding"), [
    ("gzip;q=1.0,deflate;q=0.6,identity;q=0.3", "gzip"),  # Ruby's Net::HTTP
    ("gzip, deflate, br, zstd", "gzip"),  # Chromium
    ("deflate", "deflate"),
    ("br, gzip;q=0.5", None),  # prefers a coding API Gateway does not make
    ("identity", None),
    ("gzip;q=0", None),
    ("", None),  # curl without --compressed sends none
])
def test_large_answers_are_compressed_for_callers_preferring_gzip_or_deflate(dash: Harness, accept: str,
                                                                           coding: str | None) -> None:
    plain = raw("GET", "/dashboard/stats/history?hours=1")[2]
    assert len(plain) >= COMPRESS_FROM_BYTES
    status, headers, body = raw("GET", "/dashboard/stats/history?hours=1", {"Accept-Encoding": accept})
    assert status == 200 and headers.get("Content-Encoding") == coding
    assert {"gzip": gzip.decompress, "deflate": zlib.decompress, None: bytes}[coding](body) == plain
    assert headers["Vary"] == "Accept-Encoding"
    if coding:
        assert len(body) < len(plain) / 4


def test_small_answers_vmpooler_clients_get_are_never_compressed(dash: Harness) -> None:
    """A checkout, a VM's record, a return: byte for byte what they were, whatever the client asks."""
    status, headers, body = Gateway(app.app)("POST", "/api/v3/vm/debian-12-x86_64", NET_HTTP, b"", "127.0.0.1")
    assert status == 200 and "Content-Encoding" not in headers and json.loads(body)["ok"] is True
    host = json.loads(body)["debian-12-x86_64"]["hostname"]
    for method, target in [("GET", f"/api/v3/vm/{host}"), ("DELETE", f"/api/v3/vm/{host}")]:
        status, headers, body = Gateway(app.app)(method, target, NET_HTTP, b"", "127.0.0.1")
        assert len(body) < COMPRESS_FROM_BYTES and "Content-Encoding" not in headers and json.loads(body)["ok"]


class Codings:
    """The gateway, noting the Content-Encoding of each answer it gives."""

    def __init__(self, gateway: Any) -> None:
        self.gateway = gateway
        self.sent: list[str | None] = []

    def __call__(self, *args: Any) -> Any:
        status, headers, body = self.gateway(*args)
        self.sent.append(headers.get("Content-Encoding"))
        return status, headers, body


@pytest.fixture
def served(dash: Harness) -> Iterator[tuple[str, Codings]]:
    with serving(app.app, Codings) as (base, codings):
        yield base, codings


RUBY_GET = """
require "net/http"
require "json"
uri = URI(ARGV[0])
answer = Net::HTTP.get_response(uri)
print JSON.generate({"encoding" => answer["content-encoding"].to_s, "length" => answer.body.bytesize,
                     "ok" => JSON.parse(answer.body).key?("pools")})
"""


@pytest.mark.skipif(shutil.which("ruby") is None, reason="ruby is not installed")
def test_rubys_net_http_reads_a_compressed_answer_as_before(served: tuple[str, Codings]) -> None:
    """vmfloaty (Faraday on Net::HTTP) and beaker (Net::HTTP) send Net::HTTP's own Accept-Encoding,
    gzip first, and Net::HTTP decodes what it asked for: they read the JSON they always did."""
    plain = raw("GET", "/dashboard/stats/history?hours=1")[2]
    base, codings = served
    done = subprocess.run(["ruby", "-e", RUBY_GET, f"{base}/dashboard/stats/history?hours=1"],
                          capture_output=True, timeout=60, check=True)
    assert codings.sent == ["gzip"]
    # Net::HTTP drops the Content-Encoding of what it decoded; the body is the JSON as sent.
    assert json.loads(done.stdout) == {"encoding": "", "length": len(plain), "ok": True}
