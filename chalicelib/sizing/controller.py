"""The pool's effective size now, and why: runtime override > demand and schedule > config.

``SizeController.target`` is what the reconcile pass asks each pass (through ``target_size``) and
what the replay simulator (tools/sizing_replay) asks each simulated minute: one decision code, two
backends (Redis here, memory in the simulator).

- An override (POST /config/poolsize) wins until it is reset: reason ``override``.
- A pool with ``demand`` sizing: the forecast (sizing/demand.py) within ``min``..``max``. A size
  change that reverses the previous one's direction, or any decrease, waits until ``cooldown``
  minutes have passed since the previous change: the size flaps at most once per cooldown.
  Increases after increases go at once (a burst). Without same-weekday history (a new pool, lost
  data) the size never drops below the configured ``size``; never below ``min`` whatever happens.
- A schedule window covering now sets the size (with demand sizing: a floor): reason
  ``schedule <days> <start>-<end>``.
- Otherwise the configured size: reason ``config``.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from typing import Any, Protocol, Sequence, cast

from chalicelib import observability as metric
from chalicelib.config import PoolConfig
from chalicelib.observability import emit, logger
from chalicelib.sizing import demand
from chalicelib.sizing.demand import Forecast, Window
from chalicelib.sizing.schedule import current_window
from chalicelib.sizing.settings import DemandSettings, SizingSettings
from chalicelib.store.pool_overrides import SIZE, valid_size
from chalicelib.store.records import finite_number
from chalicelib.store.store import Store, _translate_errors

OVERRIDE = "override"
CONFIG = "config"
DEMAND = "demand"
SCHEDULE = "schedule"


@dataclass(frozen=True)
class SizeDecision:
    """The size the pool should have now, why, and how gently to shrink to it."""

    size: int
    reason: str
    predicted: float | None = None
    """Expected VMs asked for over the next lead time (demand sizing only)."""
    drain_grace_seconds: float = 0.0
    """A scale-down retires only ready VMs that have been ready at least this long."""

    def apply(self, pool: PoolConfig) -> PoolConfig:
        """The pool with this size."""
        return pool if pool.size == self.size else dataclasses.replace(pool, size=self.size)


@dataclass(frozen=True)
class DemandState:
    """The demand part of the last decision, kept between passes for the cooldown."""

    size: int
    changed_at: float
    direction: str
    """``up``, ``down`` or ``""`` (the first decision)."""
    predicted: float | None = None

    def to_json(self) -> str:
        return json.dumps({"size": self.size, "changed_at": self.changed_at, "direction": self.direction,
                           "predicted": self.predicted})

    @classmethod
    def from_json(cls, text: str | None) -> "DemandState | None":
        """The stored state; None when absent or unreadable, a size or time that is not a finite
        number included (then the pool starts afresh)."""
        if not text:
            return None
        try:
            data = json.loads(text)
            size, changed_at = float(data["size"]), float(data["changed_at"])
            predicted = None if data.get("predicted") is None else float(data["predicted"])
            if not (math.isfinite(size) and math.isfinite(changed_at)):
                return None
            return cls(int(size), changed_at, str(data.get("direction", "")),
                       predicted if predicted is not None and math.isfinite(predicted) else None)
        except (ValueError, TypeError, KeyError, AttributeError):
            return None


@dataclass(frozen=True)
class Inputs:
    """What a backend loads before a decision."""

    override: int | None
    previous: DemandState | None
    measured_lead_seconds: float | None


class SizingBackend(Protocol):
    """Where a controller reads its inputs and keeps its state: Redis, or the simulator's memory."""

    def load(self, pool: str, now: float, with_demand: bool) -> Inputs:
        """The pass's inputs. With demand: first marks today as a day the service ran on (this
        pass runs today), so the recent window of the first pass after midnight UTC reads the
        minutes before it as they are, not as unknown."""
        ...

    def demand(self, pool: str, windows: Sequence[Window]) -> list[list[int] | None]:
        """Per-minute demand (checkouts + misses) in each window; None for a window with a day
        the service has no record of."""
        ...

    def save(self, pool: str, now: float, state: DemandState) -> DemandState:
        """Keep ``state`` unless another decision was saved since ``load``; returns the one that
        stands."""
        ...


def _clamp(value: int, settings: DemandSettings) -> int:
    return max(settings.min, min(settings.max, value))


def hold_for_cooldown(previous: DemandState | None, wanted: int, now: float, cooldown_seconds: float) -> DemandState:
    """The demand size after the cooldown rule (see the module docstring)."""
    if previous is None:
        return DemandState(wanted, now, "")
    if wanted == previous.size:
        return previous
    direction = "up" if wanted > previous.size else "down"
    # A change stamped in the future (by a process whose clock runs ahead, or before this one's
    # was set back) cools for a cooldown around its stamp, not until this clock reaches it.
    cooling = abs(now - previous.changed_at) < cooldown_seconds
    if cooling and (direction == "down" or previous.direction == "down"):
        return previous
    return DemandState(wanted, now, direction)


