"""The local stand-in for the EventBridge tick, the reconcile queue and its consumer.

The same code as in AWS (chalicelib/manager/dispatch.py): ``Ticker.tick`` every ``interval``
seconds (``DEFAULT_INTERVAL_SECONDS``, a minute, as EventBridge's schedule) puts one message per
pool on a queue, and worker threads run ``look_at`` for each message as it falls due, which
re-queues a pool with work in flight after its check delay. The queue is in-process
(``LocalQueue``): one pending message per pool, the earliest kept.

As in AWS the tick spreads its pools over most of the interval (``tick_spread``): the first tick,
and the first after the config changed, queue every pool at once instead (``make run`` fills at
once, a pool added to the file is filled without waiting for the next tick). A pool that needs
work does not wait for a tick: checkouts' and deletes' nudges, follow-ups while clones run and
on-demand requests' nudges queue it at once. Before, every pool was queued every 10 s, all in the
same instant: an idle stack of 1,000 pools spent 13-17 s of CPU a minute passing pools with
nothing to do (docs/performance.md, "The local scheduler at 1,000 pools").

The API (in its own processes) nudges a pool through Redis after a checkout or delete (the
store pushes onto the pool's wake list); a listener thread turns each nudge into a message at
once, as the API's SQS message does in AWS. It listens to the pools the last tick drained too
(removed from the config, VMs left): a VM of such a pool returned is destroyed by its drain at
once; before, the listener heard configured pools only and the VM waited up to a minute.

A stack SIGKILLed mid-pass leaves its pools' leases in Redis (its append-only file keeps them)
for up to ``runner.LEASE_SECONDS``: the stack started next on the same state directory releases
those whose holder (named in the token, ``store.leases``) is a process of this machine that is
no longer alive, and the follow-up markers of the queue that died with it, before its first
tick. Its pools serve again within seconds, not a minute. Disk and snapshot tasks such a process
took and never noted started are judged seconds later (done if the provider did them, else
failed visibly, in ``task_errors``), and clones it reserved and never started give their place
in the pool back, not two minutes later.
"""

from __future__ import annotations

import dataclasses
import functools
import heapq
import itertools
import logging
import socket
import threading
import time
from typing import Callable, Sequence

import redis

from chalicelib.config import Config
from chalicelib.manager.dispatch import TICK_SPREAD_SECONDS, Ticker, look_at
from chalicelib.manager.migrations import abandon_unstarted as abandon_unstarted_migrations
from chalicelib.manager.pending import abandon_unstarted_clones
from chalicelib.manager.pool_queue import DRAIN, FOLLOWUP, NUDGE, TICK, Delayed, PoolMessage
from chalicelib.manager.vm_tasks import mark_unstarted
from chalicelib.observability import logger
from chalicelib.services import Services
from chalicelib.store import StoreUnavailable
from chalicelib.store.fleet import Fleet
from chalicelib.store.keys import template_lease_name
from chalicelib.store.leases import LeaseHolder, lease_holder, process_start
from local.processes import process_alive

WORKERS = 8
DEFAULT_INTERVAL_SECONDS = 60.0
"""The tick's interval when none is given (``make run``, ``python -m local.run``): EventBridge's,
once a minute. Its passes are for pools nothing else woke: a nudge, a follow-up or an on-demand
request queues a pool at once whatever the interval."""
CONFIG_LOOK_SECONDS = 1.0
"""How often the tick's thread looks whether the config changed (``run.py`` swaps in an edited
file within seconds): a change is ticked at once, every pool queued without spread."""
TICK_RETRY_SECONDS = 5.0
"""How soon a tick Redis failed is tried again (at most the interval): with a minute's interval,
a stack started while its Redis was busy loading did not fill for a minute."""
HELD_ELSEWHERE_SECONDS = 1.0
"""How soon a pool whose lease another process holds is tried again when nudged. Each try nudges
the holder through the pool's wake list, which this scheduler's own listener pops too: without a
pause the two spun (a try, a nudge, a try...) for as long as the lease was held, most of a core."""
REDIS_SKIPPED = "reconcile skipped: redis unavailable"
"""The reason of the window's line counting the runs Redis failed (``LocalScheduler.run``)."""
STOP_SECONDS = 60.0
"""How long ``LocalScheduler.stop`` waits for a pass in progress: longer than a pass takes on
a loaded machine, short enough that Ctrl-C of `make run` does not seem to hang."""


