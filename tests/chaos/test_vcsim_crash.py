"""A vSphere pool's reconcile run SIGKILLed (or SIGSTOPped) at the worst moments, the outsider's
way: the run is a process of its own (tests/chaos/crash_runner.py, through the reconcile
Lambda's entry point) on vcsim, whose calls are slowed so a kill can land inside one.

The worst moments: after CloneVM_Task was sent (inside the call, or once vCenter answered) and
before its task was recorded in Redis; after Destroy_Task likewise; during a disk or a snapshot
task; with a migration slot taken; while users check out the VMs a stopped pass is looking at;
and a pass stopped past its lease while another run takes the pool over. After each, the next
runs are an ordinary new process's (as in AWS: the dead run's lease expires, nobody knows it
died) or the restarted local stack's (``LocalScheduler.release_what_the_dead_left``), and within
a bounded number of passes: vCenter's folder holds exactly the pool's ready and running VMs (no
clone leaked), every VM checked out before is still its user's and was never handed to anyone
else, no task_limit slot is held, and the pool is full.

tests/chaos/test_crash_every_write.py kills an in-process run after every provider call; here
the process really dies (its sockets closed mid-call, its threads gone) and vCenter goes on with
what it was sent.
"""

from __future__ import annotations

import json
import os
import random
import secrets
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import pytest
import redis
import yaml

from chalicelib.config import build
from chalicelib.manager.runner import LEASE_SECONDS, run_pool
from chalicelib.store import VMRecord
from chalicelib.store.vm_tasks import VMTaskStore, task_errors
from local.scheduler import LocalScheduler
from tests.chaos.crash_runner import write_clock
from tests.harness import Harness, HarnessFactory, assert_consistent
from tests.support import eventually, stop_process
from tests.vsphere import admin
from tests.vsphere.vcsim import DATACENTER, VcsimServer, vcsim_document, vms_in_folders

PREFIX = "vcrash:"
POOL = "crash"
SIZE = 2
CALL_SECONDS = 0.8
"""How long vcsim takes to act on each slowed call (clone, destroy, disk, snapshot): a kill
``CALL_SECONDS / 2`` after the call was sent lands inside it, and vCenter still acts on it."""
SLOWED = ("CloneVM_Task", "Destroy_Task", "ReconfigVM_Task", "CreateSnapshot_Task")
PASS_SECONDS = 15.0
"""The fake clock's step between passes after a kill (past every grace within ten passes)."""
MAX_PASSES = 40
"""Passes after a kill within which the pool must be whole again."""
TIMEOUT_MINUTES = 5
"""The pool's timeout: how long a clone asked of vCenter by a run killed before noting its task
keeps its place when vCenter never made it (killed before the call left): 20 passes."""


@pytest.fixture(scope="module")
def slow_vcsim(vcsim_dir: Path) -> Iterator[VcsimServer]:
    """A vCenter whose clone, destroy, disk and snapshot calls are slow to act (and whose clone
    tasks run a while, the VM in the folder meanwhile): it outlives every run, as a real one
    does; each test's pool has a folder of its own."""
    with VcsimServer(boot_delay=0.2, cert_path=vcsim_dir / "crash.pem", clone_delay=0.3,
                     method_delays={method: CALL_SECONDS for method in SLOWED}) as server:
        yield server


