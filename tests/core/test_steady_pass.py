"""A steady pass reads no VM record (issue 14 item 4): only the state sets with their scores.

Reading each ready VM's record cost 178 ms a pass at 2,000 VMs; the records of ready VMs are
read only when a step acts on one (a VM leaving service, a template change or reset).
"""

from __future__ import annotations

from typing import Collection, Sequence

import pytest
import redis

from chalicelib.config import PoolConfig
from chalicelib.providers.base import VMInfo
from chalicelib.store.pool_overrides import PoolOverrides
from chalicelib.store.store import UNCONFIRMED_SECONDS
from tests.harness import Harness, HarnessFactory, Killed

CONFIG = """\
config: {{task_limit: 100, ready_ttl: 60, prefix: "ci-"}}
providers:
  dummy: {{provider_class: dummy, seed: 3, createvm_max_time: 0, boot_time: 0}}
pools:
  - {{name: alpha, size: {size}, provider: dummy, template: {template}}}
"""


def record_reads(client: redis.Redis) -> int:
    stats = client.info("commandstats")
    return sum(stats.get(f"cmdstat_{name}", {}).get("calls", 0) for name in ("hgetall", "hget", "hmget"))


def steady_reads(world: Harness) -> int:
    settled(world)
    world.clock.advance(1)
    world.client.config_resetstat()
    report = world.reconcile("alpha")
    assert not report.work_in_flight
    return record_reads(world.client)


def test_a_steady_pass_reads_no_vm_record_whatever_the_pools_size(make_world: HarnessFactory) -> None:
    small = steady_reads(make_world(CONFIG.format(size=5, template="t1")))
    world = make_world(CONFIG.format(size=80, template="t1"))
    large = steady_reads(world)
    assert large == small  # the provider's inventory, the pool's runtime settings: none per VM

    # A reset is still seen: every ready VM is checked once, and drained.
    world.clock.advance(1)
    PoolOverrides(world.store).reset("alpha", world.clock.now())
    report = world.reconcile("alpha")
    assert len(report.completed) == 80
    assert set(report.completed.values()) == {"pool reset"}


# --- Issue 14 item 4: a steady pass looks only at the VMs that may need something -----------------

BOUNDED = """\
config: {{task_limit: 100, ready_ttl: {ready_ttl}, vm_lifetime: 2, vm_checktime: {checktime}, prefix: "ci-"}}
providers:
  dummy: {{provider_class: dummy, seed: 3, createvm_max_time: 0, boot_time: 0}}
pools:
  - {{name: alpha, size: {size}, provider: dummy}}
"""


def bounded_world(make_world: HarnessFactory, size: int = 20, checktime: int = 1, ready_ttl: int = 600) -> Harness:
    world = make_world(BOUNDED.format(size=size, checktime=checktime, ready_ttl=ready_ttl))
    settled(world)
    return world


def settled(world: Harness) -> None:
    """Fill the pool, then one pass more: the pass that filled it cloned its VMs (instant
    clones: made ready in that pass, manager/rounds.py) after it read the provider's change
    token, so the next pass sees them as changed once."""
    world.settle("alpha", seconds=1)
    world.clock.advance(1)
    world.reconcile("alpha")


def whole_inventories(world: Harness) -> list[int]:
    """Counts the pass's whole-folder listings (``list_vms``) into the list returned."""
    listings: list[int] = []
    list_vms = world.provider.list_vms

    def counted(pool: PoolConfig) -> Sequence[VMInfo]:
        listings.append(1)
        return list_vms(pool)

    world.provider.list_vms = counted  # type: ignore[method-assign]
    return listings


def commands(client: redis.Redis) -> dict[str, int]:
    return {name: stats["calls"] for name, stats in client.info("commandstats").items()}


def steady_work(world: Harness) -> tuple[dict[str, int], list[str]]:
    """The Redis commands of one steady pass (Lua's own included) and the VMs the provider was
    asked about."""
    asked: list[str] = []
    find_vms = world.provider.find_vms

    def recorded(pool: PoolConfig, names: Collection[str]) -> Sequence[VMInfo]:
        asked.extend(names)
        return find_vms(pool, names)

    world.provider.find_vms = recorded  # type: ignore[method-assign]
    world.clock.advance(1)
    world.client.config_resetstat()
    report = world.reconcile("alpha")
    assert not report.work_in_flight
    return commands(world.client), asked


