"""Task references: strings the manager stores on a VM record and hands back on a later pass.

vCenter task morefs (``task-123``) are server-wide and outlive our session, so a later
invocation can read them. A few operations need more than one vCenter task or must survive
vCenter forgetting old tasks (it keeps finished ones for minutes only), so a reference is one of:

* ``task:<task>:q<queued>`` - a plain vCenter task; ``queued`` is when vCenter queued it
  (microseconds since 1970, vCenter's clock), read once when it starts: a task of that id queued
  at another time is another task (vCenter restarted, or restored from a backup, hands out old
  task ids again), read as one vCenter no longer knows. ``task:<task>`` (written before, and by
  the purge, which reads its tasks at once) trusts the id;
* ``clone:<task>:<folder>:<name>:q<queued>`` - a clone (``queued`` as above). If vCenter no
  longer knows the task, or the id is another task's, the clone succeeded exactly when a VM of
  that name is in the folder. (Written without ``:q<queued>`` before that check existed: the id
  is then trusted);
* ``destroy:<vm>:<poweroff task>:<name>`` - a destroy that had to power off first: reading its
  state starts Destroy_Task once the VM is off and reports success when the VM is gone, or when
  the id now names a VM of another name (a vCenter restored from a backup, or restarted as vcsim
  is, gives old ids to new VMs: those are never destroyed for it); a Destroy_Task vCenter
  refuses reads as an ERROR of the fault's kind. Written without ``:<name>`` before that check
  existed;
* ``migrate:<task>:<vm>:<host>:q<queued>`` - a RelocateVM (``queued`` as above); if vCenter no
  longer knows the task, or the id is another task's, it succeeded exactly when the VM is on that
  host. (Written without ``:q<queued>`` before that check existed: the id is then trusted);
* ``template:<vm>:<0|1>:<path>`` - a template's delta disks: read by templates.py, not here;
* ``delta:<task>:<vm>:<0|1>`` - the same, as written before the VM's identity was kept: it reads
  as an ERROR of kind ``template`` (nothing is done to a VM it cannot tell is the template), and
  the manager plans the preparation again;
* ``failed:<kind>:<message>`` - an operation that could not be started (template or folder
  missing): it reads as an ERROR carrying the failure's kind and message, the same way a vCenter
  fault does. (``failed:<message>``, written before kinds existed, reads as kind ``other``.)

Reading a state never waits. ``statuses`` reads many references' tasks in one retrieval.
"""

from __future__ import annotations

import base64
from datetime import datetime, timedelta, timezone
from typing import Any, Mapping, Sequence

from pyVmomi import vim, vmodl

from chalicelib.providers.base import CancelRefused, TaskState, TaskStatus
from chalicelib.providers.failures import FailureKind
from chalicelib.providers.vsphere import inventory
from chalicelib.providers.vsphere.connection import Connection, describe_fault, fault_kind

TASK_INFO = ("info.state", "info.error", "info.descriptionId")
RECORDED_TASK_INFO = (*TASK_INFO, "info.queueTime")
"""What a task reference's read asks of its vCenter task: its state, error and queue time."""

TaskInfos = Mapping[str, "dict[str, Any] | None"]
"""Task infos read beforehand (``read_tasks``): task id -> its properties, or None when vCenter
no longer knows it."""
DESTROY_REFUSALS: tuple[type[BaseException], ...] = (
    vim.fault.NoPermission, vim.fault.InvalidState, vim.fault.TaskInProgress)
"""Faults of a Destroy_Task vCenter refuses for this VM alone (``destroy_statuses``)."""
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def plain(task: Any) -> str:
    """A task read within the call that started it (its id cannot have been handed out again)."""
    return f"task:{task._moId}"


def recorded(connection: Connection, task: Any) -> str:
    """A task's reference for a later pass, with the time vCenter queued it (one call)."""
    return f"task:{task._moId}:{_queued(connection, task)}"


