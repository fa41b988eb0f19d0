"""The reconcile pass's part in migrations at checkout (``migration_limit``, as vmpooler).

A VM checked out while migrations are enabled is queued for one (the checkout marks it). This
step, for each of the pool's VMs with a migration on its record:

- queued: take a service-wide slot (at most ``migration_limit`` migrations in flight; none free:
  stay queued and look again soon), then ask the provider to start the move. The provider decides
  whether the VM's host is busier than the least used compatible one; if not, nothing moves.
- started: follow the provider's task; when it is done, record the new ``host`` and
  ``migrated`` (GET /vm shows both) or ``migration_error``, and free the slot.
- the VM left running meanwhile (returned, reaped): free the slot, drop the migration.

It also keeps ``host`` true for running VMs that moved for other reasons (DRS, an operator): the
pass's inventory says where each VM is. The pass never waits for a migration.
"""

from __future__ import annotations

from typing import Callable, Iterable

from chalicelib import observability as metric
from chalicelib.manager.context import PassContext
from chalicelib.manager.task_reads import TaskReads
from chalicelib.manager.unanswered import ask_again
from chalicelib.manager.vm_tasks import TAKER_GONE_SETTLE_SECONDS, TASK_SETTLE_SECONDS
from chalicelib.observability import emit, logger
from chalicelib.providers.base import UNREACHABLE, Provider, ProviderError, TaskState
from chalicelib.store import Store, VMRecord
from chalicelib.store.leases import LeaseHolder, labelled_holder
from chalicelib.store.migrations import ADOPTED, QUEUED, STALE_SLOT_SECONDS, STARTED, TAKER_GONE, MigrationStore
from chalicelib.store.records import finite_number

MIGRATION_START_GRACE_SECONDS = 120.0
"""How long a taken slot may wait for its task to be recorded before the pass decides the pass
that took it died in between (the migration then ends without a move, visibly)."""


def abandon_unstarted(store: Store, pools: Iterable[str], taker_gone: Callable[[LeaseHolder], bool]) -> list[str]:
    """Mark the migrations of the pools' running VMs whose slot a process now gone took and whose
    move it never noted (``taker_gone``: the local stack started again knows its predecessor is dead):
    their passes judge them ``TAKER_GONE_SETTLE_SECONDS`` after the take (time for a move that
    process sent before it died to show in the provider: ``_judge_unnoted``), instead of holding
    the slot for ``MIGRATION_START_GRACE_SECONDS`` while other checked-out VMs wait for one.
    Returns the hostnames marked."""
    marked = []
    for pool in pools:
        for hostname, record in store.records(store.hostnames(pool, "running")).items():
            taker = labelled_holder(record.raw.get("migration_taker", ""))
            if (record.raw.get("migration") != STARTED or record.raw.get("migration_task")
                    or taker is None or not taker_gone(taker)):
                continue
            if store.set_once(hostname, TAKER_GONE):
                marked.append(hostname)
    return marked


def tasks_to_read(context: PassContext) -> list[tuple[Provider, str]]:
    """The tasks of the pool's started migrations ``run`` follows, for the pass to read with its
    other tasks in one call (reconcile.read_tasks; before, one call a VM, then one a step)."""
    return [(context.provider, str(record.raw["migration_task"])) for record in context.snapshot.records.values()
            if record.raw.get("migration") == STARTED and record.raw.get("migration_task")
            and record.state == "running" and record.pool == context.pool.name and not context.elsewhere(record)]


def run(context: PassContext) -> None:
    """Advance every migration of the pool's VMs by what is done now: first the ones that end
    (their slots free up), then the queued ones, oldest checkout first."""
    migrations = MigrationStore(context.store)
    limit = int(getattr(context.service, "migration_limit", 0) or 0)
    queued: list[VMRecord] = []
    reached = True  # False once the provider could not be reached or timed out in this step
    reads = context.task_reads  # the started migrations' tasks, read with the pass's others (tasks_to_read)
    for hostname, record in context.snapshot.records.items():
        vm = context.inventory.get(hostname)
        state = record.raw.get("migration")
        if record.state == "running" and vm is not None and vm.host and vm.host != record.host and state != STARTED:
            context.store.update_vm(hostname, host=vm.host)  # moved outside vmpool
        if not state:
            continue
        if record.state != "running" or record.pool != context.pool.name or context.elsewhere(record):
            # Left running, or made where its pool no longer makes VMs (manager/placement.py):
            # this pass's provider cannot move it.
            migrations.finish(hostname)
        elif state == STARTED and not reached:
            context.report.followups += 1  # each other read would wait as long: the next pass asks
        elif state == STARTED:
            reached = _follow(context, migrations, record, reads)
        elif state == QUEUED:
            queued.append(record)
        context.checkpoint("migration")
    for record in sorted(queued, key=lambda queued_vm: queued_vm.checkout or 0.0):
        reached = reached and _start(context, migrations, record, limit)
        context.checkpoint("migration")
        if not reached:
            # The provider could not be reached or timed out: each other start would wait as
            # long, and fail. They stay queued for the next pass.
            context.report.followups += 1
            break


