"""The reconcile pass's completed step: destroy the VMs taken out of service, without waiting.

The pass withdraws a VM's DNS record, starts its destroy and records the task; later passes ask
the provider for the task's state and forget the VM once it is gone (its record lingers for
``data_ttl``). A failed destroy (its task failed, or the provider refused to start it) is kept
visible on the VM and started again next pass; the pass goes on with the others.

Whatever the number of VMs, the step asks the provider about every destroy task in one call and
starts every destroy in one (``Provider.task_statuses``, ``destroy_vms``), and records what it
learnt in one round trip per kind of change; each move stays conditional on its own VM."""

from __future__ import annotations

from typing import Any

from chalicelib import observability as metric
from chalicelib.config import PoolConfig
from chalicelib.manager.context import PassContext
from chalicelib.manager.pending import unnoted_clones_running
from chalicelib.observability import emit, logger
from chalicelib.providers.base import UNREACHABLE, CancelRefused, Provider, ProviderError, TaskState, TaskStatus
from chalicelib.store import VMRecord
from chalicelib.store.ondemand import CLONE_HELD


def destroy_completed(context: PassContext) -> None:
    """Start destroying completed VMs; forget them once the provider says they are gone. A VM
    made where its pool no longer makes VMs is destroyed there (manager/placement.py). A VM
    whose clone still runs (of an ended on-demand request, or a pool's drained mid-clone) waits
    for it (``clones_still_running``)."""
    records = context.records_in("completed")
    cloning = clones_still_running(context, records)
    groups: dict[str, tuple[Provider, PoolConfig, list[VMRecord]]] = {}
    leaving = [record for record in records if record.name not in cloning]
    context.withdraw_dns_many(leaving)  # 50 a call: returning 200 VMs is 4 DNS updates, not 200
    for record in leaving:
        hostname = record.name
        reached = context.reach(record)
        if reached is None:
            context.report.errors.append(
                f"destroy {hostname}: the provider it was made with is no longer configured")
            continue
        provider, pool = reached
        groups.setdefault(context.elsewhere(record) or "", (provider, pool, []))[2].append(record)
    replicated: bool | None = None
    for placement, (provider, pool, members) in groups.items():
        if any(not record.destroy_task for record in members) and replicated is None:
            replicated = context.store.writes_replicated()
        try:
            _destroy(context, provider, pool, members, replicated is not False)
        except ProviderError as error:
            if not placement:
                raise  # the pool's own provider cannot be reached: the pass stops here, as at any such call
            # Where the pool was before: its failure must not hold the pool's refill in the new place.
            context.report.errors.append(f"destroy in the pool's former place failed: {error}")


CLONE_CANCEL_WAIT_SECONDS = 1800.0
"""How long past its pool's ``timeout`` a clone still running keeps its slot after it was asked
to cancel (vCenter stops a clone within seconds or minutes, and cleans up what it made): past
that, the slot is freed whatever the provider says, so a task it never ends (a cancel it
ignored, a task it forgot, a provider no longer configured) cannot hold a slot for ever."""
CLONE_CANCELLED = "clone_cancel_asked"
"""A record field: when the completed step asked the provider to cancel the VM's clone."""


