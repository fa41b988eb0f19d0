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


def ipv4_address(what: str, ip: str) -> str:
    """``ip`` as an A record holds it; DnsRejected when it is not an IPv4 address (a guest may
    report an IPv6 one, or anything: VMware Tools passes on what the guest says), or not one a
    user could reach the VM at. The VM then stays pending with the reason, and is published
    when it reports another address (a ready VM's record is never published again)."""
    try:
        address = ipaddress.IPv4Address(ip)
    except ValueError:
        shown = ip if len(ip) <= 40 else ip[:40] + "..."
        raise DnsRejected(f"{what}: {shown or '(empty)'} is not an IPv4 address") from None
    if address.is_link_local:
        # 169.254.x.x: the address a guest gives itself while DHCP has not answered (Windows).
        raise DnsRejected(f"{what}: {address} is a link-local address (the guest has no address from DHCP yet)")
    if address.is_unspecified or address.is_multicast or address.is_reserved:
        # Loopback stays allowed: a local stack's simulated guests (tools/vcsim) report 127.0.0.1.
        raise DnsRejected(f"{what}: {address} is not an address users can reach")
    return str(address)


class DnsPlugin(abc.ABC):
    """Manages the A records of the pools whose ``dns_plugin`` names this ``:dns_configs:`` entry."""

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
    def create_or_replace(self, hostname: str, ip: str) -> None:
        """Make ``hostname.domain`` resolve to ``ip`` (and only to it). Raises DnsError."""

    @abc.abstractmethod
    def delete(self, hostname: str, fqdn: str | None = None) -> None:
        """Remove the name's A record; a name without one is not an error. ``fqdn``: the full
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

    def create_or_replace(self, hostname: str, ip: str) -> None:
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
