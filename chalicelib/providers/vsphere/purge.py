"""Purge of unconfigured resources (``purge_unconfigured_resources``), vmpooler's cleanup.

Only the *parent folders* of the pools' folders are looked at: a folder or VM directly in one of
them that no pool configures (and the allowlist does not name) is destroyed, VMs powered off
first. Nothing outside those parents is ever touched, and as safety nets a pool whose folder sits
directly in the datacenter's vm folder does not make that root purgeable, and nothing holding a
template or a pool's template path is removed.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Iterable, Sequence

from pyVmomi import vim

from chalicelib.config import PoolConfig, ProviderConfig
from chalicelib.logs import module_logger
from chalicelib.providers.base import TaskState, Tracked, never, nothing_tracked
from chalicelib.providers.ownership import other_deployment
from chalicelib.providers.vsphere import inventory, tasks
from chalicelib.providers.vsphere.clone import FolderInOtherDatacenter, datacenter_of, pool_folder, template_path
from chalicelib.providers.vsphere.connection import Connection

log = module_logger(__name__)


def _spellings(folder: str) -> set[str]:
    """A pool's folder as written, and without a datacenter path in front (``DC0/vm/x``: ``x``)."""
    folder = folder.strip("/")
    _, marker, inside = folder.partition("/vm/")
    return {folder, inside.strip("/")} - {""} if marker else {folder}


PURGE_VM_PROPERTIES = ("name", "config.template", "runtime.powerState", "config.annotation")
"""What the purge reads of each VM: the annotation says which vmpool deployment made it."""


def _ancestors(path: str) -> set[str]:
    parts = [p for p in path.strip("/").split("/") if p]
    return {"/".join(parts[: i + 1]) for i in range(len(parts))}


def _wait(connection: Connection, refs: Iterable[str], out_of_time: Callable[[], bool]) -> None:
    """Wait (bounded by call_timeout, and by the invocation's time) for power-off tasks: a
    folder with running VMs in it cannot be destroyed. Purge is rare and small, so this wait is
    acceptable here."""
    pending = list(refs)
    deadline = time.monotonic() + connection.endpoint.call_timeout
    while pending and time.monotonic() < deadline and not out_of_time():
        pending = [ref for ref in pending if tasks.status(connection, ref).state is TaskState.RUNNING]
        if pending:
            time.sleep(0.5)


def _power_off_all(connection: Connection, vms: list[dict[str, Any]], out_of_time: Callable[[], bool]) -> None:
    started = [
        tasks.plain(vm["_obj"].PowerOffVM_Task())
        for vm in vms
        if vm.get("runtime.powerState") == vim.VirtualMachine.PowerState.poweredOn
    ]
    _wait(connection, started, out_of_time)


class _Stopped(Exception):
    """The invocation's time is nearly out: the purge stops before its next removal."""

    def __init__(self, removed: list[str]) -> None:
        super().__init__("purge stopped: the invocation's time is nearly out")
        self.removed = removed


def purge(
    connection: Connection,
    config: ProviderConfig,
    pools: Sequence[PoolConfig],
    allowlist: Sequence[str],
    tracked: Tracked = nothing_tracked,
    out_of_time: Callable[[], bool] = never,
    deployment: str = "",
) -> list[str]:
    """Destroy what is unconfigured under the pools' parent folders; return the removed paths.
    Stops before its next removal once ``out_of_time`` (a VM being powered off is left for the
    next purge): a purge of many powered-on VMs outlasted a reconcile invocation, which Lambda
    killed mid-way, its pool's lease held and its batch failed.

    ``pools``: every configured pool. Only this provider's pools' parents are looked at, but every
    pool's folder is kept, whichever provider block it uses (two blocks may name one vCenter),
    and the VMs directly in a pool's folder are never purged even where that folder is another
    pool's parent (``vmpool`` and ``vmpool/b``): they are that pool's, in use or ready. Nor is a
    VM ``tracked`` names, nor a folder holding one: a removed pool's folder while it drains, the
    folder a pool moved from (manager/placement.py), may hold a VM its user has checked out.
    Nor is a VM whose annotation names another vmpool ``deployment`` than this one, nor a folder
    holding one (chalicelib/providers/ownership.py): another deployment's pools may share the
    parent folder. A pool's folder may be written with its datacenter's path (``DC0/vm/x``)."""
    allowed = {entry.strip("/") for entry in allowlist if entry}
    # A folder written with its datacenter's path (DC0/vm/pools/x) is kept as pools/x too: which
    # datacenter another provider's pool means is not known here, and keeping more is safe.
    pool_folders = {spelled for pool in pools for spelled in _spellings(pool.folder)}
    every_configured: set[str] = set().union(*(_ancestors(folder) for folder in pool_folders))
    by_datacenter: dict[str, list[PoolConfig]] = {}
    for pool in pools:
        if pool.provider == config.name:
            by_datacenter.setdefault(datacenter_of(connection, config, pool), []).append(pool)
    removed: list[str] = []
    for datacenter, dc_pools in by_datacenter.items():
        protected: set[str] = set()
        parents: set[str] = set()
        for pool in dc_pools:
            try:
                folder = pool_folder(connection, datacenter, pool.folder)
            except FolderInOtherDatacenter as elsewhere:
                log.warning("pool %s: %s; not purging its parent folder", pool.name, elsewhere)
                continue
            template = template_path(datacenter, pool.template)[len(f"{datacenter}/vm/"):]
            protected |= _ancestors(template)
            parent = folder.rpartition("/")[0]
            if parent:
                parents.add(parent)
            else:
                log.warning("pool %s: folder %r is at the vm root; not purging the root", pool.name, folder)
        for parent in sorted(parents):
            try:
                removed += _purge_parent(connection, datacenter, parent, every_configured | protected, allowed,
                                         vms_kept=parent in pool_folders, tracked=tracked, out_of_time=out_of_time,
                                         deployment=deployment)
            except _Stopped as stopped:
                removed += stopped.removed
                log.info("purge stopped: the invocation's time is nearly out; the next purge goes on (%d removed)",
                         len(removed))
                return removed
    return removed


