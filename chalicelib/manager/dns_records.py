"""The reconcile pass's part in DNS records (a pool's ``dns_plugin``).

- A new name that already resolves in the plugin's zone is refused before its clone starts (a
  stale record would send users to someone else's machine); the pool clones under another name.
- A pending VM gets its address records as soon as it reports an IP address, before the
  provider's readiness check (which may connect to ``<name>.<domain>``), and is not ready
  without them: an A record for the first usable IPv4 address it reports and an AAAA record for
  the first usable IPv6 one (its primary address, ``VMInfo.ip``, first; ``chosen_addresses``).
  When the DNS service fails, the VM stays pending with the reason (GET /vm shows
  ``not_ready_reason``) and the next pass tries again; ``timeout`` takes it out of service with
  that reason. An address already published is not sent again.
- A ready or running VM whose address changed has its records published again, only the
  family whose address changed (``follow_addresses``): the records follow the provider's
  inventory, level-triggered; so does GET /vm's ``ip``, with or without managed DNS. A VM
  published under a name or by an entry its pool no longer has is published under the new one
  and withdrawn from the old.
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
a paused server costs one ``timeout`` a pass, a slow one that budget; once it refused an entry as
a whole (its key, its zone), the pass sends that entry no change more: one refused update a pass.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from typing import Mapping, Sequence

from chalicelib.answer_sizes import STATUS_REASON_CHARACTERS
from chalicelib.dns.base import (
    ADDRESS_TYPES,
    DnsEntryRejected,
    DnsError,
    DnsPlugin,
    DnsRejected,
    address_text,
    chosen_addresses,
    record_address,
    without_arns,
)
from chalicelib.manager.context import PassContext
from chalicelib.manager.dns_withdrawal import withdraw_left
from chalicelib.observability import logger
from chalicelib.providers.base import Readiness, VMInfo
from chalicelib.store import DNS_ELSEWHERE, DnsClaim, VMRecord


def names_in_use(context: PassContext, hostnames: Sequence[str]) -> dict[str, str]:
    """Why each freshly reserved name that must not be used must not (absent: free, or we cannot
    tell: a lookup failure does not stop clones, the record is replaced when the VM is ready).
    The names are looked up ``RECORDS_PER_CALL`` to a call of the plugin (``addresses_many``:
    pipelined on one connection with ``dynamic-dns``), the pass's DNS budget checked between."""
    plugin = context.dns
    if plugin is None or not plugin.checks_names:
        return {}
    taken: dict[str, str] = {}
    for start in range(0, len(hostnames), RECORDS_PER_CALL):
        chunk = hostnames[start:start + RECORDS_PER_CALL]
        what = f"look up {plugin.fqdn(chunk[0])}" if len(chunk) == 1 else f"look up {len(chunk)} names"
        try:
            found = context.dns_call(what, functools.partial(plugin.addresses_many, chunk), plugin.name)
        except DnsError as error:  # the service did not answer: every name of the call, each counted
            found = dict.fromkeys(chunk, error)
        for hostname in chunk:
            addresses = found.get(hostname, [])
            if isinstance(addresses, DnsError):
                context.dns_failed(hostname, "lookup", addresses)
                continue
            if not addresses:
                continue
            logger.warning("new hostname already in DNS: using another", extra={
                "pool": context.pool.name, "hostname": hostname, "addresses": addresses})
            taken[hostname] = (f"hostname {plugin.fqdn(hostname)} already resolves to {', '.join(addresses)} "
                               "(stale DNS record)")
    return taken


RECORDS_PER_CALL = 50
"""VMs whose records one call of the DNS plugin publishes at most (``create_many``: one update a
call with ``dynamic-dns``): the pass checks its DNS budget between calls, and a call the service
does not answer leaves at most this many VMs unpublished."""

REFUSALS_PER_CALL = 5
"""Names the DNS service refuses alone after which a call sends the rest of its VMs no more (they
wait for the next pass): a key an ``update-policy`` grants no name costs a call of 50 VMs the
batch, the check of the entry and 5 refused updates, not 50."""


REFUSED_NAME_BACKOFF_SECONDS = 60.0
"""How long a pending VM whose name the DNS service refused alone (an ``update-policy`` denying
the key that name, a CNAME someone else holds there, IAM denying it) waits before its records are
sent again; it doubles with each refusal in a row, up to ``REFUSED_NAME_BACKOFF_MAX_SECONDS``."""
REFUSED_NAME_BACKOFF_MAX_SECONDS = 300.0