def merged(first: PoolMessage, second: PoolMessage) -> PoolMessage:
    """One message doing what both ask: a follow-up stays one (its Redis marker is cleared when
    it runs), a lease to release is kept, so is a drain (a follow-up queued before the pool left
    the config, merged with the tick's drain, drains it: ``PoolMessage.drains``), and so is a
    pass (a retry that only releases a lease, ``PoolMessage.releases_only``, merged with a tick
    takes the tick's count of retries)."""
    reason = FOLLOWUP if FOLLOWUP in (first.reason, second.reason) else second.reason
    mark = next((message.mark for message in (second, first) if message.reason == FOLLOWUP), None)
    attempt = first.attempt if second.releases_only and not first.releases_only else second.attempt
    return dataclasses.replace(second, reason=reason, lease=second.lease or first.lease,
                               draining=first.drains or second.drains, mark=mark, attempt=attempt)


def taken_by_the_run(message: PoolMessage) -> bool:
    """Whether a run already going on for the message's pool does what ``message`` asks by
    passing once more (``LocalScheduler.take_nudge``)."""
    return message.reason in (NUDGE, TICK) and not message.lease


class LocalQueue:
    """Delayed messages in memory, at most one per pool (the one due first; a lease to release
    is kept). ``take`` blocks until a message is due or ``timeout`` passes."""

    def __init__(self) -> None:
        self._due: dict[str, tuple[float, PoolMessage]] = {}
        self._heap: list[tuple[float, int, str]] = []
        self._order = itertools.count()
        self._changed = threading.Condition()

    def send(self, messages: Sequence[Delayed], budget_seconds: float | None = None) -> None:
        now = time.monotonic()
        with self._changed:
            for message, delay in messages:
                due = now + max(delay, 0.0)
                queued = self._due.get(message.pool)
                if queued is not None:
                    message = merged(queued[1], message)
                    if queued[0] <= due:
                        self._due[message.pool] = (queued[0], message)
                        continue
                self._due[message.pool] = (due, message)
                heapq.heappush(self._heap, (due, next(self._order), message.pool))
            self._changed.notify_all()

    def take(self, timeout: float) -> PoolMessage | None:
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                now = time.monotonic()
                while self._heap and self._due.get(self._heap[0][2], (None,))[0] != self._heap[0][0]:
                    heapq.heappop(self._heap)  # superseded by an earlier message for the pool
                if self._heap and self._heap[0][0] <= now:
                    _, _, pool = heapq.heappop(self._heap)
                    return self._due.pop(pool)[1]
                wait = deadline - now
                if self._heap:
                    wait = min(wait, self._heap[0][0] - now)
                if deadline <= now:
                    return None
                self._changed.wait(max(wait, 0.001))

    def take_due(self, pool: str, wanted: Callable[[PoolMessage], bool]) -> PoolMessage | None:
        """The pool's message, taken off the queue if it is due and ``wanted``; else None."""
        with self._changed:
            queued = self._due.get(pool)
            if queued is None or queued[0] > time.monotonic() or not wanted(queued[1]):
                return None
            del self._due[pool]  # its heap entry is skipped as superseded
            return queued[1]

    def __len__(self) -> int:
        with self._changed:
            return len(self._due)


