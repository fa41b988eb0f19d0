"""The dashboard updates itself: headless Chromium loads the page once from the app served
in-process over HTTP, the pools change after its first poll, and the rendered DOM shows the
change with no second page load."""

from __future__ import annotations

import re
import threading
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

import app
from chalicelib.store import DurationSample
from chalicelib.store.history import PoolHistory, Sample, minute_of
from chalicelib.timestamps import day_of
from tests.api.test_dashboard import CONFIG, POOLS, tick
from tests.core.test_dashboard_browser import PoolRows, chromium
from tests.harness import Harness
from tests.in_process_http import make_server, serving
from tests.support import eventually
from tools.cdp import BrowserPage


class OneAtATime:
    """The gateway, serialised (one Chalice app must not serve two requests at once), counting
    page loads and status polls, and running ``on_second_poll`` before the page's second poll."""

    def __init__(self, gateway: Any, on_second_poll: Callable[[], None]) -> None:
        self.gateway = gateway
        self.on_second_poll = on_second_poll
        self.lock = threading.Lock()
        self.page_loads = 0
        self.status_polls = 0

    def __call__(self, method: str, target: str, *args: Any) -> Any:
        with self.lock:
            if target.startswith("/dashboard") and "/stats/" not in target:
                self.page_loads += 1
            if target.startswith("/api/v3/status"):
                self.status_polls += 1
                if self.status_polls == 2:
                    self.on_second_poll()
            return self.gateway(method, target, *args)


def checkout_then_wait(stack: Harness) -> None:
    """A checkout, and the page's 5 s to its next poll on the service's clock (Chromium's virtual
    time does not move it): the page accepts a /status up to 4 s old (api/feed_cache.py)."""
    stack.post("/api/v3/vm", {"debian": 2})
    stack.clock.advance(5)


@pytest.fixture
def served(make_stack: Callable[[str], Harness]) -> Iterator[tuple[Harness, str, OneAtATime]]:
    stack = make_stack(CONFIG)
    for _ in range(3):
        tick(stack)
        stack.clock.advance(60)
    server = make_server(app.app, "127.0.0.1", 0)  # a port the kernel picks: nothing can take it first
    port = server.server_port
    handler = server.RequestHandlerClass
    counting = OneAtATime(handler.gateway, lambda: checkout_then_wait(stack))  # type: ignore[attr-defined]
    handler.gateway = counting  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    thread.start()
    try:
        yield stack, f"http://127.0.0.1:{port}", counting
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@pytest.mark.slow
def test_the_page_polls_and_redraws_without_a_reload(served: tuple[Harness, str, OneAtATime], tmp_path: Path) -> None:
    stack, base, counting = served
    before = stack.get("/api/v3/status?view=pools").json["pools"]["debian-12-x86_64"]
    assert before["running"] == 0 and before["ready"] == 3
    # 12 s of the page's time: its first status poll, then two more 5 s apart.
    dom = chromium(f"{base}/dashboard/", tmp_path / "profile", "--dump-dom", budget_ms=12000)
    assert counting.page_loads == 1 and counting.status_polls >= 2
    page = PoolRows()
    page.feed(dom)
    assert set(page.rows) == set(POOLS)
    debian = page.rows["debian-12-x86_64"]
    # The checkout made between its polls is on the page: two running, one ready.
    assert (debian["running"], debian["ready"], debian["size"]) == (2, 1, 3)


class Recording:
    """The gateway, serialised, keeping the target and body of each answer it gives."""

    def __init__(self, gateway: Any) -> None:
        self.gateway = gateway
        self.lock = threading.Lock()
        self.answers: list[tuple[str, bytes]] = []

    def __call__(self, method: str, target: str, *args: Any) -> Any:
        with self.lock:
            status, headers, body = self.gateway(method, target, *args)
            self.answers.append((target, body))
            return status, headers, body


