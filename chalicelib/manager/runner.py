"""What one reconcile invocation does for one pool: one pass, never a wait.

It holds the pool's lease in Redis, so a second invocation for the same pool exits at once (after
nudging the holder to look again), and a crashed holder's lease simply expires. The run does one
pass; if the pool was nudged while the pass ran (a checkout, a delete) it runs another at once,
within ``budget_seconds``. It never sleeps: when work is in flight (clones, boots, destroys) the
report says when to look again (``look_again_in``), and the caller re-queues the pool with that
delay (an SQS ``DelaySeconds`` in AWS, the local scheduler's timer in ``make run``).

Redis may stall at any moment. The lease token is chosen here, before it is sent, so a lease
whose SET or release was lost in a stall is still ours to release: the report carries it
(``unreleased_lease``) and the retry, wherever it runs, releases it first (``stale_lease``).
Without that, a 5-second stall left every pool's lease held until it expired (issue 10).

A failover can lose a release too: made while the replica lagged, it is on the old primary only,
and the promoted replica holds the lease of a run long over. So a release counts only once a
replica has it where one is asked for (``Store.writes_replicated``): else the token is carried to
the retry like a stalled one, and the retry runs no pass until its release of it is replicated
(or there is no replica to wait for). Before, every pool whose lease was held when the replica
stopped receiving got no pass for up to ``LEASE_SECONDS`` after the failover. The template leases
the run's passes take carry the run's token, and that retry releases them too
(``templates.release_stale``).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, cast

from chalicelib import observability as metric
from chalicelib.auth.secrets import SecretConfigError, SecretUnavailable
from chalicelib.config import PoolConfig
from chalicelib.manager import templates
from chalicelib.manager.context import Checkpoint, PassReport, ProviderLookup, no_checkpoint
from chalicelib.manager.purge import purge_if_due
from chalicelib.manager.reconcile import reconcile_pool
from chalicelib.observability import emit, logger
from chalicelib.providers.base import Provider, ProviderError
from chalicelib.store import StoreUnavailable
from chalicelib.store.history import PoolHistory, Sample, minute_of
from chalicelib.store.leases import lease_token

if TYPE_CHECKING:
    from chalicelib.services import Services

LEASE_SECONDS = 60.0
"""Longer than a pass normally takes; a long pass renews it at its steps (``LEASE_RENEW_SECONDS``)."""
LEASE_RENEW_SECONDS = 15.0
SLOW_CALL_SECONDS = 1.0
"""A provider call that took this long ends with the lease checked (``FencedProvider``)."""
RETRY_SECONDS = 2.0
"""How soon to look again after Redis or the provider failed a pass."""


UNACKNOWLEDGED_RELEASES_LOG_SECONDS = 60.0
"""While no replica acknowledges lease releases, how often the count of runs skipped so far is
logged again (``ReleaseWaits``)."""


class ReleaseWaits:
    """The runs this process skipped because no replica acknowledged the release of a lease, one
    episode at a time (from the first skip to the next release acknowledged). Each pool's retry
    skips every ``RETRY_SECONDS`` meanwhile: logged each time, a failover's grace
    (``REPLICA_LOSS_GRACE_SECONDS``) wrote one line per pool every 2 s (1,000 pools: 30,000
    lines in a minute). Now the first skip is logged, then a line with the count so far at most
    every ``UNACKNOWLEDGED_RELEASES_LOG_SECONDS``, and one when a release is acknowledged again.
    Shared by the process's pass threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._began: float | None = None
        self._logged_at = 0.0
        self._skipped = 0
        self._pools: set[str] = set()

    def skipped(self, pool: str, now: float) -> None:
        """A run of ``pool`` skipped at ``now`` (monotonic)."""
        with self._lock:
            first = self._began is None
            if first:
                self._began, self._logged_at, self._skipped, self._pools = now, now, 0, set()
            self._skipped += 1
            self._pools.add(pool)
            due = first or now - self._logged_at >= UNACKNOWLEDGED_RELEASES_LOG_SECONDS
            if due:
                self._logged_at = now
            skipped, pools, began = self._skipped, len(self._pools), self._began
        if first:
            logger.warning(RELEASE_NOT_ACKNOWLEDGED, extra={
                "pool": pool, "note": "the runs skipped for it are counted until a release is acknowledged"})
        elif due:
            logger.warning(RELEASE_NOT_ACKNOWLEDGED, extra={
                "pool": pool, "runs_skipped": skipped, "pools": pools, "seconds": round(now - (began or now), 1)})

    def acknowledged(self, now: float) -> None:
        """A release acknowledged at ``now``: the episode, if any, is over."""
        with self._lock:
            if self._began is None:
                return
            skipped, pools, began = self._skipped, len(self._pools), self._began
            self._began = None
        logger.warning("reconcile resumed: a replica acknowledged the release of a lease again",
                       extra={"runs_skipped": skipped, "pools": pools, "seconds": round(now - began, 1)})


