"""The dashboard's feeds shared by every open page for a few seconds (api/feed_cache.py): a caller
that accepts an answer N seconds old (``Cache-Control: max-age=N``) is given the last one computed,
by any API process, when it is no older; every other caller gets a fresh answer, as before."""

from __future__ import annotations

from typing import Callable

import pytest

from chalicelib.api.feed_cache import MAX_AGE_SECONDS
from tests.harness import Harness

CONFIG = """
:config: {domain: example.com}
:providers:
  :dummy: {provider_class: dummy, createvm_max_time: 0, boot_time: 0}
:pools:
  - {name: debian-12-x86_64, size: 3, provider: dummy}
  - {name: win-2022-x86_64, size: 1, provider: dummy}
"""
AT_MOST_4 = {"Cache-Control": "max-age=4"}


@pytest.fixture
def dash(make_stack: Callable[[str], Harness]) -> Harness:
    stack = make_stack(CONFIG)
    stack.fill()
    return stack


def ready(stack: Harness, headers: dict[str, str] | None = None) -> int:
    return stack.get("/api/v3/status", headers=headers).json["pools"]["debian-12-x86_64"]["ready"]


def feed_entries(stack: Harness) -> list[str]:
    return sorted(stack.client.scan_iter(stack.store.keys.feed_cache("*")))


def test_pages_accepting_an_answer_seconds_old_share_one_and_others_get_it_fresh(dash: Harness) -> None:
    assert ready(dash, AT_MOST_4) == 3
    dash.checkout("debian-12-x86_64")
    dash.clock.advance(4)
    # Computed 4 s ago, which this page accepts: the same answer, saying how old it is.
    reply = dash.get("/api/v3/status", headers=AT_MOST_4)
    assert reply.json["pools"]["debian-12-x86_64"]["ready"] == 3 and reply.headers["Age"] == "4"
    # vmpooler's clients, curl, a page's reload (max-age=0) ask for it fresh: the checkout shows.
    assert ready(dash) == ready(dash, {"Cache-Control": "max-age=0"}) == 2
    dash.clock.advance(1)
    reply = dash.get("/api/v3/status", headers=AT_MOST_4)  # 5 s old now: computed again, and kept
    assert reply.json["pools"]["debian-12-x86_64"]["ready"] == 2 and reply.headers["Age"] == "0"


@pytest.mark.parametrize("digits", ["\u0664", "\uff14"], ids=["arabic-indic 4", "fullwidth 4"])
def test_a_max_age_not_in_ascii_digits_gets_a_fresh_answer(dash: Harness, digits: str) -> None:
    """HTTP's delta-seconds are ASCII digits: ``max-age=\u0664`` (read as 4 by ``\\d``) asks
    for nothing old, and gets the checkout made since the last answer was kept."""
    assert ready(dash, AT_MOST_4) == 3
    dash.checkout("debian-12-x86_64")
    dash.clock.advance(1)
    assert ready(dash, {"Cache-Control": f"max-age={digits}"}) == 2


def test_one_computation_serves_every_page_in_its_time(dash: Harness) -> None:
    """50 open pages asking within the same 4 s: one /status computed, the rest read one key."""
    before = dash.client.info("commandstats")
    dash.get("/api/v3/status", headers=AT_MOST_4)
    first = _calls(dash.client.info("commandstats")) - _calls(before) - 1
    middle = dash.client.info("commandstats")
    for _ in range(49):
        dash.get("/api/v3/status", headers=AT_MOST_4)
    rest = _calls(dash.client.info("commandstats")) - _calls(middle) - 1
    assert first > 10 and rest == 49, (first, rest)  # one GET each


def _calls(stats: dict[str, dict[str, int]]) -> int:
    return sum(int(figures["calls"]) for figures in stats.values())


@pytest.mark.parametrize("path", ["/api/v3/status", "/status", "/api/v1/status", "/api/v3/summary/clone",
                                  "/api/v3/summary/boot", "/dashboard/stats/history?hours=1",
                                  "/dashboard/stats/history?hours=168"])
def test_each_feed_the_page_asks_is_shared(dash: Harness, path: str) -> None:
    first = dash.get(path, headers=AT_MOST_4)
    dash.clock.advance(2)
    again = dash.get(path, headers=AT_MOST_4)
    assert (first.status, first.headers["Age"]) == (200, "0")
    assert (again.raw, again.headers["Age"]) == (first.raw, "2")


@pytest.mark.parametrize("path", ["/api/v3/status?view=pools", "/dashboard/stats/history?hours=2",
                                  "/dashboard/stats/history?hours=1&x=1", "/api/v3/summary",
                                  "/api/v3/summary/tag", "/api/v3/summary/clone/pool", "/api/v3/config",
                                  "/dashboard/stats/vmpooler/pool"])
def test_nothing_a_caller_sends_adds_entries(dash: Harness, path: str) -> None:
    """Only the feeds and queries the page asks are kept: at most a few entries in Redis,
    whatever the range, view or query a caller sends (each hours= would be one of 4 MB)."""
    reply = dash.get(path, headers={"Cache-Control": f"max-age={MAX_AGE_SECONDS}"})
    assert reply.status == 200 and "Age" not in reply.headers
    assert feed_entries(dash) == []


@pytest.mark.parametrize("value, kept", [
    ("max-age=99999999999999999999", False), ("max-age=-1", False), ("max-age=", False),
    ("no-cache, max-age=4", True), ('MAX-AGE="4"', True), ("x" * 100_000, False), ("max-age=4x", False),
])
def test_odd_cache_control_headers_are_read_safely(dash: Harness, value: str, kept: bool) -> None:
    reply = dash.get("/api/v3/status", headers={"Cache-Control": value})
    assert reply.status == 200
    assert ("Age" in reply.headers) is kept and bool(feed_entries(dash)) is kept


def test_an_answer_older_than_the_longest_accepted_is_never_given(dash: Harness) -> None:
    dash.get("/api/v3/status", headers=AT_MOST_4)
    dash.checkout("debian-12-x86_64")
    dash.clock.advance(MAX_AGE_SECONDS + 1)
    assert ready(dash, {"Cache-Control": "max-age=3600"}) == 2


def test_a_refused_request_is_not_kept(dash: Harness) -> None:
    assert dash.get("/dashboard/stats/history?hours=169", headers=AT_MOST_4).status == 400
    assert feed_entries(dash) == []
