"""What a vSphere admin would do by hand, for the vSphere tests: make or delete a VM outside
vmpool, put a host in maintenance, look at a VM's details, end our session.

The service never calls these, so they live with the tests and stay out of the Lambda package.
All waits are on vCenter tasks and bounded.
"""

from __future__ import annotations

from typing import Any

from pyVmomi import vim

from chalicelib.providers.base import ProviderError, TaskState, TaskStatus
from chalicelib.providers.vsphere import hosts, inventory, tasks, vms
from chalicelib.providers.vsphere.connection import Connection
from chalicelib.providers.vsphere.provider import VSphereProvider
from tests.support import eventually


def wait_task(provider: VSphereProvider, ref: str | None, timeout: float = 30.0) -> None:
    """Read a task reference until it is done (each read advances destroy chains). Raises
    ProviderError with the task's error when it fails."""
    if ref is None:
        return
    status = eventually(lambda: _done(provider.task_status(ref)), timeout, f"task {ref}")
    if status.state is TaskState.ERROR:
        raise ProviderError(status.error or "task failed")


def _done(status: TaskStatus) -> TaskStatus | None:
    return status if status.done else None


def _finish(connection: Connection, task: Any) -> Any:
    def finished() -> dict[str, Any] | None:
        found = inventory.one(connection, task, ["info.state", "info.error", "info.result"]) or {}
        return found if found.get("info.state") in (vim.TaskInfo.State.success, vim.TaskInfo.State.error) else None

    found = eventually(finished, 30, "a vCenter task")
    if found.get("info.state") == vim.TaskInfo.State.error:
        raise ProviderError(str(found.get("info.error")))
    return found.get("info.result")


def create_vm(provider: VSphereProvider, folder_path: str, name: str, power_on: bool = True,
              annotation: str | None = None) -> None:
    """Create a small VM at ``<folder_path>/<name>`` (e.g. ``DC0/vm/vmpool/pool-a``), creating the
    folders, on the datacenter's first datastore and cluster, with ``annotation`` when given."""

    def create(connection: Connection) -> None:
        datacenter, _, folder = folder_path.partition("/vm")
        target = inventory.ensure_folder(connection, datacenter, folder.strip("/"), create=True)
        if target is None:
            raise ProviderError(f"no datacenter {datacenter!r} to hold folder {folder_path!r}")
        dc = inventory.find(connection, datacenter)
        facts = inventory.one(connection, dc, ["datastore", "hostFolder"]) or {}
        datastore = (inventory.one(connection, facts["datastore"][0], ["name"]) or {})["name"]
        computes = (inventory.one(connection, facts["hostFolder"], ["childEntity"]) or {})["childEntity"]
        pool = (inventory.one(connection, computes[0], ["resourcePool"]) or {})["resourcePool"]
        spec = vim.vm.ConfigSpec(
            name=name, guestId="otherGuest", numCPUs=1, memoryMB=128,
            files=vim.vm.FileInfo(vmPathName=f"[{datastore}]"), annotation=annotation,
        )
        vm = _finish(connection, target.CreateVM_Task(config=spec, pool=pool))
        if power_on:
            _finish(connection, vm.PowerOnVM_Task())

    provider._run(f"create {folder_path}/{name}", create)


def create_folder(provider: VSphereProvider, folder_path: str) -> None:
    """Create the folders of ``folder_path`` (e.g. ``DC0/vm/vmpool/pool-a``) that are missing."""
    datacenter, _, folder = folder_path.partition("/vm")
    provider._run(f"create {folder_path}",
                  lambda connection: inventory.ensure_folder(connection, datacenter, folder.strip("/"), create=True))


def delete_vm(provider: VSphereProvider, vm_path: str) -> None:
    """Power off and destroy the VM at an inventory path, waiting for it."""

    def delete(connection: Connection) -> None:
        vm = inventory.find(connection, vm_path)
        if vm is None:
            raise ProviderError(f"no VM at {vm_path}")
        wait_ref = vms.destroy(connection, vm)
        if wait_ref is not None:
            eventually(lambda: _done(tasks.status(connection, wait_ref)), 5, f"{vm_path} to be destroyed")

    provider._run(f"delete {vm_path}", delete)