def _start(context: PassContext, migrations: MigrationStore, record: VMRecord, limit: int) -> bool:
    """Take a slot and start the VM's migration; whether the provider could be reached (a start
    that timed out fails the migration: vCenter may have begun the move)."""
    if limit <= 0:
        migrations.finish(record.name)  # migrations were turned off since the checkout
        return True
    taken = migrations.take_slot(record.name, limit, context.now)
    if taken == "limit":
        context.report.followups += 1
        return True
    if taken != "started":
        return True
    context.checkpoint("migration_slot")

    def chosen(target: str) -> None:  # noted before the move is sent: see _judge_unnoted
        context.store.update_vm(record.name, migration_to=target)
        context.checkpoint("migration_target")

    try:
        moving = context.provider.start_migration(context.pool, record.name, chosen)
    except ProviderError as error:
        _failed(context, migrations, record, f"migration failed to start: {error}")
        return error.kind not in UNREACHABLE
    if moving is None:
        migrations.finish(record.name)
        logger.info("no migration needed", extra={"pool": context.pool.name, "hostname": record.name,
                                                  "host": record.host})
        return True
    context.store.update_vm(record.name, migration_task=moving.task_ref, migration_from=moving.from_host,
                          migration_to=moving.to_host)
    context.report.followups += 1
    logger.info("VM migration started", extra={"pool": context.pool.name, "hostname": record.name,
                                                "from": moving.from_host, "to": moving.to_host})
    return True


def _follow(context: PassContext, migrations: MigrationStore, record: VMRecord, reads: TaskReads) -> bool:
    """Follow a started migration one step (its task's state from ``reads``, read ahead);
    whether the provider could be reached (a read it fails is this VM's alone: the migration
    waits, or ends saying so, and the pass goes on)."""
    try:
        unreached = reads.unreached(context.provider)
        if unreached is not None:  # the read ahead did not reach it: asked nothing more this pass
            raise unreached
        _follow_task(context, migrations, record, reads)
    except ProviderError as error:
        started = finite_number(record.raw.get("migration_started")) or context.now
        if ask_again(error, context.now - started, STALE_SLOT_SECONDS):
            # Before, the error ended the whole pass, every pass: the pool's later steps (its
            # destroys, its refill) never ran while the one migration's task could not be read.
            context.report.errors.append(f"{record.name}: its migration's state not read: {error}")
            context.report.followups += 1
        else:
            # It answers and cannot say, past the time its slot is held at most: waiting cannot help.
            _failed(context, migrations, record, f"migration may or may not have been done: its state "
                                                 f"could not be read: {error}")
        return error.kind not in UNREACHABLE
    return True


def _follow_task(context: PassContext, migrations: MigrationStore, record: VMRecord, reads: TaskReads) -> None:
    task = record.raw.get("migration_task")
    adopted = bool(record.raw.get(ADOPTED))
    if not task:
        started = finite_number(record.raw.get("migration_started")) or 0.0
        grace = TAKER_GONE_SETTLE_SECONDS if record.raw.get(TAKER_GONE) else MIGRATION_START_GRACE_SECONDS
        if context.now - started <= grace:
            context.report.followups += 1
            return
        task = _judge_unnoted(context, migrations, record, started, grace)
        if task is None:
            return
        adopted = True
    status = reads.status(context.provider, task)
    if status.state is TaskState.RUNNING:
        context.report.followups += 1
        return
    if status.state is TaskState.ERROR:
        _failed(context, migrations, record, f"migration failed: {status.error or 'unknown error'}")
        return
    target = record.raw.get("migration_to")
    if target and adopted:
        # Where the VM is now, after the task's end (the pass's inventory may predate it): a move
        # adopted by _judge_unnoted may have been another user's (vCenter lists every user's
        # moves of the VM), to another host; ours went to the target noted before it was sent.
        try:
            now_on = next(iter(context.provider.find_vms(context.pool, [record.name])), None)
        except ProviderError as error:
            context.report.errors.append(f"{record.name}: where its migration left it not looked at: {error}")
            context.report.followups += 1
            return
        if now_on is not None and now_on.host and now_on.host != target:
            _failed(context, migrations, record, f"migration was never started (its pass was interrupted); "
                                                 f"another task moved the VM to {now_on.host}", host=now_on.host)
            return
    vm = context.inventory.get(record.name)
    _migrated(context, migrations, record, target or (vm.host if vm else None) or record.host)


