"""Route 53: A (or AAAA) records in a hosted zone (typically a private zone attached to the VMs' VPC).

Config (a ``:dns_configs:`` entry with ``dns_class: route53``)::

    hosted_zone_id: Z0123456789ABC   # required: the zone that holds ``domain``
    ttl: 60                           # seconds
    region:                           # boto3's default when unset
    timeout: 5                        # seconds per API call (connect and read), at most 10

Each change is one ChangeResourceRecordSets call (UPSERT / DELETE; a pass's creates and deletes
go 50 VMs to one: ``create_many``, ``delete_many``); names are read (a pass's new names, the
names it withdraws) by listing the zone's record sets from the first name not read yet, 300 a
ListResourceRecordSets call (``_record_sets``): a few calls for 50 names, not 50. A create
UPSERTs the families whose address changed; one that drops vmpool's address of a family (a VM
that lost its IPv6 address, or went from IPv4 to IPv6) reads the name's record sets first, to
delete that one.
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
    without_arns,
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

_DENIED_ACTION = re.compile(r"perform:? +([A-Za-z0-9-]+:[A-Za-z0-9]+)")
"""The action IAM's AccessDenied message names (``... is not authorized to perform: route53:X``)."""

LIST_PAGE_RECORDS = 300
"""Record sets a ListResourceRecordSets call lists at most when it reads several names (Route
53's most a page)."""
ONE_NAME_RECORDS = 20
"""... when it reads one name: its A, AAAA and CNAME record sets, weighted or latency sets too."""

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
        reason = self._shown(failure, method)
        # A new name's lookup is never the entry's refusal (``entry_wide``): as dynamic-dns's, it
        # stops no change of the pass (a role may lack ListResourceRecordSets alone).
        if entry_wide and failure.code in DENIALS:
            raise _Denied(reason) from None
        entry_refused = entry_wide and failure.code in ENTRY_REFUSALS
        raise (DnsEntryRejected if entry_refused else DnsRejected)(reason) from None

    def _shown(self, failure: aws_clients.AwsCallFailed, method: str) -> str:
        """The refusal as a VM's reason, GET /vm and the logs show it: IAM's AccessDenied names the
        role's ARN (``User: arn:aws:sts::<account id>:assumed-role/<role>/<function> is not
        authorized to perform: route53:ChangeResourceRecordSets on resource: ...``), which every
        API user reading a VM's ``not_ready_reason`` or ``dns_error`` saw; it is told as its code
        and the action denied. Any other ARN in AWS's message is withheld too."""
        if failure.code in DENIALS:
            action = _DENIED_ACTION.search(failure.detail)
            operation = self.client.meta.method_to_api_mapping.get(method, method)
            denied = action.group(1) if action else f"route53:{operation}"
            return f"{failure.what}: {failure.code}: {denied} denied to the role"
        return without_arns(str(failure))

    def _record_sets(self, what: str, fqdns: Sequence[str], entry_wide: bool = True) -> dict[str, list[dict[str, Any]]]:
        """The record sets (every type) at each of ``fqdns`` (keyed ``_key``), in as few
        ListResourceRecordSets calls as the zone's order allows: a call lists up to
        ``LIST_PAGE_RECORDS`` record sets from the first name not read yet, and so reads every
        name it passes over, held or not. 50 names spread over a zone of 1,000 VMs take a few
        calls (the zone's pages they span), not 50; never more calls than names. Raises as
        ``_call``."""
        held: dict[str, dict[tuple[str, str], dict[str, Any]]] = {_key(fqdn): {} for fqdn in fqdns}
        unread = sorted(held, key=_orders)
        while unread:
            start = unread[0]
            page = self._call(what, "list_resource_record_sets", "ResourceRecordSets", entry_wide=entry_wide,
                              HostedZoneId=self.zone_id, StartRecordName=start,
                              MaxItems=str(LIST_PAGE_RECORDS if len(unread) > 1 else ONE_NAME_RECORDS))
            listed = page.get("ResourceRecordSets", [])
            for record in listed:
                name = _key(record["Name"])
                if name in held:  # a name at a page's end is listed again from its start: kept once
                    held[name][(record["Type"], str(record.get("SetIdentifier", "")))] = dict(record)
            # Read: every name from the start on, up to the page's last (not that one: its other
            # record sets may be on the next page), or to the zone's end.
            last = _key(listed[-1]["Name"]) if listed and page.get("IsTruncated") else None
            unread = [name for name in unread[1:] if not (_sorts_before(start, name, or_equal=True)
                                                          and (last is None or _sorts_before(name, last)))]
        return {name: list(records.values()) for name, records in held.items()}

    def _current(self, fqdn: str, held: dict[str, list[dict[str, Any]]] | None = None) -> list[dict[str, Any]]:
        """The name's A and AAAA record sets as Route 53 holds them (sorted by type: A first), from
        ``held`` (``_record_sets``) when it read the name, else read now."""
        if held is None or _key(fqdn) not in held:
            held = self._record_sets(f"look up {fqdn}", [fqdn])
        return sorted((record for record in held[_key(fqdn)] if record["Type"] in ADDRESS_TYPES),
                      key=lambda record: ADDRESS_TYPES.index(record["Type"]))

    def _read_together(self, fqdns: Sequence[str]) -> dict[str, list[dict[str, Any]]] | None:
        """The record sets of several names (``_record_sets``), or None for fewer than two, or when
        Route 53 refused the listing (not the entry's refusal): each is then read alone
        (``_current``), so a name Route 53 will not read fails alone, as before."""
        if len(fqdns) < 2:
            return None
        try:
            return self._record_sets(f"look up {len(fqdns)} names", fqdns)
        except (DnsUnavailable, DnsEntryRejected):
            raise
        except DnsRejected:
            return None

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
        planned: dict[str, tuple[dict[str, str], list[str]]] = {}
        for hostname, addresses, published in records:
            try:
                planned[hostname] = record_changes(f"route53 create {self.fqdn(hostname)}", addresses, published)
            except DnsRejected as error:
                outcome[hostname] = error
        # The names that drop a family vmpool published are read together (a few calls, not one a name).
        held = self._read_together([self.fqdn(hostname) for hostname, (_, deleted) in planned.items() if deleted])
        for hostname, addresses, published in records:
            if hostname not in planned:
                continue
            fqdn = self.fqdn(hostname)
            replaced, deleted = planned[hostname]
            try:
                others = [("DELETE", record) for record in self._current(fqdn, held) if record["Type"] in deleted] \
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
        """The names' record sets are read together (``_record_sets``: the few pages of the zone
        they span, never more calls than names), then all deleted in one ChangeResourceRecordSets
        call (it takes up to 1,000 changes; 50 names are at most 100): 50 VMs leaving a pool of
        1,000 are a few calls of the account's 5 a second, not 51 (one read a name before). A batch
        Route 53 refuses (one record changed in between: InvalidChangeBatch) is sent again one name
        a call (``delete``)."""
        outcome: dict[str, DnsError | None] = {}
        changes: list[tuple[str, dict[str, Any]]] = []
        batched: list[tuple[str, str]] = []
        alone: dict[str, Callable[[], None]] = {}  # each name's delete on its own (an AccessDenied batch)
        held = self._read_together([fqdn or self.fqdn(hostname) for hostname, fqdn in names])
        for hostname, fqdn in names:
            fqdn = fqdn or self.fqdn(hostname)
            try:
                current = self._current(fqdn, held)
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
                denial.refused_alone = frozenset(outcome)
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
            # Each name tried was denied: the entry's refusal, and each of them its own (it goes
            # after the others next time, so names IAM grants behind them are tried).
            denial.refused_alone = frozenset(outcome)
            raise denial
        return outcome

    def addresses(self, hostname: str) -> list[str]:
        return self._leading(self.fqdn(hostname), self._record_sets(f"look up {self.fqdn(hostname)}",
                                                                    [self.fqdn(hostname)], entry_wide=False))

    def addresses_many(self, hostnames: Sequence[str]) -> dict[str, list[str] | DnsError]:
        """The names' record sets read together (``_record_sets``: a clone pass's 50 new names in a
        few calls, not 50). A refusal (a role without ListResourceRecordSets) is each name's."""
        if len(hostnames) == 1:
            return super().addresses_many(hostnames)
        try:
            held = self._record_sets(f"look up {len(hostnames)} names", [self.fqdn(name) for name in hostnames],
                                     entry_wide=False)
        except DnsUnavailable:
            raise
        except DnsError as error:
            return dict.fromkeys(hostnames, error)
        return {hostname: self._leading(self.fqdn(hostname), held) for hostname in hostnames}

    @staticmethod
    def _leading(fqdn: str, held: dict[str, list[dict[str, Any]]]) -> list[str]:
        """Where the name leads (``addresses``): its A, AAAA and CNAME record sets' values (an alias
        record set as ``(alias)``), in Route 53's order."""
        found: list[str] = []
        for record in held[_key(fqdn)]:
            if record["Type"] not in _LEADING_TYPES:
                continue
            values = [value["Value"] for value in record.get("ResourceRecords", [])] or ["(alias)"]
            suffix = " (CNAME)" if record["Type"] == "CNAME" else ""
            found.extend(value.rstrip(".") + suffix for value in values)
        return found


