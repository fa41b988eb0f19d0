"""The reconcile pass's part in disk and snapshot tasks queued on its pool's VMs.

For each VM with work, one task is in flight at a time: the pass takes the next one from the
VM's queue (atomically, so only one pass starts it), starts it on the provider and records the
task ref; later passes ask the provider for its state and, when it is done, record the new disk
or snapshot on the VM, or why it failed. The pass never waits for a task.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Mapping

from chalicelib.config import PoolConfig
from chalicelib.manager.context import PassContext
from chalicelib.manager.task_reads import TaskReads
from chalicelib.manager.unanswered import ask_again
from chalicelib.providers.base import UNREACHABLE, AnswerLost, Provider, ProviderError, TaskState
from chalicelib.store.leases import LeaseHolder, labelled_holder
from chalicelib.store.store import Store
from chalicelib.store.vm_tasks import DISK, REVERT, SNAPSHOT, VMTaskStore, in_flight

TASK_START_GRACE_SECONDS = 120.0
"""How long a taken task may wait for its provider ref before the pass decides the pass that
took it died in between. Then the provider is asked whether the task was done (the dead pass's
call may have reached it: ``Provider.applied``): it ends done if so, else fails, visibly,
rather than run twice."""
TASK_SETTLE_SECONDS = 120.0
"""How long after its first take a task the provider may have done, or could not be given, is
given before it fails: one whose start's answer was lost (``AnswerLost``: a timeout, a connection
closed once the request left) is asked of the provider each pass (``Provider.applied``) and ends
done as soon as it shows, failing only when it has not shown by then (rather than being started
a second time: a second disk); one whose start could not reach the provider (refused, not
reached, a lookup before the send timing out) goes back to the head of its VM's queue and is
started again by a later pass until then."""
TAKER_GONE_SETTLE_SECONDS = 10.0
"""How long after its take a task whose taker is known dead (``mark_unstarted``) is judged:
time for a call that process sent before it died to be acted on by the provider (a slow
vCenter), so the task is not failed while its disk is being added, and the VM's next task does
not start against a reconfigure still running."""
TAKER_GONE = "task_taker_gone"
"""A VM record's field: the id of its in-flight task whose taker is known dead."""
UNREAD_SINCE = "task_unread_since"
"""A VM record's field: ``<task id>:<time>``, when a read of its in-flight task's state first
failed with the provider answering (``_settle_unread``); a mark naming another task is stale."""

MAX_STEPS_PER_VM = 10
"""Tasks finished and started per VM in one pass, so one busy VM cannot hold a pass."""


def describe(task: Mapping[str, Any]) -> str:
    if task["kind"] == DISK:
        return f"disk +{task['size_gb']}gb"
    if task["kind"] == SNAPSHOT:
        return f"snapshot {task['snapshot']}"
    return f"revert to snapshot {task['snapshot']}"


def result_of(task: Mapping[str, Any]) -> tuple[str, str]:
    """The record's list a successful task appends to, and what it appends."""
    if task["kind"] == DISK:
        return "disks", f"+{task['size_gb']}gb"
    if task["kind"] == SNAPSHOT:
        return "snapshots", str(task["snapshot"])
    return "", ""


