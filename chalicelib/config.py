"""Service configuration: vmpooler's YAML, loaded as it is, validated where it is accepted.

vmpooler writes top-level sections as Ruby symbols (``:pools:``); we accept that and the plain
spelling at every level by dropping leading colons from mapping keys. Each section is a frozen
stdlib dataclass (the value types and their messages: chalicelib/config_fields.py); each provider
and each DNS plugin owns the dataclass of its own block (chalicelib/providers/settings.py,
chalicelib/dns/registry.py), and the LDAP block is parsed once into ``LdapSettings``. Every key of
vmpooler's config is known; unknown keys log a warning instead of failing, so a config that works
for vmpooler keeps working here. ``parse`` validates with pydantic (imported on first use) and
fails with every problem listed, each naming its key path (``pools[2].size: must be an integer >=
0, got "five"``): pydantic's errors are translated into that form, never shown as pydantic writes
them. What the Lambdas load is the canonical JSON of a validated config (``canonical_json``,
written by packaging and config-push), built by ``from_canonical`` without pydantic or yaml.

This module keeps real annotations (no ``from __future__ import annotations``): the canonical
build reads the blocks' type hints, and string annotations would be compiled at every cold start.
"""

import dataclasses
import errno
import hashlib
import json
import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Annotated, Any, Generic, Mapping, NamedTuple, Optional, Sequence, TypeVar, overload

from chalicelib.answer_sizes import answer_size_problems
from chalicelib.auth.ldap_settings import LdapSettings
from chalicelib.auth.secrets import Secret, SecretReference
from chalicelib.config_events import GAVE_UP, EventDocument
from chalicelib.config_fields import (
    MAX_DNS_NAME_LENGTH,
    SHOWN_CHARACTERS,
    BlockReader,
    Bool,
    DnsName,
    Ignored,
    Int0,
    Int1,
    Invalid,
    InventoryPath,
    Port,
    Seconds,
    SecretValue,
    SettingsModel,
    Str,
    StrList,
    TrustedReader,
    Weights,
    at_least,
    bounded,
    checked_by,
    compiled_regex,
    deployment_name,
    given_fields,
    hostname_prefix,
    longest_hostname,
    name_list,
    number,
    one_of,
    regex,
    short_string,
    show,
    timezone_name,
    within,
)
from chalicelib.config_fields import sizing as sizing_block
from chalicelib.dns.base import DnsConfig, DnsSettings
from chalicelib.providers.settings import (
    PROVIDER_CLASSES,
    ProviderKeys,
    ProviderSettings,
    VcenterResilienceKeys,
    settings_model,
)

if TYPE_CHECKING:
    from chalicelib.sizing.settings import SizingSettings  # noqa: F401 - PoolConfig.sizing names it in a string

CONFIG_FILE_ENV = "VMPOOL_CONFIG_FILE"
CONFIG_YAML_ENV = "VMPOOL_CONFIG"
DEFAULT_CONFIG_FILE = Path(__file__).with_name("vmpool.yaml")

POOL_NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
"""Shown as it is in config errors; checked with ``fullmatch`` (``$`` alone would let a final line break through)."""
MAX_REQUEST_NAME_CHARACTERS = 100
REQUEST_NAME_PATTERN = re.compile(r"^[A-Za-z0-9_.-]{1,100}\Z")
"""A pool or alias as a request names it (``POST /vm``, ``/ondemandvm``, in the path or the body;
``+`` joins names in a path, ``,`` in ``/poolstat?pool=``). A pool's aliases must be such names:
one that is not (``debian,ubuntu``, ``centos 7``, ``a/b``) was shown by /status and /config and
answered 400 to every request for it."""
ANSWER_KEYS = ("ok", "domain", "request_id", "ready")
"""Keys a checkout's answer (``POST /vm``) and an on-demand request's (``GET /ondemandvm/<id>``)
have beside the names requested, each name a key of its own: a pool or alias spelt like one took
its place. A v1 checkout of a pool ``domain`` answered ``{"ok":true,"domain":"example.com"}``,
its VM checked out with the hostname lost; a pool ``ready`` made a building request's ``ready`` an
object (true to a client); an alias ``request_id`` put hostnames where the id was. Such a name is
refused where a config is validated."""
MAX_HOURS = 876_000
"""About 100 years, the most of any span of hours in the config (token_ttl, vm_lifetime,
vm_lifetime_auth, max_lifetime_upper_limit, data_ttl): a token's expiry and a VM's end time are shown as
dates, and a datetime ends with the year 9999 (token_ttl: 100000000 loaded, and every use of every
token was a 500; vm_lifetime: 100000000 made GET /vm/<host> of every VM checked out a 500)."""

MAX_TAG_KEY_CHARACTERS = 50
"""The longest tag key a request may send (PUT /vm/<host>): an ``allowed_tags`` name past it
could never be used."""
MAX_ALLOWED_TAGS = 1_000
"""The most names ``allowed_tags`` may list (``max_tags_per_vm`` is at most 1,000 too)."""

MAX_OPEN_ONDEMAND_REQUESTS = 10_000
"""The most ``max_ondemand_requests`` and ``max_ondemand_requests_per_user`` may allow: every pass
of a pool makes one script call per request open for it, and every ``GET /status`` reads each
open request (before, any integer loaded, 10**400 too, and the quota was no bound)."""
MAX_KEPT_ONDEMAND_REQUESTS = 1_000_000
"""The most ``max_ondemand_requests_kept`` may keep: about 1.2 KB of Redis each (1.2 GB at this
bound); past it the setting bounds nothing a caller can make grow."""

MAX_TAGFILTERS = 1_000
"""The most tags ``tagfilter`` may give a pattern, whatever the config's format: each is compiled
at every cold start (and analysed where the YAML is validated). Before, a pushed canonical config
of 100,000 (3 MB) cost every cold start 7.1 s of CPU, against 0.08 s at 1,000."""
MAX_ADMIN_GROUPS = 20
"""The most groups ``auth.admin_groups`` may list: any token holder's runtime pool change asks
the directory about each (one search a group) before its 403."""
MAX_GROUP_DN_CHARACTERS = 1024

SOCKET_TIMEOUT_LIMIT = 25.0
"""The longest ``redis.socket_timeout``: as a request's directory work (auth.directory_budget), a
wait on Redis must end well inside the local stack's 30 s loop watchdog."""

Hours = Annotated[int, bounded(1, MAX_HOURS)]
SITE_NAME_MOST_CHARACTERS = 200
"""The longest ``site_name``: the page shows it three times (the tab's title, the header and its
tooltip), and 10,000 characters of it were 30,000 of every page load."""


class ConfigError(ValueError):
    """The configuration is invalid; ``problems`` lists each one with its key path."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = list(problems)
        super().__init__("invalid configuration:\n  " + "\n  ".join(self.problems))


# --- the sections ----------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class ServiceConfig(VcenterResilienceKeys):
    """The ``:config:`` section, with vmpooler's defaults."""

    task_limit: Int1 = 10
    timeout: Int1 = 15
    timeout_notification: Int0 = 5
    ready_ttl: Int1 = 60
    vm_lifetime: Hours = 24
    vm_lifetime_auth: Hours = 0
    """Unset: vm_lifetime (filled in after validation; 0 is never valid when written)."""
    max_lifetime_upper_limit: Optional[Hours] = None
    prefix: Annotated[str, checked_by(hostname_prefix)] = ""
    domain: Optional[DnsName] = None
    allowed_tags: Annotated[tuple[str, ...], checked_by(name_list(MAX_ALLOWED_TAGS, MAX_TAG_KEY_CHARACTERS))] = ()
    """At most MAX_ALLOWED_TAGS names of a tag key's length, whatever the config's format: each tag
    of a PUT /vm is looked up in it (before, 1,000,000 names pushed made every tagging request slow)."""
    experimental_features: Bool = False
    purge_unconfigured_resources: Bool = False
    resources_allowlist: StrList = ()
    create_folders: Bool = False
    create_linked_clones: Bool = True
    create_template_delta_disks: Bool = False
    manage_host_selection: Bool = False
    migration_limit: Int0 = 0
    utilization_limit: Annotated[int, bounded(1, 100)] = 90
    max_ondemand_instances_per_request: Int1 = 10
    ondemand_clone_limit: Int1 = 10
    ondemand_request_ttl: Int1 = 5
    ondemand_fallback: Bool = False
    max_vm_retries: Int0 = 3
    check_loop_delay_min: Seconds = 5.0
    clone_poll_interval: Seconds = 0.25
    check_loop_delay_max: Seconds = 60.0
    check_loop_delay_decay: Annotated[float, at_least(1.0)] = 2.0
    token_ttl: Optional[Hours] = None
    clone_target: Optional[InventoryPath] = None
    backend_weight: Optional[Weights] = None
    vm_checktime: Int1 = 1
    # Bounds on what callers can make grow (docs/auth.md, "Limits").
    max_tags_per_vm: Annotated[int, bounded(1, 1000)] = 32
    max_tag_names_per_day: Annotated[int, bounded(1, 10000)] = 50
    max_tag_values_per_day: Annotated[int, bounded(1, 10000)] = 100
    max_running_vms_per_user: Int1 = 100
    max_running_vms: Int1 = 1000
    max_ondemand_requests_per_user: Annotated[int, bounded(1, MAX_OPEN_ONDEMAND_REQUESTS)] = 10
    max_ondemand_requests: Annotated[int, bounded(1, MAX_OPEN_ONDEMAND_REQUESTS)] = 100
    max_ondemand_requests_kept: Annotated[int, bounded(1, MAX_KEPT_ONDEMAND_REQUESTS)] = 10000
    max_tokens_per_user: Int1 = 50
    rate_limiting_enabled: Bool = False
    max_rate_limited_clients: Int1 = 20000
    """Clients each rate-limit class counts on their own at once; past it new ones share counters
    (api/limits.py): what the rate limits keep in Redis is bounded whatever their periods."""
    sizing_timezone: Annotated[str, checked_by(timezone_name)] = "UTC"
    site_name: Annotated[str, checked_by(short_string(SITE_NAME_MOST_CHARACTERS),
                                         trusted=short_string(SITE_NAME_MOST_CHARACTERS))] = "vmpool"
    """The dashboard's title (its header and the browser tab's); at most SITE_NAME_MOST_CHARACTERS
    whatever the config's format: the canonical JSON a function builds is held to it too (before,
    only the YAML was, and an object written otherwise put its whole name on every page)."""
    deployment: Optional[Annotated[str, checked_by(deployment_name)]] = None
    """Which deployment this is, written into the annotation of every VM it makes: VMs another
    deployment made are never taken out of service or purged (docs/vsphere.md, "Two deployments on one vCenter").
    None: the stage's metric namespace (chalicelib/providers/ownership.py)."""
    # vmpooler's, read by the vsphere provider blocks that set no key of their own for it.
    host_selection_max_age: Optional[Annotated[float, checked_by(number(0, 86400))]] = None
    """Seconds host usage is reused for host selection: a block's host_selection_cache_seconds."""
    vsphere_timeout: Optional[Annotated[float, checked_by(number(0.1, 600))]] = None
    """Seconds of one vCenter call: a block's call_timeout (a block's own vsphere_timeout first)."""
    # Accepted for compatibility; this service has no equivalent.
    logfile: Ignored = None
    vm_checktime_ready: Ignored = None
    usage_stats: Ignored = None
    request_logger: Ignored = None
    extra_config: Ignored = None  # merged while loading (merge_extra_configs)
    retry_delay: Ignored = None
    lifetime_max: Ignored = None
    # vmpooler's retries and monitor of its vCenter connections (and VcenterResilienceKeys'): a
    # failed call is tried again by the next pass.
    max_tries: Ignored = None
    retry_factor: Ignored = None
    connection_pool_monitor_enabled: Ignored = None
    connection_pool_monitor_interval: Ignored = None
    # vmpooler's dead-letter queue, purge of stale queue entries and queue health checks
    # (vmpooler.yml.example): its Redis queues; vmpool keeps no such queues (a VM's state is one
    # record, the passes' timeouts end what is stuck, /status and the metrics show the rest).
    dlq_enabled: Ignored = None
    dlq_ttl: Ignored = None
    dlq_max_entries: Ignored = None
    purge_enabled: Ignored = None
    purge_interval: Ignored = None
    purge_dry_run: Ignored = None
    max_pending_age: Ignored = None
    max_ready_age: Ignored = None
    max_completed_age: Ignored = None
    max_orphaned_age: Ignored = None
    max_request_age: Ignored = None
    health_check_enabled: Ignored = None
    health_check_interval: Ignored = None
    health_thresholds: Ignored = None

    def __post_init__(self) -> None:
        # Frozen: these two are settled once, here, before anyone reads them (idempotent, so a
        # config built again from its canonical form is the same).
        if self.vm_lifetime_auth == 0:
            object.__setattr__(self, "vm_lifetime_auth", self.vm_lifetime)
        if self.check_loop_delay_max < self.check_loop_delay_min:
            object.__setattr__(self, "check_loop_delay_max", self.check_loop_delay_min)

    def largest_request(self) -> tuple[int, str]:
        """The most VMs one request can ever get, and the field that bounds it: the smaller of
        ``max_running_vms_per_user`` (the caller's, on a tie: the one to ask about) and
        ``max_running_vms``. A larger request never fits (api/limits.never_fits)."""
        return min((int(self.max_running_vms_per_user), "max_running_vms_per_user"),
                   (int(self.max_running_vms), "max_running_vms"), key=lambda bound: bound[0])


