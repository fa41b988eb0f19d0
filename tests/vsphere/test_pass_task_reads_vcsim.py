"""A pass reads the disk, snapshot and migration tasks in flight on its pool's VMs in one vCenter
call (``task_statuses``), not one call a VM, and answers as before (vcsim; fake clock).

vcsim ends a reconfigure or a vMotion at once, so the tasks are kept in flight by vCenter
refusing to show them after their first read (NoPermission, at the SOAP stub: the read that notes
a task's queue time when it starts is let through): the pass that starts them cannot read them,
and the next pass, vCenter showing them again, reads them all."""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any, Iterator

import pytest
from pyVmomi import vim

from chalicelib.providers.base import TaskState
from chalicelib.providers.vsphere.provider import VSphereProvider
from chalicelib.store.vm_tasks import in_flight
from tests.harness import Harness, HarnessFactory
from tests.support import eventually
from tests.vsphere.test_bad_day import POOL, converge, pool_harness
from tests.vsphere.test_vsphere_migration import fill, loaded_vcsim, where
from tests.vsphere.vcsim import Setup, VcsimServer, objects_read, refuse_on_stub, vcsim_config

VMS = 6


@pytest.fixture
def busy_vcsim(vcsim_dir: Path) -> Iterator[VcsimServer]:
    """Each powered-on VM uses 15 % of its host (a simulator of its own)."""
    yield from loaded_vcsim(vcsim_dir, 15)


def tasks_hidden_after_first_read(provider: VSphereProvider, monkeypatch: pytest.MonkeyPatch) -> None:
    """vCenter refuses every read of a task but the first (the one noting its queue time)."""
    seen: set[str] = set()

    def refused(method: str, args: Any) -> BaseException | None:
        named = {moid for moid in objects_read(method, args) if moid.startswith("task-")}
        if named and named <= seen:
            return vim.fault.NoPermission(msg="the user may not read this task")
        seen.update(named)
        return None

    refuse_on_stub(provider, monkeypatch, refused)


def reads_naming(calls: list[set[str]], task_ids: set[str]) -> int:
    """How many of the recorded RetrievePropertiesEx calls read any of ``task_ids``."""
    return sum(1 for named in calls if named & task_ids)


def in_use(make_harness: HarnessFactory, server: VcsimServer, **settings: Any) -> tuple[Harness, list[str]]:
    harness = pool_harness(make_harness, server, size=VMS, **settings)
    converge(harness, VMS)
    return harness, harness.checkout_vms(POOL, VMS)