def run_tasks(context: PassContext) -> None:
    """Advance every VM's disk and snapshot tasks by as much as is done now."""
    tasks = VMTaskStore(context.store)
    hostnames = tasks.hosts_with_tasks(context.pool.name)
    if hostnames and not context.store.writes_replicated():
        # A task taken now might exist on this primary only: a failover would hand it to a pass
        # again, which would start it a second time (a second disk). Taken once a replica is back.
        context.report.errors.append("disk and snapshot tasks held: no replica acknowledged in time")
        context.report.followups += 1
        return
    # Providers a task's start could not reach or timed out on in this pass: the pass starts no
    # other task there (each would wait as long, and fail); they stay queued for the next pass.
    unreachable: set[str] = set()
    records = context.store.records(list(hostnames))
    reads = context.task_reads  # the tasks in flight, read with the pass's others (tasks_to_read)
    for hostname in hostnames:
        record = records.get(hostname)
        running = record is not None and record.state == "running" and record.pool == context.pool.name
        # The VM may have been made where its pool no longer makes VMs (manager/placement.py).
        reached = context.reach(record) if record is not None and running else None
        if reached is not None and reached[0].name in unreachable:
            context.report.followups += 1
            continue
        unreached = reads.unreached(reached[0]) if reached is not None else None
        if reached is not None and unreached is not None:
            # The read ahead did not reach the provider: each call there would wait as long, so
            # the pass starts and reads nothing more there; the tasks wait for the next pass.
            context.report.errors.append(f"{hostname}: tasks not looked at: {unreached}")
            context.report.followups += 1
            unreachable.add(reached[0].name)
            continue
        for _ in range(MAX_STEPS_PER_VM):
            task, new = tasks.take(hostname, context.pool.name, context.now)
            if task is None:
                break
            if not running:
                tasks.finish(hostname, task["id"], error=f"{describe(task)} failed: the VM is no longer running")
            elif reached is None:
                tasks.finish(hostname, task["id"], error=f"{describe(task)} failed: the provider the VM "
                                                         "was made with is no longer configured")
            elif new:
                if not _start(reached, context, tasks, hostname, task):
                    unreachable.add(reached[0].name)
                    context.report.followups += 1
                    break
            else:
                try:
                    finished = _follow(reached, context, tasks, hostname, task, reads)
                except ProviderError as error:
                    # The provider cannot say now: the task waits for a later pass, and the pass
                    # goes on with the other VMs (before, the error ended the whole pass).
                    context.report.errors.append(f"{hostname}: {describe(task)}: {error}")
                    if error.kind in UNREACHABLE:
                        unreachable.add(reached[0].name)
                    finished = False
                if not finished:
                    context.report.followups += 1
                    break
            context.checkpoint("vm_task")


def tasks_to_read(context: PassContext) -> list[tuple[Provider, str]]:
    """The started tasks in flight on the pool's running VMs (as the pass's snapshot has them),
    for the pass to read with its other tasks, one ``task_statuses`` call a provider
    (reconcile.read_tasks; before, one call a VM: 10 VMs with a disk being added, 10 SOAP calls
    a pass). A task started after the snapshot was read is read on its own."""
    wanted = []
    for record in context.snapshot.records.values():
        task = in_flight(record)
        if task is None or not task.get("ref") or task.get("answer_lost") or record.state != "running" \
                or record.pool != context.pool.name:
            continue
        reached = context.reach(record)
        if reached is not None:
            wanted.append((reached[0], str(task["ref"])))
    return wanted


def _start(reached: tuple[Provider, PoolConfig], context: PassContext, tasks: VMTaskStore, hostname: str,
           task: Mapping[str, Any]) -> bool:
    """Start a task taken from the VM's queue; whether the provider could be reached. A task
    whose start's answer was lost stays in flight, marked, for later passes to ask the provider
    whether it was done (started again, a disk could be added twice); one whose start could not
    reach the provider goes back to its queue, for a later pass, until ``TASK_SETTLE_SECONDS``
    after its first take; one the provider refused is finished with the reason."""
    provider, pool = reached
    try:
        if task["kind"] == DISK:
            ref = provider.add_disk(pool, hostname, int(task["size_gb"]), task_key=str(task["id"]))
        elif task["kind"] == SNAPSHOT:
            ref = provider.create_snapshot(pool, hostname, str(task["snapshot"]))
        elif task["kind"] == REVERT:
            ref = provider.revert_snapshot(pool, hostname, str(task["snapshot"]))
        else:
            raise ProviderError(f"unknown task kind {task['kind']}")
    except AnswerLost as lost:
        tasks.note_answer_lost(hostname, task["id"], str(lost))
        context.report.errors.append(f"{hostname}: {describe(task)}: its start's answer was lost, the provider "
                                     f"is asked whether it was done: {lost}")
        return False
    except ProviderError as error:
        unreached = error.kind in UNREACHABLE
        if (unreached and context.now - _first_taken(task) < TASK_SETTLE_SECONDS
                and tasks.requeue(hostname, context.pool.name, task["id"], context.now)):
            context.report.errors.append(f"{hostname}: {describe(task)} not started, queued again: {error}")
        else:
            tasks.finish(hostname, task["id"], error=f"{describe(task)} failed to start: {error}")
        return not unreached
    context.checkpoint("vm_task_started")
    tasks.note_started(hostname, task["id"], ref)
    return True


