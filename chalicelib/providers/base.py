"""The one interface every VM provider implements (dummy, vsphere, later EC2...).

The manager only ever talks to a provider through this interface, so nothing above
``chalicelib/providers/`` knows what a vCenter is. Long operations (clone, destroy, disk,
snapshot) are *started* and return a task reference; the manager stores the reference and asks
for the task's state on a later pass instead of waiting.
"""

from __future__ import annotations

import abc
import enum
from dataclasses import dataclass
from typing import Callable, Collection, Mapping, Sequence

from chalicelib.config import PoolConfig
from chalicelib.providers.failures import Failure, FailureKind
from chalicelib.template_names import configured_template

UNREACHABLE = frozenset({FailureKind.CONNECTION, FailureKind.TIMEOUT})
"""Failures that say the backend cannot be reached now: the next call would fail the same way."""


class ProviderError(Exception):
    """The provider could not do what was asked (the backend is down, refused, timed out).

    The message is safe to record on a VM and show to users: it never carries credentials.
    ``kind`` says what kind of failure it was.
    """

    def __init__(self, message: str, kind: FailureKind = FailureKind.OTHER) -> None:
        super().__init__(message)
        self.kind = kind

    @property
    def failure(self) -> Failure:
        return Failure(self.kind, str(self))

    def reworded(self, message: str) -> "ProviderError":
        """The same error (its class, kind and any other field) with another message: a message
        scrubbed of secrets keeps what the caller tells failures apart by."""
        clone = type(self).__new__(type(self), message)
        clone.__dict__.update(self.__dict__)
        clone.args = (message,)
        return clone


class AnswerLost(ProviderError):
    """The request was sent and its answer lost (a timeout or a connection closed after the
    request left, a gateway's 5xx in front of the backend): the backend may have received it
    and acted on it. A clone call failing so may have started the clone (manager/clones.py keeps
    its slot counted, as for a clone asked by a pass that died before noting its task); any other
    ProviderError of a clone call means the backend started nothing (it refused, or was never
    reached)."""

    @classmethod
    def of(cls, error: ProviderError) -> "AnswerLost":
        """``error`` (its message and kind) as a lost answer."""
        return error if isinstance(error, AnswerLost) else cls(str(error), error.kind)


CANCEL_REFUSALS = ("permission", "invalid_state", "other")
"""Every ``CancelRefused.metric_key`` (the ``reason`` of the ``CloneCancelsRefused`` metric)."""


class CancelRefused(ProviderError):
    """The backend refused to cancel a task it still runs (``cancel_task``): the user lacks the
    privilege (vCenter's NoPermission), the task cannot be cancelled now (InvalidState), or
    another refusal. ``metric_key``: which, one of CANCEL_REFUSALS."""

    def __init__(self, message: str, kind: FailureKind, metric_key: str) -> None:
        super().__init__(message, kind)
        self.metric_key = metric_key if metric_key in CANCEL_REFUSALS else "other"


@dataclass(frozen=True)
class VMInfo:
    """What the manager needs to know about one VM in a pool's folder."""

    name: str
    powered_on: bool
    ip: str | None = None
    guest_hostname: str | None = None
    tools_running: bool = False
    host: str | None = None
    annotation: str | None = None
    addresses: tuple[str, ...] = ()
    """Every address the guest reports on its network interfaces (vSphere's
    ``guest.net[].ipConfig.ipAddress[]``), as reported, ``ip`` among them or not: a dual-stack
    guest's IPv4 and IPv6 addresses, for its A and AAAA records (``dns.base.chosen_addresses``).
    ``ip`` stays the one address the API gives (vmpooler clients read one)."""

    def candidate_addresses(self) -> tuple[str, ...]:
        """The VM's addresses, its primary (``ip``) first: the order records choose them in."""
        return tuple(dict.fromkeys(address for address in (self.ip, *self.addresses) if address))


@dataclass(frozen=True)
class InventoryChanges:
    """Where a provider's inventory of a pool stands, for a pass that need not list every VM.

    ``token`` marks the inventory as it is now (read before anything else of the pass);
    ``names`` are the VMs added, changed or removed since the token the pass asked about, or None
    when the provider cannot say (no token asked about, or too old): then the pass lists every VM.
    """

    token: str
    names: frozenset[str] | None


