"""Names of VMs Redis forgot (restarted without persistence, a failover that lost writes), on
vcsim, with pools in folders of their own and no DNS plugin to tell a name is taken. Before, a
pool's refill could reserve the name of another pool's VM still in that pool's folder (only a
pool's own folder was looked at before it cloned): vCenter then held two VMs of one name, and
the hostname handed out was another machine's. Now the first pass after the loss reads the names
of every VM in the provider's datacenters in one retrieval and holds them (manager/names.py)."""

from __future__ import annotations

import secrets
from typing import Any, Callable, Sequence

import pytest

from chalicelib.config import PoolConfig
from chalicelib.manager import clones
from chalicelib.manager.hostnames import random_name
from chalicelib.providers.base import ProviderError
from chalicelib.store.names import NamesStore
from tests.harness import Harness, HarnessFactory
from tests.support import eventually
from tests.vsphere import admin
from tests.vsphere.vcsim import VcsimServer, vcsim_config


def pools_in_folders(make_harness: HarnessFactory, server: VcsimServer, count: int,
                     size: int = 1) -> tuple[Harness, dict[str, str]]:
    run = secrets.token_hex(3)
    folders = {f"p{n:02d}": f"vmpool/names-{run}/p{n:02d}" for n in range(count)}
    pools = [{"name": name, "size": size, "folder": folder, "ready_check": "tools"} for name, folder in folders.items()]
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


def counted_reads(monkeypatch: pytest.MonkeyPatch, provider: Any) -> list[int]:
    """The vCenter calls of each of the provider's name reads."""
    costs: list[int] = []
    read = provider.vm_names

    def counted(pools: Sequence[PoolConfig], out_of_time: Callable[[], bool]) -> set[str]:
        before = provider.call_count()
        try:
            return set(read(pools, out_of_time))
        finally:
            costs.append(provider.call_count() - before)

    monkeypatch.setattr(provider, "vm_names", counted)
    return costs


def test_a_pool_does_not_reuse_the_name_of_another_pools_vm_that_redis_forgot(
        make_harness: HarnessFactory, vcsim: VcsimServer, monkeypatch: pytest.MonkeyPatch) -> None:
    world, folders = pools_in_folders(make_harness, vcsim, 2)
    forgotten = filled(world, "p00")
    redis_loses_its_data(world)
    same_name_first(monkeypatch, forgotten)

    report = world.reconcile("p01")  # p01's pass runs first after the loss

    assert forgotten not in report.clones_started, "a second VM of the same name cloned"
    assert len(report.clones_started) == 1
    assert vms_named(world, folders, forgotten) == ["p00"]
    # Pool p00's own passes then take it out of service and destroy it, as for any VM Redis
    # forgot, and refill under another name.
    assert filled(world, "p00") != forgotten

    def destroyed() -> bool:
        world.clock.advance(30)
        world.reconcile("p00")
        return not vms_named(world, folders, forgotten) and world.state_of(forgotten) == "destroyed"

    eventually(destroyed, 20, "the forgotten VM destroyed", interval=0.2)


def test_a_pool_whose_folder_cannot_be_listed_does_not_hold_up_the_others(
        make_harness: HarnessFactory, vcsim: VcsimServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """The reverted fix of the last session listed every pool's folder before cloning: a pool
    whose folder listing failed or hung held every other pool's first pass up."""
    world, folders = pools_in_folders(make_harness, vcsim, 2)
    forgotten = filled(world, "p01")
    redis_loses_its_data(world)
    same_name_first(monkeypatch, forgotten)
    list_vms = world.provider.list_vms

    def refused_for_p01(pool: PoolConfig) -> Any:
        if pool.name == "p01":
            raise ProviderError("vCenter: permission denied on folder")
        return list_vms(pool)

    monkeypatch.setattr(world.provider, "list_vms", refused_for_p01)

    with pytest.raises(ProviderError):
        world.reconcile("p01")
    report = world.reconcile("p00")

    assert len(report.clones_started) == 1 and forgotten not in report.clones_started
    assert vms_named(world, folders, forgotten) == ["p01"]


def test_forty_pools_read_the_names_once_in_a_few_calls_and_a_steady_pass_never(
        make_harness: HarnessFactory, vcsim: VcsimServer, monkeypatch: pytest.MonkeyPatch) -> None:
    world, folders = pools_in_folders(make_harness, vcsim, 40, size=0)
    forgotten = [f"left-{pool}-{secrets.token_hex(2)}" for pool in ("p00", "p17", "p39")]
    for name in forgotten:  # VMs Redis forgot, in three of the folders
        admin.create_vm(world.provider, f"DC0/vm/{folders[name.split('-')[1]]}", name, power_on=False)
    costs = counted_reads(monkeypatch, world.provider)

    for pool in folders:
        world.reconcile(pool)

    assert len(costs) == 1  # one read for the 40 pools of the provider
    # The datacenter looked up, a container view made, one page of names, the view destroyed (and
    # vCenter's first datacenter, the pools' default, looked up once a session: 2 calls). Listing
    # the 40 folders one by one cost 121 calls (docs/vsphere.md).
    assert costs[0] <= 6, costs
    assert set(forgotten) <= NamesStore(world.store).held()

    world.clock.advance(60)
    for pool in folders:
        world.reconcile(pool)
    assert len(costs) == 1  # steady passes read no names
