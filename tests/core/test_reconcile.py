"""The reconcile pass on a fake clock, through every transition, failures, kills and races."""

from __future__ import annotations

import dataclasses
from datetime import datetime, timezone

import pytest

from chalicelib.manager.clones import BACKOFF_AFTER_FAILURES
from chalicelib.manager.pending import CLONE_START_GRACE_SECONDS, GONE_WHILE_BOOTING_AFTER_SECONDS
from chalicelib.timestamps import day_of
from tests.harness import Harness, HarnessFactory, Killed, assert_consistent, kill_at_step, run_at_once
from tests.support import redis_commands

# Clones take up to 60 s, boots 30 s more; timeouts are in minutes.
BASE = """\
config: {{task_limit: {task_limit}, timeout: 5, ready_ttl: 10, vm_lifetime: 2, prefix: "ci-", domain: example.com}}
redis: {{data_ttl: 1}}
providers:
  dummy: {{provider_class: dummy, seed: 7, createvm_max_time: 60, boot_time: 30, destroyvm_max_time: 20{extra}}}
pools:
{pools}
"""


def world_with(make_world: HarnessFactory, pools: str = "  - {name: alpha, size: 3, provider: dummy}",
               task_limit: int = 10, extra: str = "") -> Harness:
    return make_world(BASE.format(task_limit=task_limit, pools=pools, extra=extra))


@pytest.fixture
def world(make_world: HarnessFactory) -> Harness:
    return world_with(make_world)


def fill(world: Harness, pool: str = "alpha") -> set[str]:
    """Reconcile until the pool is full of ready VMs; returns them."""
    world.settle(pool)
    ready = world.hosts(pool, "ready")
    assert len(ready) == world.pool(pool).size
    return ready


# --- the happy path -----------------------------------------------------------------------------


def test_first_pass_starts_clones_without_waiting(world: Harness) -> None:
    report = world.reconcile("alpha")

    assert len(report.clones_started) == 3
    assert world.hosts("alpha", "pending") == set(report.clones_started)
    assert world.store.cloning_count() == 3
    for host in report.clones_started:
        record = world.store.get_vm(host)
        assert record.clone_task and record.clone_start == world.clock.now()
        assert host.startswith("ci-") and len(host) <= 15
        assert record.domain == "example.com"
    assert report.work_in_flight

    # Nothing is ready yet and a second pass at the same instant starts nothing more.
    again = world.reconcile("alpha")
    assert again.clones_started == [] and again.became_ready == []


def test_pending_becomes_ready_and_records_durations(make_world: HarnessFactory) -> None:
    # The pool's own boot_time overrides the provider's: booting takes longer than any clone.
    world = world_with(make_world, pools="  - {name: alpha, size: 3, provider: dummy, boot_time: 120}")
    started = world.reconcile("alpha").clones_started
    world.clock.advance(60)  # every clone is done; none has booted
    report = world.reconcile("alpha")
    assert report.became_ready == []
    assert world.store.cloning_count() == 0  # finished clones free their slot at once
    booting = world.store.get_vm(started[0])
    assert booting.clone_end is not None and booting.not_ready_reason == "booting: no IP address yet"

    world.clock.advance(120)
    report = world.reconcile("alpha")

    assert sorted(report.became_ready) == sorted(started)
    assert world.hosts("alpha", "ready") == set(started)
    assert world.count("alpha", "pending") == 0
    for host in started:
        record = world.store.get_vm(host)
        assert record.state == "ready" and record.ready_at == world.clock.now()
        assert record.ip.startswith("10.") and record.not_ready_reason == ""
    assert not report.work_in_flight
    stats = world.store.day_stats([day_of(world.clock.now())])[0]
    assert stats.number("clone:count") == 3 and stats.number("boot:count") == 3
    assert 120 <= stats.number("boot:max") <= 180
    when = datetime.fromtimestamp(world.clock.now(), timezone.utc).strftime("%Y-%m-%d %H:%M:%S +0000")
    assert world.store.last_boots() == {"alpha": when}
    assert_consistent(world, "alpha")


