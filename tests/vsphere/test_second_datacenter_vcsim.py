"""A pool whose datacenter is vCenter's second (vcsim with DC0 and DC1, the same folder and
template names in each) whose clone tasks take time: its clones are started and polled by later
passes, never waited for; they land, are found and are destroyed in DC1, and a VM of the same
name at the same folder path in DC0 is never touched (no first-datacenter assumption)."""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Iterator

import pytest

from chalicelib.providers.base import TaskState
from tests.harness import HarnessFactory
from tests.support import eventually
from tests.vsphere import admin
from tests.vsphere.test_bad_day import POOL, pool_harness
from tests.vsphere.vcsim import VcsimServer

CLONE_SECONDS = 5.0


@pytest.fixture
def slow_two_datacenters(vcsim_dir: Path) -> Iterator[VcsimServer]:
    with VcsimServer(boot_delay=0.2, cert_path=vcsim_dir / f"slow-two-dc-{secrets.token_hex(3)}.pem",
                     clone_delay=CLONE_SECONDS, datacenters=2) as server:
        yield server


def test_a_pool_of_the_second_datacenter_polls_its_slow_clones_and_destroys_only_its_own_vms(
        slow_two_datacenters: VcsimServer, make_harness: HarnessFactory) -> None:
    folder = f"vmpool/second-{secrets.token_hex(3)}"
    harness = pool_harness(make_harness, slow_two_datacenters, size=2, folder=folder, datacenter="DC1")
    provider, pool = harness.provider, harness.pool(POOL)

    harness.reconcile(POOL)  # starts the clones, and returns while vCenter still runs them
    pending = sorted(harness.hosts(POOL, "pending"))
    assert len(pending) == 2
    tasks = [harness.store.get_vm(host).clone_task for host in pending]  # type: ignore[union-attr]
    assert all(tasks) and {provider.task_status(ref).state for ref in tasks} == {TaskState.RUNNING}

    # A VM of the same name at the same folder path, in DC0 (another team's, or a namesake).
    admin.create_folder(provider, f"DC0/vm/{folder}")
    admin.create_vm(provider, f"DC0/vm/{folder}", pending[0])

    def filled() -> bool:
        harness.clock.advance(30)
        harness.reconcile(POOL)
        return len(harness.hosts(POOL, "ready")) == 2

    eventually(filled, 30, "the slow clones to be polled to the end and the VMs ready", interval=0.5)
    assert {vm.name for vm in provider.list_vms(pool)} == set(pending)  # DC1's folder alone
    for host in pending:
        assert admin.exists(provider, f"DC1/vm/{folder}/{host}")

    # Returned by its user: destroyed in DC1; DC0's namesake stays.
    [taken] = harness.check_out(POOL)
    harness.store.move(taken, POOL, "running", "completed", harness.clock.now(), reason="returned by its user")

    def destroyed() -> bool:
        harness.clock.advance(30)
        harness.reconcile(POOL)
        return not admin.exists(provider, f"DC1/vm/{folder}/{taken}")

    eventually(destroyed, 30, f"{taken} destroyed in DC1", interval=0.5)
    assert admin.exists(provider, f"DC0/vm/{folder}/{pending[0]}")