RELEASE_NOT_ACKNOWLEDGED = "reconcile skipped: no replica acknowledged the release of a lease"
RELEASE_WAITS = ReleaseWaits()
"""This process's episodes of unacknowledged lease releases."""


class LeaseLost(Exception):
    """The pass's lease expired and another invocation holds it: stop where we are."""


@dataclass
class RunReport:
    pool: str
    leased: bool
    passes: list[PassReport] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    look_again_in: float | None = None
    """Seconds until the pool needs another pass (work in flight, a nudge during the last pass, a
    failure to retry); None when the schedule's next tick is soon enough."""
    unreleased_lease: str | None = None
    """A lease token this run may still hold in Redis (the stall ate the SET's reply or the
    release): pass it as ``stale_lease`` to the retry."""
    stopped_before: str | None = None
    """The step its last pass stopped before, the invocation's time nearly out (that pass is not
    in ``passes``: its counts are not the pool's); ``look_again_in`` is 0."""


def run_pool(
    services: "Services",
    pool_name: str,
    budget_seconds: float = 0.0,
    checkpoint: Checkpoint = no_checkpoint,
    stopping: Callable[[], bool] = lambda: False,
    stale_lease: str | None = None,
    pool_config: PoolConfig | None = None,
    out_of_time: Callable[[], bool] = lambda: False,
    nudged: Callable[[], bool] = lambda: False,
) -> RunReport:
    """Reconcile one pool once (more passes only while nudged and within ``budget_seconds`` on
    the services' clock), if nobody else is. ``stopping`` ends the run early (local shutdown);
    ``pool_config`` replaces the configured pool (draining a pool removed from the config);
    ``out_of_time`` (the invocation's time nearly out) stops the pass before its next step, the
    lease released and the pool to be looked at again at once (``look_again_in`` 0).
    ``nudged``: whether the pool was nudged some other way than its wake list since last asked
    (the local scheduler's listener pops the wake list itself, and keeps the nudges it took for
    a pool while its run goes on): such a nudge is taken by this run's next pass, under the same
    lease, instead of a new run's."""
    store, clock = services.store, services.clock
    token = lease_token()
    # Its time runs from before the SET is sent, not from the pass's start: a run frozen between
    # the two (a stopped process, a frozen Lambda) past the lease would otherwise run a whole
    # pass beside the run that took the lease over, each step thinking the lease just renewed.
    lease = RunLease(services, pool_name, token)
    try:
        if stale_lease:
            if not release_stale_lease(services, pool_name, stale_lease, pool_config):
                return RunReport(pool_name, leased=False, failures=["lease release not replicated"],
                                 look_again_in=RETRY_SECONDS, unreleased_lease=stale_lease)
            stale_lease = None
        held = store.acquire_lease(pool_name, LEASE_SECONDS, token=token)
        if held is None:
            store.wake(pool_name)
    except StoreUnavailable as error:
        logger.warning("reconcile skipped: redis unavailable", extra={"pool": pool_name, "error": str(error)})
        # The SET may still be applied when Redis comes back: the retry releases it.
        return RunReport(pool_name, leased=False, failures=[str(error)], look_again_in=RETRY_SECONDS,
                         unreleased_lease=stale_lease or token)
    if held is None:
        logger.debug("pool is reconciled elsewhere; nudged the holder", extra={"pool": pool_name})
        return RunReport(pool_name, leased=False)
    report = RunReport(pool_name, leased=True)
    deadline = clock.monotonic() + budget_seconds
    pool: PoolConfig | None = None
    sampled: int | None = None
    try:
        while True:
            # As configured: the pass applies the runtime overrides from its own one read of them.
            config = services.config  # one config for the pass (a refresh may swap it meanwhile)
            pool = pool_config or config.pool(pool_name)
            if pool is None:
                break
            if not report.passes:
                store.clear_wakes(pool_name)  # a later pass follows take_wake, which cleared them
            try:
                result = reconcile_pool(store, lease.fenced(services.provider(pool.provider)), pool, clock,
                                        config.service, lease.renewing(checkpoint),
                                        dns=services.dns_plugin(pool), providers=lease.fenced_lookup(),
                                        out_of_time=out_of_time, lease_token=token,
                                        override_room=services.override_room,
                                        dns_plugins=services.dns_lookup, config_generation=config.generation,
                                        fleet=lambda: services.config.pools)
            except (ProviderError, SecretUnavailable, StoreUnavailable, LeaseLost) as error:
                # The pass stopped where it was; everything it did is consistent. Try again soon.
                _pass_failed(report, error, failure_reason(error), RETRY_SECONDS)
                if isinstance(error, LeaseLost):
                    return report  # another run has the pool: nothing more of this one's
                break
            except SecretConfigError as error:
                # A secret reference its provider or DNS plugin cannot use (the message names the
                # problem, never a value): every pass fails alike until a config push, so no quick
                # retry; the next tick looks again. Before, it escaped the run uncounted, and its
                # SQS message came back after the visibility timeout until it reached the DLQ.
                _pass_failed(report, error, SECRET_REASON, None)
                break
            _publish(result, result.size)  # the effective size (docs/sizing.md)
            if result.stopped_before is not None:
                # Killed by Lambda's timeout instead, the pass would have held the pool's lease
                # (frozen with its thread) until the lease expired, and failed its whole batch.
                logger.info("reconcile pass stopped: the invocation's time is nearly out; the pool is looked at "
                            "again at once", extra={"pool": pool_name, "before": result.stopped_before})
                report.stopped_before, report.look_again_in = result.stopped_before, 0.0
                break
            report.passes.append(result)
            sampled = _sample(services, result, result.size, sampled)
            # Both asked: each takes the nudges it holds.
            nudged_again = store.take_wake(pool_name) | nudged()
            if nudged_again and not stopping() and clock.monotonic() < deadline:
                continue  # a checkout or delete came in while we looked: look again now
            if nudged_again:
                report.look_again_in = 0.0
            elif result.work_in_flight:
                report.look_again_in = check_delay(services, pool, result)
            break
        if pool is not None and not stopping() and report.stopped_before is None and not out_of_time():
            purge_if_due(services, pool.provider, out_of_time)
    except StoreUnavailable as error:
        report.failures.append(str(error))
        report.look_again_in = RETRY_SECONDS
    finally:
        try:
            store.release_lease(pool_name, token)
            released = store.writes_replicated()
        except StoreUnavailable:
            released = False
        if released:
            RELEASE_WAITS.acknowledged(clock.monotonic())
        else:
            report.unreleased_lease = token
            report.look_again_in = RETRY_SECONDS
    return report