def test_vms_ready_at_their_first_look_are_moved_without_deleting_a_reason_they_never_had(
        make_world: HarnessFactory) -> None:
    world = world_with(make_world, pools="  - {name: alpha, size: 4, provider: dummy, boot_time: 0}")
    world.reconcile("alpha")
    world.clock.advance(61)  # every clone done and booted: ready at the pass's first look
    world.client.config_resetstat()
    report = world.reconcile("alpha")

    assert len(report.became_ready) == 4
    assert all("not_ready_reason" not in world.store.get_vm(host).raw for host in report.became_ready)
    assert "hdel" not in redis_commands(world.client)  # no record had a reason to delete
    assert world.client.zscore(world.store.keys.clone_demand, "alpha") is None  # full again: no claim


# --- leaving service ----------------------------------------------------------------------------


def test_pending_past_timeout_is_completed_with_the_reason(make_world: HarnessFactory) -> None:
    world = world_with(make_world, extra=", vmready_fail_percent: 100")
    started = world.reconcile("alpha").clones_started
    world.clock.advance(4 * 60)
    report = world.reconcile("alpha")
    assert report.completed == {}
    assert world.store.get_vm(started[0]).not_ready_reason == "dummy: readiness check failed (simulated failure)"

    world.clock.advance(61 + 1)
    report = world.reconcile("alpha")

    assert set(report.completed) == set(started)
    for host in started:
        record = world.store.get_vm(host)
        assert record.state == "completed"
        assert record.reason == "not ready after 5 minutes: dummy: readiness check failed (simulated failure)"
    # ... and their replacements are already cloning.
    assert len(report.clones_started) == 3


def test_clone_still_running_past_timeout_is_completed(make_world: HarnessFactory) -> None:
    world = world_with(make_world, pools="  - {name: alpha, size: 1, provider: dummy, createvm_max_time: 100000}")
    # With this seed the clone takes far longer than the 5-minute timeout.
    (host,) = world.reconcile("alpha").clones_started
    world.clock.advance(5 * 60 + 1)

    report = world.reconcile("alpha")

    assert report.completed == {host: "clone still running after 5 minutes"}
    # The provider still clones it: it keeps its slot (until the clone ends: test_clone_timeout_held.py),
    # and the replacement holds another.
    assert world.store.cloning_count() == 2
    assert world.store.get_vm(host).raw.get("clone_held")


def test_clone_failure_is_recorded_and_frees_its_slot(make_world: HarnessFactory) -> None:
    world = world_with(make_world, task_limit=1,
                       pools="  - {name: alpha, size: 1, provider: dummy, createvm_fail_percent: 100}")
    failures: list[str] = []
    for _ in range(BACKOFF_AFTER_FAILURES):  # then the pool backs off (test_clone_backoff.py)
        report = world.reconcile("alpha")
        # The failed clone never keeps the single slot: only a clone just started holds it.
        assert world.store.cloning_count() == len(report.clones_started) == 1
        failures += list(report.clone_failures)
        world.clock.advance(61)
        assert_consistent(world, "alpha")

    assert len(failures) == BACKOFF_AFTER_FAILURES - 1
    record = world.store.get_vm(failures[0])
    assert record.reason == "clone failed: dummy: clone failed (simulated failure)"
    assert record.state in ("completed", "destroyed")
    # A failed clone leaves no VM behind, and its record is eventually destroyed, keeping the reason.
    world.reconcile("alpha")
    record = world.store.get_vm(failures[0])
    assert record.state == "destroyed" and record.reason.startswith("clone failed")
    assert world.provider_vms("alpha") == set()


def test_ready_past_ready_ttl_is_completed(world: Harness) -> None:
    old = fill(world)
    world.clock.advance(10 * 60 + 1)

    report = world.reconcile("alpha")

    assert set(report.completed) == old
    assert set(report.completed.values()) == {"ready for longer than ready_ttl (10 minutes)"}
    assert world.hosts("alpha", "completed") == old
    assert len(report.clones_started) == 3


