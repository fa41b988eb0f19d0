"""Passes killed at any step, or run many at once, while on-demand requests, disk tasks and a
pool change are in flight: the next passes converge, and nothing is built twice or leaked."""

from __future__ import annotations

import pytest

from chalicelib.manager.pending import CLONE_START_GRACE_SECONDS
from chalicelib.store.ondemand import OnDemandStore
from tests.harness import Killed, kill_at_step, run_at_once


def busy(make_stack):
    """debian-12 (size 2) full, one VM checked out with a disk queued, the size lowered to 1 and
    an on-demand request for 3 VMs open: every new step of the pass has work."""
    stack = make_stack(size=2)
    stack.run_passes("debian-12")
    status, body = stack.answer("POST", "/api/v3/vm", {"debian-12": 1})
    checked_out = body["debian-12"]["hostname"].split(".")[0]
    stack.reconcile("debian-12")  # refill the one checked out...
    stack.clock.advance(31)
    stack.reconcile("debian-12")  # ...which is ready now: 2 ready
    assert stack.answer("POST", f"/api/v3/vm/{checked_out}/disk/8")[0] == 202
    assert stack.answer("POST", "/api/v3/config/poolsize", {"debian-12": 1})[0] == 201
    status, body = stack.answer("POST", "/api/v3/ondemandvm", {"debian": 3})
    assert status == 201
    return stack, checked_out, body["request_id"]


def assert_converged(stack, checked_out: str, request_id: str, where: str) -> None:
    status, body = stack.answer("GET", f"/api/v3/ondemandvm/{request_id}")
    assert status == 200 and body["ready"] is True, (where, body)
    hosts = {h.split(".")[0] for h in body["debian"]["hostname"]}
    assert len(hosts) == 3, where
    store = stack.services.store
    running = set(store.hostnames("debian-12", "running"))
    ready = set(store.hostnames("debian-12", "ready"))
    assert running == hosts | {checked_out}, where
    assert len(ready) == 1 and store.hostnames("debian-12", "pending") == [], where
    assert store.cloning_count() == 0, where
    provider = stack.services.provider("dummy")
    assert {vm.name for vm in provider.list_vms(stack.services.pool("debian-12"))} == ready | running, where
    record = store.get_vm(checked_out)
    # The disk is added, unless the pass was killed between taking the task and recording its
    # provider ref: then it fails visibly rather than risk running twice.
    assert record.disks == ("+8gb",) or "never started" in record.raw.get("task_errors", ""), where


def steps_of_one_pass(make_stack) -> list[str]:
    stack, _, _ = busy(make_stack)
    steps: list[str] = []
    stack.reconcile("debian-12", steps.append)
    return steps


def test_scenario_reaches_every_new_step(make_stack):
    steps = steps_of_one_pass(make_stack)
    assert {"vm_task", "vm_task_started", "completed", "ondemand_reserved", "clone_started"} <= set(steps), steps


def test_pass_killed_at_any_step_converges(make_stack, redis_client):
    steps = steps_of_one_pass(make_stack)
    for kill_at, step in enumerate(steps):
        redis_client.flushall()
        stack, checked_out, request_id = busy(make_stack)
        kill, _ = kill_at_step(kill_at)
        with pytest.raises(Killed):
            stack.reconcile("debian-12", kill)
        stack.clock.advance(CLONE_START_GRACE_SECONDS + 1)
        stack.run_passes("debian-12", passes=4)
        assert_converged(stack, checked_out, request_id, f"killed at checkpoint {kill_at} ({step})")


def test_many_passes_at_once_build_a_request_once(make_stack):
    stack, checked_out, request_id = busy(make_stack)
    for _ in range(4):
        run_at_once(lambda: stack.reconcile("debian-12"), threads=6)
        assert len(OnDemandStore(stack.services.store).get(request_id).vms) == 3
        stack.clock.advance(31)
    stack.run_passes("debian-12")
    assert_converged(stack, checked_out, request_id, "concurrent passes")


@pytest.mark.parametrize("first", ["debian-12", "win-2022", "both at once"])
def test_a_request_expiring_as_its_last_vms_boot_is_ready_with_all_or_failed_with_none(make_stack, first):
    """Its VMs in two pools booted, the request's ttl passed before either pool's pass handed them
    over: whichever pass comes first, or both at once, the request ends ready with every VM
    running for it, or failed with every VM destroyed; never part of each. (One pass first: it
    hands its VM over, then finds the request expired, and fails it; both at once: each hands its
    VMs over before either looks at the time, and it is ready.)"""
    stack = make_stack(size=0)
    request_id = stack.answer("POST", "/api/v3/ondemandvm", {"debian": 1, "win-2022": 2})[1]["request_id"]
    stack.reconcile("debian-12")
    stack.reconcile("win-2022")
    stack.clock.advance(5 * 60 + 1)  # booted (30 s) and past ondemand_request_ttl (5 minutes)
    if first == "both at once":
        pools = iter(["debian-12", "win-2022"] * 3)
        run_at_once(lambda: stack.reconcile(next(pools)), threads=6)
    else:
        stack.reconcile(first)
    stack.run_passes(passes=2)
    status, body = stack.answer("GET", f"/api/v3/ondemandvm/{request_id}")
    assert status == 200
    vms = OnDemandStore(stack.services.store).get(request_id).vms
    states = {vm.name: stack.state_of(vm.name) for vm in vms}
    if body["ready"]:
        hosts = {host.split(".")[0] for name in ("debian", "win-2022") for host in body[name]["hostname"]}
        assert len(hosts) == 3 and {states[host] for host in hosts} == {"running"}, (first, states)
    else:
        assert body["message"].startswith("The request failed"), body
        assert set(states.values()) == {"destroyed"}, (first, states)
    for pool in ("debian-12", "win-2022"):
        extra = stack.provider_vms(pool) - stack.hosts(pool, "running") - stack.hosts(pool, "ready")
        assert extra == set(), [(h, stack.services.store.get_vm(h)) for h in extra]