_ESCAPE = re.compile(r"\\([0-7]{3})")
"""An escape in a name Route 53 answers with: each character other than ``a-z``, ``0-9``, ``-`` and
``_`` as three octal digits (``*`` is ``\\052``, not RFC 1035's decimal ``\\042``)."""


def _key(fqdn: str) -> str:
    """A name as ``_record_sets`` keys it: lower case, no final dot (Route 53 answers with one),
    Route 53's escapes (``_ESCAPE``) read back to their characters, which Route 53 sorts by (a
    dot inside a label stays ``\\.``: never a label's end). Before, a listed name was kept as
    the escaped text: a page ending at ``web\\0521`` (``web*1``) counted ``web0``, listed after it,
    as read, and free."""
    def character(escape: re.Match[str]) -> str:
        char = chr(int(escape.group(1), 8))
        return "\\." if char == "." else char

    return _ESCAPE.sub(character, fqdn.rstrip(".")).lower()


def _orders(name: str) -> tuple[str, str]:
    """Where a name sorts in a ListResourceRecordSets answer: by its labels reversed
    (``test.example.vms.host``), as text. Route 53 compares them with a final dot, moto without:
    the two differ for a label holding a character before ``.`` (``-``: ``host-x`` and ``host``)."""
    reversed_labels = ".".join(reversed(name.split(".")))
    return reversed_labels + ".", reversed_labels


def _sorts_before(first: str, second: str, or_equal: bool = False) -> bool:
    """Whether ``first`` is listed before ``second`` in both orders (``_orders``): a page read a
    name only when either way it did."""
    pairs = zip(_orders(first), _orders(second), strict=True)
    return all(a <= b if or_equal else a < b for a, b in pairs)


__all__ = ["Route53Dns", "Route53Settings", "DnsError"]