REFUSED_NOTE = "dns_refused"
"""The VM record's note of its name's refusals in a row: ``<count> <time> <addresses>`` (the
addresses refused: a VM reporting others is sent again at once). Bounded: one field a VM, gone
with its record, cleared when its records are published."""


def publish_pending(context: PassContext, pending: Sequence[tuple[VMRecord, VMInfo]]) -> dict[str, str]:
    """Publish the address records of the pending VMs ``pending`` (each record with what the
    provider shows of it) whose addresses are not published yet, when the pool's plugin manages
    records: claimed in one Redis round trip, sent ``RECORDS_PER_CALL`` to a call
    (``_publish_many``). A VM whose name the service refused is sent again only after its
    back-off (``REFUSED_NAME_BACKOFF_SECONDS``, doubling), and then after the VMs never refused,
    longest waiting first: before, the same refused names led every pass's update, and once
    ``REFUSALS_PER_CALL`` of them were refused again the VMs behind them were never sent. Returns,
    per VM that is not published, why (its readiness reason)."""
    plugin = context.dns
    if plugin is None or not plugin.manages_records:
        return {}
    wanted: dict[str, tuple[str, str]] = {}
    addresses: dict[str, tuple[str, ...]] = {}
    reasons: dict[str, str] = {}
    refusals: dict[str, tuple[int, float]] = {}
    noted_refused: set[str] = set()
    for record, vm in pending:
        sent, noted = _wanted(vm)
        fqdn = plugin.fqdn(record.name)
        if not noted or _published_there(record, plugin, fqdn, noted):
            continue
        if record.raw.get(REFUSED_NOTE):
            noted_refused.add(record.name)
        refused = _refusals(record, noted)
        if refused is not None:
            if _backing_off(context, refused):
                reasons[record.name] = record.not_ready_reason or "DNS record not created: the DNS service refused it"
                continue
            refusals[record.name] = refused
        if _published_elsewhere(record, plugin, fqdn):
            # Published under a name or by an entry the config no longer gives the pool: that
            # record goes first (by its entry, under its name), then the pool's own is published.
            context.withdraw_dns(record)
        wanted[record.name], addresses[record.name] = (fqdn, noted), sent
    if not wanted:
        return reasons
    claims = context.store.claim_dns(context.now, plugin.name, wanted, plugin.domain)
    reasons.update({hostname: "DNS record not created: a later look at the VM claimed it, "
                              "or its former record is still to be deleted"
                    for hostname, claim in claims.items() if claim.version < 0})
    order = _refused_last([hostname for hostname, claim in claims.items() if claim.version > 0], refusals)
    refused_now: set[str] = set()
    unpublished = _publish_many(context, plugin, {
        hostname: (addresses[hostname], wanted[hostname][1], claims[hostname]) for hostname in order}, refused_now)
    _note_refusals(context, {hostname: wanted[hostname][1] for hostname in order}, refusals, refused_now,
                   noted_refused, unpublished)
    reasons.update(unpublished)
    return reasons


def _backing_off(context: PassContext, refused: tuple[int, float]) -> bool:
    """Whether a name refused ``refused`` (its refusals in a row, the time of the last:
    ``_refusals``) still waits out its back-off (``REFUSED_NAME_BACKOFF_SECONDS``, doubling)."""
    count, at = refused
    return context.now < at + min(REFUSED_NAME_BACKOFF_SECONDS * 2 ** (count - 1), REFUSED_NAME_BACKOFF_MAX_SECONDS)


def _refused_last(hostnames: Sequence[str], refusals: Mapping[str, tuple[int, float]]) -> list[str]:
    """The VMs never refused first, then the refused ones whose back-off is over, the longest
    waiting first: a service refusing some names alone never keeps the others unsent."""
    return sorted(hostnames, key=lambda hostname: (hostname in refusals, refusals.get(hostname, (0, 0.0))[1]))


