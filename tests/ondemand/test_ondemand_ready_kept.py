"""How long a ready on-demand request answers (docs/api.md, "On-demand requests"): its expiry is
set when it becomes ready, and a request outlives the VMs it delivered, so its user can read
it and release its VMs by its id as long as they run.

Redis's key expiry runs on Redis's own clock, not the harness's fake one: ``advance`` moves both,
the fake clock and every key's time to live, by the same amount (a key whose time is up is
gone, as Redis forgets it)."""

from __future__ import annotations

from chalicelib.store.ondemand import READY_REQUEST_KEPT_SECONDS, OnDemandStore
from tests.harness import PREFIX, Harness
from tests.ondemand.kept import advance, assert_three_new_requests_forget

DAY = 24 * 3600


def ready_request(stack: Harness) -> tuple[str, list[str]]:
    """A ready request of two VMs: its id and its VMs' short names."""
    status, body = stack.answer("POST", "/api/v3/ondemandvm", {"debian-12": 2})
    assert status == 201
    request_id = body["request_id"]
    stack.run_passes()
    status, body = stack.answer("GET", f"/api/v3/ondemandvm/{request_id}")
    assert (status, body.get("ready")) == (200, True)
    return request_id, [host.split(".")[0] for host in body["debian-12"]["hostname"]]


def test_a_request_whose_vms_run_past_a_week_answers_and_releases_them_by_its_id(make_stack):
    """A VM's lifetime extended to 10 days: on day 8 its request still answers ready with its
    hostnames, and DELETE /ondemandvm/<id> releases its VMs. The request answered 404 from day 7
    (``data_ttl`` after it was made) and could no longer be deleted while its VMs ran on."""
    stack = make_stack(size=0)
    request_id, hosts = ready_request(stack)
    for host in hosts:
        assert stack.answer("PUT", f"/api/v3/vm/{host}", {"lifetime": 240}) == (200, {"ok": True})

    advance(stack, 8 * DAY)
    stack.run_passes("debian-12", passes=1)
    assert {stack.state_of(host) for host in hosts} == {"running"}
    status, body = stack.answer("GET", f"/api/v3/ondemandvm/{request_id}")
    assert (status, body.get("ready")) == (200, True)
    assert sorted(host.split(".")[0] for host in body["debian-12"]["hostname"]) == sorted(hosts)

    assert stack.answer("DELETE", f"/api/v3/ondemandvm/{request_id}") == (200, {"ok": True})
    assert {stack.state_of(host) for host in hosts} == {"completed"}
    stack.run_passes("debian-12", passes=1)
    assert {stack.state_of(host) for host in hosts} == {"destroyed"}
    assert not stack.provider_vms("debian-12") & set(hosts)

    # Its VMs gone, the request is forgotten within data_ttl, as every ended request.
    deleted = (200, {"ok": True, "request_id": request_id, "ready": False, "message": "The request has been deleted"})
    assert stack.answer("GET", f"/api/v3/ondemandvm/{request_id}") == deleted
    advance(stack, stack.services.store.data_ttl_seconds)
    assert stack.answer("GET", f"/api/v3/ondemandvm/{request_id}")[0] == 404
    keys = stack.services.store.keys
    assert not stack.services.client.exists(keys.ondemand(request_id), keys.ondemand_vms(request_id))


def test_a_ready_request_answers_30_days_after_it_became_ready_then_is_forgotten(make_stack):
    """As vmpooler keeps it (2,592,000 s after it became ready), whatever its VMs' lifetimes: a
    script reading it back after a week finds it; then it is forgotten on its own."""
    stack = make_stack(size=0)
    request_id, hosts = ready_request(stack)
    advance(stack, 8 * DAY)
    stack.run_passes("debian-12", passes=2)
    assert {stack.state_of(host) for host in hosts} == {"destroyed"}  # lifetime of 2 hours
    status, body = stack.answer("GET", f"/api/v3/ondemandvm/{request_id}")
    assert (status, body.get("ready")) == (200, True)
    assert sorted(host.split(".")[0] for host in body["debian-12"]["hostname"]) == sorted(hosts)

    advance(stack, READY_REQUEST_KEPT_SECONDS - 8 * DAY)
    assert stack.answer("GET", f"/api/v3/ondemandvm/{request_id}")[0] == 404
    assert OnDemandStore(stack.services.store).get(request_id) is None


def test_a_lifetime_extended_past_30_days_keeps_the_request_data_ttl_past_its_end(make_stack):
    """A VM kept 40 days: its request answers as long as it runs, and ``data_ttl`` after its end
    (as its own record answers GET /vm/<host>), then is forgotten: the bound is its VMs' ends."""
    stack = make_stack(size=0)
    request_id, hosts = ready_request(stack)
    assert stack.answer("PUT", f"/api/v3/vm/{hosts[0]}", {"lifetime": 40 * 24}) == (200, {"ok": True})
    advance(stack, 39 * DAY)
    stack.run_passes("debian-12", passes=2)
    assert [stack.state_of(host) for host in hosts] == ["running", "destroyed"]
    status, body = stack.answer("GET", f"/api/v3/ondemandvm/{request_id}")
    assert (status, body.get("ready")) == (200, True)
    assert sorted(host.split(".")[0] for host in body["debian-12"]["hostname"]) == sorted(hosts)

    advance(stack, DAY + 60)  # its lifetime ended: reaped
    stack.run_passes("debian-12", passes=2)
    assert stack.state_of(hosts[0]) == "destroyed"
    assert stack.answer("GET", f"/api/v3/ondemandvm/{request_id}")[0] == 200
    advance(stack, stack.services.store.data_ttl_seconds)
    assert stack.answer("GET", f"/api/v3/ondemandvm/{request_id}")[0] == 404


