"""What a person looking at the dashboard noticed, in headless Chromium: a pool whose VMs wait on
DNS looking as if it were refilling, a right-to-left override in the site name reversing the rest
of the tab's title, clones faster than a tenth of a second shown as "-" (as if none ran), and
range clicks each leaving a history request running.

The page's feeds are answered by tests/core/dashboard_feeds.py (answers the test sets)."""

from __future__ import annotations

import copy
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from tests.core.dashboard_feeds import FeedServer
from tests.core.test_dashboard_recovery import GOOD, badge
from tests.support import eventually
from tools.cdp import BrowserPage

POOL = "debian-12"


def open_page(feeds: FeedServer, profile: Path, before: str = "") -> BrowserPage:
    """The dashboard loaded and live (``before``: a script run before the page's own)."""
    browser = BrowserPage(profile)
    try:
        browser.call("Page.enable")
        if before:
            browser.call("Page.addScriptToEvaluateOnNewDocument", source=before)
        browser.call("Page.navigate", url=feeds.page_url)
        eventually(lambda: badge(browser)[0] == "live ok", 60, "the page to be live")
    except BaseException:
        browser.close()
        raise
    return browser


@contextmanager
def page_with(answers: dict[str, Any], profile: Path, site_name: str = "vmpool",
              before: str = "") -> Iterator[tuple[FeedServer, BrowserPage]]:
    with FeedServer(answers, site_name) as feeds:
        browser = open_page(feeds, profile, before)
        try:
            yield feeds, browser
        finally:
            browser.close()


def test_a_right_to_left_override_in_the_site_name_stays_in_it(tmp_path: Path) -> None:
    """Before: a site name holding U+202E (RIGHT-TO-LEFT OVERRIDE) reversed " dashboard" after
    it in the tab's title ("draobhsad"); its own isolate marks could end an isolate early. Now
    the name is isolated (FSI..PDI in the title, <bdi> in the header) and its own marks dropped."""
    name = "Ops \u202eteam\u2069 \u2066x"
    with page_with(GOOD, tmp_path / "profile", site_name=name) as (_, browser):
        title, header, isolated = browser.evaluate(
            "[document.title, document.getElementById('site-name').textContent,"
            " getComputedStyle(document.querySelector('#site-name bdi')).unicodeBidi]")
        assert title == "\u2068Ops \u202eteam x\u2069 dashboard"
        assert header == "Ops \u202eteam x" and isolated == "isolate"


FAST_CLONES = copy.deepcopy(GOOD)
FAST_CLONES["/api/v3/status"]["clone"] = {"duration": {"average": 0, "min": 0.01, "max": 0.02, "total": 0.03},
                                          "count": {"total": 3}}
FAST_CLONES["/api/v3/status"]["boot"] = {"duration": {"average": 0, "min": 0, "max": 0, "total": 0},
                                         "count": {"total": 0}}
FAST_CLONES["/api/v3/summary/clone"] = {"clone": {
    "duration": {"average": 0, "min": 0.01, "max": 0.02, "total": 0.03,
                 "pool": {POOL: {"total": 0.03, "average": 0, "min": 0.01, "max": 0.02}}},
    "count": {"total": 3, "pool": {POOL: {"total": 3}}}}}
"""Today's clones, three of 0.01 s: the API's averages are to a tenth of a second, 0 here. No boots."""

CLONE_SHOWN = """(function () {
  function text(selector) { var node = document.querySelector(selector); return node ? node.textContent : null; }
  return [text('tr.pool[data-pool="debian-12"] .clone'), text('tr.pool[data-pool="centos-9"] .clone'),
          text('tr.pool[data-pool="debian-12"] .boot'), text('#total-clone .value'), text('#total-clone .sub'),
          text('#total-boot .value')];
}())"""


def test_clones_faster_than_a_tenth_of_a_second_show_as_such_not_as_none(tmp_path: Path) -> None:
    """Before: a pool whose clones averaged 0.01 s showed "-" in its row and in the totals, the
    same as a pool that cloned nothing today. Now "<0.1 s" when there were clones; "-" when none."""
    with page_with(FAST_CLONES, tmp_path / "profile") as (_, browser):
        shown = eventually(lambda: (lambda s: s if s[0] not in ("-", None) else None)(browser.evaluate(CLONE_SHOWN)),
                           60, "the clone times")
        assert shown == ["<0.1 s", "-", "-", "<0.1 s", "3 clones, max <0.1 s", "-"]


