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

from chalicelib.manager.pending import CLONE_ASKED, CLONE_START_GRACE_SECONDS
from chalicelib.providers.base import TaskState
from chalicelib.store.records import MARKS_ASKED
from tests.harness import Harness, HarnessFactory, Killed, assert_consistent

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


def reserved_never_asked(world: Harness) -> set[str]:
    """A pass of alpha killed once it reserved its clones, before it asked the provider for any:
    the VMs it left pending (none marked asked)."""

    def killed(step: str) -> None:
        if step == "reserved":
            raise Killed(step)

    with pytest.raises(Killed):
        world.reconcile("alpha", killed)
    reserved = world.hosts("alpha", "pending")
    assert len(reserved) == LIMIT and not any(world.store.get_vm(host).raw.get(CLONE_ASKED) for host in reserved)
    return reserved


@pytest.mark.parametrize("older_reserver", [False, True])
def test_clones_drained_before_they_were_asked_give_their_slots_back_at_once(
        make_world: HarnessFactory, monkeypatch: pytest.MonkeyPatch, older_reserver: bool) -> None:
    """A pass killed between reserving its clones and asking the provider for them, then a
    template change: the next pass drains the never-asked clones, which can never be cloned now
    (the asked mark is refused off pending), so their slots come back in that pass and the new
    template's clones start at once. Before, the drained names held every slot for
    CLONE_START_GRACE_SECONDS (the pool not refilled for two minutes). Reserved by a version that
    cloned without the mark (``older_reserver``: a deploy under way), they may still be cloned:
    their slots stay for the grace, as before."""
    world = make_world(CONFIG)
    clones = Clones(world, monkeypatch)
    reserved = reserved_never_asked(world)
    if older_reserver:
        for host in reserved:
            world.client.hdel(world.store.keys.vm(host), MARKS_ASKED)
    world.clock.advance(10)
    assert world.answer("POST", "/api/v3/config/pooltemplate", {"alpha": "templates/tmpl-b"})[0] == 201
    started = world.reconcile("alpha").clones_started
    assert_consistent(world, "alpha")
    if older_reserver:
        assert started == [] and world.store.cloning_count() == LIMIT
        world.clock.advance(CLONE_START_GRACE_SECONDS)
        started = world.reconcile("alpha").clones_started
    assert len(started) == LIMIT and not reserved & set(started)
    assert {world.store.get_vm(host).state for host in reserved} <= {"completed", "destroyed"}
    assert clones.in_flight() == LIMIT
    world.clock.advance(CLONE_SECONDS + 1)
    world.settle("alpha")
    assert world.provider_vms("alpha") == world.hosts("alpha", "ready") and not reserved & world.provider_vms("alpha")
    assert {record.template for record in world.store.records(list(world.ready("alpha"))).values()} == {
        "templates/tmpl-b"}
    assert world.store.cloning_count() == 0


def test_clones_an_older_versions_drain_held_before_they_were_asked_give_their_slots_back_at_once(
        make_world: HarnessFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Reserved by this version (which clones only what it marked asked), drained unasked by an
    older version's script, which holds every clone still counted (a deploy under way): they can
    never be cloned, so the next pass's completed step frees their slots and the pool refills in
    that pass, instead of after CLONE_START_GRACE_SECONDS."""
    world = make_world(CONFIG)
    reserved = reserved_never_asked(world)
    keys = world.store.keys
    for host in reserved:  # what lua/move.lua's hold_clone did before this version
        world.client.zrem(keys.pool_state("alpha", "pending"), host)
        world.client.zadd(keys.pool_state("alpha", "completed"), {host: world.clock.now()})
        world.client.hset(keys.vm(host), mapping={"state": "completed", "clone_held": world.clock.now()})
    assert world.store.cloning_count() == LIMIT
    world.clock.advance(10)
    started = world.reconcile("alpha").clones_started
    assert len(started) == LIMIT and not reserved & set(started)
    assert {world.store.get_vm(host).state for host in reserved} <= {"completed", "destroyed"}
    assert Clones(world, monkeypatch).in_flight() == LIMIT
    world.clock.advance(CLONE_SECONDS + 1)
    world.settle("alpha")
    assert world.provider_vms("alpha") == world.hosts("alpha", "ready") and world.store.cloning_count() == 0