def release_stale_lease(services: "Services", pool_name: str, token: str,
                        pool_config: PoolConfig | None = None) -> bool:
    """Release the lease ``token`` of an earlier run of ``pool_name`` (a stall or a failover ate
    its release) and the template leases its passes took with that token; whether the release
    counts: a replica has it where one is asked for (``Store.writes_replicated``), else the token
    is to be carried on. ``pool_config``: the pool as that run had it (a drained pool's), else
    the configured one. Raises StoreUnavailable."""
    store, clock = services.store, services.clock
    store.release_lease(pool_name, token)
    stale_pool = pool_config or services.config.pool(pool_name)
    if stale_pool is not None and getattr(services.config.service, "create_template_delta_disks", False):
        templates.release_stale(store, stale_pool, token)
    if not store.writes_replicated():
        RELEASE_WAITS.skipped(pool_name, clock.monotonic())
        return False
    RELEASE_WAITS.acknowledged(clock.monotonic())
    return True


def _pass_failed(report: RunReport, error: Exception, reason: str, retry_in: float | None) -> None:
    """A pass stopped by ``error``: in the report (to be looked at again ``retry_in`` seconds on,
    None: at the next tick), the log and ``ReconcileErrors`` (by pool, service-wide, by reason)."""
    report.failures.append(str(error))
    report.look_again_in = retry_in
    logger.warning("reconcile pass failed", extra={"pool": report.pool, "error": str(error), "reason": reason})
    count_failed_pass(report.pool, reason)


