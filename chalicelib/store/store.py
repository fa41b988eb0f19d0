"""Typed operations on the service's state in Redis.

Reads that the API and the manager make often are one round trip each (a pipeline or a script).
Changes that touch several keys go through the Lua scripts in ``lua/`` so that many Lambdas can
act at once without any lock held in a process.
"""

from __future__ import annotations

import json
import secrets
import time
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence, cast

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from chalicelib.config import RedisConfig
from chalicelib.sizing import demand as demand_history
from chalicelib.store.keys import STATES, Keys
from chalicelib.store.records import VMRecord
from chalicelib.store.scripts import Scripts

DAILY_STATS_TTL_SECONDS = 400 * 24 * 3600
"""How long per-day statistics stay for /summary: a bit more than a year."""


class StoreUnavailable(Exception):
    """Redis cannot be reached or answered with an error; the API turns this into a 503."""


@dataclass(frozen=True)
class CheckoutRequest:
    """``count`` VMs asked for under ``name`` (a pool or an alias), served from any of ``pools``."""

    name: str
    pools: Sequence[str]
    count: int


@dataclass(frozen=True)
class CheckedOut:
    requested: str
    pool: str
    hostname: str


@dataclass(frozen=True)
class CheckoutResult:
    vms: tuple[CheckedOut, ...] = ()
    short: tuple[str, ...] = ()
    """Requested names that could not be served; non-empty means nothing was checked out."""

    @property
    def ok(self) -> bool:
        return not self.short


@dataclass(frozen=True)
class PoolSnapshot:
    """Every VM a pool tracks, by state, with their records: what a reconcile pass starts from."""

    members: Mapping[str, Mapping[str, float]]
    """state -> hostname -> time it entered the state."""
    records: Mapping[str, VMRecord]
    cloning_total: int = 0

    def hostnames(self, state: str) -> list[str]:
        return list(self.members.get(state, {}))

    def count(self, state: str) -> int:
        return len(self.members.get(state, {}))

    @property
    def tracked(self) -> set[str]:
        return {host for hosts in self.members.values() for host in hosts}


@dataclass(frozen=True)
class DurationSample:
    kind: str
    """``clone`` or ``boot``."""
    pool: str
    seconds: float


@dataclass
class DayStats:
    """One day's statistics as kept in ``daily:<day>``."""

    day: str
    values: dict[str, str] = field(default_factory=dict)

    def number(self, field_name: str) -> float:
        value = self.values.get(field_name)
        return float(value) if value else 0.0


def connect(
    config: RedisConfig,
    password: str | None = None,
    credential_provider: redis.CredentialProvider | None = None,
) -> redis.Redis:
    """A client for the configured Redis: short timeouts, health checks, decoded strings.

    ``credential_provider`` (instead of ``password``) is asked for the password each time a
    connection opens, so a password kept in AWS is fetched only when first needed."""
    options: dict[str, Any] = dict(
        db=config.db,
        password=password,
        credential_provider=credential_provider,
        decode_responses=True,
        socket_timeout=config.socket_timeout,
        socket_connect_timeout=config.socket_timeout,
        health_check_interval=30,
        # redis-py 8 retries any command 10 times with backoff on a connection error or a
        # timeout: while Redis is down every request hung 3 to 5 s before its 503, and a script
        # that timed out after it ran (a slow Redis) ran again: a second checkout. Retry once, at
        # once, only when the connection broke (a connection the server closed while idle);
        # never after a timeout.
        retry=Retry(NoBackoff(), 1, supported_errors=(redis.ConnectionError,)),
    )
    if config.unix_socket:
        return redis.Redis(unix_socket_path=config.unix_socket, **options)
    return redis.Redis(host=config.server, port=config.port, ssl=config.tls, **options)


