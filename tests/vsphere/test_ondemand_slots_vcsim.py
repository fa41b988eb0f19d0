"""On-demand clone slots against vcsim with clone tasks that run a while: a deleted request's
clones keep their slots while vCenter runs them, and their VMs are destroyed once they end."""

from __future__ import annotations

import secrets

from chalicelib.providers.base import TaskState
from chalicelib.store.ondemand import OnDemandStore
from tests.harness import Harness, HarnessFactory
from tests.support import eventually
from tests.vsphere.vcsim import VcsimServer, vcsim_config

POOL = "od-slots"


def in_vcsim(harness: Harness) -> set[str]:
    return {vm.name for vm in harness.provider.list_vms(harness.pool(POOL))}


def test_a_deleted_requests_clones_keep_their_slots_until_vcenter_ends_them(
        slow_vcsim: VcsimServer, make_harness: HarnessFactory) -> None:
    pool = {"name": POOL, "ready_check": "tools", "size": 0, "folder": f"vmpool/od-{secrets.token_hex(4)}"}
    service = {"ondemand_clone_limit": 2, "ondemand_request_ttl": 60}
    harness = make_harness(vcsim_config(slow_vcsim, [pool], service, None))
    first = harness.post("/api/v3/ondemandvm", {POOL: 2}).json["request_id"]
    started = harness.reconcile(POOL).clones_started
    assert len(started) == 2
    tasks = [record.clone_task for record in OnDemandStore(harness.store).get(first).vms]  # type: ignore[union-attr]
    assert harness.delete(f"/api/v3/ondemandvm/{first}").status == 200
    second = harness.post("/api/v3/ondemandvm", {POOL: 1}).json["request_id"]
    report = harness.reconcile(POOL)
    statuses = harness.provider.task_statuses(tasks)
    if all(status.state is TaskState.RUNNING for status in statuses.values()):
        # vCenter still runs both clones after the whole pass: no slot was free for the second.
        assert report.clones_started == []
        assert {harness.state_of(name) for name in started} == {"completed"}

    def served() -> bool:
        harness.clock.advance(5)
        harness.reconcile(POOL)
        return harness.get(f"/api/v3/ondemandvm/{second}").json["ready"] is True

    eventually(served, 60, "the waiting request served once the clones ended", interval=0.2)
    assert {harness.state_of(name) for name in started} == {"destroyed"}
    assert harness.delete(f"/api/v3/ondemandvm/{second}").status == 200

    def settled() -> bool:
        harness.clock.advance(30)
        harness.reconcile(POOL)
        return harness.store.cloning_count() == 0 and in_vcsim(harness) == set() and not harness.hosts(
            POOL, "completed")

    eventually(settled, 60, "nothing left in vCenter nor in a slot", interval=0.2)
