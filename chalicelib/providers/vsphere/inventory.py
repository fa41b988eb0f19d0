"""Reading vCenter's inventory in bulk: PropertyCollector retrievals and inventory-path lookups.

Property access on pyVmomi objects (``vm.runtime.powerState``) costs one SOAP call per
attribute; vmpooler's per-VM lookups made big pools slow and hammered vCenter. Everything here
asks for many properties of many objects in one RetrievePropertiesEx call instead.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Sequence

from pyVmomi import vim, vmodl

from chalicelib.providers.vsphere.connection import Connection

VM_PROPERTIES = (
    "name",
    "config.template",
    "config.annotation",
    "runtime.powerState",
    "runtime.host",
    "guest.ipAddress",
    "guest.hostName",
    "guest.toolsRunningStatus",
)

GUEST_NET = "guest.net"
"""Every address of a VM's interfaces (``guest_addresses``), read for the pools that name a
``dns_plugin`` only: each VM's interfaces come whole (MAC, network, DNS settings, every address
with its state), and on vcsim they made a 200-VM folder's read take about 1.8 times as long."""

UNUSABLE_ADDRESS_STATES = frozenset({"tentative", "duplicate", "invalid", "inaccessible", "deprecated"})
"""States of a guest's address (``NetIpConfigInfoIpAddressStatus``) no record should lead to: not
yet checked unique on the link, found taken by another machine, or on its way out (an IPv6
temporary address past its preferred lifetime)."""

TEMPORARY_ADDRESS_ORIGINS = frozenset({"random"})
"""Origins of a guest's address (``NetIpConfigInfoIpAddressOrigin``) no record should lead to: an
IPv6 temporary ("privacy", RFC 4941) address, which the guest replaces within hours and uses for
its own outgoing connections only."""


def guest_addresses(nics: Any) -> tuple[str, ...]:
    """Every address a VM's guest reports on its network interfaces (``guest.net``), in the
    order reported: per interface its ``ipConfig.ipAddress[]`` (leaving out addresses in an
    UNUSABLE_ADDRESS_STATES state and temporary ones: ``publishable_address``), or its plain
    ``ipAddress[]`` list when VMware Tools gave no ipConfig (older Tools, vcsim)."""
    found: list[str] = []
    for nic in nics or ():
        configured = getattr(getattr(nic, "ipConfig", None), "ipAddress", None) or ()
        if configured:
            found.extend(str(item.ipAddress) for item in configured if item.ipAddress and publishable_address(item))
        else:
            found.extend(str(address) for address in getattr(nic, "ipAddress", None) or () if address)
    return tuple(found)


def primary_address(ip: Any, nics: Any) -> str | None:
    """The VM's primary address (``guest.ipAddress``), unless its interfaces (``guest.net``, when
    read) report it as one no record should lead to (``publishable_address``: an IPv6 guest's
    temporary address may be the one VMware Tools names primary): then the first address they
    report that is not (``guest_addresses``), or the primary still when they report none."""
    primary = str(ip) if ip else None
    refused = {str(item.ipAddress) for nic in nics or ()
               for item in getattr(getattr(nic, "ipConfig", None), "ipAddress", None) or ()
               if item.ipAddress and not publishable_address(item)}
    if primary is None or primary not in refused:
        return primary
    return next(iter(guest_addresses(nics)), primary)


def publishable_address(item: Any) -> bool:
    """Whether a guest's configured address (``NetIpConfigInfoIpAddress``) may be a VM's record:
    neither in an UNUSABLE_ADDRESS_STATES state nor of a TEMPORARY_ADDRESS_ORIGINS origin."""
    return (str(getattr(item, "state", None) or "") not in UNUSABLE_ADDRESS_STATES
            and str(getattr(item, "origin", None) or "") not in TEMPORARY_ADDRESS_ORIGINS)


HOST_PROPERTIES = (
    "name",
    "runtime.inMaintenanceMode",
    "runtime.connectionState",
    "overallStatus",
    "configIssue",
    "summary.quickStats.overallCpuUsage",
    "summary.quickStats.overallMemoryUsage",
    "summary.hardware.cpuMhz",
    "summary.hardware.numCpuCores",
    "summary.hardware.memorySize",
    "summary.hardware.cpuModel",
)


