"""The reconcile pass's part in DNS records (a pool's ``dns_plugin``).

- A new name that already resolves in the plugin's zone is refused before its clone starts (a
  stale record would send users to someone else's machine); the pool clones under another name.
- A pending VM gets its address record (A, or AAAA for IPv6) as soon as it reports an IP
  address, before the provider's readiness check (which may connect to ``<name>.<domain>``),
  and is not ready without it. When the DNS service fails, the VM stays pending with the reason
  (GET /vm shows ``not_ready_reason``) and the next pass tries again; ``timeout`` takes it out
  of service with that reason. An address already published is not sent again.
- A ready or running VM whose address changed has its record published again
  (``follow_addresses``): the records follow the provider's inventory, level-triggered.
- A VM leaving service has its record deleted before (and while) it is destroyed
  (``PassContext.withdraw_dns``: dropping a VM needs it too). A failure is recorded on the VM
  and retried while it is being destroyed; it never holds the destroy. A VM destroyed with its
  record still there is noted (``Store.note_dns_left``) and later passes delete the record
  (``delete_left_records``), so an outage leaves no record behind once DNS answers again.

The VM's record notes the published name (``dns_name``) *before* the record is created, so a
pass killed in between still knows to delete it, and records vmpool did not create are never
deleted. A pass claims the publication of an address (``Store.claim_dns``) before it sends it,
and notes it published only if no later pass claimed since (``Store.confirm_dns``): a stale
pass never leaves an older address published after a newer one. After the create the VM is
read again: a stale pass (others gave the VM back and withdrew its record meanwhile) withdraws
the record it just created.

A DNS failure never fails the pass: each is counted (``DnsFailures`` by reason) and logged, and
the pass goes on with the next VM. Once the DNS service did not answer, or took
``DNS_SECONDS_PER_PASS`` of the pass, the pass sends it nothing more (``PassContext.dns_call``):
a paused server costs one ``timeout`` a pass, a slow one that budget.
"""

from __future__ import annotations

import dataclasses
import functools

from chalicelib.dns.base import DnsError, DnsPlugin, DnsRejected, record_address
from chalicelib.manager.context import PassContext
from chalicelib.observability import logger
from chalicelib.providers.base import Readiness, VMInfo
from chalicelib.store import DnsClaim, VMRecord


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
    """The pending VM's readiness: its address record published (when the pool's plugin manages
    records), then the provider's check."""
    plugin = context.dns
    if plugin is None or not plugin.manages_records:
        return context.provider.check_ready(context.pool, vm)
    ip = vm.ip
    if ip and record.raw.get("dns_published") != ip:
        fqdn = plugin.fqdn(record.name)
        if record.raw.get("dns_name") not in (None, fqdn) or record.raw.get("dns_plugin") not in (None, plugin.name):
            # Published under a name or by an entry the config no longer gives the pool: that
            # record goes first (by its entry, under its name), then the pool's own is published.
            context.withdraw_dns(record)
        claimed = context.store.claim_dns(context.now, plugin.name, {record.name: (fqdn, ip)})[record.name]
        if claimed.version < 0:
            return Readiness(False, "DNS record not created: a later look at the VM claimed it, "
                                    "or its former record is still to be deleted")
        if claimed.version > 0:
            reason = _publish(context, plugin, record.name, ip, claimed)
            if reason:
                return Readiness(False, reason)
    readiness = context.provider.check_ready(context.pool, vm)
    if readiness.ready and not vm.ip:
        return Readiness(False, "no IP address to publish in DNS yet")
    return readiness


