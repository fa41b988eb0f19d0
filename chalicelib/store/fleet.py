"""The set of pools the scheduler fans out to, and the one queued follow-up per pool.

- Known pools: every pool the scheduler has seen configured, with its settings as they were. A
  pool removed from the config is still known, so it can be drained (its VMs destroyed, as
  vmpooler's purge does) and forgotten once empty; the settings say where its VMs live.
- Follow-up: a pass that leaves work in flight queues one delayed look at its pool. The key says
  one is queued, so passes that run meanwhile (the schedule's tick, a checkout's nudge) do not
  start a second chain of follow-ups; it expires by itself if the message is lost. It holds the
  queued follow-up's mark, which its message carries: only that message frees it, not another
  delivery of an earlier follow-up.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Iterable, Sequence

from redis.exceptions import WatchError

from chalicelib.config import PoolConfig
from chalicelib.store.scripts import ScriptCall, run_many
from chalicelib.store.store import _translate_errors
from chalicelib.store.substore import SubStore


def pool_to_json(pool: PoolConfig) -> str:
    fields = {field.name: getattr(pool, field.name) for field in dataclasses.fields(pool)}
    fields["settings"] = dict(pool.settings)
    fields["alias"] = list(pool.alias)
    return json.dumps(fields, sort_keys=True, default=str)


def pools_fingerprint(pools: Sequence[PoolConfig]) -> str:
    """What ``remember`` records of a config's pools, in 32 hex characters: the same for the
    same settings, whatever config object holds them."""
    digest = hashlib.sha256()
    for pool in pools:
        digest.update(pool_to_json(pool).encode())
        digest.update(b"\n")
    return digest.hexdigest()[:32]


def pool_from_json(text: str) -> PoolConfig:
    fields = json.loads(text)
    fields["alias"] = tuple(fields.get("alias") or ())
    return PoolConfig(**fields)


FORGOTTEN_SECONDS = 600.0
"""How long a drained pool is noted as forgotten (``Fleet.forgotten``): far longer than an API
function may run a config that still has the pool (each reads the bucket every 30 s at most)."""


class Fleet(SubStore):
    """Known pools and queued follow-ups in Redis; every method raises StoreUnavailable."""

    def names(self) -> set[str]:
        """Every pool known to the scheduler (configured now or drained since)."""
        with _translate_errors():
            return {str(name) for name in self.client.hkeys(self.keys.known_pools)}

    def settings(self, pool: str) -> PoolConfig | None:
        """The pool's settings as last configured."""
        with _translate_errors():
            text = self.client.hget(self.keys.known_pools, pool)
        return pool_from_json(str(text)) if text else None

    def remembered(self) -> str | None:
        """The fingerprint of the config whose pools were last recorded whole (``remember``)."""
        with _translate_errors():
            found = self.client.get(self.keys.known_pools_config)
        return None if found is None else str(found)

    def remember(self, pools: Iterable[PoolConfig], config_fingerprint: str | None = None) -> None:
        """Record the configured pools' settings (in one round trip), with ``config_fingerprint``
        when they are every pool of that config (one transaction: Redis holds both or neither,
        a failover loses both or neither). The previous release's hash of clone demands goes at the
        same time: nothing reads it any more."""
        mapping = {pool.name: pool_to_json(pool) for pool in pools}
        if mapping or config_fingerprint is not None:
            with _translate_errors():
                pipe = self.client.pipeline(transaction=True)
                if mapping:
                    pipe.hset(self.keys.known_pools, mapping=dict(mapping))  # type: ignore[arg-type]
                if config_fingerprint is not None:
                    pipe.set(self.keys.known_pools_config, config_fingerprint)
                pipe.delete(self.keys.clone_demand_before)
                pipe.execute()

    def forget(self, pool: str, now: float | None = None) -> bool:
        """The pool is drained: drop it, and what passes kept about it (marks, its share of the
        task limit, its backoff, last boot, demand size), so pools removed over the years leave
        nothing behind (its DNS waiting flag stayed: a pool of that name pushed back showed in GET
        /status the VMs the old one's last pass left waiting on DNS). Its runtime overrides stay (a
        pool of that name pushed back gets them, as in vmpooler); its history and daily stats
        expire by themselves. ``now``: noted in ``pools:forgotten`` for FORGOTTEN_SECONDS
        (``forgotten``), the pools forgotten before that dropped from it (the set itself expires
        FORGOTTEN_SECONDS after the last).

        False, nothing changed, while an on-demand request for the pool is open (or one opened
        during the call): an API function a config behind opened it after the drain's pass, and
        its nudge, handled before the pool was forgotten, was left to a function that has the pool.
        The pool stays known, so the next drain pass fails the request (forgotten, nothing would)."""
        keys = self.keys
        with _translate_errors(), self.client.pipeline(transaction=True) as pipe:
            pipe.watch(keys.ondemand_open(pool))  # a request opened before EXEC aborts it
            if pipe.zcard(keys.ondemand_open(pool)):
                return False
            pipe.multi()
            pipe.hdel(keys.known_pools, pool)
            pipe.hdel(keys.providerless_pools, pool)
            if now is not None:
                pipe.zremrangebyscore(keys.forgotten_pools, "-inf", f"({now - FORGOTTEN_SECONDS!r}")
                pipe.zadd(keys.forgotten_pools, {pool: now})
                pipe.expire(keys.forgotten_pools, int(FORGOTTEN_SECONDS))  # gone after the last one's time
            pipe.delete(keys.ready_checked(pool), keys.inventory_checked(pool), keys.running_due(pool),
                        keys.dns_left(pool))  # records its DNS plugin, gone from the config, cannot delete
            pipe.zrem(keys.clone_demand, pool)
            pipe.zrem(keys.clone_demand_renewed, pool)
            for fields in (keys.clone_backoff, keys.clone_failure, keys.last_boot, keys.sizing_state,
                           keys.ready_fence, keys.dns_waiting):
                pipe.hdel(fields, pool)
            try:
                pipe.execute()
            except WatchError:
                return False
        return True

    def providerless_since(self, pool: str, now: float) -> tuple[float, bool]:
        """When a drain first found the removed pool's provider gone from the config (noted now
        if none had), and whether that is now (manager/providerless.py)."""
        with _translate_errors():
            pipe = self.client.pipeline(transaction=True)
            pipe.hsetnx(self.keys.providerless_pools, pool, repr(now))
            pipe.hget(self.keys.providerless_pools, pool)
            noted, since = pipe.execute()
        try:
            return float(since), bool(noted)
        except (TypeError, ValueError):  # written by hand: counted from now
            return now, bool(noted)

    def provider_back(self, pool: str) -> None:
        """The removed pool's provider is configured again: its drain destroys its VMs, and a later
        loss of the provider is counted from then."""
        with _translate_errors():
            self.client.hdel(self.keys.providerless_pools, pool)

    def forgotten(self, pool: str, now: float) -> bool:
        """Whether a drain forgot the pool within FORGOTTEN_SECONDS of ``now``."""
        with _translate_errors():
            since = self.client.zscore(self.keys.forgotten_pools, pool)
        return since is not None and now - float(since) <= FORGOTTEN_SECONDS

    def claim_followup(self, pool: str, ttl_seconds: float, mark: str = "1") -> bool:
        """Whether the caller may queue the pool's follow-up (no other one is queued); the key
        then holds ``mark``, which the follow-up's message carries (``followup_arrived``)."""
        with _translate_errors():
            return bool(self.client.set(self.keys.followup(pool), mark, nx=True,
                                        px=max(int(ttl_seconds * 1000), 1)))

    def followup_arrived(self, pool: str, mark: str | None = None) -> None:
        """The queued follow-up is being handled: the next pass may queue another. Only the
        follow-up whose ``mark`` the key holds frees it: another delivery of an earlier one (SQS
        delivers at least once, and again a message whose batch ran out of time) took the mark
        of the one queued since, and the next pass queued a second, each of the two queuing its
        next while the pool had work in flight. None: a message of an earlier release, which
        names no mark, frees it as before. A compare-and-delete: lua/release_lease.lua."""
        with _translate_errors():
            if mark is None:
                self.client.delete(self.keys.followup(pool))
            else:
                self.scripts.release_lease(keys=[self.keys.followup(pool)], args=[mark, 0])

    def followups_lost(self, pools: Iterable[str]) -> None:
        """The queue that held the pools' follow-ups is gone (a local stack killed with its
        in-process queue): the next pass of each may queue one again (one round trip)."""
        keys = [self.keys.followup(pool) for pool in pools]
        if keys:
            with _translate_errors():
                self.client.delete(*keys)

    def count_nudges(self, pools: Sequence[str], window: int, ttl_seconds: int) -> list[int]:
        """Count a change of each pool in the clock's window number ``window``: each pool's
        changes in that window so far, this one included (one round trip)."""
        calls: list[ScriptCall] = [(self.scripts.window_count, [self.keys.nudged(pool, window)], [ttl_seconds])
                                   for pool in pools]
        with _translate_errors():
            return [int(count) for count, _ in run_many(self.client, calls)]
