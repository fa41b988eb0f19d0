"""Migration at checkout (``migration_limit``) with the dummy provider's ``migratevm_*`` keys,
through the API (POST and GET /vm) and reconcile passes on a fake clock."""

from __future__ import annotations

import json

import pytest

from chalicelib.config import parse
from tests.harness import Harness, HarnessFactory, Killed

CONFIG = """\
config: {{migration_limit: {limit}, vm_lifetime: 2}}
providers:
  dummy: {{provider_class: dummy, seed: 11{dummy}}}
pools:
  - {{name: mig, size: 3, provider: dummy}}
"""


def stack(make_harness: HarnessFactory, limit: int = 1, dummy: str = "") -> Harness:
    return make_harness(parse(CONFIG.format(limit=limit, dummy=dummy)), prefix="migtest:")


def actual_host(world: Harness, hostname: str) -> str | None:
    return next(vm.host for vm in world.provider.list_vms(world.pool("mig")) if vm.name == hostname)


def migration(world: Harness, hostname: str) -> str | None:
    record = world.store.get_vm(hostname)
    assert record is not None
    return record.raw.get("migration")


def die_after_the_slot(step: str) -> None:
    """A checkpoint that kills the pass once it took a migration slot, before it starts one."""
    if step == "migration_slot":
        raise Killed(step)


def test_checked_out_vms_move_one_at_a_time_and_get_tells_the_truth(
        make_harness: HarnessFactory) -> None:
    world = stack(make_harness, limit=1,
                  dummy=", migratevm_couldmove_percent: 100, migratevm_max_time: 60")
    world.fill("mig")
    taken = world.checkout_vms("mig", 3)
    for host in taken:
        assert "migrated" not in world.describe(host) and world.describe(host)["host"] == "dummy-host"

    world.reconcile("mig")
    assert [migration(world, host) for host in taken].count("started") == 1
    assert world.migrations_in_flight() == 1
    passes = 0
    while any(migration(world, host) for host in taken):
        world.clock.advance(61)
        report = world.reconcile("mig")
        assert world.migrations_in_flight() <= 1
        assert report.work_in_flight or not any(migration(world, host) for host in taken)
        passes += 1
        assert passes < 10
    assert passes >= 3  # one after the other, never more than the limit at once

    for host in taken:
        shown = world.describe(host)
        assert shown["migrated"] == "true"
        assert shown["host"] == actual_host(world, host) != "dummy-host"
    assert world.migrations_in_flight() == 0


def test_a_failed_migration_leaves_the_vm_where_it_is(make_harness: HarnessFactory) -> None:
    world = stack(make_harness, limit=5,
                  dummy=", migratevm_couldmove_percent: 100, migratevm_fail_percent: 100")
    world.fill("mig")
    [host] = world.checkout_vms("mig", 1)
    report = world.reconcile("mig")
    report = world.reconcile("mig")
    assert any("migration failed: dummy: migrate failed" in error for error in report.errors)
    shown = world.describe(host)
    assert (shown.get("migrated"), shown["host"]) == (None, "dummy-host") and actual_host(world, host) == "dummy-host"
    record = world.services.store.get_vm(host)
    assert record is not None and record.raw["migration_error"].startswith("migration failed")
    assert world.migrations_in_flight() == 0 and migration(world, host) is None


@pytest.mark.parametrize("outcome", ["migrated", "failed"])
def test_a_finished_migration_leaves_no_field_of_the_move_on_the_record(make_harness: HarnessFactory,
                                                                       outcome: str) -> None:
    """Once a migration ended, moved or failed, the record keeps its result (``host``,
    ``migrated`` or ``migration_error``) and nothing of the move in flight. Before, its noted
    target (``migration_to``) and origin stayed on the record for good."""
    dummy = ", migratevm_max_time: 60" if outcome == "migrated" else ", migratevm_fail_percent: 100"
    world = stack(make_harness, limit=1, dummy=", migratevm_couldmove_percent: 100" + dummy)
    world.fill("mig")
    [host] = world.checkout_vms("mig", 1)
    world.reconcile("mig")
    record = world.store.get_vm(host)
    assert record is not None and record.raw.get("migration_to")  # noted while the move is in flight
    for _ in range(3):
        world.clock.advance(61)
        world.reconcile("mig")
    record = world.store.get_vm(host)
    assert record is not None and migration(world, host) is None and world.migrations_in_flight() == 0
    result = {"migrated": {"migrated"}, "failed": {"migration_error"}}[outcome]
    assert {field for field in record.raw if field.startswith("migrat")} == result