def decide(pool: PoolConfig, sizing: SizingSettings, now: float, default_timezone: str | None,
           override: int | None, demand_size: int | None, predicted: float | None = None) -> SizeDecision:
    """Combine override, demand size (already through the cooldown) and schedule (pure)."""
    if override is not None:
        return SizeDecision(override, OVERRIDE)
    window = current_window(sizing, now, default_timezone)
    settings = sizing.demand
    if settings is None:
        if window is not None:
            return SizeDecision(window.size, f"{SCHEDULE} {window.label}")
        return SizeDecision(pool.size, CONFIG)
    grace = settings.drain_grace_minutes * 60.0
    size = _clamp(pool.size if demand_size is None else demand_size, settings)
    if window is not None and window.size > size:
        return SizeDecision(window.size, f"{SCHEDULE} {window.label}", predicted, grace)
    return SizeDecision(size, DEMAND, predicted, grace)


class SizeController:
    """Decides pools' sizes from a backend; the same code in the reconcile pass and the replay."""

    def __init__(self, backend: SizingBackend, default_timezone: str | None = None) -> None:
        self.backend = backend
        self.default_timezone = default_timezone
        self.last_forecast: Forecast | None = None

    def target(self, pool: PoolConfig, now: float) -> SizeDecision:
        """The pool's size now (``pool`` as configured, its override not yet applied)."""
        sizing: SizingSettings | None = pool.sizing
        if sizing is None:
            return SizeDecision(pool.size, CONFIG)
        settings = sizing.demand
        inputs = self.backend.load(pool.name, now, settings is not None)
        self.last_forecast = None
        if settings is None or inputs.override is not None:
            return decide(pool, sizing, now, self.default_timezone, inputs.override, None)
        lead = demand.lead_minutes(inputs.measured_lead_seconds, settings)
        recent, *seasons = self.backend.demand(pool.name, demand.windows(settings, now, lead))
        found = demand.forecast(settings, recent or [], seasons, lead)
        wanted = _clamp(found.wanted, settings)
        if found.seasonal_peak is None:
            wanted = max(wanted, _clamp(pool.size, settings))  # no history: never below the configured size
        state = hold_for_cooldown(inputs.previous, wanted, now, settings.cooldown_minutes * 60.0)
        state = dataclasses.replace(state, predicted=found.expected)
        state = self.backend.save(pool.name, now, state)
        self.last_forecast = found
        decision = decide(pool, sizing, now, self.default_timezone, None, state.size, found.expected)
        previous_size = inputs.previous.size if inputs.previous else None
        if state.size != previous_size:
            logger.info("pool size decision", extra={
                "pool": pool.name, "size": decision.size, "reason": decision.reason, "demand_size": state.size,
                "previous_demand_size": previous_size, "wanted": wanted, "held_by_cooldown": state.size != wanted,
                "lead_minutes": lead, "recent_rate": found.recent_rate,
                "seasonal_peak": "no history" if found.seasonal_peak is None else found.seasonal_peak,
                "predicted": found.expected, "min": settings.min, "max": settings.max})
        return decision


