"""The dashboard when its feeds fail, in headless Chromium: a 200 whose body cannot be drawn shows
as a problem, not as "live", and a page that lost the API asks again within a minute, each page
at its own moment (jitter), however long the API was gone.

The page's feeds are answered by a small server the test changes at will
(tests/core/dashboard_feeds.py), with ETags as the API sends them. The page's
timers run at once (``setTimeout`` shortened before its script runs), each delay it asked for
recorded: the back-off is read, not waited for."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import pytest

from tests.core.dashboard_feeds import FeedServer
from tests.support import eventually
from tools.cdp import BrowserPage

POOLS = ("debian-12", "centos-9")
GOOD: dict[str, Any] = {
    "/api/v3/status": {"capacity": {"current": 3, "total": 4, "percent": 75}, "queue": {"pending": 1},
                       "status": {"ok": True, "message": "Battle station fully armed and operational."},
                       "pools": {name: {"ready": 2, "running": 0, "pending": 0, "max": 2, "lastBoot": "",
                                        "size_reason": "config"} for name in POOLS}},
    "/api/v3/summary/clone": {"clone": {"duration": {"pool": {}}}},
    "/api/v3/summary/boot": {"boot": {"duration": {"pool": {}}}},
    "/dashboard/stats/history": {"start": 0, "step": 60, "points": 2,
                                 "pools": {name: {"ready": [2, 2], "running": [0, 0], "pending": [0, 0],
                                                  "size": [2, 2]} for name in POOLS}},
}
TIMERS_AT_ONCE = """
window.askedDelays = [];
var realSetTimeout = window.setTimeout;
window.setTimeout = function (run, delay) {
  window.askedDelays.push(delay);
  return realSetTimeout(run, 20);
};
"""
MAX_BACKOFF_MS = 60_000


@pytest.fixture
def feeds() -> Iterator[FeedServer]:
    """The page's API, answering GOOD."""
    with FeedServer(GOOD) as server:
        yield server


@pytest.fixture
def page(feeds: FeedServer, tmp_path: Path) -> Iterator[BrowserPage]:
    """The dashboard, its feeds answering GOOD, loaded and live."""
    browser = BrowserPage(tmp_path / "profile")
    try:
        browser.call("Page.enable")
        browser.call("Page.addScriptToEvaluateOnNewDocument", source=TIMERS_AT_ONCE)
        browser.call("Page.navigate", url=feeds.page_url)
        eventually(lambda: badge(browser)[0] == "live ok", 60, "the page to be live")
        yield browser
    finally:
        browser.close()


def badge(page: BrowserPage) -> tuple[str, str]:
    """The live badge's class and text."""
    return tuple(page.evaluate("(function (b) { return b ? [b.className, b.textContent] : ['', '']; })"
                               "(document.getElementById('live'))"))


def rows(page: BrowserPage) -> list[str]:
    return list(page.evaluate("Array.prototype.map.call(document.querySelectorAll('tr.pool'), "
                              "function (tr) { return tr.dataset.pool; })"))


@pytest.mark.parametrize("body", [None, [], {"pools": "none"}, {"status": {"ok": True}},
                                  b"<html>502 Bad Gateway</html>"],
                         ids=["null", "array", "pools-not-an-object", "no-pools", "not-json"])
def test_a_status_answer_that_cannot_be_drawn_shows_as_a_problem_not_live(feeds: FeedServer, page: BrowserPage,
                                                                          body: Any) -> None:
    """Before: ``null``, ``[]`` or an object without its pools was a 200, drawn as nothing (or
    thrown half way), and the badge said "live, updated <now>" at every poll; a 200 that was no
    JSON said "the API is unreachable"."""
    assert sorted(rows(page)) == sorted(POOLS)
    feeds.answer("/api/v3/status", body)
    eventually(lambda: badge(page)[0] == "live stale", 60, "the badge to say the answers are not drawn")
    assert "the API's answer could not be drawn" in badge(page)[1]
    # Every later poll says so too: the bad answer is not kept and taken back as unchanged (304).
    polls = page.evaluate("askedDelays.length")
    eventually(lambda: page.evaluate("askedDelays.length") > polls + 6, 60, "more polls")
    assert badge(page)[0] == "live stale"
    assert sorted(rows(page)) == sorted(POOLS), "the last answer drawn stays on the page"
    feeds.answer("/api/v3/status", GOOD["/api/v3/status"])
    eventually(lambda: badge(page)[0] == "live ok", 60, "the page to be live again")


