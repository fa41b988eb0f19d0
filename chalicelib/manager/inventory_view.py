"""Which VMs a reconcile pass looks at, so that a steady pass costs the same whatever the pool's
size (issue 14, item 4), and a pass with churn costs what changed.

A pass compares the provider's whole inventory (``list_vms``) with every VM of the pool, as it
always did, when the provider offers no change token (``Provider.inventory_changes`` is None:
vSphere today, and the dummy with ``getvm_poweroff_percent``), when the pool's last whole
comparison is ``vm_checktime`` minutes old or was never made, or when the provider cannot say
what changed since the token the pool's last pass saw. Otherwise it looks only at the VMs that
may need something (``Store.pool_snapshot_due``): pending, completed and discovered VMs; ready VMs
whose ready_ttl has passed; running VMs due for a look (their checkout's confirmation deadline,
their lifetime's end, a migration: kept in ``running_due`` by the checkout and by each pass); and
every VM the provider says was added, changed or removed since the last pass's token. The
provider is asked about those VMs only (``find_vms``).

The trade-off, bounded by ``vm_checktime`` (1 minute by default; vmpooler checks a ready VM
once per ``vm_checktime`` too): a VM whose removal the provider reports while a checkout or
another pass changes its state (the pass then cannot tell whether its inventory predates the
change, and leaves it), a VM the provider has without a record, and a running VM whose lifetime
a user shortened are seen at the next whole comparison. A VM that changed in the provider is
looked at in the next pass; a VM in use is never dropped on a partial view: a VM is dropped as
gone only when the provider was asked about it in this pass and said it is not there.
"""

from __future__ import annotations

import dataclasses

from chalicelib.config import PoolConfig, ServiceConfig
from chalicelib.providers.base import InventoryChanges, Provider, VMInfo
from chalicelib.store import PoolSnapshot, Store, VMRecord
from chalicelib.store.records import finite_number


def changes(provider: Provider, pool: PoolConfig, service: ServiceConfig, now: float,
            inventory_checked: str) -> InventoryChanges | None:
    """The provider's token and the VMs changed since the pool's last pass (names None: compare
    the whole inventory), or None when the provider has no token. ``inventory_checked``: the
    pool's mark (``Store.begin_pass``); ``service``: the ServiceConfig (``vm_checktime``)."""
    token, _, compared_at = inventory_checked.partition(" ")
    period = service.vm_checktime * 60
    recent = bool(token) and 0 <= now - _seconds(compared_at) < period
    return provider.inventory_changes(pool, token if recent else None)


def due_only(store: Store, provider: Provider, pool: PoolConfig, now: float,
             changed: frozenset[str]) -> tuple[PoolSnapshot, dict[str, VMInfo]]:
    """The snapshot of the VMs that may need something, and the provider's view of them."""
    snapshot = store.pool_snapshot_due(pool.name, now, pool.ready_ttl_minutes * 60, sorted(changed))
    return snapshot, {vm.name: vm for vm in provider.find_vms(pool, snapshot.tracked | changed)}


def checked(store: Store, pool: str, now: float, inventory_checked: str, seen: InventoryChanges | None) -> None:
    """Note the token a pass compared the pool's VMs with (the time only for a whole comparison)."""
    if seen is None:
        return
    compared_at = repr(now) if seen.names is None else inventory_checked.partition(" ")[2]
    mark = f"{seen.token} {compared_at}"
    if mark != inventory_checked:  # a pass that saw no change leaves the mark as it found it
        store.mark_inventory_checked(pool, mark)


def list_whole(store: Store, pool: str, snapshot: PoolSnapshot, state: str) -> PoolSnapshot:
    """``snapshot`` listing every VM of ``state`` (for a step that needs them all)."""
    if len(snapshot.members.get(state, {})) >= snapshot.count(state):
        return snapshot
    return dataclasses.replace(snapshot, members={**snapshot.members, state: store.state_members(pool, state)})


def next_look(record: VMRecord, now: float, lifetime_end: float) -> float:
    """When a pass must next look at a running VM that stays running: its lifetime's end, its
    checkout's confirmation deadline if sooner, the next pass while it has a migration."""
    if record.raw.get("migration"):
        return now
    deadline = finite_number(record.raw.get("confirm_by"))
    return min(lifetime_end, deadline) if deadline is not None else lifetime_end


def _seconds(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return float("-inf")
