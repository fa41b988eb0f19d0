"""A clone that outruns its pool's ``timeout`` keeps its ``task_limit`` slot until the provider
says it ended: it is asked to cancel, and its slot is freed when the cancel is seen (or, when
the provider never ends it, CLONE_CANCEL_WAIT_SECONDS past the timeout); on a fake clock.

Before, the pending step took it out of service and freed its slot at once (the timeout bounded
every hold): the next pass started task_limit more clones while vCenter still ran the old ones
(twice task_limit in flight, and again at each timeout), and the completed step destroyed VMs
that did not exist yet on vSphere, whose clones then landed as orphans.
"""

from __future__ import annotations

from typing import Any

import pytest

from chalicelib.manager.completed import CLONE_CANCEL_WAIT_SECONDS
from tests.core.test_pool_clone_held import Clones
from tests.harness import HarnessFactory, assert_consistent

LIMIT = 4
TIMEOUT_SECONDS = 60
STEP = 5.0


def config(clone_seconds: float, cancel_seconds: float = 20) -> str:
    return f"""\
config: {{task_limit: {LIMIT}, timeout: {TIMEOUT_SECONDS // 60}, prefix: "ci-"}}
providers:
  dummy: {{provider_class: dummy, seed: 3, createvm_max_time: {clone_seconds}, createvm_min_time: {clone_seconds},
           createvm_cancel_time: {cancel_seconds}, boot_time: 0}}
pools:
  - {{name: alpha, size: {LIMIT}, provider: dummy, template: templates/tmpl-a}}
"""


def test_a_clone_past_the_timeout_is_cancelled_and_keeps_its_slot_until_the_cancel_is_seen(
        make_world: HarnessFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    world = make_world(config(clone_seconds=600))
    clones = Clones(world, monkeypatch)
    first = world.reconcile("alpha").clones_started
    assert len(first) == LIMIT
    most, discovered = 0, 0
    for _ in range(int(300 / STEP)):
        world.clock.advance(STEP)
        world.reconcile("alpha")
        assert_consistent(world, "alpha")
        most = max(most, clones.in_flight())
        discovered += world.count("alpha", "discovered")
    assert most <= LIMIT, f"{most} clones in flight under task_limit {LIMIT}"
    assert clones.destroyed_mid_clone == [], "destroys asked for VMs still cloning"
    assert discovered == 0
    for hostname in first:  # each timed out, asked to cancel, its slot freed once the cancel was seen
        record = world.store.get_vm(hostname)
        assert record is not None and record.state == "destroyed", (hostname, record and record.state)
        assert record.raw.get("clone_cancel_asked")
        assert float(record.raw["clone_end"]) - float(record.raw["clone_cancel_asked"]) >= 20
    assert world.provider_vms("alpha") <= world.hosts("alpha", "pending"), "cancelled clones left VMs"


def test_a_clone_the_provider_never_ends_frees_its_slot_at_the_cap(
        make_world: HarnessFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """A cancel the provider ignores (its task runs on) holds the slot up to the cap, not for ever."""
    world = make_world(config(clone_seconds=10 * CLONE_CANCEL_WAIT_SECONDS))
    asked: list[str] = []

    def ignored(task_ref: str) -> bool:
        asked.append(task_ref)
        return False

    monkeypatch.setattr(world.provider, "cancel_task", ignored)
    first = world.reconcile("alpha").clones_started
    world.clock.advance(TIMEOUT_SECONDS + 1)
    world.reconcile("alpha")  # timed out: completed, held
    world.reconcile("alpha")  # asked to cancel
    assert len(asked) == LIMIT
    world.clock.advance(CLONE_CANCEL_WAIT_SECONDS - 10)
    world.reconcile("alpha")
    assert_consistent(world, "alpha")
    assert world.store.cloning_count() == LIMIT and world.count("alpha", "pending") == 0, "slots freed early"
    assert len(asked) == LIMIT, "cancel asked more than once"
    world.clock.advance(20)
    report = world.reconcile("alpha")
    assert_consistent(world, "alpha")
    assert len(report.clones_started) == LIMIT, "slots still held past the cap"
    assert {world.state_of(hostname) for hostname in first} <= {"completed", "destroyed"}


def test_a_clone_that_lands_after_the_timeout_is_destroyed(
        make_world: HarnessFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """A cancel that came too late (the clone ended first): the slot is freed and the VM it made
    destroyed, not left an orphan."""
    world = make_world(config(clone_seconds=TIMEOUT_SECONDS + 30))
    monkeypatch.setattr(world.provider, "cancel_task", lambda task_ref: False)
    first = world.reconcile("alpha").clones_started
    world.clock.advance(TIMEOUT_SECONDS + 1)
    world.reconcile("alpha")
    assert world.hosts("alpha", "completed") == set(first) and world.store.cloning_count() == LIMIT
    world.clock.advance(40)  # the clones landed
    for _ in range(3):
        world.reconcile("alpha")
        world.clock.advance(STEP)
    assert_consistent(world, "alpha")
    assert {world.state_of(hostname) for hostname in first} == {"destroyed"}
    assert not world.provider_vms("alpha") & set(first), "the clones' VMs left in the provider"


def test_a_pass_killed_between_cancel_and_its_note_asks_again(
        make_world: HarnessFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    world = make_world(config(clone_seconds=600))
    provider: Any = world.provider
    world.reconcile("alpha")
    world.clock.advance(TIMEOUT_SECONDS + 1)
    world.reconcile("alpha")
    original = provider.cancel_task
    cancels: list[bool] = []

    def dying(task_ref: str) -> bool:
        cancels.append(original(task_ref))
        raise KeyboardInterrupt  # the pass dies after vCenter took the cancel, before it is noted

    monkeypatch.setattr(provider, "cancel_task", dying)
    with pytest.raises(KeyboardInterrupt):
        world.reconcile("alpha")
    monkeypatch.setattr(provider, "cancel_task", original)
    world.reconcile("alpha")
    assert_consistent(world, "alpha")
    assert cancels == [True]
    assert world.store.cloning_count() == LIMIT, "slots freed before the cancel was seen"
    world.clock.advance(30)
    report = world.reconcile("alpha")
    assert_consistent(world, "alpha")
    assert len(report.clones_started) == LIMIT
