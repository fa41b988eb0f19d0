"""The reconcile pass's refill step: start clones until ready + pending reaches the pool's size.

Names are reserved in Redis first (store/lua/reserve_clones.lua counts the deficit and the pool's
fair share of ``task_limit`` atomically, so two passes at once cannot over-clone), each with a
pending record; just before the provider is asked for a clone, the VM is marked as asked
(``pending.CLONE_ASKED``); then the clone starts, and its task is recorded on the VM. A pass killed
in between leaves a pending VM without a task: never asked, the pending step gives its place
back after ``CLONE_START_GRACE_SECONDS``; asked, the provider may be cloning it, and its slot
stays counted until its VM shows or the pool's timeout (manager/pending.py). A clone call whose
answer was lost (``AnswerLost``: a timeout, a connection broken once the request left) is left in
that same asked state: the provider may be cloning it. A name that already resolves in DNS is not
cloned.

A pool whose clones keep failing (a template or folder that does not exist, vCenter failing
every clone task or unreachable) backs off instead of starting task_limit clones every pass: once
``BACKOFF_AFTER_FAILURES`` clones in a row failed it starts none for ``BACKOFF_FIRST_SECONDS``,
doubling each time up to ``BACKOFF_MAX_SECONDS``, then one at a time, as a probe, until a clone
ends well or an operator changes the pool's clone settings (template, folder, clone target...).
The failures stay counted (CloneFailures by reason) and recorded on the VMs.
"""

from __future__ import annotations

import hashlib
from dataclasses import replace
from typing import Sequence

from chalicelib.manager import dns_records
from chalicelib.manager.context import PassContext
from chalicelib.manager.hostnames import candidate_names, random_candidates
from chalicelib.manager.placement import PLACEMENT_FIELD, placement_of
from chalicelib.observability import logger
from chalicelib.providers.base import AnswerLost, ProviderError
from chalicelib.store.ondemand import CLONE_FAILED, OnDemandStore
from chalicelib.store.records import CloneBackoff, VMRecord

BACKOFF_AFTER_FAILURES = 3
"""Clones failed in a row (no clone ended well between them) before the pool backs off: a random
failure now and then never slows a pool down."""
BACKOFF_FIRST_SECONDS = 30.0
"""How long a pool whose clones keep failing waits before it tries again (then one clone)."""
BACKOFF_MAX_SECONDS = 600.0
"""The longest wait between tries of a pool whose clones keep failing."""


def repopulate(context: PassContext) -> None:
    """Start clones until ready + pending reaches the pool's size, within the task limit.
    Nothing while the pool's template is being prepared. The clones it started are the pass's
    ``refill_started`` (manager/rounds.py may follow them in the same pass) unless a clone of
    the pool failed (before, or in this pass)."""
    if context.clones_held:
        return
    report = context.report
    failing = note_clone_outcomes(context, len(report.clone_failures), report.clones_finished)
    pool, service, store = context.pool, context.service, context.store
    counts = context.read_counts()
    # On-demand VMs being built here are pending but not the pool's: they do not fill its deficit
    # (none to look for when nothing is pending).
    building = OnDemandStore(store).building(pool.name) if counts["pending"] else 0
    deficit = pool.size - counts["ready"] - counts["pending"] + building
    if deficit <= 0:
        if context.snapshot.wants_clones:
            store.withdraw_clone_demand(pool.name)
        return
    if failing is None:
        failing = _backoff(context)
    if context.now < failing.until:
        report.clones_backed_off_until = failing.until
        if context.snapshot.wants_clones:
            store.withdraw_clone_demand(pool.name)  # its share of task_limit goes to other pools
        return
    # The script never reserves more than the task limit: no need for more names. A pool backed
    # off tries one clone (and claims one slot of the task limit, not its share).
    probing = failing.backoffs > 0
    wanted = 1 if probing else min(deficit, service.task_limit)
    report.clones_short = deficit
    started = reserve_and_start(context, wanted, clone_limit=1 if probing else pool.clone_limit or 0)
    if not (failing.failed or report.clone_failures):  # else the next pass notes how they end
        context.refill_started = started