@dataclass(frozen=True, kw_only=True)
class RedisConfig(SettingsModel):
    """The ``:redis:`` section."""

    server: Str = "localhost"
    port: Port = 6379
    password: Optional[SecretValue] = field(default=None, repr=False)
    data_ttl: Hours = 168
    """Hours a record outlives its use. At most MAX_HOURS: ``data_ttl: 10000000000000`` loaded and
    every write's EXPIRE was past Redis's range (``ERR invalid expire time``): every write failed."""
    db: Int0 = 0
    tls: Bool = False
    unix_socket: Optional[Str] = None
    socket_timeout: Annotated[float, within(0.01, SOCKET_TIMEOUT_LIMIT)] = 2.0
    """Seconds a Redis command may wait for its answer. Bounded below the local stack's 30 s loop
    watchdog: the first request to find Redis stopped waits this long on its loop (the breaker
    answers the others at once), and a longer wait would have the loop counted stuck."""
    min_replica_acks: Optional[Annotated[int, bounded(0, 5)]] = None
    """Replicas that must have a checkout before it is answered (WAIT); None: 1 in AWS Lambda, 0
    elsewhere. VMPOOL_REDIS_MIN_REPLICA_ACKS overrides it."""
    replica_ack_timeout: Annotated[int, bounded(1, 10000)] = 500
    replica_loss_grace: Annotated[int, bounded(0, 3600)] = 60
    """Seconds after a primary was last seen with its replicas during which writes there still
    wait for them once they are gone (a partition may be followed by their promotion): 503s for
    that long when a replica is lost for good. 0: never (a partition's writes may be lost).
    docs/reliability.md, "A checkout on a primary cut off from its replica"."""
    connection_pool_size: Ignored = None
    connection_pool_timeout: Ignored = None
    reconnect_attempts: Ignored = None
    redis_connection_pool_size: Ignored = None
    redis_connection_pool_timeout: Ignored = None
    username: Ignored = None  # vmpooler documents it but authenticates as Redis's default user, as vmpool does
    # vmpooler.yml.example writes its dead-letter queue's keys here too (vmpooler reads them from :config:).
    dlq_enabled: Ignored = None
    dlq_ttl: Ignored = None
    dlq_max_entries: Ignored = None

    @property
    def data_ttl_hours(self) -> int:
        return self.data_ttl

    @property
    def replica_ack_timeout_ms(self) -> int:
        return self.replica_ack_timeout


@dataclass(frozen=True, kw_only=True)
class PoolSettings(SettingsModel):
    """The keys of a ``:pools:`` entry vmpool reads itself; a pool may also set its provider's keys
    (chalicelib/providers/), which override the provider's."""

    name: Str
    size: Annotated[int, bounded(0, 10000)]
    template: InventoryPath = ""
    folder: InventoryPath = ""
    alias: StrList = ()
    provider: Optional[Str] = None
    domain: Optional[DnsName] = None
    dns_plugin: Optional[Str] = None
    timeout: Optional[Int1] = None
    timeout_notification: Optional[Int0] = None
    ready_ttl: Optional[Int1] = None
    pool: Optional[InventoryPath] = None
    datastore: Optional[InventoryPath] = None
    clone_target: Optional[InventoryPath] = None
    network: Optional[InventoryPath] = None
    datacenter: Optional[InventoryPath] = None
    create_linked_clone: Optional[Bool] = None
    ondemand_fallback: Optional[Bool] = None
    check_loop_delay_min: Optional[Seconds] = None
    check_loop_delay_max: Optional[Seconds] = None
    check_loop_delay_decay: Optional[Annotated[float, at_least(1.0)]] = None
    clone_limit: Optional[Int1] = None
    sizing: Optional[Annotated[Any, checked_by(sizing_block, trusted=sizing_block)]] = None
    """Canonical form: the block as written (``SizingSettings.source``), checked again when built."""
    # vmpooler's: written into each clone's extraConfig as mainMem.ioBlockPages / mainMem.iowait.
    snapshot_mainMem_ioBlockPages: Optional[Annotated[int, bounded(0, 2**31 - 1)]] = None
    snapshot_mainMem_iowait: Optional[Annotated[int, bounded(0, 2**31 - 1)]] = None
    template_hostname: Ignored = None
    ready_schedule: Ignored = None


@dataclass(frozen=True, kw_only=True)
class AuthConfig(SettingsModel):
    """The ``:auth:`` section; ``ldap`` is the ``:ldap:`` block parsed once at load."""

    provider: Annotated[str, one_of("ldap", "dummy")]
    login_attempts_per_user: Int1 = 10
    """Failed logins of one user name from one client address a window (auth/ratelimit.py)."""
    login_attempts_per_user_all_addresses: Int1 = 100
    """Failed logins of one user name from all addresses a window: one account guessed from many."""
    login_attempts_per_address: Int1 = 500
    """Failed logins of any names from one address a window: guessing across many accounts."""
    login_window_seconds: Int1 = 300
    max_login_counters: Int1 = 20000
    """User names (and, apart, addresses) whose failed logins are counted on their own at once;
    past it new ones share counters (auth/ratelimit.py): bounded whatever the window."""
    admins: StrList = ()
    admin_groups: Annotated[tuple[str, ...], checked_by(name_list(MAX_ADMIN_GROUPS, MAX_GROUP_DN_CHARACTERS))] = ()
    """At most MAX_ADMIN_GROUPS group DNs, whatever the config's format: an administrator's check
    of a user not listed in ``admins`` searches each group (ldap.member_of_any)."""
    directory_check_minutes: Annotated[int, bounded(0, 1440)] = 10
    """How old the directory's answer on a token's user may be before a use of the token asks
    again (auth/directory_check.py); 0: never asked (tokens live until deleted or expired)."""
    directory_outage_grace_minutes: Annotated[int, bounded(0, 10080)] = 10080
    """While the directory cannot answer, how long since a user was last found its tokens keep
    working; past it they answer 503."""
    ldap: Optional[LdapSettings] = None
    """The ``:ldap:`` block when provider is ldap (chalicelib/auth/ldap_settings.py)."""


RATE_LIMIT_CLASSES = ("global_per_ip", "authenticated", "vm_creation", "vm_deletion")


@dataclass(frozen=True, kw_only=True)
class RateLimit(SettingsModel):
    """One class of ``:rate_limits:``: a request ``limit`` per ``period`` seconds."""

    limit: Optional[Int1] = None
    period: Optional[Annotated[int, bounded(1, 86400)]] = None


TOP_LEVEL_SECTIONS = (
    "config", "redis", "auth", "providers", "pools", "tagfilter", "dns_configs", "rate_limits",
    "graphite", "statsd", "prometheus", "graphs", "tracing", "pool_names",
)

SECTION_MODELS: Mapping[str, type[SettingsModel]] = MappingProxyType({
    "config": ServiceConfig, "redis": RedisConfig, "pools": PoolSettings, "auth": AuthConfig,
    "dns_configs": DnsSettings,
})
"""The model of each section vmpool reads (providers and DNS plugins add theirs)."""


# --- typed configuration ----------------------------------------------------------------------


SettingType = TypeVar("SettingType")


class PoolSetting(Generic[SettingType]):
    """A pool key read typed from ``PoolConfig.settings`` (None when the pool does not give it):
    the settings are validated where the config is built, so reading one needs no check."""

    def __init__(self, key: str) -> None:
        self.key = key

    @overload
    def __get__(self, pool: None, owner: type) -> "PoolSetting[SettingType]": ...

    @overload
    def __get__(self, pool: "PoolConfig", owner: type) -> SettingType: ...

    def __get__(self, pool: "PoolConfig | None", owner: type) -> Any:
        return self if pool is None else pool.settings.get(self.key)


