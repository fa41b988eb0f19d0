"""The reconcile pass's steps for VMs vmpool did not create: a VM found in the pool's folder that
no state of the pool knows is recorded as discovered (``discover_unknown``); nobody claims it
before the next pass, so that pass takes it out of service (``check_discovered``), as vmpooler
does with VMs it finds in its folders.

A VM whose annotation says another vmpool deployment made it (chalicelib/providers/ownership.py)
is that deployment's, in use or ready there: it is never recorded as discovered, and one recorded
before (by a version that did not look) is forgotten, not taken out of service. Each is logged
once per process (``FOREIGN_LOGGED`` at most), and listed in the pass's report."""

from __future__ import annotations

from chalicelib.manager import dns_records
from chalicelib.manager.context import PassContext
from chalicelib.observability import logger
from chalicelib.providers.ownership import deployment_of, other_deployment

FOREIGN_LOGGED = 10000
"""How many other deployments' VMs a process remembers having logged (then it forgets them all)."""

_logged_foreign: set[tuple[str, str]] = set()


def check_discovered(context: PassContext) -> None:
    """VMs found in the folder on an earlier pass: nobody claimed them since, so they go."""
    deployment = deployment_of(context.service)
    for hostname in context.snapshot.hostnames("discovered"):
        vm = context.inventory.get(hostname)
        if vm is None:
            context.drop(hostname, "discovered", "gone from the provider", gone=True)
            continue
        owner = other_deployment(vm.annotation, deployment)
        if owner is not None:
            _note_foreign(context, hostname, owner)
            context.drop(hostname, "discovered", f"made by vmpool deployment {owner}: left to it")
        else:
            context.take_out_of_service(hostname, "discovered", "found in the pool folder but not created by vmpool")


def discover_unknown(context: PassContext) -> None:
    """VMs in the pool's folder that no state of this pool knows (other deployments' aside)."""
    tracked = context.snapshot.tracked
    deployment = deployment_of(context.service)
    for hostname, vm in context.inventory.items():
        if hostname in tracked:
            continue
        owner = other_deployment(vm.annotation, deployment)
        if owner is not None:
            _note_foreign(context, hostname, owner)
            continue
        # The address every other state gives it (a link-local primary gives way to another).
        ip = dns_records.reachable_ip(vm) or vm.ip
        if context.store.add_discovered(hostname, context.pool.name, context.now, host=vm.host, ip=ip):
            context.report.discovered.append(hostname)
    context.checkpoint("discovered")


def _note_foreign(context: PassContext, hostname: str, owner: str) -> None:
    """List the VM in the report; log it the first time this process sees it."""
    context.report.foreign.append(hostname)
    seen = (context.pool.name, hostname)
    if seen in _logged_foreign:
        return
    if len(_logged_foreign) >= FOREIGN_LOGGED:
        _logged_foreign.clear()
    _logged_foreign.add(seen)
    logger.warning("VM of another vmpool deployment in the pool's folder: left alone",
                   extra={"pool": context.pool.name, "hostname": hostname, "deployment": owner,
                          "this_deployment": deployment_of(context.service)})
