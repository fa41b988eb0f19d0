"""``create_template_delta_disks``: a delta disk layer on the template, as vmpooler does it.

A linked clone shares its source's disks read-only. From a template with a current snapshot the
clone links to the snapshot's disks; a template without one has writable flat disks, and vCenter
then copies the child-most disk whole: every "linked" clone is a full copy. vmpooler
(``add_delta_disk_layer_on_all_disks``) puts a delta disk (a redo log, like a snapshot's) in front
of each of the template's disks once; clones then link to the read-only base disks. Each disk is
replaced by one whose backing is a new file on the same datastore with the old backing as parent,
in one ReconfigVM_Task, started and not waited for.

vCenter reconfigures only VMs, not templates: a template is turned into a VM on its own host
and resource pool first (MarkAsVirtualMachine, immediate), and back into a template once the
layer is there.

``prepare`` only reads: it returns a reference naming the template (its id, its inventory path
and whether it is a template now), which the manager records before anything changes in
vCenter. Each read of that reference (``status``) then moves the preparation on from what
vCenter shows, not from what a previous read did, so a pass killed, or a session ending, between
any two calls is finished by the next read: a VM with flat disks is reconfigured, a VM with the
layer is made a template again when it was one. Every read first checks that the template's path
still leads to the recorded id: vCenter gives old ids to new objects after a restart (or a
restore from a backup), and a preparation never converts or reconfigures a VM that is not the one
it recorded.
"""

from __future__ import annotations

from typing import Any

from pyVmomi import vim, vmodl

from chalicelib.config import PoolConfig, ServiceConfig
from chalicelib.providers.base import TaskState, TaskStatus
from chalicelib.providers.failures import FailureKind
from chalicelib.providers.vsphere import clone as clones
from chalicelib.providers.vsphere import inventory, tasks
from chalicelib.providers.vsphere.connection import Connection, describe_fault, fault_kind

REF_KIND = "template"
"""``template:<vm>:<0|1>:<path>``: the template's id, whether it was a template (1) when the
preparation was planned, and its inventory path (last: names may hold ``:``)."""

_BUSY = (vim.TaskInfo.State.running, vim.TaskInfo.State.queued)


def is_ref(ref: str) -> bool:
    """Whether ``ref`` is a template preparation's reference (read with ``status``)."""
    return ref.startswith(f"{REF_KIND}:")


def flat_disks(devices: list[Any]) -> list[Any]:
    """The template's disks without a delta layer (no parent backing)."""
    return [
        device for device in devices
        if isinstance(device, vim.vm.device.VirtualDisk) and getattr(device.backing, "parent", None) is None
    ]


def _with_delta(disk: Any) -> list[Any]:
    """Device changes replacing ``disk`` by a delta disk whose parent is its current backing."""
    old = disk.backing
    datastore = str(old.fileName or "").split("]")[0] + "]" if old.fileName else ""
    delta = vim.vm.device.VirtualDisk(
        key=disk.key, controllerKey=disk.controllerKey, unitNumber=disk.unitNumber,
        capacityInKB=disk.capacityInKB,
        backing=vim.vm.device.VirtualDisk.FlatVer2BackingInfo(
            fileName=datastore, diskMode=old.diskMode or "persistent",
            thinProvisioned=getattr(old, "thinProvisioned", None), parent=old,
        ),
    )
    spec = vim.vm.device.VirtualDeviceSpec
    return [
        spec(operation=spec.Operation.remove, device=disk),
        spec(operation=spec.Operation.add, fileOperation=spec.FileOperation.create, device=delta),
    ]


def prepare(connection: Connection, config: Any, service: ServiceConfig, pool: PoolConfig) -> str | None:
    """A reference to the preparation when the option is on, the pool clones linked, and the
    template has no snapshot to link to and flat disks; None when there is nothing to do.
    Changes nothing: reading the reference does the work."""
    if not service.create_template_delta_disks or not clones.is_linked(pool, service):
        return None
    datacenter = clones.datacenter_of(connection, config, pool)
    path = clones.template_path(datacenter, pool.template)
    template = inventory.find(connection, path)
    if not isinstance(template, vim.VirtualMachine):
        return None  # the clone reports the missing template
    facts = inventory.one(
        connection, template, ["config.hardware.device", "snapshot.currentSnapshot", "config.template"],
    ) or {}
    if facts.get("snapshot.currentSnapshot") is not None:
        return None
    if not flat_disks(list(facts.get("config.hardware.device") or [])):
        return None
    return f"{REF_KIND}:{template._moId}:{int(bool(facts.get('config.template')))}:{path}"


