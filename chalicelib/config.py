"""Service configuration: vmpooler's YAML, loaded as it is, validated once at start.

vmpooler writes top-level sections as Ruby symbols (``:pools:``); we accept that and the plain
spelling at every level by dropping leading colons from mapping keys. Every key of vmpooler's
config is known; unknown keys log a warning instead of failing, so a config that works for
vmpooler keeps working here. Invalid values fail the load with every problem listed, each naming
its key path (``pools[2].size: must be an integer >= 0, got "five"``).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Callable, Mapping, Sequence

import yaml

from chalicelib.providers.failures import FailureKind

CONFIG_FILE_ENV = "VMPOOL_CONFIG_FILE"
CONFIG_YAML_ENV = "VMPOOL_CONFIG"
DEFAULT_CONFIG_FILE = Path(__file__).with_name("vmpool.yaml")

POOL_NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")


class ConfigError(ValueError):
    """The configuration is invalid; ``problems`` lists each one with its key path."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = list(problems)
        super().__init__("invalid configuration:\n  " + "\n  ".join(self.problems))


# --- value checkers ----------------------------------------------------------------------------
# Each checker takes the raw YAML value and returns the clean value or raises _Invalid with the
# human explanation; the loader adds the key path.


class _Invalid(Exception):
    pass


Checker = Callable[[Any], Any]


def _show(value: Any) -> str:
    return f'"{value}"' if isinstance(value, str) else repr(value)


def integer(minimum: int | None = None, maximum: int | None = None) -> Checker:
    """An int (or a string of digits, as vmpooler's ``to_i`` accepts) within bounds.

    The message names the rule broken: ``must be an integer >= 0`` for text or a number too
    small, ``must be an integer <= 10000`` for one too large."""
    wanted = "an integer" + (f" >= {minimum}" if minimum is not None else "")

    def check(value: Any) -> int:
        if isinstance(value, bool):
            raise _Invalid(f"must be {wanted}, got {_show(value)}")
        if isinstance(value, str) and re.fullmatch(r"\s*-?\d{1,18}\s*", value):
            number = int(value)
        elif isinstance(value, int):
            number = value
        else:
            raise _Invalid(f"must be {wanted}, got {_show(value)}")
        if minimum is not None and number < minimum:
            raise _Invalid(f"must be {wanted}, got {_show(value)}")
        if maximum is not None and number > maximum:
            raise _Invalid(f"must be an integer <= {maximum}, got {_show(value)}")
        return number

    return check


def number(minimum: float | None = None) -> Checker:
    """An int or float (or numeric string) at least ``minimum``."""

    def check(value: Any) -> float:
        try:
            if isinstance(value, bool):
                raise ValueError
            result = float(value)
        except (TypeError, ValueError):
            raise _Invalid(f"must be a number, got {_show(value)}") from None
        if minimum is not None and result < minimum:
            raise _Invalid(f"must be a number >= {minimum}, got {_show(value)}")
        return result

    return check


