"""POST /vm/<host>/disk/<gb>, /vm/<host>/snapshot, /vm/<host>/snapshot/<id>: queue a provider
task on a checked-out VM. The VM's pool's reconcile pass runs it (manager/vm_tasks.py); GET
/vm/<host> then lists the disk or snapshot, or the reason it failed under ``task_errors``.
"""

from __future__ import annotations

import re
import secrets
from typing import Any

from chalicelib.api.http import ApiError, ApiRequest, ApiResponse, bad_request, not_found, ok, shown, whole_number
from chalicelib.api.identity import may_change, refuse_without_a_live_token, required_caller
from chalicelib.api.vm_lookup import find_vm
from chalicelib.services import Services
from chalicelib.store import VMRecord
from chalicelib.store.vm_tasks import (
    DISK,
    MAX_DISKS,
    MAX_QUEUED_TASKS,
    MAX_SNAPSHOTS,
    REVERT,
    SNAPSHOT,
    EnqueueResult,
    VMTaskStore,
    new_task,
)

MAX_DISK_GB = 2048
SNAPSHOT_ID_PATTERN = re.compile(r"[a-z0-9]{32}\Z")
"""A snapshot id as one is drawn: ours are ``secrets.token_hex(16)``, vmpooler's 32 of ``a-z0-9``
(a VM of an upgraded vmpooler keeps its). docs/openapi.yaml's ``{snapshot}`` has this pattern."""

DISK_NOT_REPLICATED = (
    "the disk was queued, but it could not be replicated in time; send the POST again only if GET "
    "/vm/<hostname> does not list it once the VM's tasks have run (sent again, it is added again)")
SNAPSHOT_NOT_REPLICATED = (
    "snapshot {snapshot} was queued, but it could not be replicated in time; send the POST again only "
    "if GET /vm/<hostname> does not list {snapshot} once the VM's tasks have run (sent again, another "
    "snapshot is taken)")
REVERT_NOT_REPLICATED = (
    "the revert was queued, but it could not be replicated in time; send the POST again only if the VM "
    "was not reverted once its tasks have run (sent again, it is reverted again)")
"""A 202 says a task was queued: a failover that lost it would leave a snapshot id its user
cannot revert to, a disk never added. Each task sent again is queued again, so the 503 says
what was done and when to send it again."""


def _running_vm(services: Services, request: ApiRequest) -> tuple[VMRecord, str]:
    """The checked-out VM named in the path, its caller allowed to change it, and the record of
    the caller's token ("" without ``:auth:``)."""
    refuse_without_a_live_token(services, request)
    record = find_vm(services, request, running=True)
    caller = required_caller(services, request)  # the token's use, once the VM is found
    may_change(services, caller, record)
    return record, caller.token_key if caller else ""


def queue_task(services: Services, record: VMRecord, kind: str, token_key: str, not_replicated: str,
               **details: Any) -> None:
    """Queue the task on the VM, within its bounds (store/vm_tasks.py): 429 while too many wait,
    403 when the VM has as many disks or snapshots as it may; nothing once the caller's token
    (``token_key``) is gone. A 503 saying ``not_replicated`` when no replica has the task in
    time (``Store.require_replicated``): it stays queued on the primary."""
    now = services.clock.now()
    queued = VMTaskStore(services.store).enqueue(record, new_task(kind, now, **details), now, token_key)
    refuse_unless_queued(record, kind, queued)
    services.refill.pools_changed([record.pool])
    services.store.require_replicated(not_replicated, f"the {kind} task of VM {record.name}")


def refuse_unless_queued(record: VMRecord, kind: str, result: EnqueueResult) -> None:
    """The answer to a task that was not queued (nothing when it was): 404 when the VM is no
    longer running, 429 while too many tasks wait, 403 when the VM has as many disks or
    snapshots as it may."""
    if result is EnqueueResult.NOT_RUNNING:
        raise not_found(error=f"VM {record.name} is not running")
    if result is EnqueueResult.QUEUE_FULL:
        raise ApiError(429, {"error": f"VM {record.name} has {MAX_QUEUED_TASKS} tasks waiting already; "
                                      "try again when they have run"}, {"Retry-After": "10"})
    if result is EnqueueResult.LIST_FULL:
        most = MAX_DISKS if kind == DISK else MAX_SNAPSHOTS
        raise ApiError(403, {"error": f"a VM may have at most {most} {'added disks' if kind == DISK else 'snapshots'}"})


def disk_size(value: Any) -> int | None:
    """A disk size in GB, 1..2048 (a number or its digits), else None."""
    size = whole_number(value)
    return size if size is not None and 1 <= size <= MAX_DISK_GB else None


def add_disk(services: Services, request: ApiRequest) -> ApiResponse:
    """POST /vm/<host>/disk/<gb> (1..2048): 202 ``{"<host>": {"disk": "+8gb"}}``. The token first
    (401: a caller without one learns nothing), then the size (400, whatever the VM: a size no VM
    takes is the request's own fault, as a malformed host name is), then the VM (404/403)."""
    refuse_without_a_live_token(services, request)  # kept on the request: _running_vm reads it again for free
    size = disk_size(request.params["size"])
    if size is None:
        raise bad_request(f"disk size must be a whole number of GB from 1 to {MAX_DISK_GB}")
    record, token_key = _running_vm(services, request)
    queue_task(services, record, DISK, token_key, DISK_NOT_REPLICATED, size_gb=size)
    return ok(202, **{record.name: {"disk": f"+{size}gb"}})


def take_snapshot(services: Services, request: ApiRequest) -> ApiResponse:
    """POST /vm/<host>/snapshot: 202 ``{"<host>": {"snapshot": "<32 chars>"}}``."""
    record, token_key = _running_vm(services, request)
    snapshot = secrets.token_hex(16)
    queue_task(services, record, SNAPSHOT, token_key, SNAPSHOT_NOT_REPLICATED.format(snapshot=snapshot),
               snapshot=snapshot)
    return ok(202, **{record.name: {"snapshot": snapshot}})


def revert_snapshot(services: Services, request: ApiRequest) -> ApiResponse:
    """POST /vm/<host>/snapshot/<id>: 202 when the VM has (or is taking) that snapshot; 404 for
    an id no snapshot has (one that could be none, before its VM's tasks are read)."""
    record, token_key = _running_vm(services, request)
    snapshot = request.params["snapshot"]
    if not SNAPSHOT_ID_PATTERN.match(snapshot):
        raise ApiError(404, {"error": f"snapshot {shown(snapshot)} not found on {record.name}"})
    # Taken, being taken or queued, as one read shows them: a pass may start or finish the
    # snapshot's task since ``record`` was read.
    if snapshot not in VMTaskStore(services.store).snapshots_known(record.name):
        raise ApiError(404, {"error": f"snapshot {shown(snapshot)} not found on {record.name}"})
    queue_task(services, record, REVERT, token_key, REVERT_NOT_REPLICATED, snapshot=snapshot)
    return ok(202)
