"""Clones whose pass died between vCenter's CloneVM_Task and noting the task, on a vcsim whose
clones run long: their VM is in the pool's folder from the start (as vCenter lists a clone's VM
during its clone) and guest tools come up on it at once (vcsim powers clones on before their
task ends). vCenter's clone task, found among the template's (``clones_under_way``), decides:
the VM is neither taken as cloned nor ready while it runs, the task is noted on the VM, and a
clone past the pool's timeout is cancelled and its slot freed. Before, the VM's presence read
as "cloned": the slot was freed while vCenter still cloned (another clone started beyond
task_limit), a half-cloned VM was handed out as ready, and a held one (a pool reset mid-clone)
was destroyed while vCenter still made it, never cancelled."""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Iterator

import pytest

from chalicelib.config import Config
from chalicelib.manager.pending import CLONE_ASKED, CLONE_START_GRACE_SECONDS
from chalicelib.providers.base import TaskState
from tests.harness import Harness, HarnessFactory, Killed
from tests.support import eventually
from tests.vsphere import admin
from tests.vsphere.vcsim import VcsimServer, delayed_clones, vcsim_config

POOL = "unnoted-tasks"
TIMEOUT_MINUTES = 5


@pytest.fixture
def long_cloning(vcsim_dir: Path) -> Iterator[VcsimServer]:
    """A simulator whose clone tasks run far longer than any test: still running when asked."""
    yield from delayed_clones(vcsim_dir, 600, "unnoted-tasks")


def world_of(make_harness: HarnessFactory, server: VcsimServer) -> Harness:
    pool = {"name": POOL, "size": 1, "folder": f"vmpool/{POOL}-{secrets.token_hex(3)}", "ready_check": "tools"}
    return make_harness(vcsim_config(server, [pool], service={"task_limit": 1, "timeout": TIMEOUT_MINUTES,
                                                              "experimental_features": True}))


def killed_after_its_clone(world: Harness) -> str:
    """A pass killed once vCenter took its clone, before it noted the task; the VM it left, whose
    VM is listed and shows guest tools running (booted, to a readiness check)."""

    def kill(step: str) -> None:
        if step == "clone_started":
            raise Killed(step)

    with pytest.raises(Killed):
        world.reconcile(POOL, kill)
    (name,) = world.hosts(POOL, "pending")
    record = world.store.get_vm(name)
    assert record is not None and record.raw.get(CLONE_ASKED) and not record.clone_task
    eventually(lambda: any(vm.name == name and vm.tools_running for vm in world.provider.list_vms(world.pool(POOL))),
               30, "the clone's VM listed, its tools running", interval=0.1)
    return name


def clones_running(world: Harness) -> int:
    """Clone tasks vCenter runs on the pool's template."""
    under_way = world.provider.clones_under_way(world.pool(POOL), [f"{POOL}-probe"] + list(all_names(world)))
    return len(under_way)


def all_names(world: Harness) -> set[str]:
    return {name for state in ("pending", "ready", "completed", "destroyed") for name in world.hosts(POOL, state)}


def test_a_clone_whose_vm_shows_while_vcenter_clones_it_is_neither_done_nor_ready(
        make_harness: HarnessFactory, long_cloning: VcsimServer) -> None:
    world = world_of(make_harness, long_cloning)
    name = killed_after_its_clone(world)
    for _ in range(6):  # within the start grace, then past it; within the pool's timeout
        report = world.reconcile(POOL)
        assert report.clones_started == [] and report.became_ready == [], report
        assert world.hosts(POOL, "pending") == {name} and world.store.cloning_count() == 1
        record = world.store.get_vm(name)
        assert record is not None and record.clone_end is None
        world.clock.advance(CLONE_START_GRACE_SECONDS / 2)
    record = world.store.get_vm(name)
    assert record is not None and record.clone_task, "vCenter's clone task not noted on the VM"
    assert world.provider.task_status(record.clone_task).state is TaskState.RUNNING
    assert clones_running(world) == 1


