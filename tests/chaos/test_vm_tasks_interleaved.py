"""A VM's snapshot and revert (POST /vm/<host>/snapshot, /snapshot/<id>) and its disk, run by a
pass killed after any round trip or paused after any while another run goes on, or while its user
returns the VM: tests/chaos/test_crash_every_write.py's fleet and checks, with the tasks that
file's disk scenario leaves out. What the user reads must be what the hypervisor has: a snapshot
GET /vm/<host> lists is one the provider holds (and can revert to), and the disk is there or the
VM says why not."""

from __future__ import annotations

import json
from typing import Callable

import pytest

from chalicelib.store.vm_tasks import VMTaskStore, new_task, task_errors
from tests.chaos.fleet import Fleet, fleet_fixture
from tests.chaos.test_crash_every_write import (
    CONFIG,
    POOL,
    after_every_kill,
    after_every_pause,
    another_run,
    assert_whole,
    disk_task,
)

fleet = fleet_fixture(CONFIG)
SNAPSHOT = "a" * 32


def snapshot_and_revert(fleet: Fleet) -> None:
    """The disk scenario's VM in use with a disk, a snapshot and a revert to it queued, in that order."""
    disk_task(fleet)
    (host,) = fleet.disk_on
    tasks, now = VMTaskStore(fleet.world.store), fleet.world.clock.now()
    for kind in ("snapshot", "revert"):
        tasks.enqueue(fleet.world.store.get_vm(host), new_task(kind, now, snapshot=SNAPSHOT), now)


def owner_returns_it(fleet: Fleet) -> None:
    """Its user gives the VM with tasks back (DELETE /vm/<host>)."""
    for host in sorted(fleet.disk_on):
        assert fleet.world.delete(f"/api/v3/vm/{host}").status == 200
        fleet.kept[POOL].discard(host)
    fleet.disk_on.clear()


def assert_snapshots_as_the_provider_has_them(fleet: Fleet, where: str) -> None:
    """Whole (assert_whole), and each VM in use lists the snapshot exactly when the provider has it."""
    assert_whole(fleet, where)
    for host in fleet.kept[POOL]:
        record = fleet.world.store.get_vm(host)
        in_provider = json.loads(fleet.world.client.hget(
            fleet.world.provider._folder_key(fleet.world.pool(record.pool)), host) or "{}")
        listed = fleet.world.get(f"/api/v3/vm/{host}").json[host].get("snapshots", [])
        assert (SNAPSHOT in listed) == (SNAPSHOT in in_provider.get("snapshots", [])), (
            f"{where}: {host} lists {listed}, the provider has {in_provider.get('snapshots')}, "
            f"task errors {task_errors(record)}")


def test_a_snapshot_run_killed_after_any_round_trip_is_listed_only_when_taken(fleet: Fleet) -> None:
    snapshot_and_revert(fleet)
    after_every_kill(fleet, "snapshot and revert", assert_snapshots_as_the_provider_has_them)


def test_a_snapshot_pass_paused_at_any_round_trip_while_another_runs_is_listed_only_when_taken(
        fleet: Fleet) -> None:
    """Before, the paused pass, stopped between reading the VM to add its disk and writing it back,
    wrote it over the snapshot the other run had added: GET /vm listed a snapshot the provider no
    longer had (the dummy provider's read-modify-write, providers/dummy.py ``_apply``)."""
    snapshot_and_revert(fleet)
    after_every_pause(fleet, "snapshot and revert (another run)", another_run,
                      assert_snapshots_as_the_provider_has_them)


@pytest.mark.parametrize("tasks", [disk_task, snapshot_and_revert], ids=["disk", "snapshot and revert"])
def test_a_task_pass_paused_at_any_round_trip_while_its_user_returns_the_vm_converges(
        fleet: Fleet, tasks: Callable[[Fleet], None]) -> None:
    tasks(fleet)
    after_every_pause(fleet, "tasks (the VM returned)", owner_returns_it, assert_whole)
