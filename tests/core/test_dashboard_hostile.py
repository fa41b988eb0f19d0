"""The dashboard in headless Chromium when the text it shows was written by an attacker: the site
name and a pool's aliases (what an admin's config can carry: a YAML config's aliases are
restricted to ``[A-Za-z0-9_.-]`` as pool names are, a canonical JSON object put in the config
bucket by hand is built as it is) hold script, markup, line and paragraph separators, a
right-to-left override and a very long string. None of it may run, none of it may become markup, and the page still
shows its counts. A link to ``//another.site/dashboard/`` finds no page that could fetch or link
to that site (the HTTP front served the dashboard there once: it read "another.site" as a
host). (Tags, on-demand requests and user names never reach an HTML page: every other answer is
JSON, tests/api/test_dashboard.py.)"""

from __future__ import annotations

import base64
import html
import json
import re
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any, Iterator

import pytest

from chalicelib.config import canonical_json, parse
from tests.core.dashboard_feeds import FeedServer
from tests.core.test_dashboard_browser import REPO_ROOT, PoolRows, chromium, local_stack
from tests.local.stack import call, wait_for
from tools.cdp import BrowserPage

RUN = "document.documentElement.dataset.pwned=1"
"""What every payload tries to run: a mark on <html> that --dump-dom would show."""
ALIASES = [
    f'"><img src=x onerror="{RUN}">',
    f"<script>{RUN}</script>",
    f"</script><script>{RUN}</script><!--",
    f"javascript:{RUN}",
    "line\u2028separator\u2029paragraph",
    "\u202etxt.exe",
    "next-alias",
    "y" * 100,  # the longest alias a pushed config holds (a request names at most 100 characters)
]
SITE_NAME_START = f"Ops \u202e & \"co\" </title><script>{RUN}</script> <img src=x onerror={RUN}//"
LONG_WORD = "W" * (200 - len(SITE_NAME_START))
SITE_NAME = SITE_NAME_START + LONG_WORD
"""At most 200 characters, as config load requires whatever the format."""
SHOWN_SITE_NAME = f"Ops \u202e & \"co\" {RUN} <img src=x onerror={RUN}//{LONG_WORD}"
"""SITE_NAME as the page shows it: complete tags dropped (vmpooler's default name held some), the
rest as text."""
POOL = "debian-12-x86_64"
SCREENSHOT = REPO_ROOT / "build" / "dashboard-hostile.png"
YAML_CONFIG = f"""\
config: {{domain: example.com, check_loop_delay_min: 0.2, task_limit: 10}}
providers:
  dummy: {{provider_class: dummy, createvm_max_time: 0.2, boot_time: 0.1, destroyvm_max_time: 0.1}}
pools:
  - {{name: {POOL}, size: 2, provider: dummy, alias: [linux]}}
"""


def hand_written_config() -> str:
    """YAML_CONFIG as canonical JSON, its pool's aliases replaced by ALIASES and its site name
    SITE_NAME: an object written by hand (not through config-push, whose validation refuses
    these aliases), which the functions build without checking the aliases' characters (their
    lengths and the site name's are bounds, checked whatever the format), as the local stack does."""
    document = json.loads(canonical_json(parse(YAML_CONFIG)))
    document["config"]["site_name"] = SITE_NAME
    document["pools"][0]["alias"] = ALIASES
    return json.dumps(document)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """The local stack serving the hand-written config, its pool full: (base URL, a folder for
    browser profiles)."""
    tmp_path = tmp_path_factory.mktemp("hostile")
    with local_stack(tmp_path, hand_written_config()) as (base, _):
        wait_for(lambda: pool(base)["ready"] == 2, 20, "the pool to fill")
        yield base, tmp_path


def pool(base: str) -> dict[str, Any]:
    return call("GET", f"{base}/api/v3/status?view=pools")[1]["pools"][POOL]


@pytest.mark.slow
def test_hostile_site_name_and_aliases_show_as_text_and_never_run(stack: tuple[str, Path]) -> None:
    base, tmp_path = stack
    with urllib.request.urlopen(f"{base}/dashboard/") as answer:
        headers = answer.headers
    dom = chromium(f"{base}/dashboard/", tmp_path / "profile-text", "--dump-dom")
    now = pool(base)

    # Nothing ran and nothing became an element: the DOM has only the page's own markup.
    root = re.search(r"<html[^>]*>", dom)
    assert root and "pwned" not in root.group(0)
    assert "<img" not in dom and dom.count("<script") == 1
    # The policy that would stop it running reached the browser through the real HTTP front.
    assert "'unsafe-inline'" not in headers["Content-Security-Policy"]
    assert headers["X-Frame-Options"] == "DENY" and headers["X-Content-Type-Options"] == "nosniff"
    # Every payload reads as the text it was, and the counts are there.
    page = PoolRows()
    page.feed(dom)
    title = re.search(r"<title>(.*?)</title>", dom, re.S)
    assert title and html.unescape(title.group(1)) == f"\u2068{SHOWN_SITE_NAME}\u2069 dashboard"  # isolated
    assert page.texts["site-name"] == SHOWN_SITE_NAME
    row = page.rows[POOL]
    assert row["aliases"] == "alias: " + ", ".join(ALIASES)
    assert (row["ready"], row["size"], row["running"]) == (now["ready"], now["max"], now["running"]) == (2, 2, 0)


