"""The reconcile pass's pending step: follow each new VM's clone task, then its boot, until it
is ready (or, built for an on-demand request, handed over); time out the ones that never make it.

A clone task that finished is noted on the VM (``clone_end``) and the clone's duration sampled;
a failed one takes the VM out of service with the failure's kind (an on-demand request ends at
once when retrying cannot help). A VM that booted moves to ready, conditionally: it is its pool's
only once the move happened. A VM the pool's template change or reset made stale is never moved to
ready (the drain takes it from pending: pool_changes.py). The not-ready reason is kept on the VM
(GET /vm shows it), and a VM slower than ``timeout_notification`` is logged once.
"""

from __future__ import annotations

import math
from typing import Callable, Iterable, Mapping

from chalicelib.manager import dns_records, ondemand
from chalicelib.manager.context import PassContext
from chalicelib.manager.placement import describe
from chalicelib.manager.pool_changes import stale_reason
from chalicelib.observability import logger
from chalicelib.providers.base import Provider, ProviderError, TaskState, TaskStatus, VMInfo
from chalicelib.store import DurationSample, Store, VMRecord
from chalicelib.store.leases import LeaseHolder, labelled_holder
from chalicelib.store.ondemand import CLONE_FAILED, CLONE_NOT_MADE, GONE_WHILE_BOOTING
from chalicelib.store.records import MARKS_ASKED, RESERVER_LEASE

CLONE_START_GRACE_SECONDS = 120.0
"""How long a reserved name may wait for its clone task to be recorded before the pass decides
the pass that reserved it died in between (longer than any pass takes between the two steps)."""
READY_CHECK_SECONDS_PER_PASS = 15.0
"""Time a pass spends on its pending VMs' readiness checks at most (a quarter of the reconcile
function's 60 s, as for DNS): a check may wait for an answer (vSphere's ``tcp`` check: 3 s to
connect to a guest whose port drops packets), and twenty guests behind a firewall were the whole
function's time, every pass. The VMs past it are checked by the next passes, never-checked
ones first."""
GONE_WHILE_BOOTING_AFTER_SECONDS = CLONE_START_GRACE_SECONDS
"""How long after its clone was noted finished a booting VM missing from the pass's inventory is
taken for gone and dropped (its pool clones a replacement). Not at once: a pass running beside the
one that noted the clone may have read its inventory before the clone ended (noting a clone's end
changes no ``change_seq``, so ``PassContext.drop``'s own check cannot tell), and no pass takes this
long between its inventory read and its records'."""
CLONE_ASKED = "clone_asked"
"""A pending VM's record field: when its pass was about to ask the provider for its clone,
written just before the call (manager/clones.py, lua/clone_asked.lua). A VM with it and no clone
task was asked for by a pass that died before noting the task: the provider may be cloning it,
so its slot stays counted until its VM shows, or the provider says it makes no such clone, or
(when it cannot tell) the pool's timeout (``unnoted_clones_running``); without it, the pass that
reserved it never asked, and its place is given back after ``CLONE_START_GRACE_SECONDS``."""
RESERVER_GONE = "reserver_gone"
"""A pending VM's record field: the process that reserved it (its ``reserver``) is known dead
(``abandon_unstarted_clones``), so the grace above is not waited for."""


def reservation_taken_over(context: PassContext, record: VMRecord) -> str | None:
    """The lease of the run that reserved the VM (``RESERVER_LEASE``) when it is not this pass's
    run's: that run lost the pool's lease (killed, timed out, failed on a hung Redis: this run
    took the lease after), and can no longer mark the VM asked (lua/clone_asked.lua), so a VM it
    never marked will never be cloned and needs no start grace. None when the VM is this run's,
    reserved outside a leased run, or this pass runs without a lease (it cannot tell)."""
    reserver_lease = record.raw.get(RESERVER_LEASE)
    if not reserver_lease or not context.lease_token or reserver_lease == context.lease_token:
        return None
    return reserver_lease


