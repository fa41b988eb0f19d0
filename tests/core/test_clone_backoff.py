"""A pool whose clones keep failing backs off instead of starting task_limit clones every pass
(manager/clones.py), on the dummy provider and a fake clock. Against vcsim, with the faults an
operator makes: tests/vsphere/test_bad_day.py."""

from __future__ import annotations

import itertools

import pytest

from chalicelib.manager.clones import BACKOFF_FIRST_SECONDS, BACKOFF_MAX_SECONDS
from tests.harness import Harness, HarnessFactory, assert_consistent

CONFIG = """\
config: {task_limit: 4, timeout: 5, experimental_features: true}
providers:
  dummy: {provider_class: dummy, seed: 7, createvm_max_time: 1, createvm_fail_percent: 100}
pools:
  - {name: alpha, size: 4, provider: dummy, template: templates/tmpl-a}
"""
STEP = 5.0
"""Seconds between passes."""


@pytest.fixture
def world(make_world: HarnessFactory) -> Harness:
    return make_world(CONFIG)


def starts(world: Harness, seconds: float) -> list[tuple[float, int]]:
    """(time since the first pass, clones started) of each pass that started any, passes every STEP."""
    begun = world.clock.now()
    started = []
    while world.clock.now() - begun < seconds:
        report = world.reconcile("alpha")
        if report.clones_started:
            started.append((world.clock.now() - begun, len(report.clones_started)))
        assert_consistent(world, "alpha")
        world.clock.advance(STEP)
    return started


def test_failing_clones_back_off_doubling_up_to_the_cap_with_one_probe_each_time(world: Harness) -> None:
    started = starts(world, 3600)
    assert started[0] == (0.0, 4)  # the first burst: task_limit
    assert all(count == 1 for _, count in started[1:]), started  # then one probe at a time
    gaps = [later - earlier for (earlier, _), (later, _) in itertools.pairwise(started)]
    waits = [min(BACKOFF_FIRST_SECONDS * 2 ** n, BACKOFF_MAX_SECONDS) for n in range(len(gaps))]
    # Each gap: the wait, plus the pass that read the failure, rounded up to the next pass.
    assert all(wait < gap <= wait + 2 * STEP for gap, wait in zip(gaps, waits, strict=True)), (gaps, waits)
    assert waits[-1] == BACKOFF_MAX_SECONDS


def test_an_operator_changing_the_template_ends_the_backoff_at_once(world: Harness) -> None:
    starts(world, 60)
    assert world.reconcile("alpha").clones_backed_off_until is not None
    assert world.answer("POST", "/api/v3/config/pooltemplate", {"alpha": "templates/tmpl-b"})[0] == 201
    world.clock.advance(STEP)
    report = world.reconcile("alpha")
    assert len(report.clones_started) == 4 and report.clones_backed_off_until is None
