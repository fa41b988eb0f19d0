"""A provider whose VMs are records in Redis: for the local stack, load tests and unit tests.

It behaves like a slow, unreliable hypervisor on purpose. Clones take a while to appear and then
a while to boot; any operation can fail at a configured rate. It takes vmpooler's dummy provider
keys with the same meaning (``createvm_max_time`` seconds, ``createvm_fail_percent`` and so on),
per provider and per pool, plus ``boot_time`` (seconds from clone to ready), ``createvm_min_time``
(the shortest clone: equal to ``createvm_max_time``, every clone takes that long), ``seed``, and
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
from typing import Any, Collection, Sequence

import redis

from chalicelib.clock import Clock
from chalicelib.config import PoolConfig, ProviderConfig
from chalicelib.providers.base import (
    InventoryChanges,
    Migration,
    Provider,
    ProviderError,
    Readiness,
    TaskState,
    TaskStatus,
    VMInfo,
)
from chalicelib.providers.failures import FailureKind
from chalicelib.store.keys import DEFAULT_PREFIX, Keys

TASK_TTL_SECONDS = 24 * 3600

CHANGE_LOG_KEPT = 100_000
"""Folder changes remembered for ``inventory_changes``: a pass asking about an older token lists
the whole folder instead."""

_WRITE_VM = """
-- Write (ARGV[2] non-empty) or delete a VM of a folder, and log the change: the folder's version
-- goes up by one and the VM's name is logged at that version (what vSphere's property collector
-- versions do for a real folder).
-- KEYS: folder, version, change log[, a task]. ARGV: name, the VM as JSON or '', changes kept[,
-- the task as JSON, its TTL]: a clone records its task and its VM in one step.
if KEYS[4] then
  redis.call('SET', KEYS[4], ARGV[4], 'EX', ARGV[5])
end
if ARGV[2] == '' then
  redis.call('HDEL', KEYS[1], ARGV[1])