def _purge_parent(connection: Connection, datacenter: str, parent: str, keep: set[str], allowed: set[str],
                  vms_kept: bool, tracked: Tracked = nothing_tracked,
                  out_of_time: Callable[[], bool] = never, deployment: str = "") -> list[str]:
    """Purge ``parent``'s unconfigured children; its VMs are left alone when ``vms_kept`` (the
    parent is itself a pool's folder), and so are VMs another vmpool deployment made, and the
    folders holding one. Raises _Stopped (with what went) once ``out_of_time``."""
    folder = inventory.find(connection, f"{datacenter}/vm/{parent}")
    if not isinstance(folder, vim.Folder):
        return []
    children = list((inventory.one(connection, folder, ["childEntity"]) or {}).get("childEntity") or [])
    removed: list[str] = []
    folders = inventory.properties(connection, [c for c in children if isinstance(c, vim.Folder)], ["name"])
    vms = [] if vms_kept else inventory.properties(
        connection,
        [c for c in children if isinstance(c, vim.VirtualMachine)],
        PURGE_VM_PROPERTIES,
    )
    in_use = set(tracked([str(vm.get("name")) for vm in vms]))
    for vm in vms:
        relative = f"{parent}/{vm.get('name')}"
        if vm.get("config.template") or relative in keep or relative in allowed or vm.get("name") in allowed:
            continue
        if vm.get("name") in in_use:
            log.info("not purging %s/vm/%s: vmpool tracks it", datacenter, relative)
            continue
        owner = other_deployment(vm.get("config.annotation"), deployment)
        if owner is not None:
            log.info("not purging %s/vm/%s: vmpool deployment %s made it", datacenter, relative, owner)
            continue
        if out_of_time():
            raise _Stopped(removed)
        _power_off_all(connection, [vm], out_of_time)
        if out_of_time():
            raise _Stopped(removed)
        vm["_obj"].Destroy_Task()
        removed.append(relative)
    for child in folders:
        relative = f"{parent}/{child.get('name')}"
        if relative in keep or relative in allowed or child.get("name") in allowed:
            continue
        if out_of_time():
            raise _Stopped(removed)
        view = inventory.container_view(connection, child["_obj"], vim.VirtualMachine, recursive=True)
        try:
            inside = inventory.view_contents(connection, view, vim.VirtualMachine, PURGE_VM_PROPERTIES)
        finally:
            inventory.destroy_view(view)
        if any(vm.get("config.template") for vm in inside):
            log.warning("not purging %s/vm/%s: it holds a template", datacenter, relative)
            continue
        owners = {other_deployment(vm.get("config.annotation"), deployment) for vm in inside} - {None}
        if owners:
            log.info("not purging %s/vm/%s: it holds VMs of vmpool deployment %s", datacenter, relative,
                     ", ".join(sorted(str(owner) for owner in owners)))
            continue
        if tracked([str(vm.get("name")) for vm in inside]):
            log.info("not purging %s/vm/%s: it holds VMs vmpool tracks", datacenter, relative)
            continue
        _power_off_all(connection, inside, out_of_time)
        if out_of_time():
            raise _Stopped(removed)
        child["_obj"].Destroy_Task()
        removed.append(relative)
    if removed:
        log.info("purged unconfigured resources in %s/vm/%s: %s", datacenter, parent, ", ".join(removed))
    return removed
