"""A pool removed from the config whose provider is gone from it too (or was never one it has):
nothing can destroy its VMs, so it cannot drain.

Before, each drain message (every tick) logged an error and left it: the pool stayed known for
good, its VMs' records (ready ones, ones running past their lifetime, returned ones) were never
dropped, its running VMs counted against ``max_running_vms`` and its open on-demand requests
stayed open. vmpooler, whose pool manager forgets a pool removed from its config at once, leaves
every VM of it where it is, in the hypervisor and in Redis.

Now the first drain that finds the provider gone notes when (``pools:providerless``) and logs one
warning: the provider back within ``PROVIDERLESS_GRACE_SECONDS`` (a push that removed it by
mistake, put right), the drain destroys the VMs as any drain does. Past the grace each drain
message gives them up: the records of its VMs not in use go (their machines are left on the
hypervisor, named in one warning as they go), its open requests fail, and a VM in use stays its
user's until returned or its lifetime ends, when its record goes the same way (its machine is
never destroyed: nothing could). Once the pool holds no VM it is forgotten as a drained one is.

The DNS records of the VMs given up are withdrawn as a drain's are, by the ``:dns_configs:``
entry that published each (its DNS service needs no provider): a record the service failed to
delete is noted (``Store.note_dns_left``) and tried again at the next drain message, and the pool
is forgotten only once none is left, as a drained one. A record whose entry is gone from the
config cannot be deleted: it is named once, in a warning. Before, the records stayed in the zone
for good, names leading to addresses DHCP may give other machines.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from chalicelib import observability as metric
from chalicelib.config import PoolConfig
from chalicelib.dns.base import DnsError, DnsPlugin
from chalicelib.manager import ondemand
from chalicelib.manager.dns_withdrawal import withdraw_left
from chalicelib.observability import emit, logger
from chalicelib.store import STATES, VMRecord
from chalicelib.store.fleet import Fleet

if TYPE_CHECKING:
    from chalicelib.services import Services

PROVIDERLESS_GRACE_SECONDS = 3600.0
"""How long after a drain first found a removed pool's provider gone its VMs' records are kept,
for the provider to come back and destroy them (an hour: a push put right, not a pool left for
good)."""
NAMES_LOGGED = 100
"""The hostnames the warning of VMs given up names (the rest are counted)."""
GIVEN_UP = "provider gone from the config: the machine is left on the hypervisor"
"""The reason noted on the record of a VM given up (its ``reason``, shown by GET /vm/<hostname>)."""
DNS_DELETES_PER_LOOK = 50
"""Records of VMs given up one look deletes at most (a call each to the DNS service, 50 names to
an update with ``dynamic-dns``); the rest are noted and deleted by the next looks."""
DNS_FAILURES_PER_LOOK = 5
"""Failed deletes after which a look leaves the rest to the next looks (as a pass:
``dns_records.LEFT_FAILURES_PER_PASS``): a refusing service is not sent 50 a look."""
DNS_ENTRY_GONE = "entry_gone"
"""``DnsFailures``' reason for a record nothing can delete (as ``context.DNS_ENTRY_GONE``)."""


@dataclass
class GivenUp:
    """What one look at a removed pool without its provider did."""

    waiting: bool = False
    """Within the grace: nothing given up yet."""
    dropped: dict[str, list[str]] = field(default_factory=dict)
    """State -> the VMs whose records went (their machines left on the hypervisor)."""
    in_use: int = 0
    """VMs in use kept their user's (until returned or their lifetime ends)."""
    failed_requests: list[str] = field(default_factory=list)
    forgotten: bool = False
    dns_deleted: list[str] = field(default_factory=list)
    """The names whose DNS records were deleted."""
    dns_left: list[str] = field(default_factory=list)
    """The names whose DNS records the service failed to delete (tried again at the next look)."""
    dns_unreachable: list[str] = field(default_factory=list)
    """The names whose DNS entry is gone from the config: their records stay in the zone."""