def test_running_past_lifetime_is_reaped_then_destroyed_and_its_record_expires(world: Harness) -> None:
    fill(world)
    (host,) = world.check_out("alpha", lifetime_hours=1)
    world.clock.advance(3599)
    assert host not in world.reconcile("alpha").completed

    world.clock.advance(1)
    report = world.reconcile("alpha")
    assert report.completed[host] == "lifetime of 1 hours expired"

    world.clock.advance(1)
    report = world.reconcile("alpha")
    assert host not in report.destroyed  # the destroy task is started, not waited for
    assert world.store.get_vm(host).destroy_task
    assert host in world.provider_vms("alpha")

    world.clock.advance(20)
    report = world.reconcile("alpha")
    assert host in report.destroyed
    assert host not in world.provider_vms("alpha")
    record = world.store.get_vm(host)
    assert record.state == "destroyed" and record.reason == "lifetime of 1 hours expired"
    assert not record.destroy_task
    assert 0 < world.client.ttl(world.store.keys.vm(host)) <= 3600  # data_ttl: 1 hour
    assert host not in set().union(*(world.hosts("alpha", s) for s in ("ready", "running", "completed")))


def test_lifetime_defaults_to_the_services_vm_lifetime(world: Harness) -> None:
    fill(world)
    host = world.hosts("alpha", "ready").pop()
    world.store.move(host, "alpha", "ready", "running", world.clock.now(), checkout=world.clock.now())
    world.clock.advance(2 * 3600 - 1)
    assert host not in world.reconcile("alpha").completed
    world.clock.advance(1)
    assert world.reconcile("alpha").completed[host] == "lifetime of 2 hours expired"


@pytest.mark.parametrize("stored", ["junk", "nan", "inf", "-inf", ""])
def test_a_vm_whose_checkout_time_is_unreadable_is_reaped_a_lifetime_after_it_entered_running(
        world: Harness, stored: str) -> None:
    """Its checkout time broken in Redis (by hand or a bug): it kept running for good, never
    reaped by lifetime, and the move's own check (move.lua) read ``nan`` as a time, so a move
    asked to reap it did so at once. Both now count its lifetime from when it entered running."""
    fill(world)
    (host,) = world.check_out("alpha", lifetime_hours=1)
    world.client.hset(world.store.keys.vm(host), "checkout", stored)
    world.clock.advance(1800)
    assert host not in world.reconcile("alpha").completed
    assert not world.store.move(host, "alpha", "running", "completed", world.clock.now(), lifetime_ended=2)

    world.clock.advance(1799)
    assert host not in world.reconcile("alpha").completed
    world.clock.advance(1)
    assert world.reconcile("alpha").completed[host] == "lifetime of 1 hours expired"


@pytest.mark.parametrize("entered", ["inf", "-inf"])
def test_a_vm_in_use_with_no_readable_time_is_never_reaped(world: Harness, entered: str) -> None:
    """Neither its checkout time nor when it entered running is a time (both written by hand):
    nothing says its lifetime is over, so it stays its user's."""
    fill(world)
    (host,) = world.check_out("alpha", lifetime_hours=1)
    world.client.hset(world.store.keys.vm(host), "checkout", "junk")
    world.client.zadd(world.store.keys.pool_state("alpha", "running"), {host: float(entered)}, xx=True)
    for _ in range(3):
        world.clock.advance(3600)
        assert host not in world.reconcile("alpha").completed
    assert not world.store.move(host, "alpha", "running", "completed", world.clock.now(), lifetime_ended=2)
    assert world.state_of(host) == "running"


