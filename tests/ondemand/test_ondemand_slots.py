"""On-demand clone slots as the provider sees them: ``ondemand_clone_limit`` bounds the clones
vCenter runs for requests, whatever callers do to their requests meanwhile (create and delete in a
loop, delete between a pass's reservation and its clone call), and passes killed at any step or
run at once neither leak a slot nor free one twice. Also the quotas under a burst of distinct
callers."""

from __future__ import annotations

import threading
from typing import Any, Callable

import pytest
import redis

from chalicelib.manager.pending import CLONE_ASKED, CLONE_START_GRACE_SECONDS
from chalicelib.providers.base import TaskState
from chalicelib.store.ondemand import OnDemandStore
from chalicelib.store.records import MARKS_ASKED
from tests.harness import Killed, assert_consistent, kill_at_step, run_at_once

CLONE_SECONDS = 120
SLOW_CLONES = f"""
  - name: slowclone
    template: templates/slowclone
    size: 0
    provider: dummy
    createvm_max_time: {CLONE_SECONDS}
    createvm_min_time: {CLONE_SECONDS}
"""
AUTH = "\n:auth:\n  provider: dummy\n"
LIMIT = 3  # ondemand_clone_limit of tests/ondemand/conftest.py


class CloneTasks:
    """The clone tasks the (dummy) provider holds, as it sees them: every one started, and how
    many still run. ``names``: the VMs the provider was asked to clone."""

    def __init__(self, stack: Any, monkeypatch: pytest.MonkeyPatch) -> None:
        self.provider = stack.provider
        self.pattern = stack.services.store.keys.dummy_task(self.provider.name, "clone-*")
        self.names: list[str] = []
        original = self.provider.clone_vms

        def recording(pool: Any, hostnames: Any, *args: Any, **kwargs: Any) -> Any:
            self.names.extend(hostnames)
            return original(pool, hostnames, *args, **kwargs)

        monkeypatch.setattr(self.provider, "clone_vms", recording)

    @property
    def started(self) -> list[str]:
        return [key.rsplit(":", 1)[1] for key in self.provider.client.scan_iter(match=self.pattern)]

    def in_flight(self) -> int:
        statuses = self.provider.task_statuses(self.started)
        return sum(1 for status in statuses.values() if status.state is TaskState.RUNNING)


def slot_stack(make_stack: Callable[..., Any], monkeypatch: pytest.MonkeyPatch) -> tuple[Any, CloneTasks]:
    stack = make_stack(size=0, extra=SLOW_CLONES)
    return stack, CloneTasks(stack, monkeypatch)


def create(stack: Any, count: int = LIMIT) -> str:
    status, body = stack.answer("POST", "/api/v3/ondemandvm", {"slowclone": count})
    assert status == 201, body
    return str(body["request_id"])


def assert_no_slot_left(stack: Any, clones: CloneTasks) -> None:
    """Everything settled: no clone counted, no VM left in the provider, every request VM
    destroyed; and a new request gets the whole limit at once."""
    store = stack.services.store
    assert store.cloning_count() == 0
    assert stack.provider_vms("slowclone") == set()
    assert {stack.state_of(name) for name in clones.names} <= {"destroyed"}
    request_id = create(stack)
    report = stack.reconcile("slowclone")
    assert len(report.clones_started) == LIMIT, report
    stack.answer("DELETE", f"/api/v3/ondemandvm/{request_id}")


def test_a_create_delete_loop_never_runs_more_clones_than_the_limit(make_stack, monkeypatch):
    # Before, DELETE freed the request's slots at once while vCenter's clones still ran: each
    # create/delete round started LIMIT more, 30 clones in flight after ten rounds.
    stack, clones = slot_stack(make_stack, monkeypatch)
    most = 0
    for _ in range(10):
        request_id = create(stack)
        stack.reconcile("slowclone")
        most = max(most, clones.in_flight())
        assert stack.answer("DELETE", f"/api/v3/ondemandvm/{request_id}") == (200, {"ok": True})
        stack.reconcile("slowclone")
        most = max(most, clones.in_flight())
        stack.clock.advance(5)
    assert most == LIMIT
    assert len(clones.started) == LIMIT  # the later requests waited for the slots: never served
    stack.settle("slowclone")
    assert_no_slot_left(stack, clones)