def clones_still_running(context: PassContext, records: list[VMRecord]) -> set[str]:
    """Of the completed VMs ``records``, those whose clone may still run (``CLONE_HELD``: of an
    ended on-demand request, lua/ondemand_end.lua, a pool's pending VM drained mid-clone,
    lua/move.lua, or one whose clone outran its pool's ``timeout``, manager/pending.py): each
    keeps its slot (under ondemand_clone_limit, or task_limit) and is left alone (a destroy would
    find nothing yet on vSphere, and the clone would land after it). Each task is asked of the
    provider that started it (``PassContext.reach``: the pool may have moved since). A clone
    still running past the pool's timeout is asked to cancel (once); its slot is freed when the
    provider says the task ended, or ``CLONE_CANCEL_WAIT_SECONDS`` past the timeout at the
    latest. A clone whose task was never recorded ends once the pool's inventory shows its VM
    (unless its provider lists VMs while cloning them: then once it says the clone is not under
    way; a task it names is noted on the VM, followed as above from the next pass); before, it
    keeps its slot for CLONE_START_GRACE_SECONDS if never asked of the provider (not
    at all when it never can be: ``pending.never_cloned``, held by an older version's script), and
    if asked (``pending.CLONE_ASKED``) while the provider says it still makes the VM (up to
    CLONE_CANCEL_WAIT_SECONDS past the timeout) or, when it cannot tell, up to the pool's
    timeout (``pending.unnoted_clones_running``). The ended ones' slots are released in one
    round trip, and they are destroyed now (by name). Releasing is idempotent: a pass killed
    before it, or two at once, release each slot once."""
    held = [record for record in records if record.raw.get(CLONE_HELD) and record.clone_end is None]
    if not held:
        return set()
    timeout = context.pool.timeout_minutes * 60
    statuses = _held_statuses(context, [record for record in held if record.clone_task])
    unnoted = unnoted_clones_running(context, [record for record in held if not record.clone_task],
                                     timeout + CLONE_CANCEL_WAIT_SECONDS)
    running: set[str] = set()
    ended: list[str] = []
    for record in held:
        age = context.now - (record.clone_start or context.now)
        if record.clone_task:
            status = statuses.get(record.name)  # None: its provider cannot be asked now
            if status is not None and status.state is TaskState.UNKNOWN:
                # Not read this pass (the provider answered for the others): it may still run.
                context.report.errors.append(f"{record.name}: clone task not read: {status.error}")
            unended = status is None or status.state in (TaskState.RUNNING, TaskState.UNKNOWN)
            still = unended and age <= timeout + CLONE_CANCEL_WAIT_SECONDS
            if (still and status is not None and status.state is TaskState.RUNNING and age > timeout
                    and not record.raw.get(CLONE_CANCELLED)):
                _cancel(context, record)
        else:  # claimed, its task never recorded (the pass that started it died)
            still = record.name in unnoted
        if still:
            running.add(record.name)
        else:
            ended.append(record.name)
    if ended:
        context.store.finish_clones(ended, context.now)
        context.checkpoint("clone_released")
    return running


def _held_statuses(context: PassContext, records: list[VMRecord]) -> dict[str, TaskStatus]:
    """The clone task of each of ``records`` as the provider that started it reports it
    (hostname -> status): one call per provider. A VM whose provider is no longer configured, or
    (not the pool's own) cannot be reached now, is left out. The pool's own provider failing
    raises ProviderError: the pass stops there, as at any failed call."""
    groups: dict[str, tuple[Provider, list[VMRecord]]] = {}
    for record in records:
        reached = context.reach(record)
        if reached is not None:
            groups.setdefault(reached[0].name, (reached[0], []))[1].append(record)
    statuses: dict[str, TaskStatus] = {}
    for provider, members in groups.values():
        try:
            found = provider.task_statuses([record.clone_task for record in members])
        except ProviderError as error:
            if provider is context.provider:
                raise
            context.report.errors.append(f"clone tasks in the pool's former place not read: {error}")
            continue
        statuses.update({record.name: found[record.clone_task] for record in members})
    return statuses