HISTORY_SIGNALS = """
window.historySignals = [];
var realFetch = window.fetch;
window.fetch = function (address, options) {
  if (String(address).indexOf('stats/history') >= 0) { window.historySignals.push(options.signal); }
  return realFetch.apply(this, arguments);
};
"""
"""Each history request's signal kept, to count those still on their way."""
IN_FLIGHT = "window.historySignals.slice({}).filter(function (s) {{ return !s.aborted; }}).length"
"""How many of the history requests from the ``{}``th on are on their way (not aborted)."""


def test_a_range_clicked_gives_up_the_history_request_still_on_its_way(tmp_path: Path) -> None:
    """Before: each click of a range started a history request while the last was on its way
    (a week of 1,000 pools is megabytes, computed, sent and parsed to be thrown away): three
    clicks, four requests running. Now a click aborts the request before it, and the badge does
    not count the aborted ones as failures."""
    with page_with(GOOD, tmp_path / "profile", before=HISTORY_SIGNALS) as (feeds, browser):
        feeds.hold("/dashboard/stats/history")
        answered = browser.evaluate("window.historySignals.length")  # the page's first, answered
        for hours in (6, 24, 168):
            browser.evaluate(f"document.querySelector('.range button[data-hours=\"{hours}\"]').click()")
        eventually(lambda: browser.evaluate("window.historySignals.length") >= answered + 3, 30, "the clicks' requests")
        assert browser.evaluate(IN_FLIGHT.format(answered)) == 1
        assert badge(browser)[0] == "live ok"  # an aborted request is no failure of the feed
        feeds.release()
        eventually(lambda: browser.evaluate("document.getElementById('graph-max').textContent") ==
                   "one point per minute", 30, "the week's graph")  # GOOD's step: 60 s
        assert badge(browser)[0] == "live ok"


WAITING_ON_DNS = copy.deepcopy(GOOD)
WAITING_ON_DNS["/api/v3/status"]["pools"][POOL].update(
    ready=0, pending=2, dns_waiting=2,
    dns_waiting_reason="DNS record not created: route53 create 2 names: AccessDenied: "
                       "route53:ChangeResourceRecordSets denied to the role \u202eevil")
WAITING_ON_DNS["/api/v3/status"]["pools"]["centos-9"].update(ready=0)
"""A pool refilling in vain: its two new VMs wait on DNS records Route 53 refuses (GET /status);
the other pool as empty, and first by name: the one waiting on DNS is still the first problem."""

DNS_SHOWN = """(function () {
  var row = document.querySelector('tr.pool[data-pool="debian-12"]');
  if (!row) { return null; }
  var flag = row.querySelector('.dns-waiting'), why = row.querySelector('.dns-reason');
  return [flag && flag.textContent, why && why.textContent, row.classList.contains('dns'),
          document.getElementById('health').textContent,
          document.querySelector('tr.pool').dataset.pool,
          document.getElementById('alerts').hidden ? '' : document.getElementById('alerts').textContent];
}())"""


def test_a_pool_whose_vms_wait_on_dns_is_flagged_not_shown_as_refilling(tmp_path: Path) -> None:
    """Before: a pool whose new VMs could not get their DNS records showed pending VMs and
    nothing else, as a pool refilling does, until they timed out. Now its row says how many
    wait on DNS and why (as text in a bidi isolate), it sorts first among the problems, and the
    header's badge and the alerts name it."""
    with page_with(WAITING_ON_DNS, tmp_path / "profile") as (_, browser):
        shown = eventually(lambda: (lambda s: s if s and s[0] else None)(browser.evaluate(DNS_SHOWN)), 60,
                           "the pool's DNS flag")
        flag, why, marked, health, first, alerts = shown
        assert flag == "waiting on DNS: 2 VMs" and marked
        assert why == "\u2068" + WAITING_ON_DNS["/api/v3/status"]["pools"][POOL]["dns_waiting_reason"] + "\u2069"
        assert health == "1 waiting on DNS" and first == POOL
        assert "Waiting on DNS: " in alerts and f"{POOL} (2 VMs)" in alerts
