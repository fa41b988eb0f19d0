"""A pool moved to another provider (a config push) while clones it drained are held: each
held clone's task is asked of the provider that started it (its record's placement), and a
provider no longer configured holds the slot up to the cap; dummy providers, fake clock.

Before, the held clones' tasks were asked of the pool's new provider, which did not know them
(an ERROR): their slots were freed at once while the old provider still cloned (twice
task_limit in flight), and they were destroyed in the old place before their clones landed.
"""

from __future__ import annotations

import json

from chalicelib.config import parse
from chalicelib.manager.completed import CLONE_CANCEL_WAIT_SECONDS
from tests.harness import Harness, HarnessFactory, assert_consistent

LIMIT = 4
CLONE_SECONDS = 300
CONFIG = f"""
:config: {{task_limit: {LIMIT}, timeout: 10, prefix: "ci-", experimental_features: true}}
:providers:
  :dummy: {{createvm_max_time: {CLONE_SECONDS}, createvm_min_time: {CLONE_SECONDS}, boot_time: 0}}
  :other: {{provider_class: dummy, createvm_max_time: {CLONE_SECONDS}, createvm_min_time: {CLONE_SECONDS},
            boot_time: 0}}
:pools:
  - {{name: p, size: {LIMIT}, provider: dummy, template: t/p}}
"""
MOVED = CONFIG.replace("provider: dummy, template", "provider: other, template")
STEP = 10.0


def clones_in_flight(harness: Harness) -> int:
    """Clone tasks either dummy provider still runs."""
    running = 0
    for provider in ("dummy", "other"):
        for key in harness.client.scan_iter(match=harness.store.keys.dummy_task(provider, "clone-*")):
            task = json.loads(harness.client.get(key) or "{}")
            running += bool(task) and harness.clock.now() < task["due"]
    return running


def held_then_moved(make_harness: HarnessFactory, config: str) -> tuple[Harness, list[str]]:
    """The pool's clones started on ``dummy``, drained mid-clone (a reset), then the pool moved."""
    harness = make_harness(parse(CONFIG))
    first = harness.reconcile("p").clones_started
    assert len(first) == LIMIT
    harness.clock.advance(STEP)
    assert harness.post("/api/v3/poolreset", {"p": "1"}).status == 201
    harness.reconcile("p")  # drained: held in completed; LIMIT slots taken, nothing more cloned
    assert harness.hosts("p", "completed") == set(first) and harness.store.cloning_count() == LIMIT
    harness.services.use_config(parse(config))
    return harness, first


def run_passes_within_task_limit(harness: Harness) -> None:
    """A pass every ``STEP`` for twice the clone time, the pool consistent after each and never
    more clones in flight (in the old place and the new) than ``task_limit``."""
    most = 0
    for _ in range(int(2 * CLONE_SECONDS / STEP)):
        harness.clock.advance(STEP)
        harness.reconcile("p")
        assert_consistent(harness, "p", pass_completed=False)
        most = max(most, clones_in_flight(harness))
    assert most <= LIMIT, f"{most} clones in flight under task_limit {LIMIT}"


def test_held_clones_are_followed_where_they_were_started(make_harness: HarnessFactory) -> None:
    harness, first = held_then_moved(make_harness, MOVED)
    run_passes_within_task_limit(harness)
    assert {harness.state_of(hostname) for hostname in first} == {"destroyed"}
    old_place = set(harness.client.hkeys(harness.store.keys.dummy_folder("dummy", "p")))
    assert old_place == set(), "held clones left in the old provider"
    assert len(harness.ready("p")) == LIMIT


def test_held_clones_of_a_provider_no_longer_configured_free_their_slots_at_the_cap(
        make_harness: HarnessFactory) -> None:
    harness, first = held_then_moved(make_harness, MOVED.replace(
        f"  :dummy: {{createvm_max_time: {CLONE_SECONDS}, createvm_min_time: {CLONE_SECONDS}, boot_time: 0}}\n", ""))
    harness.clock.advance(STEP)
    report = harness.reconcile("p")
    assert report.clones_started == [], "slots freed: nothing says the clones ended"
    assert harness.store.cloning_count() == LIMIT
    harness.clock.advance(10 * 60 + CLONE_CANCEL_WAIT_SECONDS)  # past the pool's timeout and the cap
    report = harness.reconcile("p")
    assert_consistent(harness, "p", pass_completed=False)
    assert len(report.clones_started) == LIMIT
    assert all(harness.store.get_vm(hostname).raw.get("clone_end") for hostname in first)


def test_clones_left_cloning_in_the_old_place_past_the_timeout_keep_their_slots(
        make_harness: HarnessFactory) -> None:
    """The pool moves while its clones run (pending, not drained): they wait in pending up to the
    pool's timeout, then leave service holding their slots, are cancelled where they run, and
    only then do their slots go to clones in the new place. Before, the timeout freed the slots
    while the old provider still cloned (twice task_limit in flight)."""
    short = CONFIG.replace("timeout: 10", "timeout: 1")
    harness = make_harness(parse(short))
    first = harness.reconcile("p").clones_started
    harness.services.use_config(parse(short.replace("provider: dummy, template", "provider: other, template")))
    run_passes_within_task_limit(harness)
    assert {harness.state_of(hostname) for hostname in first} == {"destroyed"}
    assert set(harness.client.hkeys(harness.store.keys.dummy_folder("dummy", "p"))) == set()
