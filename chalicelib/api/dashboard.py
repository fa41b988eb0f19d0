"""The web dashboard and the routes around it: ``/`` (a redirect to it), ``/healthcheck``, the
page itself, vmpooler's JSON feeds, and the history the page draws its graphs from.

The page is plain HTML, CSS and JavaScript packaged in ``chalicelib/dashboard/`` (no build step,
nothing fetched from elsewhere, so it works offline) and served as one document: behind API
Gateway the page may sit under a stage prefix, and one document has no asset paths to get wrong.
It polls ``/api/v3/status``, ``/api/v3/summary/clone``, ``/api/v3/summary/boot`` (never all of
``/summary``: its tag counts are the page's to ignore) and ``/dashboard/stats/history`` for live numbers.
"""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path
from typing import Any
from urllib.parse import quote

from chalicelib.answer_sizes import (
    FEED_MINUTES,
    HISTORY_FIELDS,
    MAX_POINTS,
    history_bytes,
    major,
)
from chalicelib.api.http import ANSWER_BUDGET_BYTES, ApiRequest, ApiResponse, bad_request, ok, whole_number
from chalicelib.services import Services
from chalicelib.sizing.controller import current_sizes
from chalicelib.store.history import PoolHistory, Sample, minute_of

STATIC_DIR = Path(__file__).resolve().parents[1] / "dashboard"
MAX_HISTORY_HOURS = 7 * 24
PAGE_HEADERS = {
    "Content-Type": "text/html; charset=utf-8",
    "Cache-Control": "no-cache",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
}
"""The page's headers but its Content-Security-Policy (``_page_policy``: it names the inline
script and stylesheet by their hashes)."""
TAG = re.compile(r"<[^>]*>")
ISOLATE_MARKS = re.compile("[\u2066-\u2069]")
"""Bidi isolate marks: the page isolates the site name (``<bdi>``, FSI..PDI in the title); one
of its own would end the isolate early and let a right-to-left override reach " dashboard"."""


def _csp_hash(text: str) -> str:
    """A CSP source naming exactly the inline element whose content is ``text``."""
    import base64
    import hashlib

    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


@lru_cache(maxsize=1)
def _template() -> tuple[str, str]:
    """The page with its stylesheet and script inlined, and the Content-Security-Policy that lets
    only those two run (read once per process). Hashes, not 'unsafe-inline': should anything a
    caller wrote ever reach the page as markup, the browser still runs no script of it (an inline
    ``<script>``, an ``onerror=`` attribute) and applies no stylesheet of it."""
    style, script = (STATIC_DIR / "dashboard.css").read_text(), (STATIC_DIR / "dashboard.js").read_text()
    page = (STATIC_DIR / "index.html").read_text().replace("/*STYLE*/", style).replace("/*SCRIPT*/", script)
    # Everything the page needs is in the page; it only talks back to this API.
    policy = (f"default-src 'none'; script-src {_csp_hash(script)}; style-src {_csp_hash(style)}; img-src data:; "
              "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'; "
              "require-trusted-types-for 'script'; trusted-types 'none'")
    return page, policy


MAX_STAGE_PATH_CHARS = 1024
"""Longer than any stage and base path API Gateway puts before ``/`` (names of 128 characters)."""


def home(services: Services, request: ApiRequest) -> ApiResponse:
    """GET /: to the dashboard, as vmpooler. Under the stage the client used (``/prod/``): API
    Gateway's request context has it, the routed path does not. Its leading slashes collapsed: a
    Location of ``//host/dashboard/`` would send the browser to another site. Percent-encoded
    but its slashes: a browser reads ``/\\host`` as ``//host`` too, and a line break in a header
    was Chalice's own 500. A context path no API Gateway sends (longer than any stage) is left out."""
    stage = request.context_path.strip("/")
    if len(stage) > MAX_STAGE_PATH_CHARS:
        stage = ""
    prefix = "/" + quote(stage.encode("utf-8", "surrogatepass"), safe="/") if stage else ""
    return ApiResponse(302, {"ok": True}, {"Location": prefix + "/dashboard/"})


def healthcheck(services: Services, request: ApiRequest) -> ApiResponse:
    """GET /healthcheck: the API answers (it touches nothing else, as vmpooler's)."""
    return ok()


def page_html(site_name: str) -> tuple[str, str]:
    """The page titled with ``site_name`` and its Content-Security-Policy. The name as text
    (vmpooler's default held HTML tags, which are dropped here), bidi-isolated wherever it shows:
    a right-to-left override in it reversed " dashboard" in the browser tab's title."""
    import html  # here: its entity table costs every cold start ~2 ms, and only this page escapes

    shown = ISOLATE_MARKS.sub("", TAG.sub("", site_name)).strip()
    template, policy = _template()
    return template.replace("{{site_name}}", html.escape(shown or "vmpool")), policy