def give_up(services: "Services", pool: PoolConfig, fleet: Fleet) -> GivenUp:
    """Look at the removed ``pool`` (its settings as last configured), whose provider the config
    no longer has: note it and warn once; past the grace, drop the records of its VMs not in use
    (and of those in use once their lifetime has ended), fail its open requests, forget it once
    it holds no VM. ``fleet``: the caller's (``dispatch.look_at``)."""
    store, now = services.store, services.clock.now()
    since, first = fleet.providerless_since(pool.name, now)
    if first:
        counts = store.counts([pool.name])[pool.name]
        logger.warning("removed pool cannot drain: its provider is gone from the config; its VMs are given up "
                       "(records dropped, machines left on the hypervisor) unless the provider is back in time",
                       extra={"pool": pool.name, "provider": pool.provider, "vms": sum(counts.values()),
                              "by_state": {state: count for state, count in counts.items() if count},
                              "grace_seconds": int(PROVIDERLESS_GRACE_SECONDS)})
    if now - since < PROVIDERLESS_GRACE_SECONDS:
        return GivenUp(waiting=True)
    result = GivenUp(failed_requests=ondemand.fail_removed(store, pool.name, now)[0])
    for state in STATES:
        if state == "running":
            continue
        hostnames = store.hostnames(pool.name, state)
        if hostnames:
            moved = store.move_many(pool.name, state, "destroyed", now,
                                    {hostname: {"reason": GIVEN_UP} for hostname in hostnames})
            if moved:
                result.dropped[state] = moved
    lifetime = services.config.service.vm_lifetime
    for hostname in store.hostnames(pool.name, "running"):
        # Only once its lifetime has ended, as recorded at the move (its user may extend it).
        if store.move(hostname, pool.name, "running", "destroyed", now, lifetime_ended=lifetime,
                      reason=GIVEN_UP):
            result.dropped.setdefault("running", []).append(hostname)
        else:
            result.in_use += 1
    if result.dropped or result.failed_requests:
        names = [hostname for hostnames in result.dropped.values() for hostname in hostnames]
        logger.warning("VMs of a removed pool whose provider is gone given up: their records are dropped, their "
                       "machines left on the hypervisor (delete them there)",
                       extra={"pool": pool.name, "provider": pool.provider, "count": len(names),
                              "hostnames": names[:NAMES_LOGGED],
                              "by_state": {state: len(hostnames) for state, hostnames in result.dropped.items()},
                              "in_use": result.in_use, "requests_failed": len(result.failed_requests)})
    withdraw_records(services, pool, [name for names in result.dropped.values() for name in names], result)
    if not any(store.counts([pool.name])[pool.name].values()) and not store.dns_left(pool.name, 1) \
            and fleet.forget(pool.name, now):
        result.forgotten = True
        logger.info("removed pool forgotten without draining: its provider is gone from the config",
                    extra={"pool": pool.name, "provider": pool.provider})
    return result


def withdraw_records(services: "Services", pool: PoolConfig, given_up: list[str], result: GivenUp) -> None:
    """Delete the DNS records of the VMs just ``given_up`` and of those earlier looks failed to
    delete (``Store.dns_left``), each by the entry that published it (the pool's ``dns_plugin``
    for a record that names none), ``DNS_DELETES_PER_LOOK`` at most (``dns_withdrawal``, as a
    pass deletes those of a drained pool). Only a record still noted on a given-up VM is deleted
    (a name taken by a new VM since is never deleted from under it). The failures are counted and
    logged once a look, the records whose entry is gone named in one warning."""
    store, now = services.store, services.clock.now()
    errors: list[DnsError] = []

    def publisher(record: VMRecord) -> DnsPlugin | None:
        entry = str(record.raw.get("dns_plugin") or "") or pool.dns_plugin
        plugin = services.dns_plugin_named(entry) if entry else None
        if plugin is not None and plugin.manages_records:
            return plugin
        store.update_vm(record.name, dns_name=None, dns_plugin=None, dns_published=None, dns_error=None)
        return None  # named in the warning below

    def delete(plugin: DnsPlugin, names: list[tuple[str, str]], max_refusals: int) -> dict[str, DnsError | None]:
        return plugin.delete_many(names, max_refusals)

    done = withdraw_left(store, pool.name, now, publisher, delete, lambda hostname, doing, error: errors.append(error),
                         DNS_DELETES_PER_LOOK, DNS_FAILURES_PER_LOOK, given_up)
    result.dns_deleted, result.dns_left, result.dns_unreachable = done.deleted, done.left, done.unreachable
    if result.dns_unreachable:
        emit(pool.name, {metric.DNS_FAILURES: len(result.dns_unreachable)}, dimensions={"reason": DNS_ENTRY_GONE})
        logger.warning("DNS records of VMs given up left in the zone: the dns_configs entry that published them "
                       "is gone from the config (delete them there)",
                       extra={"pool": pool.name, "count": len(result.dns_unreachable),
                              "fqdns": result.dns_unreachable[:NAMES_LOGGED]})
    if errors:
        emit(pool.name, {metric.DNS_FAILURES: 1}, dimensions={"reason": errors[0].metric_key})
        logger.warning("DNS records of VMs given up not deleted: tried again at the pool's next drain message",
                       extra={"pool": pool.name, "count": len(result.dns_left), "error": str(errors[0]),
                              "reason": errors[0].metric_key})
