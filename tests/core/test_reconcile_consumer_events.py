"""The reconcile consumer and the tick as Lambda invokes them, hostile invocations included: a
batch larger than SQS ever sends, passes that never end, records and scheduled events that are
not what SQS or EventBridge send (a direct invoke). Whatever the batch holds, the consumer
answers inside its time with only the messages it did not finish reported, and nothing it gave up
on runs later, in another invocation's time."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import Future
from pathlib import Path
from typing import Any, Iterator

import pytest

import app
from chalicelib.clock import FakeClock
from chalicelib.manager import dispatch
from chalicelib.manager.dispatch import PASS_START_SECONDS, SAFETY_SECONDS
from chalicelib.manager.pool_queue import FOLLOWUP, PoolMessage
from chalicelib.manager.runner import LEASE_SECONDS
from chalicelib.services import Services
from tests.core.test_reconcile_queue import queue, services
from tests.harness import redis_state
from tests.support import TICK_EVENT, ClockedContext, Context, RecordingQueue, sqs_event

__all__ = ["queue", "services"]  # fixtures


class Passes:
    """Stands in for ``dispatch.look_at``: records each pass it starts; a pass of a pool named in
    ``blocked`` waits until ``release`` is set."""

    def __init__(self, *blocked: str) -> None:
        self.blocked = set(blocked)
        self.release = threading.Event()
        self.started: list[str] = []
        self.after_return: list[str] = []
        self.returned = False
        self._lock = threading.Lock()

    def __call__(self, services: Services, message: PoolMessage, queue: Any, *args: Any, **kwargs: Any) -> None:
        with self._lock:
            self.started.append(message.pool)
            if self.returned:
                self.after_return.append(message.pool)
        if message.pool in self.blocked:
            self.release.wait(60)


@pytest.fixture
def fresh_threads(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The consumer's threads as a new process has them (this test's blocked passes stay here)."""
    monkeypatch.setattr(dispatch, "_executor", None)
    yield


def batch(*pools: str) -> dict[str, Any]:
    return sqs_event(*(json.dumps({"pool": pool}) for pool in pools))


def failed_pools(answer: dict[str, Any], event: dict[str, Any]) -> list[str]:
    bodies = {r["messageId"]: json.loads(r["body"])["pool"] for r in event["Records"]}
    return sorted(bodies[failure["itemIdentifier"]] for failure in answer["batchItemFailures"])


class ShortAfterStart(Context):
    """An invocation received with time for its passes to start (``PASS_START_SECONDS``, the
    consumer's first look at the time), then with ``remaining_ms`` left: the consumer stops
    waiting for its passes ``remaining_ms`` less ``SAFETY_SECONDS`` in."""

    def __init__(self, remaining_ms: int) -> None:
        super().__init__(remaining_ms)
        self.asked = 0

    def get_remaining_time_in_millis(self) -> int:
        self.asked += 1
        return int(PASS_START_SECONDS * 1000) if self.asked == 1 else self.remaining_ms

    def __call__(self) -> float:
        """The remaining seconds, as ``handle_batch`` asks them."""
        return self.get_remaining_time_in_millis() / 1000


