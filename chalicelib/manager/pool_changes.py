"""The reconcile pass's part in runtime pool changes: drain VMs that no longer match the pool.

- A template change (POST /config/pooltemplate): ready and pending VMs cloned from another
  template leave service; repopulate then clones from the new one (each VM records the template
  it was cloned from).
- A reset (POST /poolreset): ready and pending VMs cloned before the reset leave service.
- A smaller size (POST /config/poolsize): the oldest ready VMs above the size leave service.
  Pending ones are left to finish; once ready, any still above the size go too. When the size
  comes from a schedule or demand (sizing/controller.py), only VMs ready for longer than the
  decision's drain grace go: a VM that just booted may still be wanted.

VMs built for on-demand requests are not the pool's and are left alone. Every move is
conditional, so a VM checked out meanwhile is never touched.

A template change or reset fences the pool's ready VMs as it is made (store/pool_overrides.py):
no checkout takes them until the drain of a pass that read the change has run; that drain lifts
the fence. So once the change is answered no checkout hands out a VM of the old template or from
before the reset, whenever the pass runs.
"""

from __future__ import annotations

from chalicelib.config import PoolConfig
from chalicelib.manager import inventory_view
from chalicelib.manager.context import PassContext
from chalicelib.store import VMRecord
from chalicelib.store.pool_overrides import PoolOverrides

DRAINED_STATES = ("pending", "ready")
"""The states a drain takes VMs from: never a VM in use."""


def stale_reason(record: VMRecord, pool: PoolConfig, reset_at: float | None) -> str:
    """Why a ready or pending VM no longer belongs in the pool as it is now ("" if it does)."""
    if record.template != pool.template:
        return f"pool template changed to {pool.template or '(none)'}"
    if reset_at is not None and (record.clone_start or 0) < reset_at:
        return "pool reset"
    return ""


def drain_and_retire(context: PassContext) -> None:
    """Drain stale VMs, then retire ready VMs above the pool's size, oldest first.

    Ready VMs' records are read only when the pool's template or reset time changed since every
    ready VM was last checked (the pool's ``ready_checked`` mark): a VM reaches ready only from
    pending, and pending VMs are checked every pass, so between changes no ready VM can be stale."""
    reset_at = context.overrides.reset_at
    mark = f"{context.pool.template}\n{reset_at!r}"
    check_ready = context.snapshot.ready_checked != mark
    if check_ready or context.snapshot.count("ready") > context.pool.size:
        context.snapshot = inventory_view.list_whole(context.store, context.pool.name, context.snapshot, "ready")
    report = context.report
    candidates = context.snapshot.hostnames("pending")
    if check_ready:
        candidates += context.snapshot.hostnames("ready")
        context.load_records(context.snapshot.hostnames("ready"))
    for hostname in candidates:
        record = context.record(hostname)
        if record is None or record.raw.get("request") or hostname in report.completed:
            continue
        reason = stale_reason(record, context.pool, reset_at)
        if reason:
            # A pending VM this pass made ready is drained from ready.
            state = "ready" if hostname in report.became_ready else record.state
            if state not in DRAINED_STATES:
                continue  # checked out since the pass listed it (its record is read later): the user's now
            # A pending VM's clone may still run: its slot stays taken, and its destroy waits,
            # until vCenter ends the clone (manager/completed.clones_still_running).
            context.take_out_of_service(hostname, state, reason, hold_clone=state == "pending")
    if check_ready:
        context.store.mark_ready_checked(context.pool.name, mark)
    if context.overrides.ready_fence is not None:
        # Every ready VM the change the fence stands for made stale is out of service now (or was
        # checked out before the change): checkouts may take the pool's ready VMs again.
        PoolOverrides(context.store).lift_fence(context.pool.name, context.overrides.ready_fence)
    ready_members = context.snapshot.members.get("ready", {})
    if len(ready_members) <= context.pool.size:
        return  # nothing above the size (the usual case): no need to sort thousands of VMs
    ready = sorted(ready_members.items(), key=lambda item: item[1])
    staying = [(hostname, since) for hostname, since in ready
               if hostname not in report.completed and hostname not in report.dropped]
    decision = context.size_decision
    why = f"pool size reduced to {context.pool.size}"
    if decision.drain_grace_seconds:
        why += f" ({decision.reason})"
    for hostname, since in staying[: max(len(staying) - context.pool.size, 0)]:
        if context.now - since >= decision.drain_grace_seconds:
            context.take_out_of_service(hostname, "ready", why)
