"""The reconcile pass's completed step: destroy the VMs taken out of service, without waiting.

The pass withdraws a VM's DNS record, starts its destroy and records the task; later passes ask
the provider for the task's state and forget the VM once it is gone (its record lingers for
``data_ttl``). A failed destroy is kept visible on the VM and started again next pass."""

from __future__ import annotations

from chalicelib.manager.context import PassContext
from chalicelib.providers.base import TaskState


def destroy_completed(context: PassContext) -> None:
    """Start destroying completed VMs; forget them once the provider says they are gone."""
    store, provider = context.store, context.provider
    for hostname in context.snapshot.hostnames("completed"):
        record = context.record(hostname)
        if record is None:
            context.drop(hostname, "completed", "record missing")
            continue
        context.withdraw_dns(record)
        if record.destroy_task:
            status = provider.task_status(record.destroy_task)
            if status.state is TaskState.RUNNING:
                continue
            if status.state is TaskState.ERROR:
                # Start again next pass; the error stays visible on the VM meanwhile.
                store.update_vm(hostname, destroy_task=None, destroy_error=status.error)
                context.report.errors.append(f"destroy {hostname}: {status.error}")
                continue
            _finish_destroy(context, hostname)
            continue
        task = provider.destroy(context.pool, hostname)
        context.checkpoint("destroy_started")
        if task is None:
            _finish_destroy(context, hostname)
        else:
            store.update_vm(hostname, destroy_task=task)


def _finish_destroy(context: PassContext, hostname: str) -> None:
    if context.store.move(hostname, context.pool.name, "completed", "destroyed", context.now, destroy_task=None):
        context.report.destroyed.append(hostname)
    context.checkpoint("destroyed")
