"""A clone reserved by a run that then lost the pool's lease (killed, timed out, failed on a hung
Redis primary) and never asked of the provider, on a fake clock: the next run holding the lease
gives its place back at once and reserves again, instead of holding it for the start grace
(``pending.CLONE_START_GRACE_SECONDS``, 2 minutes) during which the pool's refill, or an
on-demand request's VM, waited. A reservation names its run's lease (``RESERVER_LEASE``); the
run that lost the lease can no longer mark it asked (lua/clone_asked.lua), and the give-back is
conditional on the lease being the giver's (lua/move.lua), so a pass that lost its own lease
never gives back what the holder reserved, and no name is both given back and cloned (the
frozen run racing the new holder: tests/core/test_unnoted_clones.py::
test_a_run_frozen_before_its_clone_mark_marks_nothing_once_another_run_took_the_pool)."""

from __future__ import annotations

import pytest

from chalicelib.config import parse
from chalicelib.manager.pending import CLONE_ASKED, CLONE_START_GRACE_SECONDS
from chalicelib.manager.reconcile import reconcile_pool
from chalicelib.manager.runner import LEASE_SECONDS, RETRY_SECONDS, RunReport, run_pool
from chalicelib.store import StoreUnavailable
from chalicelib.store.leases import lease_token
from chalicelib.store.records import RESERVER_LEASE
from tests.chaos.fleet import tasks_running
from tests.chaos.test_crash_every_write import leases_run_out
from tests.core.slow_clones import CONFIG, LIMIT
from tests.harness import Died, Fuse, Harness, HarnessFactory, fused_services

ENDINGS = ["killed", "failed"]
"""How the reserving run ends: ``killed`` (SIGKILL, a Lambda timeout: its lease left to run out,
60 s), ``failed`` (its pass stopped on Redis, a primary hung: the run gives its lease back and
the pool is looked at again 2 s later)."""


@pytest.fixture
def world(make_harness: HarnessFactory) -> Harness:
    return make_harness(parse(CONFIG))


def run_ends_at(world: Harness, step: str, ending: str) -> set[str]:
    """A leased run of alpha (``run_pool``, its own Redis client) that ends at its checkpoint
    ``step`` as ``ending`` says; the clock then moves to when the next run takes the pool.
    Returns the VMs it left pending."""
    fuse = Fuse()
    services = fused_services(world, fuse)

    def checkpoint(name: str) -> None:
        if name != step:
            return
        if ending == "killed":
            fuse.dead = True  # nothing more reaches Redis: the lease is left held
            raise Died(name)
        raise StoreUnavailable("Timeout reading from socket")

    try:
        if ending == "killed":
            with pytest.raises(Died):
                run_pool(services, "alpha", 0.0, checkpoint)
            world.clock.advance(LEASE_SECONDS + 1)
            leases_run_out(world.client)
        else:
            report = run_pool(services, "alpha", 0.0, checkpoint)
            assert report.failures and report.unreleased_lease is None, report
            world.clock.advance(RETRY_SECONDS)
    finally:
        services.client.close()
    pending = world.hosts("alpha", "pending")
    assert pending and not any(world.store.get_vm(host).raw.get(CLONE_ASKED) for host in pending)
    assert all(world.store.get_vm(host).raw.get(RESERVER_LEASE) for host in pending)
    return pending


def next_run(world: Harness) -> RunReport:
    report = run_pool(world.services, "alpha", 0.0)
    assert report.leased and not report.failures and len(report.passes) == 1, report
    return report


@pytest.mark.parametrize("ending", ENDINGS)
def test_a_clone_a_run_reserved_before_losing_its_lease_is_given_back_by_the_next_run_at_once(
        world: Harness, ending: str) -> None:
    """Reserved, never asked, then the run ended: the next run (61 s later when killed, 2 s when
    failed; within the start grace either way) gives both places back and starts the pool's two
    clones itself, never more than task_limit at the provider. Before, the places were held
    for the 2-minute start grace: no clone started, the pool short until then."""
    reserved = run_ends_at(world, "reserved", ending)
    assert len(reserved) == LIMIT and tasks_running(world, "clone") == 0
    assert world.clock.now() - world.store.get_vm(sorted(reserved)[0]).clone_start < CLONE_START_GRACE_SECONDS
    refill = next_run(world).passes[0]
    assert set(refill.completed) == reserved, refill.completed
    assert len(refill.clones_started) == LIMIT and not reserved & set(refill.clones_started)
    assert tasks_running(world, "clone") == LIMIT and world.store.cloning_count() == LIMIT
    world.clock.advance(200)
    world.settle("alpha")
    assert world.hosts("alpha", "ready") == world.provider_vms("alpha") == set(refill.clones_started)


@pytest.mark.parametrize("ending", ENDINGS)
def test_an_ondemand_clone_a_run_reserved_before_losing_its_lease_is_replaced_by_the_next_run_at_once(
        world: Harness, ending: str) -> None:
    """The same for an on-demand request's VM (reserved and claimed for the request, never
    asked): the next run replaces it at once, not counted as a failed attempt, and the request
    is ready once that clone boots. Before, its VM waited the 2-minute start grace first."""
    reply = world.post("/api/v3/ondemandvm", {"alpha": 1})
    assert reply.status == 201, reply.raw
    request_id = reply.json["request_id"]
    (reserved,) = run_ends_at(world, "ondemand_claimed", ending)
    assert world.store.get_vm(reserved).raw.get("request") == request_id
    served = next_run(world).passes[0]
    assert reserved in served.completed
    replacements = [host for host in served.clones_started if world.store.get_vm(host).raw.get("request")]
    assert len(replacements) == 1 and replacements[0] != reserved
    world.clock.advance(200 + 30)  # the clone, then its boot
    world.settle("alpha")
    answer = world.get(f"/api/v3/ondemandvm/{request_id}")
    assert answer.status == 200, answer.raw
    assert answer.json["ready"] is True and answer.json["alpha"]["hostname"] == [f"{replacements[0]}.example.com"]


def test_a_pass_that_lost_its_lease_gives_back_no_clone_the_lease_holder_reserved(world: Harness) -> None:
    """A pass still going after its run lost the lease (a stale one) sees the clones the run now
    holding the lease reserved and is about to ask: it gives none of them back (the give-back
    is conditional on the lease being its run's, in the same script as the move), so the holder
    clones them. A stale pass giving them back would leave the holder's marks refused and the
    pool short of those clones until the holder's next pass."""
    services = world.services
    pool = services.config.pool("alpha")
    assert pool is not None
    stale: list[set[str]] = []

    def checkpoint(step: str) -> None:
        if step == "clone_asking" and not stale:
            report = reconcile_pool(services.store, world.provider, pool, world.clock, services.config.service,
                                    lambda _: None, lease_token=lease_token())
            stale.append(set(report.completed) | set(report.clones_started))

    holder = run_pool(services, "alpha", 0.0, checkpoint)
    assert stale == [set()]
    assert holder.leased and not holder.failures and len(holder.passes[0].clones_started) == LIMIT, holder
    assert tasks_running(world, "clone") == LIMIT and world.store.cloning_count() == LIMIT
    world.clock.advance(200)
    world.settle("alpha")
    assert world.hosts("alpha", "ready") == world.provider_vms("alpha") == set(holder.passes[0].clones_started)
