"""Every error path of every route: the right status, a JSON body with ``ok: false`` that says
what was wrong, and nothing changed in Redis.

Each case runs against pools with ready VMs and one VM checked out, so a handler that acted
before validating would visibly change something. ``{running}`` and ``{ready}`` in a target stand
for such VMs' hostnames.
"""

from __future__ import annotations

import json
import tracemalloc
from typing import Any, Callable

import pytest
import redis

from tests.api.configs import CONFIG_YAML
from tests.harness import Harness

Case = tuple[str, str, Any, int, str]
"""(method, target, body, status, text the error must contain ("" for a bare {"ok": false}))."""

POST_VM_CASES: list[Case] = [
    ("POST", "/api/v3/vm", '{"pool1": ', 400, "Invalid JSON"),
    ("POST", "/api/v3/vm", "{pool1: 1}", 400, "Invalid JSON"),
    ("POST", "/api/v3/vm", b"\xff\xfe{}", 400, "Invalid JSON"),
    ("POST", "/api/v3/vm", "[" * 5000 + "]" * 5000, 400, "too complex"),
    ("POST", "/api/v3/vm", '{"a": ' * 3000 + "1" + "}" * 3000, 400, "too complex"),
    ("POST", "/api/v3/vm", b'{"pool1": "' + b"x" * 70000 + b'"}', 413, "too large"),
    ("POST", "/api/v3/vm", ["pool1"], 400, "must be a JSON object"),
    ("POST", "/api/v3/vm", "pool1", 400, "Invalid JSON"),
    ("POST", "/api/v3/vm", '"pool1"', 400, "must be a JSON object"),
    ("POST", "/api/v3/vm", "null", 400, "must be a JSON object"),
    ("POST", "/api/v3/vm", "3", 400, "must be a JSON object"),
    ("POST", "/api/v3/vm", {"pool1": 0}, 400, "at least 1"),
    ("POST", "/api/v3/vm", {"pool1": "0"}, 400, "at least 1"),
    ("POST", "/api/v3/vm", {"pool1": 101}, 400, "at most 100"),
    ("POST", "/api/v3/vm", {"pool1": "101"}, 400, "at most 100"),
    ("POST", "/api/v3/vm", {"pool1": 100, "pool2": 1}, 400, "at most 100 VMs may be checked out in one request"),
    ("POST", "/api/v3/vm", {"pool1": 60, "linux": 60}, 400, "at most 100 VMs may be checked out in one request"),
    ("POST", "/api/v3/vm", {"pool1": -1}, 400, "VM count must be at least 1"),
    ("POST", "/api/v3/vm", {"pool1": "-3"}, 400, "VM count must be at least 1"),
    ("POST", "/api/v3/vm", {"pool1": -10**40}, 400, "VM count must be at least 1"),
    ("POST", "/api/v3/vm", {"pool1": "-"}, 400, "valid integer"),
    ("POST", "/api/v3/vm", {"pool1": "--1"}, 400, "valid integer"),
    ("POST", "/api/v3/vm", {"pool1": -1.5}, 400, "valid integer"),
    ("POST", "/api/v3/vm", {"pool1": 1.5}, 400, "valid integer"),
    ("POST", "/api/v3/vm", {"pool1": True}, 400, "valid integer"),
    ("POST", "/api/v3/vm", {"pool1": "2x"}, 400, "valid integer"),
    ("POST", "/api/v3/vm", {"pool1": " 1"}, 400, "valid integer"),
    ("POST", "/api/v3/vm", {"pool1": [1]}, 400, "valid integer"),
    ("POST", "/api/v3/vm", {"pool1": {"count": 1}}, 400, "valid integer"),
    ("POST", "/api/v3/vm", {"pool1": None}, 400, "required"),
    ("POST", "/api/v3/vm", {"pool1": 1, "pool2": 0}, 400, "at least 1"),
    ("POST", "/api/v3/vm", {"../pool1": 1}, 400, "pool name"),
    ("POST", "/api/v3/vm", {"pool1/x": 1}, 400, "pool name"),
    ("POST", "/api/v3/vm", {"": 1}, 400, "Pool name is required"),
    ("POST", "/api/v3/vm", {"p" * 101: 1}, 400, "Pool name too long"),
    ("POST", "/api/v3/vm", {"nosuchpool": 1}, 404, "nosuchpool"),
    ("POST", "/api/v3/vm", {"pool1": 1, "nosuchpool": 1}, 404, "nosuchpool"),
    ("POST", "/api/v3/vm", None, 404, ""),
    ("POST", "/api/v3/vm", "  ", 404, ""),
    ("POST", "/api/v3/vm", {}, 404, ""),
    ("POST", "/api/v3/vm", {"pool1": 3}, 503, ""),
    ("POST", "/api/v3/vm", {"pool1": 1, "pool3": 2}, 503, ""),
    ("POST", "/api/v3/vm", {"linux": 4}, 503, ""),
    ("POST", "/api/v3/vm", {"pool1": 1, "two": 1, "linux": 2}, 503, ""),
]

