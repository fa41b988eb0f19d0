"""POST/DELETE /config/clonetarget against vcsim: the runtime clone target reaches the vSphere
provider's clone through the pool's reconcile (run_pool, as the scheduled Lambda runs it)."""

from __future__ import annotations

import secrets

import pytest

from chalicelib.manager.runner import run_pool
from chalicelib.services import Services
from tests.harness import Harness, HarnessFactory
from tests.support import eventually
from tests.vsphere.vcsim import VcsimServer, vcsim_config

POOL = "placed"


@pytest.fixture
def harness(vcsim: VcsimServer, make_harness: HarnessFactory) -> Harness:
    config = vcsim_config(vcsim, [{"name": POOL, "size": 1, "folder": f"vmpool/{POOL}-{secrets.token_hex(4)}",
                                   "ready_check": "tools"}],
                          service={"experimental_features": True})
    return make_harness(config)


def vms(services: Services, state: str) -> list[str]:
    return services.store.hostnames(POOL, state)


def test_runtime_clone_target_places_the_next_clones(harness: Harness) -> None:
    services, call = harness.services, harness.answer
    assert call("POST", "/api/v3/config/clonetarget", {POOL: "NoSuchCluster"}) == (201, {"ok": True})
    report = run_pool(services, POOL, budget_seconds=0)
    # The provider looked for the override, not the template's cluster: the clone failed there.
    (failed_vm,) = report.passes[0].clones_started
    for _ in range(3):
        run_pool(services, POOL, budget_seconds=0)
    record = services.store.get_vm(failed_vm)
    assert record is not None and "clone_target DC0/host/NoSuchCluster not found" in record.reason

    status, answer = call("DELETE", f"/api/v3/config/clonetarget/{POOL}")
    assert (status, answer) == (201, {"ok": True, "clone_target_before_reset": "NoSuchCluster",
                                      "clone_target_before_overrides": None})
    assert call("POST", "/api/v3/config/clonetarget", {POOL: "DC0_C0"}) == (201, {"ok": True})

    def ready_after_a_run() -> list[str]:
        run_pool(services, POOL, budget_seconds=0)
        return vms(services, "ready")

    (ready,) = eventually(ready_after_a_run, 10, "the clone to boot")  # vcsim boots in wall time (1 s)
    record = services.store.get_vm(ready)
    assert record is not None and record.host.startswith("DC0_C0_H")