@pytest.mark.parametrize("stored", ["junk", "nan", "-inf", "inf"])
def test_a_confirmation_deadline_broken_in_redis_neither_fails_the_pool_nor_returns_the_vm(
        world: Harness, stored: str) -> None:
    """A running VM's ``confirm_by`` written by hand: text raised out of every pass of its pool
    (``float()``), and ``-inf`` returned the VM in use to ready, for the next user (release.lua
    read it as a time). It reads as no deadline: the VM stays its user's, the pool is looked
    after, and the lifetime still ends."""
    fill(world)
    (host,) = world.check_out("alpha", lifetime_hours=1)
    world.client.hset(world.store.keys.vm(host), "confirm_by", stored)
    for _ in range(3):
        world.clock.advance(1000)
        report = world.reconcile("alpha")
        assert report.errors == [] and host not in report.returned
    assert world.state_of(host) == "running"
    world.clock.advance(600)
    assert world.reconcile("alpha").completed[host] == "lifetime of 1 hours expired"


def test_destroy_failure_is_retried_until_it_succeeds(make_world: HarnessFactory) -> None:
    world = world_with(make_world, pools="  - {name: alpha, size: 1, provider: dummy}")
    fill(world)
    (host,) = world.check_out("alpha")
    world.store.move(host, "alpha", "running", "completed", world.clock.now(), reason="returned")
    settings = dataclasses.replace(world.provider.config.settings, destroyvm_fail_percent=100)
    world.provider.config = dataclasses.replace(world.provider.config, settings=settings)
    world.reconcile("alpha")
    world.clock.advance(21)
    report = world.reconcile("alpha")
    assert report.errors == [f"destroy {host}: dummy: destroy failed (simulated failure)"]
    assert world.store.get_vm(host).raw["destroy_error"] == "dummy: destroy failed (simulated failure)"
    assert world.state_of(host) == "completed"

    settings = dataclasses.replace(world.provider.config.settings, destroyvm_fail_percent=0)
    world.provider.config = dataclasses.replace(world.provider.config, settings=settings)
    world.settle("alpha")
    assert world.state_of(host) == "destroyed"
    assert host not in world.provider_vms("alpha")


# --- drift between the provider and the store ---------------------------------------------------


def test_booting_vm_deleted_by_hand_is_dropped_and_replaced_not_waited_for_until_the_timeout(
        make_world: HarnessFactory) -> None:
    # A VM whose clone finished (noted by an earlier pass) and that then vanished from the provider
    # (deleted in vCenter by hand; `make run PROVIDER=vcsim` restarted with a fresh simulator) was
    # waited for until the pool's timeout (15 minutes by default): its place counted as pending,
    # the pool short and every checkout of it a 503 meanwhile. A ready VM gone is dropped at once.
    world = world_with(make_world, pools="  - {name: alpha, size: 3, provider: dummy, boot_time: 240}")
    started = world.reconcile("alpha").clones_started
    world.clock.advance(60)  # every clone is done; none has booted
    world.reconcile("alpha")
    gone = sorted(started)[0]
    assert world.store.get_vm(gone).clone_end is not None and world.state_of(gone) == "pending"
    world.provider.delete_by_hand(world.pool("alpha"), gone)

    # Not at once: a pass beside the one that noted the clone may have read an older inventory.
    world.clock.advance(GONE_WHILE_BOOTING_AFTER_SECONDS / 2)
    assert world.reconcile("alpha").dropped == [] and world.state_of(gone) == "pending"

    world.clock.advance(GONE_WHILE_BOOTING_AFTER_SECONDS / 2 + 1)
    report = world.reconcile("alpha")

    assert report.dropped == [gone]
    assert world.store.get_vm(gone).reason == "gone from the provider while booting"
    assert world.state_of(gone) == "destroyed"
    assert len(report.clones_started) == 1  # its replacement, minutes before the pool's timeout
    assert world.clock.now() - world.store.get_vm(gone).clone_start < world.pool("alpha").timeout_minutes * 60
    world.settle("alpha")
    assert world.count("alpha", "ready") == 3
    assert_consistent(world, "alpha")