def test_a_request_waiting_for_slots_gets_them_once_the_deleted_requests_clones_end(make_stack, monkeypatch):
    stack, clones = slot_stack(make_stack, monkeypatch)
    first = create(stack)
    stack.reconcile("slowclone")
    stack.answer("DELETE", f"/api/v3/ondemandvm/{first}")
    second = create(stack, 2)
    stack.reconcile("slowclone")
    assert len(clones.started) == LIMIT  # the deleted request's clones still run: no slot yet
    # Their VMs wait in completed for their clones, not destroyed under them.
    first_vms = [vm.name for vm in OnDemandStore(stack.services.store).get(first).vms]
    assert {stack.state_of(name) for name in first_vms} == {"completed"}
    stack.clock.advance(CLONE_SECONDS + 1)
    report = stack.reconcile("slowclone")  # the clones ended: destroyed, and their slots reused
    assert set(report.clones_started) == set(clones.names[LIMIT:]) and len(report.clones_started) == 2
    stack.settle("slowclone")
    status, body = stack.answer("GET", f"/api/v3/ondemandvm/{second}")
    assert status == 200 and body["ready"] is True
    assert {stack.state_of(name) for name in first_vms} == {"destroyed"}


def test_clones_reserved_for_a_request_deleted_before_they_started_are_never_started(make_stack, monkeypatch):
    # Before, the pass that had reserved them started them anyway, then destroyed them.
    stack, clones = slot_stack(make_stack, monkeypatch)
    request_id = create(stack)

    def delete_meanwhile(step: str) -> None:
        if step == "ondemand_reserved":
            assert stack.answer("DELETE", f"/api/v3/ondemandvm/{request_id}") == (200, {"ok": True})

    report = stack.reconcile("slowclone", delete_meanwhile)
    assert clones.started == [] and clones.names == [] and report.clones_started == []
    assert stack.provider_vms("slowclone") == set()
    vms = OnDemandStore(stack.services.store).get(request_id).vms
    assert len(vms) == LIMIT and {stack.state_of(vm.name) for vm in vms} == {"destroyed"}
    assert_consistent(stack, "slowclone")
    assert_no_slot_left(stack, clones)


def deleted_after_a_pass_claimed_its_clones_and_died(make_stack: Callable[..., Any], monkeypatch: pytest.MonkeyPatch,
                                                    older_reserver: bool = False) -> tuple[Any, CloneTasks, str, str]:
    """A pass killed between claiming a request's clones and asking the provider for them (none
    marked asked), then the request deleted and a second one created, waiting for the slots.
    ``older_reserver``: the reservations as a version that cloned without the asked mark wrote
    them (no ``MARKS_ASKED``). Returns the stack, its clones, the deleted request and the waiting one."""
    stack, clones = slot_stack(make_stack, monkeypatch)
    request_id = create(stack)

    def die_after_claim(step: str) -> None:
        if step == "ondemand_claimed":
            raise Killed(step)

    with pytest.raises(Killed):
        stack.reconcile("slowclone", die_after_claim)
    assert clones.started == []
    reserved = [vm.name for vm in OnDemandStore(stack.services.store).get(request_id).vms]
    assert len(reserved) == LIMIT and not any(stack.services.store.get_vm(name).raw.get(CLONE_ASKED)
                                              for name in reserved)
    if older_reserver:
        for name in reserved:
            stack.services.store.client.hdel(stack.services.store.keys.vm(name), MARKS_ASKED)
    stack.answer("DELETE", f"/api/v3/ondemandvm/{request_id}")
    return stack, clones, request_id, create(stack)


