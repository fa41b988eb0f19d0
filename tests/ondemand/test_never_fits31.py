"""A request larger than the service ever runs can never fit: a 403 saying so and how many one
may ask for, not the 503 with Retry-After that vmfloaty and beaker retry forever."""

from __future__ import annotations

import pytest

TOO_MANY = "the service runs at most 6 VMs in all, and this request alone asks for 7; ask for at most 6"


@pytest.mark.parametrize(("path", "key"), [("/api/v3/ondemandvm", "message"), ("/api/v2/vm", "error")])
def test_a_request_above_the_service_maximum_is_refused_for_good(make_stack, redis_client, path, key):
    # Before: 503 "the service runs its maximum of 6 VMs; try again later" (Retry-After: 60).
    stack = make_stack(size=0, max_running_vms=6, max_ondemand_instances_per_request=10)
    before = sorted(redis_client.keys("*"))
    assert stack.answer("POST", path, {"debian-12": 7}) == (403, {"ok": False, key: TOO_MANY})
    assert sorted(redis_client.keys("*")) == before
    # One that fits but not now keeps its 503: 3 more beside 4 open (the service's, with
    # Retry-After), or a pool short of them (vmpooler's bare 503).
    if path.endswith("ondemandvm"):
        assert stack.answer("POST", path, {"debian-12": 4})[0] == 201
    assert stack.answer("POST", path, {"debian-12": 3})[0] == 503