def reserve_and_start(context: PassContext, wanted: int, clone_limit: int) -> list[VMRecord]:
    """Reserve up to ``wanted`` clones (the script allows the pool's deficit and its share of
    the task limit) and start them. Returns the records of the VMs whose clone started and
    whose task was noted on them, as this pass wrote them (the rounds follow them unread)."""
    pool, service, store = context.pool, context.service, context.store
    if (context.overrides.reset_at or 0.0) > context.now:
        # Reset after this pass read its clock (while it read the inventory, or by an API whose
        # clock is ahead): clones stamped with this pass's time would be older than the reset,
        # drained by the next pass as soon as it saw them. The next pass, on a later clock, clones.
        return []
    domain = pool.domain or ""
    # Until the names of VMs Redis forgot are known (manager/names.py), random names only, which
    # none of them can be expected to hold: the script needs no mark for those.
    known = context.names_known
    reserved = store.reserve_clones(
        pool.name, pool.size, service.task_limit, pool.template, domain,
        (candidate_names if known else random_candidates)(wanted, service.prefix), context.now,
        clone_limit=clone_limit, generation=context.config_generation, settings_read=context.overrides.read,
        provider=pool.provider if known else None, lease_token=context.lease_token,
    )
    context.read_counts()["pending"] += len(reserved)
    context.report.clones_short = max(context.report.clones_short - len(reserved), 0)
    context.checkpoint("reserved")
    return [store.reserved_record(pool.name, pool.template, domain, hostname, context.now, **fields)
            for hostname, fields in start_clones(context, reserved).items()]


def start_clones(context: PassContext, reserved: list[str]) -> dict[str, dict[str, str]]:
    """Start the clone of each reserved name and record its task on the VM: one provider call
    (``Provider.clone_vms``) and one round trip whatever the number of clones. Returns, per VM
    whose clone started and whose record took its task, the fields written on it."""
    report = context.report
    names: list[str] = []
    in_use = dns_records.names_in_use(context, reserved)  # 50 names to a call of the DNS plugin
    for hostname in reserved:
        if hostname in in_use:
            context.take_out_of_service(hostname, "pending", in_use[hostname])
        else:
            names.append(hostname)
    if not names:
        return {}
    started = context.provider.clone_vms(context.pool, names, lambda hostname: context.checkpoint("clone_started"),
                                         on_asking=lambda asked: _note_asked(context, asked))
    tasks = {hostname: task for hostname, task in started.items() if isinstance(task, str)}
    placement = placement_of(context.pool)  # where it is made: reached there if the pool moves
    notes = {hostname: {"clone_task": task, PLACEMENT_FIELD: placement} for hostname, task in tasks.items()}
    noted = context.store.update_vms(notes) if notes else []
    report.clones_started.extend(tasks)
    report.clones_running += len(tasks)
    failed = {hostname: error for hostname, error in started.items() if isinstance(error, ProviderError)}
    for hostname, error in failed.items():
        report.clone_failures[hostname] = error.failure
        if isinstance(error, AnswerLost):
            # The provider may be cloning it: it stays pending, marked asked (CLONE_ASKED) with
            # its slot counted, as a clone whose pass died before noting its task (pending.py):
            # taken on once its VM shows, given up once the provider says it makes no such clone
            # or (when it cannot tell) at the pool's timeout.
            logger.warning("clone call's answer lost: the clone may be under way, its slot kept",
                           extra={"pool": context.pool.name, "hostname": hostname, "error": str(error)})
            continue
        context.take_out_of_service(hostname, "pending", f"{CLONE_FAILED} to start: {error}", failure=error.kind)
    if failed:
        note_clone_outcomes(context, len(failed), 0)
    return {hostname: notes[hostname] for hostname in noted}


