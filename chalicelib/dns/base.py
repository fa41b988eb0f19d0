"""The one interface every DNS plugin implements, and the failures it raises."""

import abc
import functools
import ipaddress
from dataclasses import dataclass
from typing import Annotated, Any, Callable, ClassVar, Iterable, Mapping, Optional, Sequence, TypeVar

from chalicelib.aws_clients import without_arns as without_arns  # where the DNS plugins import it from
from chalicelib.config_fields import Bool, Check, DnsName, SettingsModel, Str, number


class DnsError(Exception):
    """A DNS plugin could not do what was asked. The message is safe to record on a VM and show
    to users (never a key or a secret); ``metric_key`` is the bounded class counted in metrics."""

    metric_key: ClassVar[str] = "error"


class DnsUnavailable(DnsError):
    """The DNS service did not answer (connection refused, timeout, throttled): worth retrying."""

    metric_key = "unavailable"


class DnsRejected(DnsError):
    """The DNS service answered with a refusal (bad key, not authorised, no such zone, invalid
    change): an operator must fix the configuration."""

    metric_key = "rejected"


class DnsEntryRejected(DnsRejected):
    """A refusal of the entry as a whole, not of one name or address: the server refuses the
    entry's TSIG key or does not serve its zone, Route 53 has no such hosted zone or denies the
    call. Every call of the entry meets it until an operator fixes the config, so a pass sends
    that entry nothing more once one call met it (``PassContext.dns_call``)."""

    refused_alone: frozenset[str] = frozenset()
    """Hostnames the service refused one by one before the refusal was taken for the entry's
    (Route 53's AccessDenied to each name of a batch tried alone): their own refusals too, so
    they wait their back-off and go after the others (``dns_records.publish_pending``)."""


TIMEOUT_MAX_SECONDS = 10.0
"""The longest ``timeout`` of a plugin's call. A pass stops calling DNS once a call got no answer
or DNS took ``DNS_SECONDS_PER_PASS`` (15 s) of it, but waits for the call under way: with no
bound, ``timeout: 30`` (connect and read) held a pass of the 60 s reconcile function a minute."""

DnsTimeout = Annotated[float, Check(number(0.1, TIMEOUT_MAX_SECONDS), trusted=number(0.1))]
"""A plugin's ``timeout`` key: seconds of one call, 0.1 to ``TIMEOUT_MAX_SECONDS``. Its upper
bound came after configs were pushed without it: the canonical form a function builds holds the
lower one only, so such a pushed config keeps loading (docs/deploy.md, "Configs a newer release
refuses")."""


@dataclass(frozen=True, kw_only=True)
class DnsSettings(SettingsModel):
    """The keys of a ``:dns_configs:`` entry every plugin has; each plugin's model adds its own."""

    dns_class: Optional[Str] = None
    domain: Optional[DnsName] = None
    check_names: Optional[Bool] = None


@dataclass(frozen=True)
class DnsConfig:
    """A ``:dns_configs:`` entry: which DNS plugin (``dns_class``) manages the records of the
    pools that name it in ``dns_plugin``, for which domain, with the plugin's own settings."""

    name: str
    dns_class: str
    domain: str | None
    settings: DnsSettings
    """Validated with the plugin's model (``registry.settings_model``); DnsSettings for a class
    vmpool does not ship."""


ADDRESS_TYPES = ("A", "AAAA")
"""The record types that hold a VM's addresses: one A record for its IPv4 address and one AAAA
record for its IPv6 address (a dual-stack guest has both); a withdrawal deletes both."""

MAX_SHOWN_ADDRESS = 40
"""Characters of an address that is not one shown in a reason (provider data may be anything)."""


