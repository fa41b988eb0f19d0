"""Disk and snapshot tasks queued on a VM by the API and run by its pool's reconcile pass.

``vmtasks:<hostname>`` is the VM's queue (a list of JSON tasks, oldest first) and
``vmtasks:pool:<pool>`` the VMs with work, so a pass looks only at those. One task per VM is in
flight at a time, recorded on the VM's record as ``task`` (with the provider's task ref once
started); a finished task appends to the record's ``disks`` or ``snapshots``, a failed one
appends its reason to ``task_errors`` (the newest MAX_TASK_ERRORS kept, ``task_errors_dropped``
counting those dropped).
"""

from __future__ import annotations

import enum
import json
import secrets
from typing import Any, Mapping, cast

from chalicelib.store.leases import holder_label
from chalicelib.store.records import VMRecord
from chalicelib.store.settle import answered_or_settled, settled_ttl
from chalicelib.store.store import StoreUnavailable, TaskQueueing, TokenGone, _translate_errors, token_index
from chalicelib.store.substore import SubStore

DISK = "disk"
SNAPSHOT = "snapshot"
REVERT = "revert"

MAX_QUEUED_TASKS = 10
"""Tasks one VM may have waiting behind the one in flight: a caller cannot queue work without
end (each a provider task the pools' passes would run for hours)."""
MAX_DISKS = 16
"""Disks the API may add to one VM (vSphere takes at most 60 per VM, the template's included)."""
MAX_SNAPSHOTS = 31
"""Snapshots one VM may have (vSphere supports chains of at most 32, a linked clone's base included)."""
MAX_TASK_ERRORS = 10
"""Failed tasks' reasons one VM's record keeps, the newest: failed tasks do not count toward
MAX_DISKS or MAX_SNAPSHOTS, so a caller asking again and again for a disk that fails would
otherwise grow the record (and every read of it) for as long as the VM lives."""
MAX_TASK_ERROR_CHARS = 500
"""How much of one failed task's reason is kept (the provider's message is part of it)."""
ANSWER_LOST_MESSAGE_CHARS = 300
"""How much of a lost answer's message a task in flight keeps (shown if the task fails)."""


class EnqueueResult(enum.Enum):
    QUEUED = "queued"
    NOT_RUNNING = "not_running"
    """The VM was returned, or checked out again, since the caller read it."""
    QUEUE_FULL = "queue_full"
    LIST_FULL = "list_full"
    """The VM has (or will have, with its tasks) as many disks or snapshots as it may."""


def new_task(kind: str, now: float, **details: Any) -> dict[str, Any]:
    """A task to queue: ``disk`` with size_gb, ``snapshot``/``revert`` with snapshot."""
    return {"id": secrets.token_hex(8), "kind": kind, "queued": now, **details}


def task_errors(record: VMRecord) -> list[str]:
    """Why the VM's disk or snapshot tasks failed, oldest first."""
    try:
        errors = json.loads(record.raw.get("task_errors") or "[]")
    except ValueError:
        return []
    return [str(error) for error in errors] if isinstance(errors, list) else []


def task_errors_dropped(record: VMRecord) -> int:
    """How many older failed tasks' reasons were dropped to keep MAX_TASK_ERRORS."""
    try:
        return max(int(record.raw.get("task_errors_dropped") or 0), 0)
    except ValueError:
        return 0


def in_flight(record: VMRecord) -> Mapping[str, Any] | None:
    try:
        return json.loads(record.raw["task"]) if record.raw.get("task") else None
    except ValueError:
        return None