def abandon_unstarted_clones(store: Store, pools: Iterable[str],
                             reserver_gone: Callable[[LeaseHolder], bool]) -> list[str]:
    """Mark the pools' pending VMs whose clone a process now gone reserved and never started
    (``reserver_gone``: the local stack started again knows its predecessor is dead): their next
    pass keeps one the provider has (the clone call reached it) and takes the others out of
    service, instead of holding their place in the pool for ``CLONE_START_GRACE_SECONDS``.
    Returns the hostnames marked."""
    marked = []
    for pool in pools:
        hostnames = store.hostnames(pool, "pending")
        for hostname, record in store.records(hostnames).items():
            reserver = labelled_holder(record.raw.get("reserver", ""))
            if record.clone_task or reserver is None or not reserver_gone(reserver):
                continue
            if store.set_once(hostname, RESERVER_GONE):
                marked.append(hostname)
    return marked


def unnoted_clones_running(context: PassContext, records: Iterable[VMRecord], asked_limit: float) -> set[str]:
    """Of ``records``, VMs whose clone task was never noted (their pass died, or has not noted
    it yet), those whose clone may still be starting or running at the provider, so that their
    slots stay counted: none one ``never_cloned``, nor one whose VM shows in the pool's inventory
    when the provider shows VMs once cloned only (the clone is done). vSphere lists a clone's VM
    during its clone (``Provider.vms_show_while_cloning``): its presence then says only that the
    clone was asked for, and the provider is asked at once, within the grace too (running unless
    it says otherwise there; a VM no longer running is done). One not shown and never asked
    for: for ``CLONE_START_GRACE_SECONDS`` (its pass may still ask), not at all
    once its reserver is known gone or its run lost the pool's lease to this pass's run
    (``reservation_taken_over``). One asked for (``CLONE_ASKED``: the call may have reached
    the provider): for the grace too (unless its reserver is known gone), then, up to
    ``asked_limit`` seconds after its start, while the provider says it still makes the VM
    (``Provider.clones_under_way``: one call for all, after a crash only; the task references it
    gives are noted on the VMs, ``Store.note_found_clone_tasks``: from the next pass on, each is
    followed as any clone, done when its task ends, cancelled past the pool's timeout), or, when
    it cannot tell, up to the pool's timeout. The provider is asked only of clones of the pool's
    template (vSphere finds a clone among its template's tasks), each in the place it was asked
    in (its ``placement``, written with the mark: one call per place): one of a template the
    pool has left since is judged as one it cannot tell."""
    timeout = context.pool.timeout_minutes * 60
    shown_early = context.provider.vms_show_while_cloning
    running: set[str] = set()
    graced: set[str] = set()  # within the start grace: running unless the provider says it is done
    ask: dict[str, dict[str, tuple[VMRecord, float]]] = {}  # by placement ('': the pool's now)
    untold: dict[str, float] = {}
    for record in records:
        age = context.now - (record.clone_start or context.now)
        shown = record.name in context.inventory
        if (shown and not shown_early) or never_cloned(record):
            continue
        if (age <= CLONE_START_GRACE_SECONDS and not record.raw.get(RESERVER_GONE)
                and not (reservation_taken_over(context, record) and not record.raw.get(CLONE_ASKED))):
            if not shown:
                running.add(record.name)  # its pass may still be asking: nothing to ask yet
                continue
            graced.add(record.name)  # made, perhaps still cloning: the provider tells
        elif not ((record.raw.get(CLONE_ASKED) or shown) and age <= asked_limit):
            continue
        if record.template == context.pool.template:
            ask.setdefault(context.elsewhere(record) or "", {})[record.name] = (record, age)
        else:
            untold[record.name] = age
    for asked in ask.values():
        under_way = _under_way_where_asked(context, [record for record, _ in asked.values()])
        if under_way is None:
            untold.update((name, age) for name, (_, age) in asked.items())
            continue
        running.update(name for name in asked if name in under_way)
        found = {name: task for name, task in under_way.items() if task and name in asked}
        if found and context.store.note_found_clone_tasks(found):
            context.checkpoint("clone_task_found")
    running.update(name for name, age in untold.items() if age <= timeout or name in graced)
    return running