def test_vm_made_by_hand_is_discovered_completed_and_destroyed(world: Harness) -> None:
    fill(world)
    world.provider.create_by_hand(world.pool("alpha"), "stray-vm")

    report = world.reconcile("alpha")
    assert report.discovered == ["stray-vm"]
    assert world.state_of("stray-vm") == "discovered"
    assert world.count("alpha", "ready") == 3  # a discovered VM never counts as ready

    world.clock.advance(1)
    report = world.reconcile("alpha")
    assert report.completed == {"stray-vm": "found in the pool folder but not created by vmpool"}

    world.settle("alpha")
    assert world.state_of("stray-vm") == "destroyed"
    assert "stray-vm" not in world.provider_vms("alpha")
    assert world.count("alpha", "ready") == 3


def test_tracked_vm_deleted_by_hand_is_dropped_and_replaced(world: Harness) -> None:
    ready = fill(world)
    (running,) = world.check_out("alpha")
    gone_ready = sorted(ready - {running})[0]
    world.provider.delete_by_hand(world.pool("alpha"), gone_ready)
    world.provider.delete_by_hand(world.pool("alpha"), running)

    report = world.reconcile("alpha")

    assert sorted(report.dropped) == sorted([gone_ready, running])
    assert world.store.get_vm(gone_ready).reason == "gone from the provider while ready"
    assert world.store.get_vm(running).reason == "gone from the provider while running"
    assert world.state_of(gone_ready) == world.state_of(running) == "destroyed"
    assert len(report.clones_started) == 2  # the pool had two ready VMs fewer
    world.settle("alpha")
    assert world.count("alpha", "ready") == 3


@pytest.mark.parametrize("stored", ["junk", "nan", "inf"])
def test_a_vm_whose_change_stamp_is_broken_in_redis_is_dropped_when_gone(world: Harness, stored: str) -> None:
    """A VM's ``change_seq`` (the stamp the stale-pass check compares with the inventory mark)
    written by hand: ``int()`` of it raised out of every pass of the pool once the VM was gone
    from the provider. It reads as never stamped, as move.lua reads it, so the VM is dropped and
    replaced."""
    ready = fill(world)
    gone = sorted(ready)[0]
    world.client.hset(world.store.keys.vm(gone), "change_seq", stored)
    world.provider.delete_by_hand(world.pool("alpha"), gone)

    report = world.reconcile("alpha")

    assert report.errors == [] and report.dropped == [gone]
    world.settle("alpha")
    assert world.count("alpha", "ready") == 3


def test_checked_out_vm_is_never_reaped_as_discovered(world: Harness) -> None:
    ready = fill(world)
    taken: list[str] = []

    def check_out_between_inventory_and_snapshot(step: str) -> None:
        if step == "inventory" and not taken:
            taken.extend(world.check_out("alpha"))

    report = world.reconcile("alpha", check_out_between_inventory_and_snapshot)

    (host,) = taken
    assert host in ready
    assert report.discovered == [] and report.completed == {}
    assert world.state_of(host) == "running"
    world.settle("alpha")
    assert world.state_of(host) == "running"
    assert host in world.provider_vms("alpha")


def test_vm_checked_out_during_a_pass_is_not_expired_by_it(world: Harness) -> None:
    ready = fill(world)
    world.clock.advance(10 * 60 + 1)  # every ready VM is past ready_ttl
    taken: list[str] = []

    def check_out_after_snapshot(step: str) -> None:
        if step == "snapshot":
            taken.extend(world.check_out("alpha"))

    report = world.reconcile("alpha", check_out_after_snapshot)

    (host,) = taken
    assert set(report.completed) == ready - {host}
    assert world.state_of(host) == "running"


# --- repopulation -------------------------------------------------------------------------------


def test_clones_in_flight_never_exceed_task_limit_across_pools(make_world: HarnessFactory) -> None:
    pools = "\n".join(f"  - {{name: {name}, size: 5, provider: dummy}}" for name in ("alpha", "beta", "gamma"))
    world = world_with(make_world, pools=pools, task_limit=4)
    names = ("alpha", "beta", "gamma")

    for name in names:
        world.reconcile(name)
    assert world.store.cloning_count() == 4
    assert sum(world.count(name, "pending") for name in names) == 4

    for _ in range(30):
        world.clock.advance(15)
        for name in names:
            world.reconcile(name)
            assert world.store.cloning_count() <= 4
            assert_consistent(world, name)
    assert all(world.count(name, "ready") == 5 for name in names)
    assert world.store.cloning_count() == 0