def record_address(what: str, ip: str) -> tuple[str, str]:
    """The record type and the address an A (IPv4) or AAAA (IPv6) record holds for ``ip``, as
    reported by the provider; DnsRejected when it is not an IP address (VMware Tools passes on
    whatever the guest says) or not one a user could reach the VM at: link-local (169.254.x.x,
    which a guest gives itself while DHCP has not answered; fe80::/10, which every IPv6 interface
    has), unspecified, multicast, reserved. The VM then stays pending with the reason, and is
    published when it reports another address."""
    cached = isinstance(ip, str) and len(ip) <= CACHED_ADDRESS_CHARS
    rdtype, text = _known_verdict(ip) if cached else _verdict(ip)
    if rdtype is None:
        raise DnsRejected(f"{what}: {text}")
    return rdtype, text


CACHED_ADDRESS_CHARS = 64
"""Addresses up to this long have their verdict kept (``_known_verdict``, the last 1,024): a pass
judges the addresses of every ready VM it sees and of each VM it makes ready, and parsing one
with ``ipaddress`` each time was 4 % of a small pool's refill (docs/performance.md, "Twelfth
round"). Longer text, which no address is, is judged each time and never kept."""


def _verdict(ip: str) -> tuple[str | None, str]:
    """``record_address``'s answer for ``ip``: (record type, address), or (None, why not)."""
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        shown = ip if len(ip) <= MAX_SHOWN_ADDRESS else ip[:MAX_SHOWN_ADDRESS] + "..."
        return None, f"{shown or '(empty)'} is not an IP address"
    if isinstance(address, ipaddress.IPv6Address) and address.scope_id is not None:
        # "fe80::1%eth0": Python reads a zone index as part of the address; no record holds one.
        shown = ip if len(ip) <= MAX_SHOWN_ADDRESS else ip[:MAX_SHOWN_ADDRESS] + "..."
        return None, f"{shown} is not an address users can reach (it names an interface)"
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        # ::ffff:a.b.c.d is how some stacks show an IPv4 address: the A record users can reach.
        return _verdict(str(address.ipv4_mapped))
    if address.is_link_local:
        return None, f"{address} is a link-local address (the guest has no address from DHCP yet)"
    if address.is_unspecified or address.is_multicast or address.is_reserved:
        # Loopback stays allowed: a local stack's simulated guests (tools/vcsim) report 127.0.0.1.
        return None, f"{address} is not an address users can reach"
    return ("A" if address.version == 4 else "AAAA"), address.compressed


_known_verdict = functools.lru_cache(maxsize=1024)(_verdict)


def chosen_addresses(candidates: Iterable[str | None]) -> dict[str, str]:
    """The address each record type publishes for a VM that reports ``candidates`` (its primary
    address first, then every other its guest reports): the first of each family that
    ``record_address`` accepts (record type -> address). Empty when none can be published."""
    chosen: dict[str, str] = {}
    for candidate in candidates:
        if not candidate:
            continue
        try:
            rdtype, address = record_address("", candidate)
        except DnsRejected:
            continue
        chosen.setdefault(rdtype, address)
    return chosen


def address_text(chosen: Mapping[str, str]) -> str:
    """How a VM's published addresses are noted (``dns_published``) and compared: the A record's
    address, then the AAAA record's, separated by a space. A VM of one family notes its one
    address, as releases that published one address noted it."""
    return " ".join(chosen[rdtype] for rdtype in ADDRESS_TYPES if rdtype in chosen)


def noted_addresses(noted: str | None) -> dict[str, str] | None:
    """The addresses a VM's ``dns_published`` note holds (record type -> address): {} for None
    (nothing published), None when what DNS holds is unknown (``?``, or anything else that is not
    addresses)."""
    if noted is None:
        return {}
    found: dict[str, str] = {}
    for part in noted.split(" "):
        try:
            address = ipaddress.ip_address(part)
        except ValueError:
            return None
        found["A" if address.version == 4 else "AAAA"] = address.compressed
    return found