def test_a_steady_pass_does_the_same_work_at_any_pool_size(make_world: HarnessFactory) -> None:
    small = bounded_world(make_world, size=5)
    small_listings = whole_inventories(small)
    small_work, small_asked = steady_work(small)
    large = bounded_world(make_world, size=300)
    large_listings = whole_inventories(large)
    large_work, large_asked = steady_work(large)

    assert large_work == small_work  # the same commands, each as many times
    assert small_asked == large_asked == []  # the provider is asked about no VM
    assert small_listings == large_listings == []  # nor lists its folder


def test_a_steady_pass_writes_nothing_but_its_change_mark(make_world: HarnessFactory) -> None:
    """Nothing changed, nothing written: the provider's inventory token it compared with is the
    one the pool's mark already holds, and with nothing pending it does not look for on-demand
    VMs being built (one ZRANGE less: its snapshot's pending, completed and discovered, the VM
    tasks, the open requests)."""
    work, _ = steady_work(bounded_world(make_world, size=5))
    writes = {"set", "del", "hset", "hdel", "zadd", "zrem", "expire", "incr", "incrby", "lpush", "ltrim"}
    assert {name.removeprefix("cmdstat_") for name in work} & writes == {"incrby"}  # Store.begin_pass
    assert work["cmdstat_zrange"] == 5


def test_a_vm_deleted_in_the_provider_is_dropped_by_the_next_pass(make_world: HarnessFactory) -> None:
    world = bounded_world(make_world)
    listings = whole_inventories(world)
    running = world.check_out("alpha")[0]
    world.clock.advance(1)
    world.reconcile("alpha")
    ready = sorted(world.hosts("alpha", "ready"))[0]
    for host in (ready, running):
        world.provider.delete_by_hand(world.pool("alpha"), host)

    world.clock.advance(1)
    report = world.reconcile("alpha")

    assert set(report.dropped) == {ready, running}
    assert world.state_of(ready) == world.state_of(running) == "destroyed"
    assert listings == []  # told by the provider's change log, not by listing the folder


def test_a_vm_vanished_unreported_is_dropped_within_vm_checktime(make_world: HarnessFactory) -> None:
    """The bound of the trade-off: a VM gone without the provider reporting it (here removed
    behind the dummy's change log) is seen at the next whole comparison, vm_checktime later."""
    world = bounded_world(make_world, checktime=1)
    running = world.check_out("alpha")[0]
    ready = sorted(world.hosts("alpha", "ready"))[0]  # not the clone replacing ``running``: it is in the change log
    world.clock.advance(1)
    world.reconcile("alpha")
    folder = world.provider._folder_key(world.pool("alpha"))
    world.client.hdel(folder, ready, running)

    for _ in range(5):  # light passes, 10 s apart: not seen yet
        world.clock.advance(10)
        world.reconcile("alpha")
    assert world.state_of(ready) == "ready" and world.state_of(running) == "running"

    world.clock.advance(10)  # 60 s after the last whole comparison
    report = world.reconcile("alpha")
    assert set(report.dropped) == {ready, running}


def test_a_vm_in_use_is_never_dropped_by_passes_that_look_at_part_of_the_pool(make_world: HarnessFactory) -> None:
    world = bounded_world(make_world, checktime=1)
    in_use = set(world.check_out("alpha", count=5))
    for minute in range(6):
        # Churn around them: VMs checked out and returned, a VM deleted by hand, a clone.
        taken = world.check_out("alpha", count=2)
        world.clock.advance(5)
        world.reconcile("alpha")
        for host in taken:
            world.store.return_vm(host, world.clock.now(), "returned")
        world.provider.delete_by_hand(world.pool("alpha"), sorted(world.hosts("alpha", "ready"))[0])
        for _ in range(5):
            world.clock.advance(11)
            world.reconcile("alpha")
        assert world.hosts("alpha", "running") == in_use, f"minute {minute}"


