"""Two passes of one vSphere pool at once on vcsim whose clones take time, one of them acting on
what it read before the other's writes: a bare pass (no lease, as a frozen Lambda whose lease
ran out) stopped at each of its checkpoints in turn (clones reserved or asked, not yet recorded;
VMs found ready or not; a destroy started, not yet recorded; a lifetime found ended; an on-demand
request's clones reserved; the pass's end) while other runs go whole, the clones they follow end
in vCenter, and users check out every ready VM, give one back and extend the VM whose lifetime
the stopped pass found ended. Then the stopped pass goes on from its stale read, and ordinary
runs follow. Scenarios: the pool churning; the same with an on-demand request being built; the
pool removed from the config (the stopped pass and the others drain it); the pool churning in
vCenter's second datacenter (DC1, beside DC0 with the same folder and template names). Whatever the checkpoint:
no VM is handed to two callers, every VM held is still running and in vCenter, the one extended
in time is kept, the request gets its VMs once, and the pool converges (to its size, or drained
and forgotten once its users gave their VMs back) with nothing in its folder that no state
counts and no clone slot held.

tests/chaos/test_crash_every_write.py pauses passes the same way on the dummy provider (after
each Redis round trip) and kills them on vcsim; this one pauses them on vcsim, where the
inventory read is vCenter's and clones outlast a pass."""

from __future__ import annotations

import dataclasses
import secrets
from pathlib import Path
from typing import Callable, Iterator

import pytest

from chalicelib.manager.context import Checkpoint
from chalicelib.manager.dispatch import Ticker, draining, look_at
from chalicelib.manager.pending import CLONE_START_GRACE_SECONDS
from chalicelib.manager.pool_queue import DRAIN, PoolMessage
from chalicelib.manager.reconcile import reconcile_pool
from chalicelib.manager.runner import run_pool
from chalicelib.store.fleet import Fleet
from tests.harness import HarnessFactory, assert_consistent
from tests.support import eventually
from tests.vsphere.vcsim import VcsimServer, vcsim_config

POOL = "stale-vs"
OTHER = "stale-other"
"""A pool beside it that stays configured (the removed scenario's config keeps one pool)."""
SIZE = 4
CLONE_SECONDS = 0.5
SCENARIOS = ("churn", "ondemand", "removed", "second datacenter")


@pytest.fixture(scope="module")
def cloning(vcsim_dir: Path) -> Iterator[VcsimServer]:
    """A simulator of its own with two datacenters (DC0, DC1: the same folder and template names
    in each) whose clone tasks run CLONE_SECONDS (the VM in its folder meanwhile)."""
    with VcsimServer(boot_delay=0.2, cert_path=vcsim_dir / f"stale-pass-{secrets.token_hex(3)}.pem",
                     clone_delay=CLONE_SECONDS, datacenters=2) as server:
        yield server


class Queue:
    """The reconcile queue of look_at: what it was sent is not needed here."""

    def send(self, messages: object, budget_seconds: float | None = None) -> None:
        pass