def _queue_time(connection: Connection, task: Any) -> Any:
    return (_task_info(connection, task._moId) or {}).get("info.queueTime")


def _queued(connection: Connection, task: Any) -> str:
    return f"q{_stamp(_queue_time(connection, task))}"


def _stamp(moment: Any) -> str:
    """A task's queue time as whole microseconds since 1970 ('' when vCenter gave none)."""
    if not isinstance(moment, datetime):
        return ""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return str((moment - _EPOCH) // timedelta(microseconds=1))


def unix_time(moment: Any) -> float:
    """A task's time (``info.queueTime``) as seconds since 1970; 0 when vCenter gave none."""
    stamp = _stamp(moment)
    return int(stamp) / 1e6 if stamp else 0.0


def known_ref(task: Any, queued: Any) -> str:
    """A plain task's reference from the queue time (``info.queueTime``) read with it: no call."""
    return f"task:{task._moId}:q{_stamp(queued)}"


def known_clone_ref(task: Any, folder: Any, name: str, queued: Any) -> str:
    """A clone's reference from its task's queue time (``info.queueTime``, read for all the clones
    of a pass at once: ``VSphereProvider.clone_vms``): no call."""
    return f"clone:{task._moId}:{folder._moId}:{name}:q{_stamp(queued)}"


def destroy_ref(vm: Any, poweroff_task: Any, name: str) -> str:
    return f"destroy:{vm._moId}:{poweroff_task._moId}:{name}"


def migrate_ref(connection: Connection, task: Any, vm: Any, host: Any) -> str:
    """The migration's reference, with the time vCenter queued its task (one call)."""
    return f"migrate:{task._moId}:{vm._moId}:{host._moId}:{_queued(connection, task)}"


def failed_ref(message: str, kind: FailureKind) -> str:
    """A reference to an operation that could not start; its status is the ERROR, kind included."""
    return f"failed:{kind.value}:" + base64.urlsafe_b64encode(message.encode()).decode()


def _failed_status(rest: str) -> TaskStatus:
    kind, _, encoded = rest.rpartition(":")  # the base64 alphabet has no ':'
    try:
        message = base64.urlsafe_b64decode(encoded.encode()).decode()
    except ValueError:
        message = "operation failed"
    return TaskStatus(TaskState.ERROR, message, FailureKind.parse(kind))


def _task_info(connection: Connection, moid: str, known: TaskInfos | None = None) -> dict[str, Any] | None:
    """A task's state, error, description and queue time, or None when vCenter no longer knows it
    (from ``known`` when it was read there: no call)."""
    if known is not None and moid in known:
        return known[moid]
    return read_tasks(connection, [moid])[moid]


def read_tasks(connection: Connection, moids: Sequence[str]) -> dict[str, dict[str, Any] | None]:
    """The info of many tasks in one PropertyCollector retrieval (task id -> its properties, or
    None when vCenter no longer knows it). A task that vanished under the read makes
    ``inventory.properties`` read each alone: the others are still read."""
    unique = list(dict.fromkeys(moids))
    try:
        found = inventory.properties(connection, [vim.Task(moid, connection.stub) for moid in unique],
                                     RECORDED_TASK_INFO)
    except vmodl.fault.ManagedObjectNotFound:
        found = []
    read = {item["_obj"]._moId: item for item in found if "info.state" in item}
    return {moid: read.get(moid) for moid in unique}


def task_state(connection: Connection, moid: str) -> TaskStatus | None:
    """A task's state, or None when vCenter no longer knows the task."""
    found = _task_info(connection, moid)
    return None if found is None else _state_of(found)


def _recorded_state(connection: Connection, moid: str, queued: str,
                    known: TaskInfos | None = None) -> tuple[TaskStatus | None, bool]:
    """The state of the task recorded as ``moid`` queued at ``queued`` ('' : not kept), or None
    when vCenter no longer knows it; and whether the id names another task now."""
    found = _task_info(connection, moid, known)
    if found is None:
        return None, False
    if queued and queued != f"q{_stamp(found.get('info.queueTime'))}":
        return None, True
    return _state_of(found), False


def _state_of(found: dict[str, Any]) -> TaskStatus:
    state = found["info.state"]
    if state == vim.TaskInfo.State.success:
        return TaskStatus(TaskState.SUCCESS)
    if state == vim.TaskInfo.State.error:
        error = found.get("info.error")
        if error is None:
            return TaskStatus(TaskState.ERROR, "task failed")
        return TaskStatus(TaskState.ERROR, describe_fault(error), fault_kind(error))
    return TaskStatus(TaskState.RUNNING)


def reads_together(ref: str) -> bool:
    """Whether ``statuses`` reads the reference with others: all but a destroy (its read moves
    its power-off and destroy chain on) and a template's (templates.py)."""
    return ref.partition(":")[0] in ("task", "clone", "migrate", "failed", "delta")


def clone_task_of(ref: str) -> str | None:
    """The vCenter task id of a clone's reference; None for another reference."""
    kind, _, rest = ref.partition(":")
    return rest.partition(":")[0] if kind == "clone" else None


def migration_target_of(ref: str) -> str | None:
    """The id of the host a migration's reference moves its VM to; None for another reference."""
    kind, _, rest = ref.partition(":")
    parts = rest.split(":")
    return parts[2] if kind == "migrate" and len(parts) > 2 else None


def _task_of(ref: str) -> str | None:
    """The vCenter task id a reference reads, if any."""
    kind, _, rest = ref.partition(":")
    return rest.partition(":")[0] if kind in ("task", "clone", "migrate") else None


def statuses(connection: Connection, refs: Sequence[str]) -> dict[str, TaskStatus]:
    """The state of each of ``refs`` (``reads_together``), as ``status`` reads it one at a time,
    from one retrieval of all their tasks (``read_tasks``), and one call more for each clone or
    migration whose task vCenter no longer knows (the VM tells how it ended). Before, each
    reference cost a call of its own: a pool with 10 clones in flight, 10 calls every poll."""
    known = read_tasks(connection, [task for task in map(_task_of, refs) if task])
    return {ref: status(connection, ref, known) for ref in refs}


def status(connection: Connection, ref: str, known: TaskInfos | None = None) -> TaskStatus:
    """The state of any reference this provider handed out (its task from ``known`` when read
    there: ``statuses``)."""
    kind, _, rest = ref.partition(":")
    if kind == "failed":
        return _failed_status(rest)
    if kind == "task":
        task, _, queued = rest.partition(":")
        found, reused = _recorded_state(connection, task, queued, known)
        gone = f"task {task} is another task now (vCenter restarted?)" if reused \
            else f"vCenter no longer knows task {task}"
        return found or TaskStatus(TaskState.ERROR, gone)
    if kind == "clone":
        return _clone_status(connection, *(rest.split(":", 3) + ["", "", ""])[:4], known=known)
    if kind == "migrate":
        return _migrate_status(connection, *(rest.split(":", 3) + ["", "", ""])[:4], known=known)
    if kind == "delta":
        return TaskStatus(TaskState.ERROR, "a template preparation recorded by an older vmpool: prepared again",
                          FailureKind.TEMPLATE)
    if kind == "destroy":
        return destroy_statuses(connection, [ref])[ref]
    return TaskStatus(TaskState.ERROR, f"unknown task reference {ref!r}")


def cancel(connection: Connection, ref: str) -> bool:
    """Ask vCenter to cancel the clone task ``ref`` while it is still ours and queued or running
    (CancelTask: vCenter stops the clone and removes what it made; the task then ends in error).
    False when it is not a clone, vCenter no longer knows it, the id is another task's now, or it
    ended (before the ask, or while vCenter refused it). Raises CancelRefused when vCenter refuses
    a task it still runs (NoPermission: the user lacks the privilege; InvalidState: past the
    point where it can be cancelled; NotSupported...)."""
    kind, _, rest = ref.partition(":")
    if kind != "clone":
        return False
    task, _, _, queued = (rest.split(":", 3) + ["", "", ""])[:4]
    found, _ = _recorded_state(connection, task, queued)
    if found is None or found.state is not TaskState.RUNNING:
        return False
    try:
        vim.Task(task, connection.stub).CancelTask()
    except vmodl.fault.ManagedObjectNotFound:
        return False  # vCenter forgot the task meanwhile
    except vmodl.MethodFault as fault:
        after, _ = _recorded_state(connection, task, queued)
        if after is None or after.state is not TaskState.RUNNING:
            return False  # it ended meanwhile: nothing was refused
        key = "permission" if isinstance(fault, vim.fault.NoPermission) \
            else "invalid_state" if isinstance(fault, vim.fault.InvalidState) else "other"
        raise CancelRefused(f"vCenter refused to cancel clone task {task}: {describe_fault(fault)}",
                            fault_kind(fault), key) from None
    return True


def _clone_status(connection: Connection, task: str, folder: str, name: str, queued: str, *,
                  known: TaskInfos | None = None) -> TaskStatus:
    """The clone task's state while vCenter knows it as our task; after that, whether its VM is
    there. ``queued``: ``q<microseconds>`` ('' in references written before it was kept)."""
    found, reused = _recorded_state(connection, task, queued, known)
    if found is not None:
        return found
    # The task expired from vCenter, or its id is another task's now: the VM tells how it ended.
    try:
        vm = connection.content.searchIndex.FindChild(vim.Folder(folder, connection.stub), name)
    except vmodl.fault.ManagedObjectNotFound:
        vm = None
    if vm is not None:
        return TaskStatus(TaskState.SUCCESS)
    gone = "is another task now (vCenter restarted?)" if reused else "expired in vCenter"
    return TaskStatus(TaskState.ERROR, f"clone task {task} {gone} and no VM {name} exists")


def _migrate_status(connection: Connection, task: str, vm_id: str, host_id: str, queued: str, *,
                    known: TaskInfos | None = None) -> TaskStatus:
    """The RelocateVM task's state while vCenter knows it as our task; after that, whether the VM
    is on the target host. ``queued``: ``q<microseconds>`` ('' in references written before)."""
    found, reused = _recorded_state(connection, task, queued, known)
    if found is not None:
        return found
    try:
        placed = inventory.one(connection, vim.VirtualMachine(vm_id, connection.stub), ["runtime.host"]) or {}
    except vmodl.fault.ManagedObjectNotFound:
        placed = {}
    host = placed.get("runtime.host")
    if host is not None and host._moId == host_id:
        return TaskStatus(TaskState.SUCCESS)
    gone = "is another task now (vCenter restarted?)" if reused else "expired in vCenter"
    return TaskStatus(TaskState.ERROR, f"migration task {task} {gone} and the VM is not on {host_id}")


def is_destroy(ref: str) -> bool:
    """Whether ``ref`` is a destroy's reference (``destroy_statuses`` reads it)."""
    return ref.partition(":")[0] == "destroy"


VM_DESTROY_STATE = ("name", "runtime.powerState", "recentTask")


def destroy_statuses(connection: Connection, refs: Sequence[str]) -> dict[str, TaskStatus]:
    """The state of each destroy reference (``destroy:<vm>:<poweroff task>:<name>``), each read
    moving its chain one step without waiting: power-off, then destroy. Every read is made once
    for all of them, then each ``Destroy_Task`` due is sent (a call of its own, after every read:
    a read run again after a lost session sees the destroys already sent among the VMs' recent
    tasks, and sends none twice): the VMs in one retrieval, the power-off tasks of those still on
    in one, the recent tasks of those off in one. Before, each destroy cost two reads of its own
    every pass (10 VMs powering off: 20 calls; now 2)."""
    chains: dict[str, tuple[str, str, str]] = {}
    for ref in dict.fromkeys(refs):
        vm_id, _, rest = ref.partition(":")[2].partition(":")
        poweroff, _, name = rest.partition(":")
        chains[ref] = (vm_id, poweroff, name)
    vm_ids = list(dict.fromkeys(vm_id for vm_id, _, _ in chains.values()))
    found = {item["_obj"]._moId: item for item in inventory.properties(
        connection, [vim.VirtualMachine(vm_id, connection.stub) for vm_id in vm_ids], VM_DESTROY_STATE)}
    live = {ref: found[vm_id] for ref, (vm_id, _, name) in chains.items()
            if vm_id in found and not (name and found[vm_id].get("name") != name)}
    off_state = vim.VirtualMachine.PowerState.poweredOff
    on = {ref: vm for ref, vm in live.items() if vm.get("runtime.powerState") != off_state}
    powering_off = read_tasks(connection, [chains[ref][1] for ref in on]) if on else {}
    recent = list({task._moId: task for ref, vm in live.items() if ref not in on
                   for task in vm.get("recentTask") or []}.values())
    recent_infos = {item["_obj"]._moId: item for item in inventory.properties(connection, recent, TASK_INFO)}
    answers: dict[str, TaskStatus] = {}
    sent: set[str] = set()  # two references to one VM (written without a name): one Destroy_Task
    for ref, (vm_id, poweroff, _) in chains.items():
        if ref not in live:
            answers[ref] = TaskStatus(TaskState.SUCCESS)  # the VM is gone: destroyed (its id may be another's now)
        elif ref in on:
            off = powering_off.get(poweroff)
            state = None if off is None else _state_of(off)
            answers[ref] = TaskStatus(TaskState.RUNNING) if state is not None and state.state is not TaskState.ERROR \
                else TaskStatus(TaskState.ERROR, f"power off failed: {state.error if state else 'task expired'}")
        else:
            infos = [recent_infos[task._moId] for task in live[ref].get("recentTask") or []
                     if task._moId in recent_infos]
            destroying = _destroy_task_state(infos) or (TaskStatus(TaskState.RUNNING) if vm_id in sent else None)
            answers[ref] = destroying or _send_destroy(vim.VirtualMachine(vm_id, connection.stub))
            sent.add(vm_id)
    return {ref: answers[ref] for ref in refs}


def _destroy_task_state(recent: Sequence[Mapping[str, Any]]) -> TaskStatus | None:
    """The state of the destroy among a VM's recent tasks that failed or still runs, if any."""
    for task in recent:
        if task.get("info.descriptionId") != "VirtualMachine.destroy":
            continue
        if task["info.state"] == vim.TaskInfo.State.error:
            return TaskStatus(TaskState.ERROR, describe_fault(task["info.error"]), fault_kind(task["info.error"]))
        if task["info.state"] in (vim.TaskInfo.State.running, vim.TaskInfo.State.queued):
            return TaskStatus(TaskState.RUNNING)
    return None


def _send_destroy(vm: Any) -> TaskStatus:
    """Send the powered-off VM's ``Destroy_Task`` (not waited for)."""
    try:
        vm.Destroy_Task()
    except vmodl.fault.ManagedObjectNotFound:
        return TaskStatus(TaskState.SUCCESS)
    except vim.fault.NotAuthenticated:
        raise  # the session ended: Connection.run logs in again and reads once more
    except DESTROY_REFUSALS as refused:
        # vCenter refused to destroy this VM (the user may not, the VM is busy): this destroy's
        # answer, an ERROR of the fault's kind, as a Destroy_Task that failed. Before, the fault
        # ended the read: the destroy read as not read (UNKNOWN), its VM's refusal hidden.
        return TaskStatus(TaskState.ERROR, f"destroy refused: {describe_fault(refused)}", fault_kind(refused))
    return TaskStatus(TaskState.RUNNING)