@dataclass(frozen=True)
class PoolConfig:
    """One pool: what to clone, where, and how many to keep ready. ``settings`` holds every key
    given for the pool, validated (PoolSettings and its provider's model); the attributes below
    read them typed."""

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
    draining: bool = False
    """A pool removed from the config whose VMs drain (manager/dispatch.py): size 0, and its
    runtime overrides (kept in Redis for a pool of that name added again) do not apply."""

    dns_plugin = PoolSetting[str | None]("dns_plugin")
    resource_pool = PoolSetting[str | None]("pool")
    """vmpooler's ``pool`` key: the vSphere resource pool."""
    datastore = PoolSetting[str | None]("datastore")
    clone_target = PoolSetting[str | None]("clone_target")
    network = PoolSetting[str | None]("network")
    datacenter = PoolSetting[str | None]("datacenter")
    create_linked_clone = PoolSetting[bool | None]("create_linked_clone")
    snapshot_io_block_pages = PoolSetting[int | None]("snapshot_mainMem_ioBlockPages")
    """vmpooler's ``snapshot_mainMem_ioBlockPages``: the clones' ``mainMem.ioBlockPages``."""
    snapshot_iowait = PoolSetting[int | None]("snapshot_mainMem_iowait")
    """vmpooler's ``snapshot_mainMem_iowait``: the clones' ``mainMem.iowait``."""
    ondemand_fallback = PoolSetting[bool | None]("ondemand_fallback")
    check_loop_delay_min = PoolSetting[float | None]("check_loop_delay_min")
    clone_limit = PoolSetting[int | None]("clone_limit")
    timeout_notification = PoolSetting[int | None]("timeout_notification")
    """Minutes before a slow pending VM is warned about (vmpooler's pool key; else config's)."""
    sizing = PoolSetting["SizingSettings | None"]("sizing")


@dataclass(frozen=True)
class ProviderConfig:
    """A provider block of ``:providers:``; ``provider_class`` says which implementation and
    ``settings`` is the block validated with that class's model."""

    name: str
    provider_class: str
    settings: ProviderSettings

    def pool_setting(self, pool: PoolConfig, key: str, default: Any = None) -> Any:
        """A provider key the pool may override, by name (the dummy provider reads its simulated
        times and rates by operation): the pool's value, else the provider's, else ``default``."""
        value = pool.settings.get(key)
        if value is None:
            value = getattr(self.settings, key, None)
        return default if value is None else value


@dataclass(frozen=True)
class Config:
    service: ServiceConfig
    redis: RedisConfig
    pools: tuple[PoolConfig, ...]
    providers: Mapping[str, ProviderConfig]
    auth: AuthConfig | None
    tagfilter: Mapping[str, str]
    warnings: tuple[str, ...] = ()
    rate_limits: Mapping[str, Mapping[str, int]] = field(default_factory=dict)
    """vmpooler's ``:rate_limits:``: class -> {limit, period}, only the keys given."""
    dns_configs: Mapping[str, DnsConfig] = field(default_factory=lambda: MappingProxyType({}))
    generation: float = 0.0
    """When the config pushed to S3 was pushed (epoch seconds, later than the config it replaced
    even within a second: config_source.object_generation): orders the configs of functions that
    overlap after a push (manager/dispatch.py); 0 for a config read from a file, which nothing
    overlaps."""
    _pools_by_name: Mapping[str, PoolConfig] = field(default_factory=dict, repr=False)
    _aliases: Mapping[str, tuple[str, ...]] = field(default_factory=dict, repr=False)
    _pool_names: tuple[str, ...] = field(default=(), repr=False)

    def __post_init__(self) -> None:
        # Worked out once: every checkout, refused ones too, reads them (its quota's pools), and
        # a tuple built per read made each O(pools) in Python.
        object.__setattr__(self, "_pool_names", tuple(pool.name for pool in self.pools))
        by_name = {pool.name: pool for pool in self.pools}
        # Each alias's pools as an ordered set (a dict): a list searched before each append made
        # this quadratic in the pools sharing an alias, and it runs at every build (each cold
        # start, each refresh of a pushed config, twice: ``generation`` is set with ``replace``):
        # 10,000 pools aliased ``linux`` took 3.5 s more of each, 1.7 s to 6.4 s a build.
        aliases: dict[str, dict[str, None]] = {}
        for pool in self.pools:
            for alias in pool.alias:
                if alias != pool.name:
                    aliases.setdefault(alias, {})[pool.name] = None
        object.__setattr__(self, "_pools_by_name", MappingProxyType(by_name))
        object.__setattr__(
            self, "_aliases", MappingProxyType({a: tuple(p) for a, p in aliases.items()})
        )

    def pool(self, name: str) -> PoolConfig | None:
        return self._pools_by_name.get(name)

    @property
    def pool_names(self) -> tuple[str, ...]:
        return self._pool_names

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
        name = pool.dns_plugin
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



MAX_CONFIG_CHARACTERS = 16 * 1024 * 1024
"""The largest config read: 50 times 1,000 pools of 300 bytes. A 50 MB file of 700,000 pools
took 5 minutes and 3 GB to load. Its canonical JSON (what a function reads) is read up to this;
a YAML file is refused past MAX_YAML_CHARACTERS."""
MAX_YAML_CHARACTERS = 8 * 1024 * 1024
"""The largest YAML config (and each ``extra_config`` file): three times the largest config the
service can serve in practice (10,000 vmpooler-style pools are 2.5 MB; past 10,000 pools, or
a few MB of pools in the answers, a config is refused anyway), so a file above it is refused
before it is parsed. At 16 MiB, a file of 10,000 pools with long alias lists took 8 s of CPU and
200 MB at `make config-push` to be refused for its answers' size, ~15 s of wall time on a
loaded machine."""
MAX_DEPTH = 64
"""Mappings and lists within each other: a config has 8 levels; Python's recursion (and libyaml's
composer, which crashes the interpreter past some 10,000) must never be what stops a load."""
MAX_VALUES = 2_000_000
"""Values in a config once its YAML aliases are expanded (10,000 pools of 100 keys and items
are 1 million): nine aliases to nine aliases ... nine levels deep would be 387 million."""
MAX_POOLS = 10_000
MAX_TAG_COUNTS_PER_DAY = 6_400
"""Most tag counts one day's statistics may hold: (max_tag_names_per_day + 1) x
(max_tag_values_per_day + 1), the ``(other)`` name and values included. /summary answers within
4 MiB (api.http.ANSWER_BUDGET_BYTES) and a count takes up to about 650 bytes there (a 50-character
name, a value of 255 characters of JSON, in the day and in the range's totals): a day holding more
would be refused, every day, as a range too long for one answer. The defaults hold 5,151."""


def read_config_file(path: Path, most: int = MAX_CONFIG_CHARACTERS) -> str:
    """The text of a config file; OSError with ``strerror`` when it cannot be read or is not a
    regular file (``/dev/zero`` would be read until memory runs out, a named pipe block for
    ever), or is not UTF-8 text (``not UTF-8 text (byte 21, line 2)``: before, a Latin-1 ``é``
    stopped ``make run``, ``make config-push`` and packaging with a UnicodeDecodeError traceback).
    Reads at most one character past ``most`` (the size check refuses it)."""
    descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # opening a named pipe would wait for a writer
    with open(descriptor, encoding="utf-8") as file:
        if not stat.S_ISREG(os.fstat(descriptor).st_mode):
            raise OSError(0, "not a regular file")
        try:
            return file.read(most + 1)
        except UnicodeDecodeError:
            pass
    raise OSError(errno.EILSEQ, _not_utf8(path))


def _not_utf8(path: Path) -> str:
    """Where the first byte that is not UTF-8 is in the file ``path`` (read again, in binary, at
    most as far as MAX_CONFIG_CHARACTERS characters could take)."""
    with open(path, "rb") as file:
        data = file.read(4 * (MAX_CONFIG_CHARACTERS + 1))
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = data.count(b"\n", 0, error.start) + 1
        return f"not UTF-8 text (byte {error.start}, line {line})"
    return "not UTF-8 text"


def _check_size(text: str, source: str, most: int = MAX_CONFIG_CHARACTERS) -> None:
    if len(text) > most:
        raise ConfigError([f"{source}: more than {most} characters"
                           + (YAML_TOO_LARGE if most == MAX_YAML_CHARACTERS else "")])


YAML_TOO_LARGE = (f" ({MAX_YAML_CHARACTERS // (1024 * 1024)} MiB) of YAML, more than any config the service can "
                  "serve (10,000 pools written as vmpooler writes them are 2.5 MB)")
"""Why a YAML file past MAX_YAML_CHARACTERS is refused, and what to do."""


def _check_shape(yaml: Any, text: str, loader: type, source: str, built: EventDocument,
                 values_left: list[int]) -> None:
    """Refuse YAML nested deeper than MAX_DEPTH or holding more than MAX_VALUES values once its
    aliases are expanded, from libyaml's events (a flat walk: no recursion) before anything is
    composed. An alias counts the values of the node it names; an alias inside the node it names
    (``&x [*x]``: a list that contains itself) is refused: every walk of the document would
    recurse for ever. A ``pools`` list of more than MAX_POOLS items is refused at the first item
    past them, unread beyond (``_PoolCount``). ``built`` is given every event: a plain document
    is built from them (chalicelib/config_events.py). ``values_left``: the values the config's
    files read before this one left of MAX_VALUES (``_read_document``), less this one's once read."""
    limit = values_left[0]
    beside = "" if limit == MAX_VALUES else " with the config files read before it"
    sizes: dict[str, int] = {}  # anchor -> values in its node, aliases expanded
    open_nodes: list[list[Any]] = []  # [values so far, anchor] of each collection being read
    starts = (yaml.MappingStartEvent, yaml.SequenceStartEvent)
    ends = (yaml.MappingEndEvent, yaml.SequenceEndEvent)
    scalar, alias = yaml.ScalarEvent, yaml.AliasEvent
    expanded = 0
    pools = _PoolCount(yaml, source)
    see = built.see
    for event in yaml.parse(text, Loader=loader):
        see(event)
        kind = type(event)
        if len(open_nodes) < 3:  # the top-level mapping's keys and values, the pools' items
            pools.see(event, open_nodes)
        if kind is scalar:
            values, anchor = 1, event.anchor
            expanded += 1
            if expanded > limit:  # at once: a file joined to others that spent the values is read no further
                break
        elif kind in starts:
            if len(open_nodes) >= MAX_DEPTH:
                raise ConfigError([f"{source}: nested deeper than {MAX_DEPTH} levels"])
            open_nodes.append([1, event.anchor])
            pools.opened(open_nodes[-1])
            expanded += 1
            continue
        elif kind in ends:
            values, anchor = open_nodes.pop()
        elif kind is alias:
            if any(node[1] == event.anchor for node in open_nodes):  # at most MAX_DEPTH
                raise ConfigError([(f"{source}: line {event.start_mark.line + 1}: a YAML alias inside the "
                                    "value it names (a value that contains itself)")])
            values, anchor = sizes.get(event.anchor, 1), None
            expanded += values
            if expanded > limit:
                values_left[0] = -1  # spent: the files after this one are not read
                raise ConfigError([(f"{source}: more than {MAX_VALUES} values{beside} once its YAML aliases are "
                                    "expanded (an alias bomb?)")])
        else:
            continue
        if anchor is not None:
            sizes[anchor] = values
        if open_nodes:
            open_nodes[-1][0] += values
    if expanded > limit:
        values_left[0] = -1
        raise ConfigError([f"{source}: more than {MAX_VALUES} values{beside}"])
    values_left[0] -= expanded


