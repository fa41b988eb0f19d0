"""Disks and snapshots: queued by the API, run by the pool's reconcile pass on the dummy provider."""

from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import redis

from chalicelib.api import vm_tasks
from chalicelib.api.http import ApiRequest
from chalicelib.api.routes import handle
from chalicelib.manager.vm_tasks import TASK_SETTLE_SECONDS, TASK_START_GRACE_SECONDS
from chalicelib.providers.base import ProviderError
from chalicelib.providers.failures import FailureKind
from chalicelib.store.vm_tasks import (
    MAX_DISKS,
    MAX_QUEUED_TASKS,
    MAX_SNAPSHOTS,
    MAX_TASK_ERROR_CHARS,
    MAX_TASK_ERRORS,
    SNAPSHOT,
    EnqueueResult,
    VMTaskStore,
    new_task,
)
from tests.support import checkout_answers_lost, refuse_task_reads


def checked_out_vm(stack) -> str:
    stack.run_passes("debian-12")
    status, body = stack.answer("POST", "/api/v3/vm", {"debian-12": 1})
    assert status == 200
    return body["debian-12"]["hostname"].split(".")[0]


def vm(stack, hostname: str) -> dict:
    status, body = stack.answer("GET", f"/api/v3/vm/{hostname}")
    assert status == 200
    return body[hostname]


def test_disk_round_trip_on_the_beaker_path(make_stack):
    stack = make_stack(task_time=60)  # createdisk_max_time: up to a minute
    hostname = checked_out_vm(stack)
    stack.refill.pools.clear()
    status, body = stack.answer("POST", f"/api/v1/vm/{hostname}.example.com/disk/8")
    assert (status, body) == (202, {"ok": True, hostname: {"disk": "+8gb"}})
    assert stack.refill.pools == ["debian-12"]

    report = stack.reconcile("debian-12")
    assert report.followups and report.work_in_flight  # the runner looks again soon
    assert vm(stack, hostname)["disk"] == []
    stack.clock.advance(61)
    stack.reconcile("debian-12")
    assert vm(stack, hostname)["disk"] == ["+8gb"]
    provider = stack.services.provider("dummy")
    [disk] = provider._vms(stack.services.pool("debian-12"))[hostname]["disks"]
    assert disk["size_gb"] == 8

    stack.answer("POST", f"/api/v3/vm/{hostname}/disk/16")
    stack.answer("POST", f"/api/v3/vm/{hostname}/disk/2048")
    stack.run_passes("debian-12", seconds=61, passes=2)
    assert vm(stack, hostname)["disk"] == ["+8gb", "+16gb", "+2048gb"]


def test_snapshot_and_revert_round_trip(make_stack):
    stack = make_stack(task_time=30)
    hostname = checked_out_vm(stack)
    wake = stack.services.store.keys.wake("debian-12")
    stack.services.client.delete(wake)
    status, body = stack.answer("POST", f"/api/v3/vm/{hostname}/snapshot")
    assert status == 202
    assert stack.services.client.llen(wake) == 1  # a running reconcile loop looks at once
    snapshot = body[hostname]["snapshot"]
    assert re.fullmatch(r"[0-9a-f]{32}", snapshot)
    # A revert to a snapshot still being taken is accepted; it runs after it.
    assert stack.answer("POST", f"/api/v3/vm/{hostname}/snapshot/{snapshot}") == (202, {"ok": True})
    assert stack.answer("POST", f"/api/v3/vm/{hostname}/snapshot/{'0' * 32}") == (
        404, {"ok": False, "error": f"snapshot {'0' * 32} not found on {hostname}"})

    stack.reconcile("debian-12")
    assert vm(stack, hostname)["snapshots"] == []
    stack.run_passes("debian-12", seconds=31, passes=3)
    details = vm(stack, hostname)
    assert details["snapshots"] == [snapshot]
    assert "task_errors" not in details
    assert stack.services.store.client.llen(stack.services.store.keys.vm_tasks(hostname)) == 0
    assert stack.answer("POST", f"/api/v2/vm/{hostname}/snapshot/{snapshot}") == (202, {"ok": True})