def exists(provider: VSphereProvider, path: str) -> bool:
    """Whether anything is at an inventory path."""
    return bool(provider._run(f"find {path}", lambda connection: inventory.find(connection, path) is not None))


def _host_named(connection: Connection, host_name: str) -> Any:
    """The host of that name, found anywhere in the inventory (StopIteration when none is)."""
    view = inventory.container_view(connection, connection.content.rootFolder, vim.HostSystem, True)
    try:
        found = inventory.view_contents(connection, view, vim.HostSystem, ["name"])
    finally:
        inventory.destroy_view(view)
    return next(h["_obj"] for h in found if h.get("name") == host_name)

def set_maintenance(provider: VSphereProvider, host_name: str, on: bool) -> None:
    """Put a host (found by name anywhere) in or out of maintenance mode."""

    def switch(connection: Connection) -> None:
        host = _host_named(connection, host_name)
        task = host.EnterMaintenanceMode_Task(timeout=0) if on else host.ExitMaintenanceMode_Task(timeout=0)
        _finish(connection, task)

    provider._run(f"maintenance {host_name}", switch)


def host_cpu_percent(provider: VSphereProvider) -> dict[str, float]:
    """Each host's CPU use in percent, as host selection reads it (by host name)."""

    def read(connection: Connection) -> dict[str, float]:
        surveyed = hosts.survey(connection, connection.content.rootFolder, limit=100.0)
        return {host.name: host.cpu_percent for host in surveyed}

    return provider._run("host CPU use", read)


def host_names(provider: VSphereProvider) -> list[str]:
    """Every host's name, sorted."""

    def names(connection: Connection) -> list[str]:
        view = inventory.container_view(connection, connection.content.rootFolder, vim.HostSystem, True)
        try:
            return sorted(h["name"] for h in inventory.view_contents(connection, view, vim.HostSystem, ["name"]))
        finally:
            inventory.destroy_view(view)

    return provider._run("list hosts", names)


def vm_details(provider: VSphereProvider, vm_path: str) -> dict[str, Any] | None:
    """A VM's annotation, extraConfig (as a dict), power state, disks (GB) and snapshot names."""

    def details(connection: Connection) -> dict[str, Any] | None:
        vm = inventory.find(connection, vm_path)
        if vm is None:
            return None
        found = inventory.one(connection, vm, ["config.annotation", "config.extraConfig", "runtime.powerState"]) or {}
        return {
            "annotation": found.get("config.annotation"),
            "extra_config": {o.key: o.value for o in found.get("config.extraConfig") or []},
            "power_state": str(found.get("runtime.powerState")),
            "disks_gb": vms.disks(connection, vm),
            "snapshots": vms.snapshot_names(connection, vm),
        }

    return provider._run(f"inspect {vm_path}", details)


def end_session(provider: VSphereProvider) -> None:
    """Log our shared session out on the vCenter side, as an expiry would."""
    provider._run("log out", lambda connection: connection.logout())


def rename(provider: VSphereProvider, path: str, new_name: str) -> None:
    """Rename the VM or folder at an inventory path, as an admin would in the vSphere client."""

    def renaming(connection: Connection) -> None:
        found = inventory.find(connection, path)
        if found is None:
            raise ProviderError(f"nothing at {path}")
        _finish(connection, found.Rename_Task(newName=new_name))

    provider._run(f"rename {path}", renaming)


def relocate(provider: VSphereProvider, vm_path: str, host_name: str) -> None:
    """Move the VM at an inventory path to the host of that name (a vMotion someone else made)."""

    def relocating(connection: Connection) -> None:
        host = _host_named(connection, host_name)
        vm = inventory.find(connection, vm_path)
        if vm is None:
            raise ProviderError(f"no VM at {vm_path}")
        _finish(connection, vm.RelocateVM_Task(spec=vim.vm.RelocateSpec(host=host)))

    provider._run(f"relocate {vm_path}", relocating)


def busy_work(provider: VSphereProvider, vm_path: str, count: int) -> None:
    """Run ``count`` tasks that change nothing (empty reconfigures) on the VM at an inventory
    path: other users' work filling vCenter's list of recent tasks."""

    def reconfiguring(connection: Connection) -> None:
        vm = inventory.find(connection, vm_path)
        if vm is None:
            raise ProviderError(f"no VM at {vm_path}")
        for _ in range(count):
            vm.ReconfigVM_Task(spec=vim.vm.ConfigSpec())

    provider._run(f"busy work on {vm_path}", reconfiguring)