def _under_way_where_asked(context: PassContext, records: list[VMRecord]) -> Mapping[str, str] | None:
    """``Provider.clones_under_way`` for ``records`` (clones of the pool's template asked in
    one place), asked of the place they were asked in (``PassContext.reach``: the pool may have
    moved since; asked of its new place, another datacenter's template would say "not under
    way" while the clone runs, and its slot would be freed beyond task_limit). None when it
    cannot tell: that place's provider is no longer configured, or (not the pool's own) fails
    now; the pool's own failing raises ProviderError (the pass stops there)."""
    reached = context.reach(records[0])
    if reached is None:
        return None
    provider, pool = reached
    names = [record.name for record in records]
    if context.elsewhere(records[0]) is None:
        return provider.clones_under_way(pool, names)
    try:
        return provider.clones_under_way(pool, names)
    except ProviderError as error:
        context.report.errors.append(f"clones in the pool's former place not looked for: {error}")
        return None


def never_cloned(record: VMRecord) -> bool:
    """Whether the VM's clone was never asked for and never can be: it left pending (an ended
    on-demand request's, a pool's drained: its slot held, lua/ondemand_end.lua, lua/move.lua)
    without the ``CLONE_ASKED`` mark, which is refused from then on, and it was reserved by a
    version that clones only what it marked (``MARKS_ASKED``). A record read after the VM left
    pending (its state says so) shows the mark as it stays. Reserved by an older version
    (during a deploy), it may still be cloned unmarked: not known never cloned."""
    return (record.state != "pending" and bool(record.raw.get(MARKS_ASKED))
            and not record.raw.get(CLONE_ASKED) and not record.clone_task)


def check_pending(context: PassContext) -> None:
    """Pending VMs: finish clone tasks, then ready-check; time out the ones that never make it.
    Whatever the number of VMs, one provider call asks for every clone task and one round trip
    notes the finished clones, the not-ready reasons and moves the booted VMs to ready (each
    move conditional on its own VM)."""
    found = context.records_in("pending")
    cloning = _cloning_elsewhere(context, found)
    _follow(context, [record for record in found if not _left_behind(context, record, cloning)])


def tasks_to_read(context: PassContext) -> list[tuple[Provider, str]]:
    """The clone tasks ``check_pending`` follows (pending VMs made where their pool makes VMs,
    their clone not ended), for the pass to read with its other tasks (reconcile.read_tasks)."""
    wanted = []
    for record in context.snapshot.records.values():
        if record.state == "pending" and record.pool == context.pool.name and record.clone_end is None \
                and record.clone_task and context.elsewhere(record) is None:
            wanted.append((context.provider, record.clone_task))
    return wanted


def check_started(context: PassContext, records: list[VMRecord]) -> int:
    """The clones this pass started, looked at as the pending step does (a clone the provider
    finishes at once is done, its VM booted or not: manager/rounds.py): their ``records`` as the
    pass wrote them (not read again: every write to them after is conditional, the moves on the
    VM still pending), the finished ones' VMs in one provider call (the pass's inventory was
    read before they existed). Returns how many clones finished."""
    context.report.clones_running -= len(records)  # counted when started; again if still running
    return _follow(context, records, started=True)


def _follow(context: PassContext, records: list[VMRecord], started: bool = False) -> int:
    """Follow pending VMs (``records``) one step: their clone tasks, then their boots. With
    ``started`` (clones the pass just started), the VMs of the finished clones are read from
    the provider with their tasks. Returns how many clones finished."""
    ages = {record.name: context.now - (record.clone_start or context.now) for record in records}
    for record in records:
        _notify_slow(context, record, ages[record.name])
    cloning = [record for record in records if record.clone_end is None]
    tasks = {record.name: record.clone_task for record in cloning if record.clone_task}
    if started:  # and the VMs of the ones that succeeded, with their tasks (one provider call)
        statuses, vms = context.provider.clone_outcomes(context.pool, tasks)
        context.saw(vms)
    else:  # read with the pass's other tasks (reconcile.read_tasks)
        statuses = context.task_reads.statuses(context.provider, tasks.values())
    unnoted = unnoted_clones_running(context, [record for record in cloning if not record.clone_task], math.inf)
    finished = [record for record in cloning
                if _clone_finished(context, record, statuses, ages[record.name], unnoted)]
    context.report.clones_finished += len(finished)
    done = {record.name for record in finished}
    booting = [record for record in records if record.clone_end is not None or record.name in done]
    _check_boots(context, booting, ages, done)
    return len(finished)


