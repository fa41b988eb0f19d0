"""Per-minute samples of each pool's counts, for the dashboard's graphs.

Each pool has one sorted set ``history:<pool>`` scored by the minute (epoch seconds // 60); a
member is ``<minute>:<ready>:<running>:<pending>:<size>``. The pool's reconcile writes at most one
sample a minute (the latest of the minute wins), in one MULTI/EXEC that also trims samples older
than ``KEEP_MINUTES``, so a set never holds more than a week of minutes, and the key expires when
its pool stops being reconciled. A graph reads one sample per point, picked in Redis.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

from chalicelib.store.scripts import ScriptCall, run_many
from chalicelib.store.store import _translate_errors
from chalicelib.store.substore import SubStore

KEEP_MINUTES = 7 * 24 * 60
"""Seven days of per-minute samples: at most 10,080 small members per pool."""
POOLS_PER_CALL = 10
"""Pools one call of lua/history_points.lua picks points for: at 360 points, 3,600 look-ups,
a few milliseconds of Redis, so other clients are not held up behind a week of 1,000 pools."""


@dataclass(frozen=True)
class Sample:
    minute: int
    ready: int
    running: int
    pending: int
    size: int

    @classmethod
    def parse(cls, member: str) -> "Sample | None":
        parts = member.split(":")
        if len(parts) != 5 or not all(part.isdigit() for part in parts):
            return None
        minute, ready, running, pending, size = (int(part) for part in parts)
        return cls(minute, ready, running, pending, size)

    def member(self) -> str:
        return f"{self.minute}:{self.ready}:{self.running}:{self.pending}:{self.size}"


def minute_of(timestamp: float) -> int:
    return int(timestamp // 60)


class PoolHistory(SubStore):
    """Write and read the samples; every method raises StoreUnavailable."""

    def record(self, pool: str, sample: Sample) -> None:
        """Keep ``sample`` as the pool's sample of its minute (one round trip)."""
        key = self.keys.history(pool)
        with _translate_errors():
            pipe = self.client.pipeline(transaction=True)
            pipe.zremrangebyscore(key, sample.minute, sample.minute)
            pipe.zremrangebyscore(key, "-inf", sample.minute - KEEP_MINUTES)
            pipe.zadd(key, {sample.member(): sample.minute})
            pipe.expire(key, KEEP_MINUTES * 60)
            pipe.execute()

    def series(self, pools: Iterable[str], first_minute: int, points: int,
               step_minutes: int) -> dict[str, list[Sample | None]]:
        """pool -> one sample per step from ``first_minute``: the last one taken in the step, else
        the one before it carried forward (a minute without a pass changed nothing); None before
        the first. Picked in Redis (lua/history_points.lua), POOLS_PER_CALL pools a call, all
        calls in one round trip: a week of 1,000 pools moves 360 samples per pool, not 10,080."""
        pools = list(pools)
        if not pools:
            return {}
        calls: list[ScriptCall] = [
            (self.scripts.history_points, [self.keys.history(pool) for pool in pools[start:start + POOLS_PER_CALL]],
             [first_minute, step_minutes, points])
            for start in range(0, len(pools), POOLS_PER_CALL)]
        with _translate_errors():
            # run_many: EVALSHA by hand (a pipeline given a Script object first asks SCRIPT EXISTS).
            found = [picked for chunk in run_many(self.client, calls) for picked in chunk]
        return {pool: [Sample.parse(member) if member else None for member in picked]
                for pool, picked in zip(pools, found, strict=True)}