def move(provider: VSphereProvider, path: str, folder_path: str) -> None:
    """Move the VM or folder at an inventory path into the folder at ``folder_path`` (made if
    missing)."""

    def moving(connection: Connection) -> None:
        found = inventory.find(connection, path)
        datacenter, _, folder = folder_path.partition("/vm")
        target = inventory.ensure_folder(connection, datacenter, folder.strip("/"), create=True)
        if found is None or target is None:
            raise ProviderError(f"nothing at {path} or {folder_path}")
        _finish(connection, target.MoveIntoFolder_Task(list=[found]))

    provider._run(f"move {path}", moving)


def power_off(provider: VSphereProvider, vm_path: str) -> None:
    """Power off the VM at an inventory path."""

    def off(connection: Connection) -> None:
        vm = inventory.find(connection, vm_path)
        if vm is None:
            raise ProviderError(f"no VM at {vm_path}")
        _finish(connection, vm.PowerOffVM_Task())

    provider._run(f"power off {vm_path}", off)


def destroy(provider: VSphereProvider, path: str) -> None:
    """Destroy whatever is at an inventory path (a folder with everything in it, a template...)."""

    def destroying(connection: Connection) -> None:
        found = inventory.find(connection, path)
        if found is None:
            raise ProviderError(f"nothing at {path}")
        if isinstance(found, vim.Folder):
            view = inventory.container_view(connection, found, vim.VirtualMachine, recursive=True)
            try:
                inside = inventory.view_contents(connection, view, vim.VirtualMachine, ["runtime.powerState"])
            finally:
                inventory.destroy_view(view)
            for vm in inside:
                if vm.get("runtime.powerState") == vim.VirtualMachine.PowerState.poweredOn:
                    _finish(connection, vm["_obj"].PowerOffVM_Task())
        _finish(connection, found.Destroy_Task())

    provider._run(f"destroy {path}", destroying)


def copy_vm(provider: VSphereProvider, source_path: str, folder_path: str, name: str, template: bool) -> str:
    """Clone the VM or template at ``source_path`` into ``folder_path`` (made if missing) as
    ``name``, powered off, its disks flat, and mark the copy a template when ``template``, as an
    admin making a new template does. Returns the copy's managed object id."""

    def copying(connection: Connection) -> str:
        source = inventory.find(connection, source_path)
        datacenter, _, folder = folder_path.partition("/vm")
        target = inventory.ensure_folder(connection, datacenter, folder.strip("/"), create=True)
        if source is None or target is None:
            raise ProviderError(f"nothing at {source_path} or {folder_path}")
        dc = inventory.find(connection, datacenter)
        host_folder = (inventory.one(connection, dc, ["hostFolder"]) or {})["hostFolder"]
        computes = (inventory.one(connection, host_folder, ["childEntity"]) or {})["childEntity"]
        pool = (inventory.one(connection, computes[0], ["resourcePool"]) or {})["resourcePool"]
        spec = vim.vm.CloneSpec(location=vim.vm.RelocateSpec(pool=pool), powerOn=False, template=False)
        copy = _finish(connection, source.CloneVM_Task(folder=target, name=name, spec=spec))
        if template:
            copy.MarkAsTemplate()
        return str(copy._moId)

    return provider._run(f"copy {source_path} to {folder_path}/{name}", copying)


def template_state(provider: VSphereProvider, path: str) -> tuple[bool, list[int]] | None:
    """Whether the VM at ``path`` is a template, and for each of its disks how many backings
    stand behind its own (0: flat; 1: one delta layer); None when nothing is there."""

    def read(connection: Connection) -> tuple[bool, list[int]] | None:
        found = inventory.find(connection, path)
        if found is None:
            return None
        facts = inventory.one(connection, found, ["config.template", "config.hardware.device"]) or {}
        depths = []
        for disk in facts.get("config.hardware.device") or []:
            if isinstance(disk, vim.vm.device.VirtualDisk):
                depth, backing = 0, disk.backing
                while getattr(backing, "parent", None) is not None:
                    depth, backing = depth + 1, backing.parent
                depths.append(depth)
        return bool(facts.get("config.template")), depths

    return provider._run(f"inspect {path}", read)
