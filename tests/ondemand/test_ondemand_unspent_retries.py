"""Which VMs an on-demand request loses spend its retries (``max_vm_retries``). None that it
loses through no failure of their clone, however long the request is open: a clone reserved and
never started (the pass killed in between), a VM delivered then gone from the provider before the
request was ready. Their records expire after their destroy (an hour for one never held:
``UNUSED_RECORD_TTL_SECONDS``), while a request may stay open longer, and a record gone used to
read as a failed attempt."""

from __future__ import annotations

from typing import Callable, Sequence

import pytest

from chalicelib.manager.pending import CLONE_START_GRACE_SECONDS
from chalicelib.providers.base import ProviderError
from chalicelib.providers.failures import FailureKind
from chalicelib.store.ondemand import CLONE_FAILED, GONE_WHILE_RUNNING, OnDemandStore
from chalicelib.store.store import UNUSED_RECORD_TTL_SECONDS
from tests.harness import Killed
from tests.ondemand.test_ondemand_vanished import SLOW_BOOT_POOL

ATTEMPTS = 3
"""More than the stack's max_vm_retries (2): counted as failed attempts, the request fails."""


def killed_at(step: str) -> Callable[[str], None]:
    """A checkpoint that kills the pass the first time it reaches ``step``."""

    def checkpoint(name: str) -> None:
        if name == step:
            raise Killed(name)

    return checkpoint


def request_vms(stack, request_id: str) -> list[str]:
    return [vm.name for vm in OnDemandStore(stack.services.store).get(request_id).vms]


def expire_records(stack, hostnames: list[str], within: float = UNUSED_RECORD_TTL_SECONDS) -> None:
    """What time in Redis does to the records of destroyed VMs: those never held live an hour,
    delivered ones ``data_ttl``."""
    for hostname in hostnames:
        key = stack.services.store.keys.vm(hostname)
        assert 0 < stack.client.ttl(key) <= within, hostname
        stack.client.delete(key)


@pytest.mark.parametrize("step", ["ondemand_reserved", "ondemand_claimed"])
def test_clones_reserved_for_a_request_and_never_started_spend_no_retry_once_their_records_expire(
        make_stack, step):
    # Before, each clone a killed pass reserved (and the next pass gave up as never started)
    # was no failed attempt while its record lived, and one once it expired: a request open for
    # more than an hour then failed with "3 attempts to build its VMs failed" though no clone had.
    stack = make_stack(size=0, extra=SLOW_BOOT_POOL, ondemand_request_ttl=180)
    request_id = stack.answer("POST", "/api/v3/ondemandvm", {"slow-boot": 1})[1]["request_id"]
    never_started: list[str] = []
    for _ in range(ATTEMPTS):
        with pytest.raises(Killed):
            stack.reconcile("slow-boot", killed_at(step))  # the reservation made, no clone asked
        [reserved] = [host for host in request_vms(stack, request_id) if stack.state_of(host) == "pending"]
        assert not stack.services.store.get_vm(reserved).clone_task
        never_started.append(reserved)
        stack.clock.advance(CLONE_START_GRACE_SECONDS + 1)
    stack.reconcile("slow-boot")  # the last one given up, a replacement cloned (4 minutes' boot)
    stack.run_passes("slow-boot", passes=1)  # the ones given up destroyed
    assert {stack.state_of(host) for host in never_started} == {"destroyed"}
    expire_records(stack, never_started)
    stack.run_passes("slow-boot", seconds=60, passes=5)
    status, body = stack.answer("GET", f"/api/v3/ondemandvm/{request_id}")
    assert status == 200 and body["ready"] is True, body
    [delivered] = body["slow-boot"]["hostname"]
    assert delivered.split(".")[0] not in never_started


def test_vms_delivered_then_gone_before_the_request_is_ready_are_replaced_without_spending_retries(make_stack):
    # A request for two VMs of two pools: the first pool's VM delivered, then deleted by hand
    # (vCenter restored, an admin), while the other pool's VM was still to come. Before, each
    # such VM was a failed attempt: the third failed the request ("3 attempts to build its VMs
    # failed") though every clone had worked. vmpooler counts no retry for it either (it keeps the
    # name in the request, which then hands over a VM that is gone; here a new one is built).
    stack = make_stack(size=0, ondemand_request_ttl=180)
    request_id = stack.answer("POST", "/api/v3/ondemandvm", {"debian": 1, "win-2022": 1})[1]["request_id"]
    pool = stack.pool("debian-12")
    vanished: list[str] = []
    for _ in range(ATTEMPTS):
        stack.run_passes("debian-12", passes=1)  # cloned, booted, handed over
        [delivered] = stack.services.store.hostnames("debian-12", "running")
        vanished.append(delivered)
        status, body = stack.answer("GET", f"/api/v3/ondemandvm/{request_id}")
        assert status == 202 and body["debian"] == {"ready": "1", "pending": "0"}, body
        stack.provider.delete_by_hand(pool, delivered)
        stack.clock.advance(1)
        stack.reconcile("debian-12")  # dropped as gone, a replacement reserved and cloned
        gone = stack.services.store.get_vm(delivered)
        assert (gone.state, gone.reason) == ("destroyed", GONE_WHILE_RUNNING)
        status, body = stack.answer("GET", f"/api/v3/ondemandvm/{request_id}")
        assert status == 202 and body["debian"] == {"ready": "0", "pending": "1"}, body
        stack.clock.advance(31)
    stack.reconcile("debian-12")
    [delivered] = stack.services.store.hostnames("debian-12", "running")
    expire_records(stack, vanished, within=stack.services.store.data_ttl_seconds)
    stack.run_passes(passes=2)
    status, body = stack.answer("GET", f"/api/v3/ondemandvm/{request_id}")
    assert status == 200 and body["ready"] is True, body
    assert body["debian"]["hostname"] == [f"{delivered}.example.com"]
    assert stack.provider_vms("debian-12") == {delivered}


def test_clones_the_provider_refuses_to_start_spend_the_retries(make_stack, monkeypatch):
    # What tells them from a clone never started is their reason alone (no task was ever noted):
    # the reservation matches its beginning, given it as the constant the reason is written with.
    stack = make_stack(size=0)
    request_id = stack.answer("POST", "/api/v3/ondemandvm", {"debian-12": 1})[1]["request_id"]

    def refused(pool, hostnames: Sequence[str], on_started=None, on_asking=None) -> dict[str, ProviderError]:
        return {hostname: ProviderError("datastore full", FailureKind.CAPACITY) for hostname in hostnames}

    monkeypatch.setattr(stack.provider, "clone_vms", refused)
    stack.run_passes("debian-12", seconds=1, passes=ATTEMPTS + 1)
    status, body = stack.answer("GET", f"/api/v3/ondemandvm/{request_id}")
    assert status == 200 and body["ready"] is False
    assert body["message"] == f"The request failed: {ATTEMPTS} attempts to build its VMs failed (max_vm_retries 2)"
    attempts = OnDemandStore(stack.services.store).get(request_id).vms
    assert len(attempts) == ATTEMPTS
    assert all(not vm.clone_task and vm.reason.startswith(f"{CLONE_FAILED} to start") for vm in attempts), attempts
