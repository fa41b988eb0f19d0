"""What a person notices of the dashboard's accessibility, in headless Chromium: every text on
it (pseudo-elements' labels too) reads at WCAG AA contrast against what is drawn behind it, the
range buttons say which one is pressed, the pools table's headers are column headers, and the
page logs nothing to the console. The feeds come from a small server
(tests/core/test_dashboard_many_pools.py), with a pool of each state the page draws apart: ready,
low, empty and failing to clone."""

from __future__ import annotations

from typing import Any, Iterator

import pytest

from tests.core.dashboard_feeds import FeedServer
from tests.support import eventually
from tools.cdp import BrowserPage


def _pool(ready: int, size: int, **more: Any) -> dict[str, Any]:
    return {"ready": ready, "running": 1, "pending": size - ready, "max": size, "lastBoot": "",
            "size_reason": "config", "alias": ["alias"], **more}


POOLS = {"ready-pool": _pool(4, 4), "low-pool": _pool(1, 4), "empty-pool": _pool(0, 2),
         "failing-pool": _pool(0, 2, clone_failures=3)}
ANSWERS = {
    "/api/v3/status": {"capacity": {"current": 5, "total": 12, "percent": 41.7},
                       "queue": {"pending": 7, "running": 4},
                       "status": {"ok": False, "message": "Found 2 empty pools.",
                                  "empty": ["empty-pool", "failing-pool"]},
                       "pools": POOLS},
    "/api/v3/summary/clone": {"clone": {"duration": {"pool": {"ready-pool": {"average": 12.5}}}}},
    "/api/v3/summary/boot": {"boot": {"duration": {"pool": {}}}},
    "/dashboard/stats/history": {"start": 0, "step": 60, "points": 2,
                                 "pools": {name: {"ready": [1, 2], "running": [1, 1], "pending": [0, 1], "size": [4, 4]}
                                           for name in POOLS}},
}

CONTRAST = r"""(function () {
    function rgba(text) {
        var v = (text.match(/[\d.]+/g) || []).map(Number);
        return v.length < 3 ? [0, 0, 0, 0] : [v[0], v[1], v[2], v.length > 3 ? v[3] : 1];
    }
    function over(top, under) {  // ``top`` composited over the opaque ``under``
        return [0, 1, 2].map(function (i) { return top[3] * top[i] + (1 - top[3]) * under[i]; });
    }
    function behind(node) {  // the opaque colour drawn behind ``node``'s text
        var layers = [];
        for (var at = node; at && at.nodeType === 1; at = at.parentElement) {
            layers.push(rgba(getComputedStyle(at).backgroundColor));
        }
        return layers.reverse().reduce(function (under, layer) { return over(layer, under); }, [255, 255, 255]);
    }
    function luminance(c) {
        var l = c.map(function (v) { v /= 255; return v <= 0.03928 ? v / 12.92 : Math.pow((v + 0.055) / 1.055, 2.4); });
        return 0.2126 * l[0] + 0.7152 * l[1] + 0.0722 * l[2];
    }
    function check(node, style, text, out, pseudo) {
        if (!text.trim() || style.display === "none" || style.visibility === "hidden") { return; }
        var back = behind(node);
        if (pseudo) { back = over(rgba(style.backgroundColor), back); }  // a pseudo-element's own
        var front = over(rgba(style.color), back);
        var a = luminance(front), b = luminance(back);
        var ratio = (Math.max(a, b) + 0.05) / (Math.min(a, b) + 0.05);
        var size = parseFloat(style.fontSize), large = size >= 24 || (size >= 18.66 && Number(style.fontWeight) >= 700);
        if (ratio < (large ? 3 : 4.5)) { out.push([text.trim().slice(0, 40), Math.round(ratio * 100) / 100]); }
    }
    var out = [];
    document.querySelectorAll("body *").forEach(function (node) {
        if (node.closest("svg") || !node.getClientRects().length) { return; }
        var own = Array.prototype.filter.call(node.childNodes, function (c) { return c.nodeType === 3; })
            .map(function (c) { return c.data; }).join("");
        check(node, getComputedStyle(node), own, out);
        ["::before", "::after"].forEach(function (pseudo) {
            var style = getComputedStyle(node, pseudo), content = style.content;
            if (content && content !== "none" && content !== "normal") {
                check(node, style, content.replace(/^"|"$/g, ""), out, true);
            }
        });
    });
    return out;
})()"""
"""Each text below WCAG AA contrast (4.5:1, 3:1 for large text): [its start, its ratio]."""


