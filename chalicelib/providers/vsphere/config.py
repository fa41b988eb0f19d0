"""The vSphere provider's settings: where vCenter is, how to reach it, how a VM counts as ready.
Readiness keys (``ready_check``, ``ready_port``, ``check_hostname``) may be overridden per pool.
This module imports no pyVmomi: the config is validated where pyVmomi is never loaded."""

from dataclasses import dataclass, field
from typing import Annotated, Optional

from chalicelib.config_fields import Bool, Ignored, Number0, Port, Seconds, SecretValue, Str, one_of
from chalicelib.providers.settings import ProviderSettings


def vsphere_settings(settings: ProviderSettings) -> "VSphereSettings":
    """A vSphere provider block's settings (the registry builds VSphereProvider only for those)."""
    if not isinstance(settings, VSphereSettings):
        raise TypeError(f"not a vsphere provider block: {type(settings).__name__}")
    return settings


@dataclass(frozen=True, kw_only=True)
class VSphereSettings(ProviderSettings):
    server: Optional[Str] = None
    """vCenter's host name, optionally with ``:port``."""
    port: Optional[Port] = None
    username: Optional[Str] = None
    password: Optional[SecretValue] = field(default=None, repr=False)
    insecure: Bool = False
    ca_bundle: Optional[Str] = None
    datacenter: Optional[Str] = None
    connection_pool: Ignored = None
    connect_timeout: Seconds = 10.0
    call_timeout: Seconds = 60.0
    host_selection_cache_seconds: Number0 = 60.0
    ready_check: Optional[Annotated[str, one_of("tcp", "tools", "none")]] = None
    ready_port: Optional[Port] = None
    check_hostname: Optional[Bool] = None