def test_a_lifetime_shortened_or_set_on_a_plain_checkout_keeps_no_request_longer(make_stack):
    """Only a lifetime that ends later than the request's expiry allows moves it: a shortened
    one leaves it, and a plain checkout's VM (no request) touches no request."""
    stack = make_stack(size=1)
    request_id, hosts = ready_request(stack)
    keys = stack.services.store.keys
    client = stack.services.client
    kept = client.ttl(keys.ondemand(request_id))
    assert READY_REQUEST_KEPT_SECONDS - 60 < kept <= READY_REQUEST_KEPT_SECONDS
    assert client.ttl(keys.ondemand_vms(request_id)) == kept
    assert stack.answer("PUT", f"/api/v3/vm/{hosts[0]}", {"lifetime": 1}) == (200, {"ok": True})
    assert client.ttl(keys.ondemand(request_id)) <= kept
    plain = stack.checkout("debian-12")
    before = {key: client.ttl(key) for key in client.scan_iter(match=f"{PREFIX}ondemand*")}
    assert stack.answer("PUT", f"/api/v3/vm/{plain}", {"lifetime": 2000}) == (200, {"ok": True})
    assert all(client.ttl(key) <= ttl for key, ttl in before.items())


def test_ready_requests_kept_past_a_quiet_week_still_count_against_the_services_bound(make_stack):
    """The service keeps ``max_ondemand_requests_kept`` requests (lua/ondemand_create.lua); the
    set that counts them lived ``data_ttl`` past the last request made, while a ready request now
    lives 30 days: after a quiet week the new requests would start a new count beside the old,
    and Redis would keep twice the bound."""
    stack = make_stack(size=0, max_ondemand_requests_kept=3)
    old = [ready_request(stack)[0] for _ in range(3)]
    advance(stack, 8 * DAY)
    stack.run_passes("debian-12", passes=2)  # their VMs' lifetimes ended: they hold nothing
    assert all(stack.answer("GET", f"/api/v3/ondemandvm/{request_id}")[0] == 200 for request_id in old)
    assert_three_new_requests_forget(stack, old)


def test_a_request_made_ready_by_the_previous_release_is_kept_once_its_vms_lifetime_is_extended(make_stack):
    """A request the previous release made ready expires ``data_ttl`` after it was made (its
    expiry is not rewritten on upgrade); a lifetime extended after the upgrade pushes it out as
    for a request this release made ready."""
    stack = make_stack(size=0)
    request_id, hosts = ready_request(stack)
    keys, client = stack.services.store.keys, stack.services.client
    as_before = stack.services.store.data_ttl_seconds - 600  # what the previous release left
    for key in (keys.ondemand(request_id), keys.ondemand_vms(request_id)):
        client.expire(key, as_before)
    assert stack.answer("PUT", f"/api/v3/vm/{hosts[0]}", {"lifetime": 240}) == (200, {"ok": True})
    advance(stack, 8 * DAY)
    stack.run_passes("debian-12", passes=2)
    assert [stack.state_of(host) for host in hosts] == ["running", "destroyed"]
    status, body = stack.answer("GET", f"/api/v3/ondemandvm/{request_id}")
    assert (status, body.get("ready")) == (200, True)
    assert stack.answer("DELETE", f"/api/v3/ondemandvm/{request_id}") == (200, {"ok": True})
    assert stack.state_of(hosts[0]) == "completed"


def test_a_lifetime_extended_while_the_request_is_open_counts_when_it_becomes_ready(make_stack):
    """Racing with the delivery: a user extends the lifetime of a VM already delivered while the
    request still waits for another (no push then: it is not ready), then shortens it after the
    last delivery. The delivery reads the VMs' lifetimes as Redis holds them (the extension
    counts) and the later shortening never brings the expiry in: the request answers until the
    longest end asked, data_ttl past it."""
    stack = make_stack(size=0)
    status, body = stack.answer("POST", "/api/v3/ondemandvm", {"debian-12": 1, "win-2022": 1})
    assert status == 201
    request_id = body["request_id"]
    stack.run_passes("debian-12")
    status, body = stack.answer("GET", f"/api/v3/ondemandvm/{request_id}")
    assert (status, body.get("ready")) == (202, False)
    (host,) = stack.hosts("debian-12", "running")
    assert stack.answer("PUT", f"/api/v3/vm/{host}", {"lifetime": 40 * 24}) == (200, {"ok": True})
    stack.run_passes("win-2022")
    assert stack.answer("GET", f"/api/v3/ondemandvm/{request_id}")[1].get("ready") is True
    assert stack.answer("PUT", f"/api/v3/vm/{host}", {"lifetime": 50 * 24}) == (200, {"ok": True})
    assert stack.answer("PUT", f"/api/v3/vm/{host}", {"lifetime": 1}) == (200, {"ok": True})
    advance(stack, 50 * DAY - 3600)
    assert stack.answer("GET", f"/api/v3/ondemandvm/{request_id}")[0] == 200