def _first_taken(task: Mapping[str, Any]) -> float:
    """When the task was first taken from its queue (a task put back keeps its first take's time)."""
    return float(task.get("first_taken") or task.get("started") or 0)


def _applied_key(task: Mapping[str, Any]) -> str:
    """What ``Provider.applied`` knows the task's work by: a disk by the task's id, a snapshot by its name."""
    return str(task["id"]) if task["kind"] == DISK else str(task.get("snapshot") or "")


def mark_unstarted(store: Store, pools: Iterable[str], taker_gone: Callable[[LeaseHolder], bool]) -> list[str]:
    """Mark the in-flight tasks of the pools' VMs that a process now gone took and never noted
    started (``taker_gone``: the local stack started again knows its predecessor is dead): a
    pass judges them ``TAKER_GONE_SETTLE_SECONDS`` after their take instead of
    ``TASK_START_GRACE_SECONDS`` (the taker might be a pass paused just before starting it), so
    the VMs' later tasks run within seconds. Returns the hostnames marked."""
    tasks, marked = VMTaskStore(store), []
    for pool in pools:
        for hostname in tasks.hosts_with_tasks(pool):
            record = store.get_vm(hostname)
            task = in_flight(record) if record is not None else None
            taker = labelled_holder(str(task.get("taker") or "")) if task is not None else None
            if task is None or task.get("ref") or task.get("answer_lost") or taker is None or not taker_gone(taker):
                continue
            store.update_vm(hostname, **{TAKER_GONE: str(task["id"])})
            marked.append(hostname)
    return marked


def _never_started(task: Mapping[str, Any]) -> str:
    return f"{describe(task)} was never started (its pass was interrupted)"


def _follow(reached: tuple[Provider, PoolConfig], context: PassContext, tasks: VMTaskStore, hostname: str,
            task: Mapping[str, Any], reads: TaskReads) -> bool:
    """Check a task in flight (its state from ``reads``, read ahead). Returns True when it
    finished (either way)."""
    provider, pool = reached
    if task.get("answer_lost"):
        return _settle_lost(reached, context, tasks, hostname, task)
    if not task.get("ref"):
        record = context.record(hostname)
        gone = record is not None and record.raw.get(TAKER_GONE) == str(task["id"])
        grace = TAKER_GONE_SETTLE_SECONDS if gone else TASK_START_GRACE_SECONDS
        if context.now - float(task.get("started") or 0) <= grace:
            return False
        # The pass that took it died between asking the provider and noting the ref: the call
        # may have been done (before, such a disk was in the VM and reported never started).
        try:
            done = provider.applied(pool, hostname, str(task["kind"]), _applied_key(task))
        except ProviderError as error:
            if ask_again(error, context.now - float(task.get("started") or 0), grace + TASK_SETTLE_SECONDS):
                raise  # the provider may answer on a later pass
            # It answers, and cannot say (a refusal, the VM gone from its folder): waiting cannot
            # help. Before, the task stayed in flight for good, the VM's later tasks behind it.
            tasks.finish(hostname, task["id"], error=f"{describe(task)} may or may not have been done: its pass "
                                                     f"was interrupted after taking it and asking the provider "
                                                     f"failed: {error}")
            return True
        if done:
            list_field, value = result_of(task)
            tasks.finish(hostname, task["id"], list_field, value)
        else:
            tasks.finish(hostname, task["id"], error=_never_started(task))
        return True
    try:
        status = reads.status(provider, str(task["ref"]))
    except ProviderError as error:
        if error.kind in UNREACHABLE:
            raise  # the provider may answer on a later pass: the task waits, as ever
        return _settle_unread(reached, context, tasks, hostname, task, error)
    if _unread_since(context, hostname, task) is not None:  # read again: a later failure counts afresh
        context.store.update_vm(hostname, **{UNREAD_SINCE: None})
    if status.state is TaskState.RUNNING:
        return False
    if status.state is TaskState.ERROR:
        tasks.finish(hostname, task["id"], error=f"{describe(task)} failed: {status.error or 'unknown error'}")
        return True
    list_field, value = result_of(task)
    tasks.finish(hostname, task["id"], list_field, value)
    return True


