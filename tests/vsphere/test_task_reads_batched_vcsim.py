"""The vSphere provider reads many tasks in one PropertyCollector retrieval (``task_statuses``),
with the answers of the one-at-a-time reads, and a destroy vCenter refuses reads as that destroy's
failure (vcsim; clone tasks that run for the test's length on a simulator of its own)."""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
from pyVmomi import vim

from chalicelib.providers.base import TaskState, TaskStatus
from chalicelib.providers.failures import FailureKind
from chalicelib.providers.vsphere import inventory
from chalicelib.providers.vsphere import tasks as vsphere_tasks
from chalicelib.providers.vsphere.provider import VSphereProvider
from tests.support import eventually
from tests.vsphere.vcsim import DATACENTER, Setup, VcsimServer, delayed_clones, make_setup, objects_read, refuse_on_stub


@pytest.fixture(scope="module")
def long_clones(vcsim_dir: Path) -> Iterator[VcsimServer]:
    """A simulator of its own whose clone tasks run longer than any test of them."""
    yield from delayed_clones(vcsim_dir, 600, "batched-reads")


def names(count: int) -> list[str]:
    label = secrets.token_hex(3)
    return [f"br-{label}-{index}" for index in range(count)]


def soap_calls(provider: VSphereProvider, read: Callable[[], Any]) -> tuple[Any, int]:
    """What ``read`` returned, and the SOAP calls it made (counted at the connection's stub)."""
    before = provider.call_count()
    result = read()
    return result, provider.call_count() - before


def test_ten_clones_in_flight_are_read_in_one_call_with_the_answers_of_one_at_a_time(
        long_clones: VcsimServer) -> None:
    """Before, each clone task cost a call of its own every poll (10 clones in flight: 10 calls,
    every 0.25 s of a pass's follow-ups); now one retrieval reads them all."""
    setup = make_setup(long_clones)
    pool = setup.pool(size=10)
    provider = setup.provider
    running = [provider.clone(pool, name) for name in names(10)]
    one_at_a_time, calls_one_by_one = soap_calls(provider, lambda: {ref: provider.task_status(ref) for ref in running})
    together, calls = soap_calls(provider, lambda: provider.task_statuses(running))
    assert together == one_at_a_time
    assert {status.state for status in together.values()} == {TaskState.RUNNING}
    assert calls_one_by_one == 10
    assert calls <= 2, f"{calls} SOAP calls to read 10 clone tasks"


def mixed_refs(setup: Setup) -> dict[str, str]:
    """References of each outcome, by what they are: a clone running, one cancelled (its task in
    error), a plain task that succeeded, a task vCenter never knew, a clone whose task vCenter
    no longer knows whose VM is there, and one whose VM is not."""
    provider = setup.provider
    pool = setup.pool(size=2)
    running, cancelled = names(2)
    refs = {"running": provider.clone(pool, running), "cancelled": provider.clone(pool, cancelled)}
    assert provider.cancel_task(refs["cancelled"])
    connection = provider.connection()
    folder = inventory.find(connection, f"{DATACENTER}/vm/{pool.folder}")
    assert isinstance(folder, vim.Folder)
    renamed = inventory.ensure_folder(connection, DATACENTER, f"vmpool/rename-{secrets.token_hex(3)}", create=True)
    refs["succeeded"] = vsphere_tasks.recorded(connection, renamed.Rename_Task(f"renamed-{secrets.token_hex(3)}"))
    refs["vanished"] = "task:task-987654:q1"
    refs["vanished clone, VM there"] = f"clone:task-987655:{folder._moId}:{running}:q1"
    refs["vanished clone, no VM"] = f"clone:task-987656:{folder._moId}:never-made:q1"
    refs["not started"] = vsphere_tasks.failed_ref("no template", FailureKind.TEMPLATE)
    return refs


def test_tasks_read_together_answer_as_read_one_at_a_time_whatever_their_outcome(long_clones: VcsimServer) -> None:
    setup = make_setup(long_clones)
    provider = setup.provider
    refs = mixed_refs(setup)

    def ended() -> dict[str, TaskStatus] | None:
        found = {what: provider.task_status(ref) for what, ref in refs.items()}
        return found if found["succeeded"].done and found["cancelled"].done else None

    one_at_a_time = eventually(ended, 30, "the cancel and the rename to end", interval=0.2)
    together = provider.task_statuses(list(refs.values()))
    assert {what: together[ref] for what, ref in refs.items()} == one_at_a_time
    states = {what: status.state for what, status in one_at_a_time.items()}
    assert states == {"running": TaskState.RUNNING, "cancelled": TaskState.ERROR, "succeeded": TaskState.SUCCESS,
                      "vanished": TaskState.ERROR, "vanished clone, VM there": TaskState.SUCCESS,
                      "vanished clone, no VM": TaskState.ERROR, "not started": TaskState.ERROR}
    assert "RequestCanceled" in (one_at_a_time["cancelled"].error or "")
    assert one_at_a_time["not started"].kind is FailureKind.TEMPLATE
    assert "no longer knows" in (one_at_a_time["vanished"].error or "")


def test_a_task_vcenter_refuses_to_read_is_unknown_and_the_others_are_read(
        long_clones: VcsimServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """vCenter refuses any read naming one task (NoPermission): that task is UNKNOWN with the
    refusal's kind, the others read as ever."""
    setup = make_setup(long_clones)
    provider = setup.provider
    refs = [provider.clone(setup.pool(size=3), name) for name in names(3)]
    refused_task = refs[1].split(":")[1]

    refuse_on_stub(provider, monkeypatch, lambda method, args: vim.fault.NoPermission(
        msg="the user may not read this task") if refused_task in objects_read(method, args) else None)
    found = provider.task_statuses(refs)
    assert found[refs[1]].state is TaskState.UNKNOWN and found[refs[1]].kind is FailureKind.PERMISSION
    assert "NoPermission" in (found[refs[1]].error or "")
    assert found[refs[0]].state is found[refs[2]].state is TaskState.RUNNING


def test_a_destroy_vcenter_refuses_reads_as_that_destroys_failure_with_its_kind(
        setup: Setup, monkeypatch: pytest.MonkeyPatch) -> None:
    """The VM powered off, its Destroy_Task refused (the user lacks the privilege to delete
    it): the destroy reads as an ERROR of kind permission naming the refusal, which the
    completed step records on the VM (``destroy_error``) and starts again next pass. Before, the
    fault ended the read: the destroy read as one whose task could not be read."""
    provider, pool = setup.provider, setup.pool(size=1)
    [name] = names(1)
    assert vsphere_tasks.status(provider.connection(), provider.clone(pool, name)).state is TaskState.SUCCESS
    ref = provider.destroy(pool, name)
    assert ref is not None and ref.startswith("destroy:")
    refuse_on_stub(provider, monkeypatch, lambda method, args: vim.fault.NoPermission(
        msg="the user may not delete this VM") if method == "Destroy_Task" else None)

    def refused() -> TaskStatus | None:
        status = provider.task_statuses([ref])[ref]
        return status if status.state is not TaskState.RUNNING else None  # RUNNING: still powering off

    status = eventually(refused, 30, "the destroy to be asked of vCenter", interval=0.2)
    assert status is not None
    assert status.state is TaskState.ERROR and status.kind is FailureKind.PERMISSION
    assert "destroy refused: NoPermission: the user may not delete this VM" in (status.error or "")
    monkeypatch.undo()
    assert eventually(lambda: provider.task_statuses([ref])[ref].state is TaskState.SUCCESS, 30,
                      "the destroy asked again to end", interval=0.2)