def _cancel(context: PassContext, record: VMRecord) -> None:
    """Ask the provider that runs the VM's clone, past its pool's timeout, to cancel it, and note
    the asking (after it: a pass killed in between asks again, which a provider takes as once).
    A cancel the provider refuses (``CancelRefused``: vCenter's NoPermission, InvalidState) is
    counted (``CloneCancelsRefused``, by reason) and noted as asked: every later pass would be
    refused alike; the clone keeps its slot until it ends or CLONE_CANCEL_WAIT_SECONDS past the
    timeout, as a cancel that is never carried out."""
    reached = context.reach(record)
    if reached is None:
        return
    try:
        accepted = reached[0].cancel_task(record.clone_task)
    except CancelRefused as refused:
        context.store.set_once(record.name, CLONE_CANCELLED, repr(context.now))
        emit(context.pool.name, {metric.CLONE_CANCELS_REFUSED: 1}, dimensions={"reason": refused.metric_key})
        context.report.errors.append(f"cancel the clone of {record.name}: {refused}")
        logger.warning("clone past its pool's timeout: cancel refused; its slot is held until it ends or "
                       "the cancel wait is over", extra={"pool": context.pool.name, "hostname": record.name,
                                                         "reason": refused.metric_key, "error": str(refused)})
        context.checkpoint("clone_cancel_asked")
        return
    except ProviderError as error:
        context.report.errors.append(f"cancel the clone of {record.name}: {error}")
        return
    context.store.set_once(record.name, CLONE_CANCELLED, repr(context.now))
    logger.info("clone past its pool's timeout: cancel asked", extra={
        "pool": context.pool.name, "hostname": record.name, "accepted": accepted})
    context.checkpoint("clone_cancel_asked")


def _destroy(context: PassContext, provider: Provider, pool: PoolConfig, records: list[VMRecord],
             replicated: bool) -> None:
    """Follow and start the destroys of ``records``, all reached through ``provider`` and ``pool``."""
    store = context.store
    statuses = provider.task_statuses([record.destroy_task for record in records if record.destroy_task])
    gone: list[str] = []
    failed: dict[str, dict[str, Any]] = {}
    to_start: list[str] = []
    for record in records:
        if not record.destroy_task:
            to_start.append(record.name)
            continue
        status = statuses[record.destroy_task]
        if status.state in (TaskState.ERROR, TaskState.UNKNOWN):
            # Start again next pass (a destroy asked again of a VM gone or going is idempotent:
            # ``destroy``); the error stays visible on the VM meanwhile. A task that could not be
            # read (UNKNOWN: only its own read failed) is judged alike: waited for, it could hold
            # the VM for good; before, its failed read ended the pass, every pass.
            error = status.error if status.state is TaskState.ERROR else f"destroy task not read: {status.error}"
            failed[record.name] = {"destroy_task": None, "destroy_error": error}
            context.report.errors.append(f"destroy {record.name}: {error}")
        elif status.state is TaskState.SUCCESS:
            gone.append(record.name)
    if failed:
        store.update_vms(failed)
    if to_start and not replicated:
        # Their moves to completed may exist on this primary only: a failover now would bring
        # them back as ready, destroyed, and hand them out. Destroyed next pass instead.
        context.report.errors.append(f"{len(to_start)} destroys held: no replica acknowledged their moves in time")
        to_start = []
    started = provider.destroy_vms(pool, to_start, lambda hostname: context.checkpoint("destroy_started"))
    tasks = {hostname: {"destroy_task": task} for hostname, task in started.items() if isinstance(task, str)}
    if tasks:
        store.update_vms(tasks)
    _finish_destroys(context, gone + [hostname for hostname, task in started.items() if task is None])
    refused = {hostname: error for hostname, error in started.items() if isinstance(error, ProviderError)}
    if refused:
        # Each refusal is its VM's: kept on it, its destroy started again next pass. Before, the
        # first ended the pass, every pass: the pool's refill never ran while one VM was refused.
        store.update_vms({hostname: {"destroy_error": str(error)} for hostname, error in refused.items()})
        context.report.errors.extend(f"destroy {hostname}: {error}" for hostname, error in refused.items())
    unreached = next((error for error in refused.values() if error.kind in UNREACHABLE), None)
    if unreached is not None:
        raise unreached  # the provider cannot be reached: the pass stops here, as at any such call


def _finish_destroys(context: PassContext, hostnames: list[str]) -> None:
    """Forget the VMs the provider no longer has: one round trip, each move conditional."""
    if not hostnames:
        return
    context.report.destroyed.extend(context.store.move_many(
        context.pool.name, "completed", "destroyed", context.now,
        {hostname: {"destroy_task": None} for hostname in hostnames}))
    context.checkpoint("destroyed")