def holder_gone(holder: LeaseHolder) -> bool:
    """Whether the process a lease or task names is a process of this machine that is gone: its
    pid runs nothing, or (a label naming which process it was) another process, as after a
    reboot, when the dead stack's pids are handed out again (before, such a lease counted as
    held by a live process and the restarted stack waited out its minute)."""
    if holder.host != socket.gethostname():
        return False
    if not process_alive(holder.pid):
        return True
    return holder.start is not None and process_start(holder.pid) != holder.start


NUDGE_WAIT_SECONDS = 1.0
"""The longest the nudge listener's ``BLPOP`` blocks, with no nudge, before it asks again."""


def nudge_wait(socket_timeout: float) -> float:
    """How long the nudge listener's ``BLPOP`` blocks: ``NUDGE_WAIT_SECONDS``, but half the
    client's ``redis.socket_timeout`` when that is shorter. Its answer comes only at the end of
    the block when no nudge came; blocking 1 s on a client that waits 1 s (``socket_timeout:
    1.0``, or less) timed out at every idle second: the process's breaker opened every 2 s
    (an API request of the same process, ``WORKERS=0``, answered 503 though Redis was well) and
    a nudge popped as the reply was given up was lost (its refill waited for the next tick)."""
    return min(NUDGE_WAIT_SECONDS, socket_timeout / 2)


def tick_spread(interval_seconds: float) -> int:
    """The seconds a tick every ``interval_seconds`` spreads its pools over: the share of the
    interval AWS's spreads over (``TICK_SPREAD_SECONDS`` of each minute), in whole seconds; 0
    (every pool at once) for a tick of about a second or less, as the chaos tests run."""
    return int(interval_seconds * TICK_SPREAD_SECONDS / 60)