def _collect(connection: Connection, spec: Any) -> list[Any]:
    """RetrievePropertiesEx, following continuation tokens so the result is always complete."""
    collector = connection.content.propertyCollector
    result = collector.RetrievePropertiesEx([spec], vmodl.query.PropertyCollector.RetrieveOptions())
    objects: list[Any] = []
    while result is not None:
        objects.extend(result.objects or [])
        if not result.token:
            break
        result = collector.ContinueRetrievePropertiesEx(result.token)
    return objects


def _as_dict(content: Any) -> dict[str, Any]:
    values = {prop.name: prop.val for prop in content.propSet or []}
    values["_obj"] = content.obj
    return values


def properties(connection: Connection, objects: Sequence[Any], paths: Iterable[str]) -> list[dict[str, Any]]:
    """Properties of known objects (all of one type), in one call. Deleted objects are left out."""
    if not objects:
        return []
    spec = vmodl.query.PropertyCollector.FilterSpec(
        objectSet=[vmodl.query.PropertyCollector.ObjectSpec(obj=obj, skip=False) for obj in objects],
        propSet=[vmodl.query.PropertyCollector.PropertySpec(type=type(objects[0]), pathSet=list(paths))],
        reportMissingObjectsInResults=True,
    )
    try:
        return [_as_dict(content) for content in _collect(connection, spec)]
    except vmodl.fault.ManagedObjectNotFound:
        if len(objects) == 1:
            return []
    # One of them vanished between the read that named it and this one (a task vCenter dropped
    # from a VM's recentTask, a VM destroyed): each is read alone, the missing left out. Before,
    # the fault failed the whole read: a template preparation's or a destroy's state could not be
    # read while one of the VM's recent tasks expired under it.
    return [found for obj in objects for found in properties(connection, [obj], paths)]


def one(connection: Connection, obj: Any, paths: Iterable[str]) -> dict[str, Any] | None:
    """Properties of one object in one call, or None when it no longer exists."""
    found = properties(connection, [obj], paths)
    return found[0] if found else None


def referenced(connection: Connection, obj: Any, path: str, kind: type, paths: Iterable[str]) -> list[dict[str, Any]]:
    """Properties of the objects of ``kind`` that ``obj``'s property ``path`` references (a VM's
    ``recentTask``), in one retrieval: not one call for the references, then one for them."""
    through = vmodl.query.PropertyCollector.TraversalSpec(name="referenced", path=path, skip=False, type=type(obj))
    spec = vmodl.query.PropertyCollector.FilterSpec(
        objectSet=[vmodl.query.PropertyCollector.ObjectSpec(obj=obj, skip=True, selectSet=[through])],
        propSet=[vmodl.query.PropertyCollector.PropertySpec(type=kind, pathSet=list(paths))],
    )
    return [_as_dict(content) for content in _collect(connection, spec)]


def view_contents(connection: Connection, view: Any, kind: type, paths: Iterable[str]) -> list[dict[str, Any]]:
    """Properties of every object of ``kind`` in a container view, in one retrieval."""
    traverse = vmodl.query.PropertyCollector.TraversalSpec(name="view", path="view", skip=False, type=type(view))
    spec = vmodl.query.PropertyCollector.FilterSpec(
        objectSet=[vmodl.query.PropertyCollector.ObjectSpec(obj=view, skip=True, selectSet=[traverse])],
        propSet=[vmodl.query.PropertyCollector.PropertySpec(type=kind, pathSet=list(paths))],
    )
    return [_as_dict(content) for content in _collect(connection, spec)]


class NamesNotReadInTime(LookupError):
    """``vm_names_under`` ran out of time between two pages of its retrieval."""