def count_failed_pass(pool: str, reason: str) -> None:
    """``ReconcileErrors`` for a failed pass of ``pool``: by pool, service-wide (the alarm's), by reason."""
    emit(pool, {metric.RECONCILE_ERRORS: 1})
    emit(None, {metric.RECONCILE_ERRORS: 1})
    emit(None, {metric.RECONCILE_ERRORS: 1}, dimensions={"reason": reason})


SECRET_REASON = "secret"


def failure_reason(error: ProviderError | SecretUnavailable | StoreUnavailable | LeaseLost) -> str:
    """The ``reason`` of a pass that failed (the ReconcileErrors metric's dimension): the
    provider's failure kind (a wrong password is ``permission``, vCenter down ``connection``, slow
    ``timeout``), ``secret`` (a provider's or DNS plugin's secret reference could not be fetched
    as it was built: SecretFailures says why), else ``redis`` or ``lease``."""
    if isinstance(error, ProviderError):
        return error.kind.value
    if isinstance(error, SecretUnavailable):
        return SECRET_REASON
    return "redis" if isinstance(error, StoreUnavailable) else "lease"


def check_delay(services: "Services", pool: PoolConfig, result: PassReport) -> float:
    """How long a pool with work in flight waits before its next pass: ``clone_poll_interval``
    while it waits for clones (its own running, or slots held by other pools), so a finished
    clone's slot is reused within that interval; else ``check_loop_delay_min`` (boots,
    destroys). An idle pool is not looked at again before its schedule: no cost added there."""
    delay = pool.check_loop_delay_min or services.config.service.check_loop_delay_min
    if result.waiting_for_clones:
        delay = min(delay, services.config.service.clone_poll_interval)
    if result.clones_started:
        # Clones the provider finishes sooner than the poll (the dummy's instant clones): look
        # when they are done, or a small pool under load refills a batch per poll interval.
        clone_seconds = services.provider(pool.provider).clone_seconds(pool)
        if clone_seconds is not None:
            delay = min(delay, clone_seconds)
    return delay


class RunLease:
    """A pass's hold on its pool's lease. Renewed at the pass's steps once it was last renewed
    ``LEASE_RENEW_SECONDS`` ago, and checked after every provider call that took
    ``SLOW_CALL_SECONDS`` or more (``fenced``); either raises LeaseLost when another run holds it
    or it expired, and the pass stops there.

    Why after slow calls: a call that hangs (vCenter that never answers; the Lambda frozen between
    invocations with the call in flight) may return minutes later in a thread the consumer gave up
    on, once the lease expired and another run took the pool over. Without the check, the pass
    went on to its next step with what it had read before the hang, writing its decisions (clone
    tasks on records, moves, the inventory mark) over the other run's. Time is measured by both
    the monotonic and the wall clock: whichever saw the pause says so."""

    def __init__(self, services: "Services", pool_name: str, token: str) -> None:
        self._store, self._clock = services.store, services.clock
        self._services = services
        self.pool_name, self.token = pool_name, token
        self._mark()

    def _mark(self) -> None:
        self._renewed = (self._clock.monotonic(), self._clock.now())

    def _since(self, mark: tuple[float, float]) -> float:
        return max(self._clock.monotonic() - mark[0], self._clock.now() - mark[1])

    def renew(self) -> None:
        """Renew the lease now; LeaseLost when it is no longer ours."""
        if not self._store.renew_lease(self.pool_name, self.token, LEASE_SECONDS):
            raise LeaseLost(f"lease of pool {self.pool_name} expired during the pass")
        self._mark()

    def renewing(self, checkpoint: Checkpoint) -> Checkpoint:
        """The pass's checkpoint, renewing the lease at a step when it was last renewed a while ago."""
        def step(name: str) -> None:
            checkpoint(name)
            if self._since(self._renewed) >= LEASE_RENEW_SECONDS:
                self.renew()

        return step

    def fenced(self, provider: Provider) -> Provider:
        """``provider`` with each call's end checked against the lease when the call was slow."""
        return cast(Provider, FencedProvider(provider, self))

    def fenced_lookup(self) -> ProviderLookup:
        """The configured providers (``Services.configured_provider``), each fenced."""
        def lookup(name: str) -> Provider | None:
            provider = self._services.configured_provider(name)
            return self.fenced(provider) if provider is not None else None

        return lookup

    def checked(self, call: Callable[..., Any]) -> Callable[..., Any]:
        """``call``, the lease renewed before it when last renewed ``LEASE_RENEW_SECONDS`` ago,
        and when it returns (or raises) after ``SLOW_CALL_SECONDS``.

        Before: a run frozen between two Redis round trips of a step (a stopped process) and
        woken once another run had the pool went on to the step's provider calls before its next
        checkpoint renewed: it started clones for slots the other run had since judged never
        started and reserved again (more clones at the provider than ``task_limit``), disk
        tasks, destroys. Costs a round trip at most once per ``LEASE_RENEW_SECONDS``, as the
        checkpoints' renewal."""
        def checked_call(*args: Any, **kwargs: Any) -> Any:
            if self._since(self._renewed) >= LEASE_RENEW_SECONDS:
                self.renew()
            started = (self._clock.monotonic(), self._clock.now())
            try:
                return call(*args, **kwargs)
            finally:
                if self._since(started) >= SLOW_CALL_SECONDS:
                    self.renew()

        return checked_call