@dataclass
class Crashing:
    """The service in process (the API, the passes after a kill, the checks) and runs of the
    pool in processes of their own, on one Redis and one clock."""

    world: Harness
    server: VcsimServer
    folder: str
    directory: Path
    redis_port: int
    size: int = SIZE
    kept: set[str] = field(default_factory=set)
    """VMs checked out to users: they must stay theirs and in vCenter."""
    handed_out: list[str] = field(default_factory=list)
    """Every VM any checkout answered with: none twice."""

    @property
    def clock_file(self) -> Path:
        return self.directory / "clock"

    def environment(self, **crash: str) -> dict[str, str]:
        write_clock(self.clock_file, self.world.clock.now())
        return {**os.environ, "CRASH_CONFIG": str(self.directory / "config.yaml"), "CRASH_POOL": POOL,
                "CRASH_REDIS_PORT": str(self.redis_port), "CRASH_PREFIX": PREFIX,
                "CRASH_CLOCK": str(self.clock_file), "CRASH_SAY": str(self.directory / "said"), **crash}

    def start(self, **crash: str) -> subprocess.Popen[str]:
        """A run of the pool in a process of its own; ``crash``: CRASH_* settings (crash_runner)."""
        (self.directory / "said").write_text("")
        return subprocess.Popen([sys.executable, "-m", "tests.chaos.crash_runner"], env=self.environment(**crash),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def finish(self, process: subprocess.Popen[str], started: float) -> tuple[int, str]:
        """Wait for the run's end; the fake clock moves on by the real time it took."""
        out, err = process.communicate(timeout=60)
        self.world.clock.advance(time.monotonic() - started + 1)
        return process.returncode, out + err

    def run(self, **crash: str) -> tuple[int, str]:
        started = time.monotonic()
        return self.finish(self.start(**crash), started)

    def killed(self, checkpoint: str, after: float = 0.0) -> str:
        """A run SIGKILLed at ``checkpoint`` (``after`` seconds later): what it printed."""
        status, output = self.run(CRASH_AT=checkpoint, CRASH_AFTER=str(after))
        assert status == -signal.SIGKILL, f"the run was to die at {checkpoint}: status {status}\n{output}"
        return output

    def said(self) -> list[str]:
        return (self.directory / "said").read_text().split()

    # --- users ---

    def check_out(self, count: int = 1) -> list[str]:
        """``count`` VMs checked out through the API (POST /vm), for ``vm_lifetime``."""
        hosts = self.world.checkout_vms(POOL, count)
        self.handed_out += hosts
        self.kept |= set(hosts)
        return hosts

    def give_back(self, host: str) -> None:
        assert self.world.delete(f"/api/v3/vm/{host}").status == 200
        self.kept.discard(host)

    # --- what vCenter holds ---

    def in_vcenter(self) -> set[str]:
        return set(vms_in_folders(self.server).get(self.folder, []))

    def whole(self) -> bool:
        world = self.world
        return (world.count(POOL, "ready") == self.size and not world.hosts(POOL, "pending")
                and not world.hosts(POOL, "completed") and not world.hosts(POOL, "discovered")
                and self.in_vcenter() == world.hosts(POOL, "ready") | world.hosts(POOL, "running"))

    def converge(self, where: str) -> int:
        """Ordinary runs (the fake clock moving on) until the pool is whole; returns the passes.
        vcsim boots guests and acts on slowed calls on its own clock: hence ``eventually``."""
        passes = 0

        def one_pass() -> bool:
            nonlocal passes
            passes += 1
            assert passes <= MAX_PASSES, f"{where}: not whole after {MAX_PASSES} passes: {self.state()}"
            self.world.clock.advance(PASS_SECONDS)
            report = run_pool(self.world.services, POOL, 0.0)
            assert report.leased, f"{where}: pass {passes} found the pool's lease held: {report}"
            assert_consistent(self.world, POOL, pass_completed=False)
            return self.whole()

        eventually(one_pass, 60, f"{where}: the pool whole again", interval=0.2)
        return passes

    def tasks_ended(self, host: str, where: str) -> VMRecord:
        """Ordinary runs until the VM's disk and snapshot tasks have all ended; its record then."""
        world = self.world

        def ended() -> VMRecord | None:
            world.clock.advance(PASS_SECONDS)
            run_pool(world.services, POOL, 0.0)
            record = world.store.get_vm(host)
            done = record is not None and not VMTaskStore(world.store).queued(host) and not record.raw.get("task")
            return record if done else None

        return eventually(ended, 30, f"{where}: the VM's tasks to end", interval=0.2)

    def state(self) -> dict[str, object]:
        return {**{state: sorted(self.world.hosts(POOL, state))
                   for state in ("pending", "ready", "running", "completed", "discovered")},
                "vcenter": sorted(self.in_vcenter()), "cloning": self.world.store.cloning_count()}

    def assert_whole(self, where: str) -> None:
        world = self.world
        assert self.kept <= world.hosts(POOL, "running"), f"{where}: a VM in use left its user: {self.state()}"
        assert self.kept <= self.in_vcenter(), f"{where}: a VM in use was destroyed: {self.state()}"
        assert len(self.handed_out) == len(set(self.handed_out)), f"{where}: a VM handed out twice"
        assert not (self.kept & world.hosts(POOL, "ready")), f"{where}: a VM in use is ready again"
        assert world.store.cloning_count() == 0, f"{where}: clone slots held: {self.state()}"
        assert not world.client.zrange(world.store.keys.pool_clones, 0, -1), f"{where}: task_limit slots held"


def sweep(names: str, combinations: list[tuple[object, ...]], every_run: list[tuple[object, ...]]) -> Any:
    """Parametrize ``names`` with every combination; those not in ``every_run`` run only in the
    audit sweep (``-m audit``), to keep this file's default run short."""
    return pytest.mark.parametrize(names, [
        pytest.param(*combination, id="-".join(str(value) for value in combination),
                     marks=() if combination in every_run else (pytest.mark.audit,))
        for combination in combinations])


def leases_expire(world: Harness) -> None:
    """The dead run's leases run out (Redis's own time, not the fake clock's)."""
    for key in world.client.keys(f"{PREFIX}lease:*"):
        world.client.delete(key)


def crashing_on(server: VcsimServer, make_harness: HarnessFactory, redis_client: redis.Redis, directory: Path,
                size: int = SIZE, migration_limit: int = 0) -> Crashing:
    """A pool of ``size`` in a folder of its own on ``server``, its config in a file for the runs."""
    folder = f"crash-{secrets.token_hex(4)}"
    document = vcsim_document(server, [{"name": POOL, "size": size, "folder": f"vmpool/{folder}",
                                        "ready_check": "tools"}],
                              service={"task_limit": 2, "migration_limit": migration_limit, "vm_lifetime": 5,
                                       "timeout": TIMEOUT_MINUTES})
    (directory / "config.yaml").write_text(yaml.safe_dump(document))
    world = make_harness(build(document), prefix=PREFIX)
    port = redis_client.connection_pool.connection_kwargs["port"]
    return Crashing(world, server, folder, directory, port, size)


@pytest.fixture
def crashing(make_harness: HarnessFactory, slow_vcsim: VcsimServer, redis_client: redis.Redis,
             tmp_path: Path) -> Crashing:
    return crashing_on(slow_vcsim, make_harness, redis_client, tmp_path)


def recover(crashing: Crashing, restart: bool, where: str) -> int:
    """After a kill: the local stack started again releases what the dead left; in AWS nobody
    knows, the lease expires. Then ordinary runs until the pool is whole; returns their passes."""
    if restart:
        LocalScheduler(crashing.world.services).release_what_the_dead_left()
    else:
        leases_expire(crashing.world)
    passes = crashing.converge(where)
    crashing.assert_whole(where)
    return passes


def full_with_one_in_use(crashing: Crashing) -> None:
    crashing.converge("before the kill")
    crashing.check_out(1)


# --- clones --------------------------------------------------------------------------------------


ANSWERED_OR_INSIDE = {"clone": [("clone_started#1", 0.0), ("reserved", CALL_SECONDS / 2)],
                      "destroy": [("destroy_started#1", 0.0), ("snapshot", CALL_SECONDS / 2)],
                      "task": [("vm_task_started#1", 0.0), ("snapshot", CALL_SECONDS / 2)]}
"""Where to kill: once vCenter answered the call (the checkpoint right after it), or inside it
(half of vCenter's delay after the last checkpoint before it)."""


@sweep("checkpoint, after, restart",
       [(*kill, restart) for kill in ANSWERED_OR_INSIDE["clone"] for restart in (False, True)],
       [("reserved", CALL_SECONDS / 2, False), ("clone_started#1", 0.0, True)])
def test_a_run_killed_between_a_clone_and_its_record_leaks_no_clone(
        crashing: Crashing, checkpoint: str, after: float, restart: bool) -> None:
    """Killed once vCenter answered the first CloneVM_Task of the batch, or while vCenter still
    held the call (it makes the clone after the run died): Redis has a pending VM with no task,
    vCenter has (or soon has) its clone."""
    where = f"killed at {checkpoint} +{after}s"
    crashing.killed(checkpoint, after)
    assert crashing.world.hosts(POOL, "pending"), where
    recover(crashing, restart, where)


# --- destroys ------------------------------------------------------------------------------------


@sweep("checkpoint, after, restart",
       [(*kill, restart) for kill in ANSWERED_OR_INSIDE["destroy"] for restart in (False, True)],
       [("snapshot", CALL_SECONDS / 2, False)])
def test_a_run_killed_between_a_destroy_and_its_record_destroys_the_returned_vm_only(
        crashing: Crashing, checkpoint: str, after: float, restart: bool) -> None:
    """A VM given back, then the run that destroys it killed once vCenter answered Destroy_Task,
    or while vCenter held the call: the returned VM goes, the one in use stays."""
    full_with_one_in_use(crashing)
    (returned,) = crashing.check_out(1)
    crashing.give_back(returned)
    where = f"killed at {checkpoint} +{after}s"
    crashing.killed(checkpoint, after)
    recover(crashing, restart, where)
    assert returned not in crashing.in_vcenter() | crashing.world.hosts(POOL, "ready"), where


# --- disk and snapshot tasks ---------------------------------------------------------------------


@sweep("checkpoint, after, kind, restart",
       [(*kill, kind, restart) for kill in ANSWERED_OR_INSIDE["task"] for kind in ("disk", "snapshot")
        for restart in (False, True)],
       [("vm_task_started#1", 0.0, "disk", False), ("snapshot", CALL_SECONDS / 2, "snapshot", True)])
def test_a_run_killed_during_a_disk_or_snapshot_task_ends_it_once(
        crashing: Crashing, kind: str, checkpoint: str, after: float, restart: bool) -> None:
    """A disk or snapshot asked for (through the API) on a VM in use, the run that starts it
    killed once vCenter answered or while vCenter held the call (it acts on it after the run
    died), a second one queued behind it: both end done, each once, and say so (GET /vm lists
    both; before, the first failed as "never started" with its disk in the VM, and the second,
    started while vCenter still held the first, could fail with InvalidDeviceSpec); the VM
    stays its user's."""
    full_with_one_in_use(crashing)
    (host,) = crashing.kept
    world = crashing.world
    ask = {"disk": f"/api/v3/vm/{host}/disk/8", "snapshot": f"/api/v3/vm/{host}/snapshot"}[kind]
    assert world.post(ask).status in (200, 202), world.replies[-1].body
    where = f"{kind}: killed at {checkpoint} +{after}s"
    crashing.killed(checkpoint, after)
    assert world.post(ask).status in (200, 202), world.replies[-1].body  # the next one, behind it
    # vCenter acts on the call the dead run sent (on its own clock) before anyone looks.
    eventually(lambda: made(crashing, host, kind) == 1, 30, f"{where}: vCenter to act on the call")
    recover(crashing, restart, where)

    record = crashing.tasks_ended(host, where)
    assert (made(crashing, host, kind), task_errors(record)) == (2, []), where
    listed = {"disk": "disks", "snapshot": "snapshots"}[kind]
    assert len(json.loads(record.raw.get(listed) or "[]")) == 2, f"{where}: GET /vm shows {record.raw.get(listed)}"
    crashing.assert_whole(where)


def made(crashing: Crashing, host: str, kind: str) -> int:
    """The disks added to the VM (beyond the template's one), or its snapshots, in vCenter."""
    details = admin.vm_details(crashing.world.provider, f"{DATACENTER}/vm/vmpool/{crashing.folder}/{host}")
    assert details is not None, host
    return len(details["disks_gb"]) - 1 if kind == "disk" else len(details["snapshots"])


# --- users check out what a stopped pass is looking at ------------------------------------------


def stopped_at(crashing: Crashing, checkpoint: str) -> subprocess.Popen[str]:
    """A run that SIGSTOPs itself at ``checkpoint``, once it has."""
    process = crashing.start(CRASH_STOP=checkpoint)
    name, _, count = checkpoint.partition("#")
    eventually(lambda: f"{name}#{count or 1}" in crashing.said(), 30, f"the run to reach {checkpoint}")
    stop_process(process.pid)  # it stops itself: this waits until every thread has
    return process


@sweep("checkpoint, then", [(checkpoint, then) for checkpoint in ("snapshot", "completed", "clone_started#1")
                             for then in ("resumed", "killed")],
       [("snapshot", "resumed")])
def test_vms_checked_out_while_a_pass_is_stopped_stay_their_users(
        crashing: Crashing, checkpoint: str, then: str) -> None:
    """A full pool with a VM in use whose lifetime ended and a ready VM past ready_ttl: the
    pass stops (SIGSTOP) after reading them; meanwhile a user extends the first and another
    checks the ready VMs out (through the API), then the pass resumes (or is killed): neither
    VM is destroyed or handed out again."""
    world = crashing.world
    crashing.converge("before the stop")
    (ending,) = world.check_out(POOL, 1, lifetime_hours=1)
    crashing.converge("refilled")
    world.clock.advance(3600 + 1)
    started = time.monotonic()
    process = stopped_at(crashing, checkpoint)
    if world.put(f"/api/v3/vm/{ending}", {"lifetime": 10}).status == 200:
        crashing.kept.add(ending)  # else the pass had already taken it out of service: its lifetime had ended
    if world.count(POOL, "ready"):  # none when the pass had already taken them out (past ready_ttl)
        crashing.check_out(world.count(POOL, "ready"))
    if then == "resumed":
        process.send_signal(signal.SIGCONT)
    else:
        process.kill()
    crashing.finish(process, started)
    recover(crashing, restart=False, where=f"stopped at {checkpoint}, {then}")


# --- two passes at once --------------------------------------------------------------------------


@sweep("checkpoint, past_lease",
       [(checkpoint, past) for checkpoint in ("reserved", "clone_started#1", "destroy_started#1", "snapshot")
        for past in (True, False)],
       [("clone_started#1", True)])
def test_a_pass_stopped_while_another_run_takes_the_pool_over_leaks_nothing(
        crashing: Crashing, checkpoint: str, past_lease: bool) -> None:
    """A run stopped (SIGSTOP) mid-pass; its lease expires and another run takes the pool over,
    a user checks out and gives back meanwhile; then the first resumes (SIGCONT): past its lease
    it must find out and stop, within it (a pause shorter than the renewal) it goes on with what
    it read: either way nothing leaks and nothing in use goes."""
    world = crashing.world
    if checkpoint.startswith("destroy"):
        full_with_one_in_use(crashing)
        (returned,) = crashing.check_out(1)
        crashing.give_back(returned)
    started = time.monotonic()
    process = stopped_at(crashing, checkpoint)
    if past_lease:
        world.clock.advance(LEASE_SECONDS + 1)
        write_clock(crashing.clock_file, world.clock.now())
    leases_expire(world)
    report = run_pool(world.services, POOL, 0.0)
    assert report.leased, report
    if world.count(POOL, "ready"):
        crashing.check_out(1)
    process.send_signal(signal.SIGCONT)
    status, output = crashing.finish(process, started)
    assert status == 0, output
    lost = next(json.loads(line) for line in output.splitlines() if line.startswith('{"leased"'))
    # Past its lease it must find out; within it, a slow provider call (the stop was inside one)
    # has it check too.
    assert not past_lease or any("lease" in failure for failure in lost["failures"]), output
    recover(crashing, restart=False, where=f"stopped at {checkpoint}, past lease: {past_lease}")


# --- anywhere ------------------------------------------------------------------------------------


@pytest.mark.audit
@pytest.mark.parametrize("seed", range(8))
def test_a_churning_run_killed_at_a_random_moment_converges(crashing: Crashing, seed: int) -> None:
    """A full pool with a VM in use (a disk asked for on it) and one given back, its run killed
    at a random moment of its first 2.5 s (a pass here takes 1 to 3 s: inside or between calls),
    recovered as in AWS or as the local stack: whole again, the disk on the VM once and listed,
    or not on it and reported."""
    chance = random.Random(seed)
    full_with_one_in_use(crashing)
    (host,) = crashing.kept
    (returned,) = crashing.check_out(1)
    crashing.give_back(returned)
    world = crashing.world
    assert world.post(f"/api/v3/vm/{host}/disk/8").status in (200, 202), world.replies[-1].body
    delay = chance.uniform(0.0, 2.5)
    where = f"seed {seed}: killed {delay:.2f} s into the run"
    started = time.monotonic()
    process = crashing.start()
    time.sleep(delay)  # a moment of the run's own (real) time
    process.kill()
    crashing.finish(process, started)
    time.sleep(CALL_SECONDS)  # a call the run had sent lands in vCenter (on its clock) before anyone looks
    recover(crashing, chance.random() < 0.5, where)

    record = crashing.tasks_ended(host, where)
    disks = made(crashing, host, "disk")
    listed = json.loads(record.raw.get("disks") or "[]")
    assert (disks, len(listed), len(task_errors(record))) in ((1, 1, 0), (0, 0, 1)), \
        f"{where}: {disks} disks in vCenter, listed {listed}, errors {task_errors(record)}"
    assert returned not in crashing.in_vcenter(), where


# --- migrations ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def busy_vcsim(vcsim_dir: Path) -> Iterator[VcsimServer]:
    """Every powered-on VM uses 15 % of its host (every clone lands on the template's), and
    vMotions (RelocateVM_Task) are slow to act: checked-out VMs move, and a kill lands inside."""
    with VcsimServer(boot_delay=0.2, cert_path=vcsim_dir / "crash-busy.pem", host_load_per_vm=15,
                     method_delays={"RelocateVM_Task": CALL_SECONDS}) as server:
        yield server


@pytest.mark.audit
@pytest.mark.parametrize("restart", [False, True], ids=["aws", "local"])
def test_a_run_killed_inside_a_migration_gives_the_slot_back_and_keeps_the_vm(
        make_harness: HarnessFactory, busy_vcsim: VcsimServer, redis_client: redis.Redis, tmp_path: Path,
        restart: bool) -> None:
    """Two VMs checked out from a busy host (migration_limit 1), the run that starts the first
    one's vMotion killed while vCenter holds the call (it moves the VM after the run died): the
    slot comes back, the second VM's migration runs, both stay their users', and GET /vm says
    where each really is."""
    crashing = crashing_on(busy_vcsim, make_harness, redis_client, tmp_path, size=3, migration_limit=1)
    world = crashing.world
    crashing.converge("before the kill")
    crashing.check_out(2)
    where = f"killed inside RelocateVM_Task, restart: {restart}"
    crashing.killed("migration_slot", CALL_SECONDS / 2)
    time.sleep(CALL_SECONDS)  # the call the run had sent lands in vCenter (on its clock) before anyone looks
    recover(crashing, restart, where)

    def settled() -> bool:
        world.clock.advance(PASS_SECONDS)
        run_pool(world.services, POOL, 0.0)
        return world.migrations_in_flight() == 0 and all(
            not world.store.get_vm(host).raw.get("migration") for host in crashing.kept)  # type: ignore[union-attr]

    eventually(settled, 30, f"{where}: the migrations to end and their slots to come back", interval=0.2)
    for vm in world.provider.list_vms(world.pool(POOL)):
        if vm.name in crashing.kept:
            assert world.describe(vm.name)["host"] == vm.host, f"{where}: GET /vm says {vm.name} is elsewhere"
    crashing.assert_whole(where)
