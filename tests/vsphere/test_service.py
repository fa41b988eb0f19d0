"""The manager's reconcile pass driving vcsim through the vSphere provider, with real Redis.

Manager time is a FakeClock (lifetimes, TTLs); guest boot is vcsim's wall clock (1 s), waited
for by polling passes.
"""

from __future__ import annotations

import secrets
from typing import Any

import pytest
import redis

from chalicelib.clock import FakeClock
from chalicelib.manager.runner import run_pool
from chalicelib.providers.base import ProviderError
from chalicelib.providers.failures import Failure, FailureKind
from chalicelib.services import Services
from chalicelib.store import CheckoutRequest
from tests.harness import Harness, HarnessFactory
from tests.support import clone_failures_by_reason, emf_documents, eventually
from tests.vsphere import admin
from tests.vsphere.vcsim import DATACENTER, VcsimServer, vcsim_config
from tools.vcsim import launcher

POOL = "pool"


def vsphere_pool(make_harness: HarnessFactory, server: VcsimServer, **settings: Any) -> Harness:
    """A harness of one pool ``POOL`` (tools readiness) on the simulator, in a folder of its own."""
    folder = f"vmpool/pool-{secrets.token_hex(4)}"
    return make_harness(vcsim_config(server, [{"name": POOL, "folder": folder, "ready_check": "tools", **settings}]))


def until(harness: Harness, state: str, count: int) -> None:
    """Run passes until ``count`` VMs are in ``state`` (the guests boot on the simulator's clock)."""

    def reached_after_a_pass() -> bool:
        harness.reconcile(POOL)
        return harness.count(POOL, state) == count

    eventually(reached_after_a_pass, 10, f"{count} VMs {state}")


def in_vcsim(harness: Harness) -> set[str]:
    return {vm.name for vm in harness.provider.list_vms(harness.pool(POOL))}


def folder_of(harness: Harness) -> str:
    return f"{DATACENTER}/vm/{harness.pool(POOL).folder}"


@pytest.fixture
def harness(make_harness: HarnessFactory, vcsim: VcsimServer) -> Harness:
    return vsphere_pool(make_harness, vcsim, size=2)


def test_pool_fills_with_real_vms_in_its_folder(harness: Harness) -> None:
    first = harness.reconcile(POOL)
    assert len(first.clones_started) == 2
    until(harness, "ready", 2)
    ready = set(harness.store.hostnames(POOL, "ready"))
    assert ready == in_vcsim(harness)
    record = harness.store.get_vm(sorted(ready)[0])
    assert record is not None and record.ip == "127.0.0.1" and record.host.startswith("DC0_C0_H")


def test_checkout_delete_and_lifetime_destroy_vms_in_vcsim(harness: Harness) -> None:
    until(harness, "ready", 2)
    request = CheckoutRequest(POOL, [POOL], 2)
    result = harness.store.checkout([request], harness.clock.now(), {})
    deleted, expired = sorted(vm.hostname for vm in result.vms)
    # DELETE /vm/<host>: the API moves the VM to completed.
    assert harness.store.move(deleted, POOL, "running", "completed", harness.clock.now())
    harness.clock.advance(25 * 3600)  # past vm_lifetime (24 h) for the other one
    for _ in range(5):
        harness.reconcile(POOL)
    gone = in_vcsim(harness)
    assert deleted not in gone and expired not in gone
    assert len(harness.store.hostnames(POOL, "ready")) + len(
        harness.store.hostnames(POOL, "pending")) == 2  # refilled


def test_hand_made_vm_is_discovered_and_destroyed_outside_is_untouched(harness: Harness) -> None:
    admin.create_vm(harness.provider, folder_of(harness), "intruder")
    admin.create_vm(harness.provider, f"{DATACENTER}/vm/elsewhere", "bystander")
    for _ in range(4):
        harness.reconcile(POOL)
    assert "intruder" not in in_vcsim(harness)
    assert admin.exists(harness.provider, f"{DATACENTER}/vm/elsewhere/bystander")


def test_vm_deleted_by_hand_is_dropped(harness: Harness) -> None:
    until(harness, "ready", 2)
    victim = harness.store.hostnames(POOL, "ready")[0]
    admin.delete_vm(harness.provider, f"{folder_of(harness)}/{victim}")
    harness.reconcile(POOL)
    record = harness.store.get_vm(victim)
    assert record is not None and record.state == "destroyed"
    assert victim not in harness.store.hostnames(POOL, "ready")