def test_a_failed_task_shows_its_reason(make_stack):
    stack = make_stack(disk_fail=100)
    hostname = checked_out_vm(stack)
    stack.answer("POST", f"/api/v3/vm/{hostname}/disk/8")
    stack.run_passes("debian-12", seconds=1, passes=1)
    details = vm(stack, hostname)
    assert details["disk"] == []
    assert details["task_errors"] == ["disk +8gb failed: dummy: disk failed (simulated failure)"]


def test_a_client_looping_on_a_failing_disk_does_not_grow_the_vm_record(make_stack):
    # Failed disks do not count toward MAX_DISKS: before, each left its reason on the record
    # (40 requests, 40 reasons in every GET /vm/<host> and every pass's read of the VM).
    stack = make_stack(disk_fail=100)
    hostname = checked_out_vm(stack)
    asked = MAX_TASK_ERRORS + 3
    for size in range(1, asked + 1):
        assert stack.answer("POST", f"/api/v3/vm/{hostname}/disk/{size}")[0] == 202
        stack.run_passes("debian-12", seconds=1, passes=1)
    details = vm(stack, hostname)
    assert details["task_errors"] == [f"disk +{size}gb failed: dummy: disk failed (simulated failure)"
                                      for size in range(asked - MAX_TASK_ERRORS + 1, asked + 1)]
    assert details["task_errors_dropped"] == 3
    assert details["disk"] == []


def test_a_failed_tasks_long_reason_is_kept_to_its_start(make_stack):
    # The reason quotes the provider's message (vCenter's faults can run long): each is kept
    # to MAX_TASK_ERROR_CHARS, so the newest MAX_TASK_ERRORS bound the record.
    stack = make_stack()
    hostname = checked_out_vm(stack)
    stack.answer("POST", f"/api/v3/vm/{hostname}/disk/8")
    tasks = VMTaskStore(stack.services.store)
    task, new = tasks.take(hostname, "debian-12", stack.clock.now())
    assert task is not None and new
    assert tasks.finish(hostname, task["id"], error="disk +8gb failed: " + "x" * 100_000)
    [reason] = vm(stack, hostname)["task_errors"]
    assert reason == ("disk +8gb failed: " + "x" * 100_000)[:MAX_TASK_ERROR_CHARS]


def test_tasks_of_a_vm_returned_before_they_ran_fail_visibly(make_stack):
    stack = make_stack()
    hostname = checked_out_vm(stack)
    stack.answer("POST", f"/api/v3/vm/{hostname}/disk/8")
    assert stack.answer("DELETE", f"/api/v3/vm/{hostname}")[0] == 200
    stack.reconcile("debian-12")
    record = stack.services.store.get_vm(hostname)
    assert "disk +8gb failed: the VM is no longer running" in record.raw["task_errors"]
    assert stack.services.store.client.zcard(stack.services.store.keys.pool_vm_tasks("debian-12")) == 0


@pytest.mark.parametrize("size", ["0", "2049", "abc", "-1", "1.5"])
def test_bad_disk_sizes(make_stack, size):
    stack = make_stack()
    hostname = checked_out_vm(stack)
    status, body = stack.answer("POST", f"/api/v3/vm/{hostname}/disk/{size}")
    assert status == 400 and body["ok"] is False and "1 to 2048" in body["error"]
    assert stack.services.store.client.llen(stack.services.store.keys.vm_tasks(hostname)) == 0


def test_a_bad_disk_size_is_a_400_whatever_the_vm_but_only_after_the_token(make_stack):
    """The size is the request's own fault, as a malformed host name is: a client told 404 for
    ``/vm/<typo>/disk/0`` fixed the host to be told 400 next (vmpooler answers 404 to both).
    Before: 404 for an unknown or not checked-out VM. Without a token, still 401 first."""
    stack = make_stack()
    stack.run_passes("debian-12")
    ready = stack.services.store.hostnames("debian-12", "ready")[0]
    for host in ("nosuchvm", ready):
        status, body = stack.answer("POST", f"/api/v3/vm/{host}/disk/0")
        assert status == 400 and "1 to 2048" in body["error"], body
    guarded = make_stack(extra="\n:auth:\n  provider: dummy\n")
    assert guarded.answer("POST", "/api/v3/vm/nosuchvm/disk/0") == (
        401, {"ok": False, "error": "a token is required (X-AUTH-TOKEN)"})