def page(services: Services, request: ApiRequest) -> ApiResponse:
    """GET /dashboard/: the page, titled with ``site_name`` (``page_html``)."""
    text, policy = page_html(services.config.service.site_name)
    return ApiResponse(200, text, {**PAGE_HEADERS, "Content-Security-Policy": policy})


def _wants_history(request: ApiRequest) -> bool:
    return request.query.get("history", "").lower() not in ("", "false", "0", "no")


def _last_hour(services: Services) -> dict[str, list[Sample | None]]:
    """Every pool's sample of each minute of the last hour (carried forward; None before any)."""
    first = minute_of(services.clock.now()) - FEED_MINUTES + 1
    return PoolHistory(services.store).series(services.config.pool_names, first, FEED_MINUTES, 1)


def vmpooler_pool(services: Services, request: ApiRequest) -> ApiResponse:
    """GET /dashboard/stats/vmpooler/pool[?history=true]: ``{pool: {size, ready, history?}}``,
    the history being the ready count of each minute of the last hour, oldest first."""
    pools = services.pools()
    counts = services.store.counts(p.name for p in pools)
    sizes = current_sizes(services.store, pools, services.clock.now(), services.config.service.sizing_timezone)
    body: dict[str, Any] = {p.name: {"size": sizes[p.name].size, "ready": counts[p.name]["ready"]} for p in pools}
    if _wants_history(request):
        samples = _last_hour(services)
        for pool in pools:
            points = [s.ready for s in samples[pool.name] if s is not None]
            body[pool.name]["history"] = points or [counts[pool.name]["ready"]]
    return ApiResponse(200, body)


def vmpooler_running(services: Services, request: ApiRequest) -> ApiResponse:
    """GET /dashboard/stats/vmpooler/running[?history=true]: ``{major: {running, history?}}``."""
    names = services.config.pool_names
    counts = services.store.counts(names)
    body: dict[str, Any] = {}
    for name in names:
        entry = body.setdefault(major(name), {"running": 0})
        entry["running"] += counts[name]["running"]
    if _wants_history(request):
        samples = _last_hour(services)
        for name in names:
            points = samples[name]
            history = body[major(name)].setdefault("history", [0] * FEED_MINUTES)
            for index, sample in enumerate(points):
                history[index] += sample.running if sample else 0
    return ApiResponse(200, body)


def _hours(request: ApiRequest) -> int:
    # whole_number: ASCII digits only, judged by length past 18 ("²" is a digit to str.isdigit
    # and no number to int(), and int() refuses more than 4,300 digits: both were 500s).
    hours = whole_number(request.query.get("hours") or "1")
    if hours is None or not 1 <= hours <= MAX_HISTORY_HOURS:
        raise bad_request(f"hours must be a whole number from 1 to {MAX_HISTORY_HOURS}")
    return hours


def most_points(services: Services) -> int:
    """Points per series of the history: MAX_POINTS, fewer when every pool's series would not fit
    ANSWER_BUDGET_BYTES as Lambda sends them (a week of 1,000 pools at 360 points is 8.6 MB, past
    Lambda's 6): the pools' names and keys are counted (chalicelib/answer_sizes.py), then each
    point at its widest. One point always fits one answer (the config's check)."""
    pools = services.config.pools
    fixed = history_bytes(pools, 0)
    per_point = history_bytes(pools[:1], 2) - history_bytes(pools[:1], 1)  # with its comma
    return max(1, min(MAX_POINTS, (ANSWER_BUDGET_BYTES - fixed) // max(len(pools) * per_point, 1)))


def history(services: Services, request: ApiRequest) -> ApiResponse:
    """GET /dashboard/stats/history?hours=1..168: each pool's ready, running, pending and size
    over the last hours, at most ``most_points`` points per series (null before the first
    sample); ``step`` says how far apart they are."""
    minutes = _hours(request) * 60
    step = max(1, -(-minutes // most_points(services)))
    points = -(-minutes // step)
    last = minute_of(services.clock.now())
    first = last - points * step + 1
    picked = PoolHistory(services.store).series(services.config.pool_names, first, points, step)
    pools: dict[str, Any] = {name: {field: [getattr(s, field) if s else None for s in samples]
                                    for field in HISTORY_FIELDS}
                             for name, samples in picked.items()}
    return ok(start=first * 60, step=step * 60, points=points, pools=pools)
