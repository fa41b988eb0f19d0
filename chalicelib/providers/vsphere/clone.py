"""Starting a clone the way vmpooler does.

Template ``<dc>/vm/<template>`` into ``<dc>/vm/<folder>`` (created when ``create_folders``),
linked (``moveChildMostDiskBacking``, from the template's current snapshot when it has one) or
full (``moveAllDiskBackingsAndConsolidate``), on the configured datastore, resource pool or
cluster (``clone_target``) and network, optionally on a selected host, with
``guestinfo.hostname`` (and the pool's ``snapshot_mainMem_*``) in extraConfig and a JSON
annotation, powered on. The task is started and
its reference returned; nobody waits for it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Callable

from pyVmomi import vim, vmodl

from chalicelib.config import PoolConfig, ProviderConfig, ServiceConfig
from chalicelib.providers import ownership
from chalicelib.providers.failures import FailureKind
from chalicelib.providers.vsphere import inventory, tasks
from chalicelib.providers.vsphere.config import vsphere_settings
from chalicelib.providers.vsphere.connection import Connection, describe_fault, fault_kind
from chalicelib.providers.vsphere.hosts import HOSTS_TRIED, HostSelector, HostsUnreached

LINKED = "moveChildMostDiskBacking"
FULL = "moveAllDiskBackingsAndConsolidate"


class PickedHostUnreached(Exception):
    """vCenter refused a clone because it cannot reach the host selection picked for it."""

    def __init__(self, fault: BaseException) -> None:
        super().__init__(describe_fault(fault))
        self.fault = fault


class CloneRefused(Exception):
    """The clone cannot start for a reason an operator must fix (missing template, folder...)."""

    def __init__(self, message: str, kind: FailureKind) -> None:
        super().__init__(message)
        self.kind = kind


def datacenter_of(connection: Connection, config: ProviderConfig, pool: PoolConfig) -> str:
    """The pool's datacenter, else the provider's, else the first one."""
    return pool.datacenter or vsphere_settings(config.settings).datacenter or inventory.default_datacenter(connection)


def template_path(datacenter: str, template: str) -> str:
    """vmpooler templates are relative to the datacenter's vm folder; accept full paths too."""
    template = template.strip("/")
    if template.startswith(f"{datacenter}/vm/"):
        return template
    return f"{datacenter}/vm/{template}"


class FolderInOtherDatacenter(LookupError):
    """A pool's folder names, by its datacenter path, another datacenter than the pool's."""


def pool_folder(connection: Connection, datacenter: str, folder: str) -> str:
    """The pool's ``folder`` relative to ``<datacenter>/vm``: as vmpooler documents it
    (``pools/x``) or with the datacenter's path as some configs write it (``DC1/vm/pools/x``).
    Raises FolderInOtherDatacenter when that path names another datacenter of vCenter than the
    pool's (clones are made in the pool's datacenter); costs a call only then.

    A folder written with the pool's own datacenter's path stays the nested folder
    ``<datacenter>/vm/<folder as written>`` while that folder exists (one call to find it):
    releases up to 60eceaa cloned there, and still do while a deploy or a rollback runs both.
    Moving the pool at the upgrade made each release drop the other's VMs as gone (a checked-out
    one too) and then destroy them as found in its folder. Where no earlier release made the
    nested folder, the folder is ``<datacenter>/vm/<folder>`` (docs/vsphere.md, "Configuration keys")."""
    folder = folder.strip("/")
    root = f"{datacenter}/vm"
    if folder == root or folder.startswith(f"{root}/"):
        if isinstance(inventory.find(connection, f"{root}/{folder}"), vim.Folder):
            return folder
        return folder[len(root):].strip("/")
    named, marker, _ = folder.partition("/vm/")
    if not marker and folder.endswith("/vm"):
        named = folder[: -len("/vm")]
    if named and named != folder and isinstance(inventory.find(connection, named), vim.Datacenter):
        raise FolderInOtherDatacenter(
            f"folder {folder} is in datacenter {named}, not in the pool's datacenter {datacenter}: "
            f"set the pool's datacenter to {named}, or name a folder in {datacenter}")
    return folder