def record_changes(what: str, addresses: str | Sequence[str],
                   published: str | None) -> tuple[dict[str, str], list[str]]:
    """What a create sends to make the name hold ``addresses`` (one address, or one of each
    family) where vmpool last published ``published`` (as noted: None for nothing, an address
    text, or anything else when unknown): the record types to set (type -> address), each only
    when its family's address changed, and the record types to delete: those vmpool published
    (or may have: unknown) that ``addresses`` lacks. A record of a type vmpool never published
    there (a guest registering its own AAAA record beside vmpool's A record) is left alone.
    DnsRejected (``record_address``) when one of ``addresses`` cannot be published, or two are of
    one family."""
    wanted: dict[str, str] = {}
    for ip in [addresses] if isinstance(addresses, str) else addresses:
        rdtype, address = record_address(what, ip)
        if rdtype in wanted:
            raise DnsRejected(f"{what}: two {rdtype} addresses ({wanted[rdtype]}, {address}): "
                              "a name holds one of each family")
        wanted[rdtype] = address
    before = noted_addresses(published)
    if before is None:
        return wanted, [rdtype for rdtype in ADDRESS_TYPES if rdtype not in wanted]
    changed = {rdtype: address for rdtype, address in wanted.items() if before.get(rdtype) != address}
    return changed, [rdtype for rdtype in ADDRESS_TYPES if rdtype in before and rdtype not in wanted]


NameCall = TypeVar("NameCall", bound=tuple[Any, ...])  # a name's call: its hostname first


def one_name_a_call(items: Sequence[NameCall], send: Callable[[NameCall], None],
                    max_refusals: int | None) -> dict[str, DnsError | None]:
    """``send`` each item (its first field the hostname), one call a name: each name sent maps
    to None when done, or to the DnsError the service refused that name alone with; after
    ``max_refusals`` such refusals the rest is not sent (absent from the answer). A failure of
    the service or of the entry as a whole (DnsUnavailable, DnsEntryRejected) is raised."""
    outcome: dict[str, DnsError | None] = {}
    refusals = 0
    for item in items:
        if max_refusals is not None and refusals >= max_refusals:
            break
        try:
            send(item)
        except (DnsUnavailable, DnsEntryRejected):
            raise
        except DnsError as error:
            outcome[item[0]] = error
            refusals += 1
            continue
        outcome[item[0]] = None
    return outcome


