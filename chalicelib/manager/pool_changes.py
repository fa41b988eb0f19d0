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
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from chalicelib.config import PoolConfig
from chalicelib.manager import inventory_view
from chalicelib.store import VMRecord
from chalicelib.store.pool_overrides import PoolOverrides

if TYPE_CHECKING:
    from chalicelib.manager.reconcile import _Pass


def stale_reason(record: VMRecord, pool: PoolConfig, reset_at: float | None) -> str:
    """Why a ready or pending VM no longer belongs in the pool as it is now ("" if it does)."""
    if record.template != pool.template:
        return f"pool template changed to {pool.template or '(none)'}"
    if reset_at is not None and (record.clone_start or 0) < reset_at:
        return "pool reset"
    return ""


def drain_and_retire(pass_: "_Pass") -> None:
    """Drain stale VMs, then retire ready VMs above the pool's size, oldest first.

    Ready VMs' records are read only when the pool's template or reset time changed since every
    ready VM was last checked (the pool's ``ready_checked`` mark): a VM reaches ready only from
    pending, and pending VMs are checked every pass, so between changes no ready VM can be stale."""
    reset_at = PoolOverrides(pass_.store).get(pass_.pool.name).reset_at
    mark = f"{pass_.pool.template}\n{reset_at!r}"
    check_ready = pass_.snapshot.ready_checked != mark
    if check_ready or pass_.snapshot.count("ready") > pass_.pool.size:
        pass_.snapshot = inventory_view.list_whole(pass_.store, pass_.pool.name, pass_.snapshot, "ready")
    report = pass_.report
    candidates = pass_.snapshot.hostnames("pending")
    if check_ready:
        candidates += pass_.snapshot.hostnames("ready")
        pass_.load_records(pass_.snapshot.hostnames("ready"))
    for hostname in candidates:
        record = pass_.record(hostname)
        if record is None or record.raw.get("request") or hostname in report.completed:
            continue
        reason = stale_reason(record, pass_.pool, reset_at)
        if reason:
            # A pending VM this pass made ready is drained from ready.
            state = "ready" if hostname in report.became_ready else record.state
            pass_.take_out_of_service(hostname, state, reason)
    if check_ready:
        pass_.store.mark_ready_checked(pass_.pool.name, mark)
    ready_members = pass_.snapshot.members.get("ready", {})
    if len(ready_members) <= pass_.pool.size:
        return  # nothing above the size (the usual case): no need to sort thousands of VMs
    ready = sorted(ready_members.items(), key=lambda item: item[1])
    staying = [(hostname, since) for hostname, since in ready
               if hostname not in report.completed and hostname not in report.dropped]
    decision = pass_.size_decision
    why = f"pool size reduced to {pass_.pool.size}" + (f" ({decision.reason})" if decision.drain_grace_seconds else "")
    for hostname, since in staying[: max(len(staying) - pass_.pool.size, 0)]:
        if pass_.now - since >= decision.drain_grace_seconds:
            pass_.take_out_of_service(hostname, "ready", why)
