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
from chalicelib.observability import emit, logger
from chalicelib.providers.base import UNREACHABLE, ProviderError, TaskState
from chalicelib.store import Store, VMRecord
from chalicelib.store.leases import LeaseHolder, labelled_holder
from chalicelib.store.migrations import QUEUED, STARTED, TAKER_GONE, MigrationStore
from chalicelib.store.records import finite_number

MIGRATION_START_GRACE_SECONDS = 120.0
"""How long a taken slot may wait for its task to be recorded before the pass decides the pass
that took it died in between (the migration then ends without a move, visibly)."""


def abandon_unstarted(store: Store, pools: Iterable[str], taker_gone: Callable[[LeaseHolder], bool]) -> list[str]:
    """Mark the migrations of the pools' running VMs whose slot a process now gone took and
    never started on the provider (``taker_gone``: the local stack started again knows its
    predecessor is dead): their next pass ends them and frees the slot, instead of holding it
    for ``MIGRATION_START_GRACE_SECONDS`` while other checked-out VMs wait for one. Returns the
    hostnames marked."""
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


def run(context: PassContext) -> None:
    """Advance every migration of the pool's VMs by what is done now: first the ones that end
    (their slots free up), then the queued ones, oldest checkout first."""
    migrations = MigrationStore(context.store)
    limit = int(getattr(context.service, "migration_limit", 0) or 0)
    queued: list[VMRecord] = []
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
        elif state == STARTED:
            _follow(context, migrations, record)
        elif state == QUEUED:
            queued.append(record)
        context.checkpoint("migration")
    for record in sorted(queued, key=lambda queued_vm: queued_vm.checkout or 0.0):
        reached = _start(context, migrations, record, limit)
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
    try:
        moving = context.provider.start_migration(context.pool, record.name)
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


def _follow(context: PassContext, migrations: MigrationStore, record: VMRecord) -> None:
    task = record.raw.get("migration_task")
    if not task:
        started = finite_number(record.raw.get("migration_started")) or 0.0
        if not (context.now - started > MIGRATION_START_GRACE_SECONDS or record.raw.get(TAKER_GONE)):
            context.report.followups += 1
            return
        # The pass that took the slot died between asking the provider and noting the task: the
        # move may have reached vCenter and been made. The inventory says where the VM is now.
        vm = context.inventory.get(record.name)
        if vm is not None and vm.host and record.host and vm.host != record.host:
            _migrated(context, migrations, record, vm.host)
        else:
            _failed(context, migrations, record, "migration was never started (its pass was interrupted)")
        return
    status = context.provider.task_status(task)
    if status.state is TaskState.RUNNING:
        context.report.followups += 1
        return
    if status.state is TaskState.ERROR:
        _failed(context, migrations, record, f"migration failed: {status.error or 'unknown error'}")
        return
    _migrated(context, migrations, record, record.raw.get("migration_to") or record.host)


def _migrated(context: PassContext, migrations: MigrationStore, record: VMRecord, target: str | None) -> None:
    """The VM's migration is done: it is on ``target`` now; its slot is freed."""
    seconds = context.now - (finite_number(record.raw.get("migration_started")) or context.now)
    migrations.finish(record.name, host=target, migrated="true", migration_error=None)
    emit(context.pool.name, {metric.MIGRATIONS: 1})
    logger.info("VM migrated", extra={"pool": context.pool.name, "hostname": record.name,
                                      "from": record.raw.get("migration_from") or record.host, "to": target,
                                      "seconds": round(seconds, 1)})


def _failed(context: PassContext, migrations: MigrationStore, record: VMRecord, reason: str) -> None:
    migrations.finish(record.name, migration_error=reason)
    emit(context.pool.name, {metric.MIGRATION_FAILURES: 1})
    context.report.errors.append(f"{record.name}: {reason}")
    logger.warning("VM migration failed", extra={"pool": context.pool.name, "hostname": record.name,
                                                 "reason": reason})