@pytest.fixture(scope="module")
def page(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[BrowserPage, list[dict[str, Any]]]]:
    """The page of POOLS, drawn; and the console messages and exceptions it logged."""
    logged: list[dict[str, Any]] = []
    with FeedServer(ANSWERS) as feeds:
        browser = BrowserPage(tmp_path_factory.mktemp("readable") / "profile", on_event=logged.append)
        try:
            for domain in ("Runtime.enable", "Log.enable"):
                browser.call(domain)
            browser.call("Emulation.setDeviceMetricsOverride", width=1280, height=900, deviceScaleFactor=1,
                         mobile=False)
            browser.call("Page.navigate", url=feeds.page_url)
            lines = "document.querySelectorAll('tr.pool svg polyline').length"
            eventually(lambda: browser.evaluate(lines) == 2 * len(POOLS), 60, "every row with its sparkline")
            yield browser, logged
        finally:
            browser.close()


@pytest.mark.slow
def test_every_text_reads_at_wcag_aa_contrast(page: tuple[BrowserPage, list[dict[str, Any]]]) -> None:
    """The EMPTY label of an empty pool's row was white on #f85149, 3.35:1, at 10 px."""
    browser, _ = page
    assert browser.evaluate("document.querySelectorAll('tr.pool.empty').length") == 2
    assert browser.evaluate(CONTRAST) == []


@pytest.mark.slow
def test_the_range_buttons_say_which_is_pressed_and_the_headers_are_column_headers(
        page: tuple[BrowserPage, list[dict[str, Any]]]) -> None:
    """The range shown was a class only ("on"): a screen reader read four alike buttons."""
    browser, _ = page
    pressed = ("Array.prototype.map.call(document.querySelectorAll('.range button'), "
               "function (b) { return b.getAttribute('aria-pressed'); })")
    assert browser.evaluate(pressed) == ["true", "false", "false", "false"]
    browser.evaluate("document.querySelector('.range button[data-hours=\"24\"]').click()")
    assert browser.evaluate(pressed) == ["false", "false", "true", "false"]
    browser.evaluate("document.querySelector('.range button[data-hours=\"1\"]').click()")
    scopes = "Array.prototype.map.call(document.querySelectorAll('table.pools th'), function (th) { return th.scope; })"
    assert set(browser.evaluate(scopes)) == {"col"}


@pytest.mark.slow
def test_the_page_logs_nothing_to_the_console(page: tuple[BrowserPage, list[dict[str, Any]]]) -> None:
    _, logged = page
    noted = [event for event in logged if event.get("method") in (
        "Runtime.consoleAPICalled", "Runtime.exceptionThrown", "Log.entryAdded")]
    assert noted == []


@pytest.mark.slow
def test_the_browser_refuses_markup_written_into_the_page(page: tuple[BrowserPage, list[dict[str, Any]]]) -> None:
    """The page writes what the API says through textContent only; its policy now makes the
    browser hold it to that (Trusted Types, no policy allowed): a string given to an HTML sink
    (innerHTML, insertAdjacentHTML, document.write) throws instead of becoming elements, so no
    later change can put a caller's text on the page as markup. The page itself still draws
    every pool and logs nothing (the test above)."""
    browser, _ = page
    refused = browser.evaluate("""(function () {
        try { document.getElementById('message').innerHTML = '<img src=x id=injected>'; return 'written'; }
        catch (error) { return error.name; }
    })()""")
    assert refused == "TypeError"
    assert browser.evaluate("document.getElementById('injected')") is None
    assert browser.evaluate("document.querySelectorAll('tr.pool').length") == len(POOLS)