def test_repopulate_replaces_checked_out_vms(world: Harness) -> None:
    fill(world)
    world.check_out("alpha", 2)

    report = world.reconcile("alpha")

    assert len(report.clones_started) == 2
    assert world.count("alpha", "ready") + world.count("alpha", "pending") == 3
    assert report.work_in_flight


def test_pool_of_size_zero_clones_nothing(make_world: HarnessFactory) -> None:
    world = world_with(make_world, pools="  - {name: alpha, size: 0, provider: dummy}")
    report = world.reconcile("alpha")
    assert report.clones_started == [] and not report.work_in_flight


# --- killed passes and passes at once -----------------------------------------------------------


def busy_world(make_world: HarnessFactory) -> tuple[Harness, set[str]]:
    """A pool with work waiting in every step of the next pass: clones to finish and VMs to mark
    ready, VMs to reap, destroys to finish, a discovered VM to complete, an unknown one to
    discover, a running VM deleted by hand, and a deficit to clone. Returns the world and the VMs
    that must still be running once it converges."""
    world = world_with(make_world, pools="  - {name: alpha, size: 4, provider: dummy}", task_limit=6)
    pool = world.pool("alpha")
    fill(world)
    kept = set(world.check_out("alpha", 1, lifetime_hours=5))
    world.check_out("alpha", 2, lifetime_hours=1)
    world.clock.advance(3600)  # two running VMs past their lifetime, the last ready one past ready_ttl
    world.reconcile("alpha")  # three completed, four clones started
    world.clock.advance(100)
    world.reconcile("alpha")  # four ready, three destroys started
    kept |= set(world.check_out("alpha", 2, lifetime_hours=5))
    world.provider.create_by_hand(pool, "stray-two")
    world.reconcile("alpha")  # two clones started, stray-two discovered
    world.clock.advance(100)  # those clones done and booted, the destroys done
    kept |= set(world.check_out("alpha", 1, lifetime_hours=5))  # a deficit for the next pass
    (returned,) = world.check_out("alpha", 1)
    world.store.move(returned, "alpha", "running", "completed", world.clock.now(), reason="returned")
    deleted = sorted(kept)[0]
    world.provider.delete_by_hand(pool, deleted)
    world.provider.create_by_hand(pool, "stray-one")
    return world, kept - {deleted}


def checkpoints_of_one_pass(make_world: HarnessFactory) -> list[str]:
    world, _ = busy_world(make_world)
    steps: list[str] = []
    world.reconcile("alpha", steps.append)
    return steps


def test_scenario_for_kills_reaches_every_step(make_world: HarnessFactory) -> None:
    steps = checkpoints_of_one_pass(make_world)
    # Its clones finish and boot at once: noted done by their moves to ready ("ready"); a clone
    # noted done while its VM boots ("clone_finished"): test_pass_killed_while_a_finished_clone_boots.
    assert {"inventory", "snapshot", "ready", "completed", "dropped", "destroyed",
            "destroy_started", "discovered", "reserved", "clone_asking", "clone_asked", "clone_started",
            "done"} <= set(steps), steps


def test_pass_killed_at_any_step_converges_on_the_next(make_world: HarnessFactory, redis_client) -> None:
    steps = checkpoints_of_one_pass(make_world)
    for kill_at, step in enumerate(steps):
        redis_client.flushall()
        world, running = busy_world(make_world)
        kill, reached = kill_at_step(kill_at)
        with pytest.raises(Killed):
            world.reconcile("alpha", kill)
        assert reached[-1] == step
        where = f"killed at checkpoint {kill_at} ({step})"
        assert_consistent(world, "alpha", pass_completed=False)

        # Later passes (past the grace for a clone reserved but never started) converge.
        world.clock.advance(CLONE_START_GRACE_SECONDS + 1)
        world.settle("alpha")

        assert world.count("alpha", "ready") == 4, where
        assert world.count("alpha", "pending") == 0, where
        assert world.hosts("alpha", "running") == running, where  # no VM in use lost or reaped early
        assert world.store.cloning_count() == 0, where
        assert world.provider_vms("alpha") == world.hosts("alpha", "ready") | running, where
        assert world.state_of("stray-one") == world.state_of("stray-two") == "destroyed", where