def test_the_disks_being_added_to_six_vms_are_read_in_one_call_a_pass(
        vcsim: VcsimServer, make_harness: HarnessFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Before, each VM's task cost a SOAP call of its own every pass (6 VMs: 6 calls)."""
    harness, hosts = in_use(make_harness, vcsim)
    for host in hosts:
        assert harness.put(f"/api/v3/vm/{host}", {"disk": 4}).status == 200, harness.replies[-1].body
    with monkeypatch.context() as hidden:
        tasks_hidden_after_first_read(harness.provider, hidden)
        harness.reconcile(POOL)  # starts the 6 reconfigures; their states cannot be read
    records = harness.store.records(hosts)
    refs = {host: str((in_flight(records[host]) or {}).get("ref") or "") for host in hosts}
    assert all(ref.startswith("task:") for ref in refs.values()), refs
    assert all(harness.describe(host)["disk"] == [] for host in hosts)  # still in flight

    reads: list[set[str]] = []
    refuse_on_stub(harness.provider, monkeypatch, lambda method, args: reads.append(objects_read(method, args)))
    harness.clock.advance(30)
    report = harness.reconcile(POOL)

    task_ids = {ref.split(":")[1] for ref in refs.values()}
    assert reads_naming(reads, task_ids) == 1, reads
    assert not [error for error in report.errors if "not read" in error], report.errors
    for host in hosts:
        told = harness.describe(host)
        assert (told["disk"], told.get("task_errors")) == (["+4gb"], None), told
        record = harness.store.get_vm(host)
        assert record is not None and not record.raw.get("task_unread_since")


def test_the_vmotions_of_three_checked_out_vms_are_read_in_one_call_a_pass(
        busy_vcsim: VcsimServer, make_harness: HarnessFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every clone lands on the template's host, each VM loading it: the three checked out move
    off it at once (migration_limit 3). Before, each move's task cost a call of its own."""
    stack = make_harness(vcsim_config(busy_vcsim, service={"migration_limit": 3}, pools=[{
        "name": "mig", "size": 3, "folder": "vmpool/mig", "ready_check": "tools"}]), prefix="vreads:")
    fill(stack, busy_vcsim)
    taken = stack.checkout_vms("mig", 3)
    stack.reconcile("mig")  # starts the three moves; a pass follows them from the next on
    records = stack.store.records(taken)
    refs = {host: str(records[host].raw.get("migration_task") or "") for host in taken}
    assert all(refs.values()), {host: record.raw for host, record in records.items()}

    reads: list[set[str]] = []
    refuse_on_stub(stack.provider, monkeypatch, lambda method, args: reads.append(objects_read(method, args)))
    report = stack.reconcile("mig")

    assert reads_naming(reads, {ref.split(":")[1] for ref in refs.values()}) == 1, reads
    assert not report.errors, report.errors
    actual = where(stack)
    for host in taken:
        told = stack.describe(host)
        assert (told.get("migrated"), told["host"]) == ("true", actual[host]), told


def test_the_destroys_of_six_vms_are_read_with_each_read_made_once_for_all(
        setup: Setup, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each read of a destroy moves its chain on (power-off, then Destroy_Task). Before, each
    destroy cost a VM read and a task read of its own every pass (6 VMs: 12 reads); now the VMs
    are read in one retrieval and their tasks in one more, only each Destroy_Task is a call of
    its own; the answers are the one-at-a-time reads' (RUNNING while destroying, SUCCESS once
    gone)."""
    provider, pool = setup.provider, setup.pool(size=VMS)
    hosts = [f"gone-{secrets.token_hex(3)}-{index}" for index in range(VMS)]
    for host in hosts:
        assert provider.task_status(provider.clone(pool, host)).state is TaskState.SUCCESS
    refs = [provider.destroy(pool, host) for host in hosts]
    assert all(ref and ref.startswith("destroy:") for ref in refs), refs  # powered on: powering off first
    calls: list[tuple[str, set[str]]] = []
    refuse_on_stub(provider, monkeypatch, lambda method, args: calls.append((method, objects_read(method, args))))

    def read() -> dict[str, TaskState]:
        calls.clear()
        return {str(ref): status.state for ref, status in provider.task_statuses([str(ref) for ref in refs]).items()}

    first = read()
    assert set(first.values()) <= {TaskState.RUNNING, TaskState.SUCCESS}, first
    sent = [method for method, _ in calls if method == "Destroy_Task"]
    assert len(calls) - len(sent) <= 2, calls
    assert eventually(lambda: set(read().values()) == {TaskState.SUCCESS}, 30, "the destroys to end", interval=0.2)
    assert len(calls) == 1, calls  # the VMs' one read: all gone
    assert provider.list_vms(pool) == []


def test_a_pass_with_clones_disks_and_vmotions_in_flight_reads_all_their_tasks_in_one_call(
        busy_vcsim: VcsimServer, make_harness: HarnessFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Three VMs checked out, each moving off the busy host and having a disk added, and their
    three replacements cloning: the next pass reads the nine tasks in one retrieval. Before, the
    pending, vm-task and migration steps each made one of their own (3 a pass)."""
    stack = make_harness(vcsim_config(busy_vcsim, service={"migration_limit": 3}, pools=[{
        "name": "mig", "size": 3, "folder": "vmpool/mig", "ready_check": "tools"}]), prefix="vall:")
    fill(stack, busy_vcsim)
    taken = stack.checkout_vms("mig", 3)
    for host in taken:
        assert stack.put(f"/api/v3/vm/{host}", {"disk": 4}).status == 200, stack.replies[-1].body
    with monkeypatch.context() as hidden:
        tasks_hidden_after_first_read(stack.provider, hidden)
        stack.reconcile("mig")  # starts the moves, the disks and the refill; their states cannot be read
    records = stack.store.records(taken)
    disks = {str((in_flight(records[host]) or {}).get("ref") or "") for host in taken}
    moves = {str(records[host].raw.get("migration_task") or "") for host in taken}
    cloning = stack.store.records(stack.hosts("mig", "pending"))
    clones = {record.clone_task for record in cloning.values() if record.clone_end is None}
    assert len(cloning) == 3 and all(clones) and len(clones) == 3, {h: r.raw for h, r in cloning.items()}
    task_ids = {ref.split(":")[1] for ref in disks | moves | clones}
    assert len(task_ids) == 9 and all(task.startswith("task-") for task in task_ids), (disks, moves, clones)

    reads: list[set[str]] = []
    refuse_on_stub(stack.provider, monkeypatch, lambda method, args: reads.append(objects_read(method, args)))
    report = stack.reconcile("mig")

    assert reads_naming(reads, task_ids) == 1, reads
    assert not [error for error in report.errors if "not read" in error], report.errors
    actual = where(stack)
    for host in taken:
        told = stack.describe(host)
        assert (told["disk"], told.get("migrated"), told["host"]) == (["+4gb"], "true", actual[host]), told
    assert all(record.clone_end is not None for record in stack.store.records(list(cloning)).values())
