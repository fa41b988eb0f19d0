"""The service's bound on the on-demand requests Redis keeps (``max_ondemand_requests_kept``,
lua/ondemand_create.lua) holds however long a request is kept: the sets that count the requests
live at least as long as each request they name (docs/api.md, "On-demand requests").

They lived 30 days past the last create, while a ready request whose VM's lifetime was extended
(years, with ``max_lifetime_upper_limit`` unset) lived until ``data_ttl`` past that lifetime's
end: after a quiet month the sets were gone, those requests counted by nothing, and the next
creates admitted as many again beside them. Redis's expiries move with the fake clock
(``advance``, tests/ondemand/test_ondemand_ready_kept.py)."""

from __future__ import annotations

import pytest

from tests.harness import Harness
from tests.ondemand.kept import advance, assert_three_new_requests_forget, request_records

DAY = 24 * 3600
LONG_LIFETIME_HOURS = 365 * 24


def long_lived_request(stack: Harness, pushed: str) -> str:
    """A ready request kept a year by its VM's lifetime, that VM returned since (DELETE /vm): it
    holds nothing, so the bound may forget it. ``pushed``: the lifetime extended once the
    request is ready (PUT /vm pushes its expiry) or while it still waits for another VM (its
    delivery reads the lifetime)."""
    both = {"debian-12": 1, "win-2022": 1}
    status, body = stack.answer("POST", "/api/v3/ondemandvm", both if pushed == "while_open" else {"debian-12": 1})
    assert status == 201
    request_id = body["request_id"]
    stack.run_passes("debian-12")
    hosts = stack.hosts("debian-12", "running")
    host = next(host for host in hosts if stack.services.client.hget(
        stack.services.store.keys.vm(host), "request") == request_id)
    if pushed == "while_open":
        assert stack.answer("PUT", f"/api/v3/vm/{host}", {"lifetime": LONG_LIFETIME_HOURS}) == (200, {"ok": True})
        stack.run_passes("win-2022")
    status, body = stack.answer("GET", f"/api/v3/ondemandvm/{request_id}")
    assert (status, body.get("ready")) == (200, True)
    if pushed == "when_ready":
        assert stack.answer("PUT", f"/api/v3/vm/{host}", {"lifetime": LONG_LIFETIME_HOURS}) == (200, {"ok": True})
    for name in body.get("debian-12", {}).get("hostname", []) + body.get("win-2022", {}).get("hostname", []):
        assert stack.answer("DELETE", f"/api/v3/vm/{name.split('.')[0]}") == (200, {"ok": True})
    return request_id


@pytest.mark.parametrize("pushed", ["when_ready", "while_open"])
def test_requests_kept_a_year_still_count_against_the_bound_after_40_quiet_days(make_stack, pushed):
    """Three requests kept a year and one ordinary request the day after (cap 4); 40 days
    without a create; three new ones then forget the three old (404): Redis keeps the bound.
    Before, the counting sets expired 30 days after the last create (the next create brought
    them back to that too), and the old requests stayed beside the new, counted by nothing."""
    stack = make_stack(size=0, max_ondemand_requests_kept=4)
    old = [long_lived_request(stack, pushed) for _ in range(3)]
    stack.run_passes("debian-12", passes=2)
    stack.run_passes("win-2022", passes=2)
    advance(stack, DAY)
    assert stack.answer("POST", "/api/v3/ondemandvm", {"win-2022": 1})[0] == 201
    advance(stack, 40 * DAY)
    assert [stack.answer("GET", f"/api/v3/ondemandvm/{request_id}")[0] for request_id in old] == [200] * 3
    # The owner's requests set (its bound of REQUESTS_KEPT_PER_OWNER) is kept as long too.
    keys, client = stack.services.store.keys, stack.services.client
    longest = max(client.ttl(keys.ondemand(request_id)) for request_id in old)
    owned_left = [client.ttl(key) for key in client.scan_iter(keys.owner_requests("*"))]

    assert_three_new_requests_forget(stack, old)
    assert longest > 300 * DAY and owned_left and min(owned_left) >= longest


def test_requests_deleted_just_before_the_counting_sets_expire_still_count(make_stack):
    """A deleted request answers ``data_ttl`` more (7 days): three deleted on day 29, when the
    counting sets had a day left, are forgotten by the next three creates on day 31. Before, the
    sets expired on day 30 and the deleted requests stayed beside the new ones until day 36."""
    stack = make_stack(size=0, max_ondemand_requests_kept=3)
    old = []
    for _ in range(3):
        status, body = stack.answer("POST", "/api/v3/ondemandvm", {"debian-12": 1})
        assert status == 201
        old.append(body["request_id"])
    stack.run_passes("debian-12")
    advance(stack, 29 * DAY)
    for request_id in old:
        assert stack.answer("DELETE", f"/api/v3/ondemandvm/{request_id}") == (200, {"ok": True})
    keys, client = stack.services.store.keys, stack.services.client
    deleted_left = min(client.ttl(keys.ondemand(request_id)) for request_id in old)
    owned_left = [client.ttl(key) for key in client.scan_iter(keys.owner_requests("*"))]
    advance(stack, 2 * DAY)
    assert [stack.answer("GET", f"/api/v3/ondemandvm/{request_id}")[0] for request_id in old] == [200] * 3
    assert_three_new_requests_forget(stack, old)
    # The owner's requests set was kept as long as its deleted requests too.
    assert deleted_left > 6 * DAY and owned_left and min(owned_left) >= deleted_left


def test_requests_kept_for_their_running_vms_are_bounded_by_the_services_running_limit(make_stack):
    """The bound never forgets a request whose VM runs for it, so what a caller keeps past
    ``max_ondemand_requests_kept`` by keeping its VMs is bounded by ``max_running_vms`` (each such
    request runs one at least): past it, a clear 503 with Retry-After, nothing recorded. Once
    the VMs are returned, new requests bring Redis back within the bound."""
    stack = make_stack(size=0, max_running_vms=3, max_ondemand_requests_kept=2)
    kept = []
    for _ in range(3):
        stack.clock.advance(1)
        status, body = stack.answer("POST", "/api/v3/ondemandvm", {"debian-12": 1})
        assert status == 201, body
        kept.append(body["request_id"])
        stack.run_passes("debian-12")
    reply = stack.post("/api/v3/ondemandvm", {"debian-12": 1})
    assert (reply.status, reply.json, reply.headers.get("Retry-After")) == (
        503, {"ok": False, "message": "the service runs its maximum of 3 VMs; try again later"}, "60")
    assert request_records(stack) == 3  # over the bound of 2 by the requests whose VMs run, only
    for request_id in kept:
        assert stack.answer("GET", f"/api/v3/ondemandvm/{request_id}")[1]["ready"] is True

    for request_id in kept:
        assert stack.answer("DELETE", f"/api/v3/ondemandvm/{request_id}") == (200, {"ok": True})
    stack.run_passes("debian-12", passes=1)
    assert_three_new_requests_forget(stack, kept)