def test_pass_killed_while_a_finished_clone_boots(make_world: HarnessFactory) -> None:
    """Clones noted done while their VMs boot (their places under the task limit freed, their
    end recorded) in a write of their own: the pass killed right after it leaves them pending,
    and the next pass makes them ready once booted."""
    world = world_with(make_world, extra=", createvm_min_time: 60")  # every clone 60 s, boots 30 s more
    started = set(world.reconcile("alpha").clones_started)
    world.clock.advance(70)  # the clones done, their VMs booting
    kill, reached = kill_at_step(2)

    with pytest.raises(Killed):
        world.reconcile("alpha", kill)

    assert reached == ["inventory", "snapshot", "clone_finished"]
    assert world.hosts("alpha", "pending") == started and world.store.cloning_count() == 0
    assert all(world.store.get_vm(host).clone_end == world.clock.now() for host in started)
    assert_consistent(world, "alpha", pass_completed=False)
    world.clock.advance(30)
    assert sorted(world.reconcile("alpha").became_ready) == sorted(started)


def test_two_passes_at_once_do_not_over_clone(world: Harness) -> None:
    nested: list[object] = []

    def run_another_pass_mid_way(step: str) -> None:
        if step in ("snapshot", "reserved") and len(nested) < 2:
            nested.append(world.reconcile("alpha"))
            assert_consistent(world, "alpha")

    world.reconcile("alpha", run_another_pass_mid_way)

    assert world.count("alpha", "pending") == 3
    assert len(world.provider_vms("alpha")) == 3
    assert world.store.cloning_count() == 3


def test_many_passes_in_threads_do_not_over_clone(make_world: HarnessFactory) -> None:
    world = world_with(make_world, pools="  - {name: alpha, size: 5, provider: dummy}")
    for _ in range(6):
        run_at_once(lambda: world.reconcile("alpha"), threads=8)
        assert_consistent(world, "alpha")
        assert len(world.provider_vms("alpha")) <= 5
        world.clock.advance(20)
    world.settle("alpha")
    assert world.count("alpha", "ready") == 5
    assert world.provider_vms("alpha") == world.hosts("alpha", "ready")


def test_vm_destroyed_by_a_concurrent_pass_is_not_rediscovered(world: Harness) -> None:
    fill(world)
    (host,) = world.check_out("alpha")
    world.store.move(host, "alpha", "running", "completed", world.clock.now(), reason="returned")
    world.reconcile("alpha")  # destroy started
    world.clock.advance(20)
    other: list[object] = []

    def another_pass_finishes_the_destroy(step: str) -> None:
        if step == "inventory" and not other:
            other.append(world.reconcile("alpha"))

    # This pass's inventory still lists the VM; the other pass destroys it before the snapshot.
    report = world.reconcile("alpha", another_pass_finishes_the_destroy)

    assert other[0].destroyed == [host]
    assert report.discovered == []
    record = world.store.get_vm(host)
    assert record.state == "destroyed" and record.reason == "returned"


def test_destroyed_vm_that_comes_back_is_discovered_again(world: Harness) -> None:
    fill(world)
    (host,) = world.check_out("alpha")
    world.store.move(host, "alpha", "running", "completed", world.clock.now(), reason="returned")
    world.settle("alpha")
    assert world.state_of(host) == "destroyed"

    world.provider.create_by_hand(world.pool("alpha"), host)  # restored from a backup, say
    world.clock.advance(1)
    report = world.reconcile("alpha")

    assert report.discovered == [host]
    world.settle("alpha")
    assert world.state_of(host) == "destroyed" and host not in world.provider_vms("alpha")