def vm_names_under(connection: Connection, containers: Sequence[Any], out_of_time: Callable[[], bool]) -> set[str]:
    """The names of every VM anywhere under ``containers`` (datacenters), in one retrieval over
    a container view of each, made and destroyed for it: 2 calls a container and 1 (a page of
    the answer) more, whatever the number of folders. Only ``name`` is read: a few dozen bytes
    a VM. Raises NamesNotReadInTime (the retrieval cancelled) once ``out_of_time`` between pages:
    a partial answer is never returned."""
    if not containers:
        return set()
    views = [container_view(connection, container, vim.VirtualMachine, recursive=True) for container in containers]
    collector = vmodl.query.PropertyCollector
    try:
        spec = collector.FilterSpec(
            objectSet=[collector.ObjectSpec(obj=view, skip=True, selectSet=[
                collector.TraversalSpec(name="view", path="view", skip=False, type=type(view))]) for view in views],
            propSet=[collector.PropertySpec(type=vim.VirtualMachine, pathSet=["name"])],
        )
        retriever = connection.content.propertyCollector
        result = retriever.RetrievePropertiesEx([spec], collector.RetrieveOptions())
        names: set[str] = set()
        while result is not None:
            names.update(str(prop.val) for content in result.objects or () for prop in content.propSet or ()
                         if prop.name == "name")
            if not result.token:
                break
            if out_of_time():
                retriever.CancelRetrievePropertiesEx(result.token)
                raise NamesNotReadInTime(f"VM names not read in time ({len(names)} read)")
            result = retriever.ContinueRetrievePropertiesEx(result.token)
        return names
    finally:
        for view in views:
            destroy_view(view)


def find(connection: Connection, path: str) -> Any | None:
    """The object at an inventory path (``DC0/vm/pools/a``), or None."""
    return connection.content.searchIndex.FindByInventoryPath(path)


def named_under(connection: Connection, container: Any, kind: type, name: str) -> list[Any]:
    """The objects of ``kind`` named ``name`` anywhere under ``container``, each once (one
    retrieval over a container view made and destroyed for it: three calls)."""
    view = container_view(connection, container, kind, recursive=True)
    try:
        found = view_contents(connection, view, kind, ["name"])
    finally:
        destroy_view(view)
    return list({item["_obj"]._moId: item["_obj"] for item in found if item.get("name") == name}.values())


def container_view(connection: Connection, container: Any, kind: type, recursive: bool) -> Any:
    """A container view of ``kind`` under ``container`` (a session object: cache it per session)."""
    return connection.content.viewManager.CreateContainerView(container, [kind], recursive)


def destroy_view(view: Any) -> None:
    try:
        view.DestroyView()
    except vmodl.MethodFault:
        pass  # the session or the view is already gone: nothing to clean up


def folder_contents(connection: Connection, path: str, paths: Iterable[str]) -> list[dict[str, Any]] | None:
    """Properties of the VMs directly in the folder at ``path`` (None: no folder there), in one
    retrieval over a container view cached for the session.

    A view follows its folder object, not the path: a folder an admin renamed or moved (to keep
    its VMs, say) would go on being listed as the pool's while the clones went to a new folder at
    the path, never seen, timing out for ever. So the same retrieval reads the folder's ancestors'
    names; when they no longer spell ``path`` (or the folder is gone) the path is looked up again.
    """
    for attempt in (1, 2):
        cached = _folder_view(connection, path)
        if cached is None:
            return None
        folder, view, fresh = cached
        try:
            found = _collect(connection, _listing_spec(folder, view, paths))
        except vmodl.fault.ManagedObjectNotFound:
            forget_folder_view(connection, path)  # the folder (hence the view) was deleted
            if attempt == 2:
                raise
            continue
        entities = [_as_dict(content) for content in found]
        vms = [item for item in entities if isinstance(item["_obj"], vim.VirtualMachine)]
        if fresh or _path_of(folder, entities) == path:
            return vms
        forget_folder_view(connection, path)  # renamed or moved away: what is at the path now?
    return None


def _listing_spec(folder: Any, view: Any, paths: Iterable[str]) -> Any:
    """The view's VMs with ``paths``, and the name and parent of the folder and its ancestors."""
    collector = vmodl.query.PropertyCollector
    through_view = collector.TraversalSpec(name="view", path="view", skip=False, type=type(view))
    up_folder = collector.TraversalSpec(
        name="upFolder", path="parent", skip=False, type=vim.Folder,
        selectSet=[collector.SelectionSpec(name="upFolder"), collector.SelectionSpec(name="upDatacenter")])
    up_datacenter = collector.TraversalSpec(
        name="upDatacenter", path="parent", skip=False, type=vim.Datacenter,
        selectSet=[collector.SelectionSpec(name="upFolder")])
    return collector.FilterSpec(
        objectSet=[
            collector.ObjectSpec(obj=view, skip=True, selectSet=[through_view]),
            collector.ObjectSpec(obj=folder, skip=False, selectSet=[up_folder, up_datacenter]),
        ],
        propSet=[
            collector.PropertySpec(type=vim.VirtualMachine, pathSet=list(paths)),
            collector.PropertySpec(type=vim.Folder, pathSet=["name", "parent"]),
            collector.PropertySpec(type=vim.Datacenter, pathSet=["name", "parent"]),
        ],
    )


