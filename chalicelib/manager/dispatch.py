"""The reconcile queue: one function reconciles every pool, one message per look at a pool.

- The scheduler's tick (``Ticker.tick``, one EventBridge rule) puts one message per configured
  pool on the queue, spread over the minute, plus one per pool removed from the config that
  still has VMs (it drains: size 0, its VMs destroyed once free, then it is forgotten).
- The tick also rebuilds the service's running set, what the service-wide quota counts
  (``recount_running``): any drift a path moving VMs left lasts a minute at most; and drops the
  records of prepared templates no pool uses any more (``templates.forget_unused``), and fails
  the on-demand requests built in a pool no pass serves any more (``fail_unserved_requests``).
- A checkout or delete puts its pool on the same queue at once (``refill.SqsRefill``).
- The consumer (``handle_batch``) runs each message's pool once (``runner.run_pool``), every
  pool of a batch in its own thread, and reports each message's outcome on its own: a slow or
  failing pool never holds up another, and a message not finished inside the invocation's time
  is reported failed (SQS delivers it again) instead of running late.
- A pass that leaves work in flight never waits: ``look_at`` queues the pool again with
  ``DelaySeconds`` = its check delay. One follow-up per pool is queued at a time (``Fleet``).

The local stack runs the same ``Ticker`` and ``look_at`` over an in-process queue
(local/scheduler.py).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import secrets
import zlib
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping, Sequence

from chalicelib import observability as metric
from chalicelib.aws_clients import AWS_CALL_BOUND_SECONDS
from chalicelib.config import Config, PoolConfig
from chalicelib.dns.registry import manages_records
from chalicelib.manager import ondemand, providerless, templates
from chalicelib.manager.context import Checkpoint, no_checkpoint
from chalicelib.manager.pool_queue import (
    DRAIN,
    FOLLOWUP,
    MAX_DELAY_SECONDS,
    MAX_RETRIES,
    NUDGE,
    RETRY,
    TICK,
    Delayed,
    PoolMessage,
    PoolQueue,
    QueueRefused,
)
from chalicelib.manager.runner import (
    LEASE_SECONDS,
    RETRY_SECONDS,
    RunReport,
    count_failed_pass,
    release_stale_lease,
    run_pool,
)
from chalicelib.observability import emit, logger
from chalicelib.sizing.controller import current_sizes
from chalicelib.store import STATES, StoreUnavailable
from chalicelib.store.fleet import Fleet, pools_fingerprint
from chalicelib.store.ondemand import logged_request
from chalicelib.store.pool_overrides import PoolOverrides, fitting
from chalicelib.store.store import NEWEST_CONFIG_SECONDS, RunningCount

if TYPE_CHECKING:
    from chalicelib.services import Services

TICK_SPREAD_SECONDS = 50
"""The tick's messages are spread over this many seconds (a stable offset per pool), so 1,000
pools are not all reconciled in the same second."""
FOLLOWUP_SLACK_SECONDS = 30.0
"""How long after its due time a queued follow-up is given up for lost (another may be queued)."""
RELEASE_RETRIES = math.ceil(math.log2(LEASE_SECONDS / RETRY_SECONDS + 1))
"""Retries past ``MAX_RETRIES`` that only release the lease they carry (``PoolMessage.releases_only``),
each after twice the delay of the one before (2, 4, 8, 16, 32 s): the last comes
``LEASE_SECONDS`` or more after the run that last held the lease ended (renewing it at the
latest then), when Redis has expired it anyway. Before, a retry carrying a lease was queued
whatever its count, and its pass took a new lease that a flapping Redis left unreleased again:
a pool was retried every 2 s for as long as Redis flapped, and never left to the tick."""
LEASE_LEFT = "pool's lease not released: redis failed every retry; it expires on its own"
"""The reason of the window's line counting leases whose retries were spent (``_queue_retry``)."""
RUN_BUDGET_SECONDS = 5.0
"""Time a run may spend on extra passes when its pool is nudged meanwhile."""
SAFETY_SECONDS = 5.0
"""Time kept back from the invocation's remaining time: reporting and returning."""
STEP_SECONDS = 2.0
"""What a step of a pass is given to end (steps take milliseconds; one waiting on vCenter longer
is waited for only until the consumer stops waiting, as before)."""
DROPPED_IDS_LOGGED = 10
"""The message ids a consumer's warning about dropped messages names (the rest are counted)."""
PASS_STOP_SECONDS = SAFETY_SECONDS + STEP_SECONDS
"""A consumer's pass starts no step once its invocation has less than this left: time for the
step under way to end, the lease's release and the pool's follow-up to be queued, before the
consumer stops waiting (``SAFETY_SECONDS`` left)."""
PASS_START_SECONDS = PASS_STOP_SECONDS
"""A batch starts no pass with less than this left (``handle_batch``): such a pass would take its
pool's lease and read its inputs (the provider's inventory) before its first look at the time,
only to stop before its first step; with under ``SAFETY_SECONDS`` left it would do so after the
consumer answered. Its messages are reported failed instead (SQS delivers them again)."""
TICK_AFTER_SEND_SECONDS = 5.0
"""Time the tick keeps back after its send: its running count, gauges and template clean-up (a
few Redis round trips each), its log line and its answer."""
TICK_SEND_MAX_SECONDS = 40.0
"""The longest a tick's send goes on starting calls, whatever the function's timeout: a send
never runs into the next tick's minute."""


