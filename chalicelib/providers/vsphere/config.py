"""The vSphere provider's settings: where vCenter is, how to reach it, how a VM counts as ready.
Readiness keys (``ready_check``, ``ready_port``, ``check_hostname``) may be overridden per pool.
This module imports no pyVmomi: the config is validated where pyVmomi is never loaded.

Every value is checked at load, so a hostile or mistyped one (``https://vc/sdk``, a port of
99999, a NUL byte, a million-character datacenter, an endless timeout) is refused with the key
named, instead of failing each pass with a library's exception."""

import ipaddress
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, Any, Optional

from chalicelib.config_fields import (
    Bool,
    Check,
    Ignored,
    InventoryPath,
    Port,
    SecretValue,
    Str,
    invalid,
    number,
    one_of,
    show,
    string,
)
from chalicelib.providers.settings import ProviderSettings

if TYPE_CHECKING:
    from chalicelib.config import ServiceConfig

HOST_NAME_LENGTH = 253
DEFAULT_CALL_TIMEOUT = 60.0
DEFAULT_HOST_CACHE_SECONDS = 60.0
USERNAME_LENGTH = 256
_HOST_LABEL = re.compile(r"^[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?\Z")
_CONTROL_CHARACTERS = re.compile(r"[\x00-\x1f\x7f]")


def vsphere_settings(settings: ProviderSettings) -> "VSphereSettings":
    """A vSphere provider block's settings (the registry builds VSphereProvider only for those)."""
    if not isinstance(settings, VSphereSettings):
        raise TypeError(f"not a vsphere provider block: {type(settings).__name__}")
    return settings


def split_host_port(server: str, port: Any = None) -> tuple[str, int]:
    """``vc.example.com`` / ``vc.example.com:8443`` / ``[::1]:443`` / ``::1``; an explicit port key
    wins. Raises ValueError for a port that is not a number."""
    host, found = server.strip(), None
    if host.startswith("["):
        inside, _, rest = host[1:].partition("]")
        host = inside
        if rest.startswith(":"):
            found = rest[1:]
    elif host.count(":") == 1:
        host, found = host.split(":")
    if port is not None:
        return host, int(port)
    return host, int(found) if found else 443


def _valid_host(host: str) -> bool:
    """An IP address or a DNS name (internationalized names in their IDNA form or as text)."""
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        pass
    try:
        ascii_name = host.encode("idna").decode("ascii")
    except UnicodeError:
        return False
    labels = ascii_name[:-1].split(".") if ascii_name.endswith(".") else ascii_name.split(".")
    return len(ascii_name) <= HOST_NAME_LENGTH and all(_HOST_LABEL.match(label) for label in labels)


def vcenter_server(value: Any) -> str:
    """vCenter's address as ``server`` takes it: a host name or IP address, optionally with
    ``:port`` (``[v6]:port`` for IPv6), no scheme, no path."""
    text = string(value).strip()
    # "https://user:password@vc": the part before "@" is never quoted back (errors are logged).
    quoted = show(text) if "@" not in text else show("<hidden>@" + text.rpartition("@")[2])
    if "@" in text:
        invalid(f"must be vCenter's host name or host:port, without a user or password (set username "
                f"and password), got {quoted}")
    if "/" in text or _CONTROL_CHARACTERS.search(text) or " " in text:
        invalid(f"must be vCenter's host name or host:port (no https://, no path, no spaces), got {quoted}")
    try:
        host, port = split_host_port(text)
    except ValueError:
        invalid(f"must be vCenter's host name or host:port with a numeric port, got {quoted}")
    if not 1 <= port <= 65535:
        invalid(f"must have a port from 1 to 65535, got {quoted}")
    if not host or len(host) > HOST_NAME_LENGTH or not _valid_host(host):
        invalid(f"must be vCenter's host name (labels of letters, digits, '-') or IP address, got {quoted}")
    return text


def username(value: Any) -> str:
    """A vCenter user name (``user@vsphere.local``, ``DOMAIN\\user``): 1 to 256 characters, no
    control characters."""
    text = string(value)
    if not text or len(text) > USERNAME_LENGTH or _CONTROL_CHARACTERS.search(text):
        invalid(f"must be a user name of 1 to {USERNAME_LENGTH} characters without control characters, "
                f"got {show(text)}")
    return text


def seconds_between(minimum: float, maximum: float) -> Check:
    """A finite number of seconds within bounds (NaN and infinity are refused: a socket given
    either never times out, or fails every call)."""
    return Check(number(minimum, maximum))


VCenterServer = Annotated[str, Check(vcenter_server)]
UserName = Annotated[str, Check(username)]


@dataclass(frozen=True, kw_only=True)
class VSphereSettings(ProviderSettings):
    server: Optional[VCenterServer] = None
    """vCenter's host name, optionally with ``:port``."""
    port: Optional[Port] = None
    username: Optional[UserName] = None
    password: Optional[SecretValue] = field(default=None, repr=False)
    insecure: Bool = False
    ca_bundle: Optional[Str] = None
    datacenter: Optional[InventoryPath] = None
    connection_pool: Ignored = None
    connect_timeout: Annotated[float, seconds_between(0.1, 300)] = 10.0
    """Reaching vCenter: at most 5 minutes (a pass must end well within its Lambda's 15)."""
    call_timeout: Optional[Annotated[float, seconds_between(0.1, 600)]] = None
    """One SOAP call's socket reads (``call_seconds``)."""
    vsphere_timeout: Optional[Annotated[float, seconds_between(0.1, 600)]] = None
    """vmpooler's name for it, read when ``call_timeout`` is not set."""
    host_selection_cache_seconds: Optional[Annotated[float, seconds_between(0, 86400)]] = None
    """How long host usage is reused (``host_cache_seconds``)."""
    ready_check: Optional[Annotated[str, one_of("tcp", "tools", "none")]] = None
    ready_port: Optional[Port] = None
    check_hostname: Optional[Bool] = None

    def call_seconds(self, service: "ServiceConfig | None") -> float:
        """A call's timeout: ``call_timeout``, else vmpooler's ``vsphere_timeout`` (this block's,
        else ``service``'s, the ``:config:`` section, as vmpooler reads it), else 60 s."""
        for value in (self.call_timeout, self.vsphere_timeout, service.vsphere_timeout if service else None):
            if value is not None:
                return float(value)
        return DEFAULT_CALL_TIMEOUT

    def host_cache_seconds(self, service: "ServiceConfig | None") -> float:
        """How long host usage is reused: ``host_selection_cache_seconds``, else vmpooler's
        ``host_selection_max_age`` of ``:config:`` (``service``), else 60 s."""
        for value in (self.host_selection_cache_seconds, service.host_selection_max_age if service else None):
            if value is not None:
                return float(value)
        return DEFAULT_HOST_CACHE_SECONDS
