"""The objects a Lambda (or the local stack) builds once per process and reuses across requests.

Built at cold start from the environment; a warm Lambda reuses the Redis connection pool and the
provider connections (vCenter sessions) held here.
"""

from __future__ import annotations

import os
import redis

from chalicelib import config as config_module
from chalicelib.clock import Clock, SystemClock
from chalicelib.config import Config, PoolConfig
from chalicelib.manager.refill import REFILL_QUEUE_ENV, NoRefill, RefillTrigger, SqsRefill
from chalicelib.observability import logger
from chalicelib.providers.base import Provider
from chalicelib.providers.registry import build_provider
from chalicelib.store import Store, connect
from chalicelib.store.pool_overrides import PoolOverrides
from chalicelib.store.pool_overrides import apply as apply_override

KEY_PREFIX_ENV = "VMPOOL_KEY_PREFIX"
REDIS_URL_ENV = "VMPOOL_REDIS_URL"


class Services:
    """Config, store, clock, providers and the refill trigger, wired together."""

    def __init__(
        self,
        config: Config,
        client: redis.Redis,
        clock: Clock | None = None,
        prefix: str = "vmpool:",
        refill: RefillTrigger | None = None,
    ) -> None:
        self.config = config
        self.client = client
        self.clock = clock or SystemClock()
        self.store = Store(client, prefix=prefix, data_ttl_hours=config.redis.data_ttl_hours)
        self._providers: dict[str, Provider] = {}
        self.refill: RefillTrigger = refill or NoRefill()
        self.started = self.clock.now()
        """When this process started serving: /status reports uptime from it, as vmpooler does."""

    @classmethod
    def from_environment(cls, environ: dict[str, str] | None = None, config: Config | None = None) -> "Services":
        """Build everything from VMPOOL_* environment variables; refuses an invalid config."""
        environ = dict(os.environ if environ is None else environ)
        config = config or config_module.load(environ)
        for warning in config.warnings:
            logger.warning("config: " + warning)
        if environ.get(REDIS_URL_ENV):
            client = redis.Redis.from_url(environ[REDIS_URL_ENV], decode_responses=True,
                                          socket_timeout=config.redis.socket_timeout,
                                          socket_connect_timeout=config.redis.socket_timeout)
        else:
            password = config.redis.password if isinstance(config.redis.password, str) else None
            client = connect(config.redis, password)
        services = cls(config, client, prefix=environ.get(KEY_PREFIX_ENV, "vmpool:"))
        if environ.get(REFILL_QUEUE_ENV):
            services.refill = SqsRefill(environ[REFILL_QUEUE_ENV])
        return services

    def pool(self, name: str) -> PoolConfig | None:
        """The pool as it should be now: as configured, with its runtime overrides."""
        pool = self.config.pool(name)
        if pool is None:
            return None
        return apply_override(pool, PoolOverrides(self.store).get(name))

    def pools(self) -> tuple[PoolConfig, ...]:
        """Every configured pool as it should be now, in config order (one round trip)."""
        overrides = PoolOverrides(self.store).all(self.config.pool_names)
        return tuple(apply_override(pool, overrides[pool.name]) for pool in self.config.pools)

    def provider(self, name: str) -> Provider:
        """The named provider, built on first use and kept (its connections too)."""
        if name not in self._providers:
            self._providers[name] = build_provider(
                self.config.providers[name], self.config, self.client, self.clock,
                prefix=self.store.keys.prefix,
            )
        return self._providers[name]