def _note_refusals(context: PassContext, sent: Mapping[str, str], refusals: Mapping[str, tuple[int, float]],
                   refused_now: set[str], noted_refused: set[str], unpublished: Mapping[str, str]) -> None:
    """Note on the VMs sent (hostname -> the addresses' note) each refusal of their name
    (``REFUSED_NOTE``: one more in a row), and clear the note of those published, in one write."""
    notes: dict[str, dict[str, str | None]] = {
        hostname: {REFUSED_NOTE: f"{refusals.get(hostname, (0, 0.0))[0] + 1} {context.now!r} {sent[hostname]}"}
        for hostname in refused_now}
    notes.update({hostname: {REFUSED_NOTE: None} for hostname in sent  # published
                  if hostname in noted_refused and hostname not in unpublished})
    if notes:
        context.store.update_vms(notes)


def manages_records(context: PassContext) -> bool:
    """Whether the pass publishes its pool's records (its ``dns_plugin`` names a plugin that does)."""
    return context.dns is not None and context.dns.manages_records


_NOT_SENT_AS_IS = re.compile(r'[^\x20-\x7e]|["\\]')
"""What JSON would not send as one byte (quotes, backslashes, controls, anything not ASCII)."""


def waiting_note(waiting: Mapping[str, str]) -> tuple[int, str]:
    """What GET /status says of a pool's pending VMs waiting on DNS (``waiting``: hostname ->
    why, ``PassReport.dns_waiting``): how many, and the first's reason on one line, its ARNs
    withheld, as printable ASCII (``"`` as ``'``, anything else JSON would escape as ``?``), cut
    to ``STATUS_REASON_CHARACTERS`` (the whole is GET /vm's); (0, "") when none. A byte a
    character: /status's widest answer counts 120 at every pool (answer_sizes.status_answer)."""
    if not waiting:
        return 0, ""
    reason = " ".join(without_arns(next(iter(waiting.values()))).split()).replace('"', "'")
    reason = _NOT_SENT_AS_IS.sub("?", reason)
    if len(reason) > STATUS_REASON_CHARACTERS:
        reason = reason[:STATUS_REASON_CHARACTERS - 3] + "..."
    return len(waiting), reason


def _refusals(record: VMRecord, noted: str) -> tuple[int, float] | None:
    """The refusals in a row of the VM's name (their count, the time of the last) noted on its
    record (``REFUSED_NOTE``) for the addresses ``noted``; None when none (or for other addresses)."""
    parts = str(record.raw.get(REFUSED_NOTE) or "").split(" ", 2)
    if len(parts) != 3 or parts[2] != noted:
        return None
    try:
        return max(1, int(parts[0])), float(parts[1])
    except ValueError:
        return None


def check_ready(context: PassContext, record: VMRecord, vm: VMInfo, unpublished: str = "") -> Readiness:
    """The pending VM's readiness: its address records published (when the pool's plugin manages
    records: ``publish_pending`` gave ``unpublished``, why they are not), then the provider's check."""
    plugin = context.dns
    if plugin is None or not plugin.manages_records:
        return context.provider.check_ready(context.pool, vm)
    if unpublished:
        return Readiness(False, unpublished)
    readiness = context.provider.check_ready(context.pool, vm)
    if readiness.ready and not vm.ip:
        return Readiness(False, "no IP address to publish in DNS yet")
    return readiness


def _wanted(vm: VMInfo) -> tuple[tuple[str, ...], str]:
    """The addresses a VM's records are to hold (the first usable of each family:
    ``chosen_addresses``) and their note (``address_text``). A VM with none that can be published
    gives its primary address alone, which the plugin refuses with the reason the VM waits."""
    chosen = chosen_addresses(vm.candidate_addresses())
    if chosen:
        return tuple(chosen[rdtype] for rdtype in ADDRESS_TYPES if rdtype in chosen), address_text(chosen)
    return ((vm.ip,), vm.ip) if vm.ip else ((), "")


def _published_there(record: VMRecord, plugin: DnsPlugin, fqdn: str, noted: str) -> bool:
    """Whether the record (as read) notes ``noted`` published under ``fqdn`` by ``plugin``."""
    return record.raw.get("dns_published") == noted and not _published_elsewhere(record, plugin, fqdn) \
        and record.raw.get("dns_name") is not None