def spread_delay(pool: str, spread_seconds: int = TICK_SPREAD_SECONDS) -> int:
    """The pool's stable offset within the tick, in seconds."""
    return zlib.crc32(pool.encode()) % spread_seconds if spread_seconds > 0 else 0


# --- the tick -----------------------------------------------------------------------------------


@dataclass
class TickReport:
    configured: int
    draining: list[str]
    messages: int
    empty: list[str] = dataclasses.field(default_factory=list)
    running: RunningCount | None = None
    not_queued: list[str] = dataclasses.field(default_factory=list)
    """Pools whose message the queue did not take (``QueueRefused``): the next tick sends them."""


class Ticker:
    """The scheduler's tick: fan out one message per pool. The configured pools' settings are
    recorded in Redis once per config version, not per tick: with a fingerprint of them
    (``pools:known:config``) that each tick reads, so a record a failover lost, or a restore of
    Redis took back to an older config's, is made again by the next tick. Remembering which
    config this process had recorded (before) trusted Redis to keep what it was given: a warm
    function never recorded the settings a failover had lost, and a pool removed later drained
    with an older config's (its provider, its folder)."""

    def __init__(self, spread_seconds: int = TICK_SPREAD_SECONDS) -> None:
        self.spread_seconds = spread_seconds
        self._fingerprint: tuple[Config, str] | None = None
        self._resume_at: str | None = None
        """The first pool the last tick left off the queue (its send's time ran out): this
        tick's send starts there (``sending_order``)."""

    def _fingerprint_of(self, config: Config) -> str:
        """The config's pools' fingerprint (store/fleet.py), worked out once per config."""
        if self._fingerprint is None or self._fingerprint[0] is not config:
            self._fingerprint = (config, pools_fingerprint(config.pools))
        return self._fingerprint[1]

    def tick(self, services: "Services", queue: PoolQueue,
             remaining_seconds: Callable[[], float] | None = None) -> TickReport:
        """Queue every pool's message, then recount, publish the gauges and clean up.
        ``remaining_seconds``: the invocation's time left; the send then stops starting calls in
        time for the rest (``tick_send_budget``). None (the local scheduler): the queue's own."""
        config = services.config
        services.store.mark_service_started(services.clock.now())  # /status's uptime, once
        fleet = Fleet(services.store)
        known = fleet.names()
        newest = newest_config(services)
        if not newest:
            # A push behind: its pools' settings must not overwrite the newer config's.
            logger.info("tick's config older than another function's: pools not recorded",
                        extra={"generation": config.generation})
        elif fleet.remembered() != self._fingerprint_of(config):
            fleet.remember(config.pools, self._fingerprint_of(config))
        else:  # a configured pool something forgot (a consumer a push behind): recorded again
            fleet.remember([pool for pool in config.pools if pool.name not in known])
        configured = set(config.pool_names)
        draining = sorted(known - configured)
        messages: list[Delayed] = [(PoolMessage(name, TICK), spread_delay(name, self.spread_seconds))
                                   for name in config.pool_names]
        messages += [(PoolMessage(name, DRAIN), 0) for name in draining]
        messages = self.sending_order(messages, services.clock.now())
        budget = tick_send_budget(remaining_seconds()) if remaining_seconds is not None else None
        not_queued = send_all(queue, messages, budget)
        left_out = set(not_queued)
        self._resume_at = next((message.pool for message, _ in messages if message.pool in left_out), None)
        running = recount_running(services, [*config.pool_names, *draining])
        empty = publish_totals(services)
        report_ignored_overrides(services)
        sweep_holders(services)
        if newest:  # a push behind would drop what the newer config's pools use
            fail_unserved_requests(services, configured | known)
            templates.forget_unused(services.store, services.pools())
            drop_unmanaged_dns_flags(services)
            services.tokens.align_expiries()  # token_ttl changed: every token's expiry follows it
        return TickReport(configured=len(configured), draining=draining, messages=len(messages) - len(not_queued),
                          empty=empty, running=running, not_queued=not_queued)


    def sending_order(self, messages: list[Delayed], now: float) -> list[Delayed]:
        """The tick's messages in the order its send tries them: from the first pool the last
        tick left off the queue, round the list (from a place the minute picks, after a cold
        start). A send whose time runs out (SQS slow, throttling, timing out) leaves off the end
        of its list: in config order, with the draining pools last, every tick of a degraded SQS
        left off the same pools, which were never looked at by a tick while it lasted (the
        draining ones first), where the error line said the next tick would send them. Each
        message carries its own delay, so the order changes nothing else."""
        if not messages:
            return messages
        names = [message.pool for message, _ in messages]
        if self._resume_at in names:
            start = names.index(self._resume_at)
        else:
            start = zlib.crc32(str(int(now // 60)).encode()) % len(messages)
        return [*messages[start:], *messages[:start]]


def tick_send_budget(remaining: float) -> float:
    """How long the tick's send may go on starting calls when the invocation has ``remaining``
    seconds left: what is left once a call started last has ended
    (``aws_clients.AWS_CALL_BOUND_SECONDS``) and the tick's work after the send is done
    (``TICK_AFTER_SEND_SECONDS``); at most ``TICK_SEND_MAX_SECONDS``, never below 0. A fixed
    10 s let a tick with a short timeout be killed in the middle of its send (no running count,
    no gauges, and EventBridge's retry of the failed tick sent every pool again), and gave up on
    the last of many pools while a 30 s tick had time to send them."""
    return max(0.0, min(TICK_SEND_MAX_SECONDS, remaining - AWS_CALL_BOUND_SECONDS - TICK_AFTER_SEND_SECONDS))


def send_all(queue: PoolQueue, messages: Sequence[Delayed], budget_seconds: float | None = None) -> list[str]:
    """Queue the tick's messages (trying for ``budget_seconds``, None: the queue's own); the pools
    the queue did not take, named in an error log line and counted (``PoolsNotQueued``). The tick
    goes on: before, the first refusal raised out of it, so it skipped its running count, its
    gauges and its template clean-up, and EventBridge's retry sent every pool again. The pools
    left out are sent by the next tick, a minute later."""
    try:
        if budget_seconds is None:
            queue.send(messages)
        else:
            queue.send(messages, budget_seconds=budget_seconds)
    except QueueRefused as error:
        pools = sorted({pool for pool, _ in error.refused})
        codes = sorted({code for _, code in error.refused})
        logger.error("pools not queued by this tick: SQS did not take their messages; the next tick sends them",
                     extra={"not_queued": pools[:100], "not_queued_count": len(pools), "codes": codes[:10]})
        emit(None, {metric.POOLS_NOT_QUEUED: len(pools)})
        return pools
    return []


def fail_unserved_requests(services: "Services", served: set[str]) -> dict[str, list[str]]:
    """Fail the on-demand requests built in a pool no pass serves any more (``served``: the pools
    this tick queues, configured or draining), older than ``ondemand.UNSERVED_GRACE_SECONDS``:
    an API function a config behind opened them after the drain forgot the pool and their nudge
    was lost or late (``ondemand.fail_unserved``). Level-triggered: whatever became of the nudge,
    the next tick past the grace ends them. Logged; returns their ids by pool."""
    failed = ondemand.fail_unserved(services.store, served, services.clock.now())
    if failed:
        logger.warning("on-demand requests for pools no longer configured failed: no pass serves them",
                       extra={"pools": sorted(failed)[:100],
                              "requests": [logged_request(request) for ids in failed.values() for request in ids][:10],
                              "count": sum(len(ids) for ids in failed.values())})
    return failed


def recount_running(services: "Services", pools: Iterable[str]) -> RunningCount:
    """Rebuild the service's running set from the running sets of ``pools`` (every pool the tick
    knows: configured, or draining) and mark it whole (``Store.recount_running``). The scripts
    that move VMs keep it exact, so a rebuild that changes it found a path that did not: logged
    as a warning and counted (``RunningCountDrift``), to be fixed; its effect on the quota lasted
    until this tick."""
    count = services.store.recount_running(pools, services.clock.now())
    if count.drifted:
        logger.warning("the service's running count had drifted; rebuilt",
                       extra={"running": count.running, "added": count.added, "removed": count.removed})
        emit(None, {metric.RUNNING_COUNT_DRIFT: count.added + count.removed})
    elif not count.was_whole:
        logger.info("the service's running count built", extra={"running": count.running})
    return count


def publish_totals(services: "Services") -> list[str]:
    """The service's gauges, once a minute: VMs per state over every pool, and the pools with a
    size but no ready VM (named in the tick's log line; counted in ``EmptyPools``, the alarm's
    metric). Sizes are the effective ones (a schedule window or demand may size a pool 0 at
    night: it is not empty then). Three round trips whatever the pool count."""
    pools = services.pools()
    counts = services.store.counts([pool.name for pool in pools])
    sizes = current_sizes(services.store, pools, services.clock.now(), services.config.service.sizing_timezone)
    empty = [pool.name for pool in pools if sizes[pool.name].size > 0 and counts[pool.name]["ready"] == 0]
    totals = {state: sum(c[state] for c in counts.values()) for state in ("ready", "pending", "running")}
    emit(None, {metric.READY: totals["ready"], metric.PENDING: totals["pending"], metric.RUNNING: totals["running"],
                metric.CAPACITY: sum(size.size for size in sizes.values()), metric.EMPTY_POOLS: len(empty)})
    return empty


def sweep_holders(services: "Services") -> int:
    """Drop the holdings sets of owners holding nothing any more, past ``store.HOLDERS_KEPT``
    owners (``Store.sweep_holders``): the takes only list their owner, so what a checkout costs
    does not grow with other owners'. Owners still listed past the bound after the tick's share
    are logged (a caller adding owners faster than a tick sweeps). Returns the sets dropped."""
    dropped, left = services.store.sweep_holders(services.clock.now())
    if left:
        logger.warning("owners with a holdings set past the bound after this tick's sweep",
                       extra={"dropped": dropped, "over_bound": left})
    return dropped


def drop_unmanaged_dns_flags(services: "Services") -> list[str]:
    """Drop the DNS waiting flags (GET /status ``pools.<p>.dns_waiting``, noted by each pass of a
    pool whose records it publishes: reconcile.end_pass) of the pools no pass will note again:
    removed from the config, or whose ``dns_plugin`` no longer names an entry that publishes
    records (an entry made unmanaged, another entry). Their flag stayed for good, and /status
    showed it while the pool named any plugin. One read a tick (the flags are few); returns them."""
    config = services.config
    stale = sorted(pool for pool in services.store.dns_waiting(raw=True) if not _publishes_records(config, pool))
    if stale:
        services.store.forget_dns_waiting(stale)
    return stale


def _publishes_records(config: Config, name: str) -> bool:
    """Whether the passes of the configured pool ``name`` publish its DNS records."""
    pool = config.pool(name)
    entry = config.dns_configs.get(pool.dns_plugin) if pool is not None and pool.dns_plugin else None
    return entry is not None and manages_records(entry.settings)


def report_ignored_overrides(services: "Services") -> list[str]:
    """The runtime templates and clone targets the config in effect has no room for in /config
    (``pool_overrides.fitting``: set under a config with more room, fewer pools or shorter names):
    the API and the passes leave them out, each pool keeping its configured value. Named once a
    tick in a warning (the first 100, ``<pool> template`` or ``<pool> clone_target``) and counted
    (``OverridesIgnored``), so the operator learns why a pool no longer clones the template an
    administrator set. Returns them."""
    stored = PoolOverrides(services.store).all(services.config.pool_names)
    ignored: list[str] = []
    for pool in services.config.pools:
        override = stored[pool.name]
        if override.template is None and override.clone_target is None:
            continue
        kept = fitting(pool, override, services.override_room())
        ignored += [f"{pool.name} {name}" for name in ("template", "clone_target")
                    if getattr(override, name) is not None and getattr(kept, name) is None]
    if ignored:
        logger.warning("runtime templates or clone targets ignored: longer than /config has room for with this "
                       "config; the pools keep their configured ones (DELETE /config/pooltemplate/<pool> or "
                       "/config/clonetarget/<pool> drops them)",
                       extra={"ignored": ignored[:100], "ignored_count": len(ignored),
                              "room_bytes": services.override_room()})
        emit(None, {metric.OVERRIDES_IGNORED: len(ignored)})
    return ignored


# --- one message ---------------------------------------------------------------------------------


def look_at(services: "Services", message: PoolMessage, queue: PoolQueue,
            budget_seconds: float = RUN_BUDGET_SECONDS, checkpoint: Checkpoint = no_checkpoint,
            stopping: Callable[[], bool] = lambda: False,
            out_of_time: Callable[[], bool] = lambda: False,
            nudged: Callable[[], bool] = lambda: False) -> RunReport | None:
    """Run the message's pool once and queue what comes next (a follow-up while work is in
    flight or after a pass ``out_of_time`` stopped, a retry after a failure). None when the pool
    is neither configured nor draining. Raises StoreUnavailable when Redis fails outside the run
    (the message is delivered again). ``nudged``: see ``run_pool``."""
    fleet = Fleet(services.store)
    if message.releases_only:
        _release_only(services, fleet, message, queue)
        return None
    if not newest_config(services):
        # A push this function has not read yet (each reads the bucket at most every 30 s): its
        # passes would undo the newer config's (a template drained back and forth, clones of an
        # old size destroyed by the new one). The pool is left to a function that has read it.
        logger.info("config older than another function's: pool left to it", extra={
            "pool": message.pool, "generation": services.config.generation})
        _queue_retry(services, fleet, queue, message, message.lease, message.drains)
        return None
    drain: PoolConfig | None = None
    if services.config.pool(message.pool) is None:
        settings = fleet.settings(message.pool)
        if settings is None and fleet.forgotten(message.pool, services.clock.now()):
            # Drained and forgotten: a nudge from an API function a config behind, which opened an
            # on-demand request for the pool since. No pass would ever serve it or fail it. Or from
            # one a push ahead, which put the pool back: its request is younger than the grace a
            # config's overlap takes, and is looked at again once past it (this function has read
            # the push by then, or the pool is removed for good). Before, it was failed at once.
            failed, wait = ondemand.fail_removed(services.store, message.pool, services.clock.now(),
                                                 ondemand.UNSERVED_GRACE_SECONDS)
            if failed:
                logger.warning("on-demand requests for a pool removed from the config failed",
                               extra={"pool": message.pool, "count": len(failed),
                                      "requests": [logged_request(request) for request in failed[:10]]})
            if wait is not None and message.attempt < MAX_RETRIES:
                queue_next(fleet, queue, PoolMessage(message.pool, RETRY, attempt=message.attempt + 1), wait)
            return None
        if not message.drains:
            # Sent for a pool the sender has configured (a tick, a nudge, a retry or follow-up of a
            # pass that ran it as configured): this config is older than the sender's (a push not
            # yet read here; a config without generation, newest_config, cannot tell). Draining
            # would empty a pool just added, or just added back: before, a retry or follow-up was
            # taken for a drain, and the pool's ready VMs were destroyed and cloned again.
            logger.info("message for a pool not configured here yet", extra={
                "pool": message.pool, "reason": message.reason})
            if message.reason in (RETRY, FOLLOWUP):
                _leave_to_configured(services, fleet, message, queue)
            return None
        if settings is None:
            logger.info("message for an unknown pool dropped", extra={"pool": message.pool})
            return None
        if settings.provider not in services.config.providers:
            # Nothing can destroy its VMs: said once, given up after a grace (manager/providerless.py).
            # Before, an error every tick, and the pool and its VMs' records were kept for good.
            providerless.give_up(services, settings, fleet)
            return None
        fleet.provider_back(message.pool)  # a later loss of it gets its grace again
        drain = draining(settings)
    if message.reason == FOLLOWUP:
        fleet.followup_arrived(message.pool, message.mark)
    report = run_pool(services, message.pool, budget_seconds, checkpoint, stopping,
                      stale_lease=message.lease, pool_config=drain, out_of_time=out_of_time, nudged=nudged)
    if drain is not None and report.passes and not report.failures and report.stopped_before is None \
            and _empty(report) and not _dns_records_left(services, drain):
        if fleet.forget(message.pool, services.clock.now()):
            logger.info("removed pool drained and forgotten", extra={"pool": message.pool})
            return report
        # An on-demand request opened since the pass (an API function a config behind): kept
        # known, the pool's next drain pass (the tick's) fails the request, then forgets it.
        logger.info("removed pool drained but not forgotten: an on-demand request for it is open",
                    extra={"pool": message.pool})
    if stopping():
        return report
    if report.unreleased_lease or (report.failures and report.look_again_in is not None):
        # (a failure without a time to look again, a malformed secret reference, waits for the tick)
        _queue_retry(services, fleet, queue, message, report.unreleased_lease, drain is not None)
    elif report.look_again_in is not None:
        delay = min(report.look_again_in, MAX_DELAY_SECONDS)
        mark = secrets.token_hex(8)
        if fleet.claim_followup(message.pool, delay + FOLLOWUP_SLACK_SECONDS, mark):
            queue_next(fleet, queue, PoolMessage(message.pool, FOLLOWUP, draining=drain is not None, mark=mark),
                       delay)
    return report


def retry_of(message: PoolMessage, lease: str | None, draining: bool) -> Delayed | None:
    """The retry after ``message``'s run failed, and its delay: ``lease``, the token that run may
    still hold, is carried to it. A retry runs a pass while ``MAX_RETRIES`` allow; past them
    only a lease is retried, released without a pass (``RELEASE_RETRIES``, delays doubling);
    None once spent: the next tick looks at the pool, and a lease left expires on its own."""
    attempt = message.attempt + 1
    if attempt <= MAX_RETRIES:
        return PoolMessage(message.pool, RETRY, lease, attempt, draining=draining), RETRY_SECONDS
    if lease and attempt <= MAX_RETRIES + RELEASE_RETRIES:
        delay = RETRY_SECONDS * 2 ** (attempt - MAX_RETRIES - 1)
        return PoolMessage(message.pool, RETRY, lease, attempt, draining=draining), delay
    return None


def _queue_retry(services: "Services", fleet: Fleet, queue: PoolQueue, message: PoolMessage,
                 lease: str | None, draining: bool) -> None:
    """Queue ``message``'s retry (``retry_of``); a lease whose retries are spent is counted in
    one warning a window (``services.refusals``), not a line a pool."""
    retry = retry_of(message, lease, draining)
    if retry is not None:
        queue_next(fleet, queue, *retry)
    elif lease:
        services.refusals.refused(LEASE_LEFT, [message.pool], logging.WARNING)


def _release_only(services: "Services", fleet: Fleet, message: PoolMessage, queue: PoolQueue) -> None:
    """A retry past ``MAX_RETRIES`` (``PoolMessage.releases_only``): the lease it carries is
    released, with the template leases taken with it, and no pass runs (the tick's looks at the
    pool): a pass would take a lease of its own for Redis to leave unreleased again. Not released
    (Redis failed, or no replica has the release): retried while ``RELEASE_RETRIES`` allow."""
    if message.lease is None:
        return
    try:
        settings = None if services.config.pool(message.pool) else fleet.settings(message.pool)
        released = release_stale_lease(services, message.pool, message.lease, settings)
    except StoreUnavailable:
        released = False
    if not released:
        _queue_retry(services, fleet, queue, message, message.lease, message.drains)


def queue_next(fleet: Fleet, queue: PoolQueue, message: PoolMessage, delay: float) -> None:
    """Queue the pool's next look (a retry, a follow-up) after ``delay`` seconds. SQS not taking
    it (throttled, timing out: ``QueueRefused``) is no failure of the pass, which ran: said as
    SQS's (a warning, ``AwsCallFailures``), and a follow-up's mark is freed so the next pass
    queues one; the tick looks at the pool within a minute meanwhile. Before, the refusal left
    the run as a bug would (an error line with a traceback, ``ReconcileErrors`` reason
    ``unexpected``), the message went back to the queue (delivered again 6 minutes on, to the
    DLQ after 5 deliveries), and the mark of the follow-up never queued kept every pass from
    queuing one until it expired (the check delay and 30 s)."""
    try:
        queue.send([(message, delay)])
    except QueueRefused as error:
        if message.reason == FOLLOWUP:
            fleet.followup_arrived(message.pool, message.mark)
        logger.warning("pool's next look not queued: SQS did not take it; the next tick looks at the pool",
                       extra={"pool": message.pool, "reason": message.reason,
                              "codes": sorted({code for _, code in error.refused})[:10]})
        emit(None, {metric.AWS_CALL_FAILURES: 1})


def _leave_to_configured(services: "Services", fleet: Fleet, message: PoolMessage, queue: PoolQueue) -> None:
    """A retry or follow-up of a pass that ran the pool as configured, received by a function
    whose config does not have the pool: queued again (as a retry, while ``MAX_RETRIES`` allow)
    for a function that has it. Its lease, a run's that ended, is released now and its follow-up
    marker cleared (its own mark only), so the function that has the pool is not held up by
    them. A pool truly removed meanwhile is drained by the tick's ``DRAIN``. ``fleet``: the
    caller's (``look_at``)."""
    if message.lease:
        services.store.release_lease(message.pool, message.lease)
    if message.reason == FOLLOWUP:
        fleet.followup_arrived(message.pool, message.mark)
    if message.attempt < MAX_RETRIES:
        queue_next(fleet, queue, PoolMessage(message.pool, RETRY, attempt=message.attempt + 1), RETRY_SECONDS)


def newest_config(services: "Services") -> bool:
    """Whether this function's config is the newest any function runs passes with (noted in
    Redis: config.Config.generation). A config read from a file (generation 0: the local stack,
    a stage without a pushed config) is, unless a function ran with a pushed config within
    ``NEWEST_CONFIG_SECONDS``: then it is the packaged config of a function whose first S3 read
    failed (it keeps the config it has), perhaps many pushes behind. Before, it counted as the
    newest: its passes undid the pushed config's (another template's VMs drained, pools added
    since drained) and its tick recorded its pools' settings over the pushed ones."""
    generation, now = services.config.generation, services.clock.now()
    if not generation:
        return not services.store.pushed_config_in_use(now, NEWEST_CONFIG_SECONDS)
    return services.store.config_is_newest(generation, now, NEWEST_CONFIG_SECONDS)


def draining(pool: PoolConfig) -> PoolConfig:
    """A pool removed from the config, as its drain passes reconcile it: size 0 whatever sized it
    (its ``sizing`` block, recorded as text, is dropped; its runtime overrides are not applied,
    ``PoolConfig.draining``). They are not deleted: a Lambda whose config is a few seconds older
    than a push that added the pool may take it for removed."""
    settings = MappingProxyType({key: value for key, value in pool.settings.items() if key != "sizing"})
    return dataclasses.replace(pool, size=0, settings=settings, draining=True)


def _dns_records_left(services: "Services", pool: PoolConfig) -> bool:
    """Whether the pool's DNS plugin still has records of destroyed VMs to delete (the DNS
    service failed as they left): its drain passes delete them once it answers; forgotten, the
    pool would leave them in the zone for good."""
    if not services.config.dns_configs:
        return False  # no entry could have published them
    return bool(services.store.dns_left(pool.name, 1))


def _empty(report: RunReport) -> bool:
    counts = report.passes[-1].counts
    return not any(counts.get(state) for state in STATES)


# --- a batch (the SQS consumer) ------------------------------------------------------------------

POOL_THREADS = 10
"""Passes of one batch run at once (SQS hands the consumer at most 10 messages)."""

MAX_PASSES_GIVEN_UP = 2 * POOL_THREADS
"""Passes earlier invocations gave up on that may still run in the process: past it, a batch
starts none (its messages go back to the queue) until some end. A thread cannot be stopped: each
batch that met one still running got ten new threads, and those whose passes never end (a
backend call without a timeout) piled up, each holding Redis connections, until the pool's
``MAX_CONNECTIONS`` refused every pass of the process. The process then holds at most
``POOL_THREADS + MAX_PASSES_GIVEN_UP`` pass threads."""

_executor: ThreadPoolExecutor | None = None
_given_up: set[Future[Any]] = set()
"""Passes earlier invocations stopped waiting for that were already running (each holds a thread
until it ends), kept until they end: not only the last invocation's."""


def _pool_threads() -> ThreadPoolExecutor:
    """Kept for the life of the process (a warm Lambda reuses its threads), unless a pass an
    earlier invocation gave up on still holds one: then the batch gets new threads, and the old
    ones end with their passes. Ten passes that never end (a backend call without a timeout)
    would otherwise hold every thread for good, and each later batch would wait, and fail, whole."""
    global _executor
    still_running = {future for future in _given_up if not future.done()}
    _given_up.intersection_update(still_running)  # before, forgotten after one batch: untracked threads
    if _executor is not None and still_running:
        logger.warning("passes of an earlier batch still running: this batch gets new threads",
                       extra={"running": len(still_running)})
        _executor.shutdown(wait=False, cancel_futures=True)
        _executor = None
    if _executor is None:
        _executor = ThreadPoolExecutor(max_workers=POOL_THREADS, thread_name_prefix="reconcile")
    return _executor


def environment_spent() -> bool:
    """Whether passes earlier invocations gave up on, still running, number MAX_PASSES_GIVEN_UP
    or more: a batch starts none then (``handle_batch``), and threads cannot be stopped, so a
    process whose passes never end would turn every batch away for good. The Lambda handler
    ends such a process (app.py, ``reconcile``): Lambda starts a fresh environment."""
    return sum(not future.done() for future in _given_up) >= MAX_PASSES_GIVEN_UP


def handle_batch(services: "Services", records: Iterable[tuple[str, str]], queue: PoolQueue,
                 remaining_seconds: Callable[[], float],
                 receive_counts: Mapping[str, int | None] | None = None) -> list[str]:
    """Run the pools of a batch of (message id, body) at once; return the ids that failed or did
    not finish in time (to be delivered again). Returns before ``remaining_seconds`` runs out.
    ``receive_counts``: how many times SQS has handed out each message (by id; unknown when
    absent), which decides whether one failed for want of Redis is kept (``_redis_failure``)."""
    by_pool: dict[str, list[tuple[str, PoolMessage]]] = {}
    dropped: list[str] = []
    for message_id, body in records:
        message = PoolMessage.parse(body)
        if message is not None:
            by_pool.setdefault(message.pool, []).append((message_id, message))
        else:
            dropped.append(message_id)
    if dropped:
        # Deleted, never retried (they would only fill the DLQ); said, so a message sent by hand
        # with a typo does not vanish without a trace. Ids only: a body may be 256 KB of anything.
        logger.warning("messages that are no pool's dropped: a body must be JSON naming a pool, "
                       '{"pool": "<name>"}', extra={"dropped": len(dropped), "ids": dropped[:DROPPED_IDS_LOGGED]})
    stuck = sum(not future.done() for future in _given_up)
    if stuck >= MAX_PASSES_GIVEN_UP:
        logger.error("passes of earlier batches still running: this batch starts none; its messages return "
                     "to the queue", extra={"running": stuck, "ids": [i for m in by_pool.values() for i, _ in m]})
        return [message_id for messages in by_pool.values() for message_id, _ in messages]
    remaining = remaining_seconds()
    if by_pool and remaining < PASS_START_SECONDS:
        # Before, the passes started anyway: each took its pool's lease and read its inventory,
        # and ran on after the answer (the consumer waits only up to SAFETY_SECONDS before the
        # end), in Lambda frozen with the environment, the lease held, up to LEASE_SECONDS.
        ids = [message_id for messages in by_pool.values() for message_id, _ in messages]
        logger.warning("batch received with too little time left to start a pass: none started; its messages "
                       "return to the queue", extra={"remaining_seconds": round(remaining, 1),
                                                     "messages": len(ids), "ids": ids[:DROPPED_IDS_LOGGED]})
        return ids
    budget = max(min(RUN_BUDGET_SECONDS, remaining - 2 * SAFETY_SECONDS), 0.0)

    def out_of_time() -> bool:
        return remaining_seconds() < PASS_STOP_SECONDS

    futures: dict[Future[Any], list[str]] = {}
    pools: dict[Future[Any], str] = {}
    messages_of: dict[Future[Any], list[tuple[str, PoolMessage]]] = {}
    for pool, messages in by_pool.items():
        ids = [message_id for message_id, _ in messages]
        future = _pool_threads().submit(_look_at_all, services, [m for _, m in messages], queue, budget, out_of_time)
        futures[future], pools[future], messages_of[future] = ids, pool, messages
    done, _ = wait(futures, timeout=max(remaining_seconds() - SAFETY_SECONDS, 0.0))
    failed: list[str] = []
    for future, ids in futures.items():
        if future not in done:
            # Not started: it never will (its message comes back from SQS), or it would run in a
            # later invocation's time. Started: the next batch will not wait for its thread.
            if not future.cancel():
                _given_up.add(future)
            logger.warning("pool not reconciled in time; its messages return to the queue", extra={"ids": ids})
            failed += ids
        elif isinstance(error := future.exception(), StoreUnavailable):
            failed += _redis_failure(services, pools[future], messages_of[future], error, receive_counts or {})
        elif error is not None:
            _unexpected_failure(pools[future], ids, error)
            failed += ids
    return failed


REDIS_DROPPED = "reconcile messages dropped: redis unavailable; the next tick queues every pool again"
"""The reason of the window's line counting messages dropped for want of Redis (``_redis_failure``)."""
REDIS_KEPT = "reconcile messages carrying a lease returned to the queue: redis unavailable"
"""The reason of the window's line counting pools whose messages carrying a lease went back to
the queue for want of Redis (``_redis_failure``)."""


def _redis_failure(services: "Services", pool: str, messages: list[tuple[str, PoolMessage]],
                   error: StoreUnavailable, receive_counts: Mapping[str, int | None]) -> list[str]:
    """A pool's run that Redis failed outside its pass (``look_at``'s first reads): the ids to
    deliver again. Only a message carrying a lease to release, on its first delivery (or one
    SQS does not count): delivered again after the visibility timeout, it releases it if Redis is
    back. Every other message is done: a tick's, a nudge's, a follow-up's, a retry's or a drain's
    look at the pool is the next tick's (it queues every pool each minute; passes are
    level-triggered), and a lease outlives neither its ``LEASE_SECONDS`` nor, so, a visibility
    timeout. Before, all of them went back to the queue: an outage of over half an hour moved
    every pool's messages to the dead-letter queue (5 deliveries) and fired its alarm with
    messages nothing needed. Dropped ones, and the pools whose kept ones go back, are counted in
    one warning a window each (``services.refusals``: the first said at once, the rest summed when
    the window is over, by the consumer's next invocation, app.py), not a line each: the kept
    ones were a line per pool, every pool whose pass an outage caught (1,000 lines at once)."""
    kept = [message_id for message_id, message in messages
            if message.lease and (receive_counts.get(message_id) or 1) <= 1]
    for _ in range(len(messages) - len(kept)):
        services.refusals.refused(REDIS_DROPPED, [pool], logging.WARNING, error=str(error))
    if kept:
        services.refusals.refused(REDIS_KEPT, [pool], logging.WARNING, ids=kept[:DROPPED_IDS_LOGGED],
                                  error=str(error))
    return kept


UNEXPECTED_REASON = "unexpected"
"""``ReconcileErrors``' reason for a pool's run that raised what no step expects (a bug)."""


def _unexpected_failure(pool: str, ids: list[str], error: BaseException) -> None:
    """A pool's run raised what is not Redis's (``_redis_failure``): its messages return to the
    queue (SQS delivers them again after the visibility timeout, then moves them to the DLQ).
    It is a bug: said with the pool and the traceback, and
    counted in ``ReconcileErrors`` as a failed pass is (by pool, reason ``unexpected``). Before,
    the log line gave the message ids only and no metric moved until the DLQ alarm, half an hour
    later."""
    logger.error("pool not reconciled; its messages return to the queue", exc_info=error,
                 extra={"pool": pool, "ids": ids, "error": repr(error), "reason": UNEXPECTED_REASON})
    count_failed_pass(pool, UNEXPECTED_REASON)


def _look_at_all(services: "Services", messages: list[PoolMessage], queue: PoolQueue, budget: float,
                 out_of_time: Callable[[], bool]) -> None:
    """Several messages for one pool: one run (releasing every stale lease they carry). The run
    is the message's that asks the most of it: one that runs a pass (not ``releases_only``),
    then a follow-up (its arrival is noted), then one that drains a pool no longer configured
    (a tick or nudge for it is dropped: ``look_at``; a tick queued just before the pool left the
    config may share a batch with the next tick's drain), then one carrying a lease. It drains
    when any of them does (``PoolMessage.drains``). Another message's lease goes to the run when
    its own message carries none (released as a retry's is: its template leases too, carried on
    while no replica has the release); any more are released here with their template leases.
    Before, they were released with a plain release of the pool's lease: the template leases
    taken with them held the pools on the template until they expired."""
    chosen = max(messages, key=lambda m: (not m.releases_only, m.reason == FOLLOWUP,
                                          m.reason not in (TICK, NUDGE), m.lease is not None))
    others = [other for other in messages if other is not chosen]
    leases = list(dict.fromkeys(other.lease for other in others if other.lease and other.lease != chosen.lease))
    first = dataclasses.replace(chosen, lease=leases.pop(0)) if chosen.lease is None and leases else chosen
    for lease in leases:
        release_stale_lease(services, first.pool, lease)
    for other in others:
        if other.reason == FOLLOWUP:
            # The queued follow-up and another delivery of an earlier one in one batch: the
            # run's next follow-up is queued only once the queued one's mark is freed.
            Fleet(services.store).followup_arrived(other.pool, other.mark)
    if not first.drains and any(message.drains for message in messages):
        first = dataclasses.replace(first, draining=True)  # a stale follow-up does not skip the drain
    look_at(services, first, queue, budget, out_of_time=out_of_time)
