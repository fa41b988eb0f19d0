"""Which plugin a ``dns_class`` names, the keys it owns, and building it."""

from __future__ import annotations

from typing import Any, Callable, Mapping

from chalicelib.config import DnsConfig, Key
from chalicelib.dns import dynamic, route53
from chalicelib.dns.base import DnsPlugin, UnmanagedDns

ROUTE53 = "route53"
DYNAMIC_DNS = "dynamic-dns"

_KEYS: dict[str, Mapping[str, Key]] = {ROUTE53: route53.KEYS, DYNAMIC_DNS: dynamic.KEYS}


def plugin_keys(dns_class: str) -> Mapping[str, Key] | None:
    """The config keys the plugin owns, or None when vmpool ships no plugin of that class."""
    return _KEYS.get(dns_class)


def build_dns_plugin(
    config: DnsConfig,
    resolve_secret: Callable[[Any], str | None] = lambda value: value if isinstance(value, str) else None,
) -> DnsPlugin:
    """The plugin for a ``:dns_configs:`` entry. Unknown classes manage nothing (the config
    loader warned about them). Heavy clients (boto3, sockets) are made on first use."""
    if config.dns_class == ROUTE53:
        return route53.Route53Dns(config)
    if config.dns_class == DYNAMIC_DNS and config.get("server"):
        return dynamic.DynamicDns(config, tsig_secret=resolve_secret(config.get("tsig_secret")))
    return UnmanagedDns(config)
