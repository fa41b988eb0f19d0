"""Every numeric input of every route is bounded before it is converted: a number spelled with
thousands of digits (Python's int() gives up past 4,300) is a 400 that says what was wrong, never a
500, and changes nothing."""

from __future__ import annotations

import json
from typing import Any, Callable

import pytest

from chalicelib.api.http import MAX_FAILURES_LISTED
from tests.api.configs import CONFIG_YAML
from tests.harness import Harness

HUGE = "9" * 5000
"""More digits than Python converts to an int (4,300)."""

EXPERIMENTAL_CONFIG = CONFIG_YAML.replace(":config:\n", ":config:\n  experimental_features: true\n", 1)

Case = tuple[str, str, Any, str]
"""(method, target, body, text the 400's message must contain)."""

CASES: list[Case] = [
    # the VM count of a checkout, as a string and as a JSON number
    ("POST", "/api/v3/vm", {"pool1": HUGE}, "at most 100"),
    ("POST", "/api/v3/vm", '{"pool1": ' + HUGE + "}", "more than 100 digits"),
    ("POST", "/api/v3/vm", '{"pool1": ' + "9" * 90 + "}", "at most 100"),
    ("POST", "/api/v3/vm?ondemand=true", {"pool1": HUGE}, "at most 100"),
    # the VM count of an on-demand request (as a string, a 403 naming max_ondemand_instances_per_request:
    # tests/ondemand/test_ondemand_requests.py, test_a_count_in_the_body_is_bounded_by_the_configured_...)
    ("POST", "/api/v3/ondemandvm", '{"pool1": ' + HUGE + "}", ""),
    # a lifetime change
    ("PUT", "/api/v3/vm/{running}", {"lifetime": HUGE}, "exceeds the configured maximum"),
    ("PUT", "/api/v3/vm/{running}", '{"lifetime": ' + HUGE + "}", "more than 100 digits"),
    ("PUT", "/api/v3/vm/{running}", {"lifetime": "-" + HUGE}, "positive integer"),
    # a tag value that is a number
    ("PUT", "/api/v3/vm/{running}", '{"tags": {"project": ' + HUGE + "}}", "more than 100 digits"),
    # a runtime pool size
    ("POST", "/api/v3/config/poolsize", {"pool1": HUGE}, ""),
    ("POST", "/api/v3/config/poolsize", '{"pool1": ' + HUGE + "}", ""),
    # pool reset: its values are not numbers that matter, but the body is still bounded
    ("POST", "/api/v3/poolreset", '{"pool1": ' + HUGE + "}", ""),
    # a disk size in the path
    ("POST", "/api/v3/vm/{running}/disk/" + HUGE, None, "from 1 to 2048"),
    # dates in the query of /summary, and the query of /status and /poolstat
    ("GET", "/api/v3/summary?from=" + HUGE, None, "Invalid date format"),
    ("GET", "/api/v3/summary/tag?to=" + HUGE, None, "Invalid date format"),
]


def _error_text(answer: dict[str, Any]) -> str:
    return " ".join([str(answer.get("error", "")), str(answer.get("message", "")),
                     *map(str, answer.get("failure", [])), *map(str, answer.get("not_configured", []))])


@pytest.mark.parametrize("case", CASES, ids=[f"{c[0]} {c[1][:40]} {str(c[2])[:30]}" for c in CASES])
def test_thousands_of_digits_are_a_400(make_stack: Callable[[str], Harness], case: Case) -> None:
    method, target, body, text = case
    stack = make_stack(EXPERIMENTAL_CONFIG)
    stack.fill("pool1", "pool2")
    running = stack.checkout("pool2")
    before = stack.redis_state()
    reply = stack.request(method, target.format(running=running), body)
    assert reply.status == 400, reply.raw[:300]
    assert reply.json["ok"] is False
    assert text in _error_text(reply.json)
    assert len(reply.raw) < 1000, "the answer echoes the whole number back"
    assert stack.redis_state() == before


@pytest.mark.parametrize("target", [
    "/api/v3/status?view=" + HUGE,
    "/api/v3/poolstat?pool=" + HUGE,
    "/api/v3/vm?" + HUGE + "=" + HUGE,
])
def test_numbers_in_other_queries_are_harmless(full: Harness, target: str) -> None:
    reply = full.get(target)
    assert reply.status == 200
    assert HUGE not in reply.raw.decode()


LONG = "x" * 5000
"""A path segment of thousands of characters (API Gateway takes paths up to 10 kB)."""