POST_PATH_CASES: list[Case] = [
    ("POST", "/api/v3/vm/nosuchpool", None, 404, "nosuchpool"),
    ("POST", "/api/v3/vm/pool1+nosuchpool", None, 404, "nosuchpool"),
    ("POST", "/api/v3/vm/pool1%2Fx", None, 400, "pool name"),
    ("POST", "/api/v3/vm/..", None, 404, "unknown pool"),  # dots may be in pool names
    ("POST", "/api/v3/vm/+pool1", None, 400, "pool name"),
    ("POST", "/api/v3/vm/pool1++pool1", None, 400, "pool name"),
    ("POST", "/api/v3/vm/pool1%20", None, 400, "pool name"),
    ("POST", "/api/v3/vm/" + "+".join(["pool1"] * 101), None, 400, "at most 100"),
    ("POST", "/api/v3/vm/" + "+".join(["pool1", "pool2", "linux"] * 34), None, 400, "at most 100 VMs"),
    ("POST", "/api/v3/vm/pool1+pool1+pool1", None, 503, ""),
    ("POST", "/api/v3/vm/pool2+pool3+pool3", None, 503, ""),
]

GET_VM_CASES: list[Case] = [
    ("GET", "/api/v3/vm/nosuchvm", None, 404, "nosuchvm"),
    ("GET", "/api/v3/vm/nosuchvm.example.com", None, 404, "nosuchvm"),
    ("GET", "/api/v3/vm/a%2Fb", None, 400, "Invalid hostname"),
    ("GET", "/api/v3/vm/..", None, 400, "Invalid hostname"),
    ("GET", "/api/v3/vm/%2E%2E", None, 400, "Invalid hostname"),
    ("GET", "/api/v3/vm/{running}%2F..", None, 400, "Invalid hostname"),
    ("GET", "/api/v3/vm/a_b", None, 400, "Invalid hostname"),
    ("GET", "/api/v3/vm/a%20b", None, 400, "Invalid hostname"),
    ("GET", "/api/v3/vm/-abc", None, 400, "Invalid hostname"),
    ("GET", "/api/v3/vm/" + "a" * 254, None, 400, "too long"),
]

