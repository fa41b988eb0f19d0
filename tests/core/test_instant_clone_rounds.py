"""Clones the provider finishes at once free their slots within the pass (issue 14 item 3).

On a small pool under checkout load every returned VM is replaced, and a pass refilled at most
``task_limit`` VMs, ready only at the next pass: the pool held ``task_limit`` x the pass rate.
With clones the provider says take no time (``Provider.clone_seconds`` 0: the dummy's instant
clones), a pass looks at its clones once started and, while they finish and the pool is short,
reserves and starts more (manager/rounds.py): ``task_limit`` bounds the clones
in flight, not the clones a pass starts, and each pool's share of it holds in every round.
On a fake clock: the rounds' time budget is moved by the test.
"""

from __future__ import annotations

import pytest

from chalicelib.manager import clones
from chalicelib.manager.hostnames import candidate_names
from chalicelib.manager.rounds import ROUNDS_SECONDS
from tests.harness import Harness, HarnessFactory, assert_consistent

CONFIG = """\
config: {{task_limit: 10, prefix: "ci-"}}
providers:
  dummy: {{provider_class: dummy, seed: 5, createvm_max_time: {clone}, boot_time: 0{extra}}}
pools:
  - {{name: big, size: 500, provider: dummy}}
  - {{name: small, size: 20, provider: dummy}}
"""


def world_with(make_world: HarnessFactory, clone: float = 0, extra: str = "") -> Harness:
    return make_world(CONFIG.format(clone=clone, extra=extra))


def test_a_pass_refills_past_the_task_limit_never_holding_more_than_it(make_world: HarnessFactory) -> None:
    world = world_with(make_world)
    world.settle("small", seconds=1)
    taken = world.check_out("small", 20)
    in_flight: list[int] = []

    world.clock.advance(1)
    report = world.reconcile("small", checkpoint=lambda step: in_flight.append(world.store.cloning_count()))

    assert len(report.clones_started) == 20 and sorted(report.became_ready) == sorted(report.clones_started)
    assert max(in_flight) == 10  # two rounds of the task limit, one after the other
    assert world.count("small", "ready") == 20 and world.store.cloning_count() == 0
    assert world.hosts("small", "running") == set(taken)  # the VMs in use are untouched
    assert not report.work_in_flight and report.counts["ready"] == 20
    assert_consistent(world, "small")


def test_clones_that_take_time_are_left_to_the_next_pass(make_world: HarnessFactory) -> None:
    world = world_with(make_world, clone=1)
    world.settle("small", seconds=1)
    world.check_out("small", 20)

    world.clock.advance(1)
    report = world.reconcile("small")

    assert len(report.clones_started) == 10 and report.became_ready == []
    assert report.clones_running == 10 and report.clones_short == 10


def test_each_round_takes_only_the_pools_share_once_another_pool_claims_slots(make_world: HarnessFactory) -> None:
    """The big pool refills in rounds; the small one's passes run in the middle of them (another
    worker). Its first claims its share and gets none at once (the big pool's clones hold every
    slot); the big pool's next rounds take their half; the small pool's next pass refills in
    rounds of the other half, and once it is full (its claim withdrawn) the big pool's rounds
    take every slot again."""
    world = world_with(make_world)
    world.settle("small", seconds=1)
    world.check_out("small", 20)
    big_rounds: list[int] = []
    small_reports = []

    def the_small_pool_runs_meanwhile(step: str) -> None:
        if step == "reserved":
            big_rounds.append(len(world.hosts("big", "pending")))
            assert world.store.cloning_count() <= 10
            if len(big_rounds) in (2, 4):
                small_reports.append(world.reconcile("small"))

    world.clock.advance(1)
    big = world.reconcile("big", checkpoint=the_small_pool_runs_meanwhile)

    assert big_rounds[:6] == [10, 10, 5, 5, 10, 10]
    first, second = small_reports
    assert first.clones_started == [] and first.clones_short == 20  # claimed; every slot held
    assert len(second.clones_started) == 20 and len(second.became_ready) == 20  # rounds of its 5
    assert world.count("small", "ready") == 20
    assert world.count("big", "ready") == 500 and len(big.became_ready) == 500
    assert world.store.cloning_count() == 0
    assert_consistent(world, "big")
    assert_consistent(world, "small")


def test_the_rounds_end_when_the_pass_has_used_its_time(make_world: HarnessFactory) -> None:
    world = world_with(make_world)

    def each_reservation_takes(step: str) -> None:
        if step == "reserved":
            world.clock.advance(ROUNDS_SECONDS / 2.5)

    report = world.reconcile("big", checkpoint=each_reservation_takes)

    # Rounds start 0, 0.4 and 0.8 of the budget after the first: four reservations of 10.
    assert len(report.clones_started) == 40 and len(report.became_ready) == 30
    assert report.clones_running == 10 and report.work_in_flight
    assert world.count("big", "pending") == 10 and world.store.cloning_count() == 10


def test_a_round_whose_clones_fail_ends_the_rounds_and_counts_the_failures(make_world: HarnessFactory) -> None:
    world = world_with(make_world, extra=", createvm_fail_percent: 100")

    report = world.reconcile("small")

    assert len(report.clones_started) == 10 and len(report.clone_failures) == 10  # one round, not more
    assert report.became_ready == [] and world.store.cloning_count() == 0
    assert world.count("small", "completed") == 10  # to be destroyed, as the pending step does
    backoff = world.store.clone_backoff("small")
    assert backoff.failed == 10 and backoff.backoffs == 1  # the pool backs off: no burst next pass


def test_a_round_asks_for_no_more_names_than_the_pool_can_lack(make_world: HarnessFactory,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """With the task limit far above the pool's size (the benchmarks' 100,000) a round asked
    for task_limit candidate names: 100,000 random names made, 12 s a pass."""
    world = make_world(CONFIG.replace("task_limit: 10", "task_limit: 100000").format(clone=0, extra=""))
    world.settle("small", seconds=1)
    world.check_out("small", 20)
    asked: list[int] = []

    def counted(count: int, prefix: str = "") -> list[str]:
        asked.append(count)
        return candidate_names(count, prefix)

    monkeypatch.setattr(clones, "candidate_names", counted)
    world.clock.advance(1)
    report = world.reconcile("small")

    assert len(report.became_ready) == 20 and len(asked) == 2  # the refill, then a round finding it full
    assert max(asked) <= 20


def test_the_pass_reports_the_counts_its_rounds_left_checkouts_included(make_world: HarnessFactory) -> None:
    """The pass's counts follow its own moves; checkouts while its rounds made VMs ready are not
    among them: counted from those alone, a pool of 500 under load reported 514 ready."""
    world = world_with(make_world)
    world.settle("small", seconds=1)
    world.check_out("small", 20)
    taken: list[str] = []

    def a_checkout_after_each_move_to_ready(step: str) -> None:
        if step == "ready" and len(taken) < 5:  # the rounds go on while checkouts keep the pool short
            taken.extend(world.check_out("small", 1))

    world.clock.advance(1)
    report = world.reconcile("small", checkpoint=a_checkout_after_each_move_to_ready)

    assert len(taken) == 5 and len(report.became_ready) == 25  # what the checkouts took is refilled too
    assert report.counts == {**world.store.counts(["small"])["small"], "deficit": 0}
    assert report.counts["running"] == 20 + len(taken)