def _published_elsewhere(record: VMRecord, plugin: DnsPlugin, fqdn: str) -> bool:
    """Whether the record (as read) notes a record under another name or by another entry. Names
    differing in case only are one DNS name (as dns_claim.lua compares them): a domain rewritten
    in capitals moves no record."""
    name = record.raw.get("dns_name")
    return (name is not None and str(name).lower() != fqdn.lower()) \
        or record.raw.get("dns_plugin") not in (None, plugin.name)


def _publish_many(context: PassContext, plugin: DnsPlugin,
                  publications: dict[str, tuple[Sequence[str], str, DnsClaim]],
                  refused_names: set[str] | None = None) -> dict[str, str]:
    """Send the address records of VMs (hostname -> the addresses, their note, the claim the pass
    holds on their publication), ``RECORDS_PER_CALL`` to a call of the plugin, in that order, then
    note them published unless another pass claimed since (then the next pass sends what it sees
    again). Each VM's failure is counted and logged as its own; the VMs whose name the service
    refused alone are added to ``refused_names``. Returns, per VM not published, why."""
    reasons: dict[str, str] = {}
    sent: dict[str, tuple[int, str]] = {}
    hostnames = list(publications)
    for start in range(0, len(hostnames), RECORDS_PER_CALL):
        chunk = hostnames[start:start + RECORDS_PER_CALL]
        records = [(hostname, publications[hostname][0], publications[hostname][2].published) for hostname in chunk]
        what = f"create {plugin.fqdn(chunk[0])}" if len(chunk) == 1 else f"create {len(chunk)} records"
        try:
            outcome = context.dns_call(what, functools.partial(plugin.create_many, records, REFUSALS_PER_CALL),
                                       plugin.name)
        except DnsError as error:  # the service did not answer, or refused the entry: every VM of the call
            outcome = dict.fromkeys(chunk, error)
        for hostname in chunk:
            if hostname not in outcome:
                reasons[hostname] = (f"DNS record not created: not sent, the DNS service refused "
                                     f"{REFUSALS_PER_CALL} other names of its update")
                continue
            failure = outcome[hostname]
            if failure is not None:
                alone = not isinstance(failure, DnsEntryRejected) or hostname in failure.refused_alone
                if refused_names is not None and isinstance(failure, DnsRejected) and alone \
                        and all(_publishable(address) for address in publications[hostname][0]):
                    refused_names.add(hostname)  # by the service (not an address no record can hold)
                context.dns_failed(hostname, "record creation", failure)
                reasons[hostname] = f"DNS record not created: {failure}"
                continue
            sent[hostname] = (publications[hostname][2].version, publications[hostname][1])
    for hostname in _left_service(context, plugin, list(sent)):
        reasons[hostname] = "left service while its DNS record was created"
        del sent[hostname]
    confirmed = set(context.store.confirm_dns(sent)) if sent else set()
    for hostname in sent:
        if hostname not in confirmed:
            reasons[hostname] = "DNS record not created: another pass published the VM's address meanwhile"
            continue
        context.checkpoint("dns_published")
    return reasons


MOVED_RECORDS_PER_PASS = 10
"""VMs in service whose records one pass moves at most to the name the config gives now (each a
delete and a create): a changed domain moves a pool's VMs over a few passes, not in one."""