def boolean(value: Any) -> bool:
    """true/false, also as the strings vmpooler configs sometimes carry."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no"):
        return value.lower() in ("true", "yes")
    raise _Invalid(f"must be true or false, got {_show(value)}")


def string(value: Any) -> str:
    """A scalar written as text (numbers are accepted and turned into text)."""
    if isinstance(value, (str, int, float)) and not isinstance(value, bool):
        return str(value)
    raise _Invalid(f"must be a string, got {_show(value)}")


def string_list(value: Any) -> tuple[str, ...]:
    """A string or a list of strings (vmpooler accepts both for alias, base, user_object)."""
    items = value if isinstance(value, list) else [value]
    return tuple(string(item) for item in items)


def mapping(value: Any) -> Mapping[str, Any]:
    """A YAML mapping, kept as it is."""
    if not isinstance(value, dict):
        raise _Invalid(f"must be a mapping, got {_show(value)}")
    return MappingProxyType(dict(value))


def weights(value: Any) -> Mapping[str, float]:
    """A mapping of names to weights >= 0 (vmpooler's ``backend_weight``)."""
    if not isinstance(value, dict):
        raise _Invalid(f"must be a mapping of clone targets to weights, got {_show(value)}")
    checked: dict[str, float] = {}
    for name, weight in value.items():
        try:
            checked[str(name)] = number(0)(weight)
        except _Invalid as invalid:
            raise _Invalid(f"{name}: {invalid}") from None
    return MappingProxyType(checked)


def choice(*options: str) -> Checker:
    def check(value: Any) -> str:
        if value not in options:
            raise _Invalid(f"must be one of {', '.join(options)}, got {_show(value)}")
        return value

    return check


def symbol_choice(*options: str) -> Checker:
    """Like ``choice``, also accepting Ruby-symbol values (``:ldap``) as vmpooler configs write them."""
    check_choice = choice(*options)

    def check(value: Any) -> str:
        return check_choice(value.lstrip(":") if isinstance(value, str) else value)

    return check


def regex(value: Any) -> str:
    text = string(value)
    try:
        re.compile(text)
    except re.error as error:
        raise _Invalid(f"must be a regular expression ({error})") from None
    return text


def sizing(value: Any) -> Any:
    """A pool's ``sizing`` block (schedule windows, demand sizing): chalicelib/sizing/settings.py."""
    from chalicelib.sizing.settings import SizingConfigError, parse_sizing

    try:
        return parse_sizing(value)
    except SizingConfigError as error:
        raise _Invalid(str(error)) from None


def timezone_name(value: Any) -> str:
    """An IANA time zone name (``Europe/Berlin``)."""
    from chalicelib.sizing.settings import SizingConfigError, check_timezone

    try:
        return check_timezone(value, "time zone")
    except SizingConfigError as error:
        raise _Invalid(str(error).removeprefix("time zone: ")) from None


def anything(value: Any) -> Any:
    return value


def secret_value(value: Any) -> Any:
    """A password: a plain string (as vmpooler writes it) or a reference to AWS Secrets Manager /
    SSM Parameter Store (``{secret: name[, key: k]}`` / ``{ssm: name}``), resolved at run time.
    The message names the problem, never the value."""
    from chalicelib.auth.secrets import SecretConfigError, check_secret_value

    try:
        return check_secret_value(value)
    except SecretConfigError as error:
        raise _Invalid(str(error)) from None


@dataclass(frozen=True)
class Key:
    """One known key: its checker and default (``REQUIRED`` when it must be given)."""

    check: Checker
    default: Any = None


REQUIRED = object()

# Keys vmpooler reads that we accept but do not act on (logging, graphite, its web dashboard...).
_IGNORED = Key(anything)

DUMMY_KEYS: dict[str, Key] = {
    "createvm_max_time": Key(number(0)),
    "createvm_min_time": Key(number(0)),  # ours: every clone takes at least this long
    "createvm_fail_percent": Key(number(0)),
    "createvm_fail_kind": Key(choice(*(kind.value for kind in FailureKind))),
    "destroyvm_max_time": Key(number(0)),
    "destroyvm_fail_percent": Key(number(0)),
    "vmready_fail_percent": Key(number(0)),
    "getvm_poweroff_percent": Key(number(0)),
    "getvm_rename_percent": Key(number(0)),
    "createdisk_max_time": Key(number(0)),
    "createdisk_fail_percent": Key(number(0)),
    "createsnapshot_max_time": Key(number(0)),
    "createsnapshot_fail_percent": Key(number(0)),
    "revertsnapshot_max_time": Key(number(0)),
    "revertsnapshot_fail_percent": Key(number(0)),
    "migratevm_couldmove_percent": Key(number(0)),
    "migratevm_max_time": Key(number(0)),
    "migratevm_fail_percent": Key(number(0)),
    "boot_time": Key(number(0)),
    "seed": Key(integer()),
    "filename": _IGNORED,
}

# Readiness keys, per provider and per pool (vSphere issue).
READINESS_KEYS: dict[str, Key] = {
    "ready_check": Key(choice("tcp", "tools", "none")),
    "ready_port": Key(integer(1, 65535)),
    "check_hostname": Key(boolean),
}

SERVICE_KEYS: dict[str, Key] = {
    "task_limit": Key(integer(1), 10),
    "timeout": Key(integer(1), 15),
    "timeout_notification": Key(integer(0), 5),
    "ready_ttl": Key(integer(1), 60),
    "vm_lifetime": Key(integer(1), 24),
    "vm_lifetime_auth": Key(integer(1)),
    "max_lifetime_upper_limit": Key(integer(1)),
    "prefix": Key(string, ""),
    "domain": Key(string),
    "allowed_tags": Key(string_list, ()),
    "experimental_features": Key(boolean, False),
    "purge_unconfigured_resources": Key(boolean, False),
    "resources_allowlist": Key(string_list, ()),
    "create_folders": Key(boolean, False),
    "create_linked_clones": Key(boolean, True),
    "create_template_delta_disks": Key(boolean, False),
    "manage_host_selection": Key(boolean, False),
    "migration_limit": Key(integer(0), 0),
    "utilization_limit": Key(integer(1, 100), 90),
    "max_ondemand_instances_per_request": Key(integer(1), 10),
    "ondemand_clone_limit": Key(integer(1), 10),
    "ondemand_request_ttl": Key(integer(1), 5),
    "ondemand_fallback": Key(boolean, False),
    "max_vm_retries": Key(integer(0), 3),
    "check_loop_delay_min": Key(number(0.1), 5.0),
    "clone_poll_interval": Key(number(0.1), 0.25),
    "check_loop_delay_max": Key(number(0.1), 60.0),
    "check_loop_delay_decay": Key(number(1.0), 2.0),
    "token_ttl": Key(integer(1)),
    "clone_target": Key(string),
    "backend_weight": Key(weights),
    "vm_checktime": Key(integer(1), 1),
    # Bounds on what callers can make grow (docs/auth.md, "Limits").
    "max_tags_per_vm": Key(integer(1, 1000), 32),
    "max_tag_names_per_day": Key(integer(1, 10000), 50),
    "max_tag_values_per_day": Key(integer(1, 10000), 100),
    "max_running_vms_per_user": Key(integer(1), 100),
    "max_running_vms": Key(integer(1), 1000),
    "max_ondemand_requests_per_user": Key(integer(1), 10),
    "max_ondemand_requests": Key(integer(1), 100),
    "max_tokens_per_user": Key(integer(1), 50),
    "rate_limiting_enabled": Key(boolean, False),
    "sizing_timezone": Key(timezone_name, "UTC"),
    # Accepted for compatibility; this service has no equivalent.
    "logfile": _IGNORED,
    "site_name": Key(string, "vmpool"),
    "vm_checktime_ready": _IGNORED,
    "usage_stats": _IGNORED,
    "request_logger": _IGNORED,
    "extra_config": _IGNORED,  # merged while loading (merge_extra_configs)
    "retry_delay": _IGNORED,
    "host_selection_max_age": _IGNORED,
    "lifetime_max": _IGNORED,
}

REDIS_KEYS: dict[str, Key] = {
    "server": Key(string, "localhost"),
    "port": Key(integer(1, 65535), 6379),
    "password": Key(secret_value),
    "data_ttl": Key(integer(1), 168),
    "db": Key(integer(0), 0),
    "tls": Key(boolean, False),
    "unix_socket": Key(string),
    "socket_timeout": Key(number(0.01), 2.0),
    "min_replica_acks": Key(integer(0, 5)),
    "replica_ack_timeout": Key(integer(1, 10000), 500),
    "connection_pool_size": _IGNORED,
    "reconnect_attempts": _IGNORED,
    "redis_connection_pool_size": _IGNORED,
    "redis_connection_pool_timeout": _IGNORED,
}

POOL_KEYS: dict[str, Key] = {
    "name": Key(string, REQUIRED),
    "size": Key(integer(0, 10000), REQUIRED),
    "template": Key(string, ""),
    "folder": Key(string, ""),
    "alias": Key(string_list, ()),
    "provider": Key(string),
    "domain": Key(string),
    "dns_plugin": Key(string),
    "timeout": Key(integer(1)),
    "ready_ttl": Key(integer(1)),
    "pool": Key(string),
    "datastore": Key(string),
    "clone_target": Key(string),
    "network": Key(string),
    "datacenter": Key(string),
    "create_linked_clone": Key(boolean),
    "ondemand_fallback": Key(boolean),
    "check_loop_delay_min": Key(number(0.1)),
    "check_loop_delay_max": Key(number(0.1)),
    "check_loop_delay_decay": Key(number(1.0)),
    "clone_limit": Key(integer(1)),
    "sizing": Key(sizing),
    "snapshot_mainMem_ioBlockPages": _IGNORED,
    "snapshot_mainMem_writeThrottle": _IGNORED,
    "template_hostname": _IGNORED,
    "ready_schedule": _IGNORED,
    **DUMMY_KEYS,
    **READINESS_KEYS,
}

PROVIDER_KEYS: dict[str, Key] = {
    "provider_class": Key(choice("vsphere", "dummy")),
    "server": Key(string),
    "port": Key(integer(1, 65535)),
    "username": Key(string),
    "password": Key(secret_value),
    "insecure": Key(boolean, False),
    "ca_bundle": Key(string),
    "datacenter": Key(string),
    "connection_pool": _IGNORED,
    "connect_timeout": Key(number(0.1), 10.0),
    "call_timeout": Key(number(0.1), 60.0),
    "host_selection_cache_seconds": Key(number(0), 60.0),
    **DUMMY_KEYS,
    **READINESS_KEYS,
}

AUTH_KEYS: dict[str, Key] = {
    "provider": Key(symbol_choice("ldap", "dummy"), REQUIRED),
    "ldap": Key(mapping),
    "login_attempts_per_user": Key(integer(1), 10),
    "login_attempts_per_address": Key(integer(1), 50),
    "login_window_seconds": Key(integer(1), 300),
    "admins": Key(string_list, ()),
    "admin_groups": Key(string_list, ()),
}

DNS_KEYS: dict[str, Key] = {
    "dns_class": Key(string),
    "domain": Key(string),
    "check_names": Key(boolean),
}

RATE_LIMIT_CLASSES = ("global_per_ip", "authenticated", "vm_creation", "vm_deletion")
RATE_LIMIT_KEYS: dict[str, Key] = {
    "limit": Key(integer(1)),
    "period": Key(integer(1, 86400)),
}

TOP_LEVEL_SECTIONS = (
    "config", "redis", "auth", "providers", "pools", "tagfilter", "dns_configs", "rate_limits",
    "graphite", "statsd", "tracing", "pool_names",
)


# --- typed configuration ----------------------------------------------------------------------


@dataclass(frozen=True)
class PoolConfig:
    """One pool: what to clone, where, and how many to keep ready."""

    name: str
    size: int
    template: str
    folder: str
    provider: str
    alias: tuple[str, ...]
    domain: str | None
    timeout_minutes: int
    ready_ttl_minutes: int
    settings: Mapping[str, Any]
    """Every key given for the pool (datastore, network, dummy and readiness keys...)."""

    def get(self, key: str, default: Any = None) -> Any:
        """A pool key's value, or ``default`` when the pool does not set it."""
        value = self.settings.get(key)
        return default if value is None else value


@dataclass(frozen=True)
class ProviderConfig:
    """A provider block of ``:providers:``; ``provider_class`` says which implementation."""

    name: str
    provider_class: str
    settings: Mapping[str, Any]

    def get(self, key: str, default: Any = None) -> Any:
        value = self.settings.get(key)
        return default if value is None else value

    def pool_setting(self, pool: PoolConfig, key: str, default: Any = None) -> Any:
        """A setting that a pool may override: the pool's value, else the provider's, else default."""
        return pool.get(key, self.get(key, default))


@dataclass(frozen=True)
class DnsConfig:
    """A ``:dns_configs:`` entry: which DNS plugin (``dns_class``) manages the records of the
    pools that name it in ``dns_plugin``, for which domain, with the plugin's own keys."""

    name: str
    dns_class: str
    domain: str | None
    settings: Mapping[str, Any]

    def get(self, key: str, default: Any = None) -> Any:
        value = self.settings.get(key)
        return default if value is None else value


@dataclass(frozen=True)
class RedisConfig:
    server: str
    port: int
    password: Any
    db: int
    tls: bool
    unix_socket: str | None
    socket_timeout: float
    data_ttl_hours: int
    min_replica_acks: int | None = None
    """Replicas that must have a checkout before it is answered (WAIT); None: 1 in AWS Lambda, 0
    elsewhere. VMPOOL_REDIS_MIN_REPLICA_ACKS overrides it."""
    replica_ack_timeout_ms: int = 500


@dataclass(frozen=True)
class ServiceConfig:
    """The ``:config:`` section, with vmpooler's defaults."""

    settings: Mapping[str, Any]

    def __getattr__(self, key: str) -> Any:
        try:
            return self.settings[key]
        except KeyError:
            raise AttributeError(key) from None


@dataclass(frozen=True)
class Config:
    service: ServiceConfig
    redis: RedisConfig
    pools: tuple[PoolConfig, ...]
    providers: Mapping[str, ProviderConfig]
    auth: Mapping[str, Any] | None
    tagfilter: Mapping[str, str]
    warnings: tuple[str, ...] = ()
    rate_limits: Mapping[str, Mapping[str, int]] = field(default_factory=dict)
    """vmpooler's ``:rate_limits:``: class -> {limit, period}, only the keys given."""
    dns_configs: Mapping[str, DnsConfig] = field(default_factory=lambda: MappingProxyType({}))
    _pools_by_name: Mapping[str, PoolConfig] = field(default_factory=dict, repr=False)
    _aliases: Mapping[str, tuple[str, ...]] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        by_name = {pool.name: pool for pool in self.pools}
        aliases: dict[str, list[str]] = {}
        for pool in self.pools:
            for alias in pool.alias:
                if alias != pool.name and pool.name not in aliases.get(alias, ()):
                    aliases.setdefault(alias, []).append(pool.name)
        object.__setattr__(self, "_pools_by_name", MappingProxyType(by_name))
        object.__setattr__(
            self, "_aliases", MappingProxyType({a: tuple(p) for a, p in aliases.items()})
        )

    def pool(self, name: str) -> PoolConfig | None:
        return self._pools_by_name.get(name)

    @property
    def pool_names(self) -> tuple[str, ...]:
        return tuple(pool.name for pool in self.pools)

    def resolve(self, requested: str) -> tuple[str, ...]:
        """The pools a requested name may be served from: the pool of that name, then the pools
        that have it as an alias. A name that is both a pool and another pool's alias is served
        from all of them, as vmpooler does."""
        own = (requested,) if requested in self._pools_by_name else ()
        return own + self._aliases.get(requested, ())

    def aliases_of(self, pool_name: str) -> tuple[str, ...]:
        pool = self.pool(pool_name)
        return pool.alias if pool else ()

    def provider_for(self, pool: PoolConfig) -> ProviderConfig:
        return self.providers[pool.provider]

    def dns_for(self, pool: PoolConfig) -> DnsConfig | None:
        """The DNS config the pool's ``dns_plugin`` names (None: the pool's records are not managed)."""
        name = pool.get("dns_plugin")
        return self.dns_configs.get(name) if name else None


# --- loading ---------------------------------------------------------------------------------


def _strip_colons(value: Any) -> Any:
    """Turn Ruby-symbol keys (``:pools``) into plain ones, at every level."""
    if isinstance(value, dict):
        return {
            (key.lstrip(":") if isinstance(key, str) else key): _strip_colons(item)
            for key, item in value.items()
        }
    if isinstance(value, list):
        return [_strip_colons(item) for item in value]
    return value


class _Reader:
    """Collects problems and warnings while checking sections against their key tables."""

    def __init__(self) -> None:
        self.problems: list[str] = []
        self.warnings: list[str] = []

    def section(self, raw: Any, keys: Mapping[str, Key], path: str) -> dict[str, Any]:
        if raw is None:
            raw = {}
        if not isinstance(raw, dict):
            self.problems.append(f"{path}: must be a mapping, got {_show(raw)}")
            return {name: (None if key.default is REQUIRED else key.default) for name, key in keys.items()}
        result: dict[str, Any] = {}
        for name, key in keys.items():
            value = raw.get(name)
            if value is None:
                if key.default is REQUIRED:
                    self.problems.append(f"{path}.{name}: is required")
                    result[name] = None
                else:
                    result[name] = key.default
                continue
            try:
                result[name] = key.check(value)
            except _Invalid as invalid:
                self.problems.append(f"{path}.{name}: {invalid}")
                result[name] = None if key.default is REQUIRED else key.default
        for name in raw:
            if name not in keys:
                self.warnings.append(f"{path}.{name}: unknown key, ignored")
        return result


_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
"""libyaml's safe loader when PyYAML was built with it (the packaged zip is): about 8 times
faster than the pure-Python one on a config of many pools; the same documents either way."""


def _read_document(text: str, source: str) -> dict[str, Any]:
    """One YAML mapping, colon-stripped. Raises ConfigError naming ``source``."""
    try:
        document = yaml.load(text, Loader=_YAML_LOADER)
    except yaml.YAMLError as error:
        raise ConfigError([f"{source}: not valid YAML: {error}"]) from None
    if document is None:
        document = {}
    if not isinstance(document, dict):
        raise ConfigError([f"{source}: must be a YAML mapping at the top level"])
    return _strip_colons(document)


def parse(text: str, source: str = "config", base_dir: Path | None = None) -> Config:
    """Parse and validate YAML text, merging the files its ``config.extra_config`` lists
    (relative paths from ``base_dir``, else the working directory). Raises ConfigError listing
    every problem."""
    document = _read_document(text, source)
    return build(merge_extra_configs(document, base_dir or Path.cwd()))


MAX_EXTRA_CONFIGS = 50
"""More files than any deployment splits its config into: a typo cannot make a load read on."""


def extra_config_paths(document: Mapping[str, Any]) -> list[str]:
    """The files ``config.extra_config`` names: a comma-separated string as vmpooler reads it
    (its EXTRA_CONFIG), or a YAML list."""
    section = document.get("config")
    raw = section.get("extra_config") if isinstance(section, dict) else None
    if raw is None:
        return []
    items = raw if isinstance(raw, list) else str(raw).split(",")
    return [str(item).strip() for item in items if str(item).strip()]


def merge_extra_configs(document: dict[str, Any], base_dir: Path) -> dict[str, Any]:
    """vmpooler's ``extra_config``: each listed YAML file is deep-merged into the main document.

    As vmpooler's deep_merge does it, the main document wins: a value it sets is kept, keys it
    lacks are added from the extra file, mappings merge key by key and lists are joined (the extra
    file's items that are not already there are appended: a file of extra ``pools`` adds pools).
    Extra files are read in order; their own ``extra_config`` is not followed.
    """
    paths = extra_config_paths(document)
    if len(paths) > MAX_EXTRA_CONFIGS:
        raise ConfigError([f"config.extra_config: at most {MAX_EXTRA_CONFIGS} files, got {len(paths)}"])
    problems: list[str] = []
    for name in paths:
        path = Path(name) if Path(name).is_absolute() else base_dir / name
        try:
            text = path.read_text()
        except OSError as error:
            problems.append(f"config.extra_config: cannot read {path}: {error.strerror}")
            continue
        try:
            extra = _read_document(text, str(path))
        except ConfigError as error:
            problems.extend(error.problems)
            continue
        document = _deep_merge(document, extra)
    if problems:
        raise ConfigError(problems)
    return document


def _deep_merge(main: Any, extra: Any) -> Any:
    """``main`` with what ``extra`` adds (see merge_extra_configs); neither is changed."""
    if isinstance(main, dict) and isinstance(extra, dict):
        merged = dict(main)
        for key, value in extra.items():
            merged[key] = _deep_merge(main[key], value) if key in main else value
        return merged
    if isinstance(main, list) and isinstance(extra, list):
        return main + [item for item in extra if item not in main]
    return extra if main is None else main


def build(document: Mapping[str, Any]) -> Config:
    """Validate an already-parsed (colon-stripped) config document."""
    reader = _Reader()
    for name in document:
        if name not in TOP_LEVEL_SECTIONS:
            reader.warnings.append(f"{name}: unknown section, ignored")

    service = reader.section(document.get("config"), SERVICE_KEYS, "config")
    if service["vm_lifetime_auth"] is None:
        service["vm_lifetime_auth"] = service["vm_lifetime"]
    if service["check_loop_delay_max"] < service["check_loop_delay_min"]:
        service["check_loop_delay_max"] = service["check_loop_delay_min"]

    redis_raw = reader.section(document.get("redis"), REDIS_KEYS, "redis")
    redis = RedisConfig(
        server=redis_raw["server"],
        port=redis_raw["port"],
        password=redis_raw["password"],
        db=redis_raw["db"],
        tls=redis_raw["tls"],
        unix_socket=redis_raw["unix_socket"],
        socket_timeout=redis_raw["socket_timeout"],
        data_ttl_hours=redis_raw["data_ttl"],
        min_replica_acks=redis_raw["min_replica_acks"],
        replica_ack_timeout_ms=redis_raw["replica_ack_timeout"],
    )

    providers = _read_providers(reader, document.get("providers"))
    dns_configs = _read_dns_configs(reader, document.get("dns_configs"))
    pools = _read_pools(reader, document.get("pools"), service, providers, dns_configs)

    auth = None
    if document.get("auth") is not None:
        auth_values = reader.section(document["auth"], AUTH_KEYS, "auth")
        if auth_values.get("provider") == "ldap":
            _check_ldap(reader, auth_values.get("ldap"))
        auth = MappingProxyType(auth_values)

    tagfilter: dict[str, str] = {}
    raw_tagfilter = document.get("tagfilter") or {}
    if not isinstance(raw_tagfilter, dict):
        reader.problems.append(f"tagfilter: must be a mapping, got {_show(raw_tagfilter)}")
    else:
        for tag, pattern in raw_tagfilter.items():
            try:
                tagfilter[str(tag)] = regex(pattern)
            except _Invalid as invalid:
                reader.problems.append(f"tagfilter.{tag}: {invalid}")

    rate_limits = _read_rate_limits(reader, document.get("rate_limits"))

    if reader.problems:
        raise ConfigError(reader.problems)
    return Config(
        service=ServiceConfig(MappingProxyType(service)),
        redis=redis,
        pools=tuple(pools),
        providers=MappingProxyType(providers),
        auth=auth,
        tagfilter=MappingProxyType(tagfilter),
        warnings=tuple(reader.warnings),
        rate_limits=MappingProxyType(rate_limits),
        dns_configs=MappingProxyType(dns_configs),
    )


def _read_rate_limits(reader: _Reader, raw: Any) -> dict[str, Mapping[str, int]]:
    """``:rate_limits:`` as vmpooler reads it: per class, a request ``limit`` per ``period`` seconds."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        reader.problems.append(f"rate_limits: must be a mapping, got {_show(raw)}")
        return {}
    limits: dict[str, Mapping[str, int]] = {}
    for name, block in raw.items():
        if name not in RATE_LIMIT_CLASSES:
            reader.warnings.append(f"rate_limits.{name}: unknown class, ignored")
            continue
        values = reader.section(block, RATE_LIMIT_KEYS, f"rate_limits.{name}")
        limits[name] = MappingProxyType({key: value for key, value in values.items() if value is not None})
    return limits


def _check_ldap(reader: _Reader, raw: Any) -> None:
    """Refuse an invalid ``:auth: :ldap:`` block at load, not at the first login."""
    from chalicelib.auth.base import AuthConfigError
    from chalicelib.auth.ldap import parse_ldap_settings

    try:
        parse_ldap_settings(raw)
    except AuthConfigError as error:
        reader.problems.extend(error.problems)


def _read_providers(reader: _Reader, raw: Any) -> dict[str, ProviderConfig]:
    providers: dict[str, ProviderConfig] = {}
    if raw is None:
        return providers
    if not isinstance(raw, dict):
        reader.problems.append(f"providers: must be a mapping, got {_show(raw)}")
        return providers
    for name, block in raw.items():
        settings = reader.section(block, PROVIDER_KEYS, f"providers.{name}")
        provider_class = settings.pop("provider_class") or str(name)
        if provider_class not in ("vsphere", "dummy"):
            reader.problems.append(
                f"providers.{name}.provider_class: must be one of vsphere, dummy, got {_show(provider_class)}"
            )
        providers[str(name)] = ProviderConfig(str(name), provider_class, MappingProxyType(settings))
    return providers


def _read_dns_configs(reader: _Reader, raw: Any) -> dict[str, DnsConfig]:
    """Each entry checked against DNS_KEYS plus the keys its plugin owns (chalicelib.dns)."""
    from chalicelib.dns.registry import plugin_keys

    if raw is None:
        return {}
    if not isinstance(raw, dict):
        reader.problems.append(f"dns_configs: must be a mapping, got {_show(raw)}")
        return {}
    configs: dict[str, DnsConfig] = {}
    for name, block in raw.items():
        path = f"dns_configs.{name}"
        # vmpooler takes the entry's name as its class when dns_class is missing.
        dns_class = str((block or {}).get("dns_class") or name) if isinstance(block, dict) else str(name)
        own_keys = plugin_keys(dns_class)
        if own_keys is None:
            reader.warnings.append(
                f"{path}.dns_class: {_show(dns_class)} is not a DNS plugin vmpool ships (route53, "
                "dynamic-dns): its pools' records are not managed")
            own_keys = {}
        settings = reader.section(block, {**DNS_KEYS, **own_keys}, path)
        configs[str(name)] = DnsConfig(
            name=str(name),
            dns_class=dns_class,
            domain=settings.pop("domain"),
            settings=MappingProxyType({k: v for k, v in settings.items() if v is not None and k != "dns_class"}),
        )
    return configs


def _read_pools(
    reader: _Reader,
    raw: Any,
    service: Mapping[str, Any],
    providers: dict[str, ProviderConfig],
    dns_configs: Mapping[str, DnsConfig],
) -> list[PoolConfig]:
    if raw is None:
        return []
    if not isinstance(raw, list):
        reader.problems.append(f"pools: must be a list of pools, got {_show(raw)}")
        return []
    pools: list[PoolConfig] = []
    seen: set[str] = set()
    for index, block in enumerate(raw):
        path = f"pools[{index}]"
        settings = reader.section(block, POOL_KEYS, path)
        name = settings["name"]
        if name is None:
            continue
        if not POOL_NAME_PATTERN.match(name):
            reader.problems.append(f"{path}.name: must match {POOL_NAME_PATTERN.pattern}, got {_show(name)}")
        if name in seen:
            reader.problems.append(f"{path}.name: duplicate pool name {_show(name)}")
        seen.add(name)
        provider = settings["provider"] or "vsphere"
        if provider not in providers:
            if provider in ("vsphere", "dummy"):
                # vmpooler lets a pool name a provider class without a providers block.
                providers[provider] = ProviderConfig(provider, provider, MappingProxyType({}))
            else:
                reader.problems.append(f"{path}.provider: no provider named {_show(provider)} in providers")
        if providers.get(provider) and providers[provider].provider_class == "vsphere" and not settings["template"]:
            reader.problems.append(f"{path}.template: is required for a vsphere pool")
        domain = settings["domain"]
        if domain is None and settings["dns_plugin"]:
            dns = dns_configs.get(settings["dns_plugin"])
            if dns is None:
                reader.problems.append(f"{path}.dns_plugin: no dns_configs entry named {_show(settings['dns_plugin'])}")
            else:
                domain = dns.domain
        if domain is None:
            domain = service["domain"]
        pools.append(
            PoolConfig(
                name=name,
                size=settings["size"] if settings["size"] is not None else 0,
                template=settings["template"],
                folder=settings["folder"],
                provider=provider,
                alias=settings["alias"],
                domain=domain,
                timeout_minutes=settings["timeout"] or service["timeout"],
                ready_ttl_minutes=settings["ready_ttl"] or service["ready_ttl"],
                settings=MappingProxyType({k: v for k, v in _as_written(settings, block).items() if v is not None}),
            )
        )
    return pools


def _as_written(settings: Mapping[str, Any], block: Any) -> dict[str, Any]:
    """The pool's checked settings, with ``alias`` kept a string when written as one (vmpooler
    echoes it as written in /status and /config)."""
    written = block.get("alias") if isinstance(block, dict) else None
    return {**settings, "alias": written} if isinstance(written, str) else dict(settings)


def load(environ: Mapping[str, str] | None = None) -> Config:
    """Load the config named by the environment: raw YAML in VMPOOL_CONFIG, a file named by
    VMPOOL_CONFIG_FILE, else the packaged default."""
    environ = os.environ if environ is None else environ
    if environ.get(CONFIG_YAML_ENV):
        return parse(environ[CONFIG_YAML_ENV], CONFIG_YAML_ENV)
    path = Path(environ.get(CONFIG_FILE_ENV) or DEFAULT_CONFIG_FILE)
    try:
        text = path.read_text()
    except OSError as error:
        raise ConfigError([f"{path}: cannot read: {error.strerror}"]) from None
    return parse(text, str(path), base_dir=path.parent)
