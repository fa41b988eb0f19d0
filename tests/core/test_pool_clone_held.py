"""A pool's own clone drained while vCenter still runs it (template change, reset) keeps its
``task_limit`` slot until the clone ends, and is destroyed only then, on a fake clock.

Before, the drain freed the slot at once (lua/move.lua left the cloning set): the next pass
started ten more clones while the ten drained ones still ran (twice ``task_limit`` in flight),
and the completed step destroyed VMs that did not exist yet on vSphere, whose clones then landed
as orphans ("discovered") destroyed later still.
"""

from __future__ import annotations

from typing import Any

import pytest

from chalicelib.providers.base import TaskState
from tests.harness import Harness, HarnessFactory, assert_consistent

CLONE_SECONDS = 120
LIMIT = 10
CONFIG = f"""\
config: {{task_limit: {LIMIT}, timeout: 15, prefix: "ci-", experimental_features: true}}
providers:
  dummy: {{provider_class: dummy, seed: 3, createvm_max_time: {CLONE_SECONDS}, createvm_min_time: {CLONE_SECONDS},
           boot_time: 0}}
pools:
  - {{name: alpha, size: {LIMIT}, provider: dummy, template: templates/tmpl-a}}
"""
STEP = 5.0


class Clones:
    """The provider's clone tasks as it sees them, and every destroy it was asked for while the
    VM's clone still ran."""

    def __init__(self, world: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
        self.world = world
        self.provider = world.provider
        self.destroyed_mid_clone: list[str] = []
        original = self.provider.destroy_vms

        def recording(pool: Any, hostnames: Any, *args: Any, **kwargs: Any) -> Any:
            records = world.store.records(list(hostnames))
            tasks = {host: record.clone_task for host, record in records.items() if record.clone_task}
            statuses = self.provider.task_statuses(list(tasks.values()))
            self.destroyed_mid_clone += [host for host, task in tasks.items()
                                         if statuses[task].state is TaskState.RUNNING]
            return original(pool, hostnames, *args, **kwargs)

        monkeypatch.setattr(self.provider, "destroy_vms", recording)

    def in_flight(self) -> int:
        pattern = self.world.store.keys.dummy_task(self.provider.name, "clone-*")
        refs = [key.rsplit(":", 1)[1] for key in self.world.client.scan_iter(match=pattern)]
        return sum(1 for status in self.provider.task_statuses(refs).values() if status.state is TaskState.RUNNING)


@pytest.mark.parametrize("change", ["template", "reset"])
def test_clones_drained_mid_clone_keep_their_slots_and_are_destroyed_after_they_end(
        make_world: HarnessFactory, monkeypatch: pytest.MonkeyPatch, change: str) -> None:
    world = make_world(CONFIG)
    clones = Clones(world, monkeypatch)
    assert len(world.reconcile("alpha").clones_started) == LIMIT
    world.clock.advance(10)
    if change == "template":
        assert world.answer("POST", "/api/v3/config/pooltemplate", {"alpha": "templates/tmpl-b"})[0] == 201
    else:
        assert world.answer("POST", "/api/v3/poolreset", {"alpha": "1"})[0] == 201
    most = 0
    discovered = 0
    for _ in range(int(4 * CLONE_SECONDS / STEP)):
        world.reconcile("alpha")
        assert_consistent(world, "alpha")
        most = max(most, clones.in_flight())
        discovered += world.count("alpha", "discovered")
        world.clock.advance(STEP)
    assert most <= LIMIT, f"{most} clones in flight under task_limit {LIMIT}"
    assert clones.destroyed_mid_clone == [], "destroys asked for VMs still cloning"
    assert discovered == 0
    ready = world.ready("alpha")
    assert len(ready) == LIMIT
    expected = "templates/tmpl-b" if change == "template" else "templates/tmpl-a"
    assert {record.template for record in world.store.records(ready).values()} == {expected}
    assert world.store.cloning_count() == 0
    assert world.provider_vms("alpha") == set(ready), "drained clones left in the provider"


def test_status_counts_booting_vms_apart_from_held_clones(make_world: HarnessFactory) -> None:
    """GET /status: ``booting`` is the pending VMs whose clone is done, whatever clones of VMs
    already out of service vCenter still runs (before: pending - cloning, 0 here)."""
    world = make_world(CONFIG.replace(
        f"  - {{name: alpha, size: {LIMIT}, provider: dummy, template: templates/tmpl-a}}",
        "  - {name: alpha, size: 4, provider: dummy, template: templates/tmpl-a}\n"
        "  - {name: beta, size: 3, provider: dummy, createvm_max_time: 1, createvm_min_time: 1, boot_time: 600}"))
    world.reconcile("alpha")
    world.reconcile("beta")
    world.clock.advance(10)
    assert world.answer("POST", "/api/v3/config/pooltemplate", {"alpha": "templates/tmpl-b"})[0] == 201
    world.reconcile("beta")  # its 3 clones done: booting
    world.reconcile("alpha")  # its 4 clones drained, held; 4 clones of tmpl-b started
    assert_consistent(world, "alpha")
    queue = world.get("/api/v3/status?view=queue").json["queue"]
    assert (queue["pending"], queue["cloning"], queue["booting"], queue["completed"]) == (7, 8, 3, 4), queue