LAYOUT = """(function () {
    var row = document.querySelector('tr.pool'), width = window.innerWidth;
    if (!row) { return {running: null}; }
    function right(selector) {
        var node = document.querySelector(selector);
        return node && node.getBoundingClientRect().right;
    }
    return {scroll: document.documentElement.scrollWidth, width: width,
            header: document.querySelector('header.top').getBoundingClientRect().height,
            row: row.getBoundingClientRect().height, running: right('tr.pool td.running'),
            live: right('#live'), aliases: row.querySelector('.aliases').textContent.length};
})()"""
"""Where the page's parts are in the window: what a screenshot would show."""


def _drawn(layout: dict[str, Any]) -> dict[str, Any] | None:
    return layout if layout["running"] else None


@pytest.mark.slow
def test_a_very_long_site_name_and_alias_leave_the_layout_whole(stack: tuple[str, Path]) -> None:
    """A site name and an alias of 10,000 characters without a space: the alias widened the
    pools table to some 70,000 pixels (the counts, the bar, the sparkline off-screen, a
    horizontal scroll bar) and the site name pushed the live indicator out of the window. Each
    is now cut to its place with an ellipsis, the whole text in its title."""
    base, tmp_path = stack
    page = BrowserPage(tmp_path / "profile-layout")
    try:
        page.call("Emulation.setDeviceMetricsOverride", width=1280, height=900, deviceScaleFactor=1, mobile=False)
        page.call("Page.navigate", url=f"{base}/dashboard/")
        layout = wait_for(lambda: _drawn(page.evaluate(LAYOUT)), 30, "the pool's row")
        shot = page.call("Page.captureScreenshot", format="png")["data"]
    finally:
        page.close()
    SCREENSHOT.parent.mkdir(exist_ok=True)
    SCREENSHOT.write_bytes(base64.b64decode(shot))  # for a person to look at; the figures say it
    assert layout["scroll"] <= layout["width"] == 1280, layout
    assert layout["running"] <= 1280 and layout["live"] <= 1280, layout
    assert layout["header"] < 80 and layout["row"] < 120, layout
    assert layout["aliases"] == len("alias: " + ", ".join(ALIASES))  # cut on screen, whole in the page


CHARACTER_PLACES = """(function () {
    var cell = document.querySelector('tr.pool .aliases');
    if (!cell) { return null; }
    // Where each character of ``text`` is drawn: the left edges, in the text's order.
    function lefts(text) {
        var walker = document.createTreeWalker(cell, NodeFilter.SHOW_TEXT), node, at;
        while ((node = walker.nextNode())) {
            at = node.data.indexOf(text);
            if (at >= 0) { break; }
        }
        if (!node) { return null; }
        var places = [];
        for (var i = 0; i < text.length; i++) {
            var range = document.createRange();
            range.setStart(node, at + i);
            range.setEnd(node, at + i + 1);
            places.push(range.getBoundingClientRect().left);
        }
        return places;
    }
    return {hostile: lefts("\\u202etxt.exe"), next: lefts("next-alias")};
})()"""
"""Where the aliases' characters are drawn, the one with the override and the one after it."""


@pytest.mark.slow
def test_a_right_to_left_override_in_one_alias_leaves_the_next_alias_as_written(stack: tuple[str, Path]) -> None:
    """An alias holding U+202E (right-to-left override) overrode the direction of everything after
    it in the cell: the next alias was drawn backwards, before it ("...ezilaa-txen ,exe.txt"), so
    one admin-written name could disguise the others. Each alias is isolated now: the override
    reverses its own alias only."""
    base, tmp_path = stack
    page = BrowserPage(tmp_path / "profile-bidi")
    try:
        page.call("Emulation.setDeviceMetricsOverride", width=1280, height=900, deviceScaleFactor=1, mobile=False)
        page.call("Page.navigate", url=f"{base}/dashboard/")
        places = wait_for(lambda: page.evaluate(CHARACTER_PLACES), 30, "the pool's aliases")
    finally:
        page.close()
    hostile, after = places["hostile"], places["next"]
    assert after == sorted(after) and after[0] < after[-1], places  # read left to right
    assert after[0] > max(hostile), places  # after the alias before it, as listed


@pytest.mark.slow
def test_a_double_slash_path_does_not_point_the_page_at_another_site(stack: tuple[str, Path]) -> None:
    """The front served //evil.example/dashboard/ as /dashboard/ (urlsplit read "evil.example" as
    a host), and only dashboard.js's collapsing of leading slashes kept the page's links and polls
    on this site. The front reads the whole target as a path now: no page there at all, a JSON
    404. (dashboard.js still collapses them, for whatever path API Gateway hands on.)"""
    base, tmp_path = stack
    dom = chromium(f"{base}//evil.example/dashboard/", tmp_path / "profile-links", "--dump-dom")
    assert re.findall(r'<a [^>]*href="([^"]*)"', dom) == [], dom
    assert '{"ok":false}' in dom, dom