class DnsPlugin(abc.ABC):
    """Manages the address records (A and AAAA) of the pools whose ``dns_plugin`` names this
    ``:dns_configs:`` entry."""

    manages_records: bool = True
    """False for a plugin that leaves records to others (vmpooler's plain ``dynamic-dns``)."""

    def __init__(self, config: DnsConfig) -> None:
        self.name = config.name
        self.domain = (config.domain or "").strip(".")
        check_names = config.settings.check_names
        self.checks_names = (self.manages_records if check_names is None else check_names) and bool(self.domain)
        """Whether a new VM name is looked up first and refused when it already resolves."""

    def fqdn(self, hostname: str) -> str:
        """``hostname.domain`` (the short name alone when the entry has no domain)."""
        return f"{hostname}.{self.domain}" if self.domain else hostname

    @abc.abstractmethod
    def create_or_replace(self, hostname: str, addresses: str | Sequence[str], published: str | None = None) -> None:
        """Make ``hostname.domain`` resolve to ``addresses`` (and only to them): one address, or one
        of each family (an A record for the IPv4 address, an AAAA record for the IPv6 one:
        ``record_address``). ``published``: what vmpool last published at the name (None: nothing;
        an ``address_text``; or anything else when unknown): only the record types whose address
        changed are sent, and a type vmpool published that ``addresses`` lacks is deleted
        (``record_changes``). Raises DnsError."""

    def create_many(self, records: Sequence[tuple[str, str | Sequence[str], str | None]],
                    max_refusals: int | None = None) -> dict[str, DnsError | None]:
        """``create_or_replace`` of each ``(hostname, addresses, published)``, in as few calls as
        the plugin can; the answer as ``delete_many``'s: each name sent, None when its records
        are published, its DnsRejected when the service refused that name alone (a batch it
        refuses for one name is sent again a name a call: one bad name never fails the others);
        after ``max_refusals`` such refusals the rest is not sent. DnsUnavailable and
        DnsEntryRejected are raised. An address that cannot be published is refused before
        anything is sent, and is no refusal of the service's. This default sends one create a
        name."""
        outcome: dict[str, DnsError | None] = {}
        sendable = []
        for hostname, addresses, published in records:
            try:
                record_changes(f"dns create {self.fqdn(hostname)}", addresses, published)
            except DnsRejected as error:
                outcome[hostname] = error
                continue
            sendable.append((hostname, addresses, published))
        # A refused address is no refusal of the service's: it does not count towards max_refusals.
        sent = one_name_a_call(sendable, lambda record: self.create_or_replace(*record), max_refusals)
        return {hostname: outcome.get(hostname, sent[hostname]) for hostname, _, _ in records
                if hostname in outcome or hostname in sent}

    @abc.abstractmethod
    def delete(self, hostname: str, fqdn: str | None = None) -> None:
        """Remove the name's A and AAAA records; a name without one is not an error. ``fqdn``: the full
        name the record was published under, when the entry's ``domain`` may have changed since
        (default ``hostname.domain``). Raises DnsError."""

    def delete_many(self, names: Sequence[tuple[str, str | None]],
                    max_refusals: int | None = None) -> dict[str, DnsError | None]:
        """``delete`` of each ``(hostname, fqdn)``, in as few calls as the plugin can. Returns each
        name sent: None when its records are deleted, its DnsRejected when the service refused that
        name alone; after ``max_refusals`` such refusals the rest is not sent (absent from the
        answer: a service refusing every name, Route 53 throttling the account, is not sent 50 a
        pass). A failure of the service or of the entry as a whole (DnsUnavailable,
        DnsEntryRejected) is raised: then no name is known deleted (a delete sent again is no
        error). This default sends one delete a name."""
        return one_name_a_call(names, lambda name: self.delete(*name), max_refusals)

    @abc.abstractmethod
    def addresses(self, hostname: str) -> list[str]:
        """Where ``hostname.domain`` leads now ([] when nowhere): its A and AAAA addresses, or
        ``<target> (CNAME)`` for an alias. A name holding any of them is not free for a new VM
        (vmpooler's check resolves the name, aliases and IPv6 included). Raises DnsError."""

    def addresses_many(self, hostnames: Sequence[str]) -> dict[str, list[str] | DnsError]:
        """``addresses`` of each name, in as few round trips as the plugin can (``dynamic-dns``
        pipelines its questions on one connection): each name's addresses, or its own DnsError.
        DnsUnavailable (the service did not answer) is raised: no name is known free. This
        default looks up one name a call."""
        outcome: dict[str, list[str] | DnsError] = {}
        for hostname in hostnames:
            try:
                outcome[hostname] = self.addresses(hostname)
            except DnsUnavailable:
                raise
            except DnsError as error:
                outcome[hostname] = error
        return outcome


class UnmanagedDns(DnsPlugin):
    """Records are someone else's business (DHCP with dynamic DNS, a static zone...): no
    changes. With ``check_names: true`` new names are looked up with the system's resolver (as
    vmpooler does for every pool), so a stale record left by DHCP is not reused."""

    manages_records = False
    LOOKUP_SECONDS = 2.0

    def create_or_replace(self, hostname: str, addresses: str | Sequence[str], published: str | None = None) -> None:
        return None

    def delete(self, hostname: str, fqdn: str | None = None) -> None:
        return None

    def addresses(self, hostname: str) -> list[str]:
        if not self.checks_names:
            return []
        import dns.exception
        import dns.resolver

        found: list[str] = []
        for rdtype in ("A", "AAAA"):  # the resolver follows aliases: their targets' addresses
            try:
                answer = dns.resolver.resolve(self.fqdn(hostname) + ".", rdtype, lifetime=self.LOOKUP_SECONDS)
            except dns.resolver.NXDOMAIN:
                return found
            except dns.resolver.NoAnswer:
                continue
            except dns.exception.DNSException as error:
                raise DnsUnavailable(f"dns look up {self.fqdn(hostname)}: {type(error).__name__}") from None
            found.extend(str(item.address) for item in answer)
        return found
