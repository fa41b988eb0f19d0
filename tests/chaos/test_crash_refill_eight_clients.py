"""The scheduler's reconcile run SIGKILLed inside each step of a refill (tests/chaos/crash_runner.py:
a process of its own, through the entry point the local scheduler and the Lambda use), while 8
clients with tokens of their own hold VMs of the pool and two of them have just given theirs
back: killed with clones recorded or not yet, destroys recorded or not yet. The run is stopped
(SIGSTOP) at the checkpoint first, its reads of the pool in hand, and the 8 check out again
meanwhile (the VMs still ready in its snapshot among those they get); then SIGKILL, the stack's
restart (``LocalScheduler.release_what_the_dead_left``) and ordinary passes. Whatever the
checkpoint: no VM was handed to two callers, every VM held is still its holder's (running, in the
provider, refused to another client's token), the returned VMs are gone, and the pool is full
again within a bounded number of passes, serving the 8 again. Nothing found (chaos21).
tests/chaos/test_vcsim_crash.py kills such runs on vcsim with one user;
tests/chaos/test_crash_every_write.py after every round trip, in process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis
import yaml

from chalicelib.config import build
from chalicelib.manager.runner import run_pool
from local.scheduler import LocalScheduler
from tests.chaos.crash_runner import write_clock
from tests.harness import Harness, HarnessFactory, assert_consistent
from tests.support import eventually

PREFIX = "refill8:"
POOL = "refill"
SIZE = 12
"""Four more than the clients hold: four stay ready in the stopped run's snapshot, for them to take."""
CLIENTS = 8
MAX_PASSES = 30
DOCUMENT = {
    "config": {"domain": "example.com", "task_limit": 3, "vm_lifetime": 5},
    "auth": {"provider": "dummy"},
    "providers": {"dummy": {"provider_class": "dummy", "createvm_max_time": 0, "boot_time": 0,
                            "destroyvm_max_time": 0}},
    "pools": [{"name": POOL, "size": SIZE, "provider": "dummy"}],
}
CHECKPOINTS = ["snapshot", "destroy_started#1", "destroy_started#2", "reserved", "reserved#2", "clone_asking",
               "clone_started#1", "clone_started#3", "clone_asked", "clone_started#8", "ready", "done"]
"""Where a refill run with two returned VMs to destroy goes (read off an undisturbed run's report,
checked by the first test): its snapshot read; the first destroy made and the second, their
records not yet written (the run notes them after the batch); the clones' names reserved
(nothing asked of the provider yet; a second batch's); clones being asked; the first, third and
last clone made with its record not yet written (``clone_asked`` notes a batch's); clones found
ready; the pass's end."""


