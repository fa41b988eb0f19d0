"""The one interface every DNS plugin implements, and the failures it raises."""

import abc
import ipaddress
from dataclasses import dataclass
from typing import ClassVar, Optional

from chalicelib.config_fields import Bool, DnsName, SettingsModel, Str


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
"""The record types that hold a VM's address: a VM has one of them at a time (its address is
IPv4 or IPv6); publishing one deletes the other, and a withdrawal deletes both."""

MAX_SHOWN_ADDRESS = 40
"""Characters of an address that is not one shown in a reason (provider data may be anything)."""


def record_address(what: str, ip: str) -> tuple[str, str]:
    """The record type and the address an A (IPv4) or AAAA (IPv6) record holds for ``ip``, as
    reported by the provider; DnsRejected when it is not an IP address (VMware Tools passes on
    whatever the guest says) or not one a user could reach the VM at: link-local (169.254.x.x,
    which a guest gives itself while DHCP has not answered; fe80::/10, which every IPv6 interface
    has), unspecified, multicast, reserved. The VM then stays pending with the reason, and is
    published when it reports another address."""
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        shown = ip if len(ip) <= MAX_SHOWN_ADDRESS else ip[:MAX_SHOWN_ADDRESS] + "..."
        raise DnsRejected(f"{what}: {shown or '(empty)'} is not an IP address") from None
    if isinstance(address, ipaddress.IPv6Address) and address.scope_id is not None:
        # "fe80::1%eth0": Python reads a zone index as part of the address; no record holds one.
        shown = ip if len(ip) <= MAX_SHOWN_ADDRESS else ip[:MAX_SHOWN_ADDRESS] + "..."
        raise DnsRejected(f"{what}: {shown} is not an address users can reach (it names an interface)")
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        # ::ffff:a.b.c.d is how some stacks show an IPv4 address: the A record users can reach.
        return record_address(what, str(address.ipv4_mapped))
    if address.is_link_local:
        raise DnsRejected(f"{what}: {address} is a link-local address (the guest has no address from DHCP yet)")
    if address.is_unspecified or address.is_multicast or address.is_reserved:
        # Loopback stays allowed: a local stack's simulated guests (tools/vcsim) report 127.0.0.1.
        raise DnsRejected(f"{what}: {address} is not an address users can reach")
    return ("A" if address.version == 4 else "AAAA"), address.compressed


def may_hold_other_family(published: str | None, address: str) -> bool:
    """Whether the name may hold a record of the other type than ``address``'s that vmpool
    published (``published``: what the VM's record notes: None for nothing, an address, or
    anything else when that is unknown): then publishing ``address`` deletes it. Otherwise a
    record of the other type is not vmpool's (a dual-stack guest registering its own AAAA
    record beside vmpool's A record) and stays."""
    if published is None:
        return False
    try:
        return ipaddress.ip_address(published).version != ipaddress.ip_address(address).version
    except ValueError:
        return True


class DnsPlugin(abc.ABC):
    """Manages the address records (A or AAAA) of the pools whose ``dns_plugin`` names this
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
    def create_or_replace(self, hostname: str, ip: str, published: str | None = None) -> None:
        """Make ``hostname.domain`` resolve to ``ip`` (and only to it): an A record for an IPv4
        address, an AAAA record for an IPv6 one (``record_address``). ``published``: what vmpool last
        published at the name (None: nothing; an address; or anything else when unknown): a
        record of the other type is deleted when it may be vmpool's (``may_hold_other_family``).
        Raises DnsError."""

    @abc.abstractmethod
    def delete(self, hostname: str, fqdn: str | None = None) -> None:
        """Remove the name's A and AAAA records; a name without one is not an error. ``fqdn``: the full
        name the record was published under, when the entry's ``domain`` may have changed since
        (default ``hostname.domain``). Raises DnsError."""

    @abc.abstractmethod
    def addresses(self, hostname: str) -> list[str]:
        """Where ``hostname.domain`` leads now ([] when nowhere): its A and AAAA addresses, or
        ``<target> (CNAME)`` for an alias. A name holding any of them is not free for a new VM
        (vmpooler's check resolves the name, aliases and IPv6 included). Raises DnsError."""


class UnmanagedDns(DnsPlugin):
    """Records are someone else's business (DHCP with dynamic DNS, a static zone...): no
    changes. With ``check_names: true`` new names are looked up with the system's resolver (as
    vmpooler does for every pool), so a stale record left by DHCP is not reused."""

    manages_records = False
    LOOKUP_SECONDS = 2.0

    def create_or_replace(self, hostname: str, ip: str, published: str | None = None) -> None:
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
