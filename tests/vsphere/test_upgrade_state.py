"""State an earlier release left in vCenter and Redis, read by this one (docs/reliability.md,
"Upgrades and rollbacks"). A deploy is not atomic: for minutes both releases' passes run on one
Redis and one vCenter, so what the earlier release wrote must keep its meaning here, and what
this release writes must be where the earlier one looks.

The earlier release's state is written here as it wrote it (these tests cannot check out
another commit): releases up to 60eceaa cloned a pool whose ``folder`` is written with its
datacenter's path (``DC0/vm/vmpool/x``) into the nested folder ``DC0/vm/DC0/vm/vmpool/x``, each
VM's annotation without a ``deployment``."""

from __future__ import annotations

import json
import secrets

import pytest

from chalicelib.providers.base import TaskState
from chalicelib.providers.vsphere import clone
from tests.harness import HarnessFactory
from tests.support import eventually
from tests.vsphere import admin
from tests.vsphere.vcsim import DATACENTER, TEMPLATE, Setup, VcsimServer, vcsim_config


def earlier_release_annotation(pool: str) -> str:
    """What releases up to 60eceaa wrote on every clone (no ``deployment`` yet)."""
    return json.dumps({"pool": pool, "creator": "vmpool", "template": TEMPLATE, "created": "2026-12-01T10:00:00Z"})


def test_a_pool_keeps_the_nested_folder_an_earlier_release_cloned_into(setup: Setup) -> None:
    """Before, this release looked in ``DC0/vm/vmpool/x`` only: the VMs of the nested folder
    were gone for it, and while both releases ran, each dropped the other's VMs (a checked-out
    one too) and then destroyed them as unknown VMs found in its folder, cloning again each pass."""
    name = f"nested-{secrets.token_hex(4)}"
    written = f"{DATACENTER}/vm/vmpool/{name}"
    pool = setup.pool(name=name, folder=written)
    admin.create_vm(setup.provider, f"{DATACENTER}/vm/{written}", "made-before",
                    annotation=earlier_release_annotation(name))

    assert [vm.name for vm in setup.provider.list_vms(pool)] == ["made-before"]
    ref = setup.provider.clone(pool, "made-now")
    admin.wait_task(setup.provider, ref)
    assert setup.provider.task_status(ref).state is TaskState.SUCCESS
    assert admin.exists(setup.provider, f"{DATACENTER}/vm/{written}/made-now")  # where the earlier release looks
    assert sorted(vm.name for vm in setup.provider.list_vms(pool)) == ["made-before", "made-now"]
    for hostname in ("made-before", "made-now"):
        admin.wait_task(setup.provider, setup.provider.destroy(pool, hostname))
    assert setup.provider.list_vms(pool) == []


def test_a_vm_checked_out_under_the_earlier_release_stays_its_users(
        make_harness: HarnessFactory, vcsim: VcsimServer) -> None:
    name = f"kept-{secrets.token_hex(4)}"
    written = f"{DATACENTER}/vm/vmpool/{name}"
    world = make_harness(vcsim_config(vcsim, [{"name": name, "size": 1, "folder": written, "ready_check": "tools"}]),
                         prefix=f"{name}:")
    admin.create_vm(world.provider, f"{DATACENTER}/vm/{written}", "in-use", annotation=earlier_release_annotation(name))
    # Its Redis record as the earlier release left it: ready, then checked out.
    assert world.store.add_discovered("in-use", name, world.clock.now())
    assert world.store.move("in-use", name, "discovered", "ready", world.clock.now(), reason="cloned")
    assert world.check_out(name) == ["in-use"]

    def refilled() -> bool:
        world.clock.advance(30)
        world.reconcile(name)
        return world.count(name, "ready") == 1

    eventually(refilled, 30, "the pool refilled")
    for _ in range(3):
        world.clock.advance(30)
        assert world.reconcile(name).errors == []
    assert world.hosts(name, "running") == {"in-use"}
    assert world.describe("in-use")["state"] == "running"
    assert sorted(vm.name for vm in world.provider.list_vms(world.pool(name))) == sorted(
        ["in-use", *world.hosts(name, "ready")])


def test_passes_of_both_releases_alternating_on_the_pool_converge(
        make_harness: HarnessFactory, vcsim: VcsimServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """A deploy's window: the earlier release's passes (which take the folder as written, under
    ``<datacenter>/vm/``) and this release's alternate on one pool. They agree on its folder:
    the pool keeps its size in vCenter and its checked-out VM. Before, each dropped the other's
    VMs and destroyed them as unknown VMs of its folder (the VM in use too), cloning again."""
    name = f"mixed-{secrets.token_hex(4)}"
    written = f"{DATACENTER}/vm/vmpool/{name}"
    world = make_harness(vcsim_config(vcsim, [{"name": name, "size": 2, "folder": written, "ready_check": "tools"}]),
                         prefix=f"{name}:")
    releases = {"this": clone.pool_folder, "earlier": lambda connection, datacenter, folder: folder.strip("/")}

    def one_pass(release: str) -> None:
        monkeypatch.setattr(clone, "pool_folder", releases[release])
        world.clock.advance(30)
        assert world.reconcile(name).errors == []

    def filled() -> bool:
        one_pass("earlier")
        return world.count(name, "ready") == 2

    eventually(filled, 30, "the earlier release filled the pool")
    [in_use] = world.check_out(name)
    for _ in range(4):
        one_pass("this")
        one_pass("earlier")
    monkeypatch.setattr(clone, "pool_folder", releases["this"])
    assert world.hosts(name, "running") == {in_use}
    in_vcenter = {vm.name for vm in world.provider.list_vms(world.pool(name))}
    assert in_use in in_vcenter and len(in_vcenter) == 3, in_vcenter
    assert not world.hosts(name, "discovered") and not world.hosts(name, "completed")
