"""A disk or snapshot task whose state the provider answers for but cannot read (vCenter refusing
to show that one task) must not hold its VM's later tasks for good: it waits while reads keep
failing for up to TASK_SETTLE_SECONDS, then ends saying it may or may not have been done, and
the VM's next task runs (dummy provider, fake clock)."""

from __future__ import annotations

from typing import Any

import pytest

from chalicelib.manager.vm_tasks import TASK_SETTLE_SECONDS
from chalicelib.providers.base import ProviderError
from chalicelib.providers.failures import FailureKind
from chalicelib.store.vm_tasks import in_flight
from tests.harness import Harness
from tests.ondemand.test_vm_tasks import checked_out_vm, vm
from tests.support import refuse_task_reads

POOL = "debian-12"
REFUSED = "vCenter said NoPermission: the user may not read this task"


def refuse_reads(stack: Harness, monkeypatch: pytest.MonkeyPatch, hostname: str) -> list[bool]:
    """vCenter refuses to read the VM's task in flight now, while the returned list is not empty."""
    record = stack.store.get_vm(hostname)
    task = in_flight(record) if record is not None else None
    assert task is not None and task.get("ref")
    refusing = [True]
    refuse_task_reads(monkeypatch, stack.services.provider("dummy"), lambda task_ref: ProviderError(
        f"read task {task_ref}: {REFUSED}", FailureKind.PERMISSION) if refusing and task_ref == task["ref"] else None)
    return refusing


def test_a_disk_task_the_provider_cannot_read_ends_after_the_settle_time_and_the_next_task_runs(
        make_stack: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Before, the task stayed in flight for good (an error in every pass's report): the
    snapshot queued behind it never ran."""
    stack = make_stack(task_time=30)
    hostname = checked_out_vm(stack)
    assert stack.answer("POST", f"/api/v3/vm/{hostname}/disk/8")[0] == 202
    stack.reconcile(POOL)  # the disk started
    refuse_reads(stack, monkeypatch, hostname)
    status, body = stack.answer("POST", f"/api/v3/vm/{hostname}/snapshot")
    assert status == 202
    snapshot = body[hostname]["snapshot"]

    stack.clock.advance(31)
    report = stack.reconcile(POOL)  # its first failed read
    assert any(hostname in error and REFUSED in error for error in report.errors), report.errors
    stack.clock.advance(TASK_SETTLE_SECONDS)
    stack.reconcile(POOL)
    shown = vm(stack, hostname)
    assert (shown["disk"], shown["snapshots"], shown.get("task_errors", [])) == ([], [], [])  # still waited for

    stack.clock.advance(1)
    stack.reconcile(POOL)  # past the settle time: it ends, and the snapshot starts
    stack.clock.advance(31)
    stack.reconcile(POOL)
    shown = vm(stack, hostname)
    [error] = shown["task_errors"]
    assert error.startswith("disk +8gb may or may not have been done: its state could not be read") and REFUSED in error
    assert shown["snapshots"] == [snapshot]


def test_a_task_read_again_after_a_failed_read_waits_its_whole_settle_time_from_a_later_failure(
        make_stack: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """A read that worked between two failed ones: the settle time counts from the later failure."""
    stack = make_stack(task_time=600)
    hostname = checked_out_vm(stack)
    stack.answer("POST", f"/api/v3/vm/{hostname}/disk/8")
    stack.reconcile(POOL)
    refusing = refuse_reads(stack, monkeypatch, hostname)
    stack.clock.advance(5)
    stack.reconcile(POOL)  # failed
    refusing.clear()
    stack.clock.advance(TASK_SETTLE_SECONDS)
    stack.reconcile(POOL)  # read: still running
    refusing.append(True)
    stack.clock.advance(5)
    stack.reconcile(POOL)  # failed again: counted from here
    stack.clock.advance(TASK_SETTLE_SECONDS - 10)
    stack.reconcile(POOL)
    assert vm(stack, hostname).get("task_errors", []) == []
    refusing.clear()
    stack.clock.advance(600)
    stack.reconcile(POOL)
    assert vm(stack, hostname)["disk"] == ["+8gb"]
