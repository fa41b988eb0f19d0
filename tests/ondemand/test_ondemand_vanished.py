"""On-demand VMs that vanish from the provider while booting, and DELETE /vm of on-demand VMs
released through DELETE /ondemandvm (vmfloaty's ``floaty delete`` after the request's deletion)."""

from __future__ import annotations

from chalicelib.manager.pending import GONE_WHILE_BOOTING_AFTER_SECONDS
from chalicelib.store.ondemand import GONE_WHILE_BOOTING, OnDemandStore, deleted_vm_reason
from chalicelib.store.store import UNUSED_RECORD_TTL_SECONDS

SLOW_BOOT_POOL = """
  - name: slow-boot
    template: templates/slow-boot
    size: 0
    provider: dummy
    boot_time: 240
"""


def building(stack, request_id: str) -> list[str]:
    return [vm.name for vm in OnDemandStore(stack.services.store).get(request_id).vms
            if stack.state_of(vm.name) == "pending"]


def test_a_request_vm_gone_while_booting_is_built_again_before_the_pool_timeout_without_spending_retries(
        make_stack):
    # Before, a VM built for a request that vanished from the provider after its clone ended
    # (deleted in vCenter by hand, vcsim restarted after a kill -9) stayed pending until the
    # pool's timeout (15 minutes): its request waited that long for nothing, and failed at its
    # ttl when that came first. And then it counted as a failed attempt of the request.
    stack = make_stack(size=0, extra=SLOW_BOOT_POOL, ondemand_request_ttl=60)
    request_id = stack.answer("POST", "/api/v3/ondemandvm", {"slow-boot": 1})[1]["request_id"]
    pool = stack.pool("slow-boot")
    vanished = []
    for _ in range(3):  # more than max_vm_retries (2): none of them is a failed attempt
        stack.reconcile("slow-boot")
        stack.clock.advance(1)
        stack.reconcile("slow-boot")  # its clone noted done; booting
        [booting] = building(stack, request_id)
        assert stack.services.store.get_vm(booting).clone_end is not None
        stack.provider.delete_by_hand(pool, booting)
        stack.clock.advance(GONE_WHILE_BOOTING_AFTER_SECONDS + 1)
        stack.reconcile("slow-boot")
        gone = stack.services.store.get_vm(booting)
        assert (gone.state, gone.reason) == ("destroyed", GONE_WHILE_BOOTING)
        assert stack.clock.now() - (gone.clone_start or 0) < pool.timeout_minutes * 60
        vanished.append(booting)
        status, body = stack.answer("GET", f"/api/v3/ondemandvm/{request_id}")
        assert status == 202 and body["slow-boot"] == {"ready": "0", "pending": "1"}, body
    # Their records, never held, expire an hour after the drop (UNUSED_RECORD_TTL_SECONDS), while
    # a request may stay open longer: a record gone must not count as a failed attempt then.
    for hostname in vanished:
        key = stack.services.store.keys.vm(hostname)
        assert 0 < stack.client.ttl(key) <= UNUSED_RECORD_TTL_SECONDS
        stack.client.delete(key)
    stack.run_passes("slow-boot", seconds=60, passes=6)
    status, body = stack.answer("GET", f"/api/v3/ondemandvm/{request_id}")
    assert status == 200 and body["ready"] is True, body
    [delivered] = body["slow-boot"]["hostname"]
    assert delivered.split(".")[0] not in vanished


NEVER_READY_POOL = """
  - name: slow
    template: templates/slow
    size: 0
    provider: dummy
    vmready_fail_percent: 100
:auth:
  provider: dummy
"""


def test_delete_vm_of_a_vm_released_with_its_request_is_ok_for_its_owner_only(make_stack):
    # `floaty delete <host>` after `DELETE /ondemandvm/<id>` (or the other way round, a script
    # cleaning up both) was a 404 and floaty listed the VM under "Unable to delete" (exit 1),
    # while the same DELETE sent twice for a checked-out VM is ok (vmpooler: 200 for any VM it
    # has a record of). Another user, and a VM still building when the request was deleted
    # (its name never given to its user), still get the 404 "not running".
    stack = make_stack(size=0, extra=NEVER_READY_POOL)
    alice, alice_again, bob = (stack.new_token(user, "password") for user in ("alice", "alice", "bob"))
    mine = {"X-AUTH-TOKEN": alice}
    request_id = stack.answer("POST", "/api/v3/ondemandvm", {"debian": 1, "slow": 1}, headers=mine)[1]["request_id"]
    stack.run_passes("debian-12", "slow")
    [delivered] = stack.services.store.hostnames("debian-12", "running")
    [unbuilt] = stack.services.store.hostnames("slow", "pending")
    assert stack.answer("DELETE", f"/api/v3/ondemandvm/{request_id}", headers=mine) == (200, {"ok": True})
    assert stack.state_of(delivered) == "completed"

    for version in ("/api/v3", "/api/v2", ""):
        assert stack.answer("DELETE", f"{version}/vm/{delivered}", headers={"X-AUTH-TOKEN": alice_again}) \
            == (200, {"ok": True}), version
    not_running = (404, {"ok": False, "error": f"VM {delivered} is not running"})
    for headers in ({"X-AUTH-TOKEN": bob}, {}):
        assert stack.answer("DELETE", f"/api/v3/vm/{delivered}", headers=headers) == not_running, headers

    def answered_to_others_as_a_name_never_used(state: str) -> None:
        # The same status and body shape as for a name no VM ever had, on every version (the
        # message says "not running": GET /vm, open to anyone as in vmpooler, shows it destroyed
        # anyway), and nothing changes.
        for version in ("/api/v3", "/api/v2", ""):
            for headers in ({"X-AUTH-TOKEN": bob}, {}, {"X-AUTH-TOKEN": "not-a-token"}):
                status, body = stack.answer("DELETE", f"{version}/vm/{delivered}", headers=headers)
                unknown_status, unknown_body = stack.answer("DELETE", f"{version}/vm/never-used", headers=headers)
                assert (status, sorted(body), body["ok"]) == (unknown_status, sorted(unknown_body), False) \
                    and status in (401, 404), (version, headers, body, unknown_body)
        assert (stack.state_of(delivered), stack.services.store.get_vm(delivered).reason) \
            == (state, deleted_vm_reason(request_id))

    answered_to_others_as_a_name_never_used("completed")
    assert stack.answer("DELETE", f"/api/v3/vm/{unbuilt}", headers=mine)[0] == 404

    stack.run_passes("debian-12", passes=1)  # destroyed; its record kept for data_ttl
    assert stack.state_of(delivered) == "destroyed"
    assert stack.answer("DELETE", f"/api/v3/vm/{delivered}", headers=mine) == (200, {"ok": True})
    assert stack.state_of(delivered) == "destroyed"
    answered_to_others_as_a_name_never_used("destroyed")
