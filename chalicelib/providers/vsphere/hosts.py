"""Host selection for clones (``manage_host_selection``), as vmpooler does it.

A host is eligible when it is connected, not in maintenance, its overall status is green, it
has no configIssue, and both its CPU and memory use are below ``utilization_limit`` percent.
Eligible hosts are used least-used first. The host list costs one retrieval and is cached for
``host_selection_cache_seconds`` (60); within that window successive clones rotate through the
eligible hosts in order, so a burst of clones does not all land on the one least-used host.

The cache holds host references, and lives as long as the session it was read on: a new login
(vCenter restarted, the session expired) surveys again, as does a clone vCenter refused because
a host it was given no longer exists (``forget``; vCenter gives ids anew after a restart or a
host's removal). Before, references from before a restart were used for up to a minute, and
clones placed on them failed.

A host vCenter refused a clone on because it cannot reach it (HostNotConnected,
HostNotReachable: failure kind ``host``) is ``avoid``-ed for ``host_selection_cache_seconds``,
even when a new survey still shows it connected (vCenter notices a host not responding only
after a while). Before, it was picked again at each turn of the rotation until the cache
expired, and one clone in three failed. So is the host of a clone vCenter accepted whose task
fails later because it cannot reach the host (read on a later pass: ``clone_failed``), when this
selector picked it: the host of each clone task sent is kept (``CLONES_KEPT`` at most, for the
session); and the target of a migration whose task fails so (``avoid_id``: its reference names it).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any, Callable

from pyVmomi import vim

from chalicelib.providers.vsphere import inventory
from chalicelib.providers.vsphere.connection import Connection

HOSTS_TRIED = 3
"""The most hosts one clone or migration is sent to when vCenter says it cannot reach the host
picked for it (HostNotConnected, HostNotReachable): each is avoided after (``HostSelector.avoid``),
and the next clones and migrations go to another one."""


CLONES_KEPT = 4096
"""The most clone tasks whose host a selector keeps (``clone_sent``), the oldest forgotten first:
more than one container sends while its clones run."""


class HostsUnreached(LookupError):
    """No host may take a clone: each eligible one is avoided (vCenter could not reach it)."""


@dataclass(frozen=True)
class HostUsage:
    """One host as host selection sees it."""

    name: str
    ref: Any
    eligible: bool
    why_not: str
    cpu_percent: float
    memory_percent: float
    cpu_model: str = ""
    """Hosts with the same CPU model are compatible for a live migration."""

    @property
    def load(self) -> float:
        return max(self.cpu_percent, self.memory_percent)


def usage(found: dict[str, Any], limit: float) -> HostUsage:
    """Judge one host from its retrieved properties."""
    name = found.get("name", found["_obj"]._moId)
    mhz = (found.get("summary.hardware.cpuMhz") or 0) * (found.get("summary.hardware.numCpuCores") or 0)
    cpu = 100.0 * (found.get("summary.quickStats.overallCpuUsage") or 0) / mhz if mhz else 100.0
    memory_mb = (found.get("summary.hardware.memorySize") or 0) / (1024 * 1024)
    memory = 100.0 * (found.get("summary.quickStats.overallMemoryUsage") or 0) / memory_mb if memory_mb else 100.0
    why_not = ""
    if found.get("runtime.inMaintenanceMode"):
        why_not = "in maintenance mode"
    elif found.get("runtime.connectionState") not in (None, vim.HostSystem.ConnectionState.connected):
        why_not = f"connection state {found.get('runtime.connectionState')}"
    elif found.get("overallStatus") != vim.ManagedEntity.Status.green:
        why_not = f"status {found.get('overallStatus')}"
    elif found.get("configIssue"):
        why_not = "has configuration issues"
    elif cpu >= limit:
        why_not = f"CPU {cpu:.0f}% >= {limit:.0f}%"
    elif memory >= limit:
        why_not = f"memory {memory:.0f}% >= {limit:.0f}%"
    return HostUsage(name, found["_obj"], not why_not, why_not, cpu, memory,
                     str(found.get("summary.hardware.cpuModel") or ""))


def survey(connection: Connection, container: Any, limit: float) -> list[HostUsage]:
    """Every host under ``container`` (cluster or datacenter host folder), least used first."""
    view = inventory.container_view(connection, container, vim.HostSystem, recursive=True)
    try:
        found = inventory.view_contents(connection, view, vim.HostSystem, inventory.HOST_PROPERTIES)
    finally:
        inventory.destroy_view(view)
    return sorted((usage(item, limit) for item in found), key=lambda host: (host.load, host.name))


class HostSelector:
    """Picks hosts for clones; one per provider, kept across passes of a warm container."""

    def __init__(self, now: Callable[[], float], cache_seconds: float) -> None:
        self._now = now
        self._cache_seconds = cache_seconds
        self._cache: dict[tuple[str, str], tuple[float, list[HostUsage]]] = {}
        self._turn: dict[tuple[str, str], int] = {}
        self._session: object | None = None
        """The mark of the session the cache was read on (``_session_of``)."""
        self._avoided: dict[str, float] = {}
        """Hosts (by id) vCenter could not reach for a clone, and until when they are not picked.
        Replaced whole under ``_lock``, never changed in place: ``usable`` reads it unlocked."""
        self._clone_hosts: dict[str, HostUsage] = {}
        """The host each clone task sent in this session was placed on (task id -> host), oldest first."""
        self._lock = threading.Lock()  # a batch's pools run on threads of one provider

    def hosts(self, connection: Connection, container: Any, key: tuple[str, str], limit: float) -> list[HostUsage]:
        """The surveyed hosts of ``container`` (cached for the session, ``cache_seconds`` at most)."""
        session = _session_of(connection)
        if session is not self._session:
            self.forget()
            with self._lock:
                self._avoided = {}  # ids of the former session's hosts (vCenter gives them anew)
                self._clone_hosts.clear()  # and of its tasks
            self._session = session
        cached = self._cache.get(key)
        now = self._now()
        if cached is None or now - cached[0] >= self._cache_seconds:
            cached = (now, survey(connection, container, limit))
            self._cache[key] = cached
            self._turn[key] = 0
        return cached[1]

    def pick(self, connection: Connection, container: Any, key: tuple[str, str], limit: float) -> HostUsage:
        """The next eligible host. Raises LookupError (with each host's reason) when none is."""
        surveyed = self.hosts(connection, container, key, limit)
        eligible = [host for host in surveyed if self.usable(host)]
        if not eligible:
            reasons = "; ".join(f"{host.name}: {self._why_not(host)}" for host in surveyed) or "no hosts"
            unreached = any(host.eligible for host in surveyed)  # each one avoided: not a lack of room
            raise (HostsUnreached if unreached else LookupError)(f"no host is eligible for a clone ({reasons})")
        turn = self._turn.get(key, 0)
        self._turn[key] = turn + 1
        return eligible[turn % len(eligible)]

    def forget(self) -> None:
        """Survey again on the next pick (a host it gave is gone)."""
        self._cache.clear()

    def usable(self, host: HostUsage) -> bool:
        """Whether ``host`` may take a clone or a migration now: eligible, and not ``avoid``-ed."""
        return host.eligible and self._avoided.get(_id(host.ref), 0.0) <= self._now()

    def _why_not(self, host: HostUsage) -> str:
        """Why ``host`` is not picked, as ``pick`` says it."""
        return host.why_not if not host.eligible else "vCenter could not reach it just now"

    def avoid(self, host: HostUsage) -> None:
        """Pick ``host`` for no clone for ``cache_seconds`` (vCenter cannot reach it), and survey
        again on the next pick (the other hosts' state may have changed too)."""
        self.avoid_id(_id(host.ref))

    def avoid_id(self, host_id: str) -> None:
        """``avoid`` the host of id ``host_id`` (a migration's target, kept in its reference)."""
        now = self._now()
        with self._lock:  # another thread's avoid_id would change the dict this one iterates
            avoided = {ref: until for ref, until in self._avoided.items() if until > now}
            avoided[host_id] = now + self._cache_seconds
            self._avoided = avoided
        self.forget()

    def clone_sent(self, task: Any, host: HostUsage) -> None:
        """Keep the host the clone task ``task`` was placed on (``clone_failed`` reads it)."""
        with self._lock:
            self._clone_hosts.pop(_id(task), None)
            self._clone_hosts[_id(task)] = host
            while len(self._clone_hosts) > CLONES_KEPT:
                del self._clone_hosts[next(iter(self._clone_hosts))]

    def clone_failed(self, task_id: str) -> None:
        """The clone task ``task_id`` ended because vCenter could not reach its host (failure kind
        ``host``, read on a later pass): ``avoid`` the host, when this selector placed the clone."""
        with self._lock:
            host = self._clone_hosts.pop(task_id, None)
        if host is not None:
            self.avoid(host)


def _id(ref: Any) -> str:
    """A host reference's id (vCenter's managed object id)."""
    return str(getattr(ref, "_moId", ref))


SESSION_MARK = "host_selection_session"


def _session_of(connection: Connection | None) -> object | None:
    """A mark of the connection's session: the connection's cache is emptied at each login, and
    a new connection has its own (None: no connection, as in tests of the rules)."""
    if connection is None:
        return None
    return connection.cache.setdefault(SESSION_MARK, object())
