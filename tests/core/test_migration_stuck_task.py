"""A migration whose task state the provider keeps failing to read must not stall its pool:
its pass still refills the pool and destroys what left service (dummy provider, fake clock)."""

from __future__ import annotations

from typing import Any

import pytest

from chalicelib.config import parse
from chalicelib.providers.base import ProviderError
from chalicelib.providers.failures import FailureKind
from chalicelib.store.migrations import STALE_SLOT_SECONDS
from tests.harness import Harness, HarnessFactory
from tests.support import refuse_task_reads

CONFIG = """\
config: {migration_limit: 1, vm_lifetime: 48}
providers:
  dummy: {provider_class: dummy, seed: 11, migratevm_couldmove_percent: 100, migratevm_max_time: 60}
pools:
  - {name: mig, size: 3, provider: dummy, ready_ttl: 5}
"""


def stuck_migration(make_harness: HarnessFactory, monkeypatch: pytest.MonkeyPatch,
                    kind: FailureKind) -> tuple[Harness, str]:
    """A pool with one checked-out VM whose migration started, its task's state unreadable from
    then on (``kind``); every other task reads as ever."""
    world = make_harness(parse(CONFIG), prefix="migstuck:")
    world.fill("mig")
    [host] = world.checkout_vms("mig", 1)
    world.reconcile("mig")
    record = world.store.get_vm(host)
    assert record is not None and record.raw.get("migration") == "started"
    task = record.raw["migration_task"]
    refuse_task_reads(monkeypatch, world.services.provider("dummy"), lambda task_ref: ProviderError(
        "the task's state cannot be read", kind) if task_ref == task else None)
    return world, host


@pytest.mark.parametrize("kind", [FailureKind.OTHER, FailureKind.CONNECTION])
def test_a_migration_whose_task_cannot_be_read_does_not_stop_its_pool_refilling_or_reaping(
        make_harness: HarnessFactory, monkeypatch: pytest.MonkeyPatch, kind: FailureKind) -> None:
    """Before, ``task_status`` raising for the one migration ended every pass of the pool at the
    migration step: its ready VMs past ready_ttl were never destroyed, its checkout never
    replaced. Now the migration waits (its error in the pass's report) and the pass goes on."""
    world, host = stuck_migration(make_harness, monkeypatch, kind)
    world.clock.advance(6 * 60)  # the ready VMs outlive ready_ttl: out of service, destroyed, replaced
    report = world.reconcile("mig")
    assert any(host in error and "cannot be read" in error for error in report.errors)
    assert len(report.completed) == 3 and len(report.clones_started) == 3
    assert report.followups  # the migration is looked at again soon
    world.run_passes("mig")
    counts = world.store.counts(["mig"])["mig"]
    assert (counts["ready"], counts["running"], counts["completed"]) == (3, 1, 0)
    assert world.store.get_vm(host).raw.get("migration") == "started"  # type: ignore[union-attr]
    assert world.migrations_in_flight() == 1


def test_a_migration_whose_task_the_provider_answers_but_cannot_read_ends_failed_and_frees_its_slot(
        make_harness: HarnessFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Waiting cannot help a provider that answers and cannot say (past the slot's stale time):
    the migration ends, GET /vm says why, and its slot is free for the next checkout's."""
    world, host = stuck_migration(make_harness, monkeypatch, FailureKind.OTHER)
    world.clock.advance(STALE_SLOT_SECONDS + 1)
    report = world.reconcile("mig")
    assert any(host in error for error in report.errors)
    shown: dict[str, Any] = world.describe(host)
    assert "migrated" not in shown
    record = world.store.get_vm(host)
    assert record is not None and record.raw.get("migration") is None
    assert record.raw["migration_error"].startswith("migration may or may not have been done")
    assert "the task's state cannot be read" in record.raw["migration_error"]
    assert world.migrations_in_flight() == 0