def _publish(context: PassContext, plugin: DnsPlugin, hostname: str, ip: str, claim: DnsClaim) -> str:
    """Send the VM's address record (the pass claimed its publication: ``claim``), then note it
    published unless another pass claimed since (then the next pass sends what it sees again).
    Returns why the address is not published ("" when it is)."""
    fqdn = plugin.fqdn(hostname)
    try:
        context.dns_call(f"create {fqdn}", lambda: plugin.create_or_replace(hostname, ip, claim.published))
    except DnsError as error:
        context.dns_failed(hostname, "record creation", error)
        return f"DNS record not created: {error}"
    if _left_service(context, hostname, fqdn, plugin.name):
        return "left service while its DNS record was created"
    if not context.store.confirm_dns({hostname: (claim.version, ip)}):
        return "DNS record not created: another pass published the VM's address meanwhile"
    context.checkpoint("dns_published")
    return ""


def follow_addresses(context: PassContext) -> None:
    """Ready and running VMs whose address changed since it was published (a reboot onto another
    DHCP lease, a migration) have their record published again, so that their name never leads
    to their former address (soon another machine's). The pass compares what the provider shows
    it (every VM at a whole comparison, the changed ones otherwise) with what was published, in
    one round trip that claims the changed ones (``Store.claim_dns``: a stale pass never sends
    an older address than one a later look claimed); DNS is called only for those. A ready VM
    whose new address could not be published leaves service (it would be handed out under a
    name leading elsewhere); a running VM, its user's, keeps its record, published again by the
    next pass that sees it. An address that cannot be published (not an IP address, link-local:
    ``record_address``) is not: the VM keeps its record."""
    plugin = context.dns
    if plugin is None or not plugin.manages_records:
        return
    states: dict[str, str] = {}
    seen: dict[str, tuple[str, str]] = {}
    for state in ("ready", "running"):
        for hostname in context.snapshot.hostnames(state):
            vm = context.inventory.get(hostname)
            if vm is None or not vm.ip or not vm.powered_on or not _publishable(vm.ip):
                continue
            record = context.snapshot.records.get(hostname) or context.late_records.get(hostname)
            if record is not None and record.raw.get("dns_published") == vm.ip:
                continue  # its record was read (running VMs): nothing to compare in Redis
            states[hostname] = state
            seen[hostname] = (plugin.fqdn(hostname), vm.ip)
    if not seen:
        return
    claims = context.store.claim_dns(context.now, plugin.name, seen)
    for hostname, claim in claims.items():
        if claim.version <= 0:
            continue
        ip = seen[hostname][1]
        logger.info("VM's address changed: its DNS record is published again", extra={
            "pool": context.pool.name, "hostname": hostname, "ip": ip, "published": claim.published})
        reason = _publish(context, plugin, hostname, ip, claim)
        if reason and states[hostname] == "ready":  # conditional: not if it left ready meanwhile
            context.take_out_of_service(hostname, "ready", f"its address changed to {ip}: {reason}")
        elif reason:
            context.report.errors.append(f"DNS record of {hostname} not published again: {reason}")


def _publishable(ip: str) -> bool:
    """Whether an address can be a VM's record (``record_address`` refuses it otherwise)."""
    try:
        record_address("", ip)
    except DnsRejected:
        return False
    return True


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


LEFT_FAILURES_PER_PASS = 5
"""Failed deletes after which a pass leaves the rest of the backlog to the next passes: a
refusing service (Route 53: 5 calls a second for the whole account) is not sent 50 a pass."""


def delete_left_records(context: PassContext) -> None:
    """Delete the address records of VMs destroyed while DNS failed. Only a record whose VM is
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
    failures = 0
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
            # To the back of the line: a record the DNS service keeps refusing to delete (its
            # zone gone from the server, say) must not keep the ones behind it waiting until its
            # VM's record expires (data_ttl: a week by default).
            context.store.note_dns_left(context.pool.name, hostname, context.now)
            failures += 1
            if failures >= LEFT_FAILURES_PER_PASS:
                break
            continue
        context.store.update_vm(hostname, dns_name=None, dns_plugin=None, dns_published=None, dns_error=None)
        forget.append(hostname)
    context.store.forget_dns_left(context.pool.name, forget)
    context.checkpoint("dns_left_deleted")
