"""Names of VMs Redis forgot (restarted without persistence, a failover that lost writes), on a
vcsim with two pools in two folders and no DNS plugin to tell a name is taken. Before, a pool's
refill could reserve the name of the other pool's VM still in that pool's folder (only a pool's
own folder was looked at before it cloned): vCenter then held two VMs of one name, and the
hostname handed out collided with the other VM's. Now the first pass to clone after the loss
lists every pool's folder once and holds the names it finds (manager/discovered.py)."""

from __future__ import annotations

import secrets
from typing import Any

import pytest

from chalicelib.manager import clones
from chalicelib.manager.hostnames import random_name
from tests.harness import Harness, HarnessFactory
from tests.support import eventually
from tests.vsphere import admin
from tests.vsphere.vcsim import VcsimServer, vcsim_config


def two_pools(make_harness: HarnessFactory, server: VcsimServer) -> tuple[Harness, dict[str, str]]:
    folders = {name: f"vmpool/names-{name}-{secrets.token_hex(3)}" for name in ("a", "b")}
    pools = [{"name": name, "size": 1, "folder": folder, "ready_check": "tools"} for name, folder in folders.items()]
    return make_harness(vcsim_config(server, pools, service={"task_limit": 4})), folders


def filled(world: Harness, pool: str) -> str:
    def ready() -> bool:
        world.clock.advance(30)
        world.reconcile(pool)
        return len(world.hosts(pool, "ready")) == 1

    eventually(ready, 30, f"pool {pool} to fill", interval=0.2)
    (name,) = world.hosts(pool, "ready")
    return name


def redis_loses_its_data(world: Harness) -> None:
    for key in world.client.scan_iter(match=f"{world.store.keys.prefix}*"):
        world.client.delete(key)


def same_name_first(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    """Every refill's first candidate is ``name`` (the word names are 900: a fleet of a few
    hundred VMs makes this likely, not rare)."""

    def candidates(count: int, prefix: str = "") -> list[str]:
        return [name, *(random_name(prefix) for _ in range(2 * count))]

    monkeypatch.setattr(clones, "candidate_names", candidates)


def vms_named(world: Harness, folders: dict[str, str], name: str) -> list[str]:
    return [pool for pool, folder in folders.items() if admin.exists(world.provider, f"DC0/vm/{folder}/{name}")]


def test_a_pool_does_not_reuse_the_name_of_another_pools_vm_that_redis_forgot(
        make_harness: HarnessFactory, vcsim: VcsimServer, monkeypatch: pytest.MonkeyPatch) -> None:
    world, folders = two_pools(make_harness, vcsim)
    forgotten = filled(world, "a")
    redis_loses_its_data(world)
    same_name_first(monkeypatch, forgotten)

    report = world.reconcile("b")  # b's pass runs first after the loss

    assert forgotten not in report.clones_started, "a second VM of the same name cloned"
    assert len(report.clones_started) == 1
    assert vms_named(world, folders, forgotten) == ["a"]
    assert world.state_of(forgotten) == "discovered"  # its name held, in its own pool
    record: Any = world.store.get_vm(forgotten)
    assert record.pool == "a"
    # Pool a's own passes then take it out of service and destroy it, as for any VM Redis forgot,
    # and refill under another name.
    refill = filled(world, "a")
    assert refill != forgotten

    def destroyed() -> bool:
        world.clock.advance(30)
        world.reconcile("a")
        return not vms_named(world, folders, forgotten)

    eventually(destroyed, 20, "the forgotten VM destroyed", interval=0.2)
    assert world.state_of(forgotten) == "destroyed"


def test_a_steady_pass_does_not_list_the_other_pools(
        make_harness: HarnessFactory, vcsim: VcsimServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """The folders are listed once after the loss, not by every refill."""
    world, _ = two_pools(make_harness, vcsim)
    filled(world, "a")
    filled(world, "b")
    listed: list[str] = []
    list_vms = world.provider.list_vms
    monkeypatch.setattr(world.provider, "list_vms", lambda pool: listed.append(pool.name) or list_vms(pool))
    (in_use,) = world.check_out("b")
    assert world.delete(f"/api/v3/vm/{in_use}").status == 200
    report = world.reconcile("b")  # destroys it and clones its replacement
    assert len(report.clones_started) == 1 and listed == ["b"]