PUT_VM_CASES: list[Case] = [
    ("PUT", "/api/v3/vm/nosuchvm", {"lifetime": 3}, 404, "nosuchvm"),
    ("PUT", "/api/v3/vm/a%2Fb", {"lifetime": 3}, 400, "Invalid hostname"),
    ("PUT", "/api/v3/vm/..", {"lifetime": 3}, 400, "Invalid hostname"),
    ("PUT", "/api/v3/vm/{running}", '{"lifetime": ', 400, "Invalid JSON"),
    ("PUT", "/api/v3/vm/{running}", [{"lifetime": 3}], 400, "must be a JSON object"),
    ("PUT", "/api/v3/vm/{running}", "null", 400, "must be a JSON object"),
    ("PUT", "/api/v3/vm/{running}", {"lifetime": 0}, 400, "Lifetime must be a positive integer (got 0)"),
    ("PUT", "/api/v3/vm/{running}", {"lifetime": -2}, 400, "Lifetime must be a positive integer (got -2)"),
    ("PUT", "/api/v3/vm/{running}", {"lifetime": "abc"}, 400, "Lifetime must be a positive integer (got abc)"),
    ("PUT", "/api/v3/vm/{running}", {"lifetime": "4d"}, 400, "Lifetime must be a positive integer (got 4d)"),
    ("PUT", "/api/v3/vm/{running}", {"lifetime": "30m"}, 400, "Lifetime must be a positive integer (got 30m)"),
    ("PUT", "/api/v3/vm/{running}", {"lifetime": "-2.5"}, 400, "Lifetime must be a positive integer (got -2.5)"),
    ("PUT", "/api/v3/vm/{running}", {"lifetime": "0.0h"}, 400, "Lifetime must be a positive integer (got 0.0h)"),
    ("PUT", "/api/v3/vm/{running}", {"lifetime": -0.5}, 400, "Lifetime must be a positive integer (got -0.5)"),
    ("PUT", "/api/v3/vm/{running}", {"lifetime": "\u0664"}, 400, "Lifetime must be a positive integer"),
    ("PUT", "/api/v3/vm/{running}", {"lifetime": 167.5}, 400,
     "You provided a lifetime (167.5), read as 168 hours, that exceeds the configured maximum of 168."),
    ("PUT", "/api/v3/vm/{running}", {"lifetime": "168h"}, 400,
     "You provided a lifetime (168h), read as 168 hours, that exceeds the configured maximum of 168."),
    ("PUT", "/api/v3/vm/{running}", {"lifetime": True}, 400, "Lifetime must be a positive integer (got true)"),
    ("PUT", "/api/v3/vm/{running}", {"lifetime": None}, 400, "Lifetime must be a positive integer (got null)"),
    ("PUT", "/api/v3/vm/{running}", {"lifetime": [3]}, 400, "Lifetime must be a positive integer (got [3])"),
    ("PUT", "/api/v3/vm/{running}", {"lifetime": {"h": 3}}, 400, 'Lifetime must be a positive integer (got {"h": 3})'),
    ("PUT", "/api/v3/vm/{running}", {"lifetime": 168}, 400, "exceeds the configured maximum of 168"),
    ("PUT", "/api/v3/vm/{running}", {"lifetime": "9" * 30}, 400, "exceeds the configured maximum"),
    ("PUT", "/api/v3/vm/{running}", {"tags": "project=ci"}, 400, "something other than a hash"),
    ("PUT", "/api/v3/vm/{running}", {"tags": ["project"]}, 400, 'You provided tags (["project"]) as something other'),
    ("PUT", "/api/v3/vm/{running}", {"tags": None}, 400, "You provided tags (null) as something other"),
    ("PUT", "/api/v3/vm/{running}", {"tags": 5}, 400, "something other than a hash"),
    ("PUT", "/api/v3/vm/{running}", {"tags": {"": "x"}}, 400, "Tag key is required"),
    ("PUT", "/api/v3/vm/{running}", {"tags": {"p" * 51: "x"}}, 400, "Tag key too long"),
    ("PUT", "/api/v3/vm/{running}", {"tags": {"pro ject": "x"}}, 400, "Invalid tag key format"),
    ("PUT", "/api/v3/vm/{running}", {"tags": {"project": "x" * 256}}, 400, "Tag value too long"),
    ("PUT", "/api/v3/vm/{running}", {"tags": {"project": "a<b>c"}}, 400, "invalid characters"),
    ("PUT", "/api/v3/vm/{running}", {"tags": {"project": "caf\u00e9"}}, 400, "invalid characters"),
    ("PUT", "/api/v3/vm/{running}", {"tags": {"project": {"a": 1}}}, 400, "must be a string"),
    ("PUT", "/api/v3/vm/{running}", {"tags": {"project": ["a"]}}, 400, "must be a string"),
    ("PUT", "/api/v3/vm/{running}", {"tags": {"colour": "red"}}, 400, "unsupported tags (colour)"),
    ("PUT", "/api/v3/vm/{running}", {"color": "red"}, 400, "Unknown argument"),
    # one bad part spoils the whole request: the valid tag and lifetime are not applied
    ("PUT", "/api/v3/vm/{running}", {"tags": {"project": "ci"}, "lifetime": 0}, 400, "Lifetime"),
    ("PUT", "/api/v3/vm/{running}", {"lifetime": 5, "tags": {"project": "ci", "colour": "red"}}, 400, "unsupported"),
    ("PUT", "/api/v3/vm/{running}", {"lifetime": 5, "extra": 1}, 400, "Unknown argument"),
]