def follow_addresses(context: PassContext) -> None:
    """Ready and running VMs whose addresses changed (a reboot onto another DHCP lease, a
    migration, an IPv6 address configured) have GET /vm's ``ip`` follow their primary address
    (``reachable_ip``), with or without DNS, and, when the pool's plugin manages records, their records published
    again, so that their name never leads to a former address (soon another machine's). The pass
    compares what the provider shows it (every VM at a whole comparison, the changed ones
    otherwise) with what was noted: the ``ip`` with the pass's last writes (``end_pass``), the
    records in one round trip that claims the changed publications (``Store.claim_dns``: a
    stale pass never sends an older address than one a later look claimed). DNS is called only
    for those, and per record type only for a family whose chosen address changed. A VM whose
    record is published under another name or by another entry (the pool's ``dns_plugin`` or
    the entry's domain changed) has that record deleted and its new one published
    (``MOVED_RECORDS_PER_PASS`` a pass). A ready VM whose new addresses could not be published
    leaves service (it would be handed out under a name leading elsewhere); a running VM, its
    user's, keeps its record, published again by the next pass that sees it. An address that
    cannot be published (not an IP address, link-local: ``record_address``) is not: a VM
    reporting no other keeps its record and its ``ip``."""
    plugin = context.dns if context.dns is not None and context.dns.manages_records else None
    states: dict[str, str] = {}
    ips: dict[str, str] = {}
    seen: dict[str, tuple[str, str]] = {}
    sent: dict[str, tuple[str, ...]] = {}
    refusals: dict[str, tuple[int, float]] = {}
    noted_refused: set[str] = set()
    for state in ("ready", "running"):
        for hostname in context.snapshot.hostnames(state):
            vm = context.inventory.get(hostname)
            if vm is None or not vm.powered_on:
                continue
            record = context.snapshot.records.get(hostname) or context.late_records.get(hostname)
            # A record read (running VMs) is compared here; the others in Redis, with the pass's
            # last writes (a steady pass's ready VMs change nothing there).
            ip = reachable_ip(vm)
            if ip and (record is None or record.ip != ip):
                ips[hostname] = ip
            addresses, noted = _wanted(vm)
            if plugin is None or not noted or not _publishable(addresses[0]):
                continue  # nothing it reports can be published: it keeps its record
            fqdn = plugin.fqdn(hostname)
            if record is not None and _published_there(record, plugin, fqdn, noted):
                continue
            refused = _refusals(record, noted) if record is not None else None
            if refused is not None:
                if _backing_off(context, refused):
                    continue  # its name refused alone a moment ago: sent again after its back-off
                refusals[hostname] = refused
            if record is not None and record.raw.get(REFUSED_NOTE):
                noted_refused.add(hostname)
            states[hostname], seen[hostname], sent[hostname] = state, (fqdn, noted), addresses
    context.report.addresses_seen.update(ips)
    if plugin is None or not seen:
        return
    claims = context.store.claim_dns(context.now, plugin.name, seen, plugin.domain)
    moved = [hostname for hostname, claim in claims.items() if claim.version == DNS_ELSEWHERE][:MOVED_RECORDS_PER_PASS]
    claims.update(_moved(context, plugin, moved, seen))
    claimed = {hostname: claims[hostname]
               for hostname in _refused_last([name for name, claim in claims.items() if claim.version > 0], refusals)}
    for hostname, claim in claimed.items():
        logger.info("VM's address or name changed: its DNS record is published again", extra={
            "pool": context.pool.name, "hostname": hostname, "fqdn": seen[hostname][0],
            "addresses": seen[hostname][1], "published": claim.published})
    refused_now: set[str] = set()
    reasons = _publish_many(context, plugin, {hostname: (sent[hostname], seen[hostname][1], claim)
                                              for hostname, claim in claimed.items()}, refused_now)
    # A running VM's name refused alone waits out the same back-off as a pending one's (before,
    # each pass sent it again first, and once REFUSALS_PER_CALL such names were refused the
    # others whose address changed were never sent: their names led to their former addresses).
    _note_refusals(context, {hostname: seen[hostname][1] for hostname in claimed}, refusals, refused_now,
                   noted_refused, reasons)
    for hostname in claimed:
        reason = reasons.get(hostname, "")
        noted = seen[hostname][1]
        change = f"its DNS name changed to {seen[hostname][0]}" if hostname in moved else \
            f"its address changed to {noted}"
        if reason and states[hostname] == "ready":  # conditional: not if it left ready meanwhile
            context.take_out_of_service(hostname, "ready", f"{change}: {reason}")
        elif reason:
            context.report.errors.append(f"DNS record of {hostname} not published again: {reason}")


def _moved(context: PassContext, plugin: DnsPlugin, hostnames: list[str],
           seen: dict[str, tuple[str, str]]) -> dict[str, DnsClaim]:
    """Delete the records of VMs in service published under another name or by another entry
    (each by the entry that published it, under its name: ``withdraw_dns``), then claim their
    publication under the pool's name now. A pass killed in between leaves notes the next pass
    acts on alike: the delete is sent again (a name without a record is no error), or, the notes
    gone, the new record claimed. A delete that fails leaves the VM as it was (its old record,
    noted), for the next pass. Returns the claims."""
    if not hostnames:
        return {}
    records = context.store.records(hostnames)
    for hostname in hostnames:
        logger.info("VM's DNS record moves to the name its pool has now", extra={
            "pool": context.pool.name, "hostname": hostname, "fqdn": seen[hostname][0],
            "former": records[hostname].raw.get("dns_name") if hostname in records else None})
        context.withdraw_dns(records.get(hostname))
    return context.store.claim_dns(context.now, plugin.name, {hostname: seen[hostname] for hostname in hostnames},
                                   plugin.domain)