def test_unknown_or_not_running_vms(make_stack):
    stack = make_stack()
    stack.run_passes("debian-12")
    ready = stack.services.store.hostnames("debian-12", "ready")[0]
    for path in ("disk/8", "snapshot", f"snapshot/{'a' * 32}"):
        assert stack.answer("POST", f"/api/v3/vm/nosuchvm/{path}")[0] == 404
        assert stack.answer("POST", f"/api/v3/vm/{ready}/{path}")[0] == 404
        assert stack.answer("POST", f"/api/v3/vm/bad_name/{path}")[0] == 400


def test_token_required_when_auth_is_configured(make_stack):
    stack = make_stack(extra="\n:auth:\n  provider: dummy\n")
    hostname = checked_out_vm(stack)
    for path in ("disk/8", "snapshot", f"snapshot/{'a' * 32}"):
        assert stack.answer("POST", f"/api/v3/vm/{hostname}/{path}") == (
            401, {"ok": False, "error": "a token is required (X-AUTH-TOKEN)"}
        )


def test_a_vm_has_a_bounded_number_of_tasks_disks_and_snapshots(make_stack):
    """A caller looping on POST .../disk/2048 queued provider tasks without end (each a real disk
    of up to 2 TB): waiting tasks, added disks and snapshots are bounded, in the same Lua step
    that queues, so requests at once cannot pass a bound together."""
    stack = make_stack(task_time=60)
    hostname = checked_out_vm(stack)
    path = f"/api/v3/vm/{hostname}"
    with ThreadPoolExecutor(8) as pool:
        statuses = list(pool.map(lambda _: handle(stack.services, vm_tasks.add_disk, ApiRequest(
            "POST", 3, params={"name": hostname, "size": "2048"})).status, range(MAX_QUEUED_TASKS + 5)))
    assert sorted(statuses) == [202] * MAX_QUEUED_TASKS + [429] * 5
    assert stack.answer("POST", f"{path}/snapshot") == (429, {
        "ok": False, "error": f"VM {hostname} has 10 tasks waiting already; try again when they have run"})
    stack.reconcile("debian-12")  # the first task is in flight: one place free in the queue
    assert stack.answer("POST", f"{path}/disk/8")[0] == 202
    # Run them all; disks past MAX_DISKS (counting those queued and in flight) are refused.
    for _ in range(MAX_DISKS):
        stack.run_passes("debian-12", seconds=61, passes=1)
        status, _ = stack.answer("POST", f"{path}/disk/1")
        if status == 403:
            break
    stack.run_passes("debian-12", seconds=61, passes=MAX_QUEUED_TASKS + 2)
    assert len(vm(stack, hostname)["disk"]) == MAX_DISKS
    refused = (403, {"ok": False, "error": "a VM may have at most 16 added disks"})
    assert stack.answer("POST", f"{path}/disk/1") == refused
    for _ in range(MAX_SNAPSHOTS):
        assert stack.answer("POST", f"{path}/snapshot")[0] == 202
        stack.run_passes("debian-12", seconds=61, passes=1)
    refused = (403, {"ok": False, "error": "a VM may have at most 31 snapshots"})
    assert stack.answer("POST", f"{path}/snapshot") == refused
    assert len(vm(stack, hostname)["snapshots"]) == MAX_SNAPSHOTS
    # A VM returned after the API looked at it gets nothing queued.
    seen = stack.services.store.get_vm(hostname)
    assert stack.answer("DELETE", path)[0] == 200
    store = VMTaskStore(stack.services.store)
    assert store.enqueue(seen, new_task(SNAPSHOT, 0), 0) is EnqueueResult.NOT_RUNNING
    assert store.queued(hostname) == []