def _judge_unnoted(context: PassContext, migrations: MigrationStore, record: VMRecord, started: float,
                   grace: float) -> str | None:
    """A migration whose task was never noted: the pass that took its slot died in between. Its
    target (``migration_to``) is noted before the move is sent, so without one nothing was sent:
    it never started, wherever the VM went meanwhile (DRS, an operator). With one, the provider's
    moves of the VM since the take say what happened (the dead pass's vMotion may still run, a
    restarted local stack's settle time over): a move still running is adopted (noted, marked
    ADOPTED, and its task returned to be followed as any: at its end, the VM elsewhere than the
    target says it was another user's, and the migration never started); otherwise the VM on
    its target now (asked of the provider) ended migrated, and anywhere else it never started.
    Returns the task to follow, or None when the migration was ended (or is asked about again)."""
    target = record.raw.get("migration_to")
    if target:
        try:
            moves = context.provider.recent_migrations(context.pool, record.name, context.now - started)
            statuses = context.provider.task_statuses(list(moves or []))
            unread = next((status for status in statuses.values() if status.state is TaskState.UNKNOWN), None)
            if unread is not None:  # one of the moves may be ours, still running: asked again as below
                raise ProviderError(f"a move of the VM not read: {unread.error}", unread.kind)
            running = [task for task in moves or [] if statuses[task].state is TaskState.RUNNING]
            # Where the VM is now, after those reads (the pass's inventory may predate the move's end).
            now_on = None if running else next(iter(context.provider.find_vms(context.pool, [record.name])), None)
        except ProviderError as error:
            if ask_again(error, context.now - started, grace + TASK_SETTLE_SECONDS):
                context.report.errors.append(f"{record.name}: its migration's move not looked for: {error}")
                context.report.followups += 1
                return None
            # Before, every pass asked again: the migration stayed 'started' for good and its
            # slot was held (STALE_SLOT_SECONDS) while other checked-out VMs queued behind it.
            _failed(context, migrations, record, f"migration may or may not have been done: its pass was "
                                                 f"interrupted after choosing its target and asking the "
                                                 f"provider failed: {error}")
            return None
        if running:
            context.store.update_vm(record.name, migration_task=running[-1], **{ADOPTED: "true"})
            return running[-1]
        if now_on is not None and now_on.host == target:
            _migrated(context, migrations, record, target)
            return None
    _failed(context, migrations, record, "migration was never started (its pass was interrupted)")
    return None


def _migrated(context: PassContext, migrations: MigrationStore, record: VMRecord, target: str | None) -> None:
    """The VM's migration is done: it is on ``target`` now; its slot is freed."""
    seconds = context.now - (finite_number(record.raw.get("migration_started")) or context.now)
    migrations.finish(record.name, host=target, migrated="true", migration_error=None)
    emit(context.pool.name, {metric.MIGRATIONS: 1})
    logger.info("VM migrated", extra={"pool": context.pool.name, "hostname": record.name,
                                      "from": record.raw.get("migration_from") or record.host, "to": target,
                                      "seconds": round(seconds, 1)})


def _failed(context: PassContext, migrations: MigrationStore, record: VMRecord, reason: str,
            **fields: str) -> None:
    """The VM's migration failed (``reason`` kept on the record, with ``fields``); its slot is freed."""
    migrations.finish(record.name, migration_error=reason, **fields)
    emit(context.pool.name, {metric.MIGRATION_FAILURES: 1})
    context.report.errors.append(f"{record.name}: {reason}")
    logger.warning("VM migration failed", extra={"pool": context.pool.name, "hostname": record.name,
                                                 "reason": reason})
