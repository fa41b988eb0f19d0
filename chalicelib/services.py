"""The objects a Lambda (or the local stack) builds once per process and reuses across requests.

Built at cold start from the environment; a warm Lambda reuses the Redis connection pool and the
provider connections (vCenter sessions) held here. Everything slow is built on first use: the
authenticator (ldap3), AWS clients for secret references (boto3), the providers (pyVmomi). So an
API cold start pays only for what its first request needs.

Secrets (the Redis password, each provider's password, the LDAP service account's) may be
references to AWS Secrets Manager / SSM; they are resolved through ``resolve_secret`` when first
needed (Powertools caches them), and every resolved value is masked in the logs from then on.
"""

from __future__ import annotations

import operator
import os
import threading
from functools import partial
from typing import TYPE_CHECKING, Any, Callable, Generic, Iterable, Iterator, TypeVar

import redis

from chalicelib import config as config_module
from chalicelib.answer_sizes import override_room
from chalicelib.auth import build_authenticator
from chalicelib.auth.base import Authenticator, AuthUnavailable, UserDirectory
from chalicelib.auth.basic import LoginService
from chalicelib.auth.directory_check import DirectoryCheck
from chalicelib.auth.ratelimit import LoginLimiter
from chalicelib.auth.secrets import SecretConfigError, SecretResolver, SecretUnavailable, default_resolver
from chalicelib.auth.tokens import TokenStore
from chalicelib.clock import Clock, SystemClock
from chalicelib.config import AuthConfig, Config, PoolConfig
from chalicelib.dns.base import DnsPlugin
from chalicelib.dns.registry import build_dns_plugin
from chalicelib.manager.refill import REFILL_QUEUE_ENV, NoRefill, RefillTrigger, SqsRefill
from chalicelib.observability import logger, redact_secrets
from chalicelib.refusals import RefusalLog
from chalicelib.store import ReplicaAcks, Store, connect
from chalicelib.store.connection import CredentialsUnavailable, breaker_of
from chalicelib.store.keys import DEFAULT_PREFIX
from chalicelib.store.pool_overrides import PoolOverrides
from chalicelib.store.pool_overrides import apply as apply_override
from chalicelib.store.redis_clock import RedisAlignedClock

if TYPE_CHECKING:
    from chalicelib.providers.base import Provider

T = TypeVar("T")

KEY_PREFIX_ENV = "VMPOOL_KEY_PREFIX"
REDIS_URL_ENV = "VMPOOL_REDIS_URL"
REDIS_AUTH_SECRET_ENV = "VMPOOL_REDIS_AUTH_SECRET"
"""A Secrets Manager secret (name or ARN) whose JSON key ``token`` is the Redis AUTH token."""


def configured_secrets(config: Config) -> Iterator[Any]:
    """Every secret value the config holds, as written (a plain string or a reference)."""
    if config.redis.password is not None:
        yield config.redis.password
    for provider in config.providers.values():
        password = getattr(provider.settings, "password", None)
        if password is not None:
            yield password
    for dns_config in config.dns_configs.values():
        tsig_secret = getattr(dns_config.settings, "tsig_secret", None)
        if tsig_secret is not None:
            yield tsig_secret
    ldap = config.auth.ldap if config.auth is not None else None
    if ldap is not None and ldap.service_account_password is not None:
        yield ldap.service_account_password


def resolve_and_redact(resolver: SecretResolver, value: Any) -> str | None:
    """The secret a config value names (fetched if it is a reference), masked in logs from now on."""
    resolved = resolver.resolve(value)
    if resolved:
        redact_secrets([resolved])
    return resolved


class RedisPassword(redis.CredentialProvider):
    """The Redis password (or AUTH token), resolved when redis-py opens a connection: a cold start
    does not wait for AWS, and a rotated secret is picked up when the Powertools cache expires."""

    def __init__(self, resolve: Callable[[Any], str | None], value: Any) -> None:
        self._resolve = resolve
        self._value = value

    def get_credentials(self) -> tuple[str]:
        try:
            password = self._resolve(self._value)
        except (SecretUnavailable, SecretConfigError) as error:
            # A Redis error, so the API answers 503 (the message names the reference only).
            raise CredentialsUnavailable(f"the Redis password is unavailable: {error}") from None
        return (password or "",)