def test_a_vm_on_the_least_used_host_stays(make_harness: HarnessFactory) -> None:
    world = stack(make_harness, limit=1)  # no migratevm_couldmove_percent: never busier
    world.fill("mig")
    [host] = world.checkout_vms("mig", 1)
    assert migration(world, host) == "queued"
    world.reconcile("mig")
    assert migration(world, host) is None and world.migrations_in_flight() == 0
    assert "migrated" not in world.describe(host)


def test_without_migration_limit_checkouts_are_not_queued(make_harness: HarnessFactory) -> None:
    world = stack(make_harness, limit=0, dummy=", migratevm_couldmove_percent: 100")
    world.fill("mig")
    [host] = world.checkout_vms("mig", 1)
    world.reconcile("mig")
    assert migration(world, host) is None and "migrated" not in world.describe(host)


def test_a_vm_returned_while_migrating_frees_its_slot(make_harness: HarnessFactory) -> None:
    world = stack(make_harness, limit=1,
                  dummy=", migratevm_couldmove_percent: 100, migratevm_max_time: 600")
    world.fill("mig")
    first, second = world.checkout_vms("mig", 2)
    world.reconcile("mig")
    moving = first if migration(world, first) == "started" else second
    assert world.migrations_in_flight() == 1
    assert world.delete(f"/api/v3/vm/{moving}").status == 200
    world.reconcile("mig")
    other = second if moving == first else first
    assert migration(world, other) == "started"  # the freed slot went to the other VM
    assert world.migrations_in_flight() == 1


def test_a_pass_killed_after_taking_a_slot_frees_it_after_the_grace(
        make_harness: HarnessFactory) -> None:
    from chalicelib.manager.migrations import MIGRATION_START_GRACE_SECONDS

    world = stack(make_harness, limit=1, dummy=", migratevm_couldmove_percent: 100")
    world.fill("mig")
    [host] = world.checkout_vms("mig", 1)

    with pytest.raises(Killed):
        world.reconcile("mig", die_after_the_slot)
    assert world.migrations_in_flight() == 1 and migration(world, host) == "started"
    world.reconcile("mig")  # within the grace: the killed pass might still be starting it
    assert world.migrations_in_flight() == 1
    world.clock.advance(MIGRATION_START_GRACE_SECONDS + 1)
    report = world.reconcile("mig")
    assert any("never started" in error for error in report.errors)
    assert world.migrations_in_flight() == 0 and migration(world, host) is None
    assert "migrated" not in world.describe(host)


@pytest.mark.parametrize("stored", ["junk", "nan"])
def test_a_migration_start_time_broken_in_redis_fails_neither_the_pass_nor_the_vm(
        make_harness: HarnessFactory, stored: str) -> None:
    """A slot taken by a killed pass whose ``migration_started`` was then written by hand:
    ``float()`` of it raised out of every pass of the pool. It reads as long ago, so the slot is
    freed as one never started, and the VM stays its user's where it is."""
    world = stack(make_harness, limit=1, dummy=", migratevm_couldmove_percent: 100")
    world.fill("mig")
    [host] = world.checkout_vms("mig", 1)

    with pytest.raises(Killed):
        world.reconcile("mig", die_after_the_slot)
    world.client.hset(world.store.keys.vm(host), "migration_started", stored)
    report = world.reconcile("mig")
    assert any("never started" in error for error in report.errors)
    assert world.migrations_in_flight() == 0 and world.state_of(host) == "running"


