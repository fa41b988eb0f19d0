"""GET /vm/<hostname> answers anyone: the reason of a VM built for an on-demand request must not
give away the request's id, which is the secret of a request whose id the service drew."""

from __future__ import annotations

import json


def test_a_vm_of_an_ended_request_shows_why_it_left_without_the_requests_id(make_stack):
    # Before, anyone who read the VM was told "on-demand request <uuid> was deleted", and could
    # then read that request (GET /ondemandvm/<uuid> needs no token) and its VMs' names.
    stack = make_stack(size=0)
    status, body = stack.answer("POST", "/api/v3/ondemandvm", {"debian-12": 1})
    assert status == 201
    request_id = body["request_id"]  # drawn by the service: only its creator was told
    stack.run_passes("debian-12")
    status, body = stack.answer("GET", f"/api/v3/ondemandvm/{request_id}")
    assert status == 200 and body["ready"] is True, body
    [host] = [name.split(".")[0] for name in body["debian-12"]["hostname"]]
    assert stack.answer("DELETE", f"/api/v3/ondemandvm/{request_id}") == (200, {"ok": True})

    status, body = stack.answer("GET", f"/api/v3/vm/{host}")
    assert status == 200
    assert body[host]["state"] == "destroyed" and body[host]["reason"] == "its on-demand request was deleted"
    assert request_id not in json.dumps(body)
    # Its user's DELETE of the VM (vmfloaty's `floaty delete`) is still answered as a return.
    assert stack.answer("DELETE", f"/api/v3/vm/{host}") == (200, {"ok": True})