def redis_client(config: Config, resolver: SecretResolver) -> redis.Redis:
    """A client for the configured Redis, its password resolved on first connection."""
    if config.redis.password is None:
        return connect(config.redis)
    return connect(
        config.redis,
        credential_provider=RedisPassword(lambda value: resolve_and_redact(resolver, value), config.redis.password),
    )


def demand_sized_pools(config: Config) -> dict[str, int]:
    """Pools whose checkouts and misses are counted for demand sizing (docs/sizing.md), each with
    its demand ``max``: the most misses one request counts for it."""
    return {pool.name: pool.sizing.demand.max for pool in config.pools
            if pool.sizing is not None and pool.sizing.demand is not None}


_auth_block = operator.attrgetter("auth")
"""The part of the config the authenticator, logins and directory check are built from."""


def _token_settings(config: Config) -> tuple[Any, int]:
    """The part of the config the token store is built from."""
    return config.service.token_ttl, config.service.max_tokens_per_user


_MISSING: Any = object()


class BuildCache(Generic[T]):
    """Objects of one kind built from a part of the config, by name (a provider, a DNS plugin,
    the authenticator...), each kept with the part it was built from: built on first use, once
    however many threads ask at once, and again when that part changed or ``current`` says so.

    The part is compared at each use, not only cleared when the config changes: a build that
    began under the config before a switch and ended after it was kept for good (the local
    stack's scheduler threads build a pool's provider while its main loop reloads an edited
    config: the passes cloned on the old vCenter, and the old LDAP server or the dummy's
    any-password rule checked logins, until the next edit). One build per name at a time: two
    first requests at once each built their own (a directory check each, each asking the
    directory about the same user), the last one kept.

    ``objects`` holds what is in use, by name: one put there by hand (tests do) is used as it is;
    one built is used while its part is the config's."""

    def __init__(self) -> None:
        self.objects: dict[str, T] = {}
        self._built_from: dict[str, tuple[Any, T]] = {}
        self._guard = threading.Lock()
        self._building: dict[str, threading.RLock] = {}

    def get(self, name: str, source: Any, build: Callable[[], T],
            current: Callable[[T], bool] | None = None) -> T:
        """What is kept for ``name`` when it was built from ``source`` (compared by identity,
        then by value) and ``current`` (when given) accepts it, else what ``build`` makes now
        (only one thread builds; the others wait for it and use what it made)."""
        made = self._kept(name, source)
        if made is not _MISSING and (current is None or current(made)):
            return made
        with self._lock(name):
            rebuilt = self._kept(name, source)
            if rebuilt is not _MISSING and rebuilt is not made:
                return rebuilt  # built by another thread meanwhile
            rebuilt = build()
            self.objects[name] = rebuilt
            self._built_from[name] = (source, rebuilt)
            return rebuilt

    def _kept(self, name: str, source: Any) -> Any:
        """What is in use for ``name`` when it may serve ``source``, else ``_MISSING``."""
        kept = self.objects.get(name, _MISSING)
        recorded = self._built_from.get(name)
        if kept is _MISSING or recorded is None:
            return kept  # nothing, or put by hand
        built_from, made = recorded
        if made is not kept:
            return _MISSING
        if built_from is not source:
            if built_from != source:
                return _MISSING
            # The same part in a new config: compared by identity from now on.
            self._built_from[name] = (source, made)
        return kept

    def _lock(self, name: str) -> threading.RLock:
        with self._guard:
            return self._building.setdefault(name, threading.RLock())