class World:
    """The pool on vcsim, its users, and how its passes run in the scenario."""

    def __init__(self, make_harness: HarnessFactory, server: VcsimServer, scenario: str) -> None:
        self.scenario = scenario
        folder = f"vmpool/stale-{secrets.token_hex(4)}"
        where = {"datacenter": "DC1"} if scenario == "second datacenter" else {}
        pools = [{"name": POOL, "size": SIZE, "folder": folder, "ready_check": "tools", **where},
                 {"name": OTHER, "size": 0, "folder": f"{folder}-other", "ready_check": "tools"}]
        self.harness = make_harness(vcsim_config(server, pools, service={"task_limit": 2, "ondemand_clone_limit": 2}))
        self.harness.client.flushall()  # the previous world's pool is another folder's
        self.removed_config = vcsim_config(server, pools[1:], service={"task_limit": 2, "ondemand_clone_limit": 2})
        self.removed_pool = dataclasses.replace(self.harness.config.pool(POOL))  # type: ignore[type-var]
        self.handed: list[str] = []
        self.held: set[str] = set()
        self.extended: set[str] = set()
        self.request = ""

    # --- the passes ---

    def bare_pass(self, checkpoint: Checkpoint) -> None:
        """A pass without a lease (as one whose lease ran out), on the pool as its config says
        now: configured, or draining once removed."""
        world = self.harness
        if self.scenario == "removed" and world.config.pool(POOL) is None:
            settings = Fleet(world.store).settings(POOL)
            assert settings is not None
            reconcile_pool(world.store, world.services.provider(settings.provider), draining(settings), world.clock,
                           world.config.service, checkpoint, providers=world.services.configured_provider)
        else:
            world.reconcile(POOL, checkpoint)

    def whole_run(self, where: str) -> bool:
        """One run of the pool under its lease, as the queue runs it; whether it left nothing in
        flight (or drained the pool and forgot it)."""
        world = self.harness
        if world.config.pool(POOL) is None:
            report = look_at(world.services, PoolMessage(POOL, DRAIN), Queue())  # type: ignore[arg-type]
            if report is None:
                return True  # forgotten
        else:
            report = run_pool(world.services, POOL, 0.0)
        assert report.leased and not report.failures, f"{where}: {report}"
        return not any(each.work_in_flight for each in report.passes)

    def runs_until_idle(self, where: str) -> None:
        def idle() -> bool:
            self.harness.clock.advance(5)
            return self.whole_run(where)

        eventually(idle, 30, f"{where}: the runs idle")

    # --- the users ---

    def take_every_ready(self) -> None:
        ready = self.harness.count(POOL, "ready")
        if ready and self.harness.config.pool(POOL) is not None:
            taken = self.harness.checkout_vms(POOL, ready)
            self.handed += taken
            self.held |= set(taken)

    def give_back(self, host: str) -> None:
        assert self.harness.delete(f"/api/v3/vm/{host}").status == 200
        self.held.discard(host)

    def extend(self, host: str) -> None:
        """PUT a lifetime of 10 hours (from its checkout): kept when answered 200."""
        if self.harness.put(f"/api/v3/vm/{host}", {"lifetime": 10}).status == 200:
            self.extended.add(host)
        else:  # reaped by the stopped pass before it stopped: no longer the user's
            self.held.discard(host)

    def request_vms(self) -> set[str]:
        """The VMs the on-demand request was given (none until it is ready)."""
        if not self.request:
            return set()
        answer = self.harness.get(f"/api/v3/ondemandvm/{self.request}").json
        if answer.get("ready") is not True:
            return set()
        names = answer[POOL]["hostname"]
        return {str(name).split(".")[0] for name in ([names] if isinstance(names, str) else names)}

    def in_vcsim(self) -> set[str]:
        return {vm.name for vm in self.harness.provider.list_vms(self.removed_pool)}


def starting_state(make_harness: HarnessFactory, server: VcsimServer, scenario: str) -> tuple[World, str]:
    """The pool full, then: one VM checked out for an hour (its lifetime over as the stale pass
    starts), one held, two given back: a run destroyed the first and started two clones, which
    still run in vCenter; the second was given back after that run. ``ondemand``: then a request
    for two VMs, whose clones the stale pass reserves and starts. ``removed``: then a config
    without the pool. Returns the world and the VM whose lifetime ended."""
    world = World(make_harness, server, scenario)
    harness = world.harness

    def full() -> bool:
        harness.clock.advance(30)
        return world.whole_run("filling") and harness.count(POOL, "ready") == SIZE

    eventually(full, 30, "the pool full")
    Ticker().tick(harness.services, Queue())  # type: ignore[arg-type]  # the pools known, to drain once removed
    (ending,) = harness.check_out(POOL, 1, lifetime_hours=1)
    world.handed.append(ending)
    world.held.add(ending)
    harness.clock.advance(3600 - 60)
    taken = harness.checkout_vms(POOL, 3)
    world.handed += taken
    world.held |= set(taken)
    world.give_back(taken[1])
    world.whole_run("the replacement started")
    world.give_back(taken[2])
    if scenario == "ondemand":
        reply = harness.post("/api/v3/ondemandvm", {POOL: 2})
        assert reply.status == 201, reply.raw
        world.request = str(reply.json["request_id"])
    harness.clock.advance(120)
    assert harness.count(POOL, "pending") >= 2 and harness.state_of(ending) == "running"
    if scenario == "removed":
        harness.services.use_config(world.removed_config)
    return world, ending