@pytest.mark.slow
def test_the_page_downloads_no_tags_while_a_day_is_full_of_them(make_stack: Callable[[str], Harness],
                                                               tmp_path: Path) -> None:
    """The page showed each pool's clone and boot times from all of /summary, polled every
    minute: today's tag counts came with it, which anyone may fill (tagging needs no token) to
    about 1.7 MB a poll per open page. It asks for /summary/clone and /summary/boot now."""
    stack = make_stack(CONFIG)
    today = day_of(stack.clock.now())
    stack.store.record_durations(today, [DurationSample("clone", "debian-12-x86_64", 42.0),
                                         DurationSample("boot", "debian-12-x86_64", 7.5)])
    service = stack.config.service
    marker = "v" * 200
    for value in range(service.max_tag_values_per_day):
        tags = {f"n{name:02d}": f"{value:03d}{marker}" for name in range(service.max_tag_names_per_day)}
        stack.store.record_tags(today, tags, service.max_tag_names_per_day, service.max_tag_values_per_day)
    with serving(app.app, Recording) as (base, recording):
        dom = chromium(f"{base}/dashboard/", tmp_path / "profile", "--dump-dom")

    page = PoolRows()
    page.feed(dom)
    assert (page.rows["debian-12-x86_64"]["clone"], page.rows["debian-12-x86_64"]["boot"]) == ("42 s", "7.5 s")
    summaries = [target for target, _ in recording.answers if "/summary" in target]
    assert summaries and all(target.split("?")[0].endswith(("/summary/clone", "/summary/boot")) for target in summaries)
    fetched = b"".join(body for _, body in recording.answers)
    assert marker.encode() not in fetched
    assert all(len(body) < 100_000 for target, body in recording.answers if not target.startswith("/dashboard/"))


class Answering:
    """The gateway, serialised, noting each answer's target, request headers and status;
    ``refuse`` answers /api/v3/status itself with that status (and a Retry-After of 30 s)."""

    def __init__(self, gateway: Any, refuse: int | None = None) -> None:
        self.gateway = gateway
        self.refuse = refuse
        self.lock = threading.Lock()
        self.answers: list[tuple[str, dict[str, str], int]] = []

    def __call__(self, method: str, target: str, headers: dict[str, str], *args: Any) -> Any:
        with self.lock:
            if self.refuse and target.startswith("/api/v3/status"):
                answer = (self.refuse, {"Content-Type": "application/json", "Retry-After": "30"},
                          b'{"ok":false,"error":"busy"}')
            else:
                answer = self.gateway(method, target, headers, *args)
            self.answers.append((target, {k.lower(): v for k, v in headers.items()}, answer[0]))
            return answer

    def of(self, prefix: str) -> list[tuple[dict[str, str], int]]:
        return [(headers, status) for target, headers, status in self.answers if target.startswith(prefix)]


def answering(refuse: int | None = None) -> Any:
    """The app served in-process, its answers noted (``Answering``)."""
    return serving(app.app, lambda gateway: Answering(gateway, refuse))


def live_badge(dom: str) -> str:
    found = re.search(r'<span id="live"[^>]*><i></i><b(?: title="[^"]*")?>([^<]*)</b>', dom)
    assert found, dom[:2000]
    return found.group(1)


@pytest.mark.slow
def test_the_page_asks_with_its_etag_and_keeps_what_it_has_on_a_304(make_stack: Callable[[str], Harness],
                                                                   tmp_path: Path) -> None:
    """Nothing changed between polls: each poll after the first names the answer the page holds
    and gets 304 with no body; the page still shows every pool and says it is live."""
    stack = make_stack(CONFIG)
    tick(stack)
    with answering() as (base, noting):
        dom = chromium(f"{base}/dashboard/", tmp_path / "profile", "--dump-dom", budget_ms=12000)
    polls = noting.of("/api/v3/status")
    assert len(polls) >= 2 and "if-none-match" not in polls[0][0]
    assert all(headers["if-none-match"] and status == 304 for headers, status in polls[1:]), polls
    page = PoolRows()
    page.feed(dom)
    assert set(page.rows) == set(POOLS) and live_badge(dom).startswith("live, updated")


@pytest.mark.slow
@pytest.mark.parametrize("refused", [429, 503])
def test_the_page_backs_off_when_the_api_is_busy_and_says_so(make_stack: Callable[[str], Harness],
                                                            tmp_path: Path, refused: int) -> None:
    """Before, every open page asked /status every 5 s whatever the answer: an API shedding load
    (429, or 503 with Retry-After while Redis is away) got the same polls from every page. Now a
    page waits the Retry-After (30 s) before asking again, and its badge tells why it has no data."""
    make_stack(CONFIG)  # the app serves this stack
    with answering(refuse=refused) as (base, noting):
        dom = chromium(f"{base}/dashboard/", tmp_path / "profile", "--dump-dom", budget_ms=25000)
    assert len(noting.of("/api/v3/status")) == 1, noting.of("/api/v3/status")
    assert live_badge(dom) == f"no data: the API answered {refused}: \u2068busy\u2069"  # its words, isolated


