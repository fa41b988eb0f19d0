"""``create_template_delta_disks``: a delta disk layer on the template, as vmpooler does it.

A linked clone shares its source's disks read-only. From a template with a current snapshot the
clone links to the snapshot's disks; a template without one has writable flat disks, and vCenter
then copies the child-most disk whole: every "linked" clone is a full copy. vmpooler
(``add_delta_disk_layer_on_all_disks``) puts a delta disk (a redo log, like a snapshot's) in front
of each of the template's disks once; clones then link to the read-only base disks. Each disk is
replaced by one whose backing is a new file on the same datastore with the old backing as parent,
in one ReconfigVM_Task, started and not waited for.

vCenter reconfigures only VMs, not templates: a template is turned into a VM on its own host
and resource pool first (MarkAsVirtualMachine, immediate), and back into a template when a
later pass reads the task done (``tasks.delta_ref``). A pass killed in between leaves a VM with
the delta layer, which clones just as well.
"""

from __future__ import annotations

from typing import Any

from pyVmomi import vim, vmodl

from chalicelib.config import PoolConfig, ServiceConfig
from chalicelib.providers.vsphere import clone as clones
from chalicelib.providers.vsphere import inventory, tasks
from chalicelib.providers.vsphere.connection import Connection


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
    """Start adding the delta layer when the option is on, the pool clones linked, and the
    template has no snapshot to link to and flat disks; None when there is nothing to do."""
    if not service.create_template_delta_disks or not clones.is_linked(pool, service):
        return None
    datacenter = clones.datacenter_of(connection, config, pool)
    path = clones.template_path(datacenter, pool.template)
    template = inventory.find(connection, path)
    if not isinstance(template, vim.VirtualMachine):
        return None  # the clone reports the missing template
    facts = inventory.one(
        connection, template, ["config.hardware.device", "snapshot.currentSnapshot", "config.template", "runtime.host"],
    ) or {}
    if facts.get("snapshot.currentSnapshot") is not None:
        return None
    disks = flat_disks(list(facts.get("config.hardware.device") or []))
    if not disks:
        return None
    changes = [change for disk in disks for change in _with_delta(disk)]
    was_template = bool(facts.get("config.template"))
    if was_template:
        host = facts.get("runtime.host")
        owner = (inventory.one(connection, host, ["parent"]) or {}).get("parent") if host is not None else None
        resource_pool = (inventory.one(connection, owner, ["resourcePool"]) or {}).get("resourcePool") \
            if owner is not None else None
        if resource_pool is None:
            raise LookupError(f"template {path}: cannot tell which resource pool to reconfigure it in")
        template.MarkAsVirtualMachine(pool=resource_pool, host=host)
    try:
        task = template.ReconfigVM_Task(spec=vim.vm.ConfigSpec(deviceChange=changes))
    except vmodl.MethodFault:
        if was_template:
            template.MarkAsTemplate()
        raise
    return tasks.delta_ref(task, template, was_template)
