"""Pool settings changed at runtime (POST /config/poolsize, /config/pooltemplate,
/config/clonetarget, /poolreset).

They live in Redis, so every Lambda sees them and they survive restarts; ``apply`` lays them
over the configured pool, which is how ``Services.pool`` hands the reconcile pass and the API
the pool as it should be now. A reset is a time: the pass drains VMs cloned before it. A clone
target lands in the pool's ``clone_target`` setting, which the vSphere provider's clone reads.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Iterable, Mapping

from chalicelib.config import PoolConfig
from chalicelib.sizing.settings import MAX_SIZE
from chalicelib.store.store import Store, _translate_errors

SIZE = "poolsize"
TEMPLATE = "pooltemplate"
RESET = "poolreset"
CLONE_TARGET = "clonetarget"
SETTINGS = (SIZE, TEMPLATE, RESET, CLONE_TARGET)


def stored_size(value: Any) -> int | None:
    """A stored size override: a whole number from 0 to ``MAX_SIZE`` (what POST /config/poolsize
    stores); None when absent or unreadable (``nan``, ``1e400``, text written into Redis by
    hand), so the pool keeps the size it would have without one instead of every pass of it,
    and /status, failing."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    if not math.isfinite(number) or number != int(number) or not 0 <= number <= MAX_SIZE:
        return None
    return int(number)


def _stored_time(value: Any) -> float | None:
    """A stored reset time; None when absent or unreadable."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


@dataclass(frozen=True)
class PoolOverride:
    size: int | None = None
    template: str | None = None
    reset_at: float | None = None
    clone_target: str | None = None


def apply(pool: PoolConfig, override: PoolOverride) -> PoolConfig:
    """The pool with its runtime size, template and clone target, when set."""
    if override.size is not None:
        pool = dataclasses.replace(pool, size=override.size)
    if override.template is not None:
        pool = dataclasses.replace(pool, template=override.template)
    if override.clone_target is not None:
        settings = MappingProxyType({**pool.settings, "clone_target": override.clone_target})
        pool = dataclasses.replace(pool, settings=settings)
    return pool


class PoolOverrides:
    """Read and change the runtime overrides; every method raises StoreUnavailable."""

    def __init__(self, store: Store) -> None:
        self.client = store.client
        self.keys = store.keys
        self.scripts = store.scripts

    def get(self, pool: str) -> PoolOverride:
        return self.all([pool])[pool]

    def all(self, pools: Iterable[str]) -> dict[str, PoolOverride]:
        """pool -> its overrides, in one round trip."""
        pools = list(pools)
        if not pools:
            return {}
        with _translate_errors():
            pipe = self.client.pipeline(transaction=False)
            for setting in SETTINGS:
                pipe.hmget(self.keys.pool_override(setting), pools)
            sizes, templates, resets, clone_targets = pipe.execute()
        return {
            pool: PoolOverride(
                size=stored_size(size),
                template=template,
                reset_at=_stored_time(reset),
                clone_target=clone_target,
            )
            for pool, size, template, reset, clone_target in zip(
                pools, sizes, templates, resets, clone_targets, strict=True)
        }

    def set(self, field: str, pool: str, value: int | str | None) -> None:
        """Override the pool's ``size``, ``template`` or ``clone_target``; None goes back to the
        configured one."""
        self.set_many(field, {pool: value})

    def set_many(self, field: str, values: Mapping[str, int | str | None]) -> list[str]:
        """Override ``field`` (``size``, ``template`` or ``clone_target``) of many pools at once,
        all or none (lua/pool_overrides.lua); None takes a pool back to its configured value.
        Returns the pools whose override changed."""
        setting = {"size": SIZE, "template": TEMPLATE, "clone_target": CLONE_TARGET}[field]
        args: list[str] = []
        for pool, value in values.items():
            args += [pool, "" if value is None else str(value)]
        if not args:
            return []
        with _translate_errors():
            changed = self.scripts.pool_overrides(keys=[self.keys.pool_override(setting)], args=args)
        return [str(pool) for pool in changed]

    def reset(self, pool: str, now: float) -> None:
        """Drain the pool's ready and pending VMs cloned before ``now`` (and so refill it)."""
        self.reset_many([pool], now)

    def reset_many(self, pools: Iterable[str], now: float) -> None:
        """Drain the pools' ready and pending VMs cloned before ``now`` (and so refill them), in
        one command: every pool or none."""
        mapping = {pool: repr(now) for pool in pools}
        if mapping:
            with _translate_errors():
                self.client.hset(self.keys.pool_override(RESET), mapping=mapping)  # type: ignore[arg-type]