class RedisSizingBackend:
    """The controller's inputs and state in Redis (keys in store/keys.py)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.keys = store.keys
        self._size_key = self.keys.pool_override(SIZE)
        self._loaded: dict[str, str] = {}
        """pool -> its decision as ``load`` read it ('' when none): what ``save`` expects to replace."""

    def load(self, pool: str, now: float, with_demand: bool) -> Inputs:
        today = demand.epoch_minute(now)
        days = [demand.day_and_minute(today - offset * demand.MINUTES_PER_DAY)[0] for offset in (0, 1)]
        scope = f"boot:pool:{pool}"
        with _translate_errors():
            pipe = self.store.client.pipeline(transaction=False)
            pipe.hget(self._size_key, pool)
            if with_demand:
                pipe.hset(self.keys.demand(pool, days[0]), demand.SEEN_FIELD, "1")
                pipe.expire(self.keys.demand(pool, days[0]), demand.HISTORY_TTL_SECONDS)
                pipe.hget(self.keys.sizing_state, pool)
                for day in days:
                    pipe.hmget(self.keys.daily(day), [f"{scope}:total", f"{scope}:count"])
            answers = pipe.execute()
        override = valid_size(answers[0])
        if not with_demand:
            return Inputs(override, None, None)
        stored_state, boot_figures = answers[3], answers[4:]
        total = sum(finite_number(pair[0]) or 0.0 for pair in boot_figures)
        count = sum(finite_number(pair[1]) or 0.0 for pair in boot_figures)
        self._loaded[pool] = stored_state or ""
        return Inputs(override, DemandState.from_json(stored_state),
                      total / count if count >= 1 else None)

    def demand(self, pool: str, windows: Sequence[Window]) -> list[list[int] | None]:
        plan: list[list[tuple[str, range]]] = [window.segments() for window in windows]
        with _translate_errors():
            pipe = self.store.client.pipeline(transaction=False)
            for segments in plan:
                for day, minutes in segments:
                    fields = [demand.SEEN_FIELD]
                    for minute in minutes:
                        fields += [f"{demand.CHECKOUT_FIELD}{minute}", f"{demand.MISS_FIELD}{minute}"]
                    pipe.hmget(self.keys.demand(pool, day), fields)
            answers = iter(pipe.execute())
        result: list[list[int] | None] = []
        for segments in plan:
            counts: list[int] = []
            known = True
            for _ in segments:
                seen, *values = next(answers)
                known = known and seen is not None
                counts += [_count(values[i]) + _count(values[i + 1]) for i in range(0, len(values), 2)]
            result.append(counts if known else None)
        return result

    def save(self, pool: str, now: float, state: DemandState) -> DemandState:
        """Keep ``state`` unless another pass saved a decision since ``load`` read one
        (lua/replace_field.lua); then that one stands, if readable."""
        with _translate_errors():
            saved = self.store.scripts.replace_field(
                keys=[self.keys.sizing_state], args=[pool, self._loaded.get(pool, ""), state.to_json()])
            if int(saved):
                self._loaded[pool] = state.to_json()
                return state
            # Read only when another pass saved meanwhile (the client decodes replies to str).
            stored = cast("str | None", self.store.client.hget(self.keys.sizing_state, pool))
        newer = DemandState.from_json(stored)
        self._loaded[pool] = stored or ""
        return state if newer is None else newer

    def current(self, pools: Sequence[PoolConfig]) -> tuple[dict[str, int | None], dict[str, DemandState | None]]:
        """Overrides and stored demand states of ``pools``, in one round trip (for /status)."""
        names = [pool.name for pool in pools]
        if not names:
            return {}, {}
        with _translate_errors():
            pipe = self.store.client.pipeline(transaction=False)
            pipe.hmget(self._size_key, names)
            pipe.hmget(self.keys.sizing_state, names)
            sizes, states = pipe.execute()
        overrides = {name: valid_size(size) for name, size in zip(names, sizes, strict=True)}
        return overrides, {name: DemandState.from_json(state) for name, state in zip(names, states, strict=True)}


def _configured(pool: PoolConfig) -> PoolConfig:
    """The pool with its configured size (its runtime override, if any, taken off)."""
    size = pool.settings.get("size")
    return pool if size is None else dataclasses.replace(pool, size=int(size))


MAX_MINUTE_COUNT = 1_000_000
"""The most VMs one minute's bucket counts. A pool is at most ``MAX_SIZE`` VMs, so a bigger count
(only a broken one) changes no size; bounded, sums of many stay within a float."""


def _count(value: Any) -> int:
    """A demand bucket's count: broken or negative values count as none."""
    return min(max(int(finite_number(value) or 0), 0), MAX_MINUTE_COUNT)


def target_size(store: Store, pool: PoolConfig, now: float, default_timezone: str | None) -> SizeDecision:
    """The reconcile pass's one question: the pool's size now and why. ``pool`` may carry its
    runtime size override; the override is read again here so the reason says so. A pool without
    ``sizing`` costs nothing (no Redis read). Emits the target size and predicted demand."""
    if pool.sizing is None:
        return SizeDecision(pool.size, CONFIG)
    controller = SizeController(RedisSizingBackend(store), default_timezone)
    decision = controller.target(_configured(pool), now)
    values: dict[str, float] = {metric.TARGET_SIZE: decision.size}
    if decision.predicted is not None:
        values[metric.PREDICTED_DEMAND] = decision.predicted
    emit(pool.name, values)
    return decision


def current_sizes(store: Store, pools: Sequence[PoolConfig], now: float,
                  default_timezone: str | None) -> dict[str, SizeDecision]:
    """Every pool's effective size and reason as /status and /poolstat show them (one round
    trip): demand sizes as the last reconcile pass decided them."""
    overrides, states = RedisSizingBackend(store).current(pools)
    result: dict[str, SizeDecision] = {}
    for pool in pools:
        sizing: SizingSettings | None = pool.sizing
        override = overrides.get(pool.name)
        if sizing is None:
            result[pool.name] = SizeDecision(pool.size, CONFIG if override is None else OVERRIDE)
            continue
        state = states.get(pool.name)
        result[pool.name] = decide(_configured(pool), sizing, now, default_timezone, override,
                                   state.size if state else None, state.predicted if state else None)
    return result