def test_a_move_vcenter_made_for_a_pass_killed_before_noting_it_ends_as_done(
        make_harness: HarnessFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """The pass dies once vCenter has the vMotion, before it notes the task; vCenter moves the VM.
    The slot comes back after the grace, and GET /vm says the VM migrated, to where it is (before:
    ``migration was never started``, ``migrated: false``)."""
    from chalicelib.manager.migrations import MIGRATION_START_GRACE_SECONDS

    world = stack(make_harness, limit=1, dummy=", migratevm_couldmove_percent: 100")
    world.fill("mig")
    [host] = world.checkout_vms("mig", 1)
    sent: list[str] = []
    original = world.provider.start_migration

    def sent_then_killed(*args: object) -> None:
        moving = original(*args)
        sent.append(moving.task_ref)
        raise Killed("after start_migration")

    monkeypatch.setattr(world.provider, "start_migration", sent_then_killed)
    with pytest.raises(Killed):
        world.reconcile("mig")
    monkeypatch.setattr(world.provider, "start_migration", original)
    world.provider.task_statuses(sent)  # vCenter makes the move (the dummy applies it when read)
    moved_to = actual_host(world, host)
    assert moved_to != "dummy-host"
    world.clock.advance(MIGRATION_START_GRACE_SECONDS + 1)
    report = world.reconcile("mig")
    assert not any("never started" in error for error in report.errors), report.errors
    assert world.migrations_in_flight() == 0 and migration(world, host) is None
    shown = world.describe(host)
    assert (shown.get("migrated"), shown["host"]) == ("true", moved_to)
    assert world.state_of(host) == "running"


def moved_by_drs(world: Harness, hostname: str, host: str) -> None:
    """The VM moved to ``host`` by something else than vmpool (DRS, an operator): no task of ours."""
    folder = world.provider._folder_key(world.pool("mig"))
    vm = json.loads(world.client.hget(folder, hostname))
    world.client.hset(folder, hostname, json.dumps({**vm, "host": host}))


@pytest.mark.parametrize("killed_at", ["migration_slot", "migration_target"])
def test_a_drs_move_during_the_grace_of_a_move_never_sent_is_not_read_as_migrated(
        make_harness: HarnessFactory, killed_at: str) -> None:
    """The pass dies after taking the slot (or after choosing the target), before sending the
    move; DRS moves the VM meanwhile. Before: read as migrated to DRS's host (the host alone was
    compared); now the move was never sent, so it never started, and ``host`` follows the VM."""
    from chalicelib.manager.migrations import MIGRATION_START_GRACE_SECONDS

    world = stack(make_harness, limit=1, dummy=", migratevm_couldmove_percent: 100")
    world.fill("mig")
    [host] = world.checkout_vms("mig", 1)

    def killed(step: str) -> None:
        if step == killed_at:
            raise Killed(step)

    with pytest.raises(Killed):
        world.reconcile("mig", killed)
    target = world.store.get_vm(host).raw.get("migration_to")
    assert (target is None) == (killed_at == "migration_slot")
    drs_host = next(f"dummy-host-{n}" for n in range(1, 11) if f"dummy-host-{n}" != target)
    moved_by_drs(world, host, drs_host)
    world.clock.advance(MIGRATION_START_GRACE_SECONDS + 1)
    report = world.reconcile("mig")
    assert any("never started" in error for error in report.errors), report.errors
    assert world.migrations_in_flight() == 0 and migration(world, host) is None
    world.reconcile("mig")
    shown = world.describe(host)
    assert (shown.get("migrated"), shown["host"]) == (None, drs_host)


def test_a_move_in_flight_when_its_taker_died_is_followed_after_the_settle_time(
        make_harness: HarnessFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """The pass dies once vCenter has the vMotion (60 s), before noting its task; the restarted
    local stack marks its taker gone. Before, the next pass judged it at once, the VM still on
    its host: ``migration was never started`` while the vMotion ran. Now it waits the settle
    time, finds the move running, follows it, and ends migrated."""
    from chalicelib.manager.migrations import abandon_unstarted
    from chalicelib.manager.vm_tasks import TAKER_GONE_SETTLE_SECONDS

    world = stack(make_harness, limit=1, dummy=", migratevm_couldmove_percent: 100, migratevm_max_time: 60")
    world.fill("mig")
    [host] = world.checkout_vms("mig", 1)
    original = world.provider.start_migration
    targets: list[str] = []

    def sent_then_killed(*args: object) -> None:
        targets.append(original(*args).to_host)
        raise Killed("after start_migration")

    monkeypatch.setattr(world.provider, "start_migration", sent_then_killed)
    with pytest.raises(Killed):
        world.reconcile("mig")
    monkeypatch.setattr(world.provider, "start_migration", original)
    assert abandon_unstarted(world.store, ["mig"], lambda holder: True) == [host]
    [target] = targets
    errors: list[str] = []
    for seconds in (0, TAKER_GONE_SETTLE_SECONDS + 1, 30, 30):
        world.clock.advance(seconds)
        errors += world.reconcile("mig").errors
        if seconds == 0:
            assert migration(world, host) == "started"  # not judged before the settle time
    assert errors == []
    assert world.migrations_in_flight() == 0 and migration(world, host) is None
    shown = world.describe(host)
    assert (shown.get("migrated"), shown["host"]) == ("true", target) and actual_host(world, host) == target


def test_another_users_move_running_at_the_judgement_is_not_taken_for_ours(make_harness: HarnessFactory) -> None:
    """The pass dies once it noted its target, before sending the move; an operator's vMotion of
    the VM to another host runs when the grace is over. vCenter lists every user's moves of the
    VM, so the judgement adopts that move and follows it. Before, its end read as our migration
    done: ``migrated: true`` and ``host`` our target, the VM elsewhere. Now, the adopted move
    ended with the VM off our target, it was not ours: never started, and ``host`` follows the VM."""
    from chalicelib.manager.migrations import MIGRATION_START_GRACE_SECONDS

    world = stack(make_harness, limit=1, dummy=", migratevm_couldmove_percent: 100, migratevm_max_time: 60")
    world.fill("mig")
    [host] = world.checkout_vms("mig", 1)

    def killed(step: str) -> None:
        if step == "migration_target":
            raise Killed(step)

    with pytest.raises(Killed):
        world.reconcile("mig", killed)
    target = world.store.get_vm(host).raw["migration_to"]  # type: ignore[union-attr]
    elsewhere = next(f"dummy-host-{n}" for n in range(1, 11) if f"dummy-host-{n}" != target)
    world.clock.advance(MIGRATION_START_GRACE_SECONDS + 1)
    world.provider.relocate_by_hand(world.pool("mig"), host, elsewhere)
    errors: list[str] = []
    for _ in range(4):
        errors += world.reconcile("mig").errors
        world.clock.advance(61)
    assert world.migrations_in_flight() == 0 and migration(world, host) is None
    assert actual_host(world, host) == elsewhere
    shown = world.describe(host)
    assert (shown.get("migrated"), shown["host"]) == (None, elsewhere), errors
    assert any(f"another task moved the VM to {elsewhere}" in error for error in errors), errors


def test_a_migration_whose_taker_died_and_that_the_provider_cannot_be_asked_about_frees_its_slot(
        make_harness: HarnessFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """The pass dies once it noted its target (the move may have been sent); past the grace the
    provider is asked for the VM's recent moves, and it answers but cannot say (a refusal, the VM
    gone from its folder). Before, every pass asked again: the VM's migration stayed 'started'
    for good and its service-wide slot was held (an hour), the other checked-out VM queued behind
    it. Now it waits while the provider cannot be reached or within TASK_SETTLE_SECONDS after the
    grace, as a VM task does; then it ends saying why, and the slot goes to the next VM."""
    from chalicelib.manager.migrations import MIGRATION_START_GRACE_SECONDS
    from chalicelib.manager.vm_tasks import TASK_SETTLE_SECONDS
    from chalicelib.providers.base import ProviderError
    from chalicelib.providers.failures import FailureKind

    world = stack(make_harness, limit=1, dummy=", migratevm_couldmove_percent: 100, migratevm_max_time: 60")
    world.fill("mig")
    first, second = world.checkout_vms("mig", 2)

    def killed(step: str) -> None:
        if step == "migration_target":
            raise Killed(step)

    with pytest.raises(Killed):
        world.reconcile("mig", killed)
    stuck = first if migration(world, first) == "started" else second
    waiting = second if stuck == first else first
    assert migration(world, waiting) == "queued"
    refusal = ProviderError("VM not found", FailureKind.PERMISSION)

    def cannot_say(*args: object) -> None:
        raise refusal

    monkeypatch.setattr(world.provider, "recent_migrations", cannot_say)
    world.clock.advance(MIGRATION_START_GRACE_SECONDS + 1)
    report = world.reconcile("mig")  # within the settle time: it waits
    assert report.followups and migration(world, stuck) == "started" and migration(world, waiting) == "queued"
    refusal = ProviderError("the backend is down", FailureKind.CONNECTION)
    for _ in range(3):  # unreachable: it waits, however long
        report = world.reconcile("mig")
        assert report.followups and migration(world, stuck) == "started" and migration(world, waiting) == "queued"
        world.clock.advance(TASK_SETTLE_SECONDS)
    refusal = ProviderError("VM not found", FailureKind.PERMISSION)
    world.reconcile("mig")
    assert migration(world, stuck) is None
    assert world.store.get_vm(stuck).raw.get("migration_error") == (  # type: ignore[union-attr]
        "migration may or may not have been done: its pass was interrupted after choosing its target "
        "and asking the provider failed: VM not found")
    assert "migrated" not in world.describe(stuck)
    monkeypatch.undo()
    world.reconcile("mig")
    assert migration(world, waiting) == "started"  # the freed slot went to the other VM