else
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
end
local version = redis.call('INCR', KEYS[2])
redis.call('ZADD', KEYS[3], version, ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', version - tonumber(ARGV[3]))
return version
"""

_START_IF_PRESENT = """
-- Record a task on a VM of the folder, if the folder has it. KEYS: folder, task.
-- ARGV: name, the task as JSON, its TTL. Returns 1 when recorded.
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0 then
  return 0
end
redis.call('SET', KEYS[2], ARGV[2], 'EX', ARGV[3])
return 1
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

    def __init__(self, config: ProviderConfig, client: redis.Redis, clock: Clock, prefix: str = DEFAULT_PREFIX) -> None:
        self.name = config.name
        self.config = config
        self.client = client
        self.clock = clock
        self.keys = Keys(prefix)
        seed = getattr(config.settings, "seed", None)
        self._random = random.Random(seed) if seed is not None else random.SystemRandom()
        self._calls = 0
        self._write_vm = client.register_script(_WRITE_VM)
        self._start_if_present = client.register_script(_START_IF_PRESENT)

    # --- keys ---------------------------------------------------------------------------------

    def _folder_key(self, pool: PoolConfig) -> str:
        return self.keys.dummy_folder(self.name, pool.folder or pool.name)

    def _version_key(self, folder_key: str) -> str:
        return f"{folder_key}:version"

    def _change_log_key(self, folder_key: str) -> str:
        return f"{folder_key}:changes"

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
        self._write(folder_key, vm["name"], json.dumps(vm))

    def _delete_vm(self, folder_key: str, name: str) -> None:
        self._write(folder_key, name, "")

    def _write(self, folder_key: str, name: str, vm_json: str, task: tuple[str, dict[str, Any]] | None = None) -> None:
        keys = [folder_key, self._version_key(folder_key), self._change_log_key(folder_key)]
        args: list[Any] = [name, vm_json, CHANGE_LOG_KEPT]
        if task is not None:
            keys.append(self._task_key(task[0]))
            args += [json.dumps(task[1]), TASK_TTL_SECONDS]
        self._script(self._write_vm, keys, args)

    def _script(self, script: Any, keys: list[str], args: list[Any]) -> Any:
        self._calls += 1
        try:
            return script(keys=keys, args=args)
        except redis.RedisError as error:
            raise ProviderError(f"dummy provider storage: {type(error).__name__}", FailureKind.CONNECTION) from error

    def _start_task(
        self, pool: PoolConfig, kind: str, vm_name: str, operation: _Operation, **extra: Any
    ) -> tuple[str, dict[str, Any]]:
        """Record a task that finishes (or fails) at a time drawn now. Returns its ref and itself."""
        task_ref, task = self._new_task(pool, kind, vm_name, operation, **extra)
        self._call("set", self._task_key(task_ref), json.dumps(task), ex=TASK_TTL_SECONDS)
        return task_ref, task

    def _new_task(
        self, pool: PoolConfig, kind: str, vm_name: str, operation: _Operation, **extra: Any
    ) -> tuple[str, dict[str, Any]]:
        """A task that finishes (or fails) at a time drawn now, not yet recorded: its ref and itself."""
        task_ref = f"{kind}-{secrets.token_hex(6)}"
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

    def find_vms(self, pool: PoolConfig, names: Collection[str]) -> Sequence[VMInfo]:
        """The VMs of ``names`` in the folder, in one HMGET: O(len(names)), not O(folder)."""
        if not names:
            return []
        names = list(names)
        found = self._call("hmget", self._folder_key(pool), names)
        return self._visible(pool, (json.loads(raw) for raw in found if raw is not None))

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
            pipe.get(self._version_key(folder_key))
            if since is not None:
                pipe.zrangebyscore(self._change_log_key(folder_key), f"({since}", "+inf")
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
        annotation = json.dumps({"pool": pool.name, "creator": "vmpool"})
        poweroff_percent = self._setting(pool, "getvm_poweroff_percent")
        result = []
        for vm in vms:
            if vm["available_at"] > now:
                continue  # still cloning: a real hypervisor shows nothing yet
            booted = now >= vm["booted_at"]
            if booted and vm["powered_on"] and poweroff_percent and self._fails(pool, "getvm_poweroff_percent"):
                vm["powered_on"] = False
                self._save_vm(self._folder_key(pool), vm)
            result.append(
                VMInfo(
                    name=vm["name"],
                    powered_on=vm["powered_on"],
                    ip=vm["ip"] if booted and vm["powered_on"] else None,
                    guest_hostname=vm["name"] if booted else None,
                    tools_running=booted and vm["powered_on"],
                    host=vm.get("host", DEFAULT_HOST),
                    annotation=annotation,
                )
            )
        return result

    def clone(self, pool: PoolConfig, hostname: str) -> str:
        failure = FailureKind.parse(str(self.config.pool_setting(pool, "createvm_fail_kind", "other")))
        task_ref, task = self._new_task(pool, "clone", hostname, _CLONE, failure=failure.value)
        if task["fails"]:
            self._call("set", self._task_key(task_ref), json.dumps(task), ex=TASK_TTL_SECONDS)
        else:
            available_at = task["due"]
            vm = {
                "name": hostname,
                "template": pool.template,
                "available_at": available_at,
                "booted_at": available_at + self._setting(pool, "boot_time"),
                "powered_on": True,
                "ip": "10.{}.{}.{}".format(
                    self._random.randint(0, 255), self._random.randint(0, 255), self._random.randint(1, 254)
                ),
                "disks": [],
                "snapshots": [],
            }
            self._write(self._folder_key(pool), hostname, json.dumps(vm), (task_ref, task))  # one round trip
        return task_ref

    def clone_seconds(self, pool: PoolConfig) -> float | None:
        """Every clone is done within ``createvm_max_time``."""
        return self._setting(pool, _CLONE.time_key)

    def task_status(self, task_ref: str) -> TaskStatus:
        raw = self._call("get", self._task_key(task_ref))
        if raw is None:
            return TaskStatus(TaskState.ERROR, f"dummy: unknown task {task_ref}")
        task = json.loads(raw)
        if self.clock.now() < task["due"]:
            return TaskStatus(TaskState.RUNNING)
        if task["fails"]:
            return TaskStatus(TaskState.ERROR, f"dummy: {task['kind']} failed (simulated failure)",
                              FailureKind.parse(task.get("failure")))
        self._apply(task)
        return TaskStatus(TaskState.SUCCESS)

    def _apply(self, task: dict[str, Any]) -> None:
        """Make a finished task's effect visible on the VM (idempotent)."""
        if task["kind"] == "destroy":
            self._delete_vm(task["folder"], task["vm"])
            return
        if task["kind"] in ("clone", "revert"):
            return  # the clone wrote its VM when it started; a revert changes nothing we model
        raw = self._call("hget", task["folder"], task["vm"])
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
        self._save_vm(task["folder"], vm)

    def destroy(self, pool: PoolConfig, hostname: str) -> str | None:
        task_ref, task = self._new_task(pool, "destroy", hostname, _DESTROY)
        recorded = self._script(self._start_if_present, [self._folder_key(pool), self._task_key(task_ref)],
                                [hostname, json.dumps(task), TASK_TTL_SECONDS])
        return task_ref if recorded else None

    def check_ready(self, pool: PoolConfig, vm: VMInfo) -> Readiness:
        if not vm.powered_on:
            return Readiness(False, "powered off")
        if not vm.ip:
            return Readiness(False, "booting: no IP address yet")
        if self._fails(pool, "vmready_fail_percent"):
            return Readiness(False, "dummy: readiness check failed (simulated failure)")
        return Readiness(True)

    def add_disk(self, pool: PoolConfig, hostname: str, size_gb: int) -> str:
        self._require_vm(pool, hostname)
        return self._start_task(pool, "disk", hostname, _DISK, size_gb=size_gb, disk_id=secrets.token_hex(4))[0]

    def create_snapshot(self, pool: PoolConfig, hostname: str, snapshot_name: str) -> str:
        self._require_vm(pool, hostname)
        return self._start_task(pool, "snapshot", hostname, _SNAPSHOT, snapshot=snapshot_name)[0]

    def revert_snapshot(self, pool: PoolConfig, hostname: str, snapshot_name: str) -> str:
        vm = self._require_vm(pool, hostname)
        if snapshot_name not in vm["snapshots"]:
            raise ProviderError(f"snapshot {snapshot_name} not found on {hostname}")
        return self._start_task(pool, "revert", hostname, _REVERT, snapshot=snapshot_name)[0]

    def start_migration(self, pool: PoolConfig, hostname: str) -> Migration | None:
        """As vmpooler's dummy: without ``migratevm_couldmove_percent`` a VM never moves; with it,
        the VM is on a busier host at that rate and moves to another of ten pretend hosts, taking
        up to ``migratevm_max_time`` seconds and failing at ``migratevm_fail_percent``."""
        vm = self._require_vm(pool, hostname)
        current = vm.get("host", DEFAULT_HOST)
        chance = self.config.pool_setting(pool, "migratevm_couldmove_percent")
        if chance is None or not self._fails(pool, "migratevm_couldmove_percent"):
            return None
        others = [f"{DEFAULT_HOST}-{n}" for n in range(1, DUMMY_HOSTS + 1) if f"{DEFAULT_HOST}-{n}" != current]
        target = self._random.choice(others)
        task_ref = self._start_task(pool, "migrate", hostname, _MIGRATE, host=target)[0]
        return Migration(task_ref, current, target)

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

    def delete_by_hand(self, pool: PoolConfig, hostname: str) -> None:
        """A VM that someone deleted outside the service."""
        self._delete_vm(self._folder_key(pool), hostname)