@pytest.mark.parametrize(("method", "target", "body", "status"), [
    ("POST", "/api/v3/vm/{running}/snapshot/" + LONG, None, 404),
    ("GET", "/api/v3/ondemandvm/" + LONG, None, 404),
    ("DELETE", "/api/v3/ondemandvm/" + LONG, None, 404),
    ("GET", "/api/v3/summary/" + LONG, None, 404),
    ("DELETE", "/api/v3/config/poolsize/" + LONG, None, 404),
    ("DELETE", "/api/v3/config/pooltemplate/" + LONG, None, 404),
    ("POST", "/api/v3/vm", {f"{LONG[:90]}{i:04d}": 1 for i in range(90)}, 404),
], ids=["revert", "ondemand GET", "ondemand DELETE", "summary section", "poolsize clear", "pooltemplate clear",
        "90 unknown pools"])
def test_an_error_never_echoes_a_long_value_back(make_stack: Callable[[str], Harness], method: str, target: str,
                                                  body: Any, status: int) -> None:
    """Error messages quote at most the start of what was sent (docs/api.md), whatever the route."""
    stack = make_stack(EXPERIMENTAL_CONFIG)
    stack.fill("pool2")
    running = stack.checkout("pool2")
    reply = stack.request(method, target.format(running=running), body)
    assert (reply.status, reply.json["ok"]) == (status, False)
    assert len(reply.raw) < 1000, reply.raw[:300]


@pytest.mark.parametrize("method, target, body", [
    ("POST", "/api/v3/ondemandvm", {"pool1": 1, "request_id": "abc\n"}),
    ("PUT", "/api/v3/vm/{running}", {"tags": {"project\n": "x"}}),
    ("GET", "/api/v3/summary?from=2026-12-01%0A", None),
    ("GET", "/api/v3/token/" + "a" * 32 + "%0A", None),
], ids=["request-id", "tag-key", "date", "token"])
def test_a_trailing_line_break_is_not_part_of_a_valid_name(full: Harness, method: str, target: str,
                                                           body: Any) -> None:
    """Python's ``$`` matches before a final line break: every name pattern ends at ``\\Z`` so
    that ``abc\\n`` is not taken for ``abc``'s shape (an on-demand request was created under it)."""
    running = full.checkout("pool1")
    before = full.redis_state()
    reply = full.request(method, target.format(running=running), body)
    assert reply.status in (400, 401, 404), (reply.status, reply.raw)
    assert full.redis_state() == before


def test_the_longest_lifetime_the_config_allows_is_shown_and_kept(make_stack: Callable[[str], Harness]) -> None:
    """The config's cap on lifetimes (876000 hours, about 100 years) keeps a VM's end time a date:
    a VM checked out for that long, or extended to just under the upper limit, is described, counted
    and left running by a pass; a lifetime at the limit is refused and changes nothing."""
    text = CONFIG_YAML.replace("  vm_lifetime: 2\n  max_lifetime_upper_limit: 168\n",
                               "  vm_lifetime: 876000\n  max_lifetime_upper_limit: 876000\n")
    stack = make_stack(text)
    stack.fill("pool1")
    kept, extended = stack.checkout("pool1"), stack.checkout("pool1")
    assert stack.put(f"/api/v3/vm/{extended}", {"lifetime": 875999}).status == 200
    before = stack.redis_state()
    refused = stack.put(f"/api/v3/vm/{extended}", {"lifetime": 876000})
    assert (refused.status, stack.redis_state()) == (400, before)
    for host, hours in ((kept, 876000), (extended, 875999)):
        described = stack.describe(host)
        assert (described["lifetime"], described["state"]) == (hours, "running")
        assert described["end_time"] > "2126"
    assert stack.get("/api/v3/status").status == 200
    assert stack.get("/api/v3/summary").status == 200
    assert stack.reconcile("pool1").errors == []
    assert stack.hosts("pool1", "running") == {kept, extended}


@pytest.mark.parametrize(("stored", "shown", "after_3_hours"), [
    ("nan", 2, "destroyed"), ("junk", 2, "destroyed"), ("0", 2, "destroyed"),
    ("inf", 876000, "running"), ("100000000", 876000, "running"),
])
def test_a_lifetime_broken_in_redis_fails_neither_the_vm_nor_its_pool(
        make_stack: Callable[[str], Harness], stored: str, shown: int, after_3_hours: str) -> None:
    """A VM's recorded lifetime written by hand (``nan``, text), or before lifetimes were capped
    (100000000 hours): every pass of its pool raised (``int(nan)``) and GET /vm/<host> was a 500
    (its end time past the year 9999). It reads as the configured lifetime (2 hours) when it is
    no number, as the cap when it is past it; the pool's passes go on."""
    stack = make_stack(CONFIG_YAML)
    stack.fill("pool1")
    host, other = stack.checkout("pool1"), stack.checkout("pool1")
    stack.client.hset(stack.store.keys.vm(host), "lifetime", stored)
    assert stack.describe(host)["lifetime"] == shown
    assert stack.reconcile("pool1").errors == []
    stack.clock.advance(3 * 3600)
    stack.run_passes("pool1")
    assert (stack.state_of(host), stack.state_of(other)) == (after_3_hours, "destroyed")