DELETE_VM_CASES: list[Case] = [
    ("DELETE", "/api/v3/vm/nosuchvm", None, 404, "nosuchvm"),
    ("DELETE", "/api/v3/vm/nosuchvm.example.com", None, 404, "nosuchvm"),
    ("DELETE", "/api/v3/vm/a%2Fb", None, 400, "Invalid hostname"),
    ("DELETE", "/api/v3/vm/..", None, 400, "Invalid hostname"),
    ("DELETE", "/api/v3/vm/{running}%2F..%2F{ready}", None, 400, "Invalid hostname"),
    ("DELETE", "/api/v3/vm/{ready}", None, 404, "not running"),
]

SUMMARY_CASES: list[Case] = [
    ("GET", "/api/v3/summary?from=2027-1-15", None, 400, "Invalid date format '2027-1-15', must match YYYY-MM-DD."),
    ("GET", "/api/v3/summary?to=yesterday", None, 400, "Invalid date format 'yesterday'"),
    ("GET", "/api/v3/summary?from=2027-13-45", None, 400, "Invalid date '2027-13-45'"),
    ("GET", "/api/v3/summary?from=2027-02-30", None, 400, "Invalid date '2027-02-30'"),
    ("GET", "/api/v3/summary?from=2027-01-10&to=2027-01-09", None, 400, "'to' cannot come before 'from'"),
    ("GET", "/api/v3/summary?from=2027-01-16&to=2027-01-17", None, 400, "'from' must be in the past"),
    ("GET", "/api/v3/summary?from=2025-01-01&to=2027-01-15", None, 400, "at most 366 days"),
    ("GET", "/api/v3/summary/boot?from=2027-01-16&to=2027-01-17", None, 400, "'from' must be in the past"),
    ("GET", "/api/v3/summary/tag/project?from=x", None, 400, "Invalid date format"),
    # Digits of other scripts are no digits of a date (they were matched by \d, then refused as a
    # date with no word of its format): Arabic-Indic, fullwidth, one among ASCII ones.
    ("GET", "/api/v3/summary?from=%D9%A2%D9%A0%D9%A2%D9%A6-%D9%A1%D9%A2-%D9%A0%D9%A1", None, 400,
     "Invalid date format '\u0662\u0660\u0662\u0666-\u0661\u0662-\u0660\u0661', must match YYYY-MM-DD."),
    ("GET", "/api/v3/summary?to=%EF%BC%92%EF%BC%90%EF%BC%92%EF%BC%96-12-01", None, 400, "Invalid date format"),
    ("GET", "/api/v3/summary/boot?from=2026-12-0%D9%A1", None, 400, "Invalid date format"),
    ("GET", "/api/v3/summary/nosuch", None, 404, "nosuch"),
    ("GET", "/api/v3/summary/nosuch/count", None, 404, "nosuch"),
    # the dates are checked first, as in vmpooler
    ("GET", "/api/v3/summary/nosuch?from=x", None, 400, "Invalid date format"),
]

UNKNOWN_ROUTE_CASES: list[Case] = [
    ("GET", "/api/v3/nosuchroute", None, 404, ""),
    ("GET", "/api/v4/vm", None, 404, ""),
    ("GET", "/api/v3", None, 404, ""),
    ("GET", "/api/v3/vm/{running}/nosuch", None, 404, ""),
    ("POST", "/api/v3/vm/{running}/nosuch/deeper", None, 404, ""),
    ("GET", "/api/v3/summary/boot/count/extra", None, 404, ""),
    # vmpooler never rerouted these unversioned paths
    ("GET", "/poolstat?pool=pool1", None, 404, ""),
    ("GET", "/totalrunning", None, 404, ""),
    ("GET", "/config", None, 404, ""),
    ("GET", "/ondemandvm/some-request", None, 404, ""),
    ("POST", "/vm/{running}/disk/8", None, 404, ""),
]

WRONG_METHOD_CASES: list[Case] = [
    ("PATCH", "/api/v3/vm", None, 405, "PATCH"),
    ("PUT", "/api/v3/vm", {"pool1": 1}, 405, "PUT"),
    ("DELETE", "/api/v3/vm", None, 405, "DELETE"),
    ("PATCH", "/api/v3/vm/{running}", {"lifetime": 3}, 405, "PATCH"),
    ("POST", "/api/v3/status", None, 405, "POST"),
    ("DELETE", "/api/v1/status", None, 405, "DELETE"),
    ("POST", "/api/v3/totalrunning", None, 405, "POST"),
    ("PUT", "/api/v2/poolstat", None, 405, "PUT"),
    ("DELETE", "/api/v3/summary", None, 405, "DELETE"),
    ("POST", "/api/v3/summary/boot", None, 405, "POST"),
    ("DELETE", "/api/v3/config", None, 405, "DELETE"),
    ("PUT", "/status", None, 405, "PUT"),
    ("DELETE", "/vm", None, 405, "DELETE"),
]

