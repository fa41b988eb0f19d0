"""A provider whose VMs are records in Redis: for the local stack, load tests and unit tests.

It behaves like a slow, unreliable hypervisor on purpose. Clones take a while to appear and then
a while to boot; any operation can fail at a configured rate. It takes vmpooler's dummy provider
keys with the same meaning (``createvm_max_time`` seconds, ``createvm_fail_percent`` and so on),
per provider and per pool, plus ``boot_time`` (seconds from clone to ready), ``createvm_min_time``
(the shortest clone: equal to ``createvm_max_time``, every clone takes that long),
``createvm_cancel_time`` (how long a cancelled clone runs on: ``cancel_task``), ``seed``, and
``createvm_fail_kind``: the kind a simulated clone failure reports (``template``, ``network``,
``permission``, ``capacity``... as ``providers.base.FailureKind``; default ``other``).

Because the VMs live in Redis, they outlast any one Lambda invocation, exactly as a real
hypervisor's would. Times come from the clock the provider is given, so tests drive it with a
fake clock and never sleep.
"""

from __future__ import annotations

import json
import random
import secrets
from dataclasses import dataclass
from typing import Any, Callable, Collection, Mapping, Sequence

import redis

from chalicelib.clock import Clock
from chalicelib.config import PoolConfig, ProviderConfig
from chalicelib.providers import ownership
from chalicelib.providers.base import (
    AnswerLost,
    Asking,
    InventoryChanges,
    Migration,
    Provider,
    ProviderError,
    Readiness,
    Started,
    TargetChosen,
    TaskState,
    TaskStatus,
    VMInfo,
    ask_all,
    never,
    no_target_noted,
    nothing_started,
)
from chalicelib.providers.failures import FailureKind
from chalicelib.store.connection import never_sent
from chalicelib.store.keys import DEFAULT_PREFIX, Keys
from chalicelib.store.scripts import registered

TASK_TTL_SECONDS = 24 * 3600

CHANGE_LOG_KEPT = 100_000
"""Folder changes remembered for ``inventory_changes``: a pass asking about an older token lists
the whole folder instead."""

_WRITE_VMS = """
-- Write or delete VMs of a folder, and log each change: the folder's version goes up by one a VM
-- and the VM's name is logged at that version (what vSphere's property collector versions do for
-- a real folder). Tasks are recorded in the same step: a clone records its task and its VM at once.
-- KEYS: folder, version, change log, then one key per task.
-- ARGV: changes kept, the tasks' TTL, the number of VMs n, then n pairs (name, the VM as JSON or
--   '' to delete it), then one task as JSON per task key. Returns the folder's version.
local kept, ttl, n = tonumber(ARGV[1]), ARGV[2], tonumber(ARGV[3])
for i = 4, #KEYS do
  redis.call('SET', KEYS[i], ARGV[2 * n + i], 'EX', ttl)
end
local version = tonumber(redis.call('GET', KEYS[2]) or '0')
for i = 0, n - 1 do
  local name, vm = ARGV[4 + 2 * i], ARGV[5 + 2 * i]
  if vm == '' then
    redis.call('HDEL', KEYS[1], name)
  else
    redis.call('HSET', KEYS[1], name, vm)
  end
  version = redis.call('INCR', KEYS[2])
  redis.call('ZADD', KEYS[3], version, name)
end
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', version - kept)
return version
"""

_REPLACE_VM = """
-- Write a VM of a folder only if it is still as the caller read it, logging the change as
-- _WRITE_VMS does: a read-modify-write of one VM that another writer changed in between (two
-- overlapping passes each applying a finished task to it) is told so instead of dropping the
-- other's change. KEYS: folder, version, change log. ARGV: changes kept, the VM's name, the VM as
-- read (JSON), the VM as it is to be (JSON). Returns 1 when written, 0 when it had changed (or gone).
if redis.call('HGET', KEYS[1], ARGV[2]) ~= ARGV[3] then
  return 0
end
redis.call('HSET', KEYS[1], ARGV[2], ARGV[4])
local version = redis.call('INCR', KEYS[2])
redis.call('ZADD', KEYS[3], version, ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', version - tonumber(ARGV[1]))
return 1
"""
APPLY_TRIES = 5
"""Reads of a VM to apply a finished task to before the read leaves it to the next status read
(each applies it again): every try lost to another writer of the same VM in between."""

