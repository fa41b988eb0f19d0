"""Reconcile messages SQS delivers more than once (it delivers at least once, and delivers again
a message whose batch ran out of time, though its pass ran). The one follow-up a pool with work
in flight keeps queued (store/fleet.py): delivered twice, it must not start a second chain of
follow-ups, each queuing the next, for as long as the pool has work in flight (a pass and an
inventory read more per poll interval, per duplicate). A message delivered again while its first
delivery's pass still runs: one pass, under the pool's lease."""

from __future__ import annotations

import json
import threading
from typing import Any

import pytest

import app
from chalicelib.clock import FakeClock
from chalicelib.manager.pool_queue import FOLLOWUP, PoolMessage
from chalicelib.services import Services
from local.gateway import Gateway
from tests.core.test_reconcile_queue import queue, services
from tests.harness import redis_state
from tests.support import Context, RecordingQueue, sqs_event

__all__ = ["queue", "services"]  # fixtures


def followups(queue: RecordingQueue) -> list[PoolMessage]:
    return [message for message, _ in queue.sent if message.reason == FOLLOWUP]


def test_a_follow_up_delivered_again_starts_no_second_chain(services: Services, queue: RecordingQueue) -> None:
    assert app.reconcile(sqs_event('{"pool": "debian", "reason": "tick"}'), Context()) == {"batchItemFailures": []}
    [first] = followups(queue)  # clones in flight: the pool is looked at again soon
    assert app.reconcile(sqs_event(first.body(0)), Context()) == {"batchItemFailures": []}
    [_, second] = followups(queue)  # still in flight: the next follow-up, the one queued now

    # The first delivered again: the pool is looked at (harmless under its lease), but the
    # follow-up queued stays the only one. Before, this delivery took the second's mark away,
    # its pass queued a third: two follow-ups in the queue, each queuing the next.
    assert app.reconcile(sqs_event(first.body(0)), Context()) == {"batchItemFailures": []}
    assert followups(queue) == [first, second]

    # The queued one arrives: the chain goes on, one follow-up at a time.
    assert app.reconcile(sqs_event(second.body(0)), Context()) == {"batchItemFailures": []}
    assert len(followups(queue)) == 3


def test_the_queued_follow_up_and_an_earlier_one_in_one_batch_keep_the_chain_going(
        services: Services, queue: RecordingQueue) -> None:
    """Both in one batch, the earlier first: the pool's run frees the queued one's mark and
    queues the next follow-up. Had it freed only the earlier one's (which frees nothing now),
    the queued follow-up would be spent with its mark held: none queued until the mark expired."""
    assert app.reconcile(sqs_event('{"pool": "debian", "reason": "tick"}'), Context()) == {"batchItemFailures": []}
    [first] = followups(queue)
    assert app.reconcile(sqs_event(first.body(0)), Context()) == {"batchItemFailures": []}
    [_, second] = followups(queue)

    event = sqs_event(first.body(0), second.body(0))
    assert app.reconcile(event, Context()) == {"batchItemFailures": []}
    assert len(followups(queue)) == 3


def test_a_follow_up_of_an_earlier_release_is_taken_as_the_queued_one(services: Services,
                                                                      queue: RecordingQueue) -> None:
    """A follow-up queued before an upgrade names no mark: it still frees the pool's, or the
    pool would get no follow-up until the mark expired."""
    assert app.reconcile(sqs_event('{"pool": "debian", "reason": "tick"}'), Context()) == {"batchItemFailures": []}
    assert len(followups(queue)) == 1
    earlier = json.dumps({"pool": "debian", "reason": FOLLOWUP, "delay": 0})
    assert app.reconcile(sqs_event(earlier), Context()) == {"batchItemFailures": []}
    assert len(followups(queue)) == 2


def test_one_message_delivered_twice_at_once_is_one_pass_and_no_vm_in_use_is_touched(
        services: Services, queue: RecordingQueue, monkeypatch: pytest.MonkeyPatch) -> None:
    """The visibility timeout ended while the first delivery's pass still ran (vCenter slow):
    the second delivery finds the pool's lease held, nudges the holder and answers at once; the
    pool converges to its size, a VM in use stays in use."""
    clock = services.clock
    assert isinstance(clock, FakeClock)
    for _ in range(3):
        assert app.reconcile(sqs_event('{"pool": "debian"}'), Context()) == {"batchItemFailures": []}
        clock.advance(60)
    status, _, body = Gateway(app.app)("POST", "/api/v3/vm/debian", {}, b"", "127.0.0.1")
    assert status == 200, body
    in_use = json.loads(body)["debian"]["hostname"].split(".")[0]

    provider = services.provider("dummy")
    reading, release = threading.Event(), threading.Event()

    def slow(read: Any) -> Any:
        def inventory(*args: Any, **kwargs: Any) -> Any:
            if not reading.is_set():
                reading.set()
                release.wait(30)
            return read(*args, **kwargs)
        return inventory

    monkeypatch.setattr(provider, "list_vms", slow(provider.list_vms))
    monkeypatch.setattr(provider, "find_vms", slow(provider.find_vms))
    event = sqs_event('{"pool": "debian", "reason": "nudge"}')
    answers: list[Any] = []
    first = threading.Thread(target=lambda: answers.append(app.reconcile(event, Context())))
    first.start()
    try:
        assert reading.wait(30)
        before = redis_state(services.client)
        # The same message again: answered at once, and its only write is the holder's nudge.
        assert app.reconcile(event, Context()) == {"batchItemFailures": []}
        after = redis_state(services.client)
    finally:
        release.set()
        first.join(30)
    wake = services.store.keys.wake("debian")
    assert {key for key in after if after[key] != before.get(key)} | (before.keys() - after.keys()) == {wake}
    assert answers == [{"batchItemFailures": []}]
    assert in_use in services.store.hostnames("debian", "running")
    counts = services.store.counts(["debian"])["debian"]
    assert (counts["ready"] + counts["pending"], counts["running"]) == (2, 1)