def _path_of(folder: Any, entities: list[dict[str, Any]]) -> str | None:
    """The inventory path of ``folder`` from its ancestors' names and parents (the root folder,
    the one without a parent, is not part of a path); None when the chain is incomplete."""
    by_id = {item["_obj"]._moId: item for item in entities if not isinstance(item["_obj"], vim.VirtualMachine)}
    names: list[str] = []
    current = by_id.get(folder._moId)
    for _ in range(len(by_id)):
        if current is None:
            return None
        parent = current.get("parent")
        if parent is None:
            return "/".join(reversed(names))
        names.append(str(current.get("name", "")))
        current = by_id.get(parent._moId)
    return None


def _folder_view(connection: Connection, path: str) -> tuple[Any, Any, bool] | None:
    """The folder at ``path``, a container view of the VMs directly in it (a session object,
    cached for the session) and whether the view was made now; None if no folder is there."""
    views: dict[str, tuple[Any, Any]] = connection.cache.setdefault("folder_views", {})
    if path in views:
        folder, view = views[path]
        return folder, view, False
    folder = find(connection, path)
    if folder is None or not isinstance(folder, vim.Folder):
        return None
    views[path] = (folder, container_view(connection, folder, vim.VirtualMachine, recursive=False))
    return folder, views[path][1], True


def forget_folder_view(connection: Connection, path: str) -> None:
    cached = connection.cache.get("folder_views", {}).pop(path, None)
    if cached is not None:
        destroy_view(cached[1])


def host_names(connection: Connection, refs: Iterable[Any]) -> dict[str, str]:
    """Names of hosts by moref value, cached per session; refreshed in one call when a VM sits
    on a host not seen before (new hosts are rare, VMs on them many)."""
    names: dict[str, str] = connection.cache.setdefault("host_names", {})
    missing = [ref for ref in refs if ref is not None and ref._moId not in names]
    if missing:
        unique = list({ref._moId: ref for ref in missing}.values())
        for found in properties(connection, unique, ["name"]):
            names[found["_obj"]._moId] = found.get("name", found["_obj"]._moId)
    return names


def default_datacenter(connection: Connection) -> str:
    """The first datacenter's name (vmpooler's default when none is configured), cached."""
    if "datacenter" not in connection.cache:
        names = datacenter_names(connection)
        if not names:
            raise LookupError("vCenter has no datacenter at its root folder")
        connection.cache["datacenter"] = names[0]
    return str(connection.cache["datacenter"])


def datacenter_names(connection: Connection) -> list[str]:
    """The names of the datacenters at the vCenter root, in its order (two calls)."""
    root = one(connection, connection.content.rootFolder, ["childEntity"]) or {}
    datacenters = [child for child in root.get("childEntity", []) if isinstance(child, vim.Datacenter)]
    names = {found["_obj"]._moId: str(found.get("name")) for found in properties(connection, datacenters, ["name"])}
    return [names[datacenter._moId] for datacenter in datacenters if datacenter._moId in names]


def ensure_folder(connection: Connection, datacenter: str, folder: str, create: bool) -> Any | None:
    """The VM folder ``<dc>/vm/<folder>``; missing parts are created when ``create``."""
    path = f"{datacenter}/vm/{folder}".rstrip("/")
    found = find(connection, path)
    if found is not None or not create:
        return found
    parent = find(connection, f"{datacenter}/vm")
    if parent is None:
        return None
    current = f"{datacenter}/vm"
    for part in [p for p in folder.split("/") if p]:
        current = f"{current}/{part}"
        child = find(connection, current)
        if child is None:
            try:
                child = parent.CreateFolder(part)
            except vim.fault.DuplicateName:
                child = find(connection, current)  # another pass made it meanwhile
            if child is None:
                return None  # made and removed again meanwhile: the next pass tries again
        parent = child
    return parent
