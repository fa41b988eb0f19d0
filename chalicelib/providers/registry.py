"""Build the provider a pool names, from its ``:providers:`` block."""

from __future__ import annotations

from typing import Callable

import redis

from chalicelib.clock import Clock
from chalicelib.config import Config, ProviderConfig
from chalicelib.providers.base import Provider
from chalicelib.store.keys import DEFAULT_PREFIX


def build_provider(
    provider: ProviderConfig,
    config: Config,
    client: redis.Redis,
    clock: Clock,
    resolve_secret: Callable[[object], str | None] = lambda value: value if isinstance(value, str) else None,
    prefix: str = DEFAULT_PREFIX,
) -> Provider:
    """The implementation named by ``provider_class``. vSphere is imported only when used, so
    the API Lambdas never load pyVmomi."""
    if provider.provider_class == "dummy":
        from chalicelib.providers.dummy import DummyProvider

        return DummyProvider(provider, client, clock, prefix=prefix)
    if provider.provider_class == "vsphere":
        from chalicelib.providers.vsphere import VSphereProvider

        return VSphereProvider(provider, config.service, clock, password=resolve_secret(provider.get("password")))
    raise ValueError(f"unknown provider class {provider.provider_class!r}")