def reachable_ip(vm: VMInfo) -> str | None:
    """The one address GET /vm gives for the VM: its primary address, or when that is one no user
    can reach it at (a link-local ``fe80::`` address VMware Tools may report as primary), the first
    of its other addresses that is; None when it reports none (its ``ip`` then stays)."""
    return next((ip for ip in vm.candidate_addresses() if _publishable(ip)), None)


def _publishable(ip: str) -> bool:
    """Whether an address can be a VM's record (``record_address`` refuses it otherwise)."""
    try:
        record_address("", ip)
    except DnsRejected:
        return False
    return True


IN_SERVICE = ("pending", "ready", "running")


def _left_service(context: PassContext, plugin: DnsPlugin, hostnames: list[str]) -> list[str]:
    """Of the VMs whose records were just created, those that have left service since the pass's
    snapshot was read (a stale pass: others made one ready, its user gave it back, and it was
    withdrawn, perhaps destroyed, before this create), read in one round trip. Their records are
    withdrawn again, as when they left: deleted now, or noted for later passes when DNS fails.
    Nothing else would delete them."""
    if not hostnames:
        return []
    current = context.store.records(hostnames)
    gone = [hostname for hostname in hostnames
            if hostname in current and current[hostname].state not in IN_SERVICE]
    for hostname in gone:  # in service, or its record expired (nothing to note the name on): none
        noted = {"dns_name": plugin.fqdn(hostname), "dns_plugin": plugin.name}
        context.store.update_vm(hostname, **noted)  # the withdraw may have cleared it
        context.withdraw_dns(dataclasses.replace(current[hostname], raw={**current[hostname].raw, **noted}))
        logger.info("DNS record of a VM that left service meanwhile withdrawn again",
                    extra={"pool": context.pool.name, "hostname": hostname, "state": current[hostname].state})
    return gone


LEFT_RECORDS_PER_PASS = 50
"""Records of destroyed VMs one pass deletes at most: an outage's backlog goes in a few passes
without holding one pass (each delete is a call to the DNS service)."""


LEFT_FAILURES_PER_PASS = 5
"""Failed deletes after which a pass leaves the rest of the backlog to the next passes: a
refusing service (Route 53: 5 calls a second for the whole account) is not sent 50 a pass."""


def delete_left_records(context: PassContext) -> None:
    """Delete the address records of VMs destroyed while DNS failed (``dns_withdrawal``: each by
    the entry that published it, within the pass's DNS budget, ``LEFT_FAILURES_PER_PASS``
    failures at most). Only a record whose VM is destroyed and still notes it (``dns_name``) is
    deleted: a VM still being destroyed is left to the completed step, and a name whose record is
    gone (past ``data_ttl``) or taken by a new VM is forgotten, never deleted from under its new
    owner."""
    if context.dns is None and context.dns_plugins is None:
        return  # no entry could have published them (a pool whose dns_plugin was removed has one)

    def delete(plugin: DnsPlugin, names: list[tuple[str, str]], max_refusals: int) -> dict[str, DnsError | None]:
        # One call for the entry's names (dynamic-dns: 50 deletes in one update); a name the
        # service refuses alone fails alone, a failure of the service or entry fails them all.
        return context.dns_call(f"delete {len(names)} records",
                                functools.partial(plugin.delete_many, names, max_refusals), plugin.name)

    # context.publisher logs and counts each record whose entry is gone, and drops its notes.
    done = withdraw_left(context.store, context.pool.name, context.now, context.publisher, delete,
                         context.dns_failed, LEFT_RECORDS_PER_PASS, LEFT_FAILURES_PER_PASS)
    if done.read == LEFT_RECORDS_PER_PASS and not done.failures:
        # A full batch gone well: more are likely waiting, each a name leading to an address DHCP
        # may give another machine. The pool is looked at again soon, not at the next tick (a
        # batch a minute). A pass that met failures leaves the rest to the tick: no retry storm.
        context.report.followups += 1
    if done.read:
        context.checkpoint("dns_left_deleted")
