"""The reconcile pass's part in DNS records (a pool's ``dns_plugin``).

- A new name that already resolves in the plugin's zone is refused before its clone starts (a
  stale record would send users to someone else's machine); the pool clones under another name.
- A pending VM gets its A record as soon as it reports an IP address, before the provider's
  readiness check (which may connect to ``<name>.<domain>``), and is not ready without it. When
  the DNS service fails, the VM stays pending with the reason (GET /vm shows
  ``not_ready_reason``) and the next pass tries again; ``timeout`` takes it out of service with
  that reason. An address already published is not sent again.
- A VM leaving service has its record deleted before (and while) it is destroyed. A failure is
  recorded on the VM and retried while it is being destroyed; it never holds the destroy.

The VM's record notes the published name (``dns_name``) *before* the record is created, so a
pass killed in between still knows to delete it, and records vmpool did not create are never
deleted. A DNS failure never fails the pass: each is counted (``DnsFailures`` by reason) and
logged, and the pass goes on with the next VM.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from chalicelib import observability as metric
from chalicelib.dns.base import DnsError
from chalicelib.observability import emit, logger
from chalicelib.providers.base import Readiness, VMInfo
from chalicelib.store import VMRecord

if TYPE_CHECKING:
    from chalicelib.manager.reconcile import _Pass


def _failed(pass_: "_Pass", hostname: str, doing: str, error: DnsError) -> None:
    emit(pass_.pool.name, {metric.DNS_FAILURES: 1}, dimensions={"reason": error.metric_key})
    logger.warning("DNS " + doing + " failed", extra={"pool": pass_.pool.name, "hostname": hostname,
                                                      "error": str(error), "reason": error.metric_key})


def name_in_use(pass_: "_Pass", hostname: str) -> str:
    """Why a freshly reserved name must not be used ("" when it is free or we cannot tell: a
    lookup failure does not stop clones, the record is replaced when the VM is ready)."""
    plugin = pass_.dns
    if plugin is None or not plugin.checks_names:
        return ""
    try:
        found = plugin.addresses(hostname)
    except DnsError as error:
        _failed(pass_, hostname, "lookup", error)
        return ""
    if not found:
        return ""
    logger.warning("new hostname already in DNS: using another", extra={
        "pool": pass_.pool.name, "hostname": hostname, "addresses": found})
    return f"hostname {plugin.fqdn(hostname)} already resolves to {', '.join(found)} (stale DNS record)"


def check_ready(pass_: "_Pass", record: VMRecord, vm: VMInfo) -> Readiness:
    """The pending VM's readiness: its A record published (when the pool's plugin manages
    records), then the provider's check."""
    plugin = pass_.dns
    if plugin is None or not plugin.manages_records:
        return pass_.provider.check_ready(pass_.pool, vm)
    if vm.ip and record.raw.get("dns_published") != vm.ip:
        fqdn = plugin.fqdn(record.name)
        if record.raw.get("dns_name") != fqdn:
            pass_.store.update_vm(record.name, dns_name=fqdn)  # before the record: never forgotten
        try:
            plugin.create_or_replace(record.name, vm.ip)
        except DnsError as error:
            _failed(pass_, record.name, "record creation", error)
            return Readiness(False, f"DNS record not created: {error}")
        pass_.store.update_vm(record.name, dns_published=vm.ip)
        pass_.checkpoint("dns_published")
    readiness = pass_.provider.check_ready(pass_.pool, vm)
    if readiness.ready and not vm.ip:
        return Readiness(False, "no IP address to publish in DNS yet")
    return readiness


def withdraw(pass_: "_Pass", record: VMRecord | None) -> None:
    """Delete the A record of a VM leaving service, if vmpool created one."""
    plugin = pass_.dns
    if record is None or plugin is None or not record.raw.get("dns_name"):
        return
    try:
        plugin.delete(record.name)
    except DnsError as error:
        _failed(pass_, record.name, "record deletion", error)
        pass_.report.errors.append(f"DNS record of {record.name} not deleted: {error}")
        pass_.store.update_vm(record.name, dns_error=f"DNS record not deleted: {error}")
        return
    pass_.store.update_vm(record.name, dns_name=None, dns_published=None, dns_error=None)
    pass_.checkpoint("dns_withdrawn")