def test_a_checkout_whose_answer_was_lost_cannot_be_changed_before_it_goes_back(make_stack):
    """The checkout script ran but its answer never reached the API (a timeout: 503); the VM waits
    unconfirmed until a pass returns it to ready. Its user sees it under GET /token/<t>. Before:
    a tag and a disk could be put on it meanwhile, and the next user was handed that VM with the
    other user's tag and disk. Now such changes are refused (404) until a checkout is confirmed."""
    stack = make_stack(size=1, extra="\n:auth:\n  provider: dummy\n")
    stack.run_passes("debian-12")
    alice, bob = stack.new_token("alice", "pw-a"), stack.new_token("bob", "pw-b")
    store = stack.services.store
    with checkout_answers_lost(store):
        assert stack.answer("POST", "/api/v3/vm", {"debian-12": 1}, headers={"X-AUTH-TOKEN": alice})[0] == 503
    (host,) = stack.answer("GET", f"/api/v3/token/{alice}")[1][alice]["vms"]["running"]

    alice_header = {"X-AUTH-TOKEN": alice}
    assert stack.answer("PUT", f"/api/v3/vm/{host}", {"tags": {"owner": "alice"}}, headers=alice_header)[0] == 404
    assert stack.answer("POST", f"/api/v3/vm/{host}/disk/8", headers=alice_header)[0] == 404
    assert stack.answer("POST", f"/api/v3/vm/{host}/snapshot", headers=alice_header)[0] == 404
    stack.clock.advance(61)
    assert host in stack.reconcile("debian-12").returned

    status, body = stack.answer("POST", "/api/v3/vm", {"debian-12": 1}, headers={"X-AUTH-TOKEN": bob})
    assert (status, body["debian-12"]["hostname"].split(".")[0]) == (200, host)
    stack.run_passes("debian-12", seconds=61, passes=2)
    handed = vm(stack, host)
    assert (handed["tags"], handed["disk"], handed["snapshots"]) == ({}, [], [])


# --- a task's start whose answer was lost, or that never reached the provider ---------------------


class _TaskWrites:
    """The dummy provider's Redis client, but its next ``failures`` task writes (``SET``) fail:
    ``error`` raised after the write ran (``run``: the answer lost) or instead of it."""

    def __init__(self, client: redis.Redis, error: Exception, run: bool, failures: int = 1) -> None:
        self._client, self._error, self._run, self.failures = client, error, run, failures

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)

    def set(self, *args: Any, **kwargs: Any) -> Any:
        if self.failures <= 0:
            return self._client.set(*args, **kwargs)
        self.failures -= 1
        if self._run:
            self._client.set(*args, **kwargs)
        raise self._error


def failing_task_writes(stack, monkeypatch, error: Exception, run: bool, failures: int = 1) -> _TaskWrites:
    provider = stack.services.provider("dummy")
    writes = _TaskWrites(provider.client, error, run, failures)
    monkeypatch.setattr(provider, "client", writes)
    return writes


def disks_in_provider(stack, hostname: str) -> list[int]:
    provider = stack.services.provider("dummy")
    return [disk["size_gb"] for disk in provider._vms(stack.services.pool("debian-12"))[hostname]["disks"]]


def test_a_disk_whose_start_answer_was_lost_is_listed_once_done_and_added_once(make_stack, monkeypatch):
    """The provider received the disk and its answer was lost (a Redis timeout after the dummy's
    write; on vSphere a ReconfigVM_Task whose answer timed out). Before, the pass finished the task
    as "failed to start" though the disk was being added: GET /vm said it failed, and the user's
    retry added a second disk. Now it stays in flight, the provider is asked each pass whether it
    was done, and GET /vm lists the one disk once it is."""
    stack = make_stack(task_time=30)
    hostname = checked_out_vm(stack)
    other = checked_out_vm(stack)
    assert stack.answer("POST", f"/api/v3/vm/{hostname}/disk/8")[0] == 202
    assert stack.answer("POST", f"/api/v3/vm/{other}/disk/4")[0] == 202
    writes = failing_task_writes(stack, monkeypatch, redis.TimeoutError("Timeout reading from socket"), run=True)
    stack.reconcile("debian-12")
    assert writes.failures == 0
    # The provider counts as unreachable for the rest of the pass: the other VM's task waits.
    tasks = VMTaskStore(stack.services.store)
    started = [host for host in (hostname, other) if not tasks.queued(host)]
    assert len(started) == 1, started
    assert all("task_errors" not in vm(stack, host) for host in (hostname, other))
    (first,) = started
    assert vm(stack, first)["disk"] == []
    stack.run_passes("debian-12", seconds=31, passes=2)
    assert (vm(stack, hostname)["disk"], vm(stack, other)["disk"]) == (["+8gb"], ["+4gb"])
    assert "task_errors" not in vm(stack, hostname) and "task_errors" not in vm(stack, other)
    assert (disks_in_provider(stack, hostname), disks_in_provider(stack, other)) == ([8], [4])


