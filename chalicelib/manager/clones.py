"""The reconcile pass's refill step: start clones until ready + pending reaches the pool's size.

Names are reserved in Redis first (store/lua/reserve_clones.lua counts the deficit and the pool's
fair share of ``task_limit`` atomically, so two passes at once cannot over-clone), each with a
pending record; only then does the clone start, and its task is recorded on the VM. A pass killed
in between leaves a pending VM without a task, which the pending step times out
(``CLONE_START_GRACE_SECONDS``). A name that already resolves in DNS is not cloned.
"""

from __future__ import annotations

from chalicelib.manager import dns_records
from chalicelib.manager.context import PassContext
from chalicelib.manager.hostnames import candidate_names
from chalicelib.providers.base import ProviderError
from chalicelib.store.ondemand import OnDemandStore


def repopulate(context: PassContext) -> None:
    """Start clones until ready + pending reaches the pool's size, within the task limit.
    Nothing while the pool's template is being prepared."""
    if context.clones_held:
        return
    pool, service, store = context.pool, context.service, context.store
    counts = context.read_counts()
    # On-demand VMs being built here are pending but not the pool's: they do not fill its deficit
    # (none to look for when nothing is pending).
    building = OnDemandStore(store).building(pool.name) if counts["pending"] else 0
    deficit = pool.size - counts["ready"] - counts["pending"] + building
    if deficit <= 0:
        if context.snapshot.wants_clones:
            store.withdraw_clone_demand(pool.name)
        return
    # The script never reserves more than the task limit: no need for more names.
    wanted = min(deficit, service.task_limit)
    reserved = store.reserve_clones(
        pool.name, pool.size, service.task_limit, pool.template, pool.domain or "",
        candidate_names(wanted, service.prefix), context.now, clone_limit=pool.clone_limit or 0,
    )
    counts["pending"] += len(reserved)
    context.report.clones_short = deficit - len(reserved)
    context.checkpoint("reserved")
    start_clones(context, reserved)


def start_clones(context: PassContext, reserved: list[str]) -> None:
    """Start the clone of each reserved name and record its task on the VM: one provider call
    (``Provider.clone_vms``) and one round trip whatever the number of clones."""
    report = context.report
    names: list[str] = []
    for hostname in reserved:
        taken = dns_records.name_in_use(context, hostname)
        if taken:
            context.take_out_of_service(hostname, "pending", taken)
        else:
            names.append(hostname)
    if not names:
        return
    started = context.provider.clone_vms(context.pool, names, lambda hostname: context.checkpoint("clone_started"))
    tasks = {hostname: task for hostname, task in started.items() if isinstance(task, str)}
    if tasks:
        context.store.update_vms({hostname: {"clone_task": task} for hostname, task in tasks.items()})
        report.clones_started.extend(tasks)
        report.clones_running += len(tasks)
    for hostname, error in started.items():
        if isinstance(error, ProviderError):
            report.clone_failures[hostname] = error.failure
            context.take_out_of_service(hostname, "pending", f"clone failed to start: {error}", failure=error.kind)