def test_a_request_deleted_after_a_pass_claimed_its_clones_and_died_gives_their_slots_back_at_once(make_stack,
                                                                                                   monkeypatch):
    """Claimed, never asked of the provider: once the request ended they can never be cloned
    (the asked mark is refused off pending), so the next pass frees their slots and destroys
    them; the waiting request's clones start in that same pass. Before, the slots stayed taken
    CLONE_START_GRACE_SECONDS (the waiting request not served for two minutes)."""
    stack, clones, request_id, waiting = deleted_after_a_pass_claimed_its_clones_and_died(make_stack, monkeypatch)
    report = stack.reconcile("slowclone")
    assert len(report.clones_started) == LIMIT  # released, then reused
    deleted = {vm.name for vm in OnDemandStore(stack.services.store).get(request_id).vms}
    assert {stack.state_of(name) for name in deleted} == {"destroyed"}
    assert sorted(clones.names) == sorted(report.clones_started) and not deleted & set(clones.names)
    stack.answer("DELETE", f"/api/v3/ondemandvm/{waiting}")
    stack.settle("slowclone")
    assert_no_slot_left(stack, clones)


def test_a_request_deleted_after_an_older_versions_pass_claimed_its_clones_holds_them_for_the_start_grace(
        make_stack, monkeypatch):
    """The same, reserved by a version that cloned without the asked mark (a deploy under way):
    its clone calls may have reached vCenter, so the slots stay taken for the start grace (as
    the pending step waits for a clone whose task was never recorded), then are released."""
    stack, clones, request_id, waiting = deleted_after_a_pass_claimed_its_clones_and_died(
        make_stack, monkeypatch, older_reserver=True)
    stack.clock.advance(CLONE_START_GRACE_SECONDS - 10)
    assert stack.reconcile("slowclone").clones_started == []
    assert stack.services.store.cloning_count() == LIMIT
    stack.clock.advance(11)
    assert len(stack.reconcile("slowclone").clones_started) == LIMIT  # released, then reused
    deleted = OnDemandStore(stack.services.store).get(request_id).vms
    assert {stack.state_of(vm.name) for vm in deleted} == {"destroyed"}
    stack.answer("DELETE", f"/api/v3/ondemandvm/{waiting}")
    stack.settle("slowclone")
    assert_no_slot_left(stack, clones)


def held_clones(make_stack: Callable[..., Any], monkeypatch: pytest.MonkeyPatch) -> tuple[Any, CloneTasks]:
    """A deleted request whose LIMIT clones still run, a second request waiting for the slots,
    and the clones just ended: the next pass releases the slots and destroys the VMs."""
    stack, clones = slot_stack(make_stack, monkeypatch)
    first = create(stack)
    stack.reconcile("slowclone")
    stack.answer("DELETE", f"/api/v3/ondemandvm/{first}")
    create(stack, 1)
    stack.reconcile("slowclone")
    stack.clock.advance(CLONE_SECONDS + 1)
    return stack, clones


def test_a_pass_killed_at_any_step_while_releasing_held_slots_converges(make_stack, monkeypatch, redis_client):
    stack, _ = held_clones(make_stack, monkeypatch)
    steps: list[str] = []
    stack.reconcile("slowclone", steps.append)
    assert "clone_released" in steps, steps
    for kill_at, step in enumerate(steps):
        redis_client.flushall()
        monkeypatch.undo()
        stack, clones = held_clones(make_stack, monkeypatch)
        kill, _ = kill_at_step(kill_at)
        with pytest.raises(Killed):
            stack.reconcile("slowclone", kill)
        assert clones.in_flight() <= LIMIT, step
        stack.settle("slowclone")
        assert clones.in_flight() == 0 and len(clones.started) == LIMIT + 1, step
        assert stack.services.store.cloning_count() == 0, step
        assert stack.provider_vms("slowclone") - stack.hosts("slowclone", "running") == set(), step


