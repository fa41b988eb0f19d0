"""A pass reads its inputs once, at its start (manager/context.py), and times itself on the
injected clock (issue 11 item 1).

Before, the drain step read the pool's runtime overrides again in the middle of the pass, the
pool's counts were read twice, and the pass's duration came from the wall clock."""

from __future__ import annotations

from typing import Any, Sequence

import pytest

from chalicelib.config import PoolConfig
from chalicelib.manager.runner import run_pool
from chalicelib.providers.base import Asking, ProviderError, Started
from chalicelib.providers.failures import FailureKind
from chalicelib.store.pool_overrides import PoolOverrides
from tests.harness import Harness, HarnessFactory

CONFIG = """\
config: {task_limit: 100, prefix: "ci-"}
providers:
  dummy: {provider_class: dummy, seed: 5, createvm_max_time: 0, boot_time: 0}
pools:
  - {name: alpha, size: 4, provider: dummy, template: t1}
"""


@pytest.fixture
def world(make_world: HarnessFactory) -> Harness:
    world = make_world(CONFIG)
    world.settle("alpha", seconds=1)
    assert world.count("alpha", "ready") == 4
    world.clock.advance(1)
    return world


def test_a_reset_made_during_a_pass_is_acted_on_by_the_next_pass_not_half_way(world: Harness) -> None:
    ready = world.hosts("alpha", "ready")

    def reset_after_the_pass_looked(step: str) -> None:
        if step == "discovered":  # after the pass read its inputs, before it drains stale VMs
            PoolOverrides(world.store).reset("alpha", world.clock.now())

    during = world.reconcile("alpha", reset_after_the_pass_looked)

    assert during.completed == {} and world.hosts("alpha", "ready") == ready
    world.clock.advance(1)
    after = world.reconcile("alpha")
    assert set(after.completed) == ready and set(after.completed.values()) == {"pool reset"}


def test_a_template_change_and_reset_seen_by_a_pass_are_applied_together(world: Harness) -> None:
    """The runtime overrides are read once per pass: before, the runner read them for the
    template and the pass again for the reset time, so a change landing between the two reads
    drained the pool and refilled it with the old template."""
    ready = world.hosts("alpha", "ready")

    def operator_switches_the_template(step: str) -> None:
        if step == "inventory":  # the pass has started; it has not read the overrides yet
            overrides = PoolOverrides(world.store)
            overrides.set("template", "alpha", "t2")
            overrides.reset("alpha", world.clock.now())

    run = run_pool(world.services, "alpha", checkpoint=operator_switches_the_template)

    (report,) = run.passes
    assert set(report.completed) == ready  # drained: cloned before the reset, of the old template
    assert len(report.clones_started) == 4
    assert {world.store.get_vm(host).template for host in report.clones_started} == {"t2"}


def test_a_pass_reads_the_pools_counts_once_and_reports_them_as_it_left_the_pool(
        world: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    reads: list[Any] = []
    counts, with_requests, end_pass = world.store.counts, world.store.counts_and_open_requests, world.store.end_pass

    def counted(pools: Any) -> dict[str, dict[str, int]]:
        reads.append(pools)
        return counts(pools)

    def counted_with_requests(pool: str) -> Any:
        reads.append(pool)
        return with_requests(pool)

    def counted_at_the_end(*args: Any, read_counts: bool, **others: Any) -> Any:
        if read_counts:
            reads.append(args[0])
        return end_pass(*args, read_counts=read_counts, **others)

    monkeypatch.setattr(world.store, "counts", counted)  # the pass's reads, whichever round trip they go in
    monkeypatch.setattr(world.store, "counts_and_open_requests", counted_with_requests)
    monkeypatch.setattr(world.store, "end_pass", counted_at_the_end)
    world.check_out("alpha", 2)  # the pass refills: it reserves and starts two clones

    refill = world.reconcile("alpha")
    # Instant clones: made ready by the pass that started them (manager/rounds.py), which reads
    # the counts again after its rounds (checkouts may have taken what they made ready).
    assert len(reads) == 2
    assert len(refill.clones_started) == 2
    assert refill.counts == {**counts(["alpha"])["alpha"], "deficit": 0}
    assert (refill.counts["pending"], refill.counts["ready"], refill.counts["running"]) == (0, 4, 2)

    world.clock.advance(1)
    steady = world.reconcile("alpha")
    assert len(reads) == 3
    assert steady.counts == {**counts(["alpha"])["alpha"], "deficit": 0}
    assert (steady.counts["pending"], steady.counts["ready"]) == (0, 4)


def test_a_clone_refused_at_start_is_counted_where_it_went(make_world: HarnessFactory,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """The count kept after the one read follows the pass's own moves: a clone that fails to
    start is completed, not pending."""
    world = make_world(CONFIG)
    clone_vms = world.provider.clone_vms

    def refuse_the_first(pool: PoolConfig, hostnames: Sequence[str], on_started: Started,
                         on_asking: Asking) -> dict[str, str | ProviderError]:
        return {hostnames[0]: ProviderError("datastore full", FailureKind.CAPACITY),
                **clone_vms(pool, hostnames[1:], on_started, on_asking)}

    monkeypatch.setattr(world.provider, "clone_vms", refuse_the_first)

    report = world.reconcile("alpha")

    assert len(report.clone_failures) == 1 and len(report.clones_started) == 3
    assert report.counts == {**world.store.counts(["alpha"])["alpha"], "deficit": 1}
    assert (report.counts["pending"], report.counts["completed"]) == (3, 1)


def test_the_pass_is_timed_on_the_injected_clock(world: Harness) -> None:
    def a_slow_inventory(step: str) -> None:
        if step == "inventory":
            world.clock.advance(7)

    assert world.reconcile("alpha", a_slow_inventory).duration_seconds == 7