@pytest.mark.slow
def test_hostile_tags_and_hostnames_opened_in_a_browser_show_as_text_and_never_run(
        stack: tuple[str, Path]) -> None:
    """Tags, on-demand ids and hostnames reach no HTML page, but a browser may still be pointed
    at the JSON that carries them (a link in a chat, a 404 naming the path's hostname): it must
    read it as text. A tag of markup is refused (``<`` and ``>`` are no tag characters); one of
    the characters tags allow that matter to HTML (``'&()=;``, ``javascript:``), its VM's JSON
    opened in Chromium, and 404s naming a hostname and an on-demand id of markup: nothing runs,
    nothing becomes an element, the text is as sent."""
    base, tmp_path = stack
    markup = f'<img src=x onerror="{RUN}"><script>{RUN}</script>'
    host = call("POST", f"{base}/api/v3/vm/{POOL}")[1][POOL]["hostname"]
    try:
        assert call("PUT", f"{base}/api/v3/vm/{host}", {"tags": {"user": markup}})[0] == 400
        allowed = f"javascript:{RUN};' onmouseover='{RUN}' x='&amp;"
        assert call("PUT", f"{base}/api/v3/vm/{host}", {"tags": {"user": allowed}})[0] == 200
        quoted = urllib.parse.quote(markup, safe="")
        for path, shown in ((f"/api/v3/vm/{host}", allowed), (f"/api/v3/vm/{quoted}", None),
                            (f"/api/v3/ondemandvm/{quoted}", None)):
            dom = chromium(base + path, tmp_path / "profile-json", "--dump-dom")
            root = re.search(r"<html[^>]*>", dom)
            assert root and "pwned" not in root.group(0), dom
            assert "<img" not in dom and "<script" not in dom and "<pre" in dom, dom
            if shown is not None:
                text = html.unescape(re.sub(r"<[^>]*>", "", dom))
                assert json.loads(text)[host.split(".")[0]]["tags"]["user"] == shown, dom
    finally:
        assert call("DELETE", f"{base}/api/v3/vm/{host}")[0] == 200


PROTOTYPE_NAMES = ("constructor", "toString", "valueOf", "hasOwnProperty")
"""Pool names the config allows that are also keys of every plain JavaScript object."""


def _pool(ready: int, size: int) -> dict[str, Any]:
    return {"ready": ready, "running": 1, "pending": size - ready, "max": size, "lastBoot": "", "size_reason": "config"}


FEEDS: dict[str, Any] = {
    # Served by an API process that has the pools named like Object.prototype's keys already ...
    "/api/v3/status": {"capacity": {"current": 9, "total": 12, "percent": 75.0}, "queue": {},
                       "status": {"ok": True, "message": "Battle station fully armed and operational."},
                       "pools": {POOL: _pool(3, 4), **{name: _pool(2, 2) for name in PROTOTYPE_NAMES}}},
    # ... and feeds computed by one whose config does not have them yet (a config push reaches
    # each warm Lambda within 30 s of the others).
    "/api/v3/summary/clone": {"clone": {"duration": {"pool": {POOL: {"average": 12.5}}}}},
    "/api/v3/summary/boot": {"boot": {"duration": {"pool": {POOL: {"average": 3.5}}}}},
    "/dashboard/stats/history": {"start": 0, "step": 60, "points": 2,
                                 "pools": {POOL: {"ready": [3, 3], "running": [1, 1], "pending": [0, 1],
                                                  "size": [4, 4]}}},
}


@pytest.mark.slow
def test_pools_named_like_object_keys_are_drawn_when_a_feed_lacks_them(tmp_path: Path) -> None:
    """A pool may be named `constructor`, `toString`, `valueOf` or `hasOwnProperty` (the config
    allows `[A-Za-z0-9][A-Za-z0-9_.-]*`). The page looked each pool up in the history and summary
    answers as plain objects: where an answer lacked the pool, it found Object.prototype's function
    instead, drew its sparkline from that and threw at every poll: the table stopped updating and
    the badge said "stale" while every feed answered."""
    with FeedServer(FEEDS) as feeds:
        dom = chromium(feeds.page_url, tmp_path / "profile", "--dump-dom",
                       budget_ms=12000)  # past a second status poll (every 5 s), whichever feed came first
    page = PoolRows()
    page.feed(dom)
    assert set(page.rows) == {POOL, *PROTOTYPE_NAMES}
    for name in PROTOTYPE_NAMES:
        row = page.rows[name]
        assert (row["ready"], row["size"], row["pending"], row["running"]) == (2, 2, 0, 1), name
        assert (row["clone"], row["boot"]) == ("-", "-"), name
    assert (page.rows[POOL]["clone"], page.rows[POOL]["boot"]) == ("12.5 s", "3.5 s")
    live = re.search(r'<span id="live" class="([^"]*)"[^>]*><i></i><b(?: title="[^"]*")?>([^<]*)</b>', dom)
    assert live and live.group(1) == "live ok" and live.group(2).startswith("live, updated"), live
