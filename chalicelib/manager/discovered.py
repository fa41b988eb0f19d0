"""The reconcile pass's steps for VMs vmpool did not create: a VM found in the pool's folder that
no state of the pool knows is recorded as discovered (``discover_unknown``); nobody claims it
before the next pass, so that pass takes it out of service (``check_discovered``), as vmpooler
does with VMs it finds in its folders.

After Redis lost its data (restarted without persistence, a failover that lost writes), the VMs
it forgot still hold their names in their pools' folders, and another pool could clone a VM of the
same name into its own folder before their pool's pass finds them: two VMs of one name, the
hostname handed out colliding with the other (no DNS plugin to tell). So the first pass to clone
after the loss lists every configured pool's folder once (``discover_fleet``) and records the
VMs no record claims as discovered in their pools, their names then taken in Redis; until a pass
has, no clone name is reserved (``Keys.names_checked``, lua/reserve_clones.lua).

A VM whose annotation says another vmpool deployment made it (chalicelib/providers/ownership.py)
is that deployment's, in use or ready there: it is never recorded as discovered, and one recorded
before (by a version that did not look) is forgotten, not taken out of service. Each is logged
once per process (``FOREIGN_LOGGED`` at most), and listed in the pass's report."""

from __future__ import annotations

from chalicelib.manager import dns_records
from chalicelib.manager.context import PassContext
from chalicelib.observability import logger
from chalicelib.providers.base import ProviderError
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


def discover_fleet(context: PassContext) -> None:
    """Once after Redis lost its data, before a clone name is reserved: every other configured
    pool's folder listed (one provider call each; this pool's was listed by the pass, and
    ``discover_unknown`` ran), the VMs no record claims recorded as discovered in their pools
    (each pool's own pass takes them out of service, as it would have), their names then
    taken. A folder whose provider fails or is not configured is logged and left out: its own
    pass cannot run either, and the others' refills must not wait on it. The caller notes the
    check done with its reservation (``Store.reserve_clones``)."""
    deployment = deployment_of(context.service)
    pools = [pool for pool in (context.fleet() if context.fleet is not None else ())
             if pool.name != context.pool.name]
    found = 0
    for pool in pools:
        provider = context.provider if pool.provider == context.pool.provider else (
            context.providers(pool.provider) if context.providers is not None else None)
        if provider is None:
            continue
        try:
            vms = provider.list_vms(pool)
        except ProviderError as error:
            logger.warning("names of a pool's folder not checked after Redis lost its data",
                           extra={"pool": context.pool.name, "folder_of": pool.name, "error": str(error)})
            continue
        for vm in vms:
            if other_deployment(vm.annotation, deployment) is not None:
                continue
            ip = dns_records.reachable_ip(vm) or vm.ip
            found += context.store.add_discovered(vm.name, pool.name, context.now, host=vm.host, ip=ip)
        context.checkpoint("fleet_discovered")  # a long listing renews the run's lease as it goes
    logger.warning("Redis lost its data: every pool's folder listed before cloning",
                   extra={"pool": context.pool.name, "pools": len(pools), "discovered": found})


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
