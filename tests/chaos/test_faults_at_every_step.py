"""Every reconcile Lambda of a multi-pool service hit by a fault at every checkpoint of a run,
then run again: the pools converge with no VM leaked in the provider, no record lost, no counter
stuck, no lease left behind.

tests/core/test_reconcile.py kills a single pool's bare pass; here the faults hit ``run_pool``
(the lease, the loop and its error handling) across pools that share the task limit, and there
are four kinds of fault:

- crash: the process dies at that line (an exception nothing in the service catches);
- redis: Redis drops at that line (StoreUnavailable, which the runner reports and survives);
- provider: the hypervisor fails at that line (ProviderError, likewise);
- overlap: at that line another invocation whose lease view was stale runs whole passes of the
  same pool and of the next one (two passes at once, at every step).
"""

from __future__ import annotations

from typing import Callable

import pytest
import redis

from chalicelib.manager.reconcile import reconcile_pool
from chalicelib.providers.base import ProviderError
from chalicelib.store import StoreUnavailable
from chalicelib.store.ondemand import OnDemandEntry, OnDemandStore
from chalicelib.store.vm_tasks import EnqueueResult, VMTaskStore, new_task
from tests.chaos.fleet import Fleet, FleetFactory
from tests.harness import assert_consistent, restore_state, save_state


class Crash(BaseException):
    """The process died here: not an Exception, so no handler in the service catches it."""


def busy_fleet(make_fleet: FleetFactory) -> Fleet:
    """Every pool with work waiting in every step of its next pass: clones to finish, VMs to mark
    ready, to reap, to destroy, a stray to discover and one to complete, a VM in use deleted by
    hand, a disk to add to a VM in use, an on-demand request to build, and a deficit to refill
    against the shared task limit."""
    fleet = make_fleet()
    world = fleet.world
    fleet.converge()
    for pool in fleet.pools:
        fleet.kept[pool] = set(world.check_out(pool, 1, lifetime_hours=5))
        world.check_out(pool, 1, lifetime_hours=1)
    world.clock.advance(3600)  # a VM per pool past its lifetime; ready VMs past ready_ttl
    fleet.round()  # reaped and expired VMs completed; clones started up to the task limit
    world.clock.advance(100)
    fleet.round()  # clones ready; destroys started; more clones
    for pool in fleet.pools:
        world.provider.create_by_hand(world.pool(pool), f"stray-{pool}-one")
        fleet.strays.add(f"stray-{pool}-one")
    fleet.round()  # strays discovered
    world.clock.advance(100)  # clones done and booted, destroys done
    for pool in fleet.pools:
        if world.count(pool, "ready"):
            fleet.kept[pool] |= set(world.check_out(pool, 1, lifetime_hours=5))
        deleted = sorted(fleet.kept[pool])[0]
        world.provider.delete_by_hand(world.pool(pool), deleted)
        fleet.kept[pool].discard(deleted)
        world.provider.create_by_hand(world.pool(pool), f"stray-{pool}-two")
        fleet.strays.add(f"stray-{pool}-two")
    for pool in fleet.pools:
        if world.count(pool, "ready"):  # returned by its user: a destroy to start
            (returned,) = world.check_out(pool, 1)
            world.store.move(returned, pool, "running", "completed", world.clock.now(), reason="returned")
    now = world.clock.now()
    for pool in fleet.pools:  # an on-demand VM to build, and a disk to add to a VM in use
        fleet.requests[pool] = f"od-{pool}"
        assert OnDemandStore(world.store).create(fleet.requests[pool], [OnDemandEntry(pool, pool, 1)], now,
                                                 ttl_seconds=7200, lifetime_hours=5)
        for host in sorted(fleet.kept[pool])[:1]:
            queued = VMTaskStore(world.store).enqueue(world.store.get_vm(host), new_task("disk", now, size_gb=10), now)
            assert queued is EnqueueResult.QUEUED
            fleet.disk_on.add(host)
    return fleet


def steps_of_a_round(make_fleet: FleetFactory) -> list[str]:
    fleet = busy_fleet(make_fleet)
    steps: list[str] = []
    fleet.round(steps.append)
    return steps


def test_the_busy_round_reaches_every_step(make_fleet: FleetFactory) -> None:
    steps = steps_of_a_round(make_fleet)
    # The round's clones finish and boot at once: noted done by their moves to ready ("ready").
    # A fault just before and just after the clone_asked mark ("clone_asking", "clone_asked").
    assert {"inventory", "snapshot", "ready", "completed", "dropped", "destroyed",
            "destroy_started", "discovered", "vm_task", "vm_task_started", "ondemand_reserved",
            "reserved", "clone_asking", "clone_asked", "clone_started", "done"} <= set(steps), steps


Fault = Callable[[Fleet, str], None]


def crash(fleet: Fleet, step: str) -> None:
    raise Crash(step)


def redis_drops(fleet: Fleet, step: str) -> None:
    raise StoreUnavailable(f"redis: ConnectionError (injected at {step})")


def provider_fails(fleet: Fleet, step: str) -> None:
    raise ProviderError(f"vCenter unreachable (injected at {step})")


def overlapping_passes(fleet: Fleet, step: str) -> None:
    for pool in fleet.pools:  # a stale invocation of every pool runs a whole pass right here
        world = fleet.world
        reconcile_pool(world.store, world.provider, world.pool(pool), world.clock, world.config.service)


FAULTS: dict[str, Fault] = {"crash": crash, "redis": redis_drops, "provider": provider_fails,
                            "overlap": overlapping_passes}


def fault_at_checkpoint(fault: Fault, fleet: Fleet, fault_at: int, reached: list[str]) -> Callable[[str], None]:
    """A checkpoint that records every step it reaches in ``reached`` and makes ``fault`` at the
    ``fault_at``-th (counting from 0)."""

    def checkpoint(name: str) -> None:
        reached.append(name)
        if len(reached) == fault_at + 1:
            fault(fleet, name)

    return checkpoint


@pytest.mark.parametrize("kind", FAULTS)
def test_fault_at_every_step_of_every_pool_converges(make_fleet: FleetFactory, redis_client: redis.Redis,
                                                     kind: str) -> None:
    busy = busy_fleet(make_fleet)
    busy_fleet_state = save_state(redis_client)
    restore_point = busy.world.clock.now()
    steps: list[str] = []
    busy.round(steps.append)
    fault = FAULTS[kind]
    for fault_at, step in enumerate(steps):
        restore_state(redis_client, busy_fleet_state)
        busy.world.clock.advance(restore_point - busy.world.clock.now())
        fleet = Fleet(busy.services, busy.world, {pool: set(kept) for pool, kept in busy.kept.items()},
                      set(busy.strays), dict(busy.requests), set(busy.disk_on))
        reached: list[str] = []
        where = f"{kind} at checkpoint {fault_at} ({step})"
        checkpoint = fault_at_checkpoint(fault, fleet, fault_at, reached)
        failures: list[str] = []
        for pool in fleet.pools:  # each pool is its own Lambda: one crashing stops no other
            try:
                failures += fleet.run(pool, checkpoint).failures
            except Crash:
                assert kind == "crash", where
        assert reached[fault_at] == step, f"{where}: the round took another path ({reached})"
        if kind in ("redis", "provider"):
            assert len(failures) == 1, f"{where}: the runner must report the failure, not raise it"
        for pool in fleet.pools:
            assert_consistent(fleet.world, pool, pass_completed=False)
        assert fleet.world.client.keys("vmpool:lease:*") == [], f"{where}: a lease outlived its run"

        fleet.converge()
        fleet.assert_converged(where)