class LocalScheduler:
    def __init__(self, services: Services, interval_seconds: float = DEFAULT_INTERVAL_SECONDS,
                 budget_seconds: float = 30.0) -> None:
        self.services = services
        self.interval_seconds = interval_seconds
        self.spread_seconds = tick_spread(interval_seconds)
        self.budget_seconds = budget_seconds
        self.queue = LocalQueue()
        self._ticker = Ticker(spread_seconds=0)
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self._running: set[str] = set()
        self._again: dict[str, PoolMessage] = {}
        self._held_elsewhere: dict[str, float] = {}
        """Pool -> until when a nudge for it waits (its lease was held by another process)."""
        self._draining: frozenset[str] = frozenset()
        """The pools the last tick drained (removed from the config, still known): the listener
        hears their nudges too, as their drains."""
        self._lock = threading.Lock()

    def start(self) -> None:
        try:
            self.release_what_the_dead_left()
        except StoreUnavailable as error:  # the leases expire on their own
            logger.warning("leases of a stopped scheduler not checked: redis unavailable", extra={"error": str(error)})
        workers = min(WORKERS, max(len(self.services.config.pool_names), 1))
        targets = [(self._tick_loop, "tick"), (self._listen_for_nudges, "nudges")]
        targets += [(self._work, f"reconcile-{n}") for n in range(workers)]
        for target, name in targets:
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    def release_what_the_dead_left(self) -> list[str]:
        """Release the pool and template leases held by a process of this machine that is no
        longer alive (``holder_gone``: this stack's predecessor on its Redis, SIGKILLed mid-pass or
        before a reboot), clear every
        pool's follow-up marker (the follow-ups were in that process's queue), mark the disk and
        snapshot tasks such a process took but never noted started (judged seconds later), give
        up the clones (for the pools or for on-demand requests) it reserved and the migrations it
        took a slot for but never started; return the leases released.
        A lease or task of a live process, or of another machine, is left to its timeout."""
        store, fleet = self.services.store, Fleet(self.services.store)
        pools = sorted({*self.services.config.pool_names, *fleet.names()})
        templates = {template_lease_name(pool.provider, pool.template)
                     for pool in self.services.pools() if pool.template}
        released = []
        for name, token in store.lease_tokens([*pools, *sorted(templates)]).items():
            holder = lease_holder(token)
            if holder is not None and holder_gone(holder):
                store.release_lease(name, token)
                released.append(name)
        fleet.followups_lost(pools)
        if released:
            logger.info("released the leases of a stopped scheduler", extra={"leases": released})
        unstarted = mark_unstarted(store, pools, holder_gone)
        if unstarted:
            logger.info("disk and snapshot tasks a stopped scheduler took but never noted started are judged soon",
                        extra={"vms": unstarted})
        abandoned = abandon_unstarted_clones(store, pools, holder_gone)
        if abandoned:
            logger.info("clones a stopped scheduler reserved but never started are given up",
                        extra={"vms": abandoned})
        moves = abandon_unstarted_migrations(store, pools, holder_gone)
        if moves:
            logger.info("migrations a stopped scheduler took a slot for but never started are given up",
                        extra={"vms": moves})
        return released

    def stop(self, timeout: float = STOP_SECONDS) -> bool:
        """Stop ticking and reconciling, and wait up to ``timeout`` seconds in all for the
        threads to end (a pass in progress is finished first, no new one starts). Returns
        whether they all did: one still running goes on using the services, and printing their
        metrics, after the caller has closed them (before, stop gave each thread 5 s and went
        on: a pass slower than that on a loaded machine ran on into the next test)."""
        self._stopping.set()
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(deadline - time.monotonic(), 0.0))
        running = [thread.name for thread in self._threads if thread.is_alive()]
        if running:
            logger.warning("scheduler threads still running after stop", extra={"threads": running})
        return not running

    def tick(self, at_once: bool) -> bool:
        """One tick: every pool queued, at once or spread over ``spread_seconds``. Whether it
        went through (Redis answered)."""
        self._ticker.spread_seconds = 0 if at_once else self.spread_seconds
        try:
            report = self._ticker.tick(self.services, self.queue)
        except StoreUnavailable as error:
            logger.warning("tick skipped: redis unavailable", extra={"error": str(error)})
            return False
        except Exception:  # noqa: BLE001 - keep the local stack alive and say what broke
            logger.exception("tick crashed")
            return False
        self._draining = frozenset(report.draining)
        return True

    def _tick_loop(self) -> None:
        """Tick every ``interval_seconds``; at once, unspread, at the start and when the config
        changes (a failed tick is tried again after ``TICK_RETRY_SECONDS``, as unspread)."""
        ticked: Config | None = None
        due = time.monotonic()
        at_once = True
        while not self._stopping.is_set():
            config = self.services.config
            if config is not ticked:
                if ticked is not None:  # an edited file: its new or changed pools looked at now
                    due, at_once = min(due, time.monotonic()), True
                ticked = config
            wait = due - time.monotonic()
            if wait > 0:
                self._stopping.wait(min(wait, CONFIG_LOOK_SECONDS))
                continue
            if self.tick(at_once):
                at_once = False
                due = time.monotonic() + self.interval_seconds
            else:
                due = time.monotonic() + min(self.interval_seconds, TICK_RETRY_SECONDS)

    def _listen_for_nudges(self) -> None:
        """A checkout or delete in an API process pushed onto the pool's wake list: run the pool
        (a draining pool's: its drain). Each wait for one is shorter than the client's socket
        timeout (``nudge_wait``)."""
        store = self.services.store
        wait = nudge_wait(self.services.config.redis.socket_timeout)
        listened: tuple[Config, frozenset[str]] | None = None
        pools: dict[str, str] = {}
        while not self._stopping.is_set():
            config, draining = self.services.config, self._draining
            if listened is None or config is not listened[0] or draining != listened[1]:
                # Built once a config and tick's drains: not 1,000 names a second.
                listened = (config, draining)
                pools = {store.keys.wake(name): name for name in [*config.pool_names, *draining]}
            try:
                popped = store.client.blpop(list(pools), timeout=wait) if pools else None
            except (redis.ConnectionError, redis.TimeoutError, StoreUnavailable) as error:
                # Redis away: the breaker and the passes report it; listen again in a second.
                logger.debug("nudge listener: redis unavailable", extra={"error": repr(error)})
                self._stopping.wait(1.0)
                continue
            except Exception as error:  # noqa: BLE001 - refused by Redis: said out loud
                # A command Redis refuses (a wrong argument, a key of another type) is a defect,
                # not an outage: every nudge is lost until it is gone (a negative BLPOP timeout
                # once lost them all at debug level, seen by nobody).
                logger.warning("nudge listener: Redis refused the wait for nudges; refills wait for the tick",
                               extra={"error": repr(error)})
                self._stopping.wait(1.0)
                continue
            if popped:
                pool = pools[str(popped[0])]
                # Its own name: this is the nudge's delay, not the BLPOP's timeout above (reusing
                # that made every later BLPOP a "timeout is negative" error: each nudge after the
                # first was lost, and checkouts' refills waited for the next tick).
                with self._lock:
                    delay = self._held_elsewhere.get(pool, 0.0) - time.monotonic()
                # A pool the config no longer has is drained: a nudge for it would be dropped.
                reason = NUDGE if self.services.config.pool(pool) is not None else DRAIN
                self.queue.send([(PoolMessage(pool, reason), max(delay, 0.0))])

    def take_nudge(self, pool: str) -> bool:
        """Whether a nudge or tick for ``pool`` came while its run went on (due in the queue, or
        taken from it by another worker): taken by the run's next pass, under the same lease,
        instead of a new run once it ends. Under checkout load every delete nudges the pool, and
        the listener pops the wake list before the run's ``take_wake`` sees it: each pass was a
        run of its own (a lease taken and released, a follow-up claimed, two thread hand-offs).
        A follow-up (its Redis marker is cleared when it runs) or a message carrying a lease to
        release waits for a run of its own."""
        with self._lock:
            held = self._again.get(pool)
            if held is not None and taken_by_the_run(held):
                del self._again[pool]
                return True
        return self.queue.take_due(pool, taken_by_the_run) is not None

    def _work(self) -> None:
        while not self._stopping.is_set():
            message = self.queue.take(timeout=0.5)
            if message is not None:
                self.run(message)

    def run(self, message: PoolMessage) -> None:
        """Run a message taken off the queue (a worker's share). A run Redis failed is queued
        again a second on, and counted in one warning a window (``services.refusals``): a line
        each, every pool said so every second for as long as Redis refused connections."""
        self.services.refusals.flush_if_due()  # a window that is over is summed now
        with self._lock:
            if message.pool in self._running:
                # This process runs the pool now: one more run when it ends, no lease traffic.
                held = self._again.get(message.pool)
                self._again[message.pool] = merged(held, message) if held else message
                return
            self._running.add(message.pool)
        try:
            report = look_at(self.services, message, self.queue, self.budget_seconds,
                             stopping=self._stopping.is_set,
                             nudged=functools.partial(self.take_nudge, message.pool))
            with self._lock:
                if report is not None and not report.leased and not report.failures:
                    self._held_elsewhere[message.pool] = time.monotonic() + HELD_ELSEWHERE_SECONDS
                else:
                    self._held_elsewhere.pop(message.pool, None)
        except StoreUnavailable as error:
            self.services.refusals.refused(REDIS_SKIPPED, [message.pool], logging.WARNING, error=str(error))
            self.queue.send([(message, 1.0)])
        except Exception:  # noqa: BLE001 - keep the local stack alive and say what broke
            logger.exception("reconcile crashed", extra={"pool": message.pool})
        finally:
            with self._lock:
                self._running.discard(message.pool)
                again = self._again.pop(message.pool, None)
            if again:
                self.queue.send([(again, 0.0)])
