"""A failover that lost every write of a pool's latest passes while the hypervisor kept what they
did: the clones they started (running, or done and booted) exist in the provider, and the
promoted replica knows nothing of them (no pending record, no clone slot, not ready).

What must hold: the VMs nobody knows are found in the pool's folder (discovered) and destroyed,
the pool is refilled, the VMs in use (checked out before the lost writes, as a checkout is
answered only once a replica has it) stay their users'. The dummy provider keeps its VMs in
Redis too; here its keys are kept as they are while the service's go back.
"""

from __future__ import annotations

import pytest

from tests.chaos.fleet import Fleet, fleet_fixture
from tests.chaos.test_crash_every_write import CONFIG, POOL, check_out, leases_run_out
from tests.harness import PREFIX, restore_state, save_state

fleet = fleet_fixture(CONFIG)


@pytest.mark.parametrize("passes_lost", [1, 2, 3])
def test_clones_whose_records_a_failover_lost_are_destroyed_and_replaced(fleet: Fleet, passes_lost: int) -> None:
    world = fleet.world
    fleet.converge()
    for pool in fleet.pools:
        fleet.kept.setdefault(pool, set())
    kept = {check_out(fleet), check_out(fleet)}  # two VMs to refill; replicated before the fault
    replicated = save_state(world.client)
    for _ in range(passes_lost):  # clones started (1), done and made ready (2, 3)
        fleet.round()
        world.clock.advance(100)
    provider = f"{PREFIX}dummy:"
    now = save_state(world.client)
    restore_state(world.client, {**{key: value for key, value in replicated.items() if not key.startswith(provider)},
                                 **{key: value for key, value in now.items() if key.startswith(provider)}})
    unknown = world.provider_vms(POOL) - world.hosts(POOL, "ready") - world.hosts(POOL, "running")
    assert unknown, "the failover lost nothing the provider has"
    leases_run_out(world.client)
    fleet.converge()
    fleet.assert_converged(f"{passes_lost} passes lost")
    assert world.hosts(POOL, "running") == kept
    for host in unknown:
        assert host not in world.provider_vms(POOL), f"{host}, unknown after the failover, is still there"

