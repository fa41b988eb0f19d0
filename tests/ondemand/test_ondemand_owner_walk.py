"""What one on-demand create costs Redis does not grow with what its owner keeps.

An owner keeps its newest REQUESTS_KEPT_PER_OWNER ended requests; each create past them forgets
the oldest that hold nothing (lua/ondemand_create.lua). Before, the script read the owner's
whole set and looked at each request from the oldest until it had forgotten enough: an owner
whose oldest requests still held something (open, or ready with a VM running, as many as its
limits let it) had every create look at each of them, Redis serving no one else meanwhile (150
open requests ahead: 152 record reads a create). Now a create looks at the 16 oldest only,
and those still holding go to the back, so the next creates look at others."""

from __future__ import annotations

import redis

from chalicelib.store.ondemand import REQUESTS_KEPT_PER_OWNER
from tests.harness import Harness
from tests.ondemand.kept import request_records

AUTH = "\n:auth:\n  provider: dummy\n"
HELD = 150


def record_reads(client: redis.Redis) -> int:
    """HGETs Redis has run so far (a request's state is one: lua/ondemand_create.lua, ``holding``)."""
    return int(client.info("commandstats").get("cmdstat_hget", {}).get("calls", 0))


def create_and_delete(stack: Harness, headers: dict[str, str]) -> int:
    """HGETs one create (and its delete) of ``headers``' owner costs Redis."""
    stack.clock.advance(0.01)  # kept by creation time
    before = record_reads(stack.services.client)
    status, body = stack.answer("POST", "/api/v3/ondemandvm", {"debian": 1}, headers=headers)
    assert status == 201, body
    assert stack.answer("DELETE", f"/api/v3/ondemandvm/{body['request_id']}", headers=headers)[0] == 200
    return record_reads(stack.services.client) - before


def test_a_create_looks_at_a_few_of_its_owners_requests_however_many_are_open_ahead(make_stack) -> None:
    stack = make_stack(size=0, max_ondemand_requests_per_user=HELD + 1, max_ondemand_requests=HELD + 10,
                       max_running_vms_per_user=HELD + 10, max_running_vms=HELD + 10, extra=AUTH)
    quiet, busy = ({"X-AUTH-TOKEN": stack.new_token(user, "password")} for user in ("quiet", "busy"))
    held = []
    for _ in range(HELD):  # open (no pass runs): each holds its place, never forgotten
        stack.clock.advance(0.01)
        status, body = stack.answer("POST", "/api/v3/ondemandvm", {"debian": 1}, headers=busy)
        assert status == 201, body
        held.append(body["request_id"])
    for _ in range(REQUESTS_KEPT_PER_OWNER):  # both owners at their kept bound
        create_and_delete(stack, busy)
        create_and_delete(stack, quiet)

    alone = [create_and_delete(stack, quiet) for _ in range(3)]
    behind_open = [create_and_delete(stack, busy) for _ in range(3 * HELD // 16)]

    # A few more reads than an owner holding nothing: not one per request open ahead.
    assert max(behind_open) <= max(alone) + 20, (alone, behind_open)
    # The bound holds: an owner keeps at most REQUESTS_KEPT_PER_OWNER requests besides those
    # still holding (the busy owner's open ones fill it), and the open ones all answer.
    assert HELD + REQUESTS_KEPT_PER_OWNER < request_records(stack) <= HELD + REQUESTS_KEPT_PER_OWNER + 16
    assert {stack.answer("GET", f"/api/v3/ondemandvm/{request_id}", headers=busy)[0] for request_id in held} == {202}