def _cloning_elsewhere(context: PassContext, records: list[VMRecord]) -> set[str]:
    """Of ``records``, the VMs made where their pool no longer makes VMs whose clone still runs
    there within the pool's timeout (hostnames): their clone tasks read in one call a provider
    (before, one call a VM). A task the provider could not read (UNKNOWN), or a provider that
    does not answer, counts as still cloning: asked again next pass."""
    groups: dict[str, tuple[Provider, list[VMRecord]]] = {}
    for record in records:
        age = context.now - (record.clone_start or context.now)
        if context.elsewhere(record) is None or record.clone_end is not None or not record.clone_task \
                or age > context.pool.timeout_minutes * 60:
            continue
        reached = context.reach(record)
        if reached is not None:
            groups.setdefault(reached[0].name, (reached[0], []))[1].append(record)
    cloning: set[str] = set()
    for provider, members in groups.values():
        try:
            statuses = provider.task_statuses([record.clone_task for record in members])
        except ProviderError:
            cloning.update(record.name for record in members)  # the former place does not answer
            continue
        cloning.update(record.name for record in members
                       if statuses[record.clone_task].state in (TaskState.RUNNING, TaskState.UNKNOWN))
    return cloning


def _left_behind(context: PassContext, record: VMRecord, cloning: set[str]) -> bool:
    """Whether the VM was made where its pool no longer makes VMs (manager/placement.py): then it
    leaves service, to be destroyed there, and the pool clones its replacement in the new place.
    Not a clone failure: the pool does not back off for it. Not while its clone still runs (up to
    the pool's timeout): a destroy would find nothing yet, and the clone would then land in a
    folder no pass lists any more."""
    placement = context.elsewhere(record)
    if placement is None:
        return False
    if record.name in cloning:  # still cloning there (``_cloning_elsewhere``)
        context.report.followups += 1
        return True
    # A clone still running there past the timeout keeps its slot until it ends (completed.py),
    # and so does one asked there whose task was never noted (its answer lost, its pass killed):
    # the completed step asks that place whether it still makes it (unnoted_clones_running).
    asked = bool(record.clone_task or record.raw.get(CLONE_ASKED))
    context.take_out_of_service(record.name, "pending", f"its pool moved from {describe(placement)}",
                                hold_clone=record.clone_end is None and asked)
    return True