def test_a_lost_start_the_provider_never_did_fails_after_the_settle_time_saying_so(make_stack, monkeypatch):
    """The answer was lost and the provider never got the disk: the task waits (the provider may
    yet do it) and fails TASK_SETTLE_SECONDS after its take, saying why; the VM's next task then runs."""
    stack = make_stack(task_time=0)
    hostname = checked_out_vm(stack)
    stack.answer("POST", f"/api/v3/vm/{hostname}/disk/8")
    failing_task_writes(stack, monkeypatch, redis.TimeoutError("Timeout reading from socket"), run=False)
    stack.reconcile("debian-12")
    stack.answer("POST", f"/api/v3/vm/{hostname}/disk/16")
    stack.clock.advance(TASK_SETTLE_SECONDS - 10)
    stack.reconcile("debian-12")
    assert (vm(stack, hostname)["disk"], vm(stack, hostname).get("task_errors")) == ([], None)
    stack.clock.advance(11)
    stack.run_passes("debian-12", seconds=1, passes=1)
    details = vm(stack, hostname)
    assert details["task_errors"] == [("disk +8gb failed: not done 120 s after its start, whose answer was lost "
                                       "(dummy provider storage: TimeoutError)")]
    assert details["disk"] == ["+16gb"] and disks_in_provider(stack, hostname) == [16]


def test_a_lost_snapshot_start_ends_done_when_the_provider_took_it(make_stack, monkeypatch):
    stack = make_stack(task_time=0)
    hostname = checked_out_vm(stack)
    snapshot = stack.answer("POST", f"/api/v3/vm/{hostname}/snapshot")[1][hostname]["snapshot"]
    failing_task_writes(stack, monkeypatch, redis.TimeoutError("Timeout reading from socket"), run=True)
    stack.reconcile("debian-12")
    assert vm(stack, hostname)["snapshots"] == []
    stack.run_passes("debian-12", seconds=1, passes=1)
    details = vm(stack, hostname)
    assert (details["snapshots"], details.get("task_errors")) == ([snapshot], None)


def test_a_task_whose_start_never_reached_the_provider_is_started_by_a_later_pass(make_stack, monkeypatch):
    """The provider could not be reached (its connection refused: nothing was sent). Before, the
    task failed at once ("failed to start"); now it goes back to its queue and a later pass starts
    it, within TASK_SETTLE_SECONDS of its first take, after which it fails as before."""
    stack = make_stack(task_time=0)
    hostname = checked_out_vm(stack)
    stack.answer("POST", f"/api/v3/vm/{hostname}/disk/8")
    stack.answer("POST", f"/api/v3/vm/{hostname}/disk/16")
    writes = failing_task_writes(stack, monkeypatch, redis.ConnectionError("Connection refused"), run=False)
    stack.reconcile("debian-12")
    assert writes.failures == 0
    assert [task["size_gb"] for task in VMTaskStore(stack.services.store).queued(hostname)] == [8, 16]
    stack.run_passes("debian-12", seconds=1, passes=2)
    details = vm(stack, hostname)
    assert (details["disk"], details.get("task_errors")) == (["+8gb", "+16gb"], None)
    assert disks_in_provider(stack, hostname) == [8, 16]

    # Refused for longer than the settle time: it fails, as a task whose provider is down did.
    stack.answer("POST", f"/api/v3/vm/{hostname}/disk/2")
    writes.failures = 1000
    for _ in range(5):
        stack.reconcile("debian-12")
        stack.clock.advance(TASK_SETTLE_SECONDS / 4)
    stack.reconcile("debian-12")
    assert vm(stack, hostname)["task_errors"] == [
        "disk +2gb failed to start: dummy provider storage: ConnectionError"]


def test_a_task_state_the_provider_cannot_read_now_does_not_end_the_pass(make_stack, monkeypatch):
    """Before, a provider error reading a VM task's state ended the whole pass (no VM became
    ready, no clone started); now the task waits for a later pass and the pass goes on."""
    stack = make_stack(task_time=30)
    hostname = checked_out_vm(stack)
    stack.answer("POST", f"/api/v3/vm/{hostname}/disk/8")
    stack.reconcile("debian-12")
    provider = stack.services.provider("dummy")

    refuse_task_reads(monkeypatch, provider, lambda task_ref: ProviderError("cannot talk to the backend",
                                                                          FailureKind.CONNECTION))
    stack.clock.advance(31)
    report = stack.reconcile("debian-12")
    assert any(hostname in error and "cannot talk to the backend" in error for error in report.errors)
    assert report.followups and report.counts["ready"] + report.counts["pending"] == 2  # the pool refilled
    monkeypatch.undo()
    stack.reconcile("debian-12")
    assert vm(stack, hostname)["disk"] == ["+8gb"]


