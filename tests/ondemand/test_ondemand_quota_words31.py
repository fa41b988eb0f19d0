"""A request refused at the limit on VMs one caller holds at once says which way it passed it: by
its own size (it never fits) or with what the caller holds already (return some first)."""

from __future__ import annotations


def test_a_first_request_larger_than_what_one_may_hold_is_told_so_not_to_return_some(make_stack, redis_client):
    # Before, the caller, holding nothing, was told "you may hold at most 100 VMs at once;
    # return some first": nothing to return, and no word that the request itself is too large.
    stack = make_stack(size=0, max_ondemand_instances_per_request=150)  # max_running_vms_per_user: 100
    before = sorted(redis_client.keys("*"))
    status, body = stack.answer("POST", "/api/v3/ondemandvm", {"debian-12": 140})
    assert (status, body) == (403, {"ok": False, "message": (
        "you may hold at most 100 VMs at once, and this request alone asks for 140; ask for at most 100")})
    assert sorted(redis_client.keys("*")) == before
    # The same limit passed with what the caller holds already: returning some is the way.
    assert stack.answer("POST", "/api/v3/ondemandvm", {"debian-12": 60})[0] == 201
    status, body = stack.answer("POST", "/api/v3/ondemandvm", {"debian-12": 50})
    assert (status, body) == (403, {"ok": False, "message": "you may hold at most 100 VMs at once; return some first"})