def _check_boots(context: PassContext, records: list[VMRecord], ages: dict[str, float], finished: set[str]) -> None:
    """VMs whose clone is done (``finished``: noted done in this pass): ready (or handed to their
    request), timed out, or still booting."""
    timeout = context.pool.timeout_minutes * 60
    ready: dict[str, VMInfo] = {}
    reasons: dict[str, dict[str, str]] = {}
    checking = 0.0
    # Never-checked VMs first, then the oldest: when the checks' budget runs out, the VMs left
    # for the next pass are the ones checked before.
    ordered = [record for record in sorted(records, key=lambda pending: (bool(pending.not_ready_reason),
                                                                        -ages[pending.name]))
               # Of another template, or cloned before a reset: never ready, so never handed out (a
               # pass killed before its drain would leave it ready once another lifted the fence).
               # The drain takes it from pending (pool_changes.py), this pass's or the next's.
               if record.raw.get("request") or not stale_reason(record, context.pool, context.overrides.reset_at)]
    # Their address records first, in as few DNS calls as the plugin can (50 a call).
    unpublished = dns_records.publish_pending(context, [(record, context.inventory[record.name])
                                                        for record in ordered if record.name in context.inventory])
    for record in ordered:
        hostname, age = record.name, ages[record.name]
        vm = context.inventory.get(hostname)
        if vm is None:
            noted_end = record.clone_end
            if hostname not in finished and noted_end is not None \
                    and context.now - noted_end > GONE_WHILE_BOOTING_AFTER_SECONDS:
                # Its clone ended long before this pass's inventory was read: gone (deleted by
                # hand, a vCenter restored), not late. Waiting for the timeout kept its place
                # counted as pending, the pool short, for up to `timeout` minutes. One built for
                # an on-demand request is built again by the request's next reservation, not
                # counted as a failed attempt (lua/ondemand_reserve.lua): its clone did not fail,
                # and vmpooler counts no retry for a pending VM gone from its provider either.
                context.drop(hostname, "pending", GONE_WHILE_BOOTING, gone=True)
                if record.raw.get("request"):
                    context.report.followups += 1  # its request lacks a VM now: look again soon
                continue
            # The clone finished after our inventory was read; readiness next pass.
            if age > timeout:
                context.take_out_of_service(
                    hostname, "pending", f"not in the provider {_minutes(age)} after clone start"
                )
            continue
        if checking >= READY_CHECK_SECONDS_PER_PASS:
            continue  # checked by the next pass (its reason, and its timeout, wait until then)
        started, on_dns = context.clock.monotonic(), context.dns_seconds
        readiness = dns_records.check_ready(context, record, vm, unpublished.get(hostname, ""))
        # DNS calls have their own budget (PassContext.dns_call): only the check counts here.
        checking += context.clock.monotonic() - started - (context.dns_seconds - on_dns)
        if readiness.ready and record.raw.get("request"):
            ondemand.deliver(context, record, vm, age)  # built for a request: it goes to running
        elif readiness.ready:
            ready[hostname] = vm
        elif age > timeout:
            context.take_out_of_service(
                hostname, "pending",
                f"not ready after {context.pool.timeout_minutes} minutes: {readiness.reason}",
            )
        elif readiness.reason != record.not_ready_reason:
            reasons[hostname] = {"not_ready_reason": readiness.reason}  # GET /vm shows it
    # Still pending and waiting on DNS: GET /status flags the pool (reconcile.end_pass).
    context.report.dns_waiting.update({hostname: reason for hostname, reason in unpublished.items()
                                       if hostname not in context.report.completed})
    _note(context, finished, reasons, ready, ages, {record.name for record in records if record.not_ready_reason})


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f} minutes"


def _notify_slow(context: PassContext, record: VMRecord, age: float) -> None:
    """Log once per VM when a pending VM (cloning or booting) is older than
    ``timeout_notification`` minutes (the pool's, else the service's): the early warning of a
    broken template or DNS."""
    notification = context.pool.timeout_notification
    if notification is None:
        notification = context.service.timeout_notification
    if age <= notification * 60 or record.raw.get("slow_notified"):
        return
    if context.store.set_once(record.name, "slow_notified"):
        logger.warning(
            "VM is slow to become ready",
            extra={"pool": context.pool.name, "hostname": record.name, "minutes": round(age / 60, 1),
                   "timeout_notification": notification,
                   "reason": record.not_ready_reason or ("cloning" if record.clone_end is None else "booting")},
        )


