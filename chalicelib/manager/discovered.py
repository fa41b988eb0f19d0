"""The reconcile pass's steps for VMs vmpool did not create: a VM found in the pool's folder that
no state of the pool knows is recorded as discovered (``discover_unknown``); nobody claims it
before the next pass, so that pass takes it out of service (``check_discovered``), as vmpooler
does with VMs it finds in its folders."""

from __future__ import annotations

from chalicelib.manager.context import PassContext


def check_discovered(context: PassContext) -> None:
    """VMs found in the folder on an earlier pass: nobody claimed them since, so they go."""
    for hostname in context.snapshot.hostnames("discovered"):
        if hostname in context.inventory:
            context.take_out_of_service(hostname, "discovered", "found in the pool folder but not created by vmpool")
        else:
            context.drop(hostname, "discovered", "gone from the provider", gone=True)


def discover_unknown(context: PassContext) -> None:
    """VMs in the pool's folder that no state of this pool knows."""
    tracked = context.snapshot.tracked
    for hostname, vm in context.inventory.items():
        if hostname in tracked:
            continue
        if context.store.add_discovered(hostname, context.pool.name, context.now, host=vm.host, ip=vm.ip):
            context.report.discovered.append(hostname)
    context.checkpoint("discovered")