def test_passes_of_a_batch_the_consumer_gave_up_on_do_not_run_in_a_later_invocation(
        services: Services, queue: RecordingQueue, fresh_threads: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """A batch with more pools than threads whose passes outlast the invocation: the passes not
    started yet are reported failed (SQS delivers them again) and never start. Before, they
    stayed queued in the process and ran in the next invocation's time (a batch of one pool after
    a 10,000-record invoke took 11 s in the packaged function)."""
    pools = [f"pool{n:02d}" for n in range(20)]
    passes = Passes(*pools)
    monkeypatch.setattr(dispatch, "look_at", passes)
    event = batch(*pools)
    try:
        answer = app.reconcile(event, ShortAfterStart(remaining_ms=int((SAFETY_SECONDS + 0.3) * 1000)))
        passes.returned = True
    finally:
        passes.release.set()
    assert failed_pools(answer, event) == pools

    passes.blocked.clear()
    assert app.reconcile(batch("debian"), Context()) == {"batchItemFailures": []}
    assert passes.after_return == ["debian"]


def test_passes_stuck_in_earlier_invocations_do_not_starve_later_batches(
        services: Services, queue: RecordingQueue, fresh_threads: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """Ten passes that never end (a backend call with no timeout) took every thread of the warm
    process for good: each later batch was reported failed whole until the container was
    recycled. Later batches now get threads of their own."""
    stuck = [f"stuck{n}" for n in range(10)]
    passes = Passes(*stuck)
    monkeypatch.setattr(dispatch, "look_at", passes)
    try:
        event = batch(*stuck)
        answer = app.reconcile(event, ShortAfterStart(remaining_ms=int((SAFETY_SECONDS + 0.3) * 1000)))
        assert failed_pools(answer, event) == stuck

        assert app.reconcile(batch("debian", "centos"), Context()) == {"batchItemFailures": []}
        assert sorted(passes.started[len(stuck):]) == ["centos", "debian"]
    finally:
        passes.release.set()


@pytest.mark.parametrize("event", [{}, {"Records": None}, {"Records": "x"}, [], "x", None],
                         ids=["empty", "null-records", "text-records", "list", "text", "null"])
def test_an_invoke_that_is_not_an_sqs_batch_fails_nothing(services: Services, queue: RecordingQueue,
                                                          event: Any) -> None:
    """Before: KeyError or TypeError out of the function (a direct invoke)."""
    assert app.reconcile(event, Context()) == {"batchItemFailures": []}


def test_records_sqs_never_sends_are_dropped_alone(services: Services, queue: RecordingQueue) -> None:
    """A record without an id (it cannot be reported), with a body that is not text, a send
    time that is not a number, or that is not an object at all. Before, each raised out of the
    function, and SQS would have delivered the batch's good message again with them."""
    event = batch("debian", "centos", "debian", "centos")
    del event["Records"][0]["messageId"]
    event["Records"][1]["body"] = None
    event["Records"][2]["attributes"] = {"SentTimestamp": "yesterday"}
    event["Records"][2]["body"] = json.dumps({"pool": "debian", "reason": "nudge"})
    event["Records"].append("not a record")

    assert app.reconcile(event, Context()) == {"batchItemFailures": []}
    assert services.store.counts(["debian"])["debian"]["pending"] == 2


@pytest.mark.parametrize("event", [
    {}, None, [], "tick", {**TICK_EVENT, "detail": None, "resources": "x", "time": 5},
    {key: value for key, value in TICK_EVENT.items() if key != "version"},
], ids=["empty", "null", "list", "text", "odd-values", "no-version"])
def test_the_tick_runs_whatever_its_scheduled_event_holds(services: Services, queue: RecordingQueue,
                                                          monkeypatch: pytest.MonkeyPatch, event: Any) -> None:
    """The tick reads nothing from its event. Before, Chalice's reading of it raised KeyError
    (TypeError) for an event missing one of EventBridge's keys, before the tick ran."""
    monkeypatch.setattr(app, "_ticker", None)
    answer = app.tick(event, Context())
    assert answer["pools"] == 2 and answer["messages"] == 2
    assert sorted(message.pool for message, _ in queue.sent) == ["centos", "debian"]


def test_a_pass_stuck_in_a_provider_call_writes_nothing_once_another_run_has_its_pool(
        services: Services, queue: RecordingQueue, fresh_threads: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """A provider call whose answer does not come (vCenter started the clones, then stopped
    answering): the consumer reports the pool's message failed and returns inside its time. The
    pass's thread stays in the call; its lease expires and another run takes the pool over. When
    the answer comes at last (in AWS: the frozen container thawed for a later invocation), the
    pass stops there. Before, it went on with what it read before the hang and wrote its
    decisions (the clone tasks on the records, its inventory mark) over the other run's."""
    provider = services.provider("dummy")
    clone_vms = provider.clone_vms
    answered, release = threading.Event(), threading.Event()

    def clones_whose_answer_hangs(*args: Any, **kwargs: Any) -> Any:
        started = clone_vms(*args, **kwargs)
        answered.set()
        release.wait(60)
        return started

    monkeypatch.setattr(provider, "clone_vms", clones_whose_answer_hangs)
    event = batch("debian")
    invoked = time.monotonic()
    try:
        answer = app.reconcile(event, Context(remaining_ms=int((SAFETY_SECONDS + 3) * 1000)))
        # It stops waiting 3 s in (its time less the SAFETY_SECONDS it keeps to answer), and must
        # return before its time is up: the rest is room for a loaded machine (it held a thread
        # for 2.5 s at load 14), where a 1 s margin could fail; the stuck call waits 60 s.
        assert time.monotonic() - invoked < 3 + SAFETY_SECONDS
        assert failed_pools(answer, event) == ["debian"]
        assert answered.is_set()
        (stuck,) = [future for future in dispatch._given_up if not future.done()]

        services.clock.advance(LEASE_SECONDS + 1)  # the lease's TTL in Redis is real time: expired by hand
        lease_key = services.store.keys.lease("debian")
        services.client.delete(lease_key)
        other = services.store.acquire_lease("debian", LEASE_SECONDS)
        before = redis_state(services.client)
    finally:
        release.set()
    stuck.result(timeout=30)
    assert redis_state(services.client) == before
    assert services.client.get(lease_key) == other


def test_a_pass_whose_invocation_runs_out_of_time_stops_before_its_next_step_and_is_queued_again(
        services: Services, queue: RecordingQueue, fresh_threads: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """vCenter answers the pass's inventory read 54 s into the consumer's 60 s (on a fake clock
    the invocation's remaining time follows). Before, the pass went on to its steps with 6 s
    left (clones started, more vCenter calls) and ran into the invocation's end: Lambda killed it
    mid-way, the batch failed whole, and the frozen pass kept the pool's lease until it expired.
    The pass now starts no step with less than ``PASS_STOP_SECONDS`` left: it releases its lease,
    queues the pool again at once and its message is done; the next invocation does the work."""
    clock = services.clock
    assert isinstance(clock, FakeClock)
    invocations = [ClockedContext(clock, timeout=60)]
    provider = services.provider("dummy")
    slow, clones_started_with = [54.0], []

    def first_call_slow(call: Any) -> Any:
        def slow_once(*args: Any, **kwargs: Any) -> Any:
            if slow:
                clock.advance(slow.pop())
            return call(*args, **kwargs)

        return slow_once

    for name in ("inventory_changes", "list_vms"):  # whichever the pass reads its inventory with
        monkeypatch.setattr(provider, name, first_call_slow(getattr(provider, name)))
    clone_vms = provider.clone_vms

    def clones_timed(*args: Any, **kwargs: Any) -> Any:
        clones_started_with.append(invocations[-1].get_remaining_time_in_millis() / 1000)
        return clone_vms(*args, **kwargs)

    monkeypatch.setattr(provider, "clone_vms", clones_timed)

    assert app.reconcile(batch("debian"), invocations[-1]) == {"batchItemFailures": []}

    assert clones_started_with == []
    assert [(message.pool, message.reason, delay) for message, delay in queue.sent] == [("debian", FOLLOWUP, 0)]
    assert services.client.get(services.store.keys.lease("debian")) is None
    invocations.append(ClockedContext(clock, timeout=60))
    followup = sqs_event(queue.sent[0][0].body())
    assert app.reconcile(followup, invocations[-1]) == {"batchItemFailures": []}
    assert clones_started_with == [60.0]
    assert services.store.counts(["debian"])["debian"]["pending"] == 2



@pytest.mark.parametrize("remaining_seconds", [0.5, SAFETY_SECONDS - 0.5, PASS_START_SECONDS - 0.5])
def test_a_batch_received_with_too_little_time_left_starts_no_pass(
        remaining_seconds: float, services: Services, queue: RecordingQueue, fresh_threads: None,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A batch handed over with less time left than a pass needs to reach its first step (a slow
    start of the invocation, a short timeout): no pass starts, nothing changes in Redis, and
    every message is reported failed, so SQS delivers it again to an invocation with time.
    Before, each pass took its pool's lease and read the provider's inventory, then ran on after
    the consumer had answered (its lease held, in Lambda frozen with the environment)."""
    services.client.set("queuetest:unrelated", "kept")  # the state is not empty before
    before = redis_state(services.client)
    provider = services.provider("dummy")
    inventory_reads: list[str] = []
    for name in ("inventory_changes", "list_vms"):  # whichever the pass reads its inventory with
        call = getattr(provider, name)

        def recorded(*args: Any, _call: Any = call, _name: str = name, **kwargs: Any) -> Any:
            inventory_reads.append(_name)
            return _call(*args, **kwargs)

        monkeypatch.setattr(provider, name, recorded)
    event = batch("debian", "centos")

    answer = app.reconcile(event, Context(int(remaining_seconds * 1000)))
    futures_wait = [future for future in dispatch._given_up if not future.done()]
    for future in futures_wait:  # a pass started anyway ends here, not in the next test
        future.result(timeout=30)

    assert failed_pools(answer, event) == ["centos", "debian"]
    assert inventory_reads == [] and queue.sent == []
    assert redis_state(services.client) == before


def test_passes_given_up_on_that_never_end_do_not_pile_up_threads(
        fresh_threads: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each batch whose pass outlives the invocation leaves a thread behind (a thread cannot be
    stopped). Before, the consumer remembered only the last batch's and gave each batch new
    threads: passes that never end grew the process's threads (and their Redis connections)
    without bound, one batch at a time. Now past ``MAX_PASSES_GIVEN_UP`` a batch starts no pass
    and its messages go back to the queue, until some end."""
    monkeypatch.setattr(dispatch, "_given_up", set())
    release, started = threading.Event(), []

    def pass_that_hangs(services: Any, messages: Any, *args: Any, **kwargs: Any) -> None:
        started.append(messages[0].pool)
        release.wait(60)

    monkeypatch.setattr(dispatch, "_look_at_all", pass_that_hangs)
    batches = dispatch.MAX_PASSES_GIVEN_UP + 3
    answers = []
    try:
        for n in range(batches):
            answers.append(dispatch.handle_batch(None, [(f"m{n}", json.dumps({"pool": f"p{n}"}))],  # type: ignore[arg-type]
                                                 None, ShortAfterStart(int((SAFETY_SECONDS + 0.05) * 1000))))  # type: ignore[arg-type]
        stuck = [thread for thread in threading.enumerate() if thread.name.startswith("reconcile")]
        assert len(started) == dispatch.MAX_PASSES_GIVEN_UP
        assert len(stuck) <= dispatch.MAX_PASSES_GIVEN_UP + dispatch.POOL_THREADS
        assert answers == [[f"m{n}"] for n in range(batches)]  # every message goes back to the queue
    finally:
        release.set()
    for future in list(dispatch._given_up):
        future.result(timeout=30)
    assert dispatch.handle_batch(None, [("m", json.dumps({"pool": "p"}))], None,  # type: ignore[arg-type]
                                 lambda: SAFETY_SECONDS + 5) == []  # the threads ended: batches run again


class Exited(Exception):
    """Stands in for the end of the process (``os._exit``) in the test's own process."""


def test_an_environment_full_of_passes_given_up_on_exits_for_a_fresh_one(
        services: Services, queue: RecordingQueue, fresh_threads: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """MAX_PASSES_GIVEN_UP passes an earlier invocation gave up on still running (calls that never
    return): the consumer ends its process, starting no pass, rather than answer. Before, it
    answered every message failed, batch after batch, until Lambda retired the environment."""
    passes = Passes()
    monkeypatch.setattr(dispatch, "look_at", passes)
    monkeypatch.setattr(dispatch, "_given_up", {Future() for _ in range(dispatch.MAX_PASSES_GIVEN_UP)})
    exits: list[int] = []

    def exit_now(status: int) -> None:
        exits.append(status)
        raise Exited

    monkeypatch.setattr(os, "_exit", exit_now)
    with pytest.raises(Exited):
        app.reconcile(batch("debian", "ubuntu"), ClockedContext(FakeClock(), timeout=60))
    assert exits == [app.SPENT_EXIT_STATUS] and passes.started == []
    # One of them ends: the batch runs, answered as ever.
    next(iter(dispatch._given_up)).set_result(None)
    assert app.reconcile(batch("debian"), ClockedContext(FakeClock(), timeout=60)) == {"batchItemFailures": []}
    assert passes.started == ["debian"] and exits == [app.SPENT_EXIT_STATUS]


SPENT_PROCESS = """
import json, threading, time
from concurrent.futures import ThreadPoolExecutor
import app
from chalicelib.manager import dispatch
from tests.support import Context, sqs_event

never = threading.Event()
threads = ThreadPoolExecutor(max_workers=dispatch.MAX_PASSES_GIVEN_UP)
dispatch._given_up.update(threads.submit(never.wait) for _ in range(dispatch.MAX_PASSES_GIVEN_UP))
app.reconcile(sqs_event(json.dumps({"pool": "debian"})), Context())
print("answered")
"""


def test_the_spent_process_really_ends_though_its_threads_never_do() -> None:
    """In a process of its own, its stuck threads real and never ending: it ends at once with
    SPENT_EXIT_STATUS and says why (a normal exit would wait for those threads for ever)."""
    try:
        ended = subprocess.run([sys.executable, "-c", SPENT_PROCESS], cwd=Path(__file__).resolve().parents[2],
                               capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired as hung:
        raise AssertionError(f"the process did not end: {hung.stderr!r}"[-2000:]) from None
    assert ended.returncode == app.SPENT_EXIT_STATUS, ended.stderr[-2000:]
    assert "answered" not in ended.stdout
    assert "it exits so Lambda starts a fresh one" in ended.stdout
