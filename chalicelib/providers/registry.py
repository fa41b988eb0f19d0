"""Build the provider a pool names, from its ``:providers:`` block."""

from __future__ import annotations

from typing import Callable

import redis

from chalicelib.auth.secrets import plain_secret
from chalicelib.clock import Clock
from chalicelib.config import Config, ProviderConfig
from chalicelib.providers.base import Provider
from chalicelib.store.keys import DEFAULT_PREFIX


def provider_secret(provider: ProviderConfig) -> object | None:
    """The secret a provider block logs in with, as configured (plain or a reference); None for
    a provider without one. ``build_provider`` resolves it when it builds the provider."""
    if provider.provider_class == "vsphere":
        from chalicelib.providers.vsphere.config import vsphere_settings

        return vsphere_settings(provider.settings).password
    return None


def build_provider(
    provider: ProviderConfig,
    config: Config,
    client: redis.Redis,
    clock: Clock,
    resolve_secret: Callable[[object], str | None] = plain_secret,
    prefix: str = DEFAULT_PREFIX,
) -> Provider:
    """The implementation named by ``provider_class``. vSphere is imported only when used, so
    the API Lambdas never load pyVmomi."""
    if provider.provider_class == "dummy":
        from chalicelib.providers.dummy import DummyProvider
        from chalicelib.providers.ownership import deployment_of

        return DummyProvider(provider, client, clock, prefix=prefix, deployment=deployment_of(config.service))
    if provider.provider_class == "vsphere":
        from chalicelib.auth.service_refusals import RefusedPasswords
        from chalicelib.providers.vsphere.config import vsphere_settings
        from chalicelib.providers.vsphere.connection import LOGIN_RETRY_SECONDS
        from chalicelib.providers.vsphere.provider import VSphereProvider

        password = resolve_secret(vsphere_settings(provider.settings).password)
        return VSphereProvider(provider, config.service, clock, password=password,
                               refusals=RefusedPasswords(client, prefix, int(LOGIN_RETRY_SECONDS)))
    raise ValueError(f"unknown provider class {provider.provider_class!r}")