class TaskState(enum.Enum):
    RUNNING = "running"
    SUCCESS = "success"
    ERROR = "error"
    UNKNOWN = "unknown"
    """Not read this time (``task_statuses`` only): the provider answered, and failed to read
    this one task (vCenter refused it, the task object vanished under the read...); ``error``
    and ``kind`` say why. The task may still run, or have ended either way: a caller waits as for
    a RUNNING task, within its own rule for a task that never ends, and reads it again next pass."""


@dataclass(frozen=True)
class TaskStatus:
    state: TaskState
    error: str | None = None
    """The backend's message when the task failed (UNKNOWN: why it could not be read)."""
    kind: FailureKind = FailureKind.OTHER
    """What kind of failure it was, when the task failed (UNKNOWN: the read's)."""

    @property
    def done(self) -> bool:
        """Whether the task is known to have ended (an UNKNOWN one is not)."""
        return self.state in (TaskState.SUCCESS, TaskState.ERROR)

    @classmethod
    def unread(cls, error: "ProviderError") -> "TaskStatus":
        """The status of a task whose read failed with ``error`` (UNKNOWN, its message and kind)."""
        return cls(TaskState.UNKNOWN, str(error), error.kind)

    @property
    def failure(self) -> Failure:
        """The failure of a task that failed."""
        return Failure(self.kind, self.error or "unknown error")


@dataclass(frozen=True)
class Readiness:
    ready: bool
    reason: str = ""
    """Why the VM is not ready yet (shown in GET /vm/<host>)."""


@dataclass(frozen=True)
class Migration:
    """A migration a provider started: the task to follow and the hosts it moves between."""

    task_ref: str
    from_host: str
    to_host: str


Started = Callable[[str], None]
"""Called with a VM's name once its clone or destroy has started, before the next VM's: the
pass's checkpoint, which renews its lease during a long batch (and where chaos tests stop it)."""


def nothing_started(hostname: str) -> None:
    """The ``Started`` callback of a caller that does not watch."""
    return None


Asking = Callable[[Sequence[str]], Collection[str]]
"""Called with VMs' names just before their clones are asked of the backend (each call the
names the next request carries): the caller notes that it asks (manager/clones.py), so a pass
that dies before noting the tasks is known to have asked. Returns the names that may be asked
for; the others are not cloned and are left out of ``clone_vms``'s answer."""


def ask_all(hostnames: Sequence[str]) -> Collection[str]:
    """The ``Asking`` callback of a caller that notes nothing: every clone may be asked for."""
    return hostnames


TargetChosen = Callable[[str], None]
"""Called with the target host's name of a migration before the move is sent (``start_migration``)."""


def no_target_noted(host: str) -> None:
    """The ``TargetChosen`` of a caller that does not note the target."""
    return None


Tracked = Callable[[Collection[str]], Collection[str]]
"""Of the VM names given, those vmpool tracks (in any state but destroyed): a purge never
destroys them, though their folder is no longer configured (a removed pool still draining, the
folder a pool moved from: a VM there may be checked out)."""


def nothing_tracked(names: Collection[str]) -> Collection[str]:
    """The ``Tracked`` of a caller that tracks no VM."""
    return ()


def never() -> bool:
    """The ``out_of_time`` of a caller whose time does not run out (tests, the local stack)."""
    return False