def _note_asked(context: PassContext, hostnames: Sequence[str]) -> list[str]:
    """Note on the VMs that their clones are about to be asked for (``pending.CLONE_ASKED``) and
    where (manager/placement.py), just before the provider's call: one round trip per call (one a
    batch on the dummy, one a clone on vSphere). Returns those still pending with their slot
    counted: the others are not cloned.
    A run that lost its lease marks none: its checkpoint before the mark renews the lease (a run
    frozen before it stops there) and the mark's script compares the lease with the run's (one
    frozen between the two marks nothing): a VM marked and never cloned would hold its slot as
    asked, up to the pool's timeout, instead of coming back after the start grace."""
    context.checkpoint("clone_asking")
    # Where, with the mark: a clone whose task is never noted (its answer lost, its pass killed)
    # is then looked for, held and destroyed where it was asked if the pool moves meanwhile.
    marked = context.store.mark_clones_asked(context.pool.name, hostnames, context.now, context.lease_token,
                                             placement_of(context.pool))
    context.checkpoint("clone_asked")
    return marked


def note_clone_outcomes(context: PassContext, failed: int, succeeded: int) -> CloneBackoff | None:
    """Keep the pool's clone backoff: a clone that ended well clears it, failed clones add to it
    (and back the pool off once ``BACKOFF_AFTER_FAILURES`` failed in a row). Returns the backoff
    as it now is, or None when there was nothing to note (and nothing was read)."""
    if not (failed or succeeded):
        return None
    pool = context.pool.name
    stored = context.store.clone_backoff(pool)
    backoff = _current(context, stored)
    if succeeded:
        # The stored one, even when an operator's change of the clone settings ended it: left,
        # GET /status went on saying the pool's clones fail (and the dashboard flagging it) for
        # as long as its clones then worked.
        if stored.failed:
            context.store.set_clone_backoff(pool, CloneBackoff())
            if backoff.backoffs:
                logger.info("clones work again", extra={"pool": pool, "failed_in_a_row": backoff.failed})
        return CloneBackoff()
    backoff = replace(backoff, failed=backoff.failed + failed, settings=_clone_settings(context))
    if backoff.failed >= BACKOFF_AFTER_FAILURES:
        wait = min(BACKOFF_FIRST_SECONDS * 2 ** backoff.backoffs, BACKOFF_MAX_SECONDS)
        backoff = replace(backoff, backoffs=backoff.backoffs + 1, until=context.now + wait)
        kinds = sorted({failure.kind.value for failure in context.report.clone_failures.values()})
        logger.warning("clones keep failing: backing off", extra={
            "pool": pool, "failed_in_a_row": backoff.failed, "seconds": wait, "reasons": kinds})
    # The kind of the pass's last failure, for the pool's status (GET /status): why its clones fail.
    last = next(reversed(context.report.clone_failures.values()), None)
    context.store.set_clone_backoff(pool, backoff, last.kind.value if last is not None else "")
    return backoff


def _backoff(context: PassContext) -> CloneBackoff:
    """The pool's backoff, unless an operator changed its clone settings since it began."""
    return _current(context, context.store.clone_backoff(context.pool.name))


def _current(context: PassContext, backoff: CloneBackoff) -> CloneBackoff:
    """``backoff`` as stored, unless an operator changed the pool's clone settings since it began."""
    if backoff.failed and backoff.settings != _clone_settings(context):
        return CloneBackoff()
    return backoff


def _clone_settings(context: PassContext) -> str:
    """A fingerprint of what the pool's clones depend on (its template, folder, provider and
    settings, the service's clone target and create_folders), runtime overrides included."""
    pool, service = context.pool, context.service
    settings = (pool.template, pool.folder, pool.provider,
                sorted((key, repr(value)) for key, value in pool.settings.items()),
                service.clone_target, service.create_folders)
    return hashlib.sha256(repr(settings).encode()).hexdigest()[:16]