def status(connection: Connection, ref: str) -> TaskStatus:
    """Move the preparation one step on and say where it is: RUNNING while vCenter works on the
    template, SUCCESS once it has the layer (and is a template again when it was one), ERROR
    when it cannot be done (kind ``template`` when the path no longer leads to the recorded VM:
    the template was removed or replaced, or its id is another VM's now)."""
    vm_id, was_template, path = (ref.split(":", 3) + ["", "", ""])[1:4]
    template = inventory.find(connection, path)
    if not isinstance(template, vim.VirtualMachine) or template._moId != vm_id:
        return TaskStatus(TaskState.ERROR, f"template {path} is no longer the VM being prepared ({vm_id}): "
                          "removed or replaced", FailureKind.TEMPLATE)
    facts = inventory.one(connection, template, ["config.hardware.device", "config.template", "runtime.host",
                                                  "recentTask"])
    if facts is None:
        return TaskStatus(TaskState.ERROR, f"template {path} was removed while being prepared", FailureKind.TEMPLATE)
    recent = list(facts.get("recentTask") or [])
    if any(task.get("info.state") in _BUSY for task in inventory.properties(connection, recent, tasks.TASK_INFO)):
        return TaskStatus(TaskState.RUNNING)  # ours or an admin's: look again once vCenter is done
    try:
        if flat_disks(list(facts.get("config.hardware.device") or [])):
            return _reconfigure(connection, template, facts, was_template == "1")
        if was_template == "1" and not facts.get("config.template"):
            template.MarkAsTemplate()
    except vmodl.MethodFault as fault:
        if isinstance(fault, vim.fault.NotAuthenticated):
            raise  # the session is gone: the connection logs in and reads again
        return _failed(template, was_template == "1", f"template {path}: vCenter said {describe_fault(fault)}",
                       fault_kind(fault))
    return TaskStatus(TaskState.SUCCESS)


def _reconfigure(connection: Connection, template: Any, facts: dict[str, Any], was_template: bool) -> TaskStatus:
    """Make the template a VM when it is one, and start the reconfigure adding the layer."""
    if facts.get("config.template"):
        host = facts.get("runtime.host")
        owner = (inventory.one(connection, host, ["parent"]) or {}).get("parent") if host is not None else None
        resource_pool = (inventory.one(connection, owner, ["resourcePool"]) or {}).get("resourcePool") \
            if owner is not None else None
        if resource_pool is None:
            return TaskStatus(TaskState.ERROR, "cannot tell which resource pool to reconfigure the template in",
                              FailureKind.PLACEMENT)
        template.MarkAsVirtualMachine(pool=resource_pool, host=host)
    changes = [change for disk in flat_disks(list(facts.get("config.hardware.device") or []))
               for change in _with_delta(disk)]
    task = template.ReconfigVM_Task(spec=vim.vm.ConfigSpec(deviceChange=changes))
    # Not waited for; but a task vCenter refused at once (a simulator ends them at once) is
    # seen now: with no trace of it on the VM, the next read would only start it again.
    started = tasks.task_state(connection, task._moId)
    if started is not None and started.state is TaskState.ERROR:
        return _failed(template, was_template, started.error or "the reconfigure failed", started.kind)
    return TaskStatus(TaskState.RUNNING)


def _failed(template: Any, was_template: bool, message: str, kind: FailureKind) -> TaskStatus:
    """The preparation cannot be done: the template is left a template, as it was found."""
    if was_template:
        try:
            template.MarkAsTemplate()
        except vmodl.MethodFault:
            pass  # still a template, or vCenter refuses: the error below is what matters
    return TaskStatus(TaskState.ERROR, message, kind)
