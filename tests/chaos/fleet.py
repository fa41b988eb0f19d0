"""A multi-pool world run the way the scheduled Lambdas run it: ``run_pool`` per pool, with the
pools sharing one task limit, on the session's real redis-server and a fake clock."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Callable

import pytest

from chalicelib.config import parse
from chalicelib.manager.context import Checkpoint, no_checkpoint
from chalicelib.manager.pending import CLONE_START_GRACE_SECONDS
from chalicelib.manager.runner import RunReport, run_pool
from chalicelib.providers.base import TaskState
from chalicelib.services import Services
from chalicelib.store.ondemand import READY, OnDemandStore
from chalicelib.store.vm_tasks import VMTaskStore, task_errors
from tests.harness import PREFIX, Harness, HarnessFactory, assert_consistent

CONFIG = """\
config: {task_limit: 5, timeout: 5, ready_ttl: 10, vm_lifetime: 2, prefix: "ci-", domain: example.com,
         check_loop_delay_min: 1}
redis: {data_ttl: 1}
providers:
  dummy: {provider_class: dummy, seed: 11, createvm_max_time: 60, boot_time: 30, destroyvm_max_time: 20}
pools:
  - {name: alpha, size: 4, provider: dummy}
  - {name: beta, size: 3, provider: dummy}
  - {name: gamma, size: 2, provider: dummy}
"""
"""Nine VMs across three pools but at most five clones in flight: refills compete for the limit."""


@dataclass
class Fleet:
    """Several pools, each reconciled by its own ``run_pool`` (one pass per call)."""

    services: Services
    world: Harness
    kept: dict[str, set[str]] = field(default_factory=dict)
    """Per pool: the VMs checked out with a long lifetime, which must still be running at the end."""
    strays: set[str] = field(default_factory=set)
    requests: dict[str, str] = field(default_factory=dict)
    """Per pool: an on-demand request for one VM of it, which must be delivered at the end."""
    disk_on: set[str] = field(default_factory=set)
    """VMs in use with a disk task queued, which must have the disk at the end."""

    @property
    def pools(self) -> list[str]:
        return list(self.services.config.pool_names)

    def run(self, pool: str, checkpoint: Checkpoint = no_checkpoint) -> RunReport:
        """One invocation of the pool's reconcile Lambda, with a zero budget: a single pass."""
        return run_pool(self.services, pool, 0.0, checkpoint)

    def round(self, checkpoint: Checkpoint = no_checkpoint) -> None:
        for pool in self.pools:
            self.run(pool, checkpoint)

    def converge(self, rounds: int = 40) -> None:
        """Advance the clock (past the grace for a reserved but never started clone) and run every
        pool until a whole round finds nothing to do; the pools must then be consistent."""
        self.world.clock.advance(CLONE_START_GRACE_SECONDS + 1)
        for _ in range(rounds):
            self.world.clock.advance(90)  # any clone (<= 60 s) and boot (30 s) done by the next round
            busy = False
            for pool in self.pools:
                report = self.run(pool)
                assert report.leased and not report.failures, report
                busy = busy or any(p.work_in_flight for p in report.passes)
            assert self.own_clones() <= self.services.config.service.task_limit
            if not busy:
                for pool in self.pools:
                    assert_consistent(self.world, pool)
                return
        raise AssertionError(f"the pools did not converge in {rounds} rounds")

    def own_clones(self) -> int:
        """The clones in flight that task_limit counts: those that are no on-demand request's
        (a request's have ondemand_clone_limit beside it, docs/api.md)."""
        store = self.services.store
        records = [store.get_vm(host) for host in self.world.client.zrange(store.keys.cloning, 0, -1)]
        return sum(1 for record in records if record is None or not record.raw.get("request"))

    def assert_converged(self, where: str) -> None:
        """Full pools, VMs in use untouched, nothing leaked in the provider, no counter stuck."""
        world, store = self.world, self.services.store
        for pool in self.pools:
            size = world.pool(pool).size
            assert world.count(pool, "ready") == size, f"{where}: {pool} {store.counts([pool])}"
            for state in ("pending", "completed", "discovered"):
                assert world.count(pool, state) == 0, f"{where}: {pool} has {state} VMs"
            on_demand = {host for host in world.hosts(pool, "running") if world.store.get_vm(host).raw.get("request")}
            assert world.hosts(pool, "running") - on_demand == self.kept[pool], f"{where}: {pool} lost a VM in use"
            for host in world.hosts(pool, "running") | world.hosts(pool, "ready"):
                assert world.store.get_vm(host) is not None, f"{where}: {host} lost its record"
            in_provider = world.provider_vms(pool)
            in_use = world.hosts(pool, "ready") | world.hosts(pool, "running")
            assert in_provider == in_use, f"{where}: {pool} leaked VMs"
        assert store.cloning_count() == 0, f"{where}: clones counted in flight that are not"
        assert world.client.keys(f"{PREFIX}lease:*") == [], f"{where}: a lease outlived its run"
        for stray in self.strays:
            assert world.state_of(stray) == "destroyed", f"{where}: {stray} is {world.state_of(stray)}"
        requests = OnDemandStore(store)
        for pool, request_id in self.requests.items():
            request = requests.get(request_id)
            assert request is not None and request.state == READY, f"{where}: request {request_id} is {request}"
            delivered = request.delivered(pool)
            assert len(delivered) == 1 and delivered[0].state == "running", f"{where}: {request}"
        tasks = VMTaskStore(store)
        for pool in self.pools:
            assert tasks.hosts_with_tasks(pool) == [], f"{where}: {pool} has disk/snapshot tasks stuck"
        for host in self.disk_on:
            # The disk is there, or the VM says why not. A pass that died between starting the
            # provider's task and recording it cannot know the outcome: the task is failed as
            # "never started" (vSphere may have added the disk anyway; reported to the lead). One
            # whose start lost a reply of the provider's storage failed to start, and says so.
            record = world.store.get_vm(host)
            vm = json.loads(world.client.hget(world.provider._folder_key(world.pool(record.pool)), host) or "{}")
            disks, errors = vm.get("disks", []), task_errors(record)
            said = ("never started", "failed to start: dummy provider storage")
            assert len(disks) == 1 or (not disks and len(errors) == 1 and any(why in errors[0] for why in said)), \
                f"{where}: {host} has disks {disks}, task errors {errors}"


FleetFactory = Callable[[], Fleet]


def new_fleet(make_harness: HarnessFactory, config: str) -> Fleet:
    """A ``Fleet`` of the YAML ``config`` on a fresh harness (``make_harness``)."""
    world = make_harness(parse(config))
    return Fleet(world.services, world)


def fleet_fixture(config: str) -> Any:
    """A fixture of a ``new_fleet`` of ``config``; a test module names it:
    ``fleet = fleet_fixture(CONFIG)``."""

    @pytest.fixture
    def fleet(make_harness: HarnessFactory) -> Fleet:
        return new_fleet(make_harness, config)

    return fleet


def tasks_running(world: Harness, kind: str) -> int:
    """The dummy provider's tasks of ``kind`` (clone, migrate...) it still runs: its own view,
    not the service's count of slots."""
    pattern = world.store.keys.dummy_task(world.provider.name, f"{kind}-*")
    refs = [key.rsplit(":", 1)[1] for key in world.client.scan_iter(match=pattern)]
    return sum(1 for status in world.provider.task_statuses(refs).values() if status.state is TaskState.RUNNING)
