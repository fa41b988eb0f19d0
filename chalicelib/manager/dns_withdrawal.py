"""Deleting the DNS records of destroyed VMs left behind (``Store.note_dns_left``): the one loop
both a reconcile pass (``dns_records.delete_left_records``) and the look at a removed pool whose
provider is gone (``providerless.withdraw_records``, which has no ``PassContext``) run.

Each record is deleted by the ``:dns_configs:`` entry that published it, the names of an entry
``DNS_DELETES_PER_CALL`` to a call (``delete_many``: one update with ``dynamic-dns``). Only a
record whose VM is destroyed and still notes it (``dns_name``) is deleted: a VM still being
destroyed is left to the pass that destroys it, and a name whose record is gone (past
``data_ttl``) or taken by a new VM is forgotten, never deleted from under its new owner.

A failure never leaves a record unnoted: a name the service refused, or one whose entry it
refused as a whole, goes to the back of the line (a record it keeps refusing to delete must not
keep the ones behind it waiting until its VM's record expires, a week by default); a name not
sent (the service did not answer, or too many failures this look) waits where it is. Once the
service did not answer, nothing more is sent; an entry refused as a whole stops that entry only
(before, it stopped every entry: the records another entry published stayed in the zone while
the oldest records were a refused entry's).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

from chalicelib.dns.base import DnsEntryRejected, DnsError, DnsPlugin
from chalicelib.manager.context import DNS_DELETES_PER_CALL
from chalicelib.store import Store, VMRecord

Publisher = Callable[[VMRecord], "DnsPlugin | None"]
"""The plugin of the entry that published a VM's record; None when that entry is gone from the
config (or manages no records now): the lookup then drops the VM's notes of it (nothing can
delete it) and says so as its caller does (``PassContext.publisher``)."""
Deleter = Callable[[DnsPlugin, list[tuple[str, str]], int], "dict[str, DnsError | None]"]
"""Sends one ``delete_many`` of an entry's (hostname, fqdn) pairs, with the refusals it may meet
before it sends the rest no more; raises DnsError when the service or the entry failed as a
whole (``PassContext.dns_call`` within a pass: its DNS budget)."""
Failed = Callable[[str, str, DnsError], None]
"""Told of each failure: (a hostname, what failed, the error)."""


@dataclass
class Withdrawn:
    """What one withdrawal did."""

    read: int = 0
    """Names read from the pool's note of records left (at most the budget)."""
    deleted: list[str] = field(default_factory=list)
    """The hostnames whose records were deleted."""
    left: list[str] = field(default_factory=list)
    """The hostnames whose records are still to delete (failed or not sent): noted for later."""
    unreachable: list[str] = field(default_factory=list)
    """The names (fqdns) of records whose entry is gone from the config: they stay in the zone."""
    failures: int = 0


def withdraw_left(store: Store, pool: str, now: float, publisher: Publisher, delete: Deleter, failed: Failed,
                  budget: int, max_failures: int, given_up: Sequence[str] = ()) -> Withdrawn:
    """Delete the records of the pool's oldest ``budget`` VMs noted as left (``Store.dns_left``)
    and of the VMs ``given_up`` (just dropped, not noted yet), ``budget`` names sent at most,
    stopping after ``max_failures`` failures. Every name not deleted stays (or is) noted for a
    later look; a name with nothing to delete is forgotten."""
    left = store.dns_left(pool, budget)
    noted = set(left)
    hostnames = list(dict.fromkeys([*left, *given_up]))
    result = Withdrawn(read=len(left))
    if not hostnames:
        return result
    records = store.records(hostnames)
    forget: list[str] = []
    by_entry: dict[str, tuple[DnsPlugin, list[tuple[str, str]]]] = {}
    for hostname in hostnames:
        record = records.get(hostname)
        if record is not None and record.state == "completed":
            continue  # withdraw_dns retries it while the VM is destroyed
        if record is None or record.state != "destroyed" or not record.raw.get("dns_name"):
            forget.append(hostname)  # nothing published, or its record expired: nothing to delete
            continue
        plugin = publisher(record)
        if plugin is None:
            result.unreachable.append(str(record.raw["dns_name"]))
            forget.append(hostname)
            continue
        by_entry.setdefault(plugin.name, (plugin, []))[1].append((hostname, str(record.raw["dns_name"])))
    sent = 0
    unavailable = False
    for plugin, names in by_entry.values():
        start, refused = 0, False
        while start < len(names):
            chunk = names[start:start + min(DNS_DELETES_PER_CALL, budget - sent)]
            if unavailable or refused or not chunk or result.failures >= max_failures:
                # Not sent this look: the entry's names from here on wait for the next.
                result.left.extend(hostname for hostname, _ in names[start:])
                break
            start += len(chunk)
            sent += len(chunk)
            try:
                outcome = delete(plugin, chunk, max_failures - result.failures)
            except DnsError as error:
                # The service did not answer, or refused the entry: counted once, not once a name.
                failed(chunk[0][0], f"deletion of {len(chunk)} records", error)
                result.failures += 1
                refused = isinstance(error, DnsEntryRejected)
                unavailable = not refused
                if refused:  # the entry's own: its names to the back, the other entries go on
                    for hostname, _ in chunk:
                        store.note_dns_left(pool, hostname, now)
                outcome = {}
            for hostname, fqdn in chunk:
                failure = outcome.get(hostname)
                if hostname in outcome and failure is None:
                    # Only if the notes still name this record: one published again is never forgotten.
                    store.forget_dns(hostname, fqdn, str(records[hostname].raw.get("dns_plugin") or ""))
                    result.deleted.append(hostname)
                    forget.append(hostname)
                    continue
                result.left.append(hostname)
                if failure is not None:
                    failed(hostname, "record deletion", failure)
                    result.failures += 1
                    store.note_dns_left(pool, hostname, now)  # to the back of the line
    for hostname in result.left:
        if hostname not in noted:
            store.note_dns_left(pool, hostname, now)
    store.forget_dns_left(pool, forget)
    return result
