"""The manager's reconcile pass driving vcsim through the vSphere provider, with real Redis.

Manager time is a FakeClock (lifetimes, TTLs); guest boot is vcsim's wall clock (1 s), waited
for by polling passes.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
import redis

from chalicelib.clock import FakeClock
from chalicelib.config import PoolConfig
from chalicelib.manager.reconcile import PassReport, reconcile_pool
from chalicelib.manager.runner import run_pool
from chalicelib.providers.base import ProviderError
from chalicelib.providers.failures import Failure, FailureKind
from chalicelib.services import Services
from chalicelib.store import CheckoutRequest, Store
from tests.support import clone_failures_by_reason, emf_documents
from tests.vsphere import admin
from tests.vsphere.vcsim import DATACENTER, Setup, VcsimServer, make_setup, vcsim_config
from tools.vcsim import launcher


class Harness:
    def __init__(self, setup: Setup, client: redis.Redis, **pool: Any) -> None:
        self.setup = setup
        self.clock = FakeClock()
        self.store = Store(client)
        self.pool: PoolConfig = setup.pool(ready_check="tools", **pool)

    def run(self) -> PassReport:
        return reconcile_pool(self.store, self.setup.provider, self.pool, self.clock, self.setup.service)

    def until(self, state: str, count: int, passes: int = 60) -> None:
        """Run passes (0.1 s of wall time apart) until ``count`` VMs are in ``state``."""
        for _ in range(passes):
            self.run()
            if self.store.counts([self.pool.name])[self.pool.name][state] == count:
                return
            time.sleep(0.1)
        raise AssertionError(f"never {count} {state}: {self.store.counts([self.pool.name])}")

    def in_vcsim(self) -> set[str]:
        return {vm.name for vm in self.setup.provider.list_vms(self.pool)}

    @property
    def folder(self) -> str:
        return f"{DATACENTER}/vm/{self.pool.folder}"


@pytest.fixture
def harness(setup: Setup, redis_client: redis.Redis) -> Harness:
    return Harness(setup, redis_client, size=2)


def test_pool_fills_with_real_vms_in_its_folder(harness: Harness) -> None:
    first = harness.run()
    assert len(first.clones_started) == 2
    harness.until("ready", 2)
    ready = set(harness.store.hostnames(harness.pool.name, "ready"))
    assert ready == harness.in_vcsim()
    record = harness.store.get_vm(sorted(ready)[0])
    assert record is not None and record.ip == "127.0.0.1" and record.host.startswith("DC0_C0_H")


def test_checkout_delete_and_lifetime_destroy_vms_in_vcsim(harness: Harness) -> None:
    harness.until("ready", 2)
    request = CheckoutRequest(harness.pool.name, [harness.pool.name], 2)
    result = harness.store.checkout([request], harness.clock.now(), {})
    deleted, expired = sorted(vm.hostname for vm in result.vms)
    # DELETE /vm/<host>: the API moves the VM to completed.
    assert harness.store.move(deleted, harness.pool.name, "running", "completed", harness.clock.now())
    harness.clock.advance(25 * 3600)  # past vm_lifetime (24 h) for the other one
    for _ in range(5):
        harness.run()
    gone = harness.in_vcsim()
    assert deleted not in gone and expired not in gone
    assert len(harness.store.hostnames(harness.pool.name, "ready")) + len(
        harness.store.hostnames(harness.pool.name, "pending")) == 2  # refilled


def test_hand_made_vm_is_discovered_and_destroyed_outside_is_untouched(harness: Harness) -> None:
    admin.create_vm(harness.setup.provider, harness.folder, "intruder")
    admin.create_vm(harness.setup.provider, f"{DATACENTER}/vm/elsewhere", "bystander")
    for _ in range(4):
        harness.run()
    assert "intruder" not in harness.in_vcsim()
    assert admin.exists(harness.setup.provider, f"{DATACENTER}/vm/elsewhere/bystander")


def test_vm_deleted_by_hand_is_dropped(harness: Harness) -> None:
    harness.until("ready", 2)
    victim = harness.store.hostnames(harness.pool.name, "ready")[0]
    admin.delete_vm(harness.setup.provider, f"{harness.folder}/{victim}")
    harness.run()
    record = harness.store.get_vm(victim)
    assert record is not None and record.state == "destroyed"
    assert victim not in harness.store.hostnames(harness.pool.name, "ready")


def test_missing_template_records_reason_and_retries_without_leaking(setup: Setup, redis_client: redis.Redis) -> None:
    harness = Harness(setup, redis_client, size=2, template="templates/missing")
    failures: list[Failure] = []
    for _ in range(4):
        report = harness.run()
        failures += list(report.clone_failures.values())
    assert failures and all("templates/missing" in failure.message for failure in failures)
    assert {failure.kind for failure in failures} == {FailureKind.TEMPLATE}
    assert harness.store.cloning_count() <= 2  # in flight, not accumulating
    assert harness.in_vcsim() == set()
    counts = harness.store.counts([harness.pool.name])[harness.pool.name]
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
    private_vcsim: VcsimServer, redis_client: redis.Redis
) -> None:
    harness = Harness(make_setup(private_vcsim), redis_client, size=2)
    harness.run()
    private_vcsim.stop()
    with pytest.raises(ProviderError):
        harness.run()
    private_vcsim.start()  # a fresh simulator: the clones are gone
    harness.until("ready", 2)
    assert set(harness.store.hostnames(harness.pool.name, "ready")) == harness.in_vcsim()