ALL_CASES = [
    *POST_VM_CASES, *POST_PATH_CASES, *GET_VM_CASES, *PUT_VM_CASES, *DELETE_VM_CASES,
    *SUMMARY_CASES, *UNKNOWN_ROUTE_CASES, *WRONG_METHOD_CASES,
]


def _case_id(case: Case) -> str:
    method, target, body, status, _ = case
    shown = repr(body)
    return f"{method} {target[:60]} {shown[:40]} -> {status}"


@pytest.fixture
def busy(stack: Harness) -> Harness:
    """pool1 and pool2 full (2 ready each, ``linux`` has 4), pool3 empty; then one pool1 VM
    checked out, so pool1 has 1 ready and pool3 none."""
    stack.fill("pool1", "pool2")
    stack.running = stack.checkout("pool1")  # type: ignore[attr-defined]
    return stack


def _expect_error(stack: Harness, case: Case) -> dict[str, Any]:
    method, target, body, status, text = case
    target = target.format(running=stack.running, ready=stack.ready("pool2")[0])  # type: ignore[attr-defined]
    before = stack.redis_state()
    reply = stack.request(method, target, body)
    after = stack.redis_state()
    assert reply.status == status, reply.json
    answer = reply.json
    assert answer["ok"] is False
    messages = [answer.get("error", ""), *answer.get("failure", [])]
    if text:
        assert any(text in message for message in messages), answer
    else:
        assert set(answer) <= {"ok", "error"}
    assert after == before, "the request changed Redis"
    return answer


@pytest.mark.parametrize("case", ALL_CASES, ids=[_case_id(c) for c in ALL_CASES])
def test_error_answers_and_changes_nothing(busy: Harness, case: Case) -> None:
    _expect_error(busy, case)


@pytest.mark.parametrize("prefix", ["/api/v3", "/api/v2", "/api/v1", ""])
def test_errors_are_the_same_under_every_version(busy: Harness, prefix: str) -> None:
    for method, target, body, status, text in [
        ("POST", "/vm", {"pool1": 101}, 400, "at most 100"),
        ("POST", "/vm", {"nosuchpool": 1}, 404, "nosuchpool"),
        ("POST", "/vm/pool3", None, 503, ""),
        ("GET", "/vm/a%2Fb", None, 400, "Invalid hostname"),
        ("PUT", "/vm/{running}", {"lifetime": 0}, 400, "Lifetime"),
        ("DELETE", "/vm/nosuchvm", None, 404, "nosuchvm"),
    ]:
        _expect_error(busy, (method, prefix + target, body, status, text))


def test_unknown_route_and_wrong_method_bodies(busy: Harness) -> None:
    reply = busy.get("/api/v3/nosuchroute")
    assert (reply.status, reply.json) == (404, {"ok": False})
    reply = busy.request("PATCH", "/api/v3/vm")
    assert reply.status == 405
    assert reply.headers["Allow"] == "GET, HEAD, POST"


def test_put_reports_every_problem_at_once(busy: Harness) -> None:
    answer = _expect_error(busy, (
        "PUT", "/api/v3/vm/{running}",
        {"lifetime": 0, "tags": {"colour": "red", "project": "a<b"}, "extra": 1}, 400, "Lifetime",
    ))
    failures = answer["failure"]
    assert len(failures) == 4, failures
    assert failures[0] == "Lifetime must be a positive integer (got 0)"


def test_put_on_a_vm_that_is_gone_is_404_and_does_not_recreate_it(busy: Harness) -> None:
    busy.client.delete(f"vmpool:vm:{busy.running}")  # type: ignore[attr-defined]
    _expect_error(busy, ("PUT", "/api/v3/vm/{running}", {"tags": {"project": "ci"}}, 404, ""))