def test_a_page_that_lost_the_api_asks_again_within_a_minute_each_at_its_own_moment(feeds: FeedServer,
                                                                                    page: BrowserPage) -> None:
    """Before: waits doubled up to 5 minutes, the same on every page (10, 20, 40, 80, 160, 300 s
    for /status): a page came back up to 5 minutes after the API did, and every page open when
    the API failed asked again in the same second."""
    for path in GOOD:
        feeds.answer(path, {"ok": False}, status=503)
    page.evaluate("askedDelays.length = 0")
    eventually(lambda: page.evaluate("askedDelays.length") >= 60, 120, "the page's polls to fail many times")
    delays = [float(delay) for delay in page.evaluate("askedDelays")]
    assert max(delays) <= MAX_BACKOFF_MS, sorted(delays)[-5:]
    # Long failing, each poll's wait is drawn between half the cap and the cap, not the cap itself.
    capped = [delay for delay in delays if delay >= MAX_BACKOFF_MS / 2]
    assert len(capped) >= 10, delays
    assert len(set(capped)) > len(capped) // 2, "the waits at the cap are jittered"
    assert badge(page)[0] == "live stale" and "the API answered 503" in badge(page)[1]


@pytest.mark.parametrize(("paths", "shown"), [
    (["/dashboard/stats/history"], "the graphs"),
    (["/api/v3/summary/clone"], "the clone and boot times"),
    (["/api/v3/summary/boot"], "the clone and boot times"),
], ids=["history", "summary-clone", "summary-boot"])
def test_a_failing_history_or_summary_feed_makes_the_badge_stale_not_live(feeds: FeedServer, page: BrowserPage,
                                                                        paths: list[str], shown: str) -> None:
    """Before: the badge followed /status alone. With the history or the summaries failing (Redis
    down behind them, a 503) the graphs and the clone and boot times stayed as they last were
    while the badge said "live, updated <now>" at every status poll."""
    for path in paths:
        feeds.answer(path, {"ok": False}, status=503)
    eventually(lambda: badge(page)[0] == "live stale", 60, "the badge to say part of the page is stale")
    text = badge(page)[1]
    assert text.startswith("partly stale: ") and shown in text and "the API answered 503" in text, text
    # /status answering on does not make it "live" again while that feed fails.
    polls = page.evaluate("askedDelays.length")
    eventually(lambda: page.evaluate("askedDelays.length") > polls + 6, 60, "more polls")
    assert badge(page)[0] == "live stale", badge(page)
    assert sorted(rows(page)) == sorted(POOLS), "the pools table stays drawn"
    for path in paths:
        feeds.answer(path, GOOD[path])
    eventually(lambda: badge(page)[0] == "live ok", 60, "the page to be live again")


def health(page: BrowserPage) -> tuple[str, str]:
    """The pools' badge's class and text."""
    return tuple(page.evaluate("(function (b) { return [b.className, b.textContent]; })"
                               "(document.getElementById('health'))"))


def test_the_pools_badge_is_greyed_while_the_status_it_shows_is_stale(feeds: FeedServer, page: BrowserPage) -> None:
    """Before: with /status failing (Redis down behind it, a 503) the pools' badge stayed green,
    "all pools ready", however old the state it showed."""
    colour = "getComputedStyle(document.getElementById('health')).color"
    eventually(lambda: health(page) == ("badge ok", "all pools ready"), 60, "the pools' badge")
    green = page.evaluate(colour)
    feeds.answer("/api/v3/status", {"ok": False}, status=503)
    eventually(lambda: "stale" in health(page)[0].split(), 60, "the pools' badge to be greyed")
    assert page.evaluate(colour) != green
    feeds.answer("/api/v3/status", GOOD["/api/v3/status"])
    eventually(lambda: health(page) == ("badge ok", "all pools ready"), 60, "the pools' badge green again")


DEADLINE_SOON = """
var realTimeout = AbortSignal.timeout;
AbortSignal.timeout = function (delay) { return realTimeout.call(AbortSignal, Math.min(delay, 1000)); };
var realSetTimeout = window.setTimeout;
window.setTimeout = function (run, delay) { return realSetTimeout(run, 20); };
"""
"""The page's wait for an answer cut to a second and its other timers run at once: the waits
are read from the badge, not waited for."""


def test_a_poll_whose_answer_never_comes_is_given_up_and_asked_again(tmp_path: Path) -> None:
    """Before: a poll waited for its answer as long as the browser did, which on a connection
    gone dead without a word (a VPN or NAT dropping it, a laptop waking) is until TCP gives up,
    some 15 minutes: that feed asked nothing more, and the badge said "connecting" (or "stale"
    with no reason) while the API answered everyone else. Now a poll gives up after 30 s (API
    Gateway answers within 29 s), says so, and the page asks again on its back-off."""
    with FeedServer(GOOD) as feeds:
        feeds.hold("/api/v3/status")
        browser = BrowserPage(tmp_path / "profile")
        try:
            browser.call("Page.enable")
            browser.call("Page.addScriptToEvaluateOnNewDocument", source=DEADLINE_SOON)
            browser.call("Page.navigate", url=feeds.page_url)
            eventually(lambda: badge(browser) == ("live stale", "no data: no answer from the API within 30 s"), 60,
                       "the badge to say the API does not answer")
            eventually(lambda: feeds.held["/api/v3/status"] >= 3, 60, "the page to ask again")
            feeds.release()
            eventually(lambda: badge(browser)[0] == "live ok", 60, "the page to be live")
            assert sorted(rows(browser)) == sorted(POOLS)
        finally:
            browser.close()


