"""A request larger than the service ever runs can never fit: a 403 saying so and how many one
may ask for, not the 503 with Retry-After that vmfloaty and beaker retry forever."""

from __future__ import annotations


def test_an_ondemand_request_above_the_service_maximum_is_refused_for_good(make_stack, redis_client):
    # Before: 503 "the service runs its maximum of 6 VMs; try again later", Retry-After: 60.
    stack = make_stack(size=0, max_running_vms=6, max_ondemand_instances_per_request=10)
    before = sorted(redis_client.keys("*"))
    status, body = stack.answer("POST", "/api/v3/ondemandvm", {"debian-12": 7})
    assert (status, body) == (403, {"ok": False, "message": (
        "the service runs at most 6 VMs in all, and this request alone asks for 7; ask for at most 6")})
    assert sorted(redis_client.keys("*")) == before
    # One that fits but not now still waits its turn.
    assert stack.answer("POST", "/api/v3/ondemandvm", {"debian-12": 4})[0] == 201
    assert stack.answer("POST", "/api/v3/ondemandvm", {"debian-12": 3})[0] == 503


def test_a_checkout_above_the_service_maximum_is_refused_for_good(make_stack, redis_client):
    stack = make_stack(size=0, max_running_vms=6, max_ondemand_instances_per_request=10)
    before = sorted(redis_client.keys("*"))
    status, body = stack.answer("POST", "/api/v2/vm", {"debian-12": 7})
    assert (status, body) == (403, {"ok": False, "error": (
        "the service runs at most 6 VMs in all, and this request alone asks for 7; ask for at most 6")})
    assert sorted(redis_client.keys("*")) == before
    # A pool short of what fits is vmpooler's bare 503.
    assert stack.answer("POST", "/api/v2/vm", {"debian-12": 6})[0] == 503
