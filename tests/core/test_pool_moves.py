"""A pool moved while its VMs exist: its ``provider``, ``folder`` or ``datacenter`` changed by a
config push (manager/placement.py). The VM in use stays its user's, and everything the pool
left in its old place is destroyed there (dummy provider, real Redis, the reconcile queue's
path: ``look_at`` as the consumer runs it)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from chalicelib.config import parse
from chalicelib.manager.dispatch import look_at
from chalicelib.manager.pool_queue import TICK, PoolMessage
from tests.harness import Harness, HarnessFactory

CONFIG = """
:config:
  domain: example.com
  vm_lifetime: 2
  task_limit: 4
  experimental_features: true
:providers:
  :dummy: {createvm_max_time: 0, boot_time: 30, destroyvm_max_time: 0, createdisk_max_time: 0}
  :other: {provider_class: dummy, createvm_max_time: 0, boot_time: 30, destroyvm_max_time: 0}
:pools:
  - {name: p, size: 3, provider: dummy, template: t/p, folder: f/one}
"""

MOVES = {
    "folder": ("folder: f/one", "folder: f/two"),
    "provider": ("provider: dummy", "provider: other"),
}


def passes(harness: Harness, count: int) -> None:
    """``count`` passes of the pool as the reconcile consumer runs them, 31 s apart."""
    queue = SimpleNamespace(send=lambda messages: None)
    for _ in range(count):
        look_at(harness.services, PoolMessage("p", TICK), queue)
        harness.clock.advance(31)


def vms_in(harness: Harness, provider: str, folder: str) -> set[str]:
    """Every VM in a folder of a dummy provider, clones in progress included."""
    return set(harness.client.hkeys(harness.store.keys.dummy_folder(provider, folder)))


@pytest.mark.parametrize("move", sorted(MOVES))
def test_a_pool_moved_elsewhere_keeps_the_vm_in_use_and_destroys_what_it_left(make_harness: HarnessFactory,
                                                                              move: str) -> None:
    # Before, the VM in use was missing from the new place's inventory and dropped as "gone from
    # the provider": GET said destroyed, DELETE and PUT answered 404, and it ran on unmanaged;
    # the old place's ready and booting VMs were forgotten without being destroyed.
    harness = make_harness(parse(CONFIG))
    harness.fill("p", seconds=31)
    in_use = harness.checkout("p")
    harness.reconcile("p")  # its replacement starts booting
    assert harness.count("p", "ready") == 2 and harness.count("p", "pending") == 1
    old_place = vms_in(harness, "dummy", "f/one")
    assert len(old_place) == 4

    harness.services.use_config(parse(CONFIG.replace(*MOVES[move])))
    passes(harness, 4)

    new_provider, new_folder = ("other", "f/one") if move == "provider" else ("dummy", "f/two")
    assert vms_in(harness, "dummy", "f/one") == {in_use}  # the rest of the old place is destroyed
    assert harness.hosts("p", "ready") == vms_in(harness, new_provider, new_folder)
    assert harness.count("p", "ready") == 3
    # Its user still has it: it can be read, extended, tagged, given a disk and returned.
    assert harness.describe(in_use)["state"] == "running"
    assert harness.put(f"/api/v3/vm/{in_use}", {"lifetime": 4, "tags": {"build": "42"}}).status == 200
    assert harness.post(f"/api/v3/vm/{in_use}/disk/8").status == 202
    passes(harness, 2)
    assert harness.describe(in_use)["disk"] == ["+8gb"]  # added where the VM is
    assert harness.describe(in_use)["tags"] == {"build": "42"}

    assert harness.delete(f"/api/v3/vm/{in_use}").status == 200
    passes(harness, 2)
    assert vms_in(harness, "dummy", "f/one") == set()  # destroyed in the place it was made
    assert harness.state_of(in_use) == "destroyed"
    assert harness.count("p", "ready") == 3 and harness.count("p", "completed") == 0


def test_the_vm_in_use_stays_through_its_lifetime_after_its_pool_moved(make_harness: HarnessFactory) -> None:
    """Not returned, it is reaped at its lifetime's end, as it would have been, and destroyed
    where it was made."""
    harness = make_harness(parse(CONFIG))
    harness.fill("p", seconds=31)
    in_use = harness.checkout("p")
    harness.services.use_config(parse(CONFIG.replace(*MOVES["folder"])))
    passes(harness, 3)
    assert harness.state_of(in_use) == "running"
    harness.clock.advance(2 * 3600)
    passes(harness, 3)
    assert harness.state_of(in_use) == "destroyed"
    assert vms_in(harness, "dummy", "f/one") == set()


def test_vms_made_with_a_provider_since_removed_from_the_config_are_kept_and_said_so(
        make_harness: HarnessFactory) -> None:
    """Nothing can destroy them: they stay completed (never forgotten while they may exist) and
    each pass says why, until the provider is configured again."""
    harness = make_harness(parse(CONFIG))
    harness.fill("p", seconds=31)
    moved = CONFIG.replace(*MOVES["provider"]).replace(
        "  :dummy: {createvm_max_time: 0, boot_time: 30, destroyvm_max_time: 0, createdisk_max_time: 0}\n", "")
    harness.services.use_config(parse(moved))
    passes(harness, 3)
    assert harness.count("p", "completed") == 3
    report = harness.reconcile("p")
    assert any("no longer configured" in error for error in report.errors)
    assert len(vms_in(harness, "dummy", "f/one")) == 3

    harness.services.use_config(parse(CONFIG.replace(*MOVES["provider"])))  # the old block is back
    passes(harness, 2)
    assert vms_in(harness, "dummy", "f/one") == set() and harness.count("p", "completed") == 0


def test_a_clone_in_flight_in_the_old_place_is_destroyed_once_it_is_done(make_harness: HarnessFactory) -> None:
    """A destroy started while the clone still runs finds nothing to destroy, and the clone then
    lands in a folder no pass looks at any more: the VM waits for its clone, then goes."""
    slow = CONFIG.replace("createvm_max_time: 0, boot_time: 30", "createvm_min_time: 90, createvm_max_time: 90, "
                          "boot_time: 30", 1)
    harness = make_harness(parse(slow))
    harness.reconcile("p")
    cloning = harness.hosts("p", "pending")
    assert len(cloning) == 3
    harness.services.use_config(parse(slow.replace(*MOVES["folder"])))
    passes(harness, 2)  # 62 s: the old clones still run
    assert cloning <= harness.hosts("p", "pending")
    passes(harness, 4)
    assert {harness.state_of(host) for host in cloning} == {"destroyed"}
    assert vms_in(harness, "dummy", "f/one") == set()


def test_the_clones_in_flight_in_the_old_place_are_read_in_one_provider_call(
        make_harness: HarnessFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each pass asks the old place whether its clones still run: all of them in one call (before,
    one call a clone: a vCenter round trip each, every pass, for as long as they ran)."""
    slow = CONFIG.replace("createvm_max_time: 0, boot_time: 30", "createvm_min_time: 90, createvm_max_time: 90, "
                          "boot_time: 30", 1)
    harness = make_harness(parse(slow))
    harness.reconcile("p")
    cloning = harness.hosts("p", "pending")
    old_tasks = {record.clone_task for record in harness.store.records(cloning).values()}
    assert len(old_tasks) == 3 and all(old_tasks)
    harness.services.use_config(parse(slow.replace(*MOVES["folder"])))
    provider = harness.services.provider("dummy")
    read, asked = provider.task_statuses, []

    def reading(task_refs: list[str]) -> object:
        asked.append(set(task_refs) & old_tasks)
        return read(task_refs)

    monkeypatch.setattr(provider, "task_statuses", reading)
    passes(harness, 1)
    assert [refs for refs in asked if refs] == [old_tasks]
    assert cloning <= harness.hosts("p", "pending")  # still waited for