_START_IF_PRESENT = """
-- Record a task on each VM the folder has. KEYS: folder, then one task key per VM.
-- ARGV: the tasks' TTL, then per VM its name and its task as JSON.
-- Returns per VM 1 when its task was recorded, 0 when the folder has no such VM.
local recorded = {}
for i = 2, #KEYS do
  if redis.call('HEXISTS', KEYS[1], ARGV[2 * i - 2]) == 1 then
    redis.call('SET', KEYS[i], ARGV[2 * i - 1], 'EX', ARGV[1])
    recorded[i - 1] = 1
  else
    recorded[i - 1] = 0
  end
end
return recorded
"""


@dataclass(frozen=True)
class _Operation:
    """How one kind of operation behaves: the keys giving its duration and failure rate."""

    time_key: str
    fail_key: str
    min_time_key: str = ""
    """The key of its shortest duration (ours, not vmpooler's: 0 when absent)."""


_CLONE = _Operation("createvm_max_time", "createvm_fail_percent", "createvm_min_time")
_DESTROY = _Operation("destroyvm_max_time", "destroyvm_fail_percent")
_DISK = _Operation("createdisk_max_time", "createdisk_fail_percent")
_SNAPSHOT = _Operation("createsnapshot_max_time", "createsnapshot_fail_percent")
_REVERT = _Operation("revertsnapshot_max_time", "revertsnapshot_fail_percent")
_MIGRATE = _Operation("migratevm_max_time", "migratevm_fail_percent")

DEFAULT_HOST = "dummy-host"
DUMMY_HOSTS = 10
"""vmpooler's dummy pretends to be a cluster of ten hosts when it migrates."""


