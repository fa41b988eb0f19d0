"""The dashboard's routes over HTTP (in-process gateway): /, /healthcheck, the page, vmpooler's
feeds and the per-minute history the reconcile records. The page in a real browser is
tests/core/test_dashboard_browser.py."""

from __future__ import annotations

import base64
import hashlib
import json
import re
from typing import Any, Callable

import pytest

import app
from chalicelib.manager.runner import run_pool
from chalicelib.store.history import KEEP_MINUTES, PoolHistory, Sample, minute_of
from local.gateway import Gateway
from tests.harness import Harness, Reply

CONFIG = """
:config:
  domain: example.com
  site_name: '<b>CI</b> pools & co'
:providers:
  :dummy: {provider_class: dummy, createvm_max_time: 0, boot_time: 0}
:pools:
  - {name: debian-12-x86_64, size: 3, provider: dummy, alias: [debian]}
  - {name: debian-11-x86_64, size: 2, provider: dummy}
  - {name: win-2022-x86_64, size: 1, provider: dummy, createvm_fail_percent: 100}
"""
POOLS = ("debian-12-x86_64", "debian-11-x86_64", "win-2022-x86_64")


@pytest.fixture
def dash(make_stack: Callable[[str], Harness]) -> Harness:
    return make_stack(CONFIG)


def raw_get(path: str) -> Reply:
    """A GET through the gateway without the JSON client's checks (the page is HTML)."""
    status, headers, body = Gateway(app.app)("GET", path, {}, b"", "127.0.0.1")
    return Reply(status, headers, body)


def tick(stack: Harness) -> None:
    """What the scheduler does each minute: one run of every pool's reconcile."""
    for pool in POOLS:
        run_pool(stack.services, pool, budget_seconds=0)


def test_root_redirects_to_the_dashboard_and_healthcheck_answers(dash: Harness) -> None:
    home = dash.get("/")
    assert home.status == 302 and home.headers["Location"] == "/dashboard/"
    health = dash.get("/healthcheck")
    assert (health.status, health.json) == (200, {"ok": True})
    assert dash.get("/healthcheck/").json == {"ok": True}
    # Served only unversioned, as vmpooler.
    assert dash.get("/api/v3/healthcheck").status == 404
    assert dash.get("/api/v1/dashboard/stats/vmpooler/pool").status == 404


@pytest.mark.parametrize("path", ["/dashboard", "/dashboard/"])
def test_dashboard_page_is_one_self_contained_document(dash: Harness, path: str) -> None:
    page = raw_get(path)
    assert page.status == 200
    assert page.headers["Content-Type"] == "text/html; charset=utf-8"
    assert "default-src 'none'" in page.headers["Content-Security-Policy"]
    text = page.raw.decode()
    # site_name as text: vmpooler's HTML tags dropped, the rest escaped, isolated (FSI..PDI).
    assert "<title>&#x2068;CI pools &amp; co&#x2069; dashboard</title>" in text
    assert "<b>CI</b>" not in text
    # Style and script inlined: nothing to fetch from anywhere, so it works offline.
    assert "<script src" not in text and "@import" not in text
    assert re.findall(r"<link[^>]*>", text) == ['<link rel="icon" href="data:,">']  # no file: below
    assert "/*SCRIPT*/" not in text and "function renderPools" in text
    assert "/*STYLE*/" not in text and ".pools" in text


def test_dashboard_headers_let_only_its_own_script_and_style_run(dash: Harness) -> None:
    """Should a caller's text ever reach the page as markup, the browser runs none of it: the
    policy names the page's one script and one stylesheet by hash (no 'unsafe-inline', which
    would run an injected ``<script>`` or ``onerror=``), and no other site may frame the page."""
    page = raw_get("/dashboard/")
    text = page.raw.decode()
    policy = dict(part.strip().split(" ", 1) for part in page.headers["Content-Security-Policy"].split(";"))
    assert "'unsafe-inline'" not in page.headers["Content-Security-Policy"]
    scripts = re.findall(r"<script>(.*?)</script>", text, re.S)
    styles = re.findall(r"<style>(.*?)</style>", text, re.S)
    assert len(scripts) == len(styles) == 1
    assert policy["script-src"] == sha256_source(scripts[0]) and policy["style-src"] == sha256_source(styles[0])
    assert policy["default-src"] == policy["base-uri"] == policy["frame-ancestors"] == "'none'"
    assert page.headers["X-Frame-Options"] == "DENY" and page.headers["X-Content-Type-Options"] == "nosniff"


def test_the_page_names_an_icon_its_policy_allows(dash: Harness) -> None:
    """A page that declares no icon has the browser ask /favicon.ico, which the page's policy
    (default-src 'none') refuses: an error in the console of every load. The page declares an
    empty data: icon, which its img-src allows, so nothing is asked and nothing refused."""
    page = raw_get("/dashboard/")
    policy = dict(part.strip().split(" ", 1) for part in page.headers["Content-Security-Policy"].split(";"))
    icons = re.findall(r'<link rel="icon" href="([^"]*)">', page.raw.decode())
    assert icons == ["data:,"] and "data:" in policy["img-src"].split()


