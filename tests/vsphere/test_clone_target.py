"""POST/DELETE /config/clonetarget against vcsim: the runtime clone target reaches the vSphere
provider's clone through the pool's reconcile (run_pool, as the scheduled Lambda runs it)."""

from __future__ import annotations

import time
from typing import Any, Iterator

import pytest
import redis

import app
from chalicelib.clock import FakeClock
from chalicelib.manager.runner import run_pool
from chalicelib.services import Services
from local.gateway import Gateway
from tests.harness import SpecOperations, load_spec
from tests.vsphere.vcsim import VcsimServer, vcsim_config

POOL = "placed"
SPEC = SpecOperations(load_spec())


@pytest.fixture
def services(vcsim: VcsimServer, redis_client: redis.Redis) -> Iterator[Services]:
    config = vcsim_config(vcsim, [{"name": POOL, "size": 1, "folder": f"vmpool/{POOL}-{time.time_ns()}",
                                   "ready_check": "tools"}],
                          service={"experimental_features": True})
    saved = app._services
    app._services = Services(config, redis_client, clock=FakeClock(), prefix="vmpool:")
    yield app._services
    app._services = saved


def call(method: str, path: str, body: Any = None) -> tuple[int, Any]:
    import json

    data = b"" if body is None else json.dumps(body).encode()
    status, _, raw = Gateway(app.app)(method, path, {}, data, "127.0.0.1")
    answer = json.loads(raw)
    SPEC.check(method, path, status, answer)
    return status, answer


def vms(services: Services, state: str) -> list[str]:
    return services.store.hostnames(POOL, state)


def test_runtime_clone_target_places_the_next_clones(services: Services) -> None:
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
    for _ in range(60):
        run_pool(services, POOL, budget_seconds=0)
        if vms(services, "ready"):
            break
        time.sleep(0.1)  # vcsim's guest boots in wall time (1 s)
    (ready,) = vms(services, "ready")
    record = services.store.get_vm(ready)
    assert record is not None and record.host.startswith("DC0_C0_H")