class Provider(abc.ABC):
    """A place VMs come from. One instance serves every pool that names it."""

    name: str

    @abc.abstractmethod
    def list_vms(self, pool: PoolConfig) -> Sequence[VMInfo]:
        """Every VM in the pool's folder, in one inventory call. Raises ProviderError when the
        inventory cannot be read completely: a partial list must never be returned."""

    def inventory_changes(self, pool: PoolConfig, since: str | None) -> InventoryChanges | None:
        """The pool's inventory token and the VMs changed since the token ``since`` (see
        InventoryChanges), cheaply: without listing the folder. None when the provider has no
        such token: every pass then compares the whole inventory (``list_vms``)."""
        return None

    def find_vms(self, pool: PoolConfig, names: Collection[str]) -> Sequence[VMInfo]:
        """The VMs of ``names`` that are in the pool's folder (a name missing is not there).
        Providers with ``inventory_changes`` make it cost O(len(names)); this default lists all."""
        wanted = set(names)
        return [vm for vm in self.list_vms(pool) if vm.name in wanted]

    def vm_names(self, pools: Sequence[PoolConfig], out_of_time: Callable[[], bool] = never) -> set[str]:
        """The names of every VM where ``pools`` (this provider's) make VMs, other folders
        included: what a clone must not be named after Redis lost its data (manager/names.py).
        Raises ProviderError when they cannot all be read, or not before ``out_of_time``: a
        partial answer must never be returned. This default lists each pool's folder (one call
        a pool); providers with a cheaper whole read (vSphere: one retrieval a vCenter) override it."""
        names: set[str] = set()
        for pool in pools:
            if out_of_time():
                raise ProviderError("VM names not read in time", FailureKind.TIMEOUT)
            names.update(vm.name for vm in self.list_vms(pool))
        return names

    vms_show_while_cloning: bool = False
    """Whether a clone's VM may be listed (``list_vms``) before its clone is done (vCenter lists
    it during the clone): then a listed VM whose clone task was never noted is not taken as
    cloned, ``clones_under_way`` is asked of it too (manager/pending.py). False: a VM shows
    once its clone is done."""

    def clones_under_way(self, pool: PoolConfig, names: Collection[str]) -> Mapping[str, str] | None:
        """Of ``names``, those whose clone the backend is still making (each with its task's
        reference, or "" when the backend cannot give one), or None when the backend cannot
        tell: for clones asked for by a pass that died before noting their tasks
        (manager/pending.py), which keep their slots while the backend makes them and give them
        back once it says it is not; a task reference given is noted on the VM, which is then
        followed as any clone (done when its task ends, cancelled past the pool's timeout).
        ``names`` are clones of the pool's template as it is now, made where it makes VMs now
        (the caller asks nothing of others). A provider answers "not under way" only when it
        knows: on any doubt, None. This default cannot tell: such a clone keeps its slot until
        its VM shows or the pool's timeout."""
        return None

    @abc.abstractmethod
    def clone(self, pool: PoolConfig, hostname: str) -> str:
        """Start cloning the pool's template into a VM named ``hostname``; return a task ref.
        A clone the backend refuses may raise ProviderError or return a reference whose status
        is the ERROR (with its kind): the reference is stored in Redis and read on a later pass,
        so it must carry the kind itself. A call whose request may have reached the backend
        and whose answer was lost raises AnswerLost: the clone may be under way."""

    def clone_vms(self, pool: PoolConfig, hostnames: Sequence[str], on_started: Started = nothing_started,
                  on_asking: Asking = ask_all) -> dict[str, str | ProviderError]:
        """Start the clones of many VMs: hostname -> task ref, or the ProviderError its ``clone``
        raised (the others are still started, unless the backend could not be reached or timed
        out: then they are not tried, each failing as ``not started``, so a pass against a hung
        backend waits one timeout, not one per clone; an AnswerLost is given for a clone the
        backend may have started); ``on_asking`` is called with the names
        each request to the backend carries, just before it is sent (a name it does not return
        is not cloned, and left out), ``on_started`` after each clone that started. This default
        clones one VM at a time (``on_asking`` once per VM); a provider that can start many in
        one call (the dummy: one Redis round trip) overrides it."""
        return self._clone_one_at_a_time(hostnames, lambda hostname: self.clone(pool, hostname), on_started,
                                         on_asking)

    def _clone_through_clone_vms(self, pool: PoolConfig, hostname: str) -> str:
        """``clone`` for a provider whose ``clone_vms`` is its own (it starts many at once): the
        one clone's reference, or the ProviderError it failed with raised."""
        started = self.clone_vms(pool, [hostname])[hostname]
        if isinstance(started, ProviderError):
            raise started
        return started

    @staticmethod
    def _clone_one_at_a_time(hostnames: Sequence[str], start: Callable[[str], str], on_started: Started,
                             on_asking: Asking) -> dict[str, str | ProviderError]:
        """``clone_vms`` for a provider that sends one clone a request: ``start`` (hostname -> task
        ref, or raises ProviderError) for each name ``on_asking`` lets through, until the backend
        is unreachable (the rest then fail as ``not started``)."""
        started: dict[str, str | ProviderError] = {}
        unreachable: ProviderError | None = None
        for hostname in hostnames:
            if unreachable is not None:
                started[hostname] = ProviderError(f"not started: {unreachable}", unreachable.kind)
                continue
            if hostname not in on_asking([hostname]):
                continue
            try:
                started[hostname] = start(hostname)
            except ProviderError as error:
                started[hostname] = error
                if error.kind in UNREACHABLE:
                    unreachable = error
                continue
            on_started(hostname)
        return started

    @abc.abstractmethod
    def task_status(self, task_ref: str) -> TaskStatus:
        """The state of a task this provider started, with the failure's kind when it failed.
        An unknown task is an ERROR."""

    def task_statuses(self, task_refs: Sequence[str]) -> Mapping[str, TaskStatus]:
        """``task_status`` of many tasks (task ref -> status). A task whose own read fails is
        UNKNOWN (``TaskStatus.unread``: the failure's message and kind) and the others are still
        read: one task vCenter refuses to show, or forgot mid-read, must not hide the others (before,
        it ended the call, and with it every pass of the pool at its first step: no refill, no
        destroy). A ProviderError raises only when the provider cannot be reached or timed out
        (``UNREACHABLE``: each further read would wait as long). This default asks one at a time."""
        statuses: dict[str, TaskStatus] = {}
        for task_ref in dict.fromkeys(task_refs):
            try:
                statuses[task_ref] = self.task_status(task_ref)
            except ProviderError as error:
                if error.kind in UNREACHABLE:
                    raise
                statuses[task_ref] = TaskStatus.unread(error)
        return statuses

    def cancel_task(self, task_ref: str) -> bool:
        """Ask the backend to cancel a task it still runs (a clone past its pool's timeout);
        never waits: the task's end is read with ``task_status`` as ever (a cancelled task reads
        as an ERROR once the backend has stopped it). Whether the backend took the request
        (False: it cannot cancel such a task, or the task ended already). Raises CancelRefused
        when the backend refuses to cancel the task while it still runs, ProviderError when the
        backend cannot be reached. This default cancels nothing."""
        return False

    def clone_outcomes(self, pool: PoolConfig, tasks: Mapping[str, str]) -> tuple[Mapping[str, TaskStatus],
                                                                                   Sequence[VMInfo]]:
        """For clones a pass just started (``tasks``: hostname -> clone task ref), whose VMs its
        inventory predates: each task's status (task ref -> status) and the VMs of the clones
        that succeeded. This default asks ``task_statuses``, then ``find_vms``; a provider that
        can read both at once does (the dummy: one round trip)."""
        statuses = self.task_statuses(list(tasks.values()))
        done = [hostname for hostname, task_ref in tasks.items() if statuses[task_ref].state is TaskState.SUCCESS]
        return statuses, (self.find_vms(pool, done) if done else [])

    @abc.abstractmethod
    def destroy(self, pool: PoolConfig, hostname: str) -> str | None:
        """Start destroying a VM (powering it off first if needed). Returns a task ref, or None
        when there was nothing to destroy."""

    def destroy_vms(self, pool: PoolConfig, hostnames: Sequence[str],
                    on_started: Started = nothing_started) -> dict[str, str | ProviderError | None]:
        """Start destroying many VMs: hostname -> what ``destroy`` returned, or the ProviderError
        it raised (the VMs after one the backend refused are still asked; after one that could
        not reach it or timed out, none is: each would wait as long, and fail); ``on_started``
        is called after each VM asked without error. This default destroys one VM at a time."""
        started: dict[str, str | ProviderError | None] = {}
        for hostname in hostnames:
            try:
                started[hostname] = self.destroy(pool, hostname)
            except ProviderError as error:
                started[hostname] = error
                if error.kind in UNREACHABLE:
                    break
                continue
            on_started(hostname)
        return started

    @abc.abstractmethod
    def check_ready(self, pool: PoolConfig, vm: VMInfo) -> Readiness:
        """Whether a cloned VM is booted and usable, by the pool's readiness rules."""

    @abc.abstractmethod
    def add_disk(self, pool: PoolConfig, hostname: str, size_gb: int, task_key: str = "") -> str:
        """Start adding a disk of ``size_gb``; return a task ref. ``task_key`` (the manager's id
        of the task) is left on the VM with the disk where the provider can, for ``applied``.
        A call whose request may have reached the backend and whose answer was lost raises
        AnswerLost (the disk may be being added; so do ``create_snapshot`` and
        ``revert_snapshot``); any other ProviderError means the backend started nothing."""

    @abc.abstractmethod
    def create_snapshot(self, pool: PoolConfig, hostname: str, snapshot_name: str) -> str:
        """Start a snapshot named ``snapshot_name``; return a task ref."""

    def applied(self, pool: PoolConfig, hostname: str, kind: str, key: str) -> bool | None:
        """Whether a disk (``kind`` "disk", ``key`` the ``task_key`` it was asked with) or a
        snapshot ("snapshot", ``key`` its name) is on the VM: asked of a task whose pass died
        between asking for it and recording its ref, or whose start's answer was lost
        (AnswerLost), which vCenter may have received and done; False while it is not (yet).
        None when the provider cannot tell (then the task is reported never started)."""
        return None

    @abc.abstractmethod
    def revert_snapshot(self, pool: PoolConfig, hostname: str, snapshot_name: str) -> str:
        """Start reverting to the snapshot named ``snapshot_name``; return a task ref."""

    def prepare_template(self, pool: PoolConfig) -> str | None:
        """What the pool's template needs before it is cloned (vSphere: delta disks when
        ``create_template_delta_disks``): a task ref, or None when it needs nothing. The manager
        records the ref before reading it with ``task_status``; a provider may do the work in
        those reads rather than here, so that a pass killed in between leaves nothing the next
        read cannot finish. Idempotent: asked again once the task is done, it needs nothing."""
        return None

    def template_name(self, pool: PoolConfig, template: str | None = None) -> str:
        """The pool's template (or ``template``, an override of it) as its preparation is
        recorded and leased: one template, one name, however pools spell it (``configured_template``
        by default; vSphere: the same name for a pool naming the default datacenter and one
        leaving it unset). May ask the backend (once per session)."""
        return configured_template(pool, template)

    def clones_need_prepared_template(self, pool: PoolConfig) -> bool:
        """Whether the pool's clones need what ``prepare_template`` does. A pool that does not
        (vSphere: one cloning full) never plans a preparation, so that another pool on the same
        template still gets it."""
        return True

    def clone_seconds(self, pool: PoolConfig) -> float | None:
        """How long the pool's clones take at most, when the provider knows (None: it does not).
        A pass that started clones looks again after this when it is shorter than
        ``clone_poll_interval``, so instant clones are not left waiting for the poll."""
        return None

    def start_migration(self, pool: PoolConfig, hostname: str,
                        chosen: TargetChosen = no_target_noted) -> Migration | None:
        """Start moving a checked-out VM to the least used compatible host when it runs on a
        busier one; None when it should stay where it is (or the provider cannot migrate).
        ``chosen`` is called with the target host's name before the move is sent (the manager
        notes it: a pass killed after sending is judged by it, ``recent_migrations``). Never
        waits for the move: the returned task is followed with ``task_status``."""
        return None

    def recent_migrations(self, pool: PoolConfig, hostname: str, within: float) -> Sequence[str] | None:
        """Task references (``task_status`` follows them) of the moves of the VM the provider
        received in the last ``within`` seconds (by its own clock, which may be off ours), oldest
        first: asked of a migration whose pass died between sending the move and noting its
        task. Empty when there is none; None when the provider cannot tell."""
        return None

    def purge_unconfigured(self, pools: Sequence[PoolConfig], allowlist: Sequence[str],
                           tracked: Tracked = nothing_tracked,
                           out_of_time: Callable[[], bool] = never) -> list[str]:
        """Destroy VMs and folders under the pools' parent folders that no pool configures,
        except the VMs ``tracked`` names and the folders holding one. Returns what was removed.
        Stops before its next removal once ``out_of_time`` (its invocation's time nearly out):
        the next purge goes on. Providers without folders have nothing to purge."""
        return []

    def call_count(self) -> int:
        """Backend calls made so far (vCenter SOAP calls for vsphere), for metrics and tests."""
        return 0