@pytest.mark.parametrize("stored", ["nan", "inf", "junk"])
@pytest.mark.parametrize("field", ["checkout", "clone_start", "clone_end", "ready_at", "running_at"])
def test_a_time_broken_in_redis_fails_neither_the_vm_nor_its_pool(
        make_stack: Callable[[str], Harness], field: str, stored: str) -> None:
    """A time of a VM's record written by hand (``nan``, ``inf``, text): GET /vm/<host> of it was
    a 500 and its pool's passes raised, as a broken lifetime did. It reads as absent; the VM stays
    its user's, and the pool's other VMs are looked after as before."""
    stack = make_stack(CONFIG_YAML)
    stack.fill("pool1")
    host, other = stack.checkout("pool1"), stack.checkout("pool1")
    stack.client.hset(stack.store.keys.vm(host), field, stored)
    assert stack.get(f"/api/v3/vm/{host}").status == 200
    assert stack.reconcile("pool1").errors == []
    assert stack.state_of(host) == "running"
    assert stack.delete(f"/api/v3/vm/{other}").status == 200
    stack.run_passes("pool1")
    assert stack.state_of(other) == "destroyed"
    assert stack.delete(f"/api/v3/vm/{host}").status == 200


@pytest.mark.parametrize("body", [
    {f"a{n}": 1 for n in range(6000)},
    {"tags": {f"b{n}": {} for n in range(4000)}},
], ids=["unknown keys", "tags not strings"])
def test_a_change_with_thousands_of_problems_lists_the_first_and_counts_the_rest(
        make_stack: Callable[[str], Harness], body: dict[str, Any]) -> None:
    """PUT /vm/<host> listed every problem: 6,000 unknown keys (a 60 KB body) answered 155 KB."""
    stack = make_stack(EXPERIMENTAL_CONFIG)
    stack.fill("pool2")
    running = stack.checkout("pool2")
    before = stack.redis_state()
    reply = stack.request("PUT", f"/api/v3/vm/{running}", json.dumps(body, separators=(",", ":")))
    assert reply.status == 400, reply.raw[:300]
    failures = reply.json["failure"]
    problems = len(body["tags"]) if "tags" in body else len(body)
    assert len(failures) == MAX_FAILURES_LISTED + 1
    # each key a problem (the tags' count beyond max_tags one more)
    assert failures[-1].startswith("and ") and failures[-1].endswith(" more problems.")
    assert int(failures[-1].split()[1]) >= problems - MAX_FAILURES_LISTED
    assert len(reply.raw) < 2000
    assert stack.redis_state() == before


UNKNOWN_NAMES = {f"nosuch{n:04d}": "1" for n in range(2500)}
"""2,500 names that are no pool, in a 50 KB body."""


@pytest.mark.parametrize(("target", "status", "key", "body"), [
    ("/api/v3/ondemandvm", 404, "bad_templates", UNKNOWN_NAMES),
    ("/api/v3/config/poolsize", 400, "not_configured", UNKNOWN_NAMES),
    ("/api/v3/config/pooltemplate", 400, "bad_templates", dict.fromkeys(list(UNKNOWN_NAMES)[:1800], "d/t")),
    ("/api/v3/config/clonetarget", 400, "bad_templates", dict.fromkeys(list(UNKNOWN_NAMES)[:1800], "c")),
    ("/api/v3/poolreset", 400, "bad_pools", UNKNOWN_NAMES),
    ("/api/v3/poolreset", 400, "bad_pools", {"p" * 30000: "1", "q" * 30000: "1"}),
], ids=["ondemand", "poolsize", "pooltemplate", "clonetarget", "poolreset", "poolreset long names"])
def test_a_list_of_unknown_names_shows_the_first_and_counts_the_rest(
        make_stack: Callable[[str], Harness], target: str, status: int, key: str, body: dict[str, str]) -> None:
    """These answers listed every name that was no pool: 2,500 in a 50 KB body answered 30 KB (two
    names of 30,000 characters, 60 KB). The list keeps its key and holds names only, the first 20,
    each cut short, and how many more there were is a number beside it."""
    stack = make_stack(EXPERIMENTAL_CONFIG)
    before = stack.redis_state()
    reply = stack.request("POST", target, json.dumps(body, separators=(",", ":")))
    assert (reply.status, reply.json["ok"]) == (status, False), reply.raw[:300]
    names = reply.json[key]
    assert names == [name if len(name) <= 100 else name[:100] + "..." for name in list(body)[:MAX_FAILURES_LISTED]]
    assert reply.json.get(f"{key}_not_listed", 0) == len(body) - len(names)
    assert len(reply.raw) < 3000
    assert stack.redis_state() == before
