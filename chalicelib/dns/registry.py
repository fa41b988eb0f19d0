"""Which plugin a ``dns_class`` names, the settings model it owns, and building it."""

from __future__ import annotations

from typing import Any, Callable

from chalicelib.auth.secrets import plain_secret
from chalicelib.dns import dynamic, route53
from chalicelib.dns.base import DnsConfig, DnsPlugin, DnsSettings, UnmanagedDns

ROUTE53 = "route53"
DYNAMIC_DNS = "dynamic-dns"

_MODELS: dict[str, type[DnsSettings]] = {ROUTE53: route53.Route53Settings, DYNAMIC_DNS: dynamic.DynamicDnsSettings}


def settings_model(dns_class: str) -> type[DnsSettings] | None:
    """The settings model the plugin owns, or None when vmpool ships no plugin of that class."""
    return _MODELS.get(dns_class)


def manages_records(settings: DnsSettings) -> bool:
    """Whether the plugin an entry's settings build publishes its pools' records itself (then
    under the entry's ``domain``, which its pools must hand out)."""
    return isinstance(settings, route53.Route53Settings) or (
        isinstance(settings, dynamic.DynamicDnsSettings) and bool(settings.server))


def build_dns_plugin(
    config: DnsConfig,
    resolve_secret: Callable[[Any], str | None] = plain_secret,
) -> DnsPlugin:
    """The plugin for a ``:dns_configs:`` entry. Unknown classes manage nothing (the config
    loader warned about them). Heavy clients (boto3, sockets) are made on first use."""
    settings = config.settings
    if isinstance(settings, route53.Route53Settings):
        return route53.Route53Dns(config)
    if manages_records(settings):
        assert isinstance(settings, dynamic.DynamicDnsSettings)
        return dynamic.DynamicDns(config, tsig_secret=resolve_secret(settings.tsig_secret))
    return UnmanagedDns(config)