def test_light_passes_still_expire_ready_vms_reap_lifetimes_and_return_unconfirmed_checkouts(
        make_world: HarnessFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """With whole comparisons far apart (vm_checktime 10,000 minutes), every pass is partial:
    ready_ttl, lifetimes and checkout confirmations are still honoured on time."""
    world = bounded_world(make_world, size=10, checktime=10_000, ready_ttl=30)
    listings = whole_inventories(world)
    reaped = world.check_out("alpha", lifetime_hours=1)[0]
    monkeypatch.setattr(world.store, "_confirm", lambda *args: None)  # the checkout's answer was lost
    unconfirmed = world.check_out("alpha")[0]
    monkeypatch.undo()

    world.clock.advance(UNCONFIRMED_SECONDS + 1)
    assert world.reconcile("alpha").returned == [unconfirmed]

    world.clock.advance(30 * 60 - UNCONFIRMED_SECONDS - 2)  # the first ready VMs: not quite 30 min
    assert world.reconcile("alpha").completed == {}
    world.clock.advance(2)
    report = world.reconcile("alpha")
    expired = {host for host, why in report.completed.items() if why.startswith("ready for longer")}
    # The 9 VMs ready since the start (the one returned keeps its ready time), not the clone
    # that replaced the one still running.
    assert len(expired) == 9 and unconfirmed in expired

    world.settle("alpha", seconds=60)
    world.clock.advance(3600 - world.clock.now() % 3600 + 60)
    world.reconcile("alpha")
    assert world.state_of(reaped) in ("completed", "destroyed")
    assert listings == []


def test_a_shortened_lifetime_ends_the_vm_on_time_between_whole_comparisons(make_world: HarnessFactory) -> None:
    """A user shortening a VM's lifetime (PUT /vm) gets it reaped at the new end, not at the old
    one, though every pass looks only at the VMs due (vm_checktime 10,000 minutes)."""
    world = bounded_world(make_world, size=5, checktime=10_000)
    host = world.checkout("alpha")  # vm_lifetime 2 hours
    world.clock.advance(1)
    world.reconcile("alpha")  # confirms the checkout; the next look is due at the lifetime's end
    assert world.put(f"/api/v3/vm/{host}", {"lifetime": 1}).status == 200

    world.clock.advance(3600 - 2)
    world.reconcile("alpha")
    assert world.state_of(host) == "running"
    world.clock.advance(2)
    world.reconcile("alpha")
    assert world.state_of(host) in ("completed", "destroyed")


def test_vms_returned_before_their_lifetime_ends_leave_nothing_behind_for_the_passes(
        make_world: HarnessFactory) -> None:
    """A pass schedules its next look at a running VM for the VM's lifetime's end (running_due).
    A caller checking out, extending the lifetime (up to ten years with no
    max_lifetime_upper_limit) and returning at once left that entry for the whole lifetime,
    after the VM's record had expired: every checkout one more entry, never expiring (the soak,
    tests/local/test_soak.py, saw the set grow 40 entries a minute with nothing running)."""
    world = bounded_world(make_world, size=5)
    running_due = world.store.keys.running_due("alpha")
    returned: list[str] = []
    for lifetime in (2, 1000, 87_000):
        host = world.checkout("alpha")
        world.clock.advance(1)
        world.reconcile("alpha")  # confirms the checkout; its next look: the lifetime's end
        assert world.put(f"/api/v3/vm/{host}", {"lifetime": lifetime}).status == 200
        world.clock.advance(1)
        world.reconcile("alpha")
        assert world.client.zscore(running_due, host) is not None
        assert world.delete(f"/api/v3/vm/{host}").status == 200
        returned.append(host)
    kept = world.checkout("alpha")
    world.settle("alpha", seconds=5)

    assert all(world.state_of(host) == "destroyed" for host in returned)
    assert set(world.client.zrange(running_due, 0, -1)) == {kept}


def test_a_running_vm_deleted_in_the_provider_leaves_running_due_with_its_drop(make_world: HarnessFactory) -> None:
    """A VM dropped from running because the provider no longer has it (deleted behind our
    back) kept its next look in running_due until due: its lifetime's end, ten years for a
    lifetime a caller extended so, long after its record expired. Its entry goes in the step
    that drops it, so a pass killed right after the drop leaves nothing behind either."""
    world = bounded_world(make_world)
    running_due = world.store.keys.running_due("alpha")
    host = world.checkout("alpha")
    world.clock.advance(1)
    world.reconcile("alpha")  # confirms the checkout; its next look: the lifetime's end
    assert world.put(f"/api/v3/vm/{host}", {"lifetime": 87_000}).status == 200
    world.clock.advance(1)
    world.reconcile("alpha")
    assert world.client.zscore(running_due, host) is not None
    world.provider.delete_by_hand(world.pool("alpha"), host)

    def killed_once_dropped(step: str) -> None:
        if step == "dropped":
            raise Killed(step)

    world.clock.advance(1)
    with pytest.raises(Killed):
        world.reconcile("alpha", killed_once_dropped)

    assert world.state_of(host) == "destroyed"
    assert world.client.zscore(running_due, host) is None


@pytest.mark.parametrize("returned_by", ["pass", "api"])
def test_an_unconfirmed_checkout_given_back_leaves_running_due_with_its_return(
        make_world: HarnessFactory, monkeypatch: pytest.MonkeyPatch, returned_by: str) -> None:
    """A checkout whose answer was lost goes back to ready (lua/release.lua): by a pass past its
    confirmation deadline, or by the API that could not confirm it. Before, its running_due entry
    (the deadline, set by the checkout) stayed: the pass's end-of-pass sweep forgets completed
    VMs only, so a later pass found it due and dropped it. It goes in the step that returns it."""
    world = bounded_world(make_world)
    running_due = world.store.keys.running_due("alpha")
    monkeypatch.setattr(world.store, "_confirm", lambda *args: None)  # the checkout's answer was lost
    (host,) = world.check_out("alpha")
    monkeypatch.undo()
    assert world.client.zscore(running_due, host) is not None
    checkout_id = world.store.get_vm(host).raw["checkout_id"]

    if returned_by == "pass":
        def killed_once_returned(step: str) -> None:
            if step == "returned":
                raise Killed(step)

        world.clock.advance(UNCONFIRMED_SECONDS + 1)
        with pytest.raises(Killed):
            world.reconcile("alpha", killed_once_returned)
    else:
        assert world.store.release_checkout(checkout_id, [host], world.clock.now()) == [host]

    assert world.state_of(host) == "ready"
    assert world.client.zscore(running_due, host) is None


def test_a_returned_vm_leaves_running_due_with_its_return(make_world: HarnessFactory) -> None:
    """DELETE /vm names the VM's pool only through its record (one round trip, no read first):
    its running_due entry still goes in that step, before any pass sees the VM completed."""
    world = bounded_world(make_world)
    running_due = world.store.keys.running_due("alpha")
    host = world.checkout("alpha")
    world.clock.advance(1)
    world.reconcile("alpha")
    assert world.client.zscore(running_due, host) is not None

    assert world.delete(f"/api/v3/vm/{host}").status == 200

    assert world.state_of(host) == "completed"
    assert world.client.zscore(running_due, host) is None


def test_a_stale_pass_does_not_bring_back_the_look_of_a_vm_returned_meanwhile(make_world: HarnessFactory) -> None:
    """The pass read the VM running; its user returned it (its entry left running_due with the
    return) before the pass scheduled its next look. Before, the pass wrote the entry again,
    until the next pass's end-of-pass sweep forgot it (or, without a next pass, until due: the
    lifetime's end, ten years for a lifetime a caller extended so). The look is written only
    while the VM is still running for the checkout the pass read (lua/schedule_running.lua)."""
    world = bounded_world(make_world)
    running_due = world.store.keys.running_due("alpha")
    host = world.checkout("alpha")
    world.clock.advance(1)
    world.reconcile("alpha")
    assert world.put(f"/api/v3/vm/{host}", {"lifetime": 87_000}).status == 200
    world.client.zadd(running_due, {host: world.clock.now()})  # due: the next pass reads it

    def returned_after_the_read(step: str) -> None:
        if step == "snapshot":
            assert world.delete(f"/api/v3/vm/{host}").status == 200

    world.clock.advance(1)
    world.reconcile("alpha", returned_after_the_read)
    assert world.client.zscore(running_due, host) is None, "the stale pass wrote the look again"
    world.settle("alpha", seconds=5)
    assert world.state_of(host) == "destroyed"
    assert world.client.zscore(running_due, host) is None


def test_a_look_left_from_before_is_forgotten_once_the_vm_is_completed(make_world: HarnessFactory) -> None:
    """The end-of-pass sweep stays for entries no script took (written by an older release, or
    by hand): the pass that sees the VM completed forgets its look."""
    world = bounded_world(make_world)
    running_due = world.store.keys.running_due("alpha")
    host = world.checkout("alpha")
    assert world.delete(f"/api/v3/vm/{host}").status == 200
    world.client.zadd(running_due, {host: world.clock.now() + 10 * 365 * 86400})

    world.clock.advance(1)
    world.reconcile("alpha")

    assert world.client.zscore(running_due, host) is None
