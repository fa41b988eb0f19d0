"""Route 53: A (or AAAA) records in a hosted zone (typically a private zone attached to the VMs' VPC).

Config (a ``:dns_configs:`` entry with ``dns_class: route53``)::

    hosted_zone_id: Z0123456789ABC   # required: the zone that holds ``domain``
    ttl: 60                           # seconds
    region:                           # boto3's default when unset
    timeout: 5                        # seconds per API call (connect and read), at most 10

Each change is one ChangeResourceRecordSets call (UPSERT / DELETE; a pass's creates and deletes
go 50 VMs to one: ``create_many``, ``delete_many``); a lookup is one
ListResourceRecordSets call starting at the name. A create UPSERTs the families whose address
changed; one that drops vmpool's address of a family (a VM that lost its IPv6 address, or went
from IPv4 to IPv6) reads the name's record sets first, to delete that one.
Credentials are the Lambda role's.

A call that gets no answer is not tried again: the pass stops calling DNS after it, so a silent
endpoint costs a pass one ``timeout`` (botocore's standard retries made four tries of one call,
27 s at ``timeout: 5``). A throttled call (Route 53 allows 5 requests a second per account) is
tried again up to ``THROTTLED_RETRIES`` times after a jittered backoff, while the call has taken
less than ``timeout``.
"""

import functools
import random
import re
import time
from dataclasses import dataclass
from typing import Annotated, Any, Callable, Optional, Sequence

from chalicelib import aws_clients
from chalicelib.clock import Clock, SystemClock
from chalicelib.config_fields import Str, bounded, checked_by, invalid, show, string
from chalicelib.dns.base import (
    ADDRESS_TYPES,
    DnsConfig,
    DnsEntryRejected,
    DnsError,
    DnsPlugin,
    DnsRejected,
    DnsSettings,
    DnsTimeout,
    DnsUnavailable,
    record_changes,
)

THROTTLED_RETRIES = 3
"""Tries after the first of a call Route 53 throttled (an answer: it comes at once)."""
THROTTLED_BACKOFF_SECONDS = 0.5
"""The longest wait before the first retry; it doubles with each (0.5, 1, 2 s, with full jitter)."""

_HOSTED_ZONE_ID = re.compile(r"^(/hostedzone/)?[A-Z0-9]{1,32}\Z")


def hosted_zone_id(value: Any) -> str:
    """A hosted zone's ID as Route 53 writes it (``Z0123456789ABC`` or ``/hostedzone/Z...``). It
    is written into the reconcile role's IAM policy (infra/sync_config.py), so nothing else
    passes: ``*`` there granted every zone of the account."""
    text = string(value)
    if not _HOSTED_ZONE_ID.match(text):
        invalid(f"must be a Route 53 hosted zone ID (upper-case letters and digits), got {show(text[:40])}")
    return text


@dataclass(frozen=True, kw_only=True)
class Route53Settings(DnsSettings):
    """A ``route53`` entry: the hosted zone, the records' TTL, the API's region and timeout."""

    hosted_zone_id: Annotated[str, checked_by(hosted_zone_id)]
    ttl: Annotated[int, bounded(1, 604800)] = 60
    region: Optional[Str] = None
    timeout: DnsTimeout = 5.0


ENTRY_REFUSALS = frozenset({
    "NoSuchHostedZone", "AccessDenied", "AccessDeniedException", "InvalidClientTokenId",
    "UnrecognizedClientException", "SignatureDoesNotMatch", "ExpiredToken", "ExpiredTokenException",
})
"""Route 53 refusals of every change of the entry (its hosted zone, the role's permissions or
credentials), not of one change: DnsEntryRejected."""

DENIALS = frozenset({"AccessDenied", "AccessDeniedException"})
"""Of ``ENTRY_REFUSALS``, those IAM may answer for some names and not others (a policy's
``route53:ChangeResourceRecordSetsNormalizedRecordNames``, ``...RecordTypes`` or ``...Actions``
condition): a batch denied is sent again a name a call (``_one_by_one``)."""


DENIED_ALONE_BEFORE_ENTRY = 5
"""Names of a denied batch denied one by one, none allowed, after which the denial is the
entry's (``_one_by_one``), whatever ``max_refusals`` the caller gave (none for a withdrawal)."""


class _Denied(DnsEntryRejected):
    """AccessDenied to a change: the role's, or (IAM conditions on record names, types or actions)
    the change's names'. ``_one_by_one`` tells which for a batch."""