HIDDEN_TAB = """
window.pageFetches = 0;
window.pageHidden = true;
Object.defineProperty(Document.prototype, "hidden", {configurable: true,
  get: function () { return window.pageHidden; }});
Object.defineProperty(Document.prototype, "visibilityState", {configurable: true,
  get: function () { return window.pageHidden ? "hidden" : "visible"; }});
var realFetch = window.fetch;
window.fetch = function () { window.pageFetches += 1; return realFetch.apply(this, arguments); };
"""
"""A tab in the background (the Page Visibility API says hidden until ``pageHidden`` is false),
and a count of the page's fetches."""


@pytest.mark.slow
def test_a_hidden_page_asks_nothing_until_it_is_shown(make_stack: Callable[[str], Harness], tmp_path: Path) -> None:
    stack = make_stack(CONFIG)
    tick(stack)
    with answering() as (base, noting):
        page = BrowserPage(tmp_path / "profile")
        try:
            page.call("Page.enable")
            page.call("Page.addScriptToEvaluateOnNewDocument", source=HIDDEN_TAB)
            page.call("Page.navigate", url=f"{base}/dashboard/")
            eventually(lambda: page.evaluate("document.readyState") == "complete", 30, "the page to load")
            # Its polls came due as the script ran: none asked while the tab is hidden.
            assert page.evaluate("window.pageFetches") == 0 and noting.of("/api/") == []
            page.evaluate("window.pageHidden = false; document.dispatchEvent(new Event('visibilitychange'))")
            eventually(lambda: page.evaluate("document.querySelectorAll('tr.pool').length") == len(POOLS), 30,
                       "the rows once the tab is shown")
        finally:
            page.close()
    assert len(noting.of("/api/v3/status")) >= 1 and len(noting.of("/dashboard/stats/history")) == 1


class HoldingFirstHour:
    """The gateway with the page's first hour of history held until ``release`` is set (a slow
    answer: 0.7 s at 1,000 pools), every other request served at once."""

    def __init__(self, gateway: Any) -> None:
        self.gateway = gateway
        self.release = threading.Event()
        self.held = threading.Event()

    def __call__(self, method: str, target: str, *args: Any) -> Any:
        if target.endswith("/stats/history?hours=1") and not self.held.is_set():
            self.held.set()
            self.release.wait(60)
        return self.gateway(method, target, *args)


@pytest.mark.slow
def test_a_range_clicked_while_the_last_ones_history_is_on_its_way_is_the_one_drawn(
        make_stack: Callable[[str], Harness], tmp_path: Path) -> None:
    """Before, whichever history answer came last was drawn: the hour asked at load, answered
    after the 6 h the user clicked meanwhile, replaced the 6 h graph under the "6 h" button."""
    stack = make_stack(CONFIG)
    now = minute_of(stack.clock.now())
    for minute in range(now - 400, now + 1):
        PoolHistory(stack.store).record("debian-12-x86_64", Sample(minute, 2, 1, 0, 3))
    with serving(app.app, HoldingFirstHour) as (base, holding):
        page = BrowserPage(tmp_path / "profile")
        try:
            page.call("Page.enable")
            page.call("Page.navigate", url=f"{base}/dashboard/")
            eventually(holding.held.is_set, 30, "the page to ask the hour's history")
            eventually(lambda: page.evaluate("document.readyState") == "complete", 30, "the page to load")
            page.evaluate("document.querySelector('.range button[data-hours=\"6\"]').click()")
            points = "(document.querySelector('#totals-graph polyline.size') || {dataset: {}}).dataset.points"
            eventually(lambda: page.evaluate(points) == "360", 30, "the 6 h graph")
            holding.release.set()
            eventually(lambda: page.evaluate("window.performance.getEntriesByType('resource').filter("
                                             "function (e) { return /hours=1$/.test(e.name); }).length") == 1,
                       30, "the hour's answer to arrive")
            page.evaluate("new Promise(function (done) { setTimeout(done, 200); })")  # its handlers have run
            assert page.evaluate(points) == "360"
        finally:
            holding.release.set()
            page.close()
