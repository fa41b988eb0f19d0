"""Operations on one pool VM: destroy, add a disk, snapshots. Each starts a vCenter task and
returns its reference without waiting; the VM is found by its inventory path."""

from __future__ import annotations

from typing import Any, Callable, Iterator

from pyVmomi import vim, vmodl

from chalicelib.providers.vsphere import inventory, tasks
from chalicelib.providers.vsphere.connection import Connection


class VMNotFound(LookupError):
    pass


Sending = Callable[[bool], None]
"""Told True just before a call that starts a vCenter task is sent (a transport failure after it
may have left vCenter doing it: the provider raises AnswerLost), False when vCenter answered it
with a fault (it started nothing)."""


def _not_sending(sent: bool) -> None:
    return None


def _send(sending: Sending, call: Callable[[], Any]) -> Any:
    """``call()``, a method starting a vCenter task, with ``sending`` told around it (``Sending``)."""
    sending(True)
    try:
        return call()
    except vmodl.MethodFault:
        sending(False)  # vCenter answered: it refused (or the session is gone), and did nothing
        raise


def vm_path(datacenter: str, folder: str, hostname: str) -> str:
    return "/".join(part for part in (datacenter, "vm", folder.strip("/"), hostname) if part)


def find_vm(connection: Connection, datacenter: str, folder: str, hostname: str) -> Any | None:
    found = inventory.find(connection, vm_path(datacenter, folder, hostname))
    return found if isinstance(found, vim.VirtualMachine) else None


def require_vm(connection: Connection, datacenter: str, folder: str, hostname: str) -> Any:
    vm = find_vm(connection, datacenter, folder, hostname)
    if vm is None:
        raise VMNotFound(f"VM {vm_path(datacenter, folder, hostname)} not found")
    return vm


def destroy(connection: Connection, vm: Any) -> str | None:
    """Power off if needed, then destroy; returns a reference whose reads drive the chain, or
    None when the VM vanished meanwhile (nothing left to destroy)."""
    found = inventory.one(connection, vm, ["name", "runtime.powerState"])
    if found is None:
        return None
    state = found.get("runtime.powerState")
    if state != vim.VirtualMachine.PowerState.poweredOff:
        return tasks.destroy_ref(vm, vm.PowerOffVM_Task(), str(found.get("name", "")))
    return tasks.recorded(connection, vm.Destroy_Task())


DISK_TASK_KEY = "vmpool.disk_task"
"""The VM's extraConfig key its last disk reconfigure set to the manager's task id, in the same
spec as the disk: a pass that died before recording the task's ref can be told whether vCenter
added the disk (``applied``), all or nothing as one reconfigure is."""


def add_disk(connection: Connection, vm: Any, size_gb: int, task_key: str = "",
             sending: Sending = _not_sending) -> str:
    """A new thin disk of ``size_gb`` on the first SCSI controller with a free unit number, in the
    VM's own datastore directory (vmpooler's add_disk); ``task_key`` noted as ``DISK_TASK_KEY``;
    ``sending`` told around ``ReconfigVM_Task`` (``Sending``)."""
    found = inventory.one(connection, vm, ["config.hardware.device", "config.files.vmPathName"]) or {}
    devices = list(found.get("config.hardware.device") or [])
    controllers = [d for d in devices if isinstance(d, vim.vm.device.VirtualSCSIController)]
    if not controllers:
        raise LookupError("the VM has no SCSI controller to attach a disk to")
    controller = controllers[0]
    used = {d.unitNumber for d in devices if getattr(d, "controllerKey", None) == controller.key}
    unit = next(n for n in range(16) if n != 7 and n not in used)  # unit 7 is the controller's own
    datastore = str(found.get("config.files.vmPathName") or "").split("]")[0].lstrip("[")
    disk = vim.vm.device.VirtualDisk(
        key=-1,
        controllerKey=controller.key,
        unitNumber=unit,
        capacityInKB=size_gb * 1024 * 1024,
        backing=vim.vm.device.VirtualDisk.FlatVer2BackingInfo(
            diskMode="persistent", thinProvisioned=True, fileName=f"[{datastore}]" if datastore else ""
        ),
    )
    change = vim.vm.device.VirtualDeviceSpec(
        operation=vim.vm.device.VirtualDeviceSpec.Operation.add,
        fileOperation=vim.vm.device.VirtualDeviceSpec.FileOperation.create,
        device=disk,
    )
    noted = [vim.option.OptionValue(key=DISK_TASK_KEY, value=task_key)] if task_key else []
    spec = vim.vm.ConfigSpec(deviceChange=[change], extraConfig=noted)
    return tasks.recorded(connection, _send(sending, lambda: vm.ReconfigVM_Task(spec=spec)))


def applied(connection: Connection, vm: Any, kind: str, key: str) -> bool:
    """Whether the disk asked for with task ``key`` (``kind`` "disk") or the snapshot named
    ``key`` ("snapshot") is on the VM."""
    if kind == "snapshot":
        return key in snapshot_names(connection, vm)
    found = inventory.one(connection, vm, ["config.extraConfig"]) or {}
    return any(option.key == DISK_TASK_KEY and option.value == key for option in found.get("config.extraConfig") or [])


def create_snapshot(connection: Connection, vm: Any, name: str, sending: Sending = _not_sending) -> str:
    """A snapshot with memory, quiesced when Tools can (vmpooler's settings); ``sending`` told
    around ``CreateSnapshot_Task`` (``Sending``)."""
    return tasks.recorded(connection, _send(sending, lambda: vm.CreateSnapshot_Task(
        name=name, description="vmpool", memory=True, quiesce=True)))


def _walk(snapshots: list[Any]) -> Iterator[Any]:
    for item in snapshots:
        yield item
        yield from _walk(list(item.childSnapshotList or []))


def revert_snapshot(connection: Connection, vm: Any, name: str, sending: Sending = _not_sending) -> str:
    """Revert to the snapshot named ``name``; ``sending`` told around ``RevertToSnapshot_Task``."""
    found = inventory.one(connection, vm, ["snapshot"]) or {}
    info = found.get("snapshot")
    for item in _walk(list(info.rootSnapshotList or []) if info is not None else []):
        if item.name == name:
            return tasks.recorded(connection, _send(sending, item.snapshot.RevertToSnapshot_Task))
    raise LookupError(f"snapshot {name} not found on the VM")


def disks(connection: Connection, vm: Any) -> list[int]:
    """Sizes (GB) of the VM's disks, for tests and diagnostics."""
    found = inventory.one(connection, vm, ["config.hardware.device"]) or {}
    return [
        int(d.capacityInKB // (1024 * 1024))
        for d in found.get("config.hardware.device") or []
        if isinstance(d, vim.vm.device.VirtualDisk)
    ]


def snapshot_names(connection: Connection, vm: Any) -> list[str]:
    found = inventory.one(connection, vm, ["snapshot"]) or {}
    info = found.get("snapshot")
    return [item.name for item in _walk(list(info.rootSnapshotList or []) if info is not None else [])]
