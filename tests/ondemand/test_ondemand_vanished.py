"""On-demand VMs that vanish from the provider while booting, and DELETE /vm of on-demand VMs
released through DELETE /ondemandvm (vmfloaty's ``floaty delete`` after the request's deletion)."""

from __future__ import annotations

from chalicelib.manager.pending import GONE_WHILE_BOOTING_AFTER_SECONDS
from chalicelib.store.ondemand import GONE_WHILE_BOOTING, OnDemandStore

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
    stack.run_passes("slow-boot", seconds=60, passes=6)
    status, body = stack.answer("GET", f"/api/v3/ondemandvm/{request_id}")
    assert status == 200 and body["ready"] is True, body
    [delivered] = body["slow-boot"]["hostname"]
    assert delivered.split(".")[0] not in vanished
