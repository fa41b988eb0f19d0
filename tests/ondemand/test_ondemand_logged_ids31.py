"""Operator logs name an on-demand request by a fingerprint of its id, never the id: an id the
service drew is the secret that reads the request and its VMs (token-less GET /ondemandvm/<id>)."""

from __future__ import annotations

import hashlib

from chalicelib.manager import dispatch, ondemand
from chalicelib.manager.runner import run_pool
from tests.ondemand.kept import advance


def test_a_failed_requests_log_line_names_it_by_a_fingerprint_not_its_id(make_stack, log_output):
    stack = make_stack(size=0)
    status, body = stack.answer("POST", "/api/v3/ondemandvm", {"debian-12": 1})
    assert status == 201
    request_id = body["request_id"]
    advance(stack, 6 * 60)  # past ondemand_request_ttl (5 minutes), no pass since
    run_pool(stack.services, "debian-12")
    logged = log_output.getvalue()
    # Before: the pass's errors said "on-demand request <id>: The request failed: ...".
    assert request_id not in logged
    fingerprint = hashlib.sha256(request_id.encode()).hexdigest()[:8]
    assert f"on-demand request #{fingerprint}: The request failed" in logged
    # Its owner is still told why, by the id.
    status, body = stack.answer("GET", f"/api/v3/ondemandvm/{request_id}")
    assert status == 200 and "The request failed" in str(body)


def test_the_tick_names_requests_it_failed_for_an_unserved_pool_by_fingerprint(make_stack, log_output):
    stack = make_stack(size=0)
    request_id = stack.answer("POST", "/api/v3/ondemandvm", {"debian-12": 1})[1]["request_id"]
    advance(stack, ondemand.UNSERVED_GRACE_SECONDS + 1)
    # debian-12 is served by no pass (as once removed from the config and forgotten).
    assert dispatch.fail_unserved_requests(stack.services, {"win-2022"}) == {"debian-12": [request_id]}
    logged = log_output.getvalue()
    assert "no pass serves them" in logged
    # Before: the warning's "requests" listed the ids themselves.
    assert request_id not in logged
    assert f"on-demand request #{hashlib.sha256(request_id.encode()).hexdigest()[:8]}" in logged