def test_return_twice_is_ok_the_second_time_and_changes_nothing(busy: Harness) -> None:
    """The retry of a return answered 503 ("send the DELETE again", docs/reliability.md "Failover")
    finds the VM returned: ok, as vmfloaty needs (it reads only ``ok``; vmpooler's 404 here made
    `floaty delete` list the VM under "Unable to delete" and exit 1)."""
    assert busy.delete(f"/api/v3/vm/{busy.running}").status == 200  # type: ignore[attr-defined]
    before = busy.redis_state()
    again = busy.delete(f"/api/v3/vm/{busy.running}")  # type: ignore[attr-defined]
    assert (again.status, again.json) == (200, {"ok": True})
    assert busy.redis_state() == before


def test_config_without_pools_is_404(make_stack: Callable[[str], Harness]) -> None:
    stack = make_stack(":config:\n  domain: example.com\n")
    reply = stack.get("/api/v3/config")
    assert reply.status == 404
    assert reply.json["ok"] is False


def test_lifetime_limit_is_only_enforced_when_configured(make_stack: Callable[[str], Harness]) -> None:
    """Without max_lifetime_upper_limit any positive lifetime is taken (as in vmpooler), and the
    VM can still be described afterwards."""
    stack = make_stack(CONFIG_YAML.replace("  max_lifetime_upper_limit: 168\n", ""))
    stack.fill("pool1")
    host = stack.checkout("pool1")
    assert stack.put(f"/api/v3/vm/{host}", {"lifetime": 20000}).status == 200
    described = stack.get(f"/api/v3/vm/{host}")
    assert described.status == 200
    assert described.json[host]["lifetime"] == 20000


def test_an_absurd_lifetime_is_refused_even_without_a_configured_limit(make_stack: Callable[[str], Harness]) -> None:
    """A lifetime whose end is past any date would make the VM impossible to describe."""
    stack = make_stack(CONFIG_YAML.replace("  max_lifetime_upper_limit: 168\n", ""))
    stack.fill("pool1", "pool2")
    stack.running = stack.checkout("pool1")  # type: ignore[attr-defined]
    _expect_error(stack, ("PUT", "/api/v3/vm/{running}", {"lifetime": "9" * 30}, 400, "exceeds"))
    assert stack.get(f"/api/v3/vm/{stack.running}").status == 200  # type: ignore[attr-defined]


def refusal_message(busy: Harness, case: Case) -> str:
    """The message of the refusal ``case`` asks for (method, target, body, status and a text the
    message holds): answered with that status, Redis unchanged."""
    method, target, body, status, text = case
    before = busy.redis_state()
    reply = busy.request(method, target.format(running=busy.running), body)  # type: ignore[attr-defined]
    assert (reply.status, reply.json["ok"]) == (status, False) and busy.redis_state() == before
    answer = reply.json
    (message,) = [found for found in (answer.get("error"), answer.get("message"), *answer.get("failure", []))
                  if found and text in found]
    return str(message)


@pytest.mark.parametrize("case", [
    ("GET", "/summary/a%0D%0AX-Injected:%201%1B%5B2J/x", None, 404, "unknown summary section"),
    ("PUT", "/api/v3/vm/{running}", {"lifetime": "2\r\nX-Injected: 1\x1b[2J"}, 400, "Lifetime"),
    ("GET", "/api/v3/ondemandvm/a%0AX-Injected%1B%5D0%3Bpwned%07", None, 404, "no request found"),
], ids=["summary section", "lifetime", "on-demand id"])
def test_control_characters_sent_are_shown_as_escapes_in_the_message(busy: Harness, case: Case) -> None:
    """vmfloaty prints an error's message to its user: a CR/LF in the value a caller sent began a
    line the API seemed to have written (``X-Injected: 1``), and an escape sequence (clear the
    screen, retitle the terminal) ran in the terminal. The value is still shown, its control
    characters as escapes."""
    message = refusal_message(busy, case)
    assert not any(ord(character) < 0x20 or 0x7F <= ord(character) <= 0x9F for character in message), message
    assert "\\n" in message, message


