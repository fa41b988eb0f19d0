"""Which VMs an on-demand request loses spend its retries (``max_vm_retries``)."""

from __future__ import annotations

from typing import Sequence

from chalicelib.providers.base import ProviderError
from chalicelib.providers.failures import FailureKind
from chalicelib.store.ondemand import CLONE_FAILED, OnDemandStore

ATTEMPTS = 3
"""More than the stack's max_vm_retries (2): counted as failed attempts, the request fails."""


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
