"""A pool's clones drained while vcsim still runs them (POST /poolreset) keep their task_limit
slots until vCenter ends them, and are destroyed only then: none lands later as an orphan
(before, the destroy found nothing on vSphere and the clone was discovered after it)."""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Iterator

import pytest

from chalicelib.manager.completed import CLONE_CANCEL_WAIT_SECONDS
from chalicelib.observability import CLONE_CANCELS_REFUSED
from chalicelib.providers.base import CancelRefused, TaskState
from chalicelib.providers.failures import FailureKind
from tests.harness import HarnessFactory
from tests.support import emf_documents, emitted, eventually
from tests.vsphere.vcsim import VcsimServer, delayed_clones, make_setup, vcsim_config
from tools.vcsim import launcher

POOL = "held-slots"
LIMIT = 2


def test_clones_drained_mid_clone_are_destroyed_after_vcenter_ends_them(
        slow_vcsim: VcsimServer, make_harness: HarnessFactory) -> None:
    pool = {"name": POOL, "ready_check": "tools", "size": LIMIT, "folder": f"vmpool/held-{secrets.token_hex(4)}"}
    harness = make_harness(vcsim_config(slow_vcsim, [pool], {"task_limit": LIMIT, "experimental_features": True}))
    first = harness.reconcile(POOL).clones_started
    assert len(first) == LIMIT
    tasks = [record.clone_task for record in harness.store.records(first).values()]
    harness.clock.advance(1)
    assert harness.post("/api/v3/poolreset", {POOL: "1"}).status == 201
    report = harness.reconcile(POOL)
    if all(status.state is TaskState.RUNNING for status in harness.provider.task_statuses(tasks).values()):
        # vCenter still runs both clones after the whole pass: no slot was free for a new one.
        assert report.clones_started == []
        assert {harness.state_of(name) for name in first} == {"completed"}
    discovered: set[str] = set()

    def refilled() -> bool:
        harness.clock.advance(5)
        harness.reconcile(POOL)
        discovered.update(harness.hosts(POOL, "discovered"))
        in_vcenter = {vm.name for vm in harness.provider.list_vms(harness.pool(POOL))}
        ready = harness.hosts(POOL, "ready")
        return len(ready) == LIMIT and in_vcenter == ready and harness.store.cloning_count() == 0

    eventually(refilled, 90, "the pool refilled, the drained clones destroyed", interval=0.2)
    assert discovered == set(), "drained clones landed as orphans"
    assert {harness.state_of(name) for name in first} == {"destroyed"}
    assert not set(first) & harness.hosts(POOL, "ready")


def test_clones_past_the_timeout_keep_their_slots_until_vcenter_ends_them(
        slow_vcsim: VcsimServer, make_harness: HarnessFactory) -> None:
    """Clones vcsim still runs when the pool's timeout has passed (on the fake clock): each holds
    its slot while vcsim runs it, is asked to cancel (vcsim ends it in error and removes its VM),
    and its record is destroyed; none lands as an orphan."""
    pool = {"name": POOL, "ready_check": "tools", "size": LIMIT, "timeout": 1,
            "folder": f"vmpool/late-{secrets.token_hex(4)}"}
    harness = make_harness(vcsim_config(slow_vcsim, [pool], {"task_limit": LIMIT}))
    first = harness.reconcile(POOL).clones_started
    assert len(first) == LIMIT
    tasks = [record.clone_task for record in harness.store.records(first).values()]
    harness.clock.advance(61)
    started = harness.reconcile(POOL).clones_started  # timed out: out of service, their slots held
    if all(status.state is TaskState.RUNNING for status in harness.provider.task_statuses(tasks).values()):
        assert started == [], "slots freed while vCenter still clones"
        assert {harness.state_of(name) for name in first} == {"completed"}
        harness.reconcile(POOL)  # asked to cancel
        assert all(record.raw.get("clone_cancel_asked") for record in harness.store.records(first).values())
        assert all(status.state is TaskState.ERROR for status in harness.provider.task_statuses(tasks).values())
    discovered: set[str] = set()

    def destroyed() -> bool:
        harness.clock.advance(1)
        harness.reconcile(POOL)
        discovered.update(harness.hosts(POOL, "discovered"))
        in_vcenter = {vm.name for vm in harness.provider.list_vms(harness.pool(POOL))}
        return {harness.state_of(name) for name in first} == {"destroyed"} and not in_vcenter & set(first)

    eventually(destroyed, 90, "the timed-out clones destroyed once vcsim ended them", interval=0.2)
    assert discovered == set(), "timed-out clones landed as orphans"