def is_linked(pool: PoolConfig, service: ServiceConfig) -> bool:
    """The pool's ``create_linked_clone`` when set (false really means full clones), else the
    global ``create_linked_clones``."""
    value = pool.create_linked_clone
    if value is not None:
        return bool(value)
    return service.create_linked_clones


def extra_config(pool: PoolConfig, hostname: str) -> list[Any]:
    """The clone's extraConfig, as vmpooler's: ``guestinfo.hostname`` (the guest names itself),
    and the pool's ``snapshot_mainMem_ioBlockPages`` / ``snapshot_mainMem_iowait`` as
    ``mainMem.ioBlockPages`` / ``mainMem.iowait`` (how a snapshot with memory is written) when set."""
    options = {"guestinfo.hostname": hostname}
    if pool.snapshot_io_block_pages is not None:
        options["mainMem.ioBlockPages"] = str(pool.snapshot_io_block_pages)
    if pool.snapshot_iowait is not None:
        options["mainMem.iowait"] = str(pool.snapshot_iowait)
    return [vim.option.OptionValue(key=key, value=value) for key, value in options.items()]


def annotation(pool: PoolConfig, now: float, deployment: str) -> str:
    """The clone's annotation: its pool, template and creation time, and who made it (vmpool,
    which ``deployment`` of it: chalicelib/providers/ownership.py)."""
    created = datetime.fromtimestamp(now, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    return json.dumps({"pool": pool.name, **ownership.annotation_fields(deployment), "template": pool.template,
                       "created": created})


def _resource_pool_of(connection: Connection, found: Any, what: str) -> Any:
    if isinstance(found, vim.ResourcePool):
        return found
    if isinstance(found, vim.ComputeResource):
        pool = (inventory.one(connection, found, ["resourcePool"]) or {}).get("resourcePool")
        if pool is not None:
            return pool
    raise CloneRefused(f"{what} is not a cluster, host or resource pool", FailureKind.PLACEMENT)


def _cluster_of(connection: Connection, pool: Any) -> Any:
    """The compute resource (cluster or standalone host) that owns a resource pool."""
    return (inventory.one(connection, pool, ["owner"]) or {}).get("owner")


def _find_in(connection: Connection, datacenter: str, root: str, name: str, kind: type, what: str,
             failure: FailureKind) -> Any | None:
    """The object at ``<datacenter>/<root>/<name>``; for a plain name (no ``/``) not there, the
    one of ``kind`` of that name anywhere under ``<datacenter>/<root>``, as vmpooler finds a
    ``clone_target`` (a cluster in a host folder) or a ``network`` (a port group in a network
    folder). None when there is none; refused when the name is ambiguous."""
    found = inventory.find(connection, f"{datacenter}/{root}/{name}")
    if found is not None or "/" in name:
        return found
    container = inventory.find(connection, f"{datacenter}/{root}")
    if container is None:
        return None
    matches = inventory.named_under(connection, container, kind, name)
    if len(matches) > 1:
        raise CloneRefused(f"{what} {name} names {len(matches)} objects under {datacenter}/{root}: "
                           f"give its path there", failure)
    return matches[0] if matches else None


def _nic_change(connection: Connection, datacenter: str, network_name: str, devices: list[Any]) -> Any:
    network = _find_in(connection, datacenter, "network", network_name, vim.Network, "network",
                       FailureKind.NETWORK)
    if network is None:
        raise CloneRefused(f"network {datacenter}/network/{network_name} not found", FailureKind.NETWORK)
    nics = [device for device in devices if isinstance(device, vim.vm.device.VirtualEthernetCard)]
    if not nics:
        raise CloneRefused("the template has no network card to connect to network " + network_name,
                           FailureKind.TEMPLATE)
    nic = nics[0]
    if isinstance(network, vim.dvs.DistributedVirtualPortgroup):
        found = inventory.one(connection, network, ["key", "config.distributedVirtualSwitch"]) or {}
        switch = inventory.one(connection, found.get("config.distributedVirtualSwitch"), ["uuid"]) or {}
        nic.backing = vim.vm.device.VirtualEthernetCard.DistributedVirtualPortBackingInfo(
            port=vim.dvs.PortConnection(portgroupKey=found.get("key"), switchUuid=switch.get("uuid"))
        )
    else:
        nic.backing = vim.vm.device.VirtualEthernetCard.NetworkBackingInfo(deviceName=network_name, network=network)
    return vim.vm.device.VirtualDeviceSpec(operation=vim.vm.device.VirtualDeviceSpec.Operation.edit, device=nic)


OTHER_DATACENTERS_LOOKED_IN = 10
"""How many other datacenters a missing template is looked for in, to say where it is."""


def _template_missing(connection: Connection, datacenter: str, template: str, path: str) -> str:
    """Why the template at ``path`` cannot be cloned, naming the datacenter that has it when the
    pool's does not (a template path naming another datacenter, or a template of that name there):
    clones are made in the pool's datacenter, whatever the path. Costs calls on this path only."""
    message = f"template {path} not found (vCenter has no VM at that inventory path)"
    named = template.strip("/")
    others = [name for name in inventory.datacenter_names(connection) if name != datacenter]
    elsewhere = next((name for name in others if named.startswith(f"{name}/vm/")), None)
    if elsewhere is not None:
        return (f"template {named} is in datacenter {elsewhere}, not in the pool's datacenter {datacenter}: "
                f"set the pool's datacenter to {elsewhere}, or name a template in {datacenter}")
    found = [name for name in others[:OTHER_DATACENTERS_LOOKED_IN]
             if isinstance(inventory.find(connection, f"{name}/vm/{named}"), vim.VirtualMachine)]
    if found:
        message += (f"; datacenter {found[0]} has {found[0]}/vm/{named}, but the pool clones in {datacenter}: "
                    f"set the pool's datacenter to use it")
    return message


@dataclass
class Plan:
    """What every clone of a pool's batch shares, looked up once (``Plans``): the template and its
    current snapshot, the folder, the resource pool, datastore and cluster, the network change."""

    stub: Any
    """The stub the objects were found through: a plan found through another (vCenter restarted,
    a new connection) is looked up again."""
    datacenter: str
    template: Any
    folder: Any
    resource_pool: Any
    datastore: Any | None
    cluster: Any | None
    snapshot: Any | None
    device_change: list[Any]


class Plans:
    """The plan of one batch of a pool's clones (``VSphereProvider.clone_vms``): made by the
    batch's first clone, a refusal included (a missing template is not looked for in every
    datacenter again for each clone), used by the others. Before, each clone looked up the
    template, its facts, the folder and the placement again: 6 of its 7 SOAP calls."""

    def __init__(self) -> None:
        self._plan: Plan | CloneRefused | None = None

    def get(self, connection: Connection, make: Callable[[], Plan]) -> Plan:
        kept = self._plan
        if kept is None or (isinstance(kept, Plan) and kept.stub is not connection.stub):
            try:
                kept = make()
            except CloneRefused as refused:
                kept = refused
            self._plan = kept
        if isinstance(kept, CloneRefused):
            raise CloneRefused(str(kept), kept.kind)  # a fresh one: each clone's own traceback
        return kept

    def forget(self) -> None:
        """Look everything up again for the next clone (an object of the plan is gone)."""
        self._plan = None


def send(
    connection: Connection,
    config: ProviderConfig,
    service: ServiceConfig,
    selector: HostSelector,
    pool: PoolConfig,
    hostname: str,
    now: float,
    sending: Callable[[bool], None] = lambda sent: None,
    plans: Plans | None = None,
) -> str | tuple[Any, Any]:
    """Send the clone's ``CloneVM_Task``: its task and the folder it clones into, or, for a clone
    vCenter cannot start, a failed reference. ``plans``: the batch's (``Plans``), else looked up
    for this clone alone. ``sending(True)`` is called just before ``CloneVM_Task`` is sent: a
    transport failure after it may have left vCenter cloning (the provider then raises
    AnswerLost), one before it started nothing; ``sending(False)`` when vCenter refused it (a
    fault: it started nothing) and the clone is tried again, so that a failure of the second try
    before its own ``CloneVM_Task`` is not taken for a lost answer."""
    plans = plans if plans is not None else Plans()

    def attempt() -> tuple[Any, Any]:
        try:
            return _send(connection, config, service, selector, pool, hostname, now, sending, plans)
        except vmodl.fault.ManagedObjectNotFound:
            # Likely an object found before that is gone: a host of the selection's cache or
            # the batch's plan (vCenter restarted, the host removed, the folder deleted). Found
            # again once. Nothing was started: vCenter refused.
            sending(False)
            selector.forget()
            plans.forget()
            return _send(connection, config, service, selector, pool, hostname, now, sending, plans)

    try:
        for _ in range(HOSTS_TRIED):
            try:
                return attempt()
            except PickedHostUnreached as unreached:
                # vCenter cannot reach the host picked (now avoided): sent to another one.
                # Nothing was started: vCenter refused.
                sending(False)
                fault = unreached.fault
        return tasks.failed_ref(f"vCenter refused the clone: {describe_fault(fault)}", FailureKind.HOST)
    except CloneRefused as refused:
        return tasks.failed_ref(str(refused), refused.kind)
    except LookupError as missing:
        return tasks.failed_ref(str(missing), FailureKind.OTHER)
    except vmodl.MethodFault as fault:
        if isinstance(fault, vim.fault.NotAuthenticated):
            raise  # the session is gone: the connection logs in and starts again
        return tasks.failed_ref(f"vCenter refused the clone: {describe_fault(fault)}", fault_kind(fault))


def plan(connection: Connection, config: ProviderConfig, service: ServiceConfig, pool: PoolConfig) -> Plan:
    """Look up what the pool's clones need (``Plan``); CloneRefused when something is missing."""
    datacenter = datacenter_of(connection, config, pool)
    path = template_path(datacenter, pool.template)
    template = inventory.find(connection, path)
    if template is None or not isinstance(template, vim.VirtualMachine):
        # Looked for only now: the happy path pays no call for it.
        if not isinstance(inventory.find(connection, datacenter), vim.Datacenter):
            raise CloneRefused(f"datacenter {datacenter} not found (the pool's or provider's datacenter)",
                               FailureKind.PLACEMENT)
        raise CloneRefused(_template_missing(connection, datacenter, pool.template, path), FailureKind.TEMPLATE)
    create_folders = service.create_folders
    try:
        relative = pool_folder(connection, datacenter, pool.folder)
    except FolderInOtherDatacenter as elsewhere:
        raise CloneRefused(str(elsewhere), FailureKind.PLACEMENT) from None
    folder = inventory.ensure_folder(connection, datacenter, relative, create_folders)
    if folder is None:
        hint = "" if create_folders else " (set create_folders: true to create it)"
        raise CloneRefused(f"folder {datacenter}/vm/{relative} not found{hint}", FailureKind.PLACEMENT)

    wanted = ["runtime.host", "snapshot.currentSnapshot", "resourcePool"]
    network_name = pool.network
    if network_name:
        wanted.append("config.hardware.device")
    facts = inventory.one(connection, template, wanted) or {}

    # Resource pool: the pool's `pool`, else the cluster in `clone_target`, else the template's.
    resource_pool_name = pool.resource_pool
    clone_target = pool.clone_target or service.clone_target
    if resource_pool_name:
        found = inventory.find(connection, f"{datacenter}/host/{resource_pool_name}")
        if found is None:
            raise CloneRefused(f"resource pool {datacenter}/host/{resource_pool_name} not found",
                               FailureKind.PLACEMENT)
        resource_pool = _resource_pool_of(connection, found, f"{datacenter}/host/{resource_pool_name}")
    elif clone_target:
        found = _find_in(connection, datacenter, "host", clone_target, vim.ComputeResource, "clone_target",
                         FailureKind.PLACEMENT)
        if found is None:
            raise CloneRefused(f"clone_target {datacenter}/host/{clone_target} not found", FailureKind.PLACEMENT)
        resource_pool = _resource_pool_of(connection, found, f"clone_target {clone_target}")
    elif facts.get("resourcePool") is not None:
        resource_pool = facts["resourcePool"]
    else:
        # Templates have no resource pool of their own: use their host's cluster's.
        host = facts.get("runtime.host")
        owner = (inventory.one(connection, host, ["parent"]) or {}).get("parent") if host is not None else None
        if owner is None:
            raise CloneRefused("cannot tell where to place the clone: set the pool's clone_target or pool",
                               FailureKind.PLACEMENT)
        resource_pool = _resource_pool_of(connection, owner, "the template's host")

    datastore = None
    datastore_name = pool.datastore
    if datastore_name:
        datastore = inventory.find(connection, f"{datacenter}/datastore/{datastore_name}")
        if datastore is None:
            raise CloneRefused(f"datastore {datacenter}/datastore/{datastore_name} not found",
                               FailureKind.PLACEMENT)

    cluster = _cluster_of(connection, resource_pool) if service.manage_host_selection else None
    device_change = [
        _nic_change(connection, datacenter, str(network_name), list(facts.get("config.hardware.device") or []))
    ] if network_name else []
    return Plan(stub=connection.stub, datacenter=datacenter, template=template, folder=folder,
                resource_pool=resource_pool, datastore=datastore, cluster=cluster,
                snapshot=facts.get("snapshot.currentSnapshot"), device_change=device_change)


def _send(
    connection: Connection,
    config: ProviderConfig,
    service: ServiceConfig,
    selector: HostSelector,
    pool: PoolConfig,
    hostname: str,
    now: float,
    sending: Callable[[bool], None],
    plans: Plans,
) -> tuple[Any, Any]:
    planned = plans.get(connection, lambda: plan(connection, config, service, pool))
    relocate = vim.vm.RelocateSpec(pool=planned.resource_pool)
    if planned.datastore is not None:
        relocate.datastore = planned.datastore
    host = None
    if planned.cluster is not None:
        try:
            host = selector.pick(connection, planned.cluster, (planned.datacenter, planned.cluster._moId),
                                 service.utilization_limit)
        except LookupError as none_eligible:
            kind = FailureKind.HOST if isinstance(none_eligible, HostsUnreached) else FailureKind.CAPACITY
            raise CloneRefused(str(none_eligible), kind) from None
        relocate.host = host.ref

    linked = is_linked(pool, service)
    relocate.diskMoveType = LINKED if linked else FULL
    spec_config = vim.vm.ConfigSpec(
        annotation=annotation(pool, now, ownership.deployment_of(service)),
        extraConfig=extra_config(pool, hostname),
    )
    if planned.device_change:
        spec_config.deviceChange = planned.device_change
    spec = vim.vm.CloneSpec(location=relocate, config=spec_config, powerOn=True, template=False)
    if linked and planned.snapshot is not None:
        spec.snapshot = planned.snapshot
    sending(True)
    try:
        task = planned.template.CloneVM_Task(folder=planned.folder, name=hostname, spec=spec)
    except vmodl.MethodFault as fault:
        if host is not None and fault_kind(fault) is FailureKind.HOST:
            selector.avoid(host)
            raise PickedHostUnreached(fault) from None
        raise
    if host is not None:
        selector.clone_sent(task, host)  # its task may fail later for the host: avoided then too
    return task, planned.folder