def _clone_finished(context: PassContext, record: VMRecord, statuses: Mapping[str, TaskStatus], age: float,
                    unnoted: set[str]) -> bool:
    """Whether the VM's clone is done (noted by the caller for all at once), given its task's
    status, or, without one, whether it may still run (``unnoted``: ``unnoted_clones_running``).
    A clone running too long, failed, or never started is taken out of service."""
    hostname, pool = record.name, context.pool
    if not record.clone_task:
        if hostname not in unnoted and hostname in context.inventory:
            # The pass that started the clone died before recording its task; the VM exists, and
            # the provider makes it no longer (or shows VMs once cloned only).
            return True
        if hostname in unnoted:
            if record.raw.get(CLONE_ASKED):
                context.report.clones_running += 1
                if age > pool.timeout_minutes * 60:
                    # Asked for, its task never noted, and still being made past the pool's
                    # timeout: out of service, its slot held as for a clone that outran it (the
                    # completed step frees it once the VM shows or the provider says it is not
                    # made, then destroys it: completed.py).
                    context.take_out_of_service(
                        hostname, "pending", f"clone still running after {pool.timeout_minutes} minutes "
                        "(its task never noted: its pass was interrupted)", hold_clone=True)
            return False
        # Never asked of the provider (past the grace), or asked and the provider has no such
        # clone (it says so, or, when it cannot tell, the pool's timeout passed). A VM never
        # asked is given up only while still unasked: a pass paused before its call may have
        # asked since (then the next pass judges it as asked).
        if record.raw.get(CLONE_ASKED):
            context.take_out_of_service(hostname, "pending", f"{CLONE_NOT_MADE} "
                                        "(its pass was interrupted before noting its task)")
            return False
        reserver_lease = reservation_taken_over(context, record)
        if (age <= CLONE_START_GRACE_SECONDS and not record.raw.get(RESERVER_GONE) and reserver_lease
                and context.lease_token):
            # Within the grace: given up only while this run still holds the pool's lease, so
            # the reserving run surely cannot mark it any more (never a lease holder's own).
            context.take_out_of_service(
                hostname, "pending", "clone was never started (the run that reserved it lost the pool's lease)",
                unless_set=CLONE_ASKED, only_while=context.store.reservation_taken_over(
                    context.pool.name, hostname, reserver_lease, context.lease_token))
        else:
            context.take_out_of_service(hostname, "pending", "clone was never started (its pass was interrupted)",
                                        unless_set=CLONE_ASKED)
        return False
    status = statuses[record.clone_task]
    if status.state is TaskState.UNKNOWN:
        # Its task could not be read this pass (the others were): it may still run, so it is
        # judged as a running clone, its slot kept, and read again next pass. Before, the failed
        # read ended every pass of the pool here, at its first step: no refill, no destroy.
        context.report.errors.append(f"{hostname}: clone task not read: {status.error}")
        context.report.clones_running += 1
        if age > pool.timeout_minutes * 60:
            context.take_out_of_service(
                hostname, "pending", f"clone not known done after {pool.timeout_minutes} minutes: its task "
                f"could not be read: {status.error}", hold_clone=True)
        return False
    if status.state is TaskState.RUNNING:
        context.report.clones_running += 1
        if age > pool.timeout_minutes * 60:
            # vCenter still clones: the slot stays taken until the clone ends (the completed
            # step cancels it and frees the slot when it sees it end: completed.py).
            context.take_out_of_service(
                hostname, "pending", f"clone still running after {pool.timeout_minutes} minutes", hold_clone=True
            )
        return False
    if status.state is TaskState.ERROR:
        failure = status.failure
        context.report.clone_failures[hostname] = failure
        context.take_out_of_service(hostname, "pending", f"{CLONE_FAILED}: {failure.message}", failure=failure.kind)
        if record.raw.get("request"):
            ondemand.clone_failed(context, record.raw["request"], failure, hostname)
        return False
    context.report.samples.append(DurationSample("clone", pool.name, age))
    return True


def _note(context: PassContext, finished: set[str], reasons: Mapping[str, Mapping[str, str]],
          ready: Mapping[str, VMInfo], ages: Mapping[str, float], had_reasons: set[str]) -> None:
    """Write what the step saw in one round trip (``Store.note_pending``): the finished clones
    noted done (their places under the task limit freed), the not-ready reasons, and the booted
    VMs moved to ready, each move happening only if its VM is still pending (a VM is its pool's
    only once moved). A clone that finished and booted at once is noted done by its move (which
    leaves the cloning set), not by a write of its own. The not-ready reason is deleted from
    the VMs that had one (``had_reasons``): GET /vm shows it on pending VMs only, and a VM ready
    at its first look never had one, so its record is spared the HDEL."""
    if not (finished or reasons or ready):
        return
    noted = sorted(hostname for hostname in finished if hostname not in ready)
    moved = context.store.note_pending(context.pool.name, context.now, noted, reasons, {
        hostname: {"ready_at": context.now, "ip": dns_records.reachable_ip(vm) or vm.ip, "host": vm.host,
                   **({"clone_end": context.now} if hostname in finished else {}),
                   **({"not_ready_reason": None} if hostname in had_reasons else {})}
        for hostname, vm in ready.items()
    }, context.overrides.read)
    if noted:
        context.checkpoint("clone_finished")
    if not ready:
        return
    context.counted_move("pending", "ready", len(moved))
    for hostname in moved:
        logger.info("VM ready", extra={"pool": context.pool.name, "hostname": hostname,
                                       "boot_seconds": round(ages[hostname], 1)})
        context.report.became_ready.append(hostname)
        context.report.samples.append(DurationSample("boot", context.pool.name, ages[hostname]))
    context.checkpoint("ready")
