"""The one follow-up a pool with work in flight keeps queued (store/fleet.py), whatever SQS does
with it: delivered twice (SQS delivers at least once; a message whose batch ran out of time is
delivered again after the visibility timeout, though its pass ran and queued the next follow-up),
it must not start a second chain of follow-ups, each queuing the next, for as long as the pool
has work in flight (a pass and an inventory read more per poll interval, per duplicate)."""

from __future__ import annotations

import json

import app
from chalicelib.manager.pool_queue import FOLLOWUP, PoolMessage
from chalicelib.services import Services
from tests.core.test_reconcile_queue import Context, RecordingQueue, queue, services, sqs_event

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