def test_missing_template_records_reason_and_retries_without_leaking(make_harness: HarnessFactory,
                                                                      vcsim: VcsimServer) -> None:
    harness = vsphere_pool(make_harness, vcsim, size=2, template="templates/missing")
    failures: list[Failure] = []
    for _ in range(4):
        report = harness.reconcile(POOL)
        failures += list(report.clone_failures.values())
    assert failures and all("templates/missing" in failure.message for failure in failures)
    assert {failure.kind for failure in failures} == {FailureKind.TEMPLATE}
    assert harness.store.cloning_count() <= 2  # in flight, not accumulating
    assert in_vcsim(harness) == set()
    counts = harness.store.counts([POOL])[POOL]
    assert counts["pending"] <= 2 and counts["ready"] == 0


@pytest.mark.parametrize(("settings", "reason"), [
    ({"network": "NoSuchNetwork"}, "network"),
    ({"template": "templates/missing"}, "template"),
    ({"folder": f"vmpool/{launcher.NO_CLONE_FOLDER}"}, "permission"),
])
def test_clone_failures_are_counted_and_recorded_under_their_kind(
        vcsim: VcsimServer, redis_client: redis.Redis, capsys: pytest.CaptureFixture[str],
        settings: dict[str, str], reason: str) -> None:
    """The CloneFailures metric's reason and the VM's ``failure`` field say what an operator must
    fix; a missing network used to be counted as a template failure."""
    config = vcsim_config(vcsim, pools=[{"name": f"kinds-{reason}", "size": 2, "folder": "vmpool/kinds", **settings}])
    services = Services(config, redis_client, FakeClock())
    run_pool(services, f"kinds-{reason}", 0.0)  # starts (and records) the clones
    run_pool(services, f"kinds-{reason}", 0.0)  # reads their tasks: failed
    assert clone_failures_by_reason(emf_documents(capsys.readouterr().out)) == {reason: 2}
    failed = [services.store.get_vm(name) for name in services.store.hostnames(f"kinds-{reason}", "completed")]
    assert len(failed) == 2 and all(vm is not None and vm.failure == reason for vm in failed)


def test_vcsim_stopped_mid_run_fails_cleanly_then_converges(
    private_vcsim: VcsimServer, make_harness: HarnessFactory
) -> None:
    harness = vsphere_pool(make_harness, private_vcsim, size=2)
    harness.reconcile(POOL)
    private_vcsim.stop()
    with pytest.raises(ProviderError):
        harness.reconcile(POOL)
    private_vcsim.start()  # a fresh simulator: the clones are gone
    until(harness, "ready", 2)
    assert set(harness.store.hostnames(POOL, "ready")) == in_vcsim(harness)


def test_a_pool_moved_to_another_folder_keeps_the_vm_in_use_and_empties_the_old_folder(
        make_harness: HarnessFactory, vcsim: VcsimServer) -> None:
    """manager/placement.py on vCenter: after the push, the ready VM of the old folder is
    destroyed there and the pool fills in the new one; the VM checked out stays running in the
    old folder, its user's, until returned; then it is destroyed there too."""
    old_folder = f"vmpool/moved-{secrets.token_hex(4)}"
    new_folder = f"vmpool/moved-{secrets.token_hex(4)}"
    pool = {"name": POOL, "ready_check": "tools", "size": 2}
    harness = make_harness(vcsim_config(vcsim, [{**pool, "folder": old_folder}]))
    harness.reconcile(POOL)
    until(harness, "ready", 2)
    in_use = harness.checkout(POOL)
    [left_ready] = harness.ready(POOL)

    harness.services.use_config(vcsim_config(vcsim, [{**pool, "folder": new_folder}]))
    until(harness, "ready", 2)
    assert harness.state_of(in_use) == "running" and harness.describe(in_use)["state"] == "running"
    assert set(harness.ready(POOL)) == in_vcsim(harness)  # the new folder
    eventually(lambda: harness.reconcile(POOL) and not admin.exists(
        harness.provider, f"{DATACENTER}/vm/{old_folder}/{left_ready}"), 10, "the old ready VM destroyed")
    assert admin.exists(harness.provider, f"{DATACENTER}/vm/{old_folder}/{in_use}")

    assert harness.delete(f"/api/v3/vm/{in_use}").status == 200
    eventually(lambda: harness.reconcile(POOL) and harness.state_of(in_use) == "destroyed", 10, "returned VM gone")
    assert not admin.exists(harness.provider, f"{DATACENTER}/vm/{old_folder}/{in_use}")