def stale_pass(world: World, stop_at: int | None, meanwhile: Callable[[], None]) -> list[str]:
    """A bare pass stopped at its ``stop_at``-th checkpoint (0-based) while ``meanwhile`` runs,
    then carried on from what it had read; the checkpoints it reached."""
    reached: list[str] = []

    def checkpoint(name: str) -> None:
        reached.append(name)
        if len(reached) - 1 == stop_at:
            meanwhile()

    world.bare_pass(checkpoint)
    return reached


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_a_stale_vsphere_pass_at_each_checkpoint_leaves_the_users_vms_and_converges(
        make_harness: HarnessFactory, cloning: VcsimServer, scenario: str) -> None:
    world, _ = starting_state(make_harness, cloning, scenario)
    checkpoints = stale_pass(world, None, lambda: None)
    assert "completed" in checkpoints and "destroy_started" in checkpoints, checkpoints  # a lifetime ended, a destroy
    assert scenario != "ondemand" or "ondemand_claimed" in checkpoints, checkpoints
    for stop_at in range(len(checkpoints)):
        stopped_once(make_harness, cloning, scenario, stop_at)


def stopped_once(make_harness: HarnessFactory, server: VcsimServer, scenario: str, stop_at: int) -> None:
    """The scenario with its stale pass stopped at its ``stop_at``-th checkpoint, and its checks."""
    world, ending = starting_state(make_harness, server, scenario)
    harness = world.harness
    stopped: list[str] = []

    def meanwhile() -> None:
        # Its user extends the VM whose lifetime the stopped pass found ended; other runs go
        # whole while the clones they follow end in vCenter (wall time); users take every VM
        # ready and give the last one back.
        world.extend(ending)
        world.runs_until_idle("meanwhile")
        world.take_every_ready()
        if world.held - {ending}:
            world.give_back(sorted(world.held - {ending})[-1])
        stopped.append("yes")

    reached = stale_pass(world, stop_at, meanwhile)
    label = f"{scenario}: stopped at {reached[stop_at]} ({stop_at} of {reached})"
    assert stopped, f"{label}: the pass ended before its stop"
    if scenario != "removed":  # (its checks need the pool's config)
        assert_consistent(harness, POOL, pass_completed=False)
    assert len(world.handed) == len(set(world.handed)), f"{label}: a VM handed out twice: {world.handed}"
    for host in world.held:
        assert harness.state_of(host) == "running", f"{label}: {host} held but {harness.state_of(host)}"
    harness.clock.advance(CLONE_START_GRACE_SECONDS + 1)
    kept = world.held | world.extended
    if scenario == "removed":
        world.runs_until_idle(label)
        assert harness.hosts(POOL, "running") == kept, label
        assert world.in_vcsim() == kept, label
        for host in kept:
            world.give_back(host)
        world.runs_until_idle(label)
        assert harness.hosts(POOL, "completed") == set() and world.in_vcsim() == set(), label
        assert POOL not in Fleet(harness.store).names(), f"{label}: not forgotten"
    else:
        world.runs_until_idle(label)

        def full_again() -> bool:
            return (world.whole_run(label) and harness.count(POOL, "ready") == SIZE
                    and (not world.request or bool(world.request_vms())))

        eventually(full_again, 30, f"{label}: the pool full again")
        delivered = world.request_vms()
        assert not world.request or len(delivered) == 2, f"{label}: request given {delivered}"
        assert not delivered & set(world.handed), f"{label}: a request's VM handed to a checkout"
        assert_consistent(harness, POOL, pass_completed=False)
        assert harness.hosts(POOL, "running") == kept | delivered, label
        assert world.in_vcsim() == harness.hosts(POOL, "ready") | kept | delivered, label
    assert harness.store.cloning_count() == 0, label