class _PoolCount:
    """Counts the items of the top-level ``pools`` list (or ``:pools:``) as ``_check_shape``
    reads the events, and refuses the item past MAX_POOLS as it starts: before, a file of
    100,000 short pools (4.6 MB) was refused by ``_read_pools`` once all of it had been parsed,
    composed and constructed (14 s of CPU, 40 s on a busy machine). Pools given otherwise (an
    alias, a merge key, an extra file's joined to the main one's) are counted there still."""

    def __init__(self, yaml: Any, source: str) -> None:
        self._source = source
        self._scalar, self._mapping, self._sequence = yaml.ScalarEvent, yaml.MappingStartEvent, yaml.SequenceStartEvent
        self._node_starts = (yaml.ScalarEvent, yaml.AliasEvent, yaml.MappingStartEvent, yaml.SequenceStartEvent)
        self._in_mapping = False  # the document is a mapping
        self._top_nodes = 0  # nodes started in it so far: its keys and values in turn
        self._pools_key = False  # the last of its keys was pools
        self._opening = False  # the collection starting is the pools list
        self._pools: list[Any] | None = None  # the pools list's entry in _check_shape's open_nodes
        self._count = 0

    def see(self, event: Any, open_nodes: list[list[Any]]) -> None:
        """Note ``event``, met within ``open_nodes`` (the collections open, outermost first)."""
        if not isinstance(event, self._node_starts):
            return
        depth = len(open_nodes)
        if depth == 2 and open_nodes[1] is self._pools:
            self._count += 1
            if self._count > MAX_POOLS:
                raise ConfigError([(f"{self._source}: pools: at most {MAX_POOLS} pools, got more (pool "
                                    f"{self._count} at line {event.start_mark.line + 1})")])
        elif depth == 0:
            self._in_mapping, self._top_nodes = isinstance(event, self._mapping), 0
        elif depth == 1 and self._in_mapping:
            if self._top_nodes % 2 == 0:
                self._pools_key = isinstance(event, self._scalar) and event.value.lstrip(":") == "pools"
            else:
                self._opening = self._pools_key and isinstance(event, self._sequence)
            self._top_nodes += 1

    def opened(self, entry: list[Any]) -> None:
        """``entry``: the collection whose start ``see`` was last given, as open_nodes holds it."""
        if self._opening:
            self._pools, self._count, self._opening = entry, 0, False


def _read_document(text: str, source: str, reader: BlockReader, values_left: list[int] | None = None) -> dict[str, Any]:
    """One YAML mapping, colon-stripped. Raises ConfigError naming ``source``; a key written
    twice in one mapping adds a problem or a warning to ``reader`` (``_duplicate_keys``).
    ``values_left``: MAX_VALUES less the values of the files of the same config read before it
    (taken from as this one is read; None: this file alone)."""
    _check_size(text, source, MAX_YAML_CHARACTERS)
    try:
        import yaml
    except ImportError:
        raise ConfigError([(f"{source}: a YAML config cannot be read here (no PyYAML): publish it with "
                           "make config-push or package it, which write its canonical JSON")]) from None
    # libyaml's safe loader when PyYAML was built with it: about 8 times faster than the
    # pure-Python one on a config of many pools; the same documents either way.
    loader_class = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    try:
        resolver = loader_class("")
        try:
            built = EventDocument(yaml, resolver)
            _check_shape(yaml, text, loader_class, source, built, [MAX_VALUES] if values_left is None else values_left)
        finally:
            resolver.dispose()
        # A plain config is built from the shape walk's events (colon-stripped already); any
        # other is composed and constructed by PyYAML, its keys written twice reported.
        document = built.document if built.document is not GAVE_UP else _composed(yaml, text, loader_class,
                                                                                 source, reader)
    except yaml.YAMLError as error:
        raise ConfigError([f"{source}: not valid YAML: {error}"]) from None
    if document is None:
        document = {}
    if not isinstance(document, dict):
        raise ConfigError([f"{source}: must be a YAML mapping at the top level"])
    return document


def _composed(yaml: Any, text: str, loader_class: type, source: str, reader: BlockReader) -> Any:
    """The document as PyYAML's safe loader composes and constructs it, colon-stripped; each key
    written twice in one mapping noted in ``reader`` (``_duplicate_keys``)."""
    loader = loader_class(text)
    try:
        root = loader.get_single_node()
        if root is None:
            return None
        try:
            _duplicate_keys(yaml, loader, root, source, reader)  # constructs the keys that are not strings
            document = loader.construct_document(root)
        except ValueError:  # a date past its month, an integer of over 4,300 digits (int's limit)
            raise ConfigError([_unconstructed(yaml, loader_class, root, source)]) from None
        return _strip_colons(document)
    finally:
        loader.dispose()


def _unconstructed(yaml: Any, loader_class: type, root: Any, source: str) -> str:
    """The problem of a document PyYAML resolves but cannot construct: its first scalar that
    fails, with its line. Before, ``template: 2001-02-30`` or ``size: 99...9`` (5,000 digits)
    stopped a load with a ValueError traceback. A flat walk (aliases visited once)."""
    constructor = loader_class("")
    try:
        visited: set[int] = set()
        pending = [root]
        while pending:
            node = pending.pop()
            if id(node) in visited:
                continue
            visited.add(id(node))
            if isinstance(node, yaml.SequenceNode):
                pending.extend(reversed(node.value))
            elif isinstance(node, yaml.MappingNode):
                pending.extend(item for pair in reversed(node.value) for item in reversed(pair))
            elif isinstance(node, yaml.ScalarNode):
                try:
                    constructor.construct_object(node)
                except ValueError as error:
                    return (f"{source}: line {node.start_mark.line + 1}: {show(node.value)} is no value YAML can "
                            f"build ({str(error).split(';')[0][:2 * SHOWN_CHARACTERS]}): quote it to make it a string")
    finally:
        constructor.dispose()
    return f"{source}: a value YAML cannot build"


MAX_REPORTED_DUPLICATES = 10
"""Keys written twice reported one by one; the rest are counted in one line (a key pasted
100,000 times is one problem, not 100,000)."""
IGNORED_SECTIONS = frozenset({"graphite", "statsd", "prometheus", "graphs", "tracing", "pool_names"})
"""Sections of vmpooler's config that vmpool reads nothing from (its metrics backends, its
dashboard's graph source and tracing: vmpool's metrics are CloudWatch EMF, its traces X-Ray)."""


def _duplicate_keys(yaml: Any, loader: Any, root: Any, source: str, reader: BlockReader) -> None:
    """Each key written twice in one mapping of the composed document (after colon-stripping:
    ``:size:`` and ``size:`` are the same key), which YAML loaders (PyYAML, and Ruby's Psych for
    vmpooler) keep silently, the last one winning. Refused, naming the key's path and both lines,
    where one value would be lost in a section vmpool reads; a warning where nothing is lost (the
    same value twice) or in a section vmpool ignores, so a config vmpooler accepts keeps loading
    where it can. Merge keys (``<<: *base``) are not duplicates: the mapping's own keys override
    what they merge, as YAML means. A flat walk over nodes (aliases visited once), before anything
    is constructed (but keys that are not strings: ``true`` and ``True``, ``1`` and ``0x1`` are
    one key each)."""
    merge_tag = "tag:yaml.org,2002:merge"
    string_tag = "tag:yaml.org,2002:str"
    refused: list[str] = []
    warned: list[str] = []
    budget = [MAX_VALUES]  # node comparisons left, however many values are written twice
    visited: set[int] = set()
    pending: list[tuple[Any, str]] = [(root, "")]
    while pending:
        node, path = pending.pop()
        if id(node) in visited:
            continue
        visited.add(id(node))
        if isinstance(node, yaml.SequenceNode):
            pending.extend((item, f"{path}[{index}]") for index, item in enumerate(node.value))
            continue
        if not isinstance(node, yaml.MappingNode):
            continue
        first: dict[tuple[str, str], tuple[int, Any]] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                continue
            if key_node.tag == merge_tag:
                pending.append((value_node, path))
                continue
            written = key_node.value.lstrip(":") if key_node.tag == string_tag else key_node.value
            shown = written if len(written) <= SHOWN_CHARACTERS else written[:SHOWN_CHARACTERS] + "..."
            name = written if key_node.tag == string_tag else repr(loader.construct_object(key_node))
            key_path = f"{path}.{shown}" if path else shown
            line = key_node.start_mark.line + 1
            earlier = first.get((key_node.tag, name))
            if earlier is None:
                first[(key_node.tag, name)] = (line, value_node)
                pending.append((value_node, key_path))
                continue
            section = (path or written).split(".", 1)[0].split("[", 1)[0]
            where = f"written twice, at lines {earlier[0]} and {line} of {source}"
            if _same_node(yaml, earlier[1], value_node, budget):
                warned.append(f"{key_path}: {where}, with the same value: one is enough")
            elif section in IGNORED_SECTIONS or section not in TOP_LEVEL_SECTIONS:
                warned.append(f"{key_path}: {where}, in a section vmpool ignores: the last one would be used")
            else:
                refused.append(f"{key_path}: {where}; the one at line {earlier[0]} would be ignored: "
                               "remove one of them")
    for found, into in ((refused, reader.problems), (warned, reader.warnings)):
        into.extend(found[:MAX_REPORTED_DUPLICATES])
        if len(found) > MAX_REPORTED_DUPLICATES:
            into.append(f"{source}: {len(found) - MAX_REPORTED_DUPLICATES} more keys written twice")