class DummyProvider(Provider):
    """VMs and tasks kept in Redis under ``dummy:<provider name>:`` (store/keys.py)."""

    def __init__(self, config: ProviderConfig, client: redis.Redis, clock: Clock, prefix: str = DEFAULT_PREFIX,
                 deployment: str = ownership.deployment_of(None)) -> None:
        self.name = config.name
        self.deployment = deployment
        """Written with each clone and shown in its annotation, as the vSphere provider does
        (providers/ownership.py: a VM another deployment made is left to it)."""
        self.config = config
        self.client = client
        self.clock = clock
        self.keys = Keys(prefix)
        seed = getattr(config.settings, "seed", None)
        self._random = random.Random(seed) if seed is not None else random.SystemRandom()
        self._calls = 0
        self._write_vms = registered(client, _WRITE_VMS)
        self._start_if_present = registered(client, _START_IF_PRESENT)
        self._replace_vm = registered(client, _REPLACE_VM)

    # --- keys ---------------------------------------------------------------------------------

    def _folder_key(self, pool: PoolConfig) -> str:
        return self.keys.dummy_folder(self.name, pool.folder or pool.name)

    def _task_key(self, task_ref: str) -> str:
        return self.keys.dummy_task(self.name, task_ref)

    # --- behaviour knobs ----------------------------------------------------------------------

    def _setting(self, pool: PoolConfig, key: str) -> float:
        return float(self.config.pool_setting(pool, key, 0) or 0)

    def _duration(self, pool: PoolConfig, operation: _Operation) -> float:
        """vmpooler's dummy takes a random time up to the maximum; with a seed it is repeatable."""
        longest = self._setting(pool, operation.time_key)
        shortest = min(self._setting(pool, operation.min_time_key), longest) if operation.min_time_key else 0.0
        return self._random.uniform(shortest, longest) if longest > 0 else 0.0

    def _fails(self, pool: PoolConfig, key: str) -> bool:
        percent = self._setting(pool, key)
        return percent > 0 and self._random.uniform(0, 100) < percent

    # --- Redis access -------------------------------------------------------------------------

    def _call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        self._calls += 1
        try:
            return getattr(self.client, method)(*args, **kwargs)
        except redis.RedisError as error:
            raise ProviderError(f"dummy provider storage: {type(error).__name__}", FailureKind.CONNECTION) from error

    def _vms(self, pool: PoolConfig) -> dict[str, dict[str, Any]]:
        raw = self._call("hgetall", self._folder_key(pool))
        return {name: json.loads(value) for name, value in raw.items()}

    def _save_vm(self, folder_key: str, vm: dict[str, Any]) -> None:
        self._write(folder_key, {vm["name"]: json.dumps(vm)})

    def _delete_vm(self, folder_key: str, name: str) -> None:
        self._write(folder_key, {name: ""})

    def _write(self, folder_key: str, vms: Mapping[str, str],
               tasks: Mapping[str, dict[str, Any]] | None = None) -> None:
        """Write (or, for "", delete) the folder's ``vms`` (name -> JSON) and record ``tasks``
        (ref -> task), in one round trip."""
        tasks = tasks or {}
        keys = [folder_key, self.keys.dummy_folder_version(folder_key), self.keys.dummy_folder_changes(folder_key),
                *(self._task_key(ref) for ref in tasks)]
        args: list[Any] = [CHANGE_LOG_KEPT, TASK_TTL_SECONDS, len(vms)]
        for name, vm_json in vms.items():
            args += [name, vm_json]
        args += [json.dumps(task) for task in tasks.values()]
        self._script(self._write_vms, keys, args)

    def _script(self, script: Any, keys: list[str], args: list[Any]) -> Any:
        self._calls += 1
        try:
            return script(keys=keys, args=args)
        except redis.RedisError as error:
            raise ProviderError(f"dummy provider storage: {type(error).__name__}", FailureKind.CONNECTION) from error

    def _start_task(
        self, pool: PoolConfig, kind: str, vm_name: str, operation: _Operation, ref: str = "", **extra: Any
    ) -> tuple[str, dict[str, Any]]:
        """Record a task that finishes (or fails) at a time drawn now. Returns its ref and itself.
        Raises AnswerLost when the write may have reached Redis and its answer was lost (a
        timeout, a connection closed after the send): the task may be recorded, and runs."""
        task_ref, task = self._new_task(pool, kind, vm_name, operation, ref, **extra)
        try:
            self._call("set", self._task_key(task_ref), json.dumps(task), ex=TASK_TTL_SECONDS)
        except ProviderError as error:
            if never_sent(error.__cause__):  # the connection refused, or its opening timed out
                raise
            raise AnswerLost.of(error) from error.__cause__
        return task_ref, task

    def _new_task(
        self, pool: PoolConfig, kind: str, vm_name: str, operation: _Operation, ref: str = "", **extra: Any
    ) -> tuple[str, dict[str, Any]]:
        """A task that finishes (or fails) at a time drawn now, not yet recorded: its ref (``ref``
        when given) and itself."""
        task_ref = ref or f"{kind}-{secrets.token_hex(6)}"
        now = self.clock.now()
        task = {
            "kind": kind,
            "vm": vm_name,
            "folder": self._folder_key(pool),
            "due": now + self._duration(pool, operation),
            "fails": self._fails(pool, operation.fail_key),
            **extra,
        }
        return task_ref, task

    # --- Provider interface -------------------------------------------------------------------

    def list_vms(self, pool: PoolConfig) -> Sequence[VMInfo]:
        return self._visible(pool, self._vms(pool).values())

    def vm_names(self, pools: Sequence[PoolConfig], out_of_time: Callable[[], bool] = never) -> set[str]:
        """Every VM's name in the pools' folders, clones under way included (their names are
        taken, as vCenter lists a clone's VM while it runs): one pipeline of HKEYS, one call."""
        folders = sorted({self._folder_key(pool) for pool in pools})
        self._calls += 1
        try:
            pipe = self.client.pipeline(transaction=False)
            for folder in folders:
                pipe.hkeys(folder)
            return {name for names in pipe.execute() for name in names}
        except redis.RedisError as error:
            raise ProviderError(f"dummy provider storage: {type(error).__name__}", FailureKind.CONNECTION) from error

    def find_vms(self, pool: PoolConfig, names: Collection[str]) -> Sequence[VMInfo]:
        """The VMs of ``names`` in the folder, in one HMGET: O(len(names)), not O(folder)."""
        if not names:
            return []
        names = list(names)
        found = self._call("hmget", self._folder_key(pool), names)
        return self._visible(pool, (json.loads(raw) for raw in found if raw is not None))

    def clones_under_way(self, pool: PoolConfig, names: Collection[str]) -> Mapping[str, str] | None:
        """The VMs of ``names`` in the folder whose clone time has not passed (one HMGET): a
        clone's VM is written there when the clone is asked for. No task reference: the VM does
        not name its task (it shows once its clone is done, and that ends the wait)."""
        if not names:
            return {}
        names = list(names)
        now = self.clock.now()
        found = self._call("hmget", self._folder_key(pool), names)
        return {name: "" for name, raw in zip(names, found, strict=True)
                if raw and json.loads(raw)["available_at"] > now}

    def inventory_changes(self, pool: PoolConfig, since: str | None) -> InventoryChanges | None:
        """The folder's version and the VMs written or deleted since version ``since``. None
        with ``getvm_poweroff_percent``: VMs then power off as the folder is listed (a
        simulation of VMs failing on their own), so every pass must list it."""
        if self._setting(pool, "getvm_poweroff_percent"):
            return None
        folder_key = self._folder_key(pool)
        self._calls += 1
        try:
            pipe = self.client.pipeline(transaction=True)
            pipe.get(self.keys.dummy_folder_version(folder_key))
            if since is not None:
                pipe.zrangebyscore(self.keys.dummy_folder_changes(folder_key), f"({since}", "+inf")
            version, *changed = pipe.execute()
        except redis.RedisError as error:
            raise ProviderError(f"dummy provider storage: {type(error).__name__}", FailureKind.CONNECTION) from error
        token = str(int(version or 0))
        if since is None or not since.isdigit() or not int(token) - CHANGE_LOG_KEPT <= int(since) <= int(token):
            return InventoryChanges(token, None)
        return InventoryChanges(token, frozenset(changed[0]))

    def _visible(self, pool: PoolConfig, vms: Any) -> list[VMInfo]:
        """What the hypervisor would show of ``vms`` now: clones in progress are not there yet."""
        now = self.clock.now()
        poweroff_percent = self._setting(pool, "getvm_poweroff_percent")
        result = []
        for vm in vms:
            if vm["available_at"] > now:
                continue  # still cloning: a real hypervisor shows nothing yet
            booted = now >= vm["booted_at"]
            if booted and vm["powered_on"] and poweroff_percent and self._fails(pool, "getvm_poweroff_percent"):
                # Over the VM as this read found it only: a disk or snapshot another pass added
                # since stays (the VM is powered off by a later read instead).
                as_read = json.dumps(vm)
                vm["powered_on"] = False
                if not self._replace(self._folder_key(pool), vm, as_read):
                    vm["powered_on"] = True
            result.append(
                VMInfo(
                    name=vm["name"],
                    powered_on=vm["powered_on"],
                    ip=vm["ip"] if booted and vm["powered_on"] else None,
                    addresses=tuple(vm.get("addresses") or ()) if booted and vm["powered_on"] else (),
                    guest_hostname=vm["name"] if booted else None,
                    tools_running=booted and vm["powered_on"],
                    host=vm.get("host", DEFAULT_HOST),
                    annotation=self._annotation(pool, vm),
                )
            )
        return result

    @staticmethod
    def _annotation(pool: PoolConfig, vm: Mapping[str, Any]) -> str:
        """As a vSphere clone's: its pool, who made it (a VM written before the dummy kept its
        deployment names none: this deployment's, as ownership.maker reads it)."""
        made_by = ownership.annotation_fields(vm["deployment"]) if vm.get("deployment") else {"creator": "vmpool"}
        return json.dumps({"pool": pool.name, **made_by})

    def clone(self, pool: PoolConfig, hostname: str) -> str:
        return self._clone_through_clone_vms(pool, hostname)

    def clone_vms(self, pool: PoolConfig, hostnames: Sequence[str], on_started: Started = nothing_started,
                  on_asking: Asking = ask_all) -> dict[str, str | ProviderError]:
        """Every clone's task and (unless it is to fail) its VM, written in one round trip (one
        ``on_asking`` call for all): the VM is in the folder from the start and shows once its
        clone time has passed."""
        if hostnames:
            allowed = set(on_asking(hostnames))
            hostnames = [hostname for hostname in hostnames if hostname in allowed]
        if not hostnames:
            return {}
        failure = FailureKind.parse(str(self.config.pool_setting(pool, "createvm_fail_kind", "other")))
        vms: dict[str, str] = {}
        tasks: dict[str, dict[str, Any]] = {}
        for hostname in hostnames:
            task_ref, task = self._new_task(pool, "clone", hostname, _CLONE, failure=failure.value,
                                            cancel_time=self._setting(pool, "createvm_cancel_time"))
            tasks[task_ref] = task
            if not task["fails"]:
                vms[hostname] = json.dumps(self._new_vm(pool, hostname, task["due"]))
        try:
            self._write(self._folder_key(pool), vms, tasks)
        except ProviderError as error:
            if never_sent(error.__cause__):  # the connection refused, or its opening timed out
                return {hostname: error for hostname in hostnames}  # nothing cloned: a plain failure
            # Written or not: Redis may have run the script and its answer been lost (a timeout,
            # a connection closed after the call left). clones_under_way tells which later.
            return {hostname: AnswerLost.of(error) for hostname in hostnames}
        for hostname in hostnames:
            on_started(hostname)
        return {task["vm"]: task_ref for task_ref, task in tasks.items()}

    def _new_vm(self, pool: PoolConfig, hostname: str, available_at: float) -> dict[str, Any]:
        """A VM cloned from the pool's template, visible at ``available_at``, booted ``boot_time`` later."""
        return {
            "name": hostname,
            "template": pool.template,
            "deployment": self.deployment,
            "available_at": available_at,
            "booted_at": available_at + self._setting(pool, "boot_time"),
            "powered_on": True,
            "ip": "10.{}.{}.{}".format(
                self._random.randint(0, 255), self._random.randint(0, 255), self._random.randint(1, 254)
            ),
            "disks": [],
            "snapshots": [],
        }

    def clone_seconds(self, pool: PoolConfig) -> float | None:
        """Every clone is done within ``createvm_max_time``."""
        return self._setting(pool, _CLONE.time_key)

    def task_status(self, task_ref: str) -> TaskStatus:
        return self.task_statuses([task_ref])[task_ref]

    def task_statuses(self, task_refs: Sequence[str]) -> dict[str, TaskStatus]:
        """The tasks read in one round trip; the finished destroys among them applied in one more."""
        refs = list(dict.fromkeys(task_refs))
        if not refs:
            return {}
        return self._statuses(refs, self._call("mget", [self._task_key(ref) for ref in refs]))

    def cancel_task(self, task_ref: str) -> bool:
        """A clone still running is cancelled as vCenter cancels one: its VM never shows, and its
        task ends in error ``createvm_cancel_time`` seconds later (0 by default: at once).
        Another kind of task, or one that ended, is not cancelled."""
        raw = self._call("get", self._task_key(task_ref))
        task = json.loads(raw) if raw is not None else None
        now = self.clock.now()
        if task is None or task["kind"] != "clone" or task.get("cancelled") or now >= task["due"]:
            return False
        cancelled = {**task, "fails": True, "cancelled": True, "failure": FailureKind.OTHER.value,
                     "due": min(task["due"], now + float(task.get("cancel_time") or 0))}
        self._write(task["folder"], {task["vm"]: ""}, {task_ref: cancelled})
        return True

    def clone_outcomes(self, pool: PoolConfig, tasks: Mapping[str, str]) -> tuple[dict[str, TaskStatus],
                                                                                   list[VMInfo]]:
        """The tasks and the folder's entries for their VMs read in one round trip."""
        if not tasks:
            return {}, []
        refs, names = list(dict.fromkeys(tasks.values())), list(tasks)
        self._calls += 1
        try:
            pipe = self.client.pipeline(transaction=False)
            pipe.mget([self._task_key(ref) for ref in refs])
            pipe.hmget(self._folder_key(pool), names)
            raws, found = pipe.execute()
        except redis.RedisError as error:
            raise ProviderError(f"dummy provider storage: {type(error).__name__}", FailureKind.CONNECTION) from error
        statuses = self._statuses(refs, raws)
        done = {hostname for hostname, task_ref in tasks.items() if statuses[task_ref].state is TaskState.SUCCESS}
        return statuses, self._visible(pool, (json.loads(raw) for name, raw in zip(names, found, strict=True)
                                              if raw is not None and name in done))

    def _statuses(self, refs: list[str], raws: Sequence[str | None]) -> dict[str, TaskStatus]:
        """The statuses of the tasks ``refs`` as read (``raws``); the finished destroys among them
        applied in one more round trip."""
        now = self.clock.now()
        statuses: dict[str, TaskStatus] = {}
        destroyed: dict[str, dict[str, str]] = {}
        for task_ref, raw in zip(refs, raws, strict=True):
            if raw is None:
                statuses[task_ref] = TaskStatus(TaskState.ERROR, f"dummy: unknown task {task_ref}")
                continue
            task = json.loads(raw)
            if now < task["due"]:
                statuses[task_ref] = TaskStatus(TaskState.RUNNING)
                continue
            if task["fails"]:
                why = "cancelled" if task.get("cancelled") else "failed (simulated failure)"
                statuses[task_ref] = TaskStatus(TaskState.ERROR, f"dummy: {task['kind']} {why}",
                                                FailureKind.parse(task.get("failure")))
                continue
            if task["kind"] == "destroy":  # its VM leaves the folder (again, if asked again: idempotent)
                destroyed.setdefault(task["folder"], {})[task["vm"]] = ""
            else:
                self._apply(task)
            statuses[task_ref] = TaskStatus(TaskState.SUCCESS)
        for folder_key, gone in destroyed.items():
            self._write(folder_key, gone)
        return statuses

    def _apply(self, task: dict[str, Any]) -> None:
        """Make a finished disk, snapshot or migration task's effect visible on the VM (idempotent).
        Written only over the VM as read (``_REPLACE_VM``), read again when another writer changed
        it meanwhile: two passes applying a disk and a snapshot at once keep both."""
        if task["kind"] in ("clone", "revert"):
            return  # the clone wrote its VM when it started; a revert changes nothing we model
        folder_key = task["folder"]
        for _ in range(APPLY_TRIES):
            raw = self._call("hget", folder_key, task["vm"])
            if raw is None:
                return
            vm = json.loads(raw)
            if task["kind"] == "disk" and task.get("disk_id") not in [d["id"] for d in vm["disks"]]:
                vm["disks"].append({"id": task["disk_id"], "size_gb": task["size_gb"]})
            elif task["kind"] == "snapshot" and task["snapshot"] not in vm["snapshots"]:
                vm["snapshots"].append(task["snapshot"])
            elif task["kind"] == "migrate" and vm.get("host") != task["host"]:
                vm["host"] = task["host"]
            else:
                return  # nothing changed (a clone, a revert, a task applied before): no change to log
            if self._replace(folder_key, vm, raw):
                return

    def _replace(self, folder_key: str, vm: dict[str, Any], as_read: str) -> bool:
        """Write ``vm`` if the folder still has it as ``as_read`` (its JSON then); whether it did."""
        keys = [folder_key, self.keys.dummy_folder_version(folder_key), self.keys.dummy_folder_changes(folder_key)]
        return bool(self._script(self._replace_vm, keys, [CHANGE_LOG_KEPT, vm["name"], as_read, json.dumps(vm)]))

    def destroy(self, pool: PoolConfig, hostname: str) -> str | None:
        started = self.destroy_vms(pool, [hostname])[hostname]
        if isinstance(started, ProviderError):
            raise started
        return started

    def destroy_vms(self, pool: PoolConfig, hostnames: Sequence[str],
                    on_started: Started = nothing_started) -> dict[str, str | ProviderError | None]:
        """Each VM's destroy task recorded if the folder has the VM, in one round trip (a Redis
        failure raises: nothing was started)."""
        if not hostnames:
            return {}
        tasks = [self._new_task(pool, "destroy", hostname, _DESTROY) for hostname in hostnames]
        args: list[Any] = [TASK_TTL_SECONDS]
        for hostname, (_, task) in zip(hostnames, tasks, strict=True):
            args += [hostname, json.dumps(task)]
        recorded = self._script(self._start_if_present,
                                [self._folder_key(pool), *(self._task_key(ref) for ref, _ in tasks)], args)
        for hostname in hostnames:
            on_started(hostname)
        return {hostname: ref if done else None
                for hostname, (ref, _), done in zip(hostnames, tasks, recorded, strict=True)}

    def check_ready(self, pool: PoolConfig, vm: VMInfo) -> Readiness:
        if not vm.powered_on:
            return Readiness(False, "powered off")
        if not vm.ip:
            return Readiness(False, "booting: no IP address yet")
        if self._fails(pool, "vmready_fail_percent"):
            return Readiness(False, "dummy: readiness check failed (simulated failure)")
        return Readiness(True)

    def add_disk(self, pool: PoolConfig, hostname: str, size_gb: int, task_key: str = "") -> str:
        """A disk task; with ``task_key``, the task's ref and the disk's id are made of it (``applied``)."""
        self._require_vm(pool, hostname)
        return self._start_task(pool, "disk", hostname, _DISK, self._keyed_ref("disk", hostname, task_key),
                                size_gb=size_gb, disk_id=task_key or secrets.token_hex(4))[0]

    def create_snapshot(self, pool: PoolConfig, hostname: str, snapshot_name: str) -> str:
        """A snapshot task, its ref made of the snapshot's name (``applied``)."""
        self._require_vm(pool, hostname)
        return self._start_task(pool, "snapshot", hostname, _SNAPSHOT,
                                self._keyed_ref("snapshot", hostname, snapshot_name), snapshot=snapshot_name)[0]

    @staticmethod
    def _keyed_ref(kind: str, hostname: str, key: str) -> str:
        """The ref of the VM's disk or snapshot task known by ``key`` ("" for none: a random ref)."""
        return f"{kind}-{hostname}-{key}" if key else ""

    def applied(self, pool: PoolConfig, hostname: str, kind: str, key: str) -> bool | None:
        """Whether the VM has the disk asked for with task ``key`` or the snapshot named ``key``:
        on the VM already, or its task (found by its keyed ref) done (then applied, as a status
        read applies it). None for anything else (a revert). Raises ProviderError when the VM is
        not in the pool's folder."""
        if kind not in ("disk", "snapshot"):
            return None
        vm = self._require_vm(pool, hostname)
        if key in ([disk["id"] for disk in vm["disks"]] if kind == "disk" else vm["snapshots"]):
            return True
        task_ref = self._keyed_ref(kind, hostname, key)
        return bool(key) and self.task_status(task_ref).state is TaskState.SUCCESS

    def revert_snapshot(self, pool: PoolConfig, hostname: str, snapshot_name: str) -> str:
        vm = self._require_vm(pool, hostname)
        if snapshot_name not in vm["snapshots"]:
            raise ProviderError(f"snapshot {snapshot_name} not found on {hostname}")
        return self._start_task(pool, "revert", hostname, _REVERT, snapshot=snapshot_name)[0]

    def start_migration(self, pool: PoolConfig, hostname: str,
                        chosen: TargetChosen = no_target_noted) -> Migration | None:
        """As vmpooler's dummy: without ``migratevm_couldmove_percent`` a VM never moves; with it,
        the VM is on a busier host at that rate and moves to another of ten pretend hosts, taking
        up to ``migratevm_max_time`` seconds and failing at ``migratevm_fail_percent``. The VM
        keeps its last move's task, as vCenter keeps a VM's recent tasks (``recent_migrations``)."""
        vm = self._require_vm(pool, hostname)
        current = vm.get("host", DEFAULT_HOST)
        chance = self.config.pool_setting(pool, "migratevm_couldmove_percent")
        if chance is None or not self._fails(pool, "migratevm_couldmove_percent"):
            return None
        others = [f"{DEFAULT_HOST}-{n}" for n in range(1, DUMMY_HOSTS + 1) if f"{DEFAULT_HOST}-{n}" != current]
        target = self._random.choice(others)
        chosen(target)
        task_ref, task = self._new_task(pool, "migrate", hostname, _MIGRATE, host=target)
        self._write(task["folder"], {hostname: json.dumps({**vm, "moved_by": task_ref, "moved_at": self.clock.now()})},
                    {task_ref: task})
        return Migration(task_ref, current, target)

    def recent_migrations(self, pool: PoolConfig, hostname: str, within: float) -> Sequence[str] | None:
        """The VM's last move, when it was asked for in the last ``within`` seconds."""
        raw = self._call("hget", self._folder_key(pool), hostname)
        vm = json.loads(raw) if raw is not None else {}
        recent = float(vm.get("moved_at") or 0) >= self.clock.now() - within
        return [vm["moved_by"]] if vm.get("moved_by") and recent else []

    def _require_vm(self, pool: PoolConfig, hostname: str) -> dict[str, Any]:
        raw = self._call("hget", self._folder_key(pool), hostname)
        if raw is None:
            raise ProviderError(f"VM {hostname} not found")
        return json.loads(raw)

    def call_count(self) -> int:
        return self._calls

    # --- for tests and operators: what a person would do by hand in vCenter -------------------

    def create_by_hand(self, pool: PoolConfig, hostname: str) -> None:
        """A VM that someone made in the pool's folder outside the service."""
        now = self.clock.now()
        self._save_vm(
            self._folder_key(pool),
            {"name": hostname, "template": "", "available_at": now, "booted_at": now,
             "powered_on": True, "ip": "10.0.0.1", "disks": [], "snapshots": []},
        )

    def readdress_by_hand(self, pool: PoolConfig, hostname: str, ip: str, addresses: Sequence[str] = ()) -> None:
        """The VM's guest reports ``ip`` now (``VMInfo.ip``), and ``addresses`` on its network
        interfaces (a reboot onto another DHCP lease, an IPv6 address it configured)."""
        vm = self._vms(pool)[hostname]
        vm["ip"], vm["addresses"] = ip, list(addresses)
        self._save_vm(self._folder_key(pool), vm)

    def relocate_by_hand(self, pool: PoolConfig, hostname: str, host: str) -> None:
        """A move of the VM to ``host`` someone else started (an operator's vMotion): it runs as
        vmpool's moves do (``migratevm_max_time``), and is the VM's last move, as vCenter lists
        every user's tasks among a VM's recent ones (``recent_migrations``)."""
        vm = self._require_vm(pool, hostname)
        task_ref, task = self._new_task(pool, "migrate", hostname, _MIGRATE, host=host)
        self._write(task["folder"], {hostname: json.dumps({**vm, "moved_by": task_ref, "moved_at": self.clock.now()})},
                    {task_ref: task})

    def delete_by_hand(self, pool: PoolConfig, hostname: str) -> None:
        """A VM that someone deleted outside the service."""
        self._delete_vm(self._folder_key(pool), hostname)