BACK_OFF_PARKED = """
window.parkedDelays = [];
var realSetTimeout = window.setTimeout;
window.setTimeout = function (run, delay) {
  if (delay >= 30000) { window.parkedDelays.push(delay); return realSetTimeout(function () {}, 0); }
  return realSetTimeout(run, 20);
};
"""
"""The page's timers run at once but those of 30 s and more (a minute feed's back-off after it
failed), which never run: what the page asks after a failure without them is read, not waited for."""


def test_the_graphs_and_times_come_back_with_the_pools_not_a_minute_later(tmp_path: Path) -> None:
    """Redis paused as the page loads: every feed fails. /status is asked again within seconds,
    the history and the summaries (a minute apart) after a back-off of 30-60 s. Before, the pools
    came back with Redis and the graphs and clone and boot times stayed empty ("partly stale:
    the graphs: no data") up to a minute longer. Now /status answering again has the feeds
    waiting out a back-off asked at once."""
    with FeedServer(GOOD) as feeds:
        feeds.hold("/api/v3/status")  # the pools' answer on its way ...
        for path in ("/dashboard/stats/history", "/api/v3/summary/clone", "/api/v3/summary/boot"):
            feeds.answer(path, {"ok": False, "error": "the state store is unavailable"}, status=503)
        browser = BrowserPage(tmp_path / "profile")
        try:
            browser.call("Page.enable")
            browser.call("Page.addScriptToEvaluateOnNewDocument", source=BACK_OFF_PARKED)
            browser.call("Page.navigate", url=feeds.page_url)
            # ... while the others failed and wait out their back-off.
            eventually(lambda: len(browser.evaluate("parkedDelays")) >= 2, 60, "the failed feeds to back off")
            for path in ("/dashboard/stats/history", "/api/v3/summary/clone", "/api/v3/summary/boot"):
                feeds.answer(path, GOOD[path])
            feeds.release()  # the API is back
            eventually(lambda: badge(browser)[0] == "live ok", 60, "every feed drawn")
            assert browser.evaluate("document.querySelectorAll('#totals-graph polyline').length") == 4
            assert sorted(rows(browser)) == sorted(POOLS)
        finally:
            browser.close()


RUN = "document.documentElement.dataset.pwned=1"
HOSTILE_REASON = f'<img src=x onerror="{RUN}"><script>{RUN}</script>\u202e\n' + "x" * 100_000
STORE_DOWN = "the state store is unavailable, try again shortly"
WHERE_THE_BADGE_IS = """(function () {
    var live = document.getElementById('live'), label = live && live.querySelector('b');
    if (!label) { return {text: ''}; }  // the page not loaded yet
    return {text: label.textContent, title: label.title, right: live.getBoundingClientRect().right,
            width: window.innerWidth, scroll: document.documentElement.scrollWidth,
            images: document.querySelectorAll('img').length, pwned: document.documentElement.dataset.pwned || null};
})()"""


def test_the_badge_says_why_in_the_apis_words_cut_and_as_text(feeds: FeedServer, tmp_path: Path) -> None:
    """Before: with Redis paused the badge said only "the API answered 503", where the API's
    answer says "the state store is unavailable, try again shortly". Now it says the API's words
    (our error, or API Gateway's message): cut to 120 characters on one line, isolated, as text.
    Words of markup, a right-to-left override and 100,000 characters (a proxy's, anything) run
    nothing, leave the rest of the badge as written and the header within the window."""
    feeds.answer("/api/v3/status", {"ok": False, "error": HOSTILE_REASON}, status=503)
    browser = BrowserPage(tmp_path / "profile")
    try:
        browser.call("Emulation.setDeviceMetricsOverride", width=1280, height=900, deviceScaleFactor=1, mobile=False)
        browser.call("Page.enable")
        browser.call("Page.addScriptToEvaluateOnNewDocument", source=TIMERS_AT_ONCE)
        browser.call("Page.navigate", url=feeds.page_url)
        shown = "no data: the API answered 503: \u2068" + HOSTILE_REASON.replace("\n", " ")[:119] + "\u2026\u2069"
        badge_now = lambda: browser.evaluate(WHERE_THE_BADGE_IS)  # noqa: E731
        seen = eventually(lambda: (lambda b: b if b["text"].startswith("no data: the API answered 503:") else None)(
            badge_now()), 60, "the badge to say why")
        assert seen["text"] == seen["title"] == shown, seen
        assert seen["images"] == 0 and seen["pwned"] is None, seen
        assert seen["right"] <= seen["width"] == 1280 and seen["scroll"] <= 1280, seen
        feeds.answer("/api/v3/status", {"ok": False, "error": STORE_DOWN}, status=503)
        eventually(lambda: badge_now()["text"] == f"no data: the API answered 503: \u2068{STORE_DOWN}\u2069", 60,
                   "the API's words")
    finally:
        browser.close()
