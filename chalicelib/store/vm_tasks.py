"""Disk and snapshot tasks queued on a VM by the API and run by its pool's reconcile pass.

``vmtasks:<hostname>`` is the VM's queue (a list of JSON tasks, oldest first) and
``vmtasks:pool:<pool>`` the VMs with work, so a pass looks only at those. One task per VM is in
flight at a time, recorded on the VM's record as ``task`` (with the provider's task ref once
started); a finished task appends to the record's ``disks`` or ``snapshots``, a failed one
appends its reason to ``task_errors``.
"""

from __future__ import annotations

import json
import secrets
from typing import Any, Mapping, cast

from chalicelib.store.records import VMRecord
from chalicelib.store.store import Store, _translate_errors

DISK = "disk"
SNAPSHOT = "snapshot"
REVERT = "revert"


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


def in_flight(record: VMRecord) -> Mapping[str, Any] | None:
    try:
        return json.loads(record.raw["task"]) if record.raw.get("task") else None
    except ValueError:
        return None


class VMTaskStore:
    """Queue, take and finish a VM's tasks; every method raises StoreUnavailable."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.client = store.client
        self.keys = store.keys
        self.scripts = store.scripts

    def enqueue(self, hostname: str, pool: str, task: Mapping[str, Any], now: float) -> None:
        """Queue a task and nudge the pool's reconcile, in one transaction."""
        wake = self.keys.wake(pool)
        with _translate_errors():
            pipe = self.client.pipeline(transaction=True)
            pipe.rpush(self.keys.vm_tasks(hostname), json.dumps(dict(task)))
            pipe.expire(self.keys.vm_tasks(hostname), self.store.data_ttl_seconds)
            pipe.zadd(self.keys.pool_vm_tasks(pool), {hostname: now}, nx=True)
            pipe.lpush(wake, "1")
            pipe.ltrim(wake, 0, 0)
            pipe.expire(wake, 60)
            pipe.execute()

    def queued(self, hostname: str) -> list[dict[str, Any]]:
        """Tasks waiting behind the one in flight, oldest first."""
        with _translate_errors():
            return [json.loads(raw) for raw in self.client.lrange(self.keys.vm_tasks(hostname), 0, -1)]

    def hosts_with_tasks(self, pool: str) -> list[str]:
        with _translate_errors():
            # decode_responses=True: redis-py's types cannot say so
            return cast("list[str]", self.client.zrange(self.keys.pool_vm_tasks(pool), 0, -1))

    def take(self, hostname: str, pool: str, now: float) -> tuple[dict[str, Any] | None, bool]:
        """The VM's task in flight, else the next queued one (then ``new`` is True: the caller
        starts it). (None, False) when the VM has no work left."""
        with _translate_errors():
            answer = json.loads(self.scripts.vm_task_take(
                keys=[self.keys.vm(hostname), self.keys.vm_tasks(hostname), self.keys.pool_vm_tasks(pool)],
                args=[hostname, repr(now)]))
        return answer.get("task"), bool(answer.get("new"))

    def note_started(self, hostname: str, task_id: str, ref: str) -> bool:
        with _translate_errors():
            return bool(self.scripts.vm_task_note(keys=[self.keys.vm(hostname)], args=[task_id, ref]))

    def finish(self, hostname: str, task_id: str, list_field: str = "", value: str = "", error: str = "") -> bool:
        with _translate_errors():
            return bool(self.scripts.vm_task_finish(
                keys=[self.keys.vm(hostname)], args=[task_id, list_field, value, error]))
