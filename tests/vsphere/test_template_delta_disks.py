"""``create_template_delta_disks`` against vcsim: the template without a snapshot gets one delta
disk layer (each disk's backing gets a parent) before its first clones, once; linked clones then
start; with the option off the template is left alone."""

from __future__ import annotations

from typing import Any

import redis
from pyVmomi import vim

from chalicelib.clock import FakeClock
from chalicelib.config import PoolConfig
from chalicelib.manager.reconcile import PassReport, reconcile_pool
from chalicelib.providers.vsphere import inventory
from chalicelib.providers.vsphere.connection import Connection
from chalicelib.store import Store
from tests.vsphere import admin
from tests.vsphere.vcsim import DATACENTER, TEMPLATE, Setup, VcsimServer, make_setup


def template_disks(setup: Setup) -> list[tuple[str, int]]:
    """(file name, number of backings behind it) for each of the template's disks."""

    def read(connection: Connection) -> list[tuple[str, int]]:
        template = inventory.find(connection, f"{DATACENTER}/vm/{TEMPLATE}")
        devices = (inventory.one(connection, template, ["config.hardware.device"]) or {})["config.hardware.device"]
        found = []
        for disk in devices:
            if isinstance(disk, vim.vm.device.VirtualDisk):
                depth, backing = 0, disk.backing
                while getattr(backing, "parent", None) is not None:
                    depth, backing = depth + 1, backing.parent
                found.append((disk.backing.fileName, depth))
        return found

    return setup.provider._run("read template", read)


def is_template(setup: Setup) -> bool:
    def read(connection: Connection) -> bool:
        template = inventory.find(connection, f"{DATACENTER}/vm/{TEMPLATE}")
        return bool((inventory.one(connection, template, ["config.template"]) or {}).get("config.template"))

    return bool(setup.provider._run("read template", read))


def run(setup: Setup, store: Store, pool: PoolConfig) -> PassReport:
    return reconcile_pool(store, setup.provider, pool, FakeClock(), setup.service)


def clone_placement(setup: Setup, pool: PoolConfig, name: str) -> dict[str, Any]:
    details = admin.vm_details(setup.provider, f"{DATACENTER}/vm/{pool.folder}/{name}")
    assert details is not None
    return dict(details["extra_config"])


def test_delta_disks_once_before_the_first_linked_clones(private_vcsim: VcsimServer,
                                                         redis_client: redis.Redis) -> None:
    store = Store(redis_client)
    plain = make_setup(private_vcsim)
    before = template_disks(plain)
    assert before and all(depth == 0 for _, depth in before)
    untouched = run(plain, store, plain.pool(size=1))
    assert len(untouched.clones_started) == 1 and template_disks(plain) == before  # option off

    setup = make_setup(private_vcsim, service={"create_template_delta_disks": True})
    pool = setup.pool(size=2)
    held = run(setup, store, pool)
    assert held.clones_started == [] and held.work_in_flight  # clones wait for the template
    layered = template_disks(setup)
    assert [depth for _, depth in layered] == [1] * len(before)

    cloning = run(setup, store, pool)
    assert len(cloning.clones_started) == 2
    assert is_template(setup)  # made a VM for the reconfigure, a template again
    placement = clone_placement(setup, pool, cloning.clones_started[0])
    assert placement["vcsim.diskMoveType"] == "moveChildMostDiskBacking"

    # Another pool on the same template: no second layer, no wait.
    other = setup.pool(size=1)
    assert len(run(setup, store, other).clones_started) == 1
    assert template_disks(setup) == layered


def test_a_template_with_a_snapshot_or_full_clones_needs_no_delta_disks(private_vcsim: VcsimServer,
                                                                        redis_client: redis.Redis) -> None:
    setup = make_setup(private_vcsim, service={"create_template_delta_disks": True})
    before = template_disks(setup)
    full = setup.pool(size=1, create_linked_clone=False)
    assert len(run(setup, Store(redis_client), full).clones_started) == 1
    assert template_disks(setup) == before
