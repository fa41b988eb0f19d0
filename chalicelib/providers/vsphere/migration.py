"""Moving a checked-out VM off a busy host (vmpooler's ``migration_limit``), without waiting.

The VM's cluster is surveyed with the same rules and cache as host selection for clones
(``hosts.HostSelector``): a candidate host is eligible (connected, not in maintenance, green, no
configIssue, CPU and memory below ``utilization_limit``) and has the same CPU model as the VM's
host, so a live migration is possible. The VM moves to the least used candidate when its own host
is not eligible any more, or is busier than that candidate by at least ``MIN_GAIN_PERCENT``
points: a move for a point or two would cost a vMotion for nothing.
"""

from __future__ import annotations

from typing import Any

from pyVmomi import vim, vmodl

from chalicelib.providers.base import Migration, TargetChosen, no_target_noted
from chalicelib.providers.failures import FailureKind
from chalicelib.providers.vsphere import inventory, tasks
from chalicelib.providers.vsphere.connection import Connection, fault_kind
from chalicelib.providers.vsphere.hosts import HOSTS_TRIED, HostSelector

RELOCATES = frozenset({"VirtualMachine.relocate", "VirtualMachine.relocateVm"})
"""The ``descriptionId`` of a RelocateVM_Task's task: vCenter's, and vcsim's (named after its
method). A DRS move is another task (``Drm.ExecuteVMotionLRO``)."""
CLOCK_SKEW_SECONDS = 60.0
"""Margin on how long ago a move was queued: vCenter's clock and ours run at slightly different
rates, and the slot's take came a little before the move was sent."""

MIN_GAIN_PERCENT = 5.0
"""How much less loaded (percentage points, the higher of CPU and memory) the target must be."""


def start(connection: Connection, selector: HostSelector, datacenter: str, limit: float, vm: Any,
          chosen: TargetChosen = no_target_noted) -> Migration | None:
    """Start RelocateVM_Task to the least used compatible host, or None when the VM stays;
    ``chosen`` is called with the target's name before the task is asked for."""
    placed = (inventory.one(connection, vm, ["runtime.host"]) or {}).get("runtime.host")
    if placed is None:
        return None
    cluster = (inventory.one(connection, placed, ["parent"]) or {}).get("parent")
    if not isinstance(cluster, vim.ClusterComputeResource):
        return None  # a standalone host: nowhere to go
    for tried in range(1, HOSTS_TRIED + 1):
        surveyed = selector.hosts(connection, cluster, (datacenter, cluster._moId), limit)
        current = next((host for host in surveyed if host.ref._moId == placed._moId), None)
        candidates = [
            host for host in surveyed
            if selector.usable(host) and host.ref._moId != placed._moId
            and (current is None or host.cpu_model == current.cpu_model)
        ]
        if not candidates:
            return None
        target = min(candidates, key=lambda host: (host.load, host.name))
        if current is not None and current.eligible and current.load - target.load < MIN_GAIN_PERCENT:
            return None
        chosen(target.name)
        try:
            task = vm.RelocateVM_Task(spec=vim.vm.RelocateSpec(host=target.ref))
        except vmodl.MethodFault as fault:
            if fault_kind(fault) is not FailureKind.HOST or tried == HOSTS_TRIED:
                raise
            # vCenter cannot reach the target: avoided (by clones too), the next one tried.
            selector.avoid(target)
            continue
        from_host = current.name if current is not None else placed._moId
        return Migration(tasks.migrate_ref(connection, task, vm, target.ref), from_host, target.name)
    return None


def recent_relocations(connection: Connection, vm: Any, within: float) -> list[str]:
    """References of the RelocateVM tasks on ``vm`` vCenter queued in the last ``within``
    seconds (and CLOCK_SKEW_SECONDS more) by its own clock, oldest first, from the VM's own recent
    tasks (``recentTask``: a handful), never the task manager's list of every recent task vCenter
    runs (hundreds on a busy vCenter, each read whole). DRS moves are other tasks (another
    ``descriptionId``): never among them."""
    recent = (inventory.one(connection, vm, ["recentTask"]) or {}).get("recentTask") or []
    found = inventory.properties(connection, list(recent),
                                 ["info.descriptionId", "info.entity", "info.queueTime"]) if recent else []
    vcenter_now = tasks.unix_time(vim.ServiceInstance("ServiceInstance", connection.stub).CurrentTime())
    earliest = vcenter_now - within - CLOCK_SKEW_SECONDS
    moves = [task for task in found
             if task.get("info.descriptionId") in RELOCATES and task.get("info.entity") is not None
             and task["info.entity"]._moId == vm._moId
             and tasks.unix_time(task.get("info.queueTime")) >= earliest]
    moves.sort(key=lambda task: tasks.unix_time(task.get("info.queueTime")))
    return [tasks.known_ref(task["_obj"], task.get("info.queueTime")) for task in moves]
