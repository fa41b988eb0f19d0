"""The reconcile pass's part in DNS records (a pool's ``dns_plugin``).

- A new name that already resolves in the plugin's zone is refused before its clone starts (a
  stale record would send users to someone else's machine); the pool clones under another name.
- A pending VM gets its A record as soon as it reports an IP address, before the provider's
  readiness check (which may connect to ``<name>.<domain>``), and is not ready without it. When
  the DNS service fails, the VM stays pending with the reason (GET /vm shows
  ``not_ready_reason``) and the next pass tries again; ``timeout`` takes it out of service with
  that reason. An address already published is not sent again.
- A VM leaving service has its record deleted before (and while) it is destroyed
  (``PassContext.withdraw_dns``: dropping a VM needs it too). A failure is recorded on the VM
  and retried while it is being destroyed; it never holds the destroy. A VM destroyed with its
  record still there is noted (``Store.note_dns_left``) and later passes delete the record
  (``delete_left_records``), so an outage leaves no record behind once DNS answers again.

The VM's record notes the published name (``dns_name``) *before* the record is created, so a
pass killed in between still knows to delete it, and records vmpool did not create are never
deleted. After the create the VM is read again: a stale pass (others gave the VM back and
withdrew its record meanwhile) withdraws the record it just created.

A DNS failure never fails the pass: each is counted (``DnsFailures`` by reason) and logged, and
the pass goes on with the next VM. Once the DNS service did not answer, or took
``DNS_SECONDS_PER_PASS`` of the pass, the pass sends it nothing more (``PassContext.dns_call``):
a paused server costs one ``timeout`` a pass, a slow one that budget.
"""

from __future__ import annotations

import dataclasses
import functools

from chalicelib.dns.base import DnsError
from chalicelib.manager.context import PassContext
from chalicelib.observability import logger
from chalicelib.providers.base import Readiness, VMInfo
from chalicelib.store import VMRecord


def name_in_use(context: PassContext, hostname: str) -> str:
    """Why a freshly reserved name must not be used ("" when it is free or we cannot tell: a
    lookup failure does not stop clones, the record is replaced when the VM is ready)."""
    plugin = context.dns
    if plugin is None or not plugin.checks_names:
        return ""
    try:
        found = context.dns_call(f"look up {plugin.fqdn(hostname)}", lambda: plugin.addresses(hostname))
    except DnsError as error:
        context.dns_failed(hostname, "lookup", error)
        return ""
    if not found:
        return ""
    logger.warning("new hostname already in DNS: using another", extra={
        "pool": context.pool.name, "hostname": hostname, "addresses": found})
    return f"hostname {plugin.fqdn(hostname)} already resolves to {', '.join(found)} (stale DNS record)"


def check_ready(context: PassContext, record: VMRecord, vm: VMInfo) -> Readiness:
    """The pending VM's readiness: its A record published (when the pool's plugin manages
    records), then the provider's check."""
    plugin = context.dns
    if plugin is None or not plugin.manages_records:
        return context.provider.check_ready(context.pool, vm)
    ip = vm.ip
    if ip and record.raw.get("dns_published") != ip:
        fqdn = plugin.fqdn(record.name)
        if record.raw.get("dns_name") != fqdn or record.raw.get("dns_plugin") != plugin.name:
            # Before the record: never forgotten, and deleted by this entry under this name
            # whatever the pool's dns_plugin or the entry's domain says by then.
            context.store.update_vm(record.name, dns_name=fqdn, dns_plugin=plugin.name)
        try:
            context.dns_call(f"create {fqdn}", lambda: plugin.create_or_replace(record.name, ip))
        except DnsError as error:
            context.dns_failed(record.name, "record creation", error)
            return Readiness(False, f"DNS record not created: {error}")
        if _left_service(context, record.name, fqdn, plugin.name):
            return Readiness(False, "left service while its DNS record was created")
        context.store.update_vm(record.name, dns_published=ip)
        context.checkpoint("dns_published")
    readiness = context.provider.check_ready(context.pool, vm)
    if readiness.ready and not vm.ip:
        return Readiness(False, "no IP address to publish in DNS yet")
    return readiness


IN_SERVICE = ("pending", "ready", "running")


def _left_service(context: PassContext, hostname: str, fqdn: str, published_by: str) -> bool:
    """Whether the VM whose record was just created has left service since the pass's snapshot
    was read (a stale pass: others made it ready, its user gave it back, and it was withdrawn,
    perhaps destroyed, before this create). Then the record is withdrawn again, as when it left:
    deleted now, or noted for later passes when DNS fails. Nothing else would delete it."""
    current = context.store.get_vm(hostname)
    if current is None or current.state in IN_SERVICE:
        return False  # in service (or its record expired: nothing to note the name on)
    noted = {"dns_name": fqdn, "dns_plugin": published_by}
    context.store.update_vm(hostname, **noted)  # the withdraw may have cleared it
    context.withdraw_dns(dataclasses.replace(current, raw={**current.raw, **noted}))
    logger.info("DNS record of a VM that left service meanwhile withdrawn again",
                extra={"pool": context.pool.name, "hostname": hostname, "state": current.state})
    return True


LEFT_RECORDS_PER_PASS = 50
"""Records of destroyed VMs one pass deletes at most: an outage's backlog goes in a few passes
without holding one pass (each delete is a call to the DNS service)."""


def delete_left_records(context: PassContext) -> None:
    """Delete the A records of VMs destroyed while DNS failed. Only a record whose VM is
    destroyed and still notes it (``dns_name``) is deleted: a VM still being destroyed is left to
    the completed step, and a name whose record is gone (past ``data_ttl``) or taken by a new VM
    is forgotten, never deleted from under its new owner."""
    if context.dns is None and context.dns_plugins is None:
        return  # no entry could have published them (a pool whose dns_plugin was removed has one)
    hostnames = context.store.dns_left(context.pool.name, LEFT_RECORDS_PER_PASS)
    if not hostnames:
        return
    records = context.store.records(hostnames)
    forget: list[str] = []
    for hostname in hostnames:
        record = records.get(hostname)
        if record is not None and record.state == "completed":
            continue  # withdraw_dns retries it while the VM is destroyed
        if record is None or record.state != "destroyed" or not record.raw.get("dns_name"):
            forget.append(hostname)
            continue
        plugin = context.publisher(record)  # None: its entry is gone (counted, note dropped)
        if plugin is None:
            forget.append(hostname)
            continue
        fqdn = str(record.raw["dns_name"])
        try:
            context.dns_call(f"delete {fqdn}", functools.partial(plugin.delete, hostname, fqdn))
        except DnsError as error:
            context.dns_failed(hostname, "record deletion", error)
            continue
        context.store.update_vm(hostname, dns_name=None, dns_plugin=None, dns_published=None, dns_error=None)
        forget.append(hostname)
    context.store.forget_dns_left(context.pool.name, forget)
    context.checkpoint("dns_left_deleted")
