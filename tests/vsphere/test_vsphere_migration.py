"""Migration at checkout against vcsim with three hosts whose load follows their VMs (every
clone lands on the template's host): checked-out VMs leave a busy or ineligible host for the
least used one, one at a time (migration_limit 1), a small difference is not worth a vMotion,
and GET /vm shows where each VM really is."""

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
from tests.vsphere import admin
from tests.vsphere.vcsim import VcsimServer, vcsim_config


def loaded_vcsim(directory: Path, percent: float) -> Iterator[VcsimServer]:
    server = VcsimServer(boot_delay=0.2, cert_path=directory / f"loaded-{percent}.pem", host_load_per_vm=percent)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def busy_vcsim(vcsim_dir: Path) -> Iterator[VcsimServer]:
    """Each powered-on VM uses 15 % of its host."""
    yield from loaded_vcsim(vcsim_dir, 15)


@pytest.fixture
def light_vcsim(vcsim_dir: Path) -> Iterator[VcsimServer]:
    """Each powered-on VM uses 1 % of its host."""
    yield from loaded_vcsim(vcsim_dir, 1)


class Stack:
    """The API and a pool's reconcile on a simulator, with migration_limit 1."""

    def __init__(self, server: VcsimServer, client: redis.Redis, monkeypatch: pytest.MonkeyPatch, size: int) -> None:
        config = vcsim_config(server, service={"migration_limit": 1},
                              pools=[{"name": "mig", "size": size, "folder": "vmpool/mig", "ready_check": "tools"}])
        self.client = client
        self.services = Services(config, client, clock=FakeClock(), prefix="vmig:")
        monkeypatch.setattr(app, "_services", self.services)
        self.gateway = Gateway(app.app)
        self.pool = self.services.config.pool("mig")
        self.provider = self.services.provider("vsphere")

    def run(self) -> PassReport:
        assert self.pool is not None
        return reconcile_pool(self.services.store, self.provider, self.pool, self.services.clock,
                              self.services.config.service)

    def fill(self) -> dict[str, str | None]:
        """Reconcile until the pool is full; where its VMs are (the simulator's stats then follow)."""
        assert self.pool is not None
        for _ in range(100):
            self.run()
            if self.services.store.counts(["mig"])["mig"]["ready"] == self.pool.size:
                break
            time.sleep(0.1)
        time.sleep(0.5)  # the simulator's host stats follow its VMs every 0.1 s
        return self.where()

    def where(self) -> dict[str, str | None]:
        assert self.pool is not None
        return {vm.name: vm.host for vm in self.provider.list_vms(self.pool)}

    def check_out(self, count: int) -> list[str]:
        status, _, body = self.gateway("POST", "/api/v3/vm", {}, json.dumps({"mig": count}).encode(), "127.0.0.1")
        assert status == 200, body
        names = json.loads(body)["mig"]["hostname"]
        return [name.split(".")[0] for name in ([names] if isinstance(names, str) else names)]

    def shown(self, hostname: str) -> dict[str, Any]:
        status, _, body = self.gateway("GET", f"/api/v3/vm/{hostname}", {}, b"", "127.0.0.1")
        assert status == 200, body
        return dict(json.loads(body)[hostname])

    def in_flight(self) -> int:
        return int(self.client.zcard(self.services.store.keys.migrating))


def test_checked_out_vms_move_off_the_busy_host(busy_vcsim: VcsimServer, redis_client: redis.Redis,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    stack = Stack(busy_vcsim, redis_client, monkeypatch, size=3)
    first_three = stack.fill()
    busy = set(first_three.values())
    assert len(busy) == 1  # vcsim puts every clone on the template's host
    busy_host = busy.pop()

    taken = stack.check_out(2)
    assert all(stack.shown(host)["migrated"] is False and stack.shown(host)["host"] == busy_host for host in taken)
    in_flight = []
    for _ in range(6):
        stack.run()
        in_flight.append(stack.in_flight())
        if all(stack.shown(host)["migrated"] for host in taken):
            break
    assert max(in_flight) == 1  # migration_limit
    actual = stack.where()
    for host in taken:
        answer = stack.shown(host)
        assert answer["migrated"] is True
        assert answer["host"] == actual[host] != busy_host
    # The VM nobody checked out stays where it was.
    [left] = set(first_three) - set(taken)
    assert actual[left] == busy_host and stack.shown(left)["migrated"] is False


def test_a_small_difference_is_not_worth_a_vmotion_but_an_ineligible_host_is_left(
        light_vcsim: VcsimServer, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch) -> None:
    stack = Stack(light_vcsim, redis_client, monkeypatch, size=2)
    placed = stack.fill()
    [host_name] = set(placed.values())
    [first] = stack.check_out(1)
    for _ in range(3):
        stack.run()
    assert stack.shown(first)["migrated"] is False and stack.where()[first] == host_name  # 2 points busier: stays

    # The host goes into maintenance: a VM checked out there now moves, whatever the loads.
    admin.set_maintenance(stack.provider, host_name, True)
    try:
        stack.services.clock.advance(61)  # past the host survey's cache
        [second] = stack.check_out(1)
        for _ in range(3):
            stack.run()
        assert stack.shown(second)["migrated"] is True
        assert stack.shown(second)["host"] == stack.where()[second] != host_name
        assert stack.where()[first] == host_name  # checked out earlier: not migrated again
    finally:
        admin.set_maintenance(stack.provider, host_name, False)
