"""The reconcile pass's completed step: destroy the VMs taken out of service, without waiting.

The pass withdraws a VM's DNS record, starts its destroy and records the task; later passes ask
the provider for the task's state and forget the VM once it is gone (its record lingers for
``data_ttl``). A failed destroy is kept visible on the VM and started again next pass.

Whatever the number of VMs, the step asks the provider about every destroy task in one call and
starts every destroy in one (``Provider.task_statuses``, ``destroy_vms``), and records what it
learnt in one round trip per kind of change; each move stays conditional on its own VM."""

from __future__ import annotations

from typing import Any

from chalicelib.manager.context import PassContext
from chalicelib.providers.base import ProviderError, TaskState
from chalicelib.store import VMRecord


def destroy_completed(context: PassContext) -> None:
    """Start destroying completed VMs; forget them once the provider says they are gone."""
    store, provider = context.store, context.provider
    records: list[VMRecord] = []
    for hostname in context.snapshot.hostnames("completed"):
        record = context.record(hostname)
        if record is None:
            context.drop(hostname, "completed", "record missing")
            continue
        context.withdraw_dns(record)
        records.append(record)
    statuses = provider.task_statuses([record.destroy_task for record in records if record.destroy_task])
    gone: list[str] = []
    failed: dict[str, dict[str, Any]] = {}
    to_start: list[str] = []
    for record in records:
        if not record.destroy_task:
            to_start.append(record.name)
            continue
        status = statuses[record.destroy_task]
        if status.state is TaskState.ERROR:
            # Start again next pass; the error stays visible on the VM meanwhile.
            failed[record.name] = {"destroy_task": None, "destroy_error": status.error}
            context.report.errors.append(f"destroy {record.name}: {status.error}")
        elif status.state is not TaskState.RUNNING:
            gone.append(record.name)
    if failed:
        store.update_vms(failed)
    if to_start and not store.writes_replicated():
        # Their moves to completed may exist on this primary only: a failover now would bring
        # them back as ready, destroyed, and hand them out. Destroyed next pass instead.
        context.report.errors.append(f"{len(to_start)} destroys held: no replica acknowledged their moves in time")
        to_start = []
    started = provider.destroy_vms(context.pool, to_start, lambda hostname: context.checkpoint("destroy_started"))
    tasks = {hostname: {"destroy_task": task} for hostname, task in started.items() if isinstance(task, str)}
    if tasks:
        store.update_vms(tasks)
    _finish_destroys(context, gone + [hostname for hostname, task in started.items() if task is None])
    refused = [error for error in started.values() if isinstance(error, ProviderError)]
    if refused:
        raise refused[0]  # the provider is failing: the pass stops here, as at any failed call


def _finish_destroys(context: PassContext, hostnames: list[str]) -> None:
    """Forget the VMs the provider no longer has: one round trip, each move conditional."""
    if not hostnames:
        return
    context.report.destroyed.extend(context.store.move_many(
        context.pool.name, "completed", "destroyed", context.now,
        {hostname: {"destroy_task": None} for hostname in hostnames}))
    context.checkpoint("destroyed")
