"""One task vCenter answers for but cannot read (NoPermission on that task, the task object gone
under the read) must not end every pass of its pool: the other tasks are read, the pool refills
and destroys what left service, and the VM of the unreadable task is settled by the rules for a
task that never ends (vcsim; fake clock for the pool's timeouts). Before, the default
``Provider.task_statuses`` (vSphere's) raised on the first such task, and the pending step ended
the pass there, every pass: no refill, no destroy."""

from __future__ import annotations

import secrets
from typing import Any, Callable

import pytest
import redis
from pyVmomi import vim, vmodl

from chalicelib.clock import FakeClock
from chalicelib.manager.completed import CLONE_CANCEL_WAIT_SECONDS
from chalicelib.manager.reconcile import reconcile_pool
from chalicelib.providers.base import ProviderError, TaskStatus
from chalicelib.providers.failures import FailureKind
from chalicelib.providers.vsphere import inventory, templates
from chalicelib.providers.vsphere import tasks as vsphere_tasks
from chalicelib.store import Store
from chalicelib.store.ondemand import CLONE_HELD
from tests.harness import Harness, HarnessFactory
from tests.support import eventually, refuse_task_reads
from tests.vsphere.vcsim import Setup, VcsimServer, make_setup, objects_read, refuse_on_stub, vcsim_config

POOL = "unreadable"
REFUSED_TEXT = "the user may not read this task"
REFUSED = f"vCenter said NoPermission: {REFUSED_TEXT}"


def unreadable_tasks(harness: Harness, monkeypatch: pytest.MonkeyPatch,
                     unreadable: Callable[[str], bool]) -> None:
    """vCenter refuses to read the tasks ``unreadable`` picks (as it refuses an object the user
    may not see: a ProviderError of kind permission out of ``task_status``, UNKNOWN out of
    ``task_statuses``); it reads the others."""
    refuse_task_reads(monkeypatch, harness.provider, lambda task_ref: ProviderError(
        f"read task {task_ref}: {REFUSED}", FailureKind.PERMISSION) if unreadable(task_ref) else None)


def harness_for(vcsim: VcsimServer, make_harness: HarnessFactory, **pool: Any) -> Harness:
    return make_harness(vcsim_config(vcsim, [{
        "name": POOL, "ready_check": "tools", "size": 2, "timeout": 2,
        "folder": f"vmpool/unreadable-{secrets.token_hex(4)}", **pool}]))


def in_vcenter(harness: Harness) -> set[str]:
    return {vm.name for vm in harness.provider.list_vms(harness.pool(POOL))}


def until_ready(harness: Harness, count: int) -> set[str]:
    """Passes (the fake clock a few seconds on each) until the pool has ``count`` ready VMs (the
    guests boot on vcsim's own clock)."""

    def ready() -> set[str] | None:
        harness.clock.advance(5)
        harness.reconcile(POOL)
        found = harness.hosts(POOL, "ready")
        return found if len(found) == count else None

    found = eventually(ready, 30, f"{count} ready VMs in pool {POOL}", interval=0.2)
    assert found is not None
    return found