@pytest.mark.parametrize("case", [
    ("PUT", "/api/v3/vm/{running}", {"disk": "\u202e8 GB\u2066"}, 400, "disk size"),
    ("PUT", "/api/v3/vm/{running}", {"lifetime": "x\u200b\u2028\ufeff\U000e0041"}, 400, "Lifetime"),
    ("GET", "/api/v3/ondemandvm/a%E2%80%AEdi", None, 404, "no request found"),
], ids=["disk", "lifetime", "on-demand id"])
def test_invisible_characters_sent_are_shown_as_escapes_in_the_message(busy: Harness, case: Case) -> None:
    """A right-to-left override in a value (``floaty modify --disk``'s argument) was echoed as
    sent: printed by vmfloaty, the rest of the message, the API's own words too, read backwards
    ("Trojan Source"), and zero-width or tag characters hid what was sent. They are shown as
    escapes, as control characters are."""
    message = refusal_message(busy, case)
    assert all(character.isprintable() for character in message), ascii(message)
    assert "\\u20" in message or "\\ufeff" in message, ascii(message)


def test_a_value_cut_short_is_cut_between_escapes(busy: Harness) -> None:
    """A message quotes 40 characters of a value, its control characters written as escapes: the
    cut fell inside an escape (``...\\x1b\\x1...``), an escape sequence no reader can make out."""
    reply = busy.request("PUT", f"/api/v3/vm/{busy.running}", {"disk": "a" + "\x1b" * 20})  # type: ignore[attr-defined]
    assert reply.status == 400
    (message,) = reply.json["failure"]
    assert "(a" + "\\x1b" * 9 + "...)" in message, message


def test_a_method_of_60_kb_is_not_echoed_back(busy: Harness) -> None:
    """A server that takes any token as a method (the in-process one: http.server reads up to
    64 KiB of request line) handed the gateway a 60 KB method, which its 405 echoed whole."""
    before = busy.redis_state()
    reply = busy.request("X" * 60_000, "/api/v3/vm", None)
    assert reply.status == 405 and reply.json["ok"] is False, reply.raw[:300]
    assert len(reply.raw) < 200, "the answer echoes the method back"
    assert busy.redis_state() == before


@pytest.mark.parametrize("query", ["pool=pool1&" * 120_000, "view=" + "x" * 1_100_000],
                         ids=["120,000 parameters", "one value of 1.1 MB"])
def test_a_query_larger_than_any_api_gateway_request_is_refused_before_it_is_parsed(busy: Harness,
                                                                                   query: str) -> None:
    """The local gateway parsed the whole query string into the event, and only the app then
    refused it (414): 350,000 parameters (1.4 MB) took 0.9-1.5 s and tens of MB per request.
    Now refused from its length and separators, before any parameter is made."""
    before = busy.redis_state()
    target = f"/api/v3/status?{query}"
    tracemalloc.start()
    try:
        status, _, raw = busy.gateway("GET", target, {"host": "x"}, b"", "10.0.0.1")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    answer = json.loads(raw)
    assert (status, answer["ok"]) == (414, False) and "more than any API Gateway request" in answer["error"], answer
    assert peak < 1.5 * len(target), f"refusing it took {peak} bytes"  # the query split off: one copy
    assert busy.redis_state() == before


def test_a_process_out_of_redis_connections_answers_503_with_retry_after(
        make_harness: Any, redis_server: Any) -> None:
    """A process whose Redis connections are all taken (``MAX_CONNECTIONS``: threads stuck in
    calls, each holding one) answers a checkout 503 with ``Retry-After``, never a 500, and takes
    nothing; once connections are back it is served."""
    from chalicelib.config import parse
    from chalicelib.store import connect
    from chalicelib.store.connection import MAX_CONNECTIONS

    config = parse(CONFIG_YAML)
    client = connect(parse(f":redis: {{server: 127.0.0.1, port: {redis_server.port}}}").redis)
    stack = make_harness(config, client=client, headers={"Content-Type": "application/json"})
    stack.fill("pool1")
    before = stack.client.zcard(stack.services.store.keys.pool_state("pool1", "ready"))
    held = []
    try:
        with pytest.raises(redis.exceptions.MaxConnectionsError):
            while True:
                held.append(client.connection_pool.get_connection())
        assert len(held) == MAX_CONNECTIONS
        refused = stack.call("POST", "/api/v3/vm/pool1")
        assert refused.status == 503 and refused.body["ok"] is False and refused.headers["Retry-After"] == "1"
    finally:
        for connection in held:
            client.connection_pool.release(connection)
    assert stack.client.zcard(stack.services.store.keys.pool_state("pool1", "ready")) == before
    assert stack.call("POST", "/api/v3/vm/pool1").status == 200
