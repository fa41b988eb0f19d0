"""The vSphere provider: the manager's view of a vCenter, through the Provider interface."""

from __future__ import annotations

from typing import Any, Callable, Collection, Mapping, Sequence, TypeVar

from pyVmomi import vim

from chalicelib.auth.service_refusals import RefusedPasswords
from chalicelib.clock import Clock
from chalicelib.config import PoolConfig, ProviderConfig, ServiceConfig
from chalicelib.logs import module_logger
from chalicelib.providers import ownership
from chalicelib.providers.base import (
    UNREACHABLE,
    AnswerLost,
    Asking,
    Migration,
    Provider,
    ProviderError,
    Readiness,
    Started,
    TargetChosen,
    TaskState,
    TaskStatus,
    Tracked,
    VMInfo,
    ask_all,
    never,
    no_target_noted,
    nothing_started,
    nothing_tracked,
)
from chalicelib.providers.failures import FailureKind
from chalicelib.providers.vsphere import clone as clones
from chalicelib.providers.vsphere import connection as connections
from chalicelib.providers.vsphere import inventory, migration, purge, readiness, tasks, templates, under_way, vms
from chalicelib.providers.vsphere.config import vsphere_settings
from chalicelib.providers.vsphere.connection import Connection, Endpoint
from chalicelib.providers.vsphere.hosts import HostSelector

log = module_logger(__name__)

T = TypeVar("T")


TaskReader = Callable[[Connection, Sequence[str]], dict[str, TaskStatus]]
"""A read of many task references on one connection (``tasks.statuses``, ``tasks.destroy_statuses``)."""