class Refill:
    """The pool on the test Redis, driven in process (the API, the passes after the kill), and
    the run to kill in a process of its own, on one fake clock written to a file."""

    def __init__(self, world: Harness, directory: Path, redis_port: int) -> None:
        self.world, self.directory, self.redis_port = world, directory, redis_port
        self.holders: dict[str, str] = {}
        """VM -> the token it was checked out with, while held."""
        self.handed_out: list[str] = []
        self.returned: set[str] = set()

    def start(self, **crash: str) -> subprocess.Popen[str]:
        """A run of the pool in a process of its own; ``crash``: CRASH_* settings (crash_runner)."""
        clock = self.directory / "clock"
        write_clock(clock, self.world.clock.now())
        env = {**os.environ, "CRASH_CONFIG": str(self.directory / "config.yaml"), "CRASH_POOL": POOL,
               "CRASH_REDIS_PORT": str(self.redis_port), "CRASH_PREFIX": PREFIX, "CRASH_CLOCK": str(clock), **crash}
        return subprocess.Popen([sys.executable, "-m", "tests.chaos.crash_runner"], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    def run(self, **crash: str) -> tuple[int, str]:
        started = time.monotonic()
        process = self.start(**crash)
        output, _ = process.communicate(timeout=120)
        self.world.clock.advance(time.monotonic() - started + 1)
        return process.returncode, output

    def check_out(self, token: str) -> str | None:
        reply = self.world.post(f"/api/v3/vm/{POOL}", headers={"X-AUTH-TOKEN": token})
        if reply.status != 200:
            assert reply.status == 503 and reply.json["ok"] is False, reply.raw  # none ready meanwhile
            return None
        host = str(reply.json[POOL]["hostname"]).split(".")[0]
        self.handed_out.append(host)
        self.holders[host] = token
        return host

    def give_back(self, host: str) -> None:
        reply = self.world.delete(f"/api/v3/vm/{host}", headers={"X-AUTH-TOKEN": self.holders.pop(host)})
        assert reply.status == 200, reply.raw
        self.returned.add(host)

    def full(self) -> bool:
        world = self.world
        return (world.count(POOL, "ready") == SIZE and not world.hosts(POOL, "pending")
                and not world.hosts(POOL, "completed")
                and world.provider_vms(POOL) == world.hosts(POOL, "ready") | world.hosts(POOL, "running"))

    def converge(self, where: str) -> int:
        for passes in range(1, MAX_PASSES + 1):
            self.world.clock.advance(15)
            report = run_pool(self.world.services, POOL, 0.0)
            assert report.leased, f"{where}: pass {passes} found the pool's lease held"
            assert_consistent(self.world, POOL, pass_completed=False)
            if self.full():
                return passes
        raise AssertionError(f"{where}: not full after {MAX_PASSES} passes: {self.state()}")

    def state(self) -> dict[str, object]:
        world = self.world
        return {**{state: sorted(world.hosts(POOL, state)) for state in ("pending", "ready", "running", "completed")},
                "provider": sorted(world.provider_vms(POOL))}

    def assert_kept(self, where: str, converged: bool = True) -> None:
        world = self.world
        assert len(self.handed_out) == len(set(self.handed_out)), f"{where}: a VM handed out twice: {self.handed_out}"
        running, in_provider = world.hosts(POOL, "running"), world.provider_vms(POOL)
        for host in self.holders:
            assert host in running and host in in_provider, f"{where}: {host}, in use, left its user: {self.state()}"
            reply = world.get(f"/api/v3/vm/{host}")
            assert reply.status == 200 and reply.json[host]["state"] == "running", reply.raw
        assert not self.returned & world.hosts(POOL, "ready"), f"{where}: a returned VM ready again"
        if converged:  # destroyed by then (a dead run may have left them to the next)
            assert not self.returned & in_provider, f"{where}: a returned VM kept: {self.state()}"


def stopped(pid: int) -> bool:
    """Whether process ``pid`` is stopped (SIGSTOP: state T in /proc)."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "T"


@pytest.fixture
def refill(make_harness: HarnessFactory, redis_client: redis.Redis, tmp_path: Path) -> Refill:
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(DOCUMENT))
    world = make_harness(build(DOCUMENT), prefix=PREFIX)
    return Refill(world, tmp_path, int(redis_client.connection_pool.connection_kwargs["port"]))


def test_an_undisturbed_refill_run_passes_every_checkpoint_swept(refill: Refill) -> None:
    """The sweep's checkpoints are where such a run goes (else a kill there tests nothing)."""
    refill.converge("before")
    tokens = [refill.world.new_token(f"client{n}", "secret") for n in range(CLIENTS)]
    held = [refill.check_out(token) for token in tokens]
    for host in held[:2]:
        assert host is not None
        refill.give_back(host)
    status, output = refill.run()
    assert status == 0, output
    seen = json.loads(output.strip().splitlines()[-1])["checkpoints"]
    for checkpoint in CHECKPOINTS:
        name, _, count = checkpoint.partition("#")
        assert seen.get(name, 0) >= int(count or 1), f"{checkpoint} not in {json.dumps(seen)}"


@pytest.mark.parametrize("checkpoint", CHECKPOINTS)
def test_a_refill_run_killed_at_any_step_under_eight_clients_hands_nothing_twice_and_refills(
        refill: Refill, checkpoint: str) -> None:
    refill.converge("before the kill")
    tokens = [refill.world.new_token(f"client{n}", "secret") for n in range(CLIENTS)]
    held = [refill.check_out(token) for token in tokens]
    assert None not in held, refill.state()
    for host in held[:2]:  # two give theirs back: the run destroys them as it refills
        assert host is not None
        refill.give_back(host)
    where = f"killed at {checkpoint}"
    run = refill.start(CRASH_STOP=checkpoint)  # stopped there (SIGSTOP), its reads of the pool in hand
    try:
        eventually(lambda: run.poll() is not None or stopped(run.pid), 60, f"the run to stop at {checkpoint}")
        assert run.poll() is None, f"the run ended before {checkpoint}: {run.communicate()[0]}"
        for token in tokens:  # meanwhile: whatever is ready goes, once each
            refill.check_out(token)
    finally:
        run.kill()  # SIGKILL, stopped as it is
        output, _ = run.communicate(timeout=60)
    assert run.returncode == -signal.SIGKILL, f"{where}: status {run.returncode}\n{output}"
    refill.world.clock.advance(5)
    refill.assert_kept(f"{where}, before the restart", converged=False)
    LocalScheduler(refill.world.services).release_what_the_dead_left()
    refill.converge(where)
    refill.assert_kept(where)
    for token in tokens:  # the refilled pool serves the same clients again
        assert refill.check_out(token) is not None, refill.state()
    refill.assert_kept(f"{where}, after the refill")
    for host, token in list(refill.holders.items()):  # each still its holder's: another's token is refused
        other = next(other for other in tokens if other != token)
        refused = refill.world.delete(f"/api/v3/vm/{host}", headers={"X-AUTH-TOKEN": other})
        assert refused.status in (401, 403, 404), (host, refused.status, refused.raw)
        refill.give_back(host)