def test_a_lost_start_the_provider_cannot_be_asked_about_waits_while_unreachable_then_ends_saying_so(
        make_stack, monkeypatch):
    """The answer was lost, and asking the provider whether it was done fails: while it cannot be
    reached the task waits (the pass goes on), past the settle time a provider that answers but
    cannot say (a refusal, the VM gone from its folder) ends it with the reason, not never."""
    stack = make_stack(task_time=0)
    hostname = checked_out_vm(stack)
    stack.answer("POST", f"/api/v3/vm/{hostname}/disk/8")
    failing_task_writes(stack, monkeypatch, redis.TimeoutError("Timeout reading from socket"), run=False)
    stack.reconcile("debian-12")
    provider = stack.services.provider("dummy")
    refusal = ProviderError("the backend is down", FailureKind.CONNECTION)

    def cannot_say(*args: Any) -> Any:
        raise refusal

    monkeypatch.setattr(provider, "applied", cannot_say)
    for _ in range(3):
        stack.clock.advance(TASK_SETTLE_SECONDS / 2)
        report = stack.reconcile("debian-12")
        assert report.followups and "task_errors" not in vm(stack, hostname)
    refusal = ProviderError("VM not found", FailureKind.PERMISSION)
    stack.reconcile("debian-12")
    assert vm(stack, hostname)["task_errors"] == [
        ("disk +8gb may or may not have been done: the provider's answer to its start was lost (dummy provider "
         "storage: TimeoutError) and asking it failed: VM not found")]


def test_a_task_whose_taker_died_and_that_the_provider_cannot_be_asked_about_ends_saying_so(make_stack, monkeypatch):
    """A pass took the disk and died before starting it (no ref, no lost answer); past the start
    grace the provider is asked whether it was done, and it answers but cannot say (a refusal,
    the VM gone from its folder). Before, the task stayed in flight for good: GET /vm never said
    what became of it, and the VM's next disk never ran. Now, while the provider cannot be
    reached, or within TASK_SETTLE_SECONDS after the grace, it waits; then it ends saying why,
    and the next task runs."""
    stack = make_stack(task_time=0)
    hostname = checked_out_vm(stack)
    stack.answer("POST", f"/api/v3/vm/{hostname}/disk/8")
    task, new = VMTaskStore(stack.services.store).take(hostname, "debian-12", stack.clock.now())
    assert task is not None and new  # taken by a pass that then died
    stack.answer("POST", f"/api/v3/vm/{hostname}/disk/16")
    provider = stack.services.provider("dummy")
    refusal = ProviderError("VM not found", FailureKind.PERMISSION)

    def cannot_say(*args: Any) -> Any:
        raise refusal

    monkeypatch.setattr(provider, "applied", cannot_say)
    stack.clock.advance(TASK_START_GRACE_SECONDS + 1)
    report = stack.reconcile("debian-12")  # within the settle time: it waits
    assert report.followups and "task_errors" not in vm(stack, hostname)
    refusal = ProviderError("the backend is down", FailureKind.CONNECTION)
    for _ in range(3):  # unreachable: it waits, however long
        report = stack.reconcile("debian-12")
        assert report.followups and "task_errors" not in vm(stack, hostname)
        stack.clock.advance(TASK_SETTLE_SECONDS)
    refusal = ProviderError("VM not found", FailureKind.PERMISSION)
    stack.reconcile("debian-12")
    assert vm(stack, hostname).get("task_errors") == [
        ("disk +8gb may or may not have been done: its pass was interrupted after taking it and asking the "
         "provider failed: VM not found")]
    monkeypatch.undo()
    stack.run_passes("debian-12", seconds=1, passes=1)
    assert vm(stack, hostname)["disk"] == ["+16gb"]  # the VM's next task ran