class VMTaskStore(SubStore):
    """Queue, take and finish a VM's tasks; every method raises StoreUnavailable."""

    def enqueue(self, seen: VMRecord, task: Mapping[str, Any], now: float, token_key: str = "") -> EnqueueResult:
        """Queue a task on the running VM ``seen`` (as the caller read it and checked who may
        change it) and nudge its pool's reconcile, in one step, within the bounds: at most
        MAX_QUEUED_TASKS waiting, MAX_DISKS added disks, MAX_SNAPSHOTS snapshots (counting those
        in flight and queued). Nothing is queued when a bound would be passed or the VM is no
        longer running for that checkout (its time and owner as ``seen`` shows them); TokenGone
        when ``token_key`` (the record of the token the task was asked with) is gone."""
        queueing = self.queueing(seen, task, now)
        keys = [self.keys.vm(seen.name), *queueing.keys]
        args = [queueing.argument(2), seen.raw.get("checkout", "")]
        args += [str(token_index(keys, token_key)), seen.raw.get("token_user", "")]
        with _translate_errors():
            # Its retry would queue the task again: a lost answer is settled (store/settle.py).
            result = answered_or_settled(lambda: int(self.scripts.vm_task_enqueue(keys=keys, args=args)),
                                         lambda: self.store.settled_done(queueing.settled_key), 1)
        if result == -3:
            raise TokenGone()
        if result == -4:
            raise StoreUnavailable("redis: the task reached Redis after its deadline: not queued")
        return {1: EnqueueResult.QUEUED, 0: EnqueueResult.NOT_RUNNING, -1: EnqueueResult.QUEUE_FULL}.get(
            result, EnqueueResult.LIST_FULL)

    def queueing(self, seen: VMRecord, task: Mapping[str, Any], now: float) -> TaskQueueing:
        """The task, on the VM ``seen``, as the scripts that queue it read it (within the bounds
        ``enqueue`` says): for ``enqueue``, and for ``Store.modify_vm`` (a disk asked for in a
        PUT /vm/<host>, queued in the same step as the PUT's other changes). With its deadline
        (``Store.answer_deadline``, no round trip of its own): a script that reaches Redis after its caller
        was answered 503 queues nothing, so the retry queues the one disk."""
        list_field, most = {DISK: ("disks", MAX_DISKS), SNAPSHOT: ("snapshots", MAX_SNAPSHOTS)}.get(
            str(task["kind"]), ("", 0))
        return TaskQueueing(
            (self.keys.vm_tasks(seen.name), self.keys.pool_vm_tasks(seen.pool), self.keys.wake(seen.pool),
             self.keys.settled(str(task["id"]))),
            {"hostname": seen.name, "now": repr(now), "task": json.dumps(dict(task)),
             "ttl": self.store.data_ttl_seconds, "max_queued": MAX_QUEUED_TASKS, "list_field": list_field,
             "max_items": most, "deadline": self.store.answer_deadline(),
             "settled_ttl": settled_ttl(self.client)})

    def queued(self, hostname: str) -> list[dict[str, Any]]:
        """Tasks waiting behind the one in flight, oldest first."""
        with _translate_errors():
            return [json.loads(raw) for raw in self.client.lrange(self.keys.vm_tasks(hostname), 0, -1)]

    def snapshots_known(self, hostname: str) -> set[str]:
        """The VM's snapshots taken, being taken (the task in flight) or queued, read in one step
        (MULTI). A pass moves a snapshot's task from the queue to the record (lua/vm_task_take.lua)
        and from there to ``snapshots`` (lua/vm_task_finish.lua), each in one step: read apart,
        the record and then the queue, a snapshot taken in between was in neither, and the
        revert its user sent at that moment was told 404 "snapshot not found"."""
        with _translate_errors():
            pipe = self.client.pipeline(transaction=True)
            pipe.hmget(self.keys.vm(hostname), "task", "snapshots")
            pipe.lrange(self.keys.vm_tasks(hostname), 0, -1)
            (current, taken), queued = pipe.execute()
        # The two fields read as a record reads them (VMRecord, in_flight), the queue as ``queued``.
        record = VMRecord.from_hash({name: value for name, value in (("task", current), ("snapshots", taken))
                                     if value is not None})
        tasks = [in_flight(record), *(json.loads(raw) for raw in queued)]
        taking = {task.get("snapshot") for task in tasks if task and task.get("kind") == SNAPSHOT}
        return {*record.snapshots, *(snapshot for snapshot in taking if snapshot)}

    def hosts_with_tasks(self, pool: str) -> list[str]:
        with _translate_errors():
            # decode_responses=True: redis-py's types cannot say so
            return cast("list[str]", self.client.zrange(self.keys.pool_vm_tasks(pool), 0, -1))

    def take(self, hostname: str, pool: str, now: float) -> tuple[dict[str, Any] | None, bool]:
        """The VM's task in flight, else the next queued one (then ``new`` is True: the caller
        starts it). (None, False) when the VM has no work left, or when Redis ran it after the
        caller's socket timeout (``Store.answer_deadline``): nothing is taken then."""
        with _translate_errors():
            answer = json.loads(self.scripts.vm_task_take(
                keys=[self.keys.vm(hostname), self.keys.vm_tasks(hostname), self.keys.pool_vm_tasks(pool)],
                args=[hostname, repr(now), holder_label(), self.store.answer_deadline()]))
        return answer.get("task"), bool(answer.get("new"))

    def note_started(self, hostname: str, task_id: str, ref: str) -> bool:
        with _translate_errors():
            return bool(self.scripts.vm_task_note(keys=[self.keys.vm(hostname)], args=[task_id, ref]))

    def note_answer_lost(self, hostname: str, task_id: str, message: str) -> bool:
        """Mark the VM's in-flight task as started with its answer lost (``message``: the
        provider's, kept to ANSWER_LOST_MESSAGE_CHARS): the provider may have done it, and no
        pass starts it again (manager/vm_tasks.py asks the provider whether it did)."""
        noted = message[:ANSWER_LOST_MESSAGE_CHARS] or "the answer was lost"
        with _translate_errors():
            return bool(self.scripts.vm_task_note(keys=[self.keys.vm(hostname)], args=[task_id, "", noted]))

    def requeue(self, hostname: str, pool: str, task_id: str, now: float) -> bool:
        """Put the VM's in-flight task, whose start never reached the provider, back at the head
        of its queue (lua/vm_task_requeue.lua); whether it was."""
        keys = [self.keys.vm(hostname), self.keys.vm_tasks(hostname), self.keys.pool_vm_tasks(pool)]
        with _translate_errors():
            return bool(self.scripts.vm_task_requeue(
                keys=keys, args=[task_id, hostname, repr(now), self.store.data_ttl_seconds]))

    def finish(self, hostname: str, task_id: str, list_field: str = "", value: str = "", error: str = "") -> bool:
        """Finish the VM's in-flight task ``task_id``: append ``value`` to ``list_field``, or
        ``error`` (its first MAX_TASK_ERROR_CHARS) to ``task_errors``, of which the newest
        MAX_TASK_ERRORS are kept; whether that task was still in flight."""
        with _translate_errors():
            return bool(self.scripts.vm_task_finish(
                keys=[self.keys.vm(hostname)],
                args=[task_id, list_field, value, error[:MAX_TASK_ERROR_CHARS], MAX_TASK_ERRORS]))