def test_passes_at_once_hold_and_release_each_slot_once(make_stack, monkeypatch):
    stack, clones = slot_stack(make_stack, monkeypatch)
    for _ in range(4):
        request_id = create(stack)
        run_at_once(lambda: stack.reconcile("slowclone"), threads=4)
        assert clones.in_flight() <= LIMIT
        stack.answer("DELETE", f"/api/v3/ondemandvm/{request_id}")
        stack.clock.advance(CLONE_SECONDS / 2)
        run_at_once(lambda: stack.reconcile("slowclone"), threads=4)
        assert clones.in_flight() <= LIMIT
    stack.settle("slowclone")
    store = stack.services.store
    assert store.cloning_count() == 0 and stack.provider_vms("slowclone") == set()
    assert_no_slot_left(stack, clones)


# --- quotas under a burst of distinct callers -------------------------------------------------------


def burst(stack: Any, tokens: list[str], body: dict[str, int]) -> list[int]:
    """Each token's POST /ondemandvm at once, on its own thread; the statuses answered."""
    answers: list[int] = []
    lock = threading.Lock()

    def send(token: str) -> None:
        status = stack.answer("POST", "/api/v3/ondemandvm", body, headers={"X-AUTH-TOKEN": token})[0]
        with lock:
            answers.append(status)

    barrier = threading.Barrier(len(tokens))
    threads = [threading.Thread(target=lambda token=token: (barrier.wait(), send(token))) for token in tokens]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sorted(answers)


def test_the_service_limit_on_open_requests_holds_under_a_burst_of_users(make_stack):
    stack = make_stack(size=0, max_ondemand_requests=4, extra=AUTH)
    tokens = [stack.new_token(f"burst{n}", "password") for n in range(12)]
    assert burst(stack, tokens, {"debian": 1}) == [201] * 4 + [503] * 8


def test_one_users_limit_on_open_requests_holds_under_a_burst_of_its_tokens(make_stack):
    stack = make_stack(size=0, max_ondemand_requests_per_user=3, extra=AUTH)
    tokens = [stack.new_token("alice", "password") for _ in range(10)]
    assert burst(stack, tokens, {"debian": 1}) == [201] * 3 + [403] * 7


def test_one_users_limit_on_vms_holds_under_a_burst_of_its_tokens(make_stack):
    stack = make_stack(size=0, max_running_vms_per_user=5, extra=AUTH)
    tokens = [stack.new_token("bob", "password") for _ in range(10)]
    assert burst(stack, tokens, {"debian": 2}) == [201] * 2 + [403] * 8


def test_a_requests_clone_call_whose_answer_was_lost_delivers_those_clones_and_starts_no_more(make_stack,
                                                                                                monkeypatch):
    """The provider ran the request's clones and its answer was lost (a Redis timeout after the
    dummy's write): the clones keep their slots and are delivered once made, no other started.
    Before, they were taken out of service as failed to start, and the request failed ("3
    attempts to build its VMs failed") while the provider made all three."""
    stack, clones = slot_stack(make_stack, monkeypatch)
    write = stack.provider._write_vms
    lost: list[bool] = []

    def answer_lost(**kwargs: Any) -> Any:
        if lost:
            return write(**kwargs)
        lost.append(True)
        write(**kwargs)
        raise redis.TimeoutError("Timeout reading from socket")

    monkeypatch.setattr(stack.provider, "_write_vms", answer_lost)
    request_id = create(stack)
    stack.reconcile("slowclone")
    assert lost and len(clones.started) == LIMIT
    for _ in range(8):
        stack.clock.advance(30)
        stack.reconcile("slowclone")
        assert len(clones.started) == LIMIT and stack.services.store.cloning_count() <= LIMIT
    status, body = stack.answer("GET", f"/api/v3/ondemandvm/{request_id}")
    assert status == 200 and body["ready"] is True, body
    assert {host.split(".")[0] for host in body["slowclone"]["hostname"]} == set(clones.names)
