"""What a scheduled (or refill-triggered) invocation does for one pool.

It holds the pool's lease in Redis, so a second invocation for the same pool exits at once (after
nudging the holder to look again), and a crashed holder's lease simply expires. While the pool has
work in flight it runs a pass every ``check_loop_delay_min`` seconds, waking early when nudged,
until its time budget is spent; an idle pool returns after one pass.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

from chalicelib import observability as metric
from chalicelib.manager.purge import purge_if_due
from chalicelib.manager.reconcile import Checkpoint, PassReport, _no_checkpoint, reconcile_pool
from chalicelib.observability import clone_failure_reason, emit, logger
from chalicelib.providers.base import ProviderError
from chalicelib.store import StoreUnavailable
from chalicelib.store.history import PoolHistory, Sample, minute_of

if TYPE_CHECKING:
    from chalicelib.services import Services

LEASE_SECONDS = 90.0
"""Longer than any single pass; renewed before every pass."""


@dataclass
class RunReport:
    pool: str
    leased: bool
    passes: list[PassReport] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)


def run_pool(
    services: "Services",
    pool_name: str,
    budget_seconds: float,
    checkpoint: Checkpoint = _no_checkpoint,
    stopping: Callable[[], bool] = lambda: False,
) -> RunReport:
    """Reconcile one pool for up to ``budget_seconds`` (wall time), if nobody else is.
    ``stopping`` lets a host process (the local stack) end the loop early on shutdown."""
    store = services.store
    try:
        token = store.acquire_lease(pool_name, LEASE_SECONDS)
        if token is None:
            store.wake(pool_name)
    except StoreUnavailable as error:
        logger.warning("reconcile skipped: redis unavailable", extra={"pool": pool_name, "error": str(error)})
        return RunReport(pool_name, leased=False, failures=[str(error)])
    if token is None:
        logger.debug("pool is reconciled elsewhere; nudged the holder", extra={"pool": pool_name})
        return RunReport(pool_name, leased=False)
    report = RunReport(pool_name, leased=True)
    sampled: int | None = None
    deadline = time.monotonic() + budget_seconds
    try:
        while True:
            pool = services.pool(pool_name)
            if pool is None:
                break
            store.clear_wakes(pool_name)
            started = time.monotonic()
            try:
                result = reconcile_pool(store, services.provider(pool.provider), pool, services.clock,
                                        services.config.service, checkpoint, dns=services.dns_plugin(pool))
            except (ProviderError, StoreUnavailable) as error:
                # The pass stopped where it was; everything it did is consistent. Try next time.
                report.failures.append(str(error))
                logger.warning("reconcile pass failed", extra={"pool": pool_name, "error": str(error)})
                emit(pool_name, {metric.RECONCILE_ERRORS: 1})
                emit(None, {metric.RECONCILE_ERRORS: 1})
                break
            report.passes.append(result)
            _publish(result, result.size)  # the effective size (docs/sizing.md)
            sampled = _sample(services, result, result.size, sampled)
            delay = float(pool.get("check_loop_delay_min", services.config.service.check_loop_delay_min))
            pass_seconds = time.monotonic() - started
            if (not result.work_in_flight or stopping()
                    or time.monotonic() + delay + pass_seconds > deadline):
                break
            if not store.renew_lease(pool_name, token, LEASE_SECONDS + delay):
                break  # our lease expired and someone else holds it now
            store.wait_for_wake(pool_name, delay)
        if pool is not None and not stopping():
            try:
                purge_if_due(services, pool.provider)
            except StoreUnavailable as error:
                report.failures.append(str(error))
    finally:
        try:
            store.release_lease(pool_name, token)
        except StoreUnavailable:
            pass  # it expires by itself
    return report


def _sample(services: "Services", result: PassReport, size: int, sampled: int | None) -> int | None:
    """Record the pool's counts for the dashboard's history, once a minute (a busy pool passes
    every few seconds); the minute recorded. A failed write loses one sample, not the pass."""
    minute = minute_of(services.clock.now())
    if minute == sampled:
        return sampled
    counts = result.counts
    try:
        PoolHistory(services.store).record(result.pool, Sample(
            minute, counts.get("ready", 0), counts.get("running", 0), counts.get("pending", 0), size))
    except StoreUnavailable as error:
        logger.warning("history sample skipped", extra={"pool": result.pool, "error": str(error)})
        return sampled
    return minute


def _publish(result: PassReport, capacity: int) -> None:
    """Log a pass that did something, and emit the pool's gauges and counters."""
    changes = {
        "clones_started": len(result.clones_started),
        "became_ready": len(result.became_ready),
        "completed": len(result.completed),
        "destroyed": len(result.destroyed),
        "dropped": len(result.dropped),
        "discovered": len(result.discovered),
        "clone_failures": len(result.clone_failures),
    }
    if any(changes.values()) or result.errors:
        logger.info(
            "reconcile pass",
            extra={"pool": result.pool, **changes, "counts": result.counts,
                   "reasons": result.completed, "errors": result.errors},
        )
    counts = result.counts
    durations: dict[str, list[float]] = {}
    for sample in result.samples:
        durations.setdefault(f"{sample.kind.capitalize()}Duration", []).append(sample.seconds)
    emit(
        result.pool,
        {
            metric.READY: counts.get("ready", 0),
            metric.PENDING: counts.get("pending", 0),
            metric.RUNNING: counts.get("running", 0),
            metric.CAPACITY: capacity,
            metric.CLONES_STARTED: len(result.clones_started),
            metric.CLONE_FAILURES: len(result.clone_failures),
            metric.VMS_DESTROYED: len(result.destroyed),
            metric.PROVIDER_CALLS: result.provider_calls,
        },
        seconds={metric.RECONCILE_DURATION: result.duration_seconds, **durations},
    )
    # Service-wide totals for the failure-rate alarm, and failures by class (bounded dimension).
    if result.clones_started or result.clone_failures:
        emit(None, {metric.CLONES_STARTED: len(result.clones_started),
                    metric.CLONE_FAILURES: len(result.clone_failures)})
    reasons: dict[str, int] = {}
    for error in result.clone_failures.values():
        reason = clone_failure_reason(error)
        reasons[reason] = reasons.get(reason, 0) + 1
    for reason, count in sorted(reasons.items()):
        emit(None, {metric.CLONE_FAILURES: count}, dimensions={"reason": reason})