def _same_node(yaml: Any, one: Any, other: Any, budget: list[int]) -> bool:
    """Whether two YAML nodes hold the same value (False when ``budget``, the comparisons left,
    runs out: values past any config's size). A pair met again (recursive aliases) is not
    compared twice."""
    pairs = [(one, other)]
    compared: set[tuple[int, int]] = set()
    while pairs:
        budget[0] -= 1
        if budget[0] < 0:
            return False
        left, right = pairs.pop()
        if left is right or (id(left), id(right)) in compared:
            continue
        compared.add((id(left), id(right)))
        if type(left) is not type(right) or left.tag != right.tag or (
                not isinstance(left, yaml.ScalarNode) and len(left.value) != len(right.value)):
            return False
        if isinstance(left, yaml.ScalarNode):
            if left.value != right.value:
                return False
        elif isinstance(left, yaml.MappingNode):
            for (left_key, left_value), (right_key, right_value) in zip(left.value, right.value, strict=True):
                pairs += [(left_key, right_key), (left_value, right_value)]
        else:
            pairs.extend(zip(left.value, right.value, strict=True))
    return True


def parse(text: str, source: str = "config", base_dir: Path | None = None) -> Config:
    """Parse and validate YAML text, merging the files its ``config.extra_config`` lists
    (relative paths from ``base_dir``, else the working directory). Raises ConfigError listing
    every problem."""
    reader = BlockReader()
    values_left = [MAX_VALUES]  # shared by the file and its extra_config files
    document = _read_document(text, source, reader, values_left)
    merged = merge_extra_configs(document, base_dir or Path.cwd(), reader, values_left,
                                 characters_left=MAX_YAML_CHARACTERS - len(text))
    try:
        return build(merged, reader)
    except ImportError as error:  # a Lambda package carries no pydantic: it loads canonical JSON
        raise ConfigError([(f"{source}: a YAML config is validated with pydantic, which is not installed here "
                           f"({error.name}): publish it with make config-push or package it, which write its "
                           "canonical JSON")]) from None


MAX_EXTRA_CONFIGS = 50
"""More files than any deployment splits its config into: a typo cannot make a load read on."""


def _too_much_yaml(path: Path) -> str:
    """Why the ``extra_config`` file ``path`` is refused: with it the config's files hold more
    than MAX_YAML_CHARACTERS of YAML together."""
    return (f"config.extra_config: with {path} the config and its extra_config files hold more than "
            f"{MAX_YAML_CHARACTERS} characters ({MAX_YAML_CHARACTERS // (1024 * 1024)} MiB) of YAML together, "
            "more than any config the service can serve (10,000 pools written as vmpooler writes them are "
            "2.5 MB); the files after it are not read")


def extra_config_paths(document: Mapping[str, Any]) -> list[str]:
    """The files ``config.extra_config`` names: a comma-separated string as vmpooler reads it
    (its EXTRA_CONFIG), or a YAML list."""
    section = document.get("config")
    raw = section.get("extra_config") if isinstance(section, dict) else None
    if raw is None:
        return []
    items = raw if isinstance(raw, list) else str(raw).split(",")
    return [str(item).strip() for item in items if str(item).strip()]


def merge_extra_configs(document: dict[str, Any], base_dir: Path, reader: BlockReader | None = None,
                        values_left: list[int] | None = None,
                        characters_left: int = MAX_YAML_CHARACTERS) -> dict[str, Any]:
    """vmpooler's ``extra_config``: each listed YAML file is deep-merged into the main document.

    As vmpooler's deep_merge does it, the main document wins: a value it sets is kept, keys it
    lacks are added from the extra file, mappings merge key by key and lists are joined (the extra
    file's items that are not already there are appended: a file of extra ``pools`` adds pools).
    Extra files are read in order; their own ``extra_config`` is not followed. Keys written
    twice in them add problems or warnings to ``reader``. The files hold at most MAX_VALUES values
    together, ``document``'s among them when ``values_left`` (what it left) is given: before, each
    file could hold as many, and 50 files of 1.9 million were minutes of CPU and gigabytes joined.
    They hold at most ``characters_left`` characters of YAML together (MAX_YAML_CHARACTERS less
    the main file's), the file that passes them refused, those after it unread: before, each file
    could hold 8 MiB, and 50 files of a long string each were 400 MiB read, parsed and kept (4.0 s
    of CPU, 454 MB; 9 s on the shared machine). A file over MAX_YAML_CHARACTERS alone is refused
    as such.
    """
    reader = reader or BlockReader()
    values_left = values_left if values_left is not None else [MAX_VALUES]
    paths = extra_config_paths(document)
    if len(paths) > MAX_EXTRA_CONFIGS:
        raise ConfigError([f"config.extra_config: at most {MAX_EXTRA_CONFIGS} files, got {len(paths)}"])
    problems: list[str] = []
    for path in _extra_config_files(paths, base_dir):
        try:
            text = read_config_file(path, most=MAX_YAML_CHARACTERS)  # one past it is refused as such
        except OSError as error:
            problems.append(f"config.extra_config: cannot read {path}: {error.strerror}")
            continue
        if len(text) <= MAX_YAML_CHARACTERS:
            characters_left -= len(text)
            if characters_left < 0:
                raise ConfigError([*problems, _too_much_yaml(path)])
        try:
            extra = _read_document(text, str(path), reader, values_left)
        except ConfigError as error:
            problems.extend(error.problems)
            if values_left[0] < 0:
                break
            continue
        document = _deep_merge(document, extra)
        pools = document.get("pools")
        if isinstance(pools, list) and len(pools) > MAX_POOLS:  # refused before any more files are read
            raise ConfigError([*problems, f"pools: at most {MAX_POOLS} pools, got {len(pools)} with {path}"])
    if problems:
        raise ConfigError(problems)
    return document


def _extra_config_files(names: list[str], base_dir: Path) -> list[Path]:
    """Where the ``extra_config`` files ``names`` are (relative ones from ``base_dir``)."""
    return [Path(name) if Path(name).is_absolute() else base_dir / name for name in names]


def config_files(path: Path) -> list[Path]:
    """The files a load of the config file ``path`` reads: it, then the ``extra_config`` files it
    names (at most MAX_EXTRA_CONFIGS), as ``load`` finds them; only ``path`` when it cannot be
    read or its ``config`` section parsed (its load says why). For a watcher of the config (the
    local stack's). Only that section is built (``_config_section``): before, the whole file
    was, at every start of ``make run`` and change of the file (10,000 pools: 3.8 s of CPU)."""
    try:
        text = read_config_file(path)
        try:
            document = _read_document(_config_section(text), str(path), BlockReader())
        except ConfigError:  # a section that is not whole alone (an alias to an anchor outside it)
            document = _read_document(text, str(path), BlockReader())
    except (OSError, ConfigError):
        return [path]
    return [path, *_extra_config_files(extra_config_paths(document)[:MAX_EXTRA_CONFIGS], path.parent)]


def _config_section(text: str) -> str:
    """The top-level ``config`` section (or ``:config:``) of the YAML ``text`` alone, as YAML,
    from the parser's events up to the section's end (what follows it unread): ``""`` when the
    text is a mapping without one, the whole text when it is no mapping. Raises ConfigError for
    text that is not YAML up to there."""
    import yaml

    starts = (yaml.MappingStartEvent, yaml.SequenceStartEvent)
    ends = (yaml.MappingEndEvent, yaml.SequenceEndEvent)
    nodes = (yaml.ScalarEvent, yaml.AliasEvent, *starts)
    section: list[Any] = []
    depth, top_nodes, top_mapping, wanted = 0, 0, False, False
    try:
        for event in yaml.parse(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader)):
            if depth == 1 and top_mapping and isinstance(event, nodes):  # a key or value of the top level
                if top_nodes % 2 == 0:
                    wanted = isinstance(event, yaml.ScalarEvent) and event.value.lstrip(":") == "config"
                elif wanted:
                    section.append(event)
                top_nodes += 1
            elif section:
                section.append(event)
            if isinstance(event, starts):
                top_mapping = top_mapping or (depth == 0 and isinstance(event, yaml.MappingStartEvent))
                depth += 1
            elif isinstance(event, ends):
                depth -= 1
            if section and depth == 1:  # its value is whole
                break
        if not section:
            return "" if top_mapping else text
        return yaml.emit([yaml.StreamStartEvent(), yaml.DocumentStartEvent(), yaml.MappingStartEvent(None, None, True),
                          yaml.ScalarEvent(None, None, (True, False), "config"), *section, yaml.MappingEndEvent(),
                          yaml.DocumentEndEvent(), yaml.StreamEndEvent()])
    except yaml.YAMLError as error:
        raise ConfigError([f"not valid YAML: {error}"]) from None


def _deep_merge(main: Any, extra: Any) -> Any:
    """``main`` with what ``extra`` adds (see merge_extra_configs); neither is changed."""
    if isinstance(main, dict) and isinstance(extra, dict):
        merged = dict(main)
        for key, value in extra.items():
            merged[key] = _deep_merge(main[key], value) if key in main else value
        return merged
    if isinstance(main, list) and isinstance(extra, list):
        try:
            there = {_equality_key(item) for item in main}
            return main + [item for item in extra if _equality_key(item) not in there]
        except TypeError:  # a value no key stands for (a YAML !!set): compared one by one
            return main + [item for item in extra if item not in main]
    return extra if main is None else main


def _equality_key(value: Any) -> Any:
    """A hashable stand-in for a YAML value, equal to another's exactly when the values are
    equal (``==``); TypeError for a value it cannot stand for. Before, joining an extra file's
    pools compared each with every pool already there: 3,000 pools to 3,000 took 1.4 s of CPU,
    50 files of 10,000 pools hours."""
    if isinstance(value, dict):
        return dict, frozenset((key, _equality_key(item)) for key, item in value.items())
    if isinstance(value, list):
        return list, tuple(_equality_key(item) for item in value)
    hash(value)
    return value


