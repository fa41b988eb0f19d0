"""Per-minute samples of each pool's counts, for the dashboard's graphs.

Each pool has one sorted set ``history:<pool>`` scored by the minute (epoch seconds // 60); a
member is ``<minute>:<ready>:<running>:<pending>:<size>``. The pool's reconcile writes at most one
sample a minute (the latest of the minute wins), in one MULTI/EXEC that also trims samples older
than ``KEEP_MINUTES``, so a set never holds more than a week of minutes, and the key expires when
its pool stops being reconciled.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

from chalicelib.store.store import Store, _translate_errors

KEEP_MINUTES = 7 * 24 * 60
"""Seven days of per-minute samples: at most 10,080 small members per pool."""


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


class PoolHistory:
    """Write and read the samples; every method raises StoreUnavailable."""

    def __init__(self, store: Store) -> None:
        self.client = store.client
        self.keys = store.keys

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

    def read(self, pools: Iterable[str], first_minute: int, last_minute: int) -> dict[str, list[Sample]]:
        """pool -> its samples from ``first_minute`` to ``last_minute``, oldest first."""
        pools = list(pools)
        if not pools:
            return {}
        with _translate_errors():
            pipe = self.client.pipeline(transaction=False)
            for pool in pools:
                pipe.zrangebyscore(self.keys.history(pool), first_minute, last_minute)
            found = pipe.execute()
        return {pool: [s for s in (Sample.parse(m) for m in members) if s is not None]
                for pool, members in zip(pools, found, strict=True)}


def series(samples: list[Sample], first_minute: int, points: int, step_minutes: int) -> list[Sample | None]:
    """One sample per step from ``first_minute``: the last one taken in the step, else the one
    before it carried forward (a minute without a pass changed nothing); None before the first."""
    result: list[Sample | None] = []
    index, last = 0, None
    for point in range(points):
        end = first_minute + (point + 1) * step_minutes
        while index < len(samples) and samples[index].minute < end:
            last = samples[index]
            index += 1
        result.append(last)
    return result
