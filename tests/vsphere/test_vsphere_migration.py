"""Migration at checkout against vcsim with three hosts whose load follows their VMs: checked-out
VMs leave the busy host for the least used one, one at a time (migration_limit 1), and GET /vm
shows where each VM really is."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Iterator

import pytest
import redis

import app
from chalicelib.clock import FakeClock
from chalicelib.manager.reconcile import PassReport, reconcile_pool
from chalicelib.services import Services
from local.gateway import Gateway
from tests.vsphere.conftest import VcsimServer, vcsim_config


@pytest.fixture
def loaded_vcsim(vcsim_dir: Path) -> Iterator[VcsimServer]:
    """A simulator of its own where each powered-on VM uses 15 % of its host."""
    server = VcsimServer(boot_delay=0.2, cert_path=vcsim_dir / "loaded.pem", host_load_per_vm=15)
    server.start()
    yield server
    server.stop()


def test_checked_out_vms_move_off_the_busy_host(loaded_vcsim: VcsimServer, redis_client: redis.Redis,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    config = vcsim_config(loaded_vcsim, service={"migration_limit": 1},
                          pools=[{"name": "mig", "size": 3, "folder": "vmpool/mig", "ready_check": "tools"}])
    services = Services(config, redis_client, clock=FakeClock(), prefix="vmig:")
    monkeypatch.setattr(app, "_services", services)
    gateway = Gateway(app.app)
    pool = services.config.pool("mig")
    assert pool is not None
    provider = services.provider("vsphere")

    def run() -> PassReport:
        assert pool is not None
        return reconcile_pool(services.store, provider, pool, services.clock, services.config.service)

    def where() -> dict[str, str | None]:
        assert pool is not None
        return {vm.name: vm.host for vm in provider.list_vms(pool)}

    def shown(hostname: str) -> dict[str, Any]:
        status, _, body = gateway("GET", f"/api/v3/vm/{hostname}", {}, b"", "127.0.0.1")
        assert status == 200, body
        return dict(json.loads(body)[hostname])

    for _ in range(100):
        run()
        if services.store.counts(["mig"])["mig"]["ready"] == 3:
            break
        time.sleep(0.1)
    first_three = where()
    busy = set(first_three.values())
    assert len(busy) == 1  # vcsim puts every clone on the template's host
    busy_host = busy.pop()
    time.sleep(0.5)  # the simulator's host stats follow its VMs every 0.1 s

    status, _, body = gateway("POST", "/api/v3/vm", {}, json.dumps({"mig": 2}).encode(), "127.0.0.1")
    assert status == 200, body
    taken = [name.split(".")[0] for name in json.loads(body)["mig"]["hostname"]]
    assert all(shown(host)["migrated"] is False and shown(host)["host"] == busy_host for host in taken)

    in_flight = []
    for _ in range(6):
        run()
        in_flight.append(int(redis_client.zcard(services.store.keys.migrating)))
        if all(shown(host)["migrated"] for host in taken):
            break
    assert max(in_flight) == 1  # migration_limit
    actual = where()
    for host in taken:
        answer = shown(host)
        assert answer["migrated"] is True
        assert answer["host"] == actual[host] != busy_host
    # The VM nobody checked out stays where it was.
    [left] = set(first_three) - set(taken)
    assert actual[left] == busy_host and shown(left)["migrated"] is False