def _replica_wait_warnings(redis: RedisConfig) -> list[str]:
    """A ``replica_ack_timeout`` the client's ``socket_timeout`` does not outlast: every checkout
    waiting for a slow replica would then lose its answer (a 503 for a checkout Redis ran, undone
    behind it) instead of getting WAIT's count back."""
    if redis.min_replica_acks == 0 or redis.replica_ack_timeout_ms < redis.socket_timeout * 1000:
        return []
    return [(f"redis.replica_ack_timeout: {redis.replica_ack_timeout_ms} ms is not below socket_timeout "
             f"({redis.socket_timeout:g} s): a checkout waiting that long for a replica times out first")]


def build(document: Mapping[str, Any], reader: BlockReader | None = None) -> Config:
    """Validate an already-parsed (colon-stripped) config document (``reader``: a BlockReader,
    pydantic; ``TrustedReader`` for the canonical form, from_canonical)."""
    reader = reader or BlockReader()
    for name in document:
        if reader.trusted and name not in CANONICAL_SECTIONS:
            reader.problems.append(f"{name}: not a section of the canonical config")
        elif not reader.trusted and name not in TOP_LEVEL_SECTIONS:
            reader.unknown_key(str(name), "unknown section")

    service = reader.model(document.get("config"), ServiceConfig, "config")
    if service is not None:
        reader.problems.extend(_tag_count_problems(service))
    redis = reader.model(document.get("redis"), RedisConfig, "redis")
    if service is not None and redis is not None:
        reader.problems.extend(_ondemand_ttl_problems(service, redis))
    if not reader.trusted and redis is not None:
        reader.warnings.extend(_replica_wait_warnings(redis))
    if not reader.trusted and service is not None:
        reader.warnings.extend(_ondemand_size_warnings(service))
    providers = _read_providers(reader, document.get("providers"))
    dns_configs = _read_dns_configs(reader, document.get("dns_configs"))
    pools = _read_pools(reader, document.get("pools"), service, providers, dns_configs)
    auth = _read_auth(reader, document.get("auth"))
    if not reader.trusted and auth is not None and service is not None:
        reader.warnings.extend(_unchecked_token_warnings(auth, service))

    tagfilter: dict[str, str] = {}
    raw_tagfilter = reader.mapping(document.get("tagfilter"), "tagfilter") or {}
    if len(raw_tagfilter) > MAX_TAGFILTERS:
        reader.problems.append(f"tagfilter: at most {MAX_TAGFILTERS:,} tags, got {len(raw_tagfilter):,}")
        raw_tagfilter = {}
    for tag, pattern in raw_tagfilter.items():
        try:
            # Pushed before an upgrade refused it: kept (docs/deploy.md, "Configs a newer release refuses").
            tagfilter[str(tag)] = compiled_regex(pattern) if reader.trusted else regex(pattern)
        except Invalid as error:
            reader.problems.append(f"tagfilter.{tag}: {error}")

    rate_limits = _read_rate_limits(reader, document.get("rate_limits"))

    if reader.problems or service is None or redis is None:
        raise ConfigError(reader.problems)
    config = Config(
        service=service,
        redis=redis,
        pools=tuple(pools),
        providers=MappingProxyType(providers),
        auth=auth,
        tagfilter=MappingProxyType(tagfilter),
        warnings=tuple(document.get("warnings") or ()) if reader.trusted else _bounded_warnings(reader.warnings),
        rate_limits=MappingProxyType(rate_limits),
        dns_configs=MappingProxyType(dns_configs),
    )
    # Whatever the format: a canonical object written by another tool or by hand (pushed to the
    # bucket, or the file `make run` is given) is held to the answers' sizes too. Before, only
    # the YAML was, and a pushed pool of 100,000 aliases of 100 characters made every GET /status
    # an 11 MB answer: Lambda's 502 to everyone. Refused, the functions keep the last good config.
    problems = answer_size_problems(config)
    if problems:
        raise ConfigError(problems)
    return config


MAX_WARNINGS = 100
"""Warnings a config keeps; the rest are counted in one more. They travel in its canonical JSON
and every function logs each one as it loads it: before, a file of 200,000 unknown keys was
pushed with 200,000 warnings, 200,000 log lines at every cold start of every function."""


def _bounded_warnings(warnings: list[str]) -> tuple[str, ...]:
    """The first MAX_WARNINGS of ``warnings``, and how many more there were."""
    if len(warnings) <= MAX_WARNINGS:
        return tuple(warnings)
    return (*warnings[:MAX_WARNINGS], f"{len(warnings) - MAX_WARNINGS} more warnings")


def _tag_count_problems(service: ServiceConfig) -> list[str]:
    """Whether a day's tag counts, at their most, fit one /summary answer (MAX_TAG_COUNTS_PER_DAY)."""
    names, values = service.max_tag_names_per_day, service.max_tag_values_per_day
    if (names + 1) * (values + 1) <= MAX_TAG_COUNTS_PER_DAY:
        return []
    return [(f"config.max_tag_names_per_day ({names}) and config.max_tag_values_per_day ({values}): a day "
            f"would count up to {(names + 1) * (values + 1)} tags with '(other)', more than one /summary "
            f"answer holds; (names + 1) x (values + 1) must be at most {MAX_TAG_COUNTS_PER_DAY}")]


def _ondemand_size_warnings(service: ServiceConfig) -> list[str]:
    """An on-demand request ``max_ondemand_instances_per_request`` allows that the VMs one may hold
    (``max_running_vms_per_user``) or the service runs (``max_running_vms``) never fit: always
    refused (403, api/limits.never_fits). A warning, not a problem: vmpooler's configs set the
    first alone, and every request the smaller limit allows is still served."""
    most, field = service.largest_request()
    allowed = int(service.max_ondemand_instances_per_request)
    if allowed <= most:
        return []
    return [(f"config.max_ondemand_instances_per_request: {allowed} is more than config.{field} ({most}): "
             f"an on-demand request of more than {most} VMs is always refused (403); set it to at most {most}")]


def _ondemand_ttl_problems(service: ServiceConfig, redis: RedisConfig) -> list[str]:
    """Whether an on-demand request ends (``ondemand_request_ttl``) well before its record would
    expire (``data_ttl``, from its creation, ondemand_create.lua): a request still open then was
    forgotten, its poller answered 404 and the VMs delivered to it ran for nobody. Half of
    data_ttl leaves the passes that fail it as long again to do so (a provider down, a pass late)."""
    most = redis.data_ttl * 60 // 2
    if service.ondemand_request_ttl <= most:
        return []
    return [(f"config.ondemand_request_ttl: {service.ondemand_request_ttl} minutes is longer than half of "
             f"redis.data_ttl ({redis.data_ttl} hours): an open on-demand request's record is kept data_ttl "
             f"hours from its creation, and one still open then is forgotten (its GET answers 404, its VMs "
             f"run for nobody); ondemand_request_ttl must be at most {most} minutes, or data_ttl longer")]


def _read_rate_limits(reader: BlockReader, raw: Any) -> dict[str, Mapping[str, int]]:
    """``:rate_limits:`` as vmpooler reads it: per class, a request ``limit`` per ``period`` seconds."""
    block = reader.mapping(raw, "rate_limits")
    limits: dict[str, Mapping[str, int]] = {}
    for name, entry in (block or {}).items():
        if name not in RATE_LIMIT_CLASSES:
            reader.warnings.append(f"rate_limits.{name}: unknown class, ignored")
            continue
        values = reader.model(entry, RateLimit, f"rate_limits.{name}")
        if values is not None:
            limits[name] = MappingProxyType({key: value for key, value in dataclasses.asdict(values).items()
                                             if value is not None})
    return limits


def _read_auth(reader: BlockReader, raw: Any) -> AuthConfig | None:
    """``:auth:``, its ``:ldap:`` block parsed into LdapSettings (at load, not at the first login)."""
    if raw is None:
        return None
    auth = reader.model(raw, AuthConfig, "auth", skip=frozenset({"ldap"}))
    if auth is not None and not reader.trusted:
        reader.problems.extend(_admin_problems(auth.admins))
    if auth is None or auth.provider != "ldap":
        return auth
    if reader.trusted:  # the canonical form: the block as LdapSettings validated it
        ldap_settings = reader.model(raw.get("ldap"), LdapSettings, "auth.ldap")
        return None if ldap_settings is None else dataclasses.replace(auth, ldap=ldap_settings)
    from chalicelib.auth.base import AuthConfigError
    from chalicelib.auth.ldap_settings import parse_ldap_settings

    try:
        ldap = parse_ldap_settings(raw.get("ldap"))
    except AuthConfigError as error:
        reader.problems.extend(error.problems)
        return None
    return dataclasses.replace(auth, ldap=ldap)


def _admin_problems(admins: tuple[str, ...]) -> list[str]:
    """An ``auth.admins`` item is a user name or a directory entry's stable id
    (``entryUUID:<uuid>``...): one with a ``:`` naming no entry id (a mistyped attribute or UUID)
    would make nobody an administrator, silently."""
    from chalicelib.auth.base import listed_entry_id

    problems = []
    for index, item in enumerate(admins):
        try:
            listed_entry_id(item)
        except ValueError as error:
            problems.append(f"auth.admins[{index}]: neither a user name (no ':') nor a directory entry id "
                            f"(entryUUID:<uuid>, objectGUID:<guid>, nsUniqueId:<id>, ipaUniqueID:<uuid>): {error}")
    return problems


def _unchecked_token_warnings(auth: AuthConfig, service: ServiceConfig) -> list[str]:
    """What the operator is told when tokens of users removed from the directory cannot stop:
    direct bind (no service account) cannot look a user up without the password, so nothing
    re-checks a token's user, and without ``token_ttl`` nothing ends the token either."""
    ldap = auth.ldap
    if ldap is None or ldap.uses_service_account or auth.directory_check_minutes == 0 or service.token_ttl:
        return []
    return [("auth.directory_check_minutes: tokens are not re-checked in direct-bind mode (no "
             "auth.ldap.service_account_hash to look users up): a user removed from the directory keeps "
             "their tokens until they are deleted. Set service_account_hash, or config.token_ttl to end "
             "every token after that many hours (directory_check_minutes: 0 says you know)")]


def _provider_class(name: str, block: Any) -> str:
    """The class a ``:providers:`` block names (its ``provider_class``, else the block's name)."""
    written = block.get("provider_class") if isinstance(block, dict) else None
    return str(written).lstrip(":") if written is not None else name


