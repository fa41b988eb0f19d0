"""What every provider's settings model shares, and which model a ``provider_class`` names.

Each provider owns its settings next to its code (``providers/dummy_config.py``,
``providers/vsphere/config.py``), as Nodepool's drivers own their schemas. A ``:providers:``
block is validated with its class's model; a pool may set the same keys to override its
provider's (``ProviderConfig.for_pool``). The models are imported only when a config names their
class, and none of them imports its provider's client library.
"""

import dataclasses
import importlib
from dataclasses import dataclass
from typing import Any, Mapping, Optional, Sequence, TypeVar

from chalicelib.config_fields import Bool, DnsName, Ignored, SettingsModel, Str, StrList

PROVIDER_CLASSES = ("vsphere", "dummy")

PROVIDER_ONLY_KEYS = frozenset({
    "provider_class", "purge_unconfigured_resources", "resources_allowlist", "folder_whitelist",
    "purge_unconfigured_folders", "skip_dns_check_before_creating_vm", "connection_pool_size",
    "connection_pool_timeout", "circuit_breaker_enabled", "circuit_breaker_failure_threshold",
    "circuit_breaker_timeout", "circuit_breaker_half_open_attempts", "adaptive_timeout_enabled",
    "connection_pool_timeout_min", "connection_pool_timeout_max", "connection_pool_timeout_initial",
    "domain",
})
"""Keys of a ``:providers:`` block that a pool does not set (``for_pool`` skips them)."""

_MODELS = {
    "dummy": ("chalicelib.providers.dummy_config", "DummySettings"),
    "vsphere": ("chalicelib.providers.vsphere.config", "VSphereSettings"),
}


Settings = TypeVar("Settings", bound="ProviderSettings")


@dataclass(frozen=True, kw_only=True)
class VcenterResilienceKeys(SettingsModel):
    """vmpooler's circuit breakers, adaptive timeouts and connection-pool timeouts for its vCenter
    calls, which it reads in ``:config:`` and in a ``:providers:`` block: accepted in both, with no
    effect. A pass here makes its calls with the provider's connect_timeout and call_timeout, and a
    failed call is tried again by the next pass."""

    circuit_breaker_enabled: Ignored = None
    circuit_breaker_failure_threshold: Ignored = None
    circuit_breaker_timeout: Ignored = None
    circuit_breaker_half_open_attempts: Ignored = None
    adaptive_timeout_enabled: Ignored = None
    connection_pool_timeout_min: Ignored = None
    connection_pool_timeout_max: Ignored = None
    connection_pool_timeout_initial: Ignored = None
    # vmpooler 1's name of purge_unconfigured_resources, which vmpooler reads no more either.
    purge_unconfigured_folders: Ignored = None


@dataclass(frozen=True, kw_only=True)
class ProviderSettings(VcenterResilienceKeys):
    """The keys of a ``:providers:`` block every class has."""

    provider_class: Optional[Str] = None
    # Where vmpooler reads its purge settings (pool_manager.rb): a provider's own switch (the
    # ``:config:`` one turns purging on for every provider) and its allowlist, under its current
    # name or the older one vmpooler still reads. Not pool keys. None when unset, so the canonical
    # config of a block without them is what an older vmpool wrote and reads.
    purge_unconfigured_resources: Optional[Bool] = None
    resources_allowlist: Optional[StrList] = None
    folder_whitelist: Optional[StrList] = None
    # vmpooler's per-provider connection pools (and VcenterResilienceKeys'): a pass here makes
    # its calls with the provider's own timeouts, and the next pass retries.
    connection_pool_size: Ignored = None
    connection_pool_timeout: Ignored = None
    # New names are looked up before a clone per DNS config (check_names, docs/dns.md), not per provider.
    skip_dns_check_before_creating_vm: Ignored = None
    # vmpooler 2.x's domain of the provider's pools (its Parsing.get_domain_for_pool: over
    # config.domain; 3.x moved it to :dns_configs:). A pool's own domain and its dns_plugin's
    # come first (config.py, _read_pools). Ignored, a 2.x config's VMs were answered as bare names.
    domain: Optional[DnsName] = None

    def purge_settings(self, service_purges: bool, service_allowlist: Sequence[str]) -> tuple[bool, tuple[str, ...]]:
        """Whether this provider's unconfigured resources are purged, and the names the purge
        keeps: every allowlist that names some (the service's and this block's), so a name kept
        in one place is never destroyed for being missing from another."""
        allowlist = (*service_allowlist, *(self.resources_allowlist or ()), *(self.folder_whitelist or ()))
        return service_purges or bool(self.purge_unconfigured_resources), tuple(dict.fromkeys(allowlist))

    def for_pool(self: Settings, pool_settings: Mapping[str, Any]) -> Settings:
        """These settings with a pool's own values of the same keys over them (``pool_settings``:
        the pool's validated keys, ``PoolConfig.settings``)."""
        fields = type(self).field_names()
        overrides = {key: value for key, value in pool_settings.items()
                     if key in fields and key not in PROVIDER_ONLY_KEYS and value is not None}
        return dataclasses.replace(self, **overrides) if overrides else self


def settings_model(provider_class: str) -> type[ProviderSettings] | None:
    """The settings model of ``provider_class``, or None when vmpool has no such provider."""
    where = _MODELS.get(provider_class)
    if where is None:
        return None
    model: type[ProviderSettings] = getattr(importlib.import_module(where[0]), where[1])
    return model


class ProviderKeys:
    """Every key some provider owns, as a container that imports the providers' models on the
    first key it is asked about (a config whose blocks hold only their own keys never asks, so
    it loads only the models of the providers it uses)."""

    def __init__(self) -> None:
        self._keys: frozenset[str] | None = None

    def __contains__(self, key: object) -> bool:
        if self._keys is None:
            self._keys = provider_keys()
        return key in self._keys


def provider_keys() -> frozenset[str]:
    """Every key some provider owns (a pool may set any of them; the ones its provider does not
    read have no effect, as in vmpooler)."""
    keys: set[str] = set()
    for provider_class in PROVIDER_CLASSES:
        model = settings_model(provider_class)
        assert model is not None
        keys.update(model.keys())
    keys.difference_update(PROVIDER_ONLY_KEYS)
    return frozenset(keys)