def sha256_source(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


SCRIPT = "<script>document.title='pwned'</script>"


@pytest.mark.parametrize(("method", "path", "body"), [
    ("GET", "/api/v3/vm/%3Cscript%3Ealert(1)%3C%2Fscript%3E", b""),
    ("POST", "/api/v3/vm", json.dumps({SCRIPT: 1}).encode()),
    ("POST", "/api/v3/ondemandvm", json.dumps({SCRIPT: 1}).encode()),
    ("GET", "/dashboard/stats/history?hours=%3Cimg%20src%3Dx%20onerror%3Dalert(1)%3E", b""),
    ("GET", "/dashboard/%3Cscript%3E", b""),
])
def test_answers_echoing_hostile_input_are_json_never_html(dash: Harness, method: str, path: str,
                                                           body: bytes) -> None:
    status, headers, raw = Gateway(app.app)(method, path, {}, body, "127.0.0.1")
    assert status >= 400 and headers["Content-Type"] == "application/json"
    assert json.loads(raw)["ok"] is False


def root_event(context_path: str) -> dict[str, Any]:
    """API Gateway's event for GET / as the client sent it to ``context_path``."""
    return {"resource": "/", "path": "/", "httpMethod": "GET", "headers": {}, "multiValueHeaders": {},
            "queryStringParameters": None, "multiValueQueryStringParameters": None, "pathParameters": None,
            "stageVariables": None, "body": None, "isBase64Encoded": False,
            "requestContext": {"resourcePath": "/", "httpMethod": "GET", "requestId": "r1", "path": context_path,
                               "stage": "prod", "identity": {"sourceIp": "192.0.2.1"}}}


@pytest.mark.parametrize(("context_path", "location"), [
    ("/prod/", "/prod/dashboard/"),
    ("/", "/dashboard/"),
    # Not to another site (a protocol-relative Location), whatever path reaches the handler.
    ("//evil.example/", "/evil.example/dashboard/"),
    # A browser reads "/\\evil.example" as "//evil.example": escaped, it stays a path here.
    ("/\\evil.example/", "/%5Cevil.example/dashboard/"),
    ("/\\/evil.example/", "/%5C/evil.example/dashboard/"),
    # A line break in a header (Chalice's own 500 {"Code": "InternalServerError"}), a lone
    # surrogate, a path no API Gateway stage or base path has: never copied into the header.
    ("/prod\r\nSet-Cookie: a=b/", "/prod%0D%0ASet-Cookie%3A%20a%3Db/dashboard/"),
    ("/\udc80/", "/%ED%B2%80/dashboard/"),
    ("/" + "p" * 1_000_000 + "/", "/dashboard/"),
], ids=["stage", "none", "two-slashes", "backslash", "backslash-slash", "line-break", "lone-surrogate",
        "million-characters"])
def test_root_redirect_keeps_the_api_gateway_stage(dash: Harness, context_path: str, location: str) -> None:
    response = app.app(root_event(context_path), None)
    assert response["statusCode"] == 302, response
    assert response["headers"]["Location"] == location


def test_vmpooler_pool_feed_in_its_shape_with_history(dash: Harness) -> None:
    tick(dash)
    feed = dash.get("/dashboard/stats/vmpooler/pool").json
    # Instant dummy clones: filled by the first pass (manager/rounds.py); win-2022's clones fail.
    assert feed == {
        "debian-12-x86_64": {"size": 3, "ready": 3},
        "debian-11-x86_64": {"size": 2, "ready": 2},
        "win-2022-x86_64": {"size": 1, "ready": 0},
    }
    for _ in range(3):
        dash.clock.advance(60)
        tick(dash)
    feed = dash.get("/dashboard/stats/vmpooler/pool?history=true").json
    # One sample a minute, oldest first.
    assert feed["debian-12-x86_64"] == {"size": 3, "ready": 3, "history": [3, 3, 3, 3]}
    assert feed["win-2022-x86_64"] == {"size": 1, "ready": 0, "history": [0, 0, 0, 0]}
    assert "history" not in dash.get("/dashboard/stats/vmpooler/pool?history=false").json["win-2022-x86_64"]


def test_vmpooler_pool_feed_without_samples_has_the_ready_count_as_history(dash: Harness) -> None:
    dash.fill("debian-12-x86_64")
    feed = dash.get("/dashboard/stats/vmpooler/pool?history=1").json
    assert feed["debian-12-x86_64"]["history"] == [3]


def test_vmpooler_running_feed_groups_pools_by_platform(dash: Harness) -> None:
    for _ in range(2):
        tick(dash)
        dash.clock.advance(60)
    dash.post("/api/v3/vm", {"debian-12-x86_64": 2, "debian-11-x86_64": 1})
    assert dash.get("/dashboard/stats/vmpooler/running").json == {
        "debian": {"running": 3}, "win": {"running": 0}}
    tick(dash)
    feed = dash.get("/dashboard/stats/vmpooler/running?history=true").json
    assert feed["debian"]["running"] == 3
    assert len(feed["debian"]["history"]) == 60 and feed["debian"]["history"][-3:] == [0, 0, 3]
    assert feed["win"]["history"] == [0] * 60


def test_history_series_from_the_reconciles_samples(dash: Harness) -> None:
    start = dash.clock.now()
    tick(dash)
    dash.clock.advance(60)
    tick(dash)
    dash.post("/api/v3/vm", {"debian": 1})
    dash.clock.advance(120)  # a minute without a pass, then one
    tick(dash)
    answer = dash.get("/dashboard/stats/history").json
    assert answer["step"] == 60 and answer["points"] == 60
    assert answer["start"] == (minute_of(dash.clock.now()) - 59) * 60
    debian = answer["pools"]["debian-12-x86_64"]
    # null before the first sample, the minute without a pass carries the one before it.
    # Instant clones: full from the first pass, the checked-out VM replaced by the pass after it.
    assert debian["ready"][-5:] == [None, 3, 3, 3, 3]
    assert debian["running"][-4:] == [0, 0, 0, 1]
    assert debian["size"][-1] == 3
    assert answer["pools"]["win-2022-x86_64"]["ready"][-1] == 0
    # A week fits in at most 360 points.
    week = dash.get("/dashboard/stats/history?hours=168").json
    assert week["points"] == 360 and week["step"] == 28 * 60
    assert week["pools"]["debian-12-x86_64"]["ready"][-1] == 3
    assert minute_of(start) >= week["start"] // 60


def test_a_week_sampled_every_minute_is_each_steps_last_sample_and_only_those_are_read(dash: Harness) -> None:
    """The 7 d button over a pool sampled every minute. Before, Redis sent the week's 10,080
    samples of each pool: at 1,000 pools, 10 million, read into a 512 MB Lambda past its 29 s."""
    now = minute_of(dash.clock.now())
    dash.client.zadd(dash.services.store.keys.history("debian-12-x86_64"),
                     {Sample(m, m % 97, 0, 0, 3).member(): m for m in range(now - KEEP_MINUTES + 1, now + 1)})
    sent_before = dash.client.info("stats")["total_net_output_bytes"]

    week = dash.get("/dashboard/stats/history?hours=168").json

    sent = dash.client.info("stats")["total_net_output_bytes"] - sent_before
    first, step = week["start"] // 60, week["step"] // 60
    assert week["pools"]["debian-12-x86_64"]["ready"] == [
        (first + (point + 1) * step - 1) % 97 for point in range(week["points"])]
    assert sent < 40_000  # the 360 samples shown (the week's 10,080 are about 250 KB)


def test_a_week_of_1000_pools_fits_in_one_lambda_answer(make_stack: Callable[[str], Harness]) -> None:
    """At 360 points a week of 1,000 pools was 7.2 MB of JSON even without a sample: past the 6 MB
    Lambda can answer, so API Gateway said 502. Fewer points now, the week still covered."""
    pools = "\n".join(f"  - {{name: pool-{n:04d}, size: 1, provider: dummy}}" for n in range(1000))
    stack = make_stack(":providers:\n  :dummy: {}\n:pools:\n" + pools)

    reply = stack.get("/dashboard/stats/history?hours=168")

    assert reply.status == 200 and len(reply.json["pools"]) == 1000
    assert len(json.dumps({"statusCode": 200, "body": reply.raw.decode()})) < 6 * 1024 * 1024
    assert reply.json["points"] * reply.json["step"] >= 168 * 3600


@pytest.mark.parametrize("hours", ["0", "169", "x", "1.5", "-1", "9" * 1000,
                                   pytest.param("1" * 5000, id="5000-digits"), "\u00b2", "%C2%B2", "\u0661"])
def test_history_range_is_bounded(dash: Harness, hours: str) -> None:
    before = dash.redis_state()
    reply = dash.get(f"/dashboard/stats/history?hours={hours}")
    assert reply.status == 400 and "hours" in reply.json["error"]
    assert dash.redis_state() == before


def test_samples_are_one_a_minute_and_kept_a_week(dash: Harness) -> None:
    key = dash.services.store.keys.history("debian-12-x86_64")
    tick(dash)
    tick(dash)
    dash.clock.advance(10)
    tick(dash)  # same minute: one sample, the latest
    assert dash.client.zcard(key) == 1
    assert 0 < dash.client.ttl(key) <= KEEP_MINUTES * 60
    history = PoolHistory(dash.services.store)
    now = minute_of(dash.clock.now())
    history.record("debian-12-x86_64", Sample(now + KEEP_MINUTES + 1, 1, 1, 1, 3))
    assert dash.client.zcard(key) == 1  # the week-old sample is gone
