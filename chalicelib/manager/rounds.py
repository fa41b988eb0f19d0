"""The reconcile pass's rounds step: clones the provider finishes at once free their slots in the
pass that started them (issue 14 item 3).

Clones the provider says take no time (``Provider.clone_seconds`` 0: the dummy's instant clones)
are done as soon as started. Before, a pass refilled at most ``task_limit`` VMs, ready only at the
next pass: a 20-VM pool under checkout load held ``task_limit`` x the pass rate. Now the pass looks
at the clones its refill started, as the pending step would (their slots of ``task_limit`` are
free once they are noted finished), and reserves and starts more while they finish and the pool
is short: ``task_limit`` bounds the clones in flight, not the clones a pass starts. Each round is
a few round trips for all its VMs (their tasks, their VMs, the moves to ready that note the
clones done, the reservation, the clones and the notes of their tasks; their records are the
ones the pass wrote, not read back); the reservation script counts the pool's deficit and its
fair share of ``task_limit`` itself, so a checkout made since the pass's counts is refilled too,
and a pool that claimed slots meanwhile gets its share. Providers whose clones take time
(vSphere: it does not say) are followed by the next passes, as before.
"""

from __future__ import annotations

from chalicelib.manager import clones, pending
from chalicelib.manager.context import PassContext
from chalicelib.store import VMRecord

ROUNDS_SECONDS = 0.25
"""How long a pass goes on reserving and starting clones the provider finishes at once: the
pass's other steps (destroying returned VMs, checking ready and running ones) wait for the next
pass meanwhile, so it is short; a refill that needs longer goes on in the next pass."""


def more_rounds(context: PassContext) -> None:
    """Follow the clones the refill started (``PassContext.refill_started``) now; while every one
    of a round finished, reserve and start the next round, for at most ``ROUNDS_SECONDS``. A
    round whose clones did not all end well (or start) ends the rounds: its failures are noted
    (and back the pool off) as after the pending step, and the next pass follows what is left."""
    started, pool, clock = context.refill_started, context.pool, context.clock
    if not started or context.provider.clone_seconds(pool) != 0:
        return
    try:
        _rounds(context, started, clock.monotonic() + ROUNDS_SECONDS)
    finally:
        # The pass's counts follow its own moves only: the checkouts made while its rounds made
        # VMs ready are not in them (they read 514 ready of 500). Read again when next asked.
        context.counts = None


def _rounds(context: PassContext, started: list[VMRecord], until: float) -> None:
    pool, clock = context.pool, context.clock
    failures = len(context.report.clone_failures)
    while started and clock.monotonic() < until:
        finished = pending.check_started(context, started)
        failed = len(context.report.clone_failures) - failures
        if failed:
            clones.note_clone_outcomes(context, failed, finished)
        if failed or finished < len(started):
            return
        # Names for what the pool may lack now (checkouts since its counts included): at most its size.
        wanted = min(context.service.task_limit, pool.size)
        started = clones.reserve_and_start(context, wanted, clone_limit=pool.clone_limit or 0)
        if len(context.report.clone_failures) > failures:
            return  # refused at start (and noted): the next pass follows the ones that started