class Store:
    """The service's state. Every method raises StoreUnavailable when Redis fails."""

    def __init__(self, client: redis.Redis, prefix: str = "vmpool:", data_ttl_hours: int = 168) -> None:
        self.client = client
        self.keys = Keys(prefix)
        self.scripts = Scripts(client)
        self.data_ttl_seconds = data_ttl_hours * 3600
        self.demand_pools: frozenset[str] = frozenset()
        """Pools with demand sizing: the checkout script counts their checkouts and misses."""

    # --- reads --------------------------------------------------------------------------------

    def get_vm(self, hostname: str) -> VMRecord | None:
        with _translate_errors():
            # decode_responses=True: redis-py's types cannot say so
            data = cast("dict[str, str]", self.client.hgetall(self.keys.vm(hostname)))
        return VMRecord.from_hash(data) if data else None

    def pool_snapshot(self, pool: str) -> PoolSnapshot:
        """All of a pool's VMs and records in two round trips, whatever the pool's size."""
        with _translate_errors():
            pipe = self.client.pipeline(transaction=False)
            for state in STATES:
                pipe.zrange(self.keys.pool_state(pool, state), 0, -1, withscores=True)
            pipe.zcard(self.keys.cloning)
            *state_members, cloning_total = pipe.execute()
            members = {state: dict(pairs) for state, pairs in zip(STATES, state_members, strict=True)}
            hostnames = [host for hosts in members.values() for host in hosts]
            records: dict[str, VMRecord] = {}
            if hostnames:
                pipe = self.client.pipeline(transaction=False)
                for host in hostnames:
                    pipe.hgetall(self.keys.vm(host))
                for host, data in zip(hostnames, pipe.execute(), strict=True):
                    if data:
                        records[host] = VMRecord.from_hash(data)
        return PoolSnapshot(members=members, records=records, cloning_total=cloning_total)

    def counts(self, pools: Iterable[str]) -> dict[str, dict[str, int]]:
        """pool -> state -> number of VMs, in one round trip."""
        pools = list(pools)
        with _translate_errors():
            pipe = self.client.pipeline(transaction=False)
            for pool in pools:
                for state in STATES:
                    pipe.zcard(self.keys.pool_state(pool, state))
            values = iter(pipe.execute())
        return {pool: {state: next(values) for state in STATES} for pool in pools}

    def hostnames(self, pool: str, state: str) -> list[str]:
        with _translate_errors():
            return cast("list[str]", self.client.zrange(self.keys.pool_state(pool, state), 0, -1))

    def cloning_count(self) -> int:
        with _translate_errors():
            return self.client.zcard(self.keys.cloning)

    def exists(self, hostnames: Sequence[str]) -> list[bool]:
        with _translate_errors():
            pipe = self.client.pipeline(transaction=False)
            for host in hostnames:
                pipe.exists(self.keys.vm(host))
            return [bool(found) for found in pipe.execute()]

    # --- atomic changes -----------------------------------------------------------------------

    def checkout(
        self, requests: Sequence[CheckoutRequest], now: float, fields: Mapping[str, str]
    ) -> CheckoutResult:
        """Take every requested VM or none, in one round trip; on success the pools taken from
        are nudged to refill in the same step, and demand-sized pools count the minute's demand."""
        checkout: dict[str, Any] = {
            "requests": [{"name": r.name, "pools": list(r.pools), "count": r.count} for r in requests],
            "fields": dict(fields),
        }
        tracked = {pool for r in requests for pool in r.pools if pool in self.demand_pools}
        if tracked:
            day, minute = demand_history.day_and_minute(demand_history.epoch_minute(now))
            checkout["demand"] = {"prefix": self.keys.demand_prefix, "day": day, "minute": minute,
                                  "ttl": demand_history.HISTORY_TTL_SECONDS, "pools": dict.fromkeys(tracked, True)}
        payload = json.dumps(checkout)
        with _translate_errors():
            answer = json.loads(self.scripts.checkout(args=[self.keys.prefix, repr(now), payload]))
        if not answer["ok"]:
            return CheckoutResult(short=tuple(answer["short"]))
        return CheckoutResult(vms=tuple(CheckedOut(*entry) for entry in answer["vms"]))

    def move(
        self, hostname: str, pool: str, from_state: str, to_state: str, now: float,
        nudge: bool = False, **fields: Any,
    ) -> bool:
        """Move a VM between states if it is still in ``from_state``; set ``fields`` on its record
        (a value of None deletes the field). ``nudge`` wakes the pool's reconcile in the same step.
        Returns whether it moved."""
        args: list[str] = [
            self.keys.prefix, hostname, pool, from_state, to_state, repr(now), str(self.data_ttl_seconds),
            "1" if nudge else "0",
        ]
        for name, value in fields.items():
            args += [name, _encode(value)]
        with _translate_errors():
            return bool(self.scripts.move(args=args))

    def reserve_clones(
        self,
        pool: str,
        size: int,
        task_limit: int,
        template: str,
        domain: str,
        candidates: Sequence[str],
        now: float,
    ) -> list[str]:
        """Create pending records for as many candidates as the pool lacks and the task limit
        allows, counted atomically. Returns the hostnames reserved."""
        with _translate_errors():
            return self.scripts.reserve_clones(
                args=[self.keys.prefix, pool, size, task_limit, repr(now), template, domain, *candidates]
            )

    def update_vm(self, hostname: str, **fields: Any) -> bool:
        """Set fields on an existing record (None deletes a field). False for an unknown VM."""
        args: list[str] = []
        for name, value in fields.items():
            args += [name, _encode(value)]
        with _translate_errors():
            return bool(self.scripts.update(keys=[self.keys.vm(hostname)], args=args))

    def set_once(self, hostname: str, field_name: str, value: str = "1") -> bool:
        """Set a field on an existing record unless it is set already. True for the one caller
        that set it (racing passes: exactly one wins)."""
        with _translate_errors():
            return bool(self.scripts.set_once(keys=[self.keys.vm(hostname)], args=[field_name, value]))

    def add_discovered(self, hostname: str, pool: str, now: float, **fields: Any) -> bool:
        """Record a VM found in the pool's folder that no live record claims. Returns whether
        it was recorded (False when another pool or state knows it)."""
        args: list[str] = [self.keys.prefix, hostname, pool, repr(now)]
        for name, value in fields.items():
            if value is not None:
                args += [name, _encode(value)]
        with _translate_errors():
            return bool(self.scripts.discover(args=args))

    def finish_clone(self, hostname: str, now: float) -> None:
        """The clone task is done: free its place under the task limit and note when."""
        with _translate_errors():
            pipe = self.client.pipeline(transaction=True)
            pipe.zrem(self.keys.cloning, hostname)
            pipe.exists(self.keys.vm(hostname))
            existed = pipe.execute()[1]
            if existed:
                self.update_vm(hostname, clone_end=now)

    # --- per-pool lease and wake-ups ----------------------------------------------------------

    def acquire_lease(self, pool: str, ttl_seconds: float) -> str | None:
        """Take the pool's lease if nobody holds it. Returns the holder token, or None."""
        token = secrets.token_hex(8)
        with _translate_errors():
            taken = self.client.set(self.keys.lease(pool), token, nx=True, px=int(ttl_seconds * 1000))
        return token if taken else None

    def renew_lease(self, pool: str, token: str, ttl_seconds: float) -> bool:
        with _translate_errors():
            return bool(
                self.scripts.release_lease(keys=[self.keys.lease(pool)], args=[token, int(ttl_seconds * 1000)])
            )

    def release_lease(self, pool: str, token: str) -> None:
        with _translate_errors():
            self.scripts.release_lease(keys=[self.keys.lease(pool)], args=[token, 0])

    def wake(self, pool: str) -> None:
        """Nudge whoever runs the pool's reconcile to look again now."""
        key = self.keys.wake(pool)
        with _translate_errors():
            pipe = self.client.pipeline(transaction=False)
            pipe.lpush(key, "1")
            pipe.ltrim(key, 0, 0)
            pipe.expire(key, 60)
            pipe.execute()

    def wait_for_wake(self, pool: str, timeout_seconds: float) -> bool:
        """Block until nudged or the timeout passes. Returns whether nudged."""
        key = self.keys.wake(pool)
        with _translate_errors():
            # BLPOP's timeout must be shorter than the socket timeout, so wait in slices.
            deadline = time.monotonic() + timeout_seconds
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                if self.client.blpop([key], timeout=min(remaining, 1.0)):
                    return True

    def clear_wakes(self, pool: str) -> None:
        with _translate_errors():
            self.client.delete(self.keys.wake(pool))

    # --- statistics ---------------------------------------------------------------------------

    def record_durations(self, day: str, samples: Sequence[DurationSample]) -> None:
        if not samples:
            return
        args: list[Any] = [DAILY_STATS_TTL_SECONDS]
        for sample in samples:
            args += [sample.kind, sample.pool, repr(round(sample.seconds, 2))]
        with _translate_errors():
            self.scripts.record_durations(keys=[self.keys.daily(day)], args=args)

    def record_tags(self, day: str, tags: Mapping[str, str]) -> None:
        if not tags:
            return
        key = self.keys.daily(day)
        with _translate_errors():
            pipe = self.client.pipeline(transaction=True)
            for tag, value in tags.items():
                pipe.hincrby(key, f"tag:{tag}:{value}", 1)
            pipe.expire(key, DAILY_STATS_TTL_SECONDS)
            pipe.execute()

    def day_stats(self, days: Sequence[str]) -> list[DayStats]:
        with _translate_errors():
            pipe = self.client.pipeline(transaction=False)
            for day in days:
                pipe.hgetall(self.keys.daily(day))
            return [DayStats(day, values) for day, values in zip(days, pipe.execute(), strict=True)]

    def set_last_boot(self, pool: str, when: str) -> None:
        with _translate_errors():
            self.client.hset(self.keys.last_boot, pool, when)

    def last_boots(self) -> dict[str, str]:
        with _translate_errors():
            return cast("dict[str, str]", self.client.hgetall(self.keys.last_boot))

    def ping(self) -> None:
        with _translate_errors():
            self.client.ping()


def _encode(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(value)
    if isinstance(value, float):
        return repr(value)
    return str(value)


class _translate_errors:
    """Turn redis-py's connection and server errors into StoreUnavailable."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: Any) -> None:
        # Returns None (never True): any other exception propagates unchanged, so code after a
        # `with` block runs only when the block finished.
        if exc is not None and isinstance(exc, redis.RedisError):
            raise StoreUnavailable(f"redis: {type(exc).__name__}") from exc