def _settle_lost(reached: tuple[Provider, PoolConfig], context: PassContext, tasks: VMTaskStore, hostname: str,
                 task: Mapping[str, Any]) -> bool:
    """A task whose start's answer was lost: done (finished with its result) once the provider
    shows its work; failed, saying so, when it has not by ``TASK_SETTLE_SECONDS`` after its first
    take. Returns True when it finished."""
    provider, pool = reached
    waited = context.now - _first_taken(task)
    settled = waited > TASK_SETTLE_SECONDS
    lost = str(task["answer_lost"])
    try:
        done = provider.applied(pool, hostname, str(task["kind"]), _applied_key(task))
    except ProviderError as error:
        if ask_again(error, waited, TASK_SETTLE_SECONDS):
            raise  # the provider may answer on a later pass
        # It answers, and cannot say (the VM gone from its folder, a refusal): waiting cannot help.
        tasks.finish(hostname, task["id"], error=f"{describe(task)} may or may not have been done: the provider's "
                                                 f"answer to its start was lost ({lost}) and asking it failed: {error}")
        return True
    if done:
        list_field, value = result_of(task)
        tasks.finish(hostname, task["id"], list_field, value)
        return True
    if not settled:
        return False
    if done is None:
        message = (f"{describe(task)} may or may not have been done: the provider's answer to its start was lost "
                   f"({lost}) and it cannot tell")
    else:
        message = (f"{describe(task)} failed: not done {TASK_SETTLE_SECONDS:.0f} s after its start, whose answer "
                   f"was lost ({lost})")
    tasks.finish(hostname, task["id"], error=message)
    return True


def _settle_unread(reached: tuple[Provider, PoolConfig], context: PassContext, tasks: VMTaskStore, hostname: str,
                   task: Mapping[str, Any], error: ProviderError) -> bool:
    """A started task whose state the provider answers for but cannot read (``error``: vCenter
    refused to show that task...): it waits, its first failed read noted on the VM
    (``UNREAD_SINCE``), while reads keep failing for up to ``TASK_SETTLE_SECONDS``; then it ends,
    done when the provider shows its work (``Provider.applied``), else saying it may or may not
    have been done. Before, it stayed in flight for good, every later task of the VM queued
    behind it. Returns True when it finished."""
    context.report.errors.append(f"{hostname}: {describe(task)}: its state not read: {error}")
    since = _unread_since(context, hostname, task)
    if since is None:
        context.store.update_vm(hostname, **{UNREAD_SINCE: f"{task['id']}:{context.now!r}"})
        return False
    if context.now - since <= TASK_SETTLE_SECONDS:
        return False
    provider, pool = reached
    try:
        done = provider.applied(pool, hostname, str(task["kind"]), _applied_key(task))
    except ProviderError as asked:
        if asked.kind in UNREACHABLE:
            raise
        done = None
    if done:
        list_field, value = result_of(task)
        tasks.finish(hostname, task["id"], list_field, value)
    else:
        tasks.finish(hostname, task["id"], error=f"{describe(task)} may or may not have been done: its state could "
                                                 f"not be read for {TASK_SETTLE_SECONDS:.0f} s: {error}")
    return True


def _unread_since(context: PassContext, hostname: str, task: Mapping[str, Any]) -> float | None:
    """When a read of ``task``'s state first failed (``UNREAD_SINCE``), None when none noted."""
    record = context.record(hostname)
    task_id, _, noted = str(record.raw.get(UNREAD_SINCE) or "").partition(":") if record is not None else ("", "", "")
    try:
        return float(noted) if task_id == str(task["id"]) else None
    except ValueError:
        return None