class FencedProvider:
    """A provider whose slow calls end with the run's lease checked (``RunLease``): what such a
    call returns is used only while the pool is still this run's."""

    def __init__(self, provider: Provider, lease: RunLease) -> None:
        self._provider = provider
        self._lease = lease

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._provider, name)
        return self._lease.checked(attribute) if callable(attribute) else attribute


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


LOGGED_PER_PASS = 20
"""The VMs' reasons (of ``completed``) and the errors a ``reconcile pass`` line names; their
counts are in it too, and each VM taken out of service has a line of its own. All of them, a
pool of 400 reset or given a 1,000-character template (both runtime routes) made a 407 KB line
(10 MB at 10,000 VMs), past what CloudWatch Logs keeps as one event."""
LOGGED_TEXT = 1200
"""The characters of one reason or error a ``reconcile pass`` line keeps (a reason names the
pool's template, up to 1,024)."""


def _logged(text: str) -> str:
    return text if len(text) <= LOGGED_TEXT else text[:LOGGED_TEXT] + "..."


def _publish(result: PassReport, capacity: int) -> None:
    """Log a pass that did something, and emit its service-wide counters and timings (an idle
    pass publishes nothing: 1,000 idle pools add no metric data). Per pool: clone failures only."""
    changes = {
        "clones_started": len(result.clones_started),
        "became_ready": len(result.became_ready),
        "completed": len(result.completed),
        "destroyed": len(result.destroyed),
        "dropped": len(result.dropped),
        "discovered": len(result.discovered),
        "clone_failures": len(result.clone_failures),
    }
    if not (any(changes.values()) or result.errors):
        return
    logger.info(
        "reconcile pass",
        extra={"pool": result.pool, **changes, "counts": result.counts, "capacity": capacity,
               "reasons": {hostname: _logged(reason) for hostname, reason in
                           list(result.completed.items())[:LOGGED_PER_PASS]},
               "errors": [_logged(error) for error in result.errors[:LOGGED_PER_PASS]],
               "errors_count": len(result.errors)},
    )
    durations: dict[str, list[float]] = {}
    for sample in result.samples:
        durations.setdefault(f"{sample.kind.capitalize()}Duration", []).append(sample.seconds)
    emit(
        None,
        {
            metric.CLONES_STARTED: len(result.clones_started),
            metric.CLONE_FAILURES: len(result.clone_failures),
            metric.VMS_DESTROYED: len(result.destroyed),
            metric.PROVIDER_CALLS: result.provider_calls,
        },
        seconds={metric.RECONCILE_DURATION: result.duration_seconds, **durations},
    )
    if not result.clone_failures:
        return
    emit(result.pool, {metric.CLONE_FAILURES: len(result.clone_failures)})
    reasons: dict[str, int] = {}
    for failure in result.clone_failures.values():
        reasons[failure.kind.value] = reasons.get(failure.kind.value, 0) + 1
    for reason, count in sorted(reasons.items()):
        emit(None, {metric.CLONE_FAILURES: count}, dimensions={"reason": reason})