_LEADING_TYPES = frozenset({"A", "AAAA", "CNAME"})
"""Record types that make a name lead somewhere (a new VM's name must hold none of them)."""


class Route53Dns(DnsPlugin):
    """A (IPv4) and AAAA (IPv6) records in one Route 53 hosted zone."""

    def __init__(self, config: DnsConfig, client: Any = None, clock: Clock | None = None,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        super().__init__(config)
        settings = config.settings
        assert isinstance(settings, Route53Settings), "the registry builds Route53Dns for route53 entries only"
        self.zone_id = settings.hosted_zone_id.split("/")[-1]  # "/hostedzone/Z..." or "Z..."
        self.ttl = settings.ttl
        self._region = settings.region
        self._timeout = settings.timeout
        self._client = client
        self._clock = clock or SystemClock()
        self._sleep = sleep

    @property
    def client(self) -> Any:
        if self._client is None:
            import boto3
            from botocore.config import Config as BotoConfig

            self._client = boto3.client(
                "route53", region_name=self._region,
                config=BotoConfig(connect_timeout=self._timeout, read_timeout=self._timeout,
                                  # One try: retries of throttling are _call's (not of timeouts).
                                  retries={"mode": "standard", "total_max_attempts": 1}),
            )
        return self._client

    def _call(self, what: str, method: str, answer_key: str, entry_wide: bool = True, **arguments: Any) -> Any:
        """One API call; botocore's failures become typed DnsErrors naming ``what``: throttling,
        a server error, no answer, or one that is not Route 53's (an HTML page from a proxy or
        an outage, which botocore cannot parse or reads as an empty answer: ``answer_key``, what
        every answer of ``method`` holds, is missing) are DnsUnavailable, worth retrying; the
        rest (denied, no such zone, an invalid change) DnsRejected. Before, a page botocore
        could not parse went up as an untyped exception and failed the pass, and an HTML page
        with status 200 read as "no record here". Throttling is tried again (module docstring)."""
        failure: aws_clients.AwsCallFailed
        started = self._clock.monotonic()
        for retry in range(THROTTLED_RETRIES + 1):
            try:
                answer = aws_clients.call(f"route53 {what}", getattr(self.client, method), **arguments)
            except aws_clients.AwsCallFailed as error:
                failure = error
            else:
                if isinstance(answer, dict) and answer_key in answer:
                    return answer
                failure = aws_clients.AwsCallFailed(f"route53 {what}", aws_clients.UNREADABLE_ANSWER, "unreadable")
            backoff = random.uniform(0, THROTTLED_BACKOFF_SECONDS * 2 ** retry)
            if (failure.metric_key != "throttled" or retry == THROTTLED_RETRIES
                    or self._clock.monotonic() - started + backoff >= self._timeout):
                break
            self._sleep(backoff)
        # Throttling, PriorRequestNotComplete, a 5xx: aws_clients' classes, not "refused".
        if failure.metric_key != "refused":
            raise DnsUnavailable(str(failure)) from None
        # A new name's lookup is never the entry's refusal (``entry_wide``): as dynamic-dns's, it
        # stops no change of the pass (a role may lack ListResourceRecordSets alone).
        if entry_wide and failure.code in DENIALS:
            raise _Denied(str(failure)) from None
        entry_refused = entry_wide and failure.code in ENTRY_REFUSALS
        raise (DnsEntryRejected if entry_refused else DnsRejected)(str(failure)) from None

    def _current(self, fqdn: str) -> list[dict[str, Any]]:
        """The name's A and AAAA record sets as Route 53 holds them (sorted by type: A first)."""
        found = self._call(f"look up {fqdn}", "list_resource_record_sets", "ResourceRecordSets",
                           HostedZoneId=self.zone_id, StartRecordName=fqdn, StartRecordType="A",
                           MaxItems=str(len(ADDRESS_TYPES)))
        return [dict(record) for record in found.get("ResourceRecordSets", [])
                if record["Name"].rstrip(".").lower() == fqdn.lower() and record["Type"] in ADDRESS_TYPES]

    def _change(self, what: str, changes: list[tuple[str, dict[str, Any]]]) -> None:
        self._call(what, "change_resource_record_sets", "ChangeInfo", HostedZoneId=self.zone_id, ChangeBatch={
            "Comment": "vmpool", "Changes": [{"Action": action, "ResourceRecordSet": record}
                                             for action, record in changes],
        })

    def create_or_replace(self, hostname: str, addresses: str | Sequence[str], published: str | None = None) -> None:
        fqdn = self.fqdn(hostname)
        replaced, deleted = record_changes(f"route53 create {fqdn}", addresses, published)
        upserts = [("UPSERT", {"Name": fqdn, "Type": rdtype, "TTL": self.ttl, "ResourceRecords": [{"Value": address}]})
                   for rdtype, address in replaced.items()]  # a family whose address did not change is not sent
        if not deleted:
            if upserts:
                self._change(f"create {fqdn}", upserts)  # no record of a family gone is ours: one call
            return
        # The name held (or may hold) vmpool's address of a family the VM no longer has: deleted in
        # the same change, as the exact copy Route 53 holds. A change in between fails it
        # (InvalidChangeBatch): read again once.
        for attempt in (1, 2):
            others = [("DELETE", record) for record in self._current(fqdn) if record["Type"] in deleted]
            if not upserts and not others:
                return
            try:
                self._change(f"create {fqdn}", [*upserts, *others])
                return
            except DnsRejected:
                if attempt == 2 or not others:
                    raise

    def create_many(self, records: Sequence[tuple[str, str | Sequence[str], str | None]],
                    max_refusals: int | None = None) -> dict[str, DnsError | None]:
        """The creates in one ChangeResourceRecordSets call (it takes up to 1,000 changes; the
        manager sends 50 VMs a call, at most 200: an A and an AAAA UPSERT each, and the DELETE of a
        family a VM no longer has, read first as ``create_or_replace`` does): 200 VMs are 4 calls of
        the account's 5 a second, not 200. A batch Route 53 refuses (InvalidChangeBatch: one name
        a CNAME holds, one record changed between the read and the change) is sent again one VM a
        call (``create_or_replace``)."""
        outcome: dict[str, DnsError | None] = {}
        changes: list[tuple[str, dict[str, Any]]] = []
        batched: list[tuple[str, str | Sequence[str], str | None]] = []
        alone: dict[str, Callable[[], None]] = {}  # each VM's change on its own (an AccessDenied batch)
        for hostname, addresses, published in records:
            fqdn = self.fqdn(hostname)
            try:
                replaced, deleted = record_changes(f"route53 create {fqdn}", addresses, published)
                others = [("DELETE", record) for record in self._current(fqdn) if record["Type"] in deleted] \
                    if deleted else []
            except (DnsUnavailable, DnsEntryRejected):
                raise
            except DnsError as error:
                outcome[hostname] = error
                continue
            upserts = [("UPSERT", {"Name": fqdn, "Type": rdtype, "TTL": self.ttl,
                                   "ResourceRecords": [{"Value": address}]}) for rdtype, address in replaced.items()]
            if not upserts and not others:
                outcome[hostname] = None  # nothing of it to change
                continue
            changes.extend([*upserts, *others])
            batched.append((hostname, addresses, published))
            alone[hostname] = functools.partial(self._change, f"create {fqdn}", [*upserts, *others])
        if not changes:
            return outcome
        what = f"create {self.fqdn(batched[0][0])}" if len(batched) == 1 else f"create {len(batched)} names"
        try:
            self._change(what, changes)
        except _Denied as denial:
            outcome.update(self._one_by_one(denial, alone, max_refusals))
            return outcome
        except (DnsUnavailable, DnsEntryRejected):
            raise
        except DnsRejected:
            outcome.update(super().create_many(batched, max_refusals))
            return outcome
        outcome.update({hostname: None for hostname, _, _ in batched})
        return outcome

    def delete(self, hostname: str, fqdn: str | None = None) -> None:
        # Route 53 deletes only an exact copy of the record set: read them, then delete those. A
        # change in between makes the delete fail (InvalidChangeBatch); read again once.
        fqdn = fqdn or self.fqdn(hostname)
        for attempt in (1, 2):
            current = self._current(fqdn)
            if not current:
                return
            try:
                self._change(f"delete {fqdn}", [("DELETE", record) for record in current])
                return
            except DnsRejected:
                if attempt == 2:
                    raise

    def delete_many(self, names: Sequence[tuple[str, str | None]],
                    max_refusals: int | None = None) -> dict[str, DnsError | None]:
        """Each name's record sets are read (one call a name, as ``delete``), then all deleted in
        one ChangeResourceRecordSets call (it takes up to 1,000 changes; 50 names are at most 100):
        n + 1 calls of the account's 5 a second, not 2n. A batch Route 53 refuses (one record
        changed in between: InvalidChangeBatch) is sent again one name a call (``delete``)."""
        outcome: dict[str, DnsError | None] = {}
        changes: list[tuple[str, dict[str, Any]]] = []
        batched: list[tuple[str, str]] = []
        alone: dict[str, Callable[[], None]] = {}  # each name's delete on its own (an AccessDenied batch)
        for hostname, fqdn in names:
            fqdn = fqdn or self.fqdn(hostname)
            try:
                current = self._current(fqdn)
            except (DnsUnavailable, DnsEntryRejected):
                raise
            except DnsError as error:
                outcome[hostname] = error
                refused = sum(1 for failure in outcome.values() if failure is not None)
                if max_refusals is not None and refused >= max_refusals:
                    return outcome
                continue
            if current:
                changes.extend(("DELETE", record) for record in current)
                batched.append((hostname, fqdn))
                alone[hostname] = functools.partial(self._change, f"delete {fqdn}",
                                                    [("DELETE", record) for record in current])
            else:
                outcome[hostname] = None  # nothing to delete
        if not changes:
            return outcome
        try:
            self._change(f"delete {len(batched)} names", changes)
        except _Denied as denial:
            refused = sum(1 for error in outcome.values() if error is not None)
            outcome.update(self._one_by_one(denial, alone, None if max_refusals is None else max_refusals - refused))
            return outcome
        except (DnsUnavailable, DnsEntryRejected):
            raise
        except DnsRejected:
            refused = sum(1 for error in outcome.values() if error is not None)
            left = None if max_refusals is None else max_refusals - refused
            if left is None or left > 0:
                outcome.update(super().delete_many(batched, left))
            return outcome
        outcome.update({hostname: None for hostname, _ in batched})
        return outcome

    @staticmethod
    def _one_by_one(denial: _Denied, alone: dict[str, Callable[[], None]],
                    max_refusals: int | None) -> dict[str, DnsError | None]:
        """A batch IAM denied (``denial``), sent again one VM's change a call (``alone``: hostname ->
        the call): a policy may restrict the role to some record names, types or actions
        (``route53:ChangeResourceRecordSetsNormalizedRecordNames``...), and the names it allows
        are then published or deleted, each denied one failing alone (DnsRejected, its VM's
        reason). After ``max_refusals`` refused names the rest is not sent (absent from the
        answer). When no name went through (every one tried denied: the role may change nothing
        in the zone), the denial is the entry's: raised, so the pass sends the entry no change more.
        A batch of one name is that name's call: its denial is the entry's, as before."""
        if len(alone) < 2:
            raise denial
        outcome: dict[str, DnsError | None] = {}
        refused = 0
        for hostname, send in alone.items():
            if max_refusals is not None and refused >= max_refusals:
                break
            if refused >= DENIED_ALONE_BEFORE_ENTRY and None not in outcome.values():
                raise denial  # unbounded callers too (a withdrawal): not 50 denied calls
            try:
                send()
            except _Denied as error:
                outcome[hostname], refused = DnsRejected(str(error)), refused + 1
            except (DnsUnavailable, DnsEntryRejected):
                raise
            except DnsRejected as error:
                outcome[hostname], refused = error, refused + 1
            else:
                outcome[hostname] = None
        if None not in outcome.values():
            raise denial
        return outcome

    def addresses(self, hostname: str) -> list[str]:
        # One call lists the record sets at the name (sorted by name, then type): A, AAAA and
        # CNAME each lead users somewhere. 20 covers weighted or latency sets of one name.
        fqdn = self.fqdn(hostname)
        listed = self._call(f"look up {fqdn}", "list_resource_record_sets", "ResourceRecordSets", entry_wide=False,
                            HostedZoneId=self.zone_id, StartRecordName=fqdn, MaxItems="20")
        found: list[str] = []
        for record in listed.get("ResourceRecordSets", []):
            if record["Name"].rstrip(".").lower() != fqdn.lower() or record["Type"] not in _LEADING_TYPES:
                continue
            values = [value["Value"] for value in record.get("ResourceRecords", [])] or ["(alias)"]
            suffix = " (CNAME)" if record["Type"] == "CNAME" else ""
            found.extend(value.rstrip(".") + suffix for value in values)
        return found


__all__ = ["Route53Dns", "Route53Settings", "DnsError"]