class VSphereProvider(Provider):
    """Pools of clones of vSphere templates, on one shared session per vCenter and user."""

    vms_show_while_cloning = True  # vCenter lists a clone's VM during its CloneVM_Task

    def __init__(
        self,
        config: ProviderConfig,
        service: ServiceConfig,
        clock: Clock,
        password: str | None = None,
        refusals: RefusedPasswords | None = None,
    ) -> None:
        """``password`` is given when the caller resolved it from a secret; otherwise the
        provider block's ``password`` is used. It never appears in errors or logs. ``refusals``:
        where a password vCenter refused is kept for every process (Redis; None: this one's)."""
        self.refusals = refusals
        self.name = config.name
        self.config = config
        self.service = service
        self.clock = clock
        self.endpoint = Endpoint.from_config(config, password, service)
        self.hosts = HostSelector(clock.now, vsphere_settings(config.settings).host_cache_seconds(service))

    # -- plumbing ------------------------------------------------------------------------------

    def _run(self, what: str, operation: Callable[[Connection], T], read_only: bool = False) -> T:
        """Run on the shared connection; every failure becomes a ProviderError naming ``what``.
        ``read_only``: ``operation`` changes nothing in vCenter (it is run again on a fresh
        socket when the kept one turns out closed, ``connections.with_connection``)."""

        def guarded(connection: Connection) -> T:
            try:
                return operation(connection)
            except LookupError as missing:  # our own "not found" findings
                raise ProviderError(f"{what}: {missing}") from None

        return connections.with_connection(self.endpoint, guarded, what, read_only, self.refusals)

    def _datacenter(self, connection: Connection, pool: PoolConfig) -> str:
        return clones.datacenter_of(connection, self.config, pool)

    def _folder(self, connection: Connection, pool: PoolConfig) -> tuple[str, str]:
        """The pool's datacenter, and its folder relative to the datacenter's vm folder."""
        datacenter = self._datacenter(connection, pool)
        return datacenter, clones.pool_folder(connection, datacenter, pool.folder)

    def _folder_path(self, connection: Connection, pool: PoolConfig) -> str:
        datacenter, folder = self._folder(connection, pool)
        return f"{datacenter}/vm/{folder}".rstrip("/")

    def _vm(self, connection: Connection, pool: PoolConfig, hostname: str) -> Any:
        return vms.require_vm(connection, *self._folder(connection, pool), hostname)

    def connection(self) -> Connection:
        """The live shared connection (connecting if needed): for admin helpers and tests."""
        return self._run("connect", lambda connection: connection)

    # -- inventory -----------------------------------------------------------------------------

    def list_vms(self, pool: PoolConfig) -> Sequence[VMInfo]:
        """Every VM directly in the pool's folder, from one PropertyCollector retrieval over a
        container view cached for the session. A missing folder holds no VMs. The addresses of
        the VMs' interfaces (``VMInfo.addresses``, for their A and AAAA records) are read for a
        pool that names a ``dns_plugin`` only (``inventory.GUEST_NET``)."""
        properties = (*inventory.VM_PROPERTIES, inventory.GUEST_NET) if pool.dns_plugin else inventory.VM_PROPERTIES

        def listing(connection: Connection) -> list[VMInfo]:
            path = self._folder_path(connection, pool)
            found = inventory.folder_contents(connection, path, properties)
            if found is None:
                return []
            names = inventory.host_names(connection, [item.get("runtime.host") for item in found])
            result = []
            for item in found:
                if item.get("config.template") or "name" not in item:
                    continue
                host = item.get("runtime.host")
                result.append(
                    VMInfo(
                        name=item["name"],
                        powered_on=item.get("runtime.powerState") == vim.VirtualMachine.PowerState.poweredOn,
                        ip=inventory.primary_address(item.get("guest.ipAddress"), item.get("guest.net")),
                        guest_hostname=item.get("guest.hostName") or None,
                        tools_running=item.get("guest.toolsRunningStatus") == "guestToolsRunning",
                        host=names.get(host._moId) if host is not None else None,
                        annotation=item.get("config.annotation") or None,
                        addresses=inventory.guest_addresses(item.get("guest.net")),
                    )
                )
            return result

        return self._run(f"list VMs of pool {pool.name}", listing, read_only=True)

    def vm_names(self, pools: Sequence[PoolConfig], out_of_time: Callable[[], bool] = never) -> set[str]:
        """Every VM's name in the datacenters the pools use (any folder; templates too), from one
        retrieval of ``name`` over a container view of each (inventory.vm_names_under): 4 calls
        for one datacenter (found, viewed, read, view destroyed), 3 more a datacenter and one
        more a page of the answer, whatever the number of pools and folders (on vcsim, 40 pools'
        folders of 10 VMs each: 4 calls, 0.2 s, against 121 calls listing each folder). A
        datacenter not found holds none."""

        def reading(connection: Connection) -> set[str]:
            datacenters = [inventory.find(connection, name)
                           for name in sorted({self._datacenter(connection, pool) for pool in pools})]
            return inventory.vm_names_under(
                connection, [found for found in datacenters if isinstance(found, vim.Datacenter)], out_of_time)

        return self._run("read the names of the VMs of the pools' datacenters", reading, read_only=True)

    # -- tasks ---------------------------------------------------------------------------------

    def clone(self, pool: PoolConfig, hostname: str) -> str:
        """Start cloning; a clone vCenter cannot start (missing template, folder, datastore...)
        returns a reference that reads as an ERROR with the reason. A failure once
        ``CloneVM_Task`` was sent (its answer timed out or the connection broke, a proxy's 5xx,
        the task's queue time unread) raises AnswerLost: vCenter may be cloning it."""
        return self._clone_through_clone_vms(pool, hostname)

    def clone_vms(self, pool: PoolConfig, hostnames: Sequence[str], on_started: Started = nothing_started,
                  on_asking: Asking = ask_all) -> dict[str, str | ProviderError]:
        """Start the clones as ``Provider.clone_vms`` does, one ``CloneVM_Task`` a VM, with what
        they share looked up once for all (``clones.Plans``: the template, its facts, the folder,
        the placement) and their tasks' queue times read in one retrieval after the last is sent
        (``tasks.read_tasks``). Before, each clone looked everything up and read its queue time
        on its own: 7 SOAP calls a clone (200 clones: 1,209 calls), now 1 and a few a pass."""
        plans = clones.Plans()
        sent: dict[str, tuple[Any, Any]] = {}  # hostname -> its clone task and folder

        def start(hostname: str) -> str:
            outcome = self._send_clone(pool, hostname, plans)
            if isinstance(outcome, str):
                return outcome
            sent[hostname] = outcome
            return ""  # its reference once its queue time is read (below)

        started = self._clone_one_at_a_time(hostnames, start, on_started, on_asking)
        if sent:
            started.update(self._clone_refs(pool, sent))
        return started

    def _send_clone(self, pool: PoolConfig, hostname: str, plans: clones.Plans) -> str | tuple[Any, Any]:
        """Send one clone (``clones.send``): its task and folder, or a failed reference; a failure
        once ``CloneVM_Task`` was sent raises AnswerLost."""
        sent: list[bool] = []

        def sending(now_sent: bool) -> None:
            sent[:] = [True] if now_sent else []  # False: vCenter refused the call sent, and it is tried again

        def start(connection: Connection) -> str | tuple[Any, Any]:
            sent.clear()  # run again after a re-login (NotAuthenticated: vCenter did nothing)
            return clones.send(connection, self.config, self.service, self.hosts, pool, hostname,
                               self.clock.now(), sending=sending, plans=plans)

        try:
            return self._run(f"clone {hostname} for pool {pool.name}", start)
        except ProviderError as error:
            if sent:
                raise AnswerLost.of(error) from None
            raise

    def _clone_refs(self, pool: PoolConfig, sent: Mapping[str, tuple[Any, Any]]) -> dict[str, str | ProviderError]:
        """The references of the clones sent (hostname -> its task and folder), with their tasks'
        queue times read in one retrieval; each an AnswerLost when that read fails (vCenter is
        cloning them: they keep their slots and are found by name)."""

        def reading(connection: Connection) -> dict[str, str | ProviderError]:
            infos = tasks.read_tasks(connection, [task._moId for task, _ in sent.values()])
            return {hostname: tasks.known_clone_ref(task, folder, hostname,
                                                    (infos.get(task._moId) or {}).get("info.queueTime"))
                    for hostname, (task, folder) in sent.items()}

        try:
            return self._run(f"read the queue times of {len(sent)} clone tasks of pool {pool.name}", reading,
                             read_only=True)
        except ProviderError as error:
            lost = AnswerLost.of(error)
            return dict.fromkeys(sent, lost)

    def clones_under_way(self, pool: PoolConfig, names: Collection[str]) -> Mapping[str, str] | None:
        """Of ``names``, the clones of the pool's template vCenter has queued or running, each
        with its clone task's reference, from the template's recent tasks and the events naming
        their clones (chalicelib.providers.vsphere.under_way: at most three calls whatever the
        number of names); None when vCenter cannot tell (the template not found, a clone task
        whose clone is not named, a read refused)."""
        if not names:
            return {}

        def asking(connection: Connection) -> dict[str, str] | None:
            path = clones.template_path(self._datacenter(connection, pool), pool.template)
            template = inventory.find(connection, path)
            if not isinstance(template, vim.VirtualMachine):
                return None
            return under_way.clones_under_way(connection, template, names)

        return self._run(f"look for clones under way in pool {pool.name}", asking, read_only=True)

    def task_status(self, task_ref: str) -> TaskStatus:
        """Read a task's state now; never waits. Destroy chains and template preparations
        advance on each read."""
        read = templates.status if templates.is_ref(task_ref) else tasks.status
        found = self._run(f"read task {task_ref}", lambda connection: read(connection, task_ref))
        self._avoid_unreached_hosts({task_ref: found})
        return found

    def task_statuses(self, task_refs: Sequence[str]) -> Mapping[str, TaskStatus]:
        """The tasks' states, the clones', migrations' and plain tasks' in one PropertyCollector
        retrieval (``tasks.statuses``: 10 clones in flight, 1 call a poll instead of 10), the
        destroys' chains moved on with each read made once for all (``tasks.destroy_statuses``:
        10 VMs powering off, 2 calls instead of 20); a template preparation's read on its own.
        When a group's read fails for another reason than an unreachable vCenter (vCenter
        refusing one of the tasks), its tasks are read one at a time: the failing task UNKNOWN,
        the others read."""
        refs = list(dict.fromkeys(task_refs))
        groups: list[tuple[str, list[str], TaskReader, bool]] = [
            ("tasks", [ref for ref in refs if not templates.is_ref(ref) and tasks.reads_together(ref)],
             tasks.statuses, True),
            ("destroys", [ref for ref in refs if tasks.is_destroy(ref)], tasks.destroy_statuses, False),
        ]
        found: dict[str, TaskStatus] = {}
        for what, members, read, read_only in groups:
            if not members:
                continue
            try:
                found.update(self._read_tasks(what, members, read, read_only))
            except ProviderError as error:
                if error.kind in UNREACHABLE:
                    raise
                found.update(super().task_statuses(members))
        found.update(super().task_statuses([ref for ref in refs if ref not in found]))
        self._avoid_unreached_hosts(found)
        return {ref: found[ref] for ref in refs}

    def _avoid_unreached_hosts(self, found: Mapping[str, TaskStatus]) -> None:
        """A clone or migration task that failed because vCenter could not reach its host (kind
        ``host``, after vCenter accepted it): host selection avoids that host, as when vCenter
        refuses the clone or move at once (``HostSelector.clone_failed``, ``avoid_id``). Before,
        the failure was reported as ``host`` and the host picked again: at each turn of the
        clones' rotation, by each move of the survey's minute."""
        for ref, status in found.items():
            if status.state is not TaskState.ERROR or status.kind is not FailureKind.HOST:
                continue
            task, target = tasks.clone_task_of(ref), tasks.migration_target_of(ref)
            if task is not None:
                self.hosts.clone_failed(task)
            elif target is not None:
                self.hosts.avoid_id(target)

    def _read_tasks(self, what: str, refs: list[str], read: TaskReader, read_only: bool) -> dict[str, TaskStatus]:
        return self._run(f"read {len(refs)} {what}", lambda connection: read(connection, refs), read_only=read_only)

    def cancel_task(self, task_ref: str) -> bool:
        """Cancel a clone task vCenter still runs (CancelTask); never waits for it to stop."""
        return self._run(f"cancel task {task_ref}", lambda connection: tasks.cancel(connection, task_ref))

    def destroy(self, pool: PoolConfig, hostname: str) -> str | None:
        """Power off (if on) and destroy, without waiting; None when there is no such VM."""

        def destroying(connection: Connection) -> str | None:
            vm = vms.find_vm(connection, *self._folder(connection, pool), hostname)
            return vms.destroy(connection, vm) if vm is not None else None

        return self._run(f"destroy {hostname}", destroying)

    def check_ready(self, pool: PoolConfig, vm: VMInfo) -> Readiness:
        """Readiness from the listed VM's facts and a TCP connect; no vCenter call."""
        return readiness.check(self.config, pool, vm)

    def _start_vm_task(self, what: str, start: Callable[[Connection, vms.Sending], str]) -> str:
        """Run ``start`` (which tells its ``Sending`` around the call that starts the task): a
        failure once that call was sent, vCenter's answer lost (a timeout, the connection broken,
        a proxy's 5xx, the task's queue time unread), raises AnswerLost: vCenter may be doing it."""
        sent: list[bool] = []

        def sending(now_sent: bool) -> None:
            sent[:] = [True] if now_sent else []

        def starting(connection: Connection) -> str:
            sent.clear()  # run again after a re-login (NotAuthenticated: vCenter did nothing)
            return start(connection, sending)

        try:
            return self._run(what, starting)
        except ProviderError as error:
            if sent:
                raise AnswerLost.of(error) from None
            raise

    def add_disk(self, pool: PoolConfig, hostname: str, size_gb: int, task_key: str = "") -> str:
        """Start adding a thin disk of ``size_gb`` GB (``task_key`` in the VM's extraConfig by the
        same reconfigure: ``applied``); AnswerLost once ``ReconfigVM_Task`` was sent."""
        return self._start_vm_task(
            f"add a {size_gb} GB disk to {hostname}",
            lambda connection, sending: vms.add_disk(connection, self._vm(connection, pool, hostname), size_gb,
                                                     task_key, sending),
        )

    def applied(self, pool: PoolConfig, hostname: str, kind: str, key: str) -> bool | None:
        """A disk: whether the VM's last disk reconfigure carried ``key``; a snapshot: whether the
        VM has one named ``key``. None for anything else."""
        if kind not in ("disk", "snapshot"):
            return None
        return self._run(f"look for {kind} {key} on {hostname}",
                         lambda connection: vms.applied(connection, self._vm(connection, pool, hostname), kind, key))

    def create_snapshot(self, pool: PoolConfig, hostname: str, snapshot_name: str) -> str:
        """Start a snapshot named ``snapshot_name``; AnswerLost once ``CreateSnapshot_Task`` was sent."""
        return self._start_vm_task(
            f"snapshot {hostname}",
            lambda connection, sending: vms.create_snapshot(connection, self._vm(connection, pool, hostname),
                                                            snapshot_name, sending),
        )

    def revert_snapshot(self, pool: PoolConfig, hostname: str, snapshot_name: str) -> str:
        """Start reverting to the snapshot named ``snapshot_name``; AnswerLost once
        ``RevertToSnapshot_Task`` was sent."""
        return self._start_vm_task(
            f"revert {hostname} to snapshot {snapshot_name}",
            lambda connection, sending: vms.revert_snapshot(connection, self._vm(connection, pool, hostname),
                                                            snapshot_name, sending),
        )

    def prepare_template(self, pool: PoolConfig) -> str | None:
        """A reference whose reads give the template its delta disk layer
        (``create_template_delta_disks``; see chalicelib.providers.vsphere.templates); None when
        it needs nothing. Changes nothing in vCenter itself."""
        return self._run(
            f"prepare template {pool.template}",
            lambda connection: templates.prepare(connection, self.config, self.service, pool),
        )

    def template_name(self, pool: PoolConfig, template: str | None = None) -> str:
        """The template as ``<datacenter>/vm/<template>`` for a pool of another datacenter than
        the provider's default (its ``datacenter``, else vCenter's first), and as a path under
        the default datacenter's vm folder otherwise: a pool naming the default datacenter and one
        leaving it unset name one template alike, and prepare it once. Asks vCenter only for a
        pool naming a datacenter when the provider block names none (its first, once a session)."""
        template = (template if template is not None else pool.template).strip("/")
        if not pool.datacenter and "/vm/" not in template:
            return template

        def naming(connection: Connection) -> str:
            datacenter = self._datacenter(connection, pool)
            default = vsphere_settings(self.config.settings).datacenter or inventory.default_datacenter(connection)
            path = clones.template_path(datacenter, template)
            return path[len(f"{default}/vm/"):] if datacenter == default else path

        return self._run(f"name template {template}", naming, read_only=True)

    def clones_need_prepared_template(self, pool: PoolConfig) -> bool:
        """Only linked clones use the template's delta disk layer."""
        return clones.is_linked(pool, self.service)

    def start_migration(self, pool: PoolConfig, hostname: str,
                        chosen: TargetChosen = no_target_noted) -> Migration | None:
        """Start a vMotion to the least used compatible host of the VM's cluster when its host is
        busier (chalicelib.providers.vsphere.migration); None when it stays."""
        limit = self.service.utilization_limit

        def migrating(connection: Connection) -> Migration | None:
            datacenter, folder = self._folder(connection, pool)
            vm = vms.require_vm(connection, datacenter, folder, hostname)
            return migration.start(connection, self.hosts, datacenter, limit, vm, chosen)

        return self._run(f"migrate {hostname}", migrating)

    def recent_migrations(self, pool: PoolConfig, hostname: str, within: float) -> Sequence[str] | None:
        """The RelocateVM tasks vCenter still lists for the VM (its recent tasks, about ten
        minutes), queued in the last ``within`` seconds of vCenter's clock; DRS's moves are not
        among them."""
        return self._run(f"look for moves of {hostname}", lambda connection: migration.recent_relocations(
            connection, self._vm(connection, pool, hostname), within), read_only=True)

    def purge_unconfigured(self, pools: Sequence[PoolConfig], allowlist: Sequence[str],
                           tracked: Tracked = nothing_tracked,
                           out_of_time: Callable[[], bool] = never) -> list[str]:
        """Destroy unconfigured folders and VMs under this provider's pools' parent folders,
        except the VMs vmpool tracks, the VMs another vmpool deployment made, and the folders
        holding either; stop before the next removal once ``out_of_time``."""
        return self._run(
            "purge unconfigured resources",
            lambda connection: purge.purge(connection, self.config, pools, allowlist, tracked, out_of_time,
                                           deployment=ownership.deployment_of(self.service)),
        )

    def call_count(self) -> int:
        """SOAP calls made to this vCenter as this user (shared by providers on the same session)."""
        return connections.call_count(self.endpoint)