def _read_providers(reader: BlockReader, raw: Any) -> dict[str, ProviderConfig]:
    """Each block validated with the model its class owns. Keys another class owns are accepted
    without effect (vmpooler's configs carry them), any other key is warned about."""
    providers: dict[str, ProviderConfig] = {}
    block_map = reader.mapping(raw, "providers")
    if not block_map:
        return providers
    others = ProviderKeys()
    for name, block in block_map.items():
        path = f"providers.{name}"
        if not POOL_NAME_PATTERN.fullmatch(str(name)):  # it names Redis keys (lease:purge:<provider>)
            reader.problems.append(f"{path}: a provider's name must match {POOL_NAME_PATTERN.pattern}, "
                                   f"got {show(str(name))}")
            continue
        provider_class = _provider_class(str(name), block)
        model = settings_model(provider_class)
        if model is None:
            reader.problems.append(
                f"{path}.provider_class: must be one of {', '.join(PROVIDER_CLASSES)}, got {show(provider_class)}")
            reader.mapping(block, path)
            continue
        settings = reader.model(block, model, path, also_known=others)
        if settings is not None:
            providers[str(name)] = ProviderConfig(str(name), provider_class, settings)
    return providers


def _same_dns_name(one: str | None, other: str) -> bool:
    """Whether two DNS names are the same (case and a final dot aside)."""
    return one is not None and one.rstrip(".").lower() == other.rstrip(".").lower()


def _read_dns_configs(reader: BlockReader, raw: Any) -> dict[str, DnsConfig]:
    """Each entry validated with the model its plugin owns (chalicelib/dns/registry.py)."""
    from chalicelib.dns.registry import settings_model as dns_settings_model

    configs: dict[str, DnsConfig] = {}
    for name, block in (reader.mapping(raw, "dns_configs") or {}).items():
        path = f"dns_configs.{name}"
        # vmpooler takes the entry's name as its class when dns_class is missing.
        dns_class = str((block or {}).get("dns_class") or name) if isinstance(block, dict) else str(name)
        model = dns_settings_model(dns_class)
        if model is None:
            reader.warnings.append(
                f"{path}.dns_class: {show(dns_class)} is not a DNS plugin vmpool ships (route53, "
                "dynamic-dns): its pools' records are not managed")
            model = DnsSettings
        settings = reader.model(block, model, path)
        if settings is not None:
            configs[str(name)] = DnsConfig(name=str(name), dns_class=dns_class, domain=settings.domain,
                                           settings=settings)
    return configs


def _read_pools(
    reader: BlockReader,
    raw: Any,
    service: ServiceConfig | None,
    providers: dict[str, ProviderConfig],
    dns_configs: Mapping[str, DnsConfig],
) -> list[PoolConfig]:
    """Each pool validated with PoolSettings and its provider's keys with the provider's model;
    then what needs the whole config: unique names, a provider, a template for vSphere, the
    domain (the pool's, else its dns_plugin's, else its provider's, else config.domain)."""
    from chalicelib.dns.registry import manages_records

    if raw is None:
        return []
    if not isinstance(raw, list):
        reader.problems.append(f"pools: must be a list of pools, got {show(raw)}")
        return []
    if len(raw) > MAX_POOLS:
        reader.problems.append(f"pools: at most {MAX_POOLS} pools, got {len(raw)}")
        return []
    owned_by_providers = ProviderKeys()
    pool_fields = PoolSettings.keys()
    pools: list[PoolConfig] = []
    seen: set[str] = set()
    for index, block in enumerate(raw):
        path = f"pools[{index}]"
        settings = reader.model(block, PoolSettings, path, also_known=owned_by_providers)
        if not isinstance(block, dict):
            continue
        name = _written_string(block.get("name"))
        if name is not None:
            if not POOL_NAME_PATTERN.fullmatch(name):
                reader.problems.append(f"{path}.name: must match {POOL_NAME_PATTERN.pattern}, got {show(name)}")
            if name in seen:
                reader.problems.append(f"{path}.name: duplicate pool name {show(name)}")
            seen.add(name)
        if settings is not None and not reader.trusted:
            # Checked where a config is validated (config-push, packaging, make run), not when a
            # canonical form is built: an object an earlier release pushed keeps loading.
            _check_aliases(reader, path, settings.alias)
            _check_answer_keys(reader, path, name, settings.alias)
        elif settings is not None:
            # An alias's length is a bound, which holds whatever the format (its characters are
            # the rule above): a pushed 1,000,000-character alias was built and shown by /status.
            _check_aliases(reader, path, settings.alias, lengths_only=True)
        provider = _written_string(block.get("provider")) or "vsphere"
        if provider not in providers:
            if provider in PROVIDER_CLASSES:
                # vmpooler lets a pool name a provider class without a providers block.
                model = settings_model(provider)
                assert model is not None
                providers[provider] = ProviderConfig(provider, provider, model())
            else:
                reader.problems.append(f"{path}.provider: no provider named {show(provider)} in providers")
        provider_config = providers.get(provider)
        if provider_config is not None and provider_config.provider_class == "vsphere" and not block.get("template"):
            reader.problems.append(f"{path}.template: is required for a vsphere pool")
        own: dict[str, Any] | None = None
        if provider_config is not None:
            # The pool's values of its provider's keys, checked with the provider's model.
            model = type(provider_config.settings)
            provider_keys = model.keys()
            own_keys = {key: value for key, value in block.items()
                        if key in provider_keys and key not in pool_fields and key != "provider_class"}
            own = {}
            if own_keys:
                checked = reader.model(own_keys, model, path)
                own = None if checked is None else {name: getattr(checked, name)
                                                    for name in given_fields(own_keys, model)}
        if settings is None or own is None or service is None:
            continue
        domain = settings.domain
        dns = dns_configs.get(settings.dns_plugin) if settings.dns_plugin else None
        if settings.dns_plugin and dns is None:
            reader.problems.append(f"{path}.dns_plugin: no dns_configs entry named {show(settings.dns_plugin)}")
        elif dns is not None and dns.domain is None and manages_records(dns.settings):
            # Its records would be bare names (refused by the zone) while the pool hands out
            # <name>.<config.domain>: every VM pending until its timeout. Said once per entry.
            problem = (f"dns_configs.{dns.name}.domain: is required: {dns.dns_class} publishes each VM's "
                       "record as <name>.<domain>")
            if problem not in reader.problems:
                reader.problems.append(problem)
        elif dns is not None and domain is None:
            domain = dns.domain
        elif dns is not None and dns.domain is not None and not _same_dns_name(domain, dns.domain) \
                and manages_records(dns.settings):
            # Its VMs would be handed out as <name>.<domain> and published as <name>.<the entry's>.
            reader.problems.append(
                f"{path}.domain: {show(domain)} is not the domain of its dns_plugin {show(dns.name)} "
                f"({show(dns.domain)}), under which its VMs' records are published")
        if domain is None and provider_config is not None:
            domain = provider_config.settings.domain
        if domain is None:
            domain = service.domain
        longest = longest_hostname(service.prefix)
        if domain and len(domain.rstrip(".")) + 1 + longest > MAX_DNS_NAME_LENGTH:
            # Else each VM whose <name>.<domain> is too long for DNS is cloned, never published
            # nor resolvable, and destroyed after its timeout.
            reader.problems.append(
                f"{path}.domain: {len(domain.rstrip('.'))} characters leave no room for VM names: "
                f"{longest} characters, a '.' and the domain must fit in {MAX_DNS_NAME_LENGTH}")
        # The keys given, as validated (model_dump would turn the sizing block into a dict), and
        # the three with a default that /config shows.
        written = {"template": settings.template, "folder": settings.folder, "alias": settings.alias}
        written.update((name, getattr(settings, name)) for name in given_fields(block, PoolSettings))
        written.update(own)
        if isinstance(block.get("alias"), str):
            written["alias"] = block["alias"]  # vmpooler echoes it as written in /status and /config
        pools.append(
            PoolConfig(
                name=settings.name,
                size=settings.size,
                template=settings.template,
                folder=settings.folder,
                provider=provider,
                alias=settings.alias,
                domain=domain,
                timeout_minutes=settings.timeout or service.timeout,
                ready_ttl_minutes=settings.ready_ttl or service.ready_ttl,
                settings=MappingProxyType(written),
            )
        )
    return pools


def _check_aliases(reader: BlockReader, path: str, aliases: Sequence[str], lengths_only: bool = False) -> None:
    """A problem for a pool's first alias no request can name (one: a pool may list thousands);
    ``lengths_only``: the aliases too long or empty for a request (a canonical form's test)."""
    unnamed = [alias for alias in aliases
               if not (_of_a_request_name_length(alias) if lengths_only else REQUEST_NAME_PATTERN.match(alias))]
    if unnamed:
        more = f" (and {len(unnamed) - 1} more)" if len(unnamed) > 1 else ""
        reader.problems.append(
            f"{path}.alias: {show(unnamed[0])}{more} cannot be requested: a request names pools and "
            "aliases of 1 to 100 letters, digits, '.', '_' or '-'")


def _of_a_request_name_length(alias: str) -> bool:
    """Whether ``alias`` is as long as a name a request can hold (REQUEST_NAME_PATTERN's 1 to 100)."""
    return 1 <= len(alias) <= MAX_REQUEST_NAME_CHARACTERS


def _check_answer_keys(reader: BlockReader, path: str, name: str | None, aliases: Sequence[str]) -> None:
    """A problem for a pool name or alias that is a key of the answers naming it (ANSWER_KEYS)."""
    taken = [(f"{path}.name", name)] if name in ANSWER_KEYS else []
    taken += [(f"{path}.alias", alias) for alias in aliases if alias in ANSWER_KEYS][:1]
    for where, spelt in taken:
        reader.problems.append(
            f"{where}: {show(spelt)} cannot be requested: a checkout's answer has a key {show(spelt)} of its own "
            f"(pools and aliases must not be named {', '.join(ANSWER_KEYS)})")


def _written_string(value: Any) -> str | None:
    """A scalar key as the cross-checks compare it (None when absent or not a scalar)."""
    if value is None or isinstance(value, (bool, dict, list)):
        return None
    return str(value)


# --- the canonical form ----------------------------------------------------------------------
#
# Where a config is accepted (make run, config-push, packaging, tests) its YAML is validated with
# pydantic; what the Lambdas load is the canonical JSON of the validated config, written by
# packaging (infra/packaged_config.py) and config-push, and built without pydantic or yaml
# (config_fields.TrustedReader): a cold start pays for neither.

CANONICAL_FORMAT_KEY = "vmpool_config_format"
CANONICAL_FORMAT = 1
CANONICAL_SECTIONS = frozenset({CANONICAL_FORMAT_KEY, "warnings", "config", "redis", "auth", "providers", "pools",
                                "tagfilter", "dns_configs", "rate_limits"})