def test_a_clone_cancelled_ends_in_error_and_leaves_no_vm(slow_vcsim: VcsimServer) -> None:
    """CancelTask on a clone vCenter still runs: accepted once, the task then reads as an error
    and the VM being cloned is gone; a task that ended is not cancelled."""
    setup = make_setup(slow_vcsim)
    pool = setup.pool(ready_check="tools")
    provider = setup.provider
    running = provider.clone(pool, "to-cancel")
    done = provider.clone(pool, "to-keep")
    assert provider.task_status(running).state is TaskState.RUNNING
    assert provider.cancel_task(running) is True
    status = provider.task_status(running)
    assert status.state is TaskState.ERROR and "cancel" in (status.error or "").lower(), status
    assert provider.cancel_task(running) is False
    eventually(lambda: provider.task_status(done).done, 30, "the other clone to end", interval=0.2)
    assert provider.cancel_task(done) is False
    assert {vm.name for vm in provider.list_vms(pool)} == {"to-keep"}


@pytest.fixture
def long_clone_vcsim(vcsim_dir: Path) -> Iterator[VcsimServer]:
    """A simulator whose clone tasks run far longer than any test: still running when cancelled."""
    yield from delayed_clones(vcsim_dir, 600, "long-clones")


def test_a_refused_cancel_is_counted_and_the_slot_is_freed_at_the_cancel_wait(
        long_clone_vcsim: VcsimServer, make_harness: HarnessFactory, capsys: pytest.CaptureFixture[str]) -> None:
    """vCenter refuses CancelTask (NoPermission: the user may clone but not cancel) on a clone past
    its pool's timeout: the pass goes on, the refusal is a typed failure (an error in the pass's
    report, ``CloneCancelsRefused`` by reason) asked once, and the slot is freed
    CLONE_CANCEL_WAIT_SECONDS past the timeout, for a new clone. Before, the refusal read as
    "not accepted" and nothing counted it: an operator never learnt cancels were refused."""
    pool = {"name": POOL, "ready_check": "tools", "size": 1, "timeout": 1,
            "folder": f"vmpool/refused-{secrets.token_hex(4)}/{launcher.NO_CANCEL_FOLDER}"}
    harness = make_harness(vcsim_config(long_clone_vcsim, [pool], {"task_limit": 1}))
    [first] = harness.reconcile(POOL).clones_started
    task = harness.store.get_vm(first).clone_task  # type: ignore[union-attr]
    with pytest.raises(CancelRefused) as refused:
        harness.provider.cancel_task(task)
    assert refused.value.kind is FailureKind.PERMISSION and refused.value.metric_key == "permission"
    harness.clock.advance(61)
    assert harness.reconcile(POOL).clones_started == []  # timed out: its slot held while vCenter clones
    capsys.readouterr()
    report = harness.reconcile(POOL)
    assert [error for error in report.errors if "refused to cancel" in error and "NoPermission" in error], report.errors
    assert harness.store.get_vm(first).raw.get("clone_cancel_asked")  # type: ignore[union-attr]
    assert emitted(emf_documents(capsys.readouterr().out))[
        (CLONE_CANCELS_REFUSED, ("pool", "reason", "service"))] == [1.0]
    assert harness.provider.task_status(task).state is TaskState.RUNNING
    later = harness.reconcile(POOL)
    assert not [error for error in later.errors if "refused" in error], "asked again"
    assert later.clones_started == []
    harness.clock.advance(CLONE_CANCEL_WAIT_SECONDS)
    assert len(harness.reconcile(POOL).clones_started) == 1  # the slot freed at the cancel wait
    assert harness.state_of(first) in ("completed", "destroyed")