def test_an_unnoted_clone_past_the_pool_timeout_is_cancelled_and_its_slot_freed(
        make_harness: HarnessFactory, long_cloning: VcsimServer) -> None:
    world = world_of(make_harness, long_cloning)
    name = killed_after_its_clone(world)
    world.clock.advance(TIMEOUT_MINUTES * 60 + 1)
    started: list[str] = []
    for _ in range(4):  # out of service (slot held), asked to cancel, ended: destroyed, a new clone
        started += world.reconcile(POOL).clones_started
        assert clones_running(world) <= 1, "more clones at vCenter than task_limit"
        world.clock.advance(1)
    record = world.store.get_vm(name)
    assert record is not None and record.raw.get("clone_cancel_asked") and record.clone_task
    assert world.provider.task_status(record.clone_task).state is TaskState.ERROR  # cancelled
    assert world.state_of(name) == "destroyed"
    assert name not in {vm.name for vm in world.provider.list_vms(world.pool(POOL))}
    assert len(started) == 1 and name not in started


def test_an_unnoted_clone_drained_mid_clone_keeps_its_slot_and_is_cancelled_past_the_timeout(
        make_harness: HarnessFactory, long_cloning: VcsimServer) -> None:
    """A pool reset while vCenter still makes the unnoted clone: it leaves pending holding its
    slot (no second clone under task_limit 1), its VM is not destroyed under vCenter's clone,
    and past the pool's timeout the clone is cancelled and the slot freed."""
    world = world_of(make_harness, long_cloning)
    name = killed_after_its_clone(world)
    world.clock.advance(CLONE_START_GRACE_SECONDS + 1)
    assert world.post("/api/v3/poolreset", {POOL: "1"}).status == 201
    for _ in range(3):
        assert world.reconcile(POOL).clones_started == [], "slot freed while vCenter still clones"
        assert world.state_of(name) == "completed" and world.store.cloning_count() == 1
        assert clones_running(world) == 1
        world.clock.advance(30)
    world.clock.advance(TIMEOUT_MINUTES * 60)
    started: list[str] = []
    for _ in range(3):
        started += world.reconcile(POOL).clones_started
        world.clock.advance(1)
    record = world.store.get_vm(name)
    assert record is not None and record.raw.get("clone_cancel_asked")
    assert world.state_of(name) == "destroyed" and len(started) == 1


@pytest.fixture
def long_cloning_two_datacenters(vcsim_dir: Path) -> Iterator[VcsimServer]:
    """DC0 and DC1, each with the template, whose clone tasks run far longer than any test."""
    with VcsimServer(boot_delay=0.2, cert_path=vcsim_dir / f"unnoted-moved-{secrets.token_hex(3)}.pem",
                     clone_delay=600, datacenters=2) as server:
        yield server


def test_an_unnoted_clone_keeps_its_slot_when_its_pool_moves_to_another_datacenter(
        make_harness: HarnessFactory, long_cloning_two_datacenters: VcsimServer) -> None:
    """The pass that asked for the clone in DC0 died before noting its task, then the pool moved
    to DC1. Before, the VM had no placement: it counted as made in DC1, DC1's template had no
    such clone under way, and its slot was freed while DC0 still cloned (a second clone beyond
    task_limit 1), its VM left in DC0 where no pass looked. Now the clone is asked about in DC0:
    its slot is held until DC0's clone ends, and its VM is destroyed there."""
    server = long_cloning_two_datacenters
    folder = f"vmpool/{POOL}-{secrets.token_hex(3)}"
    service = {"task_limit": 1, "timeout": TIMEOUT_MINUTES, "experimental_features": True}

    def config(datacenter: str) -> Config:
        pool = {"name": POOL, "size": 1, "folder": folder, "ready_check": "tools", "datacenter": datacenter}
        return vcsim_config(server, [pool], service=service)

    world = make_harness(config("DC0"))
    name = killed_after_its_clone(world)
    world.services.use_config(config("DC1"))
    for _ in range(4):  # past the start grace, within the pool's timeout
        world.clock.advance(CLONE_START_GRACE_SECONDS / 2)
        assert world.reconcile(POOL).clones_started == [], "slot freed while DC0 still clones"
        assert world.store.cloning_count() == 1
    assert world.state_of(name) == "completed"  # left behind in DC0, its slot held
    assert admin.exists(world.provider, f"DC0/vm/{folder}/{name}")

    world.clock.advance(TIMEOUT_MINUTES * 60 + 1)  # past the timeout: cancelled in DC0, destroyed there
    started: list[str] = []
    for _ in range(4):
        started += world.reconcile(POOL).clones_started
        world.clock.advance(1)
    assert world.state_of(name) == "destroyed" and len(started) == 1
    eventually(lambda: not admin.exists(world.provider, f"DC0/vm/{folder}/{name}"), 10,
               "the clone's VM destroyed in DC0", interval=0.2)