def canonical(config: Config) -> dict[str, Any]:
    """The validated config as a JSON document (``from_canonical`` builds an equal Config): each
    block's values as validated, under their YAML keys; secrets in the clear (as the YAML holds
    them), the pools' sizing blocks as written; the warnings of its validation."""
    return {
        CANONICAL_FORMAT_KEY: CANONICAL_FORMAT,
        "config": _block(config.service),
        "redis": _block(config.redis),
        "providers": {name: _carrying_ca(_block(provider.settings), "ca_bundle", "ca_bundle")
                      for name, provider in config.providers.items()},
        "dns_configs": {name: _block(entry.settings) for name, entry in config.dns_configs.items()},
        "pools": [{key: _plain(value) for key, value in pool.settings.items()} for pool in config.pools],
        "auth": None if config.auth is None else _auth_block(config.auth),
        "tagfilter": dict(config.tagfilter),
        "rate_limits": {name: dict(limit) for name, limit in config.rate_limits.items()},
        "warnings": list(config.warnings),
    }


MAX_CA_FILE_CHARACTERS = 1024 * 1024
"""The most of a CA file (``auth.ldap.ca_file``, a vSphere provider's ``ca_bundle``) that
``canonical`` reads to carry it; larger ones keep their path (a system bundle is ~0.2 MB)."""
PEM_CERTIFICATE = re.compile(r"-----BEGIN CERTIFICATE-----[A-Za-z0-9+/=\s]+?-----END CERTIFICATE-----")


def carried_ca(path: str) -> str | None:
    """The certificates of the CA file at ``path`` as PEM text (its comments left out), or None
    when it cannot be read as such: then its path travels, and its use names the file."""
    try:
        with open(path, encoding="utf-8", errors="replace") as file:
            text = file.read(MAX_CA_FILE_CHARACTERS + 1)
    except (OSError, ValueError):
        return None
    certificates = PEM_CERTIFICATE.findall(text) if len(text) <= MAX_CA_FILE_CHARACTERS else []
    return "\n".join(certificates) + "\n" if certificates else None


def _carrying_ca(block: dict[str, Any], file_key: str, data_key: str) -> dict[str, Any]:
    """``block`` with the CA file under ``file_key`` carried as its PEM text under ``data_key``
    (after any text already there): the canonical JSON is what the Lambdas read (packaging,
    config-push), and the file is on the machine that validated the config, never in AWS. With
    the path, ``make run`` trusted the CA while every LDAP login in AWS failed (500) and every
    pass of a vSphere provider failed (``cannot use ca_bundle ...: No such file``)."""
    path = block.get(file_key)
    text = carried_ca(path) if isinstance(path, str) else None
    if text is None:
        return block
    carried = {key: value for key, value in block.items() if key != file_key}
    before = carried.get(data_key)
    carried[data_key] = text if not isinstance(before, str) else text + before
    return carried


def _auth_block(auth: AuthConfig) -> dict[str, Any]:
    block = _block(auth)
    if isinstance(block.get("ldap"), dict):
        block["ldap"] = _carrying_ca(block["ldap"], "ca_file", "ca_data")
    return block


def canonical_json(config: Config) -> str:
    """``canonical(config)`` as JSON text (what packaging and config-push write). ASCII only: a
    character past it is written as its ``\\uXXXX`` escape (``"Pööl"`` is ``"P\\u00f6\\u00f6l"``),
    so the text's bytes are its characters, and ``MAX_CONFIG_CHARACTERS``, which config-push and
    packaging count in characters, is the bytes a function reads at most. The same config gives
    the same bytes in every process (no set, no hash order): a push of an unchanged config has the
    digest of the config in use, which no function builds again (``config_source``)."""
    return json.dumps(canonical(config), separators=(",", ":"), default=str, ensure_ascii=True)


def _block(settings: SettingsModel) -> dict[str, Any]:
    keys = {name: key for key, name in type(settings).keys().items()}
    return {keys[item.name]: _plain(getattr(settings, item.name)) for item in dataclasses.fields(settings)
            if getattr(settings, item.name) is not None}


def _plain(value: Any) -> Any:
    """A validated value in its canonical JSON form."""
    from chalicelib.sizing.settings import SizingSettings

    if isinstance(value, Secret):
        return value.get_secret_value()
    if isinstance(value, SecretReference):
        kind = "secret" if value.store == "secretsmanager" else "ssm"
        return {kind: value.name, **({"key": value.key} if value.key is not None else {})}
    if isinstance(value, SizingSettings):
        return value.source
    if isinstance(value, SettingsModel):
        return _block(value)
    if isinstance(value, Mapping):
        return {str(key): _plain(item) for key, item in value.items()}
    if isinstance(value, (tuple, list)):
        return [_plain(item) for item in value]
    return value


def from_canonical(document: Any, source: str = "canonical config") -> Config:
    """Build the config from its canonical form (``canonical``). Raises ConfigError, each problem
    with its key path, for a document of another format or of the wrong shape (edited by hand)."""
    if not isinstance(document, dict) or document.get(CANONICAL_FORMAT_KEY) != CANONICAL_FORMAT:
        found = document.get(CANONICAL_FORMAT_KEY) if isinstance(document, dict) else None
        raise ConfigError([(f"{source}: not a canonical vmpool config of format {CANONICAL_FORMAT} "
                           f"({CANONICAL_FORMAT_KEY}: {found!r})")])
    warnings = document.get("warnings") or []
    if not isinstance(warnings, list) or not all(isinstance(item, str) for item in warnings):
        raise ConfigError([f"{source}: warnings: must be a list of strings"])
    try:
        return build(document, TrustedReader())
    except RecursionError:  # a hand-edited document nested deeper than any config (json allows ~1,000)
        raise ConfigError([f"{source}: nested deeper than {MAX_DEPTH} levels"]) from None


def has_pools_section(text: str, source: str = "config") -> bool:
    """Whether the YAML ``text`` writes a ``pools`` section holding a list (``:pools: []``
    included). A config without one validates as a config of no pools, as vmpooler reads it: an
    empty or truncated file, or one whose section's name is mistyped (``:pool:``, a warning only),
    which published to a stage would drain every pool (infra/config_push.py refuses it)."""
    return isinstance(_read_document(text, source, BlockReader()).get("pools"), list)


def canonical_document(text: str, source: str = "config") -> dict[str, Any] | None:
    """The canonical document ``text`` holds, or None when it is something else (YAML, or JSON
    without the format key: a YAML config written as JSON). Raises ConfigError for JSON too
    large or nested too deep to be any config. A leading byte-order mark is skipped, as YAML
    skips it: before, config-push's JSON saved by an editor that writes one and copied into the
    bucket was read as YAML, and a Lambda (no pydantic) refused it as YAML it cannot validate."""
    text = text.removeprefix("\ufeff")
    if not text.lstrip().startswith("{"):
        return None
    _check_size(text, source)
    try:
        document = json.loads(text)
    except ValueError:
        return None
    except RecursionError:  # JSON nested past the interpreter's limit: no config of ours
        raise ConfigError([f"{source}: nested deeper than {MAX_DEPTH} levels"]) from None
    return document if isinstance(document, dict) and CANONICAL_FORMAT_KEY in document else None


def from_text(text: str, source: str = "config", base_dir: Path | None = None) -> Config:
    """A config from its canonical JSON (built without pydantic or yaml) or from YAML (validated:
    ``parse``, which imports PyYAML and pydantic on its first use). Raises ConfigError."""
    return _built(text, source, base_dir).config


def _built(text: str, source: str, base_dir: Path | None) -> "Loaded":
    document = canonical_document(text, source)
    if document is not None:
        return Loaded(from_canonical(document, source), text_digest(text))
    return Loaded(parse(text, source, base_dir=base_dir), None)


def text_digest(text: str) -> str:
    """SHA-256 of a config's text: the same canonical text builds the same config, so a config
    fetched again with it is the one already built (config_source)."""
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


class Loaded(NamedTuple):
    """A config and ``text_digest`` of the canonical JSON it was built from (None when it was
    built from YAML: its ``extra_config`` files, read beside it, are part of it)."""

    config: Config
    digest: str | None


def load_with_digest(environ: Mapping[str, str] | None = None) -> Loaded:
    """``load``, with the digest of the canonical text: a cold start hands it to
    config_source, which then reuses this config when the bucket holds the same text
    instead of building it a second time on the first request."""
    environ = os.environ if environ is None else environ
    if not environ.get(CONFIG_YAML_ENV) and not environ.get(CONFIG_FILE_ENV):
        _refuse_vmpoolers_variables(environ)
    if environ.get(CONFIG_YAML_ENV):
        text, source, base_dir = environ[CONFIG_YAML_ENV], CONFIG_YAML_ENV, None
    else:
        path = Path(environ.get(CONFIG_FILE_ENV) or DEFAULT_CONFIG_FILE)
        try:
            text = read_config_file(path)
        except OSError as error:
            raise ConfigError([f"{path}: cannot read: {error.strerror}"]) from None
        source, base_dir = str(path), path.parent
    return _built(text, source, base_dir)


VMPOOLER_CONFIG_VARIABLES = {"VMPOOLER_CONFIG": CONFIG_YAML_ENV, "VMPOOLER_CONFIG_FILE": CONFIG_FILE_ENV}
"""vmpooler's names for the config's text and file, with vmpool's."""


def _refuse_vmpoolers_variables(environ: Mapping[str, str]) -> None:
    """A config named by vmpooler's variable alone is refused, naming vmpool's: before, ``make
    run`` with a vmpooler deployment's ``VMPOOLER_CONFIG_FILE=vmpooler.yaml`` started, without a
    word, on the packaged demo config (its three dummy pools) instead of the operator's."""
    given = [name for name in VMPOOLER_CONFIG_VARIABLES if environ.get(name)]
    if given:
        raise ConfigError([f"{name} is vmpooler's variable, which vmpool does not read: name the config with "
                           f"{VMPOOLER_CONFIG_VARIABLES[name]} (README.md, Configuration)" for name in given])


def load(environ: Mapping[str, str] | None = None) -> Config:
    """Load the config named by the environment: VMPOOL_CONFIG (the text), a file named by
    VMPOOL_CONFIG_FILE, else the packaged default; canonical JSON (what packaging puts in the
    Lambda zip) or YAML (validated, ``parse``)."""
    return load_with_digest(environ).config
