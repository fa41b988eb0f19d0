"""The reconcile pass's running step: VMs in use past their lifetime are reaped, ones deleted
behind our back are dropped, and ones whose checkout was never confirmed go back to ready.

A VM in use is never destroyed by a stale read: the lifetime is checked again in the move (the
user may have extended it since), and a VM missing from the inventory is dropped only if its
state has not changed since the inventory read began."""

from __future__ import annotations

from chalicelib.manager import inventory_view
from chalicelib.manager.context import PassContext
from chalicelib.observability import logger
from chalicelib.store import VMRecord
from chalicelib.store.ondemand import GONE_WHILE_RUNNING
from chalicelib.store.records import finite_number


def check_running(context: PassContext) -> None:
    """Running VMs past their lifetime are reaped; ones deleted behind our back are dropped.
    The others are scheduled for their next look (see inventory_view); the completed VMs'
    looks are forgotten with the pass's last writes (reconcile.end_pass)."""
    default_lifetime = context.service.vm_lifetime
    next_look: dict[str, tuple[VMRecord, float]] = {}
    for hostname in context.snapshot.hostnames("running"):
        record = context.record(hostname)
        if record is None:
            context.drop(hostname, "running", "record missing")
            continue
        if _return_unconfirmed(context, record):
            continue
        lifetime_hours = record.lifetime_hours or default_lifetime
        checked_out = lifetime_start(context, record)
        if context.now - checked_out >= lifetime_hours * 3600:
            # Checked again in the move: the user may have extended the lifetime since.
            context.take_out_of_service(hostname, "running", f"lifetime of {lifetime_hours} hours expired",
                                        lifetime_ended=default_lifetime)
        elif hostname not in context.inventory and not context.elsewhere(record):
            # A VM made where its pool no longer looks (manager/placement.py) is not in this
            # inventory; it stays its user's.
            context.drop(hostname, "running", GONE_WHILE_RUNNING, gone=True)
        else:
            next_look[hostname] = record, inventory_view.next_look(record, context.now,
                                                                   checked_out + lifetime_hours * 3600)
    context.store.schedule_running(context.pool.name, next_look)
    # A completed VM never runs again: its next look, if a pass scheduled one, goes.
    context.report.looks_forgotten = [host for host in context.snapshot.hostnames("completed") if host not in next_look]


def lifetime_start(context: PassContext, record: VMRecord) -> float:
    """When the running VM's lifetime began: its checkout. When that time is unreadable (text,
    nan or inf written in Redis by hand or a bug: ``VMRecord.checkout`` is None), the time it
    entered running (its score in the pool's running set, written by every path into running;
    move.lua counts from the same), so its lifetime still ends. Without either, now: it is
    never reaped on a guess (a VM in use is never destroyed early)."""
    entered = finite_number(context.snapshot.members.get("running", {}).get(record.name))
    for start in (record.checkout, entered):
        if start is not None:
            return start
    return context.now


def _return_unconfirmed(context: PassContext, record: VMRecord) -> bool:
    """A VM whose checkout was never confirmed by its deadline: the request that took it
    answered 503 (its answer from Redis was lost), so nobody has it. Back to ready."""
    deadline = finite_number(record.raw.get("confirm_by"))
    # An unreadable deadline (broken in Redis by hand) reads as none: the VM stays its user's.
    if deadline is None or deadline > context.now:
        return False
    returned = context.store.release_checkout(record.raw.get("checkout_id", ""), [record.name], context.now,
                                              unconfirmed_only=True)
    if returned:
        context.report.returned.extend(returned)
        logger.warning("VM returned to ready: its checkout was never confirmed",
                       extra={"pool": context.pool.name, "hostname": record.name})
    context.checkpoint("returned")
    return bool(returned)