def test_a_clone_task_vcenter_cannot_read_does_not_stop_the_pool_refilling_or_reaping(
        vcsim: VcsimServer, make_harness: HarnessFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    harness = harness_for(vcsim, make_harness)
    provider = harness.provider
    clone_vms = provider.clone_vms  # how a pass starts its clones (one call for all)
    refused: list[str] = []

    def cloning(pool: Any, hostnames: Any, *args: Any, **named: Any) -> dict[str, Any]:
        started = clone_vms(pool, hostnames, *args, **named)
        if not refused:  # the pool's first clone: vCenter refuses to read its task from now on
            refused.extend([ref for ref in started.values() if isinstance(ref, str)][:1])
        return started

    monkeypatch.setattr(provider, "clone_vms", cloning)
    # vCenter refuses every read naming that task (the provider reads the pool's tasks together).
    refuse_on_stub(provider, monkeypatch, lambda method, args: vim.fault.NoPermission(msg=REFUSED_TEXT) if any(
        ref.split(":")[1] in objects_read(method, args) for ref in refused) else None)

    started = harness.reconcile(POOL).clones_started
    assert len(started) == 2
    [stuck] = [name for name, record in harness.store.records(started).items() if record.clone_task in refused]
    harness.clock.advance(5)
    report = harness.reconcile(POOL)  # before: ProviderError at the pending step, this pass and every one after
    assert any(stuck in error and REFUSED in error for error in report.errors), report.errors
    [other] = until_ready(harness, 1)
    assert other != stuck and harness.state_of(stuck) == "pending"  # its slot kept: it may still clone

    # Reaping and refilling go on: a VM returned is destroyed in vCenter and replaced.
    assert harness.checkout(POOL) == other
    assert harness.delete(f"/api/v3/vm/{other}").status == 200
    replacement = until_ready(harness, 1)
    assert other not in replacement and harness.state_of(other) == "destroyed"
    assert other not in in_vcenter(harness)
    assert harness.state_of(stuck) == "pending"

    # Past the pool's timeout the unreadable clone is out of service, its slot held as a clone
    # still running past it; the pool refills without it.
    harness.clock.advance(2 * 60 + 1)
    harness.reconcile(POOL)
    assert harness.state_of(stuck) == "completed"
    assert "its task could not be read" in harness.describe(stuck).get("reason", ""), harness.describe(stuck)
    held = harness.store.get_vm(stuck)
    assert held is not None and held.raw.get(CLONE_HELD)
    assert stuck in in_vcenter(harness)  # not destroyed while vCenter may still be making it
    until_ready(harness, 2)

    # CLONE_CANCEL_WAIT_SECONDS past the timeout its slot is freed and its VM destroyed by name.
    harness.clock.advance(CLONE_CANCEL_WAIT_SECONDS)
    for _ in range(5):  # vCenter powers it off, then destroys it: a pass each
        harness.reconcile(POOL)
        harness.clock.advance(5)
    assert harness.state_of(stuck) == "destroyed"
    assert stuck not in in_vcenter(harness)
    assert harness.store.cloning_count() == 0
    assert harness.hosts(POOL, "ready") == in_vcenter(harness) and len(in_vcenter(harness)) == 2


def test_a_destroy_task_vcenter_cannot_read_is_started_again_and_the_pool_goes_on(
        vcsim: VcsimServer, make_harness: HarnessFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """The destroy of a returned VM whose task vCenter then refuses to read: the destroy is
    started again (its error visible on the VM meanwhile) and the VM is gone; the pool refills."""
    harness = harness_for(vcsim, make_harness)
    until_ready(harness, 2)
    taken = harness.checkout(POOL)
    assert harness.delete(f"/api/v3/vm/{taken}").status == 200
    harness.reconcile(POOL)
    record = harness.store.get_vm(taken)
    assert record is not None and record.destroy_task
    first = record.destroy_task
    unreadable_tasks(harness, monkeypatch, lambda ref: ref == first)

    harness.clock.advance(5)
    report = harness.reconcile(POOL)  # before: ProviderError at the completed step, every pass
    assert any(taken in error and REFUSED in error for error in report.errors), report.errors
    record = harness.store.get_vm(taken)
    assert record is not None and REFUSED in record.raw.get("destroy_error", "")

    def destroyed() -> bool:
        harness.clock.advance(5)
        harness.reconcile(POOL)
        return harness.state_of(taken) == "destroyed"

    eventually(destroyed, 30, f"{taken} destroyed by a destroy started again", interval=0.2)
    assert taken not in in_vcenter(harness)
    assert len(until_ready(harness, 2)) == 2


def test_a_task_read_that_cannot_reach_vcenter_still_ends_the_pass(
        vcsim: VcsimServer, make_harness: HarnessFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """A read that cannot reach vCenter is not one task's: every further read would wait as long,
    so the pass ends there (the runner counts it, ``ReconcileErrors`` reason ``connection``)."""
    harness = harness_for(vcsim, make_harness)
    assert len(harness.reconcile(POOL).clones_started) == 2
    # The network fails every read of a task (the provider reads the pool's tasks together).
    refuse_on_stub(harness.provider, monkeypatch, lambda method, args: ConnectionRefusedError(
        "cannot talk to vCenter") if any(name.startswith("task-") for name in objects_read(method, args)) else None)
    harness.clock.advance(5)
    with pytest.raises(ProviderError) as raised:
        harness.reconcile(POOL)
    assert raised.value.kind is FailureKind.CONNECTION


def test_a_template_preparation_vcenter_cannot_read_holds_the_pool_only_until_the_clone_timeout(
        private_vcsim: VcsimServer, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch) -> None:
    """``create_template_delta_disks``: vCenter refuses to read the pool's template preparation
    (NoPermission on the template): the pass goes on, the pool's clones held as while a
    preparation is under way, for the clone ``timeout`` at most, then the pool refills from the
    template as it is. Before, every pass ended at the template step: the pool never refilled."""
    setup = make_setup(private_vcsim, service={"create_template_delta_disks": True, "timeout": 5})
    store, clock, pool = Store(redis_client), FakeClock(), setup.pool(size=1)
    read = setup.provider.task_status

    def refusing(task_ref: str) -> TaskStatus:
        if templates.is_ref(task_ref):
            raise ProviderError(f"read task {task_ref}: {REFUSED}", FailureKind.PERMISSION)
        return read(task_ref)

    monkeypatch.setattr(setup.provider, "task_status", refusing)
    planned_at = clock.now()
    started: list[str] = []
    while not started and clock.now() - planned_at < 15 * 60:
        clock.advance(60)
        report = reconcile_pool(store, setup.provider, pool, clock, setup.service)
        assert any(REFUSED in error for error in report.errors), report.errors
        started += report.clones_started
        assert not started or clock.now() - planned_at >= 5 * 60, "gave up before the timeout"
    assert len(started) == 1, "the pool's refill still held after the clone timeout"


def test_a_read_of_several_tasks_one_of_which_vcenter_forgot_answers_for_the_others(
        setup: Setup, monkeypatch: pytest.MonkeyPatch) -> None:
    """vCenter answers ManagedObjectNotFound to a PropertyCollector read naming an object it no
    longer has (a task dropped from a VM's ``recentTask`` between the read listing it and the one
    reading it: vcsim leaves such an object out instead). The other tasks are still read, the
    missing one left out, as ``inventory.properties`` says: a template preparation's or a
    destroy's state no longer fails to read for it."""
    provider = setup.provider
    pool = setup.pool(ready_check="tools")
    refs = [provider.clone(pool, f"several-{secrets.token_hex(3)}") for _ in range(2)]
    connection = provider.connection()
    known = [vim.Task(ref.split(":")[1], connection.stub) for ref in refs]
    gone = vim.Task("task-forgotten", connection.stub)
    collect = inventory._collect

    def as_vcenter(connection: Any, spec: Any) -> list[Any]:
        if len(spec.objectSet) > 1 and any(item.obj._moId == gone._moId for item in spec.objectSet):
            raise vmodl.fault.ManagedObjectNotFound(obj=gone)
        return collect(connection, spec)

    monkeypatch.setattr(inventory, "_collect", as_vcenter)
    found = inventory.properties(connection, [known[0], gone, known[1]], vsphere_tasks.TASK_INFO)
    assert [item["_obj"]._moId for item in found] == [task._moId for task in known]
    assert all(item["info.state"] == vim.TaskInfo.State.success for item in found)
