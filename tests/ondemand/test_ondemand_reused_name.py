"""A ready request whose VM was returned long ago holds nothing, even once another caller's VM
runs under that VM's name again (900 word names are given out again once a destroyed VM's record
expires, ``data_ttl``; the request is kept 30 days).

Before, a request "held" a VM when any record under a name in its VM set was running, whoever's
it was: its owner was charged for the other caller's VM (403 at ``max_running_vms_per_user``
while holding nothing), and the bound on kept requests (``max_ondemand_requests_kept``) never
forgot it while the name ran, forgetting newer requests or none in its place."""

from __future__ import annotations

from typing import Any

from chalicelib.manager import hostnames
from chalicelib.manager import ondemand as ondemand_step
from tests.harness import Harness
from tests.ondemand.kept import advance

DAY = 24 * 3600
OWNER, OTHER = "10.0.0.1", "10.0.0.2"
NAME = "amber-otter"


def ready_request(stack: Harness, client_ip: str) -> str:
    """A ready request of one ``debian-12`` VM, made from ``client_ip``: its id."""
    reply = stack.post("/api/v3/ondemandvm", {"debian-12": 1}, client_ip=client_ip)
    assert reply.status == 201, reply.json
    request_id = reply.json["request_id"]
    stack.run_passes("debian-12")
    reply = stack.get(f"/api/v3/ondemandvm/{request_id}")
    assert (reply.status, reply.json.get("ready"), reply.json["debian-12"]["hostname"]) == (
        200, True, [f"{NAME}.example.com"])
    return request_id


def test_a_request_is_not_held_by_another_callers_vm_under_its_returned_vms_name(make_stack, monkeypatch):
    def same_name_first(count: int, prefix: str = "") -> list[str]:
        return [NAME, *hostnames.random_candidates(count, prefix)]

    # Every reservation tries the same word name first: the reuse a busy service meets by chance.
    monkeypatch.setattr(ondemand_step, "candidate_names", same_name_first)
    monkeypatch.setattr(ondemand_step, "random_candidates", same_name_first)
    stack = make_stack(size=0, max_running_vms_per_user=1, max_ondemand_requests_kept=2)
    returned = ready_request(stack, OWNER)
    assert stack.delete(f"/api/v3/vm/{NAME}", client_ip=OWNER).status == 200
    stack.run_passes("debian-12", passes=1)
    assert stack.state_of(NAME) == "destroyed"
    advance(stack, 8 * DAY)  # the destroyed VM's record expired; its request is kept 30 days
    assert stack.state_of(NAME) is None
    assert stack.get(f"/api/v3/ondemandvm/{returned}").status == 200

    others = ready_request(stack, OTHER)  # the name runs again, for another caller

    # The owner holds nothing: its next request is admitted (before: 403, "at most 1 VMs").
    reply: Any = stack.post("/api/v3/ondemandvm", {"debian-12": 1}, client_ip=OWNER)
    assert reply.status == 201, reply.json
    # Past the bound of 2 kept requests the oldest holding nothing is forgotten: the returned
    # one, not the other caller's, whose VM runs.
    assert stack.get(f"/api/v3/ondemandvm/{returned}").status == 404
    reply = stack.get(f"/api/v3/ondemandvm/{others}")
    assert (reply.status, reply.json.get("ready")) == (200, True)
    assert stack.state_of(NAME) == "running"