class Services:
    """Config, store, clock, providers, authentication and the refill trigger, wired together."""

    def __init__(
        self,
        config: Config,
        client: redis.Redis,
        clock: Clock | None = None,
        prefix: str = DEFAULT_PREFIX,
        refill: RefillTrigger | None = None,
        secrets: SecretResolver | None = None,
    ) -> None:
        self.config = config
        self.client = client
        self.redis_breaker = breaker_of(client)
        """Whether requests go to Redis now (``store.breaker``): per process, as the client."""
        self.clock = clock or SystemClock()
        self.store = Store(client, prefix=prefix, data_ttl_hours=config.redis.data_ttl_hours,
                           replica_acks=ReplicaAcks.from_config(config.redis, environ={}))
        self.store.demand_pools = demand_sized_pools(config)
        self._provider_builds: BuildCache[Provider] = BuildCache()
        self._providers = self._provider_builds.objects
        """The providers in use, by name (a test may put its own here)."""
        self._dns_builds: BuildCache[DnsPlugin] = BuildCache()
        self._dns_plugins = self._dns_builds.objects
        self._auth_builds: BuildCache[Any] = BuildCache()
        """The authenticator, logins, directory check and token store, each built from its part
        of the config (``:auth:``, the token settings)."""
        self._built_with: dict[tuple[str, str], str | None] = {}
        """The secret each provider (``("provider", name)``) and DNS plugin (``("dns", name)``)
        was built with, as resolved then: one built with a value since rotated is built again."""
        self.refill: RefillTrigger = refill or NoRefill()
        self.refusals = RefusalLog(self.clock.monotonic)
        """Refusals callers can cause at will, logged and counted once a window (chalicelib/refusals.py)."""
        self.started = self.clock.now()
        """When this process started serving: /status reports uptime from it until the service's
        start is known (``service_started``)."""
        self._service_started: float | None = None
        self.secrets = secrets or default_resolver()
        # Plain-text secrets are known now; references are masked once fetched.
        redact_secrets(value for value in configured_secrets(config) if isinstance(value, str))

    @classmethod
    def from_environment(cls, environ: dict[str, str] | None = None, config: Config | None = None) -> "Services":
        """Build everything from VMPOOL_* environment variables; refuses an invalid config."""
        environ = dict(os.environ if environ is None else environ)
        config = config or config_module.load(environ)
        for warning in config.warnings:
            logger.warning("config: " + warning)
        resolver = default_resolver()
        if environ.get(REDIS_URL_ENV):
            credentials = None
            if environ.get(REDIS_AUTH_SECRET_ENV):
                # The AUTH token stays in Secrets Manager, out of the functions' environment.
                reference = {"secret": environ[REDIS_AUTH_SECRET_ENV], "key": "token"}
                credentials = RedisPassword(lambda value: resolve_and_redact(resolver, value), reference)
            client = connect(config.redis, url=environ[REDIS_URL_ENV], credential_provider=credentials)
        else:
            client = redis_client(config, resolver)
        # Redis's clock, shared by every process (store/redis_clock.py): a time one Lambda writes
        # and another compares (a checkout's and a lifetime's end) is off by no clock skew.
        services = cls(config, client, clock=RedisAlignedClock(client),
                       prefix=environ.get(KEY_PREFIX_ENV, DEFAULT_PREFIX), secrets=resolver)
        services.store.replica_acks = ReplicaAcks.from_config(config.redis, environ)  # Lambda: 1 by default
        if environ.get(REFILL_QUEUE_ENV):
            services.refill = SqsRefill(environ[REFILL_QUEUE_ENV], store=services.store, clock=services.clock,
                                        configured=services.configures)
        return services

    def configures(self, pool: str) -> bool:
        """Whether the config in use now has ``pool`` (one removed since drains)."""
        return self.config.pool(pool) is not None

    def service_started(self) -> float:
        """When the service started serving (epoch seconds), the same in each of its processes:
        as the scheduler's first tick recorded it (``Store.mark_service_started``; the local
        stack's start), read once per process; this process's own start until then."""
        if self._service_started is None:
            self._service_started = self.store.service_started()
        return self.started if self._service_started is None else self._service_started

    def use_config(self, config: Config) -> None:
        """Serve with a new config (pushed to S3 while running): pools and settings apply at
        once; providers are rebuilt when their section changed."""
        if config is self.config:
            return
        if config.providers != self.config.providers:
            self._providers.clear()
        if config.dns_configs != self.config.dns_configs:
            self._dns_plugins.clear()  # else an entry's new domain or server was never used
        # Anything else built from the config is built again when its part of it changed
        # (``BuildCache``, checked at each use).
        self.config = config

    def pool(self, name: str) -> PoolConfig | None:
        """The pool as it should be now: as configured, with its runtime overrides."""
        pool = self.config.pool(name)
        if pool is None:
            return None
        return apply_override(pool, PoolOverrides(self.store).get(name), self.override_room)

    def pools(self, names: Iterable[str] | None = None) -> tuple[PoolConfig, ...]:
        """Every configured pool (or those of ``names`` that are configured) as it should be now,
        in config order (in ``names``' order), in one round trip."""
        chosen = self.config.pools if names is None else [
            pool for pool in map(self.config.pool, names) if pool is not None]
        overrides = PoolOverrides(self.store).all([pool.name for pool in chosen])
        return tuple(apply_override(pool, overrides[pool.name], self.override_room) for pool in chosen)

    def override_room(self) -> int:
        """What a pool's runtime template or clone target may add to its configured one under the
        config in effect (answer_sizes.override_room): more is left out (pool_overrides.fitting)."""
        return override_room(self.config)

    def configured_provider(self, name: str) -> Provider | None:
        """The named provider, or None when the config has no such provider block (a pool's VMs
        made with a provider since removed from the config)."""
        return self.provider(name) if name in self.config.providers else None

    def provider(self, name: str) -> Provider:
        """The named provider, built on first use and kept (its connections too)."""
        # Imported here: only the reconcile functions reach a provider, so the API's cold import
        # skips the provider layer (tests/core/test_cold_import.py).
        from chalicelib.providers.registry import build_provider, provider_secret

        config = self.config  # one config for the whole build: use_config may switch it meanwhile
        block = config.providers[name]
        built = ("provider", name)
        return self._provider_builds.get(
            name, block,
            lambda: build_provider(block, config, self.client, self.clock,
                                   resolve_secret=self._remembered(built), prefix=self.store.keys.prefix),
            lambda _: self._still_current(built, provider_secret(block)))

    def _still_current(self, built: tuple[str, str], secret: Any) -> bool:
        """Whether what was built for ``built`` may be used as it is: the secret it logs in with
        (``secret``: plain or a reference, None for none) resolves to the value it was
        built with. The provider and the DNS plugin resolve their secret when built, so a warm
        function kept a rotated vSphere password or TSIG secret until its next cold start (hours):
        a vCenter re-login failed every pass (``ReconcileErrors`` reason ``permission``) although
        docs/deploy.md promised the new value within the secrets' 5-minute cache. The resolver's
        cache makes this a dictionary look-up; when the secret cannot be fetched now (AWS away),
        the value in hand is kept rather than failing a pass that could still log in."""
        if secret is None:
            return True
        try:
            current = self.resolve_secret(secret)
        except (SecretUnavailable, SecretConfigError):
            return True
        if current == self._built_with.get(built):
            return True
        logger.info("a secret changed: built again with its new value", extra={"built": f"{built[0]} {built[1]}"})
        return False

    def _remembered(self, built: tuple[str, str]) -> Callable[[Any], str | None]:
        """``resolve_secret`` that records what it resolved for ``built`` (``_still_current``)."""
        def resolve(value: Any) -> str | None:
            resolved = self.resolve_secret(value)
            self._built_with[built] = resolved
            return resolved
        return resolve

    def dns_plugin(self, pool: PoolConfig) -> DnsPlugin | None:
        """The DNS plugin managing the pool's records (None when its ``dns_plugin`` names none),
        built on first use and kept."""
        return self.dns_plugin_named(pool.dns_plugin) if pool.dns_plugin else None

    @property
    def dns_lookup(self) -> Callable[[str], DnsPlugin | None] | None:
        """``dns_plugin_named`` for a reconcile pass (``PassContext.dns_plugins``); None when the
        config has no ``:dns_configs:`` entry: no entry can have records to delete, and the
        pass of a pool without ``dns_plugin`` then reads none (``dns_records.delete_left_records``)."""
        return self.dns_plugin_named if self.config.dns_configs else None

    def dns_plugin_named(self, name: str) -> DnsPlugin | None:
        """The plugin of the ``:dns_configs:`` entry ``name`` (None when the config has no such
        entry), built on first use and kept: a VM's record is deleted by the entry that
        published it, whatever its pool's ``dns_plugin`` says now (PassContext.withdraw_dns)."""
        dns_config = self.config.dns_configs.get(name)
        if dns_config is None:
            return None
        built = ("dns", dns_config.name)
        return self._dns_builds.get(
            dns_config.name, dns_config,
            lambda: build_dns_plugin(dns_config, self._remembered(built)),
            lambda _: self._still_current(built, getattr(dns_config.settings, "tsig_secret", None)))

    def resolve_secret(self, value: Any) -> str | None:
        """A config secret (plain or a reference), fetched and cached; masked in logs from now on."""
        return resolve_and_redact(self.secrets, value)

    def _built_for(self, name: str, config: Config, source: Callable[[Config], Any],
                   build: Callable[[Config], T]) -> T:
        """What was built for ``name`` from ``config``'s part ``source`` (the only part it
        depends on), built now from ``config`` when there is none or it was built from another
        (``BuildCache``)."""
        made: T = self._auth_builds.get(name, source(config), partial(build, config))
        return made

    @property
    def authenticator(self) -> Authenticator | None:
        """The ``:auth:`` provider (None without ``:auth:``). Raises AuthConfigError."""
        return self._built_for("authenticator", self.config, _auth_block, self._build_authenticator)

    def _build_authenticator(self, config: Config) -> Authenticator | None:
        return build_authenticator(config.auth, self.resolve_secret, self.client, self.store.keys.prefix)

    @property
    def logins(self) -> LoginService | None:
        """HTTP Basic logins with the failed-login limiter; None without ``:auth:``."""
        return self._built_for("logins", self.config, _auth_block, self._build_logins)

    def _build_logins(self, config: Config) -> LoginService | None:
        # The authenticator of this same config (not of one switched to meanwhile).
        authenticator = self._built_for("authenticator", config, _auth_block, self._build_authenticator)
        if authenticator is None:
            return None
        limiter = LoginLimiter.from_config(config.auth, self.client, prefix=self.store.keys.prefix)
        if hasattr(authenticator, "refusal_log"):  # LDAP: its refused logins counted once a window
            authenticator.refusal_log = self.refusals
        return LoginService(authenticator, limiter, self.refusals)

    @property
    def directory_check(self) -> DirectoryCheck:
        """Whether a token's user is still in the directory (asked every
        ``auth.directory_check_minutes``); off without ``:auth:`` or a directory to ask."""
        return self._built_for("directory_check", self.config, _auth_block,
                               lambda config: self._directory_check(config.auth))

    def _directory_check(self, auth: AuthConfig | None) -> DirectoryCheck:
        lookup = None
        if auth is not None and auth.ldap is not None and auth.ldap.uses_service_account:
            # The authenticator (ldap3, ~80 ms to import) is built at the first question, not for
            # requests the last answer serves.
            lookup = self._has_user
        return DirectoryCheck(
            self.client, self.clock, lookup,
            interval_minutes=auth.directory_check_minutes if auth is not None else 0,
            grace_minutes=auth.directory_outage_grace_minutes if auth is not None else 0,
            prefix=self.store.keys.prefix,
            # A request waits for another's question about its user for as long as one may take.
            wait_seconds=(auth.ldap.connect_timeout + auth.ldap.login_timeout + 1
                          if auth is not None and auth.ldap is not None else 30.0),
            task_seconds=auth.ldap.login_timeout if auth is not None and auth.ldap is not None else None,
        )

    def _has_user(self, user: str) -> bool | str:
        """Whether the ``:auth:`` directory still has ``user``: the stable id of its entry when the
        directory gives one (AuthUnavailable when it cannot tell, or cannot look users up)."""
        authenticator = self.authenticator
        if not isinstance(authenticator, UserDirectory) or not authenticator.looks_up_users:
            raise AuthUnavailable("the authentication provider cannot look users up")
        user_entry = getattr(authenticator, "user_entry", None)
        if callable(user_entry):
            found: bool | str = user_entry(user)
            return found
        return authenticator.has_user(user)

    @property
    def tokens(self) -> TokenStore:
        """API tokens (hash-only in Redis), expiring after ``config.token_ttl`` hours when set."""
        return self._built_for("tokens", self.config, _token_settings, self._build_tokens)

    def _build_tokens(self, config: Config) -> TokenStore:
        return TokenStore(
            self.client, self.clock, ttl_hours=config.service.token_ttl, prefix=self.store.keys.prefix,
            max_per_user=config.service.max_tokens_per_user, replicated=self.store.writes_replicated,
        )
