"""A request's VM set (``ondemand:<id>:vms``) lives as long as the request, never longer.

Each pass's reservation for an open request set the set's expiry to ``data_ttl`` from then, while
the request's own ran from its creation: a request still open when its record expired (no pass
failing it between its ``ondemand_request_ttl`` and ``data_ttl``, which a config may no longer
set the other way round, its other pool's passes not running) left its VM
set behind, and a new request under the same chosen id took it over: it counted the first
caller's VM as its own, and deleting it destroyed that VM, in use."""

from __future__ import annotations

from tests.ondemand.kept import advance

FIRST, SECOND = "10.0.0.1", "10.0.0.2"
REQUEST_ID = "ci-build-1"


def test_a_new_request_under_an_expired_ones_id_never_takes_its_vms(make_stack):
    stack = make_stack(size=0, ondemand_request_ttl=30, extra=":redis:\n  data_ttl: 1\n")
    reply = stack.post("/api/v3/ondemandvm", {"debian-12": 1, "win-2022": 1, "request_id": REQUEST_ID},
                       client_ip=FIRST)
    assert reply.status == 201, reply.json
    stack.run_passes("debian-12")  # its debian-12 VM handed over; win-2022's passes do not run
    [host] = stack.hosts("debian-12", "running")
    advance(stack, 20 * 60)
    stack.reconcile("debian-12")  # the request is still open: this pass looks at it again
    advance(stack, 41 * 60)  # no pass since (stalled): an hour after its creation its record has expired
    assert stack.get(f"/api/v3/ondemandvm/{REQUEST_ID}", client_ip=FIRST).status == 404
    assert stack.state_of(host) == "running"

    reply = stack.post("/api/v3/ondemandvm", {"debian-12": 1, "request_id": REQUEST_ID}, client_ip=SECOND)
    assert reply.status == 201, reply.json
    reply = stack.get(f"/api/v3/ondemandvm/{REQUEST_ID}", client_ip=SECOND)
    assert (reply.status, reply.json["debian-12"]) == (202, {"ready": "0", "pending": "1"})
    assert stack.delete(f"/api/v3/ondemandvm/{REQUEST_ID}", client_ip=SECOND).status == 200
    stack.run_passes("debian-12", passes=1)
    assert stack.state_of(host) == "running" and host in stack.provider_vms("debian-12")
