"""The AWS reconcile path: the tick puts one message per pool on the reconcile queue, a checkout
puts its pool there at once, and the queue's Chalice consumer runs each message's pool, each
on its own (moto for SQS and S3, a real Redis)."""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import threading
import time
from concurrent import futures
from concurrent.futures import Future
from typing import Any, Callable, Iterator

import boto3
import pytest
import redis
from botocore.exceptions import ClientError, ReadTimeoutError
from botocore.parsers import ResponseParserError
from moto import mock_aws

import app
from chalicelib.auth.secrets import SecretConfigError, SecretResolver
from chalicelib.aws_clients import AWS_CALL_BOUND_SECONDS
from chalicelib.clock import FakeClock
from chalicelib.config import parse
from chalicelib.manager import dispatch
from chalicelib.manager.dispatch import (
    NEWEST_CONFIG_SECONDS,
    PASS_STOP_SECONDS,
    TICK_AFTER_SEND_SECONDS,
    TICK_SEND_MAX_SECONDS,
    Ticker,
    look_at,
    tick_send_budget,
)
from chalicelib.manager.pool_queue import (
    DRAIN,
    FOLLOWUP,
    NOT_SENT,
    REPORTED_LATENESS_SECONDS,
    SEND_BUDGET_SECONDS,
    TICK,
    PoolMessage,
    QueueRefused,
    SqsPoolQueue,
)
from chalicelib.manager.providerless import PROVIDERLESS_GRACE_SECONDS
from chalicelib.manager.refill import SqsRefill
from chalicelib.manager.runner import run_pool
from chalicelib.services import Services
from chalicelib.store import STATES
from chalicelib.store.fleet import Fleet
from chalicelib.store.pool_overrides import PoolOverrides
from local.gateway import Gateway
from tests.aws_pages import PAGES, answer_with_page
from tests.support import (
    TICK_EVENT,
    ClockedContext,
    Context,
    RecordingQueue,
    counts_by_reason,
    emf_documents,
    emitted,
    json_lines,
    sqs_event,
)

CONFIG = """
:config:
  domain: example.com
  check_loop_delay_min: 4
:providers:
  :dummy: {createvm_max_time: 30, boot_time: 10}
:pools:
  - {name: debian, size: 2, provider: dummy}
  - {name: centos, size: 1, provider: dummy}
"""


@pytest.fixture
def services(redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch) -> Iterator[Services]:
    services = Services(parse(CONFIG), redis_client, clock=FakeClock(), prefix="queuetest:")
    monkeypatch.setattr(app, "_services", services)
    monkeypatch.setattr(app, "_config", None)
    yield services


@pytest.fixture
def queue(monkeypatch: pytest.MonkeyPatch) -> RecordingQueue:
    recording = RecordingQueue()
    monkeypatch.setattr(app, "_queue", recording)
    return recording


def test_a_checkout_puts_its_pool_on_the_reconcile_queue(services: Services, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    with mock_aws():
        sqs = boto3.client("sqs")
        queue_url = sqs.create_queue(QueueName="vmpool-dev-reconcile")["QueueUrl"]
        services.refill = SqsRefill(queue_url, client_factory=lambda: sqs)
        run_pool(services, "debian")
        services.clock.advance(60)
        run_pool(services, "debian")
        status, _, body = Gateway(app.app)("POST", "/api/v3/vm/debian", {}, b"", "127.0.0.1")
        assert status == 200, body
        messages = sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10)["Messages"]
        assert [json.loads(m["Body"]) for m in messages] == [{"delay": 0, "pool": "debian", "reason": "nudge"}]


@pytest.mark.parametrize("page", ["200-html", "502-html"])
def test_a_checkout_whose_nudge_meets_a_page_succeeds_and_the_lost_nudge_is_counted(
        page: str, services: Services, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
        log_output: io.StringIO) -> None:
    """SQS answering the API's refill nudge with a proxy's page: the checkout succeeds, the
    nudge is logged with its code and counted (``AwsCallFailures``). Before, a page with status
    200 was taken for a sent nudge and any other failure was a warning no metric showed."""
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    with mock_aws():
        sqs = boto3.client("sqs")
        queue_url = sqs.create_queue(QueueName="vmpool-dev-reconcile")["QueueUrl"]
        answer_with_page(sqs, *PAGES[page])
        services.refill = SqsRefill(queue_url, client_factory=lambda: sqs)
        run_pool(services, "debian")
        services.clock.advance(60)
        run_pool(services, "debian")
        capsys.readouterr()
        status, _, body = Gateway(app.app)("POST", "/api/v3/vm/debian", {}, b"", "127.0.0.1")
    assert status == 200, body
    assert emitted(emf_documents(capsys.readouterr().out))[("AwsCallFailures", ("service",))] == [1.0]
    (line,) = [line for line in json_lines(log_output.getvalue()) if line["message"].startswith("refill request")]
    assert line["level"] == "WARNING" and line["codes"] == ["UnreadableAnswer" if page.startswith("200") else "502"]


class RecordingSqs:
    """An SQS client that takes every message and remembers what it was sent."""

    def __init__(self) -> None:
        self.entries: list[dict[str, Any]] = []

    def send_message_batch(self, QueueUrl: str, Entries: list[dict[str, Any]]) -> dict[str, Any]:
        self.entries.extend(Entries)
        return {"Successful": [{"Id": entry["Id"]} for entry in Entries], "Failed": []}


def test_a_loop_of_on_demand_requests_puts_their_pool_on_the_queue_twice_a_second_at_most(
        services: Services) -> None:
    # Before, every create and every delete sent its pool to the reconcile queue: a client
    # opening and deleting requests in a loop started two reconcile functions per loop (each a
    # pass reading the provider's inventory once the pool's lease was free), as fast as it went.
    sqs = RecordingSqs()
    services.refill = SqsRefill("https://sqs.example/q", client_factory=lambda: sqs, store=services.store,
                                clock=services.clock)
    gateway = Gateway(app.app)
    services.clock.advance(0.25)
    for loop in range(50):
        status, _, body = gateway("POST", "/api/v3/ondemandvm/debian", {}, b"", f"2001:db8:5:{loop:x}::1")
        assert status == 201, body
        request_id = json.loads(body)["request_id"]
        assert gateway("DELETE", f"/api/v3/ondemandvm/{request_id}", {}, b"", f"2001:db8:5:{loop:x}::1")[0] == 200
    sent = [(json.loads(entry["MessageBody"]), entry["DelaySeconds"]) for entry in sqs.entries]
    # One at once, one when the second ends: that pass sees every change of the second.
    assert sent == [({"delay": 0, "pool": "debian", "reason": "nudge"}, 0),
                    ({"delay": 1, "pool": "debian", "reason": "nudge"}, 1)]
    services.clock.advance(1)
    assert gateway("POST", "/api/v3/ondemandvm/centos", {}, b"", "203.0.113.9")[0] == 201
    assert gateway("POST", "/api/v3/ondemandvm/debian", {}, b"", "203.0.113.9")[0] == 201
    assert [(json.loads(entry["MessageBody"])["pool"], entry["DelaySeconds"]) for entry in sqs.entries[2:]] == [
        ("centos", 0), ("debian", 0)]  # a new second, and another pool, are nudged at once


def test_the_consumer_reconciles_each_pool_and_drops_what_is_not_ours(services: Services,
                                                                       queue: RecordingQueue) -> None:
    answer = app.reconcile(sqs_event('{"pool": "debian"}', "not json", '{"pool": "nosuchpool"}', "[1]",
                                     '{"pool": "centos", "reason": "tick"}'), Context())

    assert answer == {"batchItemFailures": []}
    counts = services.store.counts(["debian", "centos", "nosuchpool"])
    assert (counts["debian"]["pending"], counts["centos"]["pending"], counts["nosuchpool"]["pending"]) == (2, 1, 0)
    # Clones in flight: each pool is queued again after its check delay, instead of a waiting Lambda.
    assert sorted((m.pool, m.reason, delay) for m, delay in queue.sent) == [
        ("centos", FOLLOWUP, 0.25), ("debian", FOLLOWUP, 0.25)]  # clones running: clone_poll_interval


def test_a_poison_message_is_dropped_alone_and_the_rest_of_its_batch_reconciled(
        services: Services, queue: RecordingQueue, capsys: pytest.CaptureFixture[str],
        caplog: pytest.LogCaptureFixture) -> None:
    """Bodies no sender of ours writes (SQS carries up to 256 KB): nested past the JSON parser's
    depth (it raised, and the whole batch went back to the queue), a 256 KB pool name (logged
    whole), 256 KB of text. Each is dropped; the batch's real message is reconciled."""
    answer = app.reconcile(sqs_event("[" * 5000, json.dumps({"pool": "p" * 256_000}), "x" * 262_144,
                                     '{"pool": "debian"}'), Context())

    assert answer == {"batchItemFailures": []}
    assert services.store.counts(["debian"])["debian"]["pending"] == 2
    assert max(len(line) for line in capsys.readouterr().out.splitlines()) < 4096
    # Said, by id (never the body): before, a message no pool's vanished without a log line.
    [warning] = [record for record in caplog.records if record.getMessage().startswith("messages that are no pool")]
    assert (warning.levelname, vars(warning)["dropped"], vars(warning)["ids"]) == ("WARNING", 3, ["m0", "m1", "m2"])


def test_one_follow_up_per_pool_however_many_passes_run(services: Services, queue: RecordingQueue) -> None:
    app.reconcile(sqs_event('{"pool": "debian", "reason": "tick"}'), Context())
    app.reconcile(sqs_event('{"pool": "debian", "reason": "nudge"}'), Context())  # a checkout meanwhile
    assert [(m.pool, m.reason) for m, _ in queue.sent] == [("debian", FOLLOWUP)]

    app.reconcile(sqs_event(queue.sent[0][0].body()), Context())  # the follow-up arrives: still busy
    assert [(m.pool, m.reason) for m, _ in queue.sent] == [("debian", FOLLOWUP)] * 2


def test_a_slow_pool_does_not_hold_up_the_batch_and_is_reported_alone(services: Services, queue: RecordingQueue,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """vCenter hangs for one pool: the consumer still returns inside its time, the other pool
    is reconciled, and only the slow pool's message goes back to the queue."""
    provider = services.provider("dummy")
    list_vms = provider.list_vms
    release = threading.Event()

    def hanging_for_debian(pool: Any) -> Any:
        if pool.name == "debian":
            release.wait(30)
        return list_vms(pool)

    monkeypatch.setattr(provider, "list_vms", hanging_for_debian)
    # Time for the passes to start their steps (PASS_STOP_SECONDS) and half a second more: the
    # consumer keeps SAFETY_SECONDS back, so it waits 2.5 s for the batch.
    remaining_ms = int((PASS_STOP_SECONDS + 0.5) * 1000)
    given_up: list[Future[Any]] = []
    try:
        answer = app.reconcile(sqs_event('{"pool": "debian"}', '{"pool": "centos"}'), Context(remaining_ms))
        given_up = [future for future in dispatch._given_up if not future.done()]
    finally:
        release.set()
    # The pass the consumer gave up on goes on in its thread once released, and writes to Redis:
    # it ends in this test. On a loaded machine it ended in the next one, after that test's
    # FLUSHALL, and the follow-up it claimed kept that test's passes from queueing theirs.
    futures.wait(given_up, timeout=30)

    assert answer == {"batchItemFailures": [{"itemIdentifier": "m0"}]}
    assert services.store.counts(["centos"])["centos"]["pending"] == 1


def test_a_failing_pool_is_retried_soon_and_does_not_fail_the_batch(services: Services, queue: RecordingQueue,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    from chalicelib.providers.base import ProviderError

    provider = services.provider("dummy")

    def broken_for_debian(read: Any) -> Any:
        def inventory(pool: Any, *args: Any) -> Any:
            if pool.name == "debian":
                raise ProviderError("vCenter: permission denied")
            return read(pool, *args)

        return inventory

    # Whichever way the pass reads the inventory: whole, or only what changed since a pass
    # before (the pool's mark in Redis may be left by an earlier test).
    monkeypatch.setattr(provider, "list_vms", broken_for_debian(provider.list_vms))
    monkeypatch.setattr(provider, "find_vms", broken_for_debian(provider.find_vms))

    answer = app.reconcile(sqs_event('{"pool": "debian"}', '{"pool": "centos"}'), Context())

    assert answer == {"batchItemFailures": []}  # handled: a retry is queued, not a redelivery
    assert ("debian", "retry", 2.0) in [(m.pool, m.reason, d) for m, d in queue.sent]
    assert services.store.counts(["centos"])["centos"]["pending"] == 1


class SqsAtScale:
    """SQS behind the tick's queue, recording every entry it accepted: moto's (which checks each
    request as SQS would, slowly: 20 s for 1,000 delayed messages) or, with ``sqs`` None, one
    that takes every entry; ``turn_down`` decides, per entry and call, which ones SQS answers as
    throttled (moto cannot throttle); ``fail`` the exception, if any, a whole call raises as
    botocore does (a timeout, a throttled request), per batch of entries and call."""

    def __init__(self, sqs: Any | None,
                 turn_down: Callable[[dict[str, Any], int], bool] = lambda entry, call: False,
                 fail: Callable[[list[dict[str, Any]], int], Exception | None] = lambda entries, call: None) -> None:
        self.sqs = sqs
        self.url = (sqs.create_queue(QueueName="vmpool-dev-reconcile")["QueueUrl"] if sqs is not None
                    else "https://sqs.us-east-1.amazonaws.com/123456789012/vmpool-dev-reconcile")
        self.turn_down = turn_down
        self.fail = fail
        self.accepted: list[dict[str, Any]] = []
        self.calls = 0
        self.pauses: list[float] = []
        self._lock = threading.Lock()

    def send_message_batch(self, QueueUrl: str, Entries: list[dict[str, Any]]) -> dict[str, Any]:
        with self._lock:
            self.calls += 1
            call = self.calls
        failure = self.fail(Entries, call)
        if failure is not None:
            raise failure
        throttled = [entry for entry in Entries if self.turn_down(entry, call)]
        passed = [entry for entry in Entries if entry not in throttled]
        answer: dict[str, Any] = {"Successful": [{"Id": entry["Id"]} for entry in passed]}
        if self.sqs is not None and passed:
            answer = self.sqs.send_message_batch(QueueUrl=QueueUrl, Entries=passed)
        assert not answer.get("Failed"), answer  # moto checks each entry as SQS would
        with self._lock:
            self.accepted.extend(passed)
        return {"Successful": answer.get("Successful", []),
                "Failed": [{"Id": entry["Id"], "SenderFault": False, "Code": "RequestThrottled"}
                           for entry in throttled]}

    def queue(self) -> SqsPoolQueue:
        budget = MOTO_SEND_SECONDS if self.sqs is not None else SEND_BUDGET_SECONDS
        return SqsPoolQueue(self.url, client_factory=lambda: self, pause=self.pauses.append, budget_seconds=budget)

    def pools(self) -> list[str]:
        return sorted(json.loads(entry["MessageBody"])["pool"] for entry in self.accepted)


MOTO_SEND_SECONDS = SEND_BUDGET_SECONDS * 20
"""moto takes 20 s for the 100 calls SQS answers in about one (more on a loaded machine): a send
budget to match."""


def tick_with_time_for_moto(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """``app.tick`` given the time moto needs (the tick's send takes its time from the
    invocation's, at most ``TICK_SEND_MAX_SECONDS``)."""
    monkeypatch.setattr(dispatch, "TICK_SEND_MAX_SECONDS", MOTO_SEND_SECONDS)
    seconds = MOTO_SEND_SECONDS + AWS_CALL_BOUND_SECONDS + TICK_AFTER_SEND_SECONDS
    return app.tick(TICK_EVENT, Context(remaining_ms=int(seconds * 1000)))


@pytest.fixture
def thousand_pools(services: Services, monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    pools = "\n".join(f"  - {{name: p{n:04d}, size: 1, provider: dummy}}" for n in range(1000))
    services.use_config(parse(":providers:\n  :dummy: {}\n:pools:\n" + pools))
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    with mock_aws():
        yield [f"p{n:04d}" for n in range(1000)]


def test_the_tick_fans_out_one_message_per_pool_spread_over_the_minute(thousand_pools: list[str],
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    sqs = SqsAtScale(boto3.client("sqs"))
    monkeypatch.setattr(app, "_queue", sqs.queue())

    answer = tick_with_time_for_moto(monkeypatch)

    assert answer == {"pools": 1000, "draining": [], "messages": 1000, "not_queued": []}
    assert sqs.pools() == thousand_pools
    delays = [entry["DelaySeconds"] for entry in sqs.accepted]
    assert min(delays) == 0 and max(delays) < 60
    assert max(delays.count(second) for second in set(delays)) < 60  # spread: not 1,000 in one second
    assert sqs.calls == 100  # batches of 10


def test_a_tick_partly_throttled_by_sqs_still_queues_every_pool_once(thousand_pools: list[str],
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """SQS turns down every third entry of each batch on its first two tries: before, the
    tick raised at the first refused batch and those pools waited for a later tick."""
    attempts: dict[str, int] = {}

    def throttled(entry: dict[str, Any], call: int) -> bool:
        pool = json.loads(entry["MessageBody"])["pool"]
        attempts[pool] = attempts.get(pool, 0) + 1
        return int(pool[1:]) % 3 == 0 and attempts[pool] <= 2

    sqs = SqsAtScale(None, throttled)
    monkeypatch.setattr(app, "_queue", sqs.queue())

    answer = app.tick(TICK_EVENT, Context())

    assert answer["messages"] == 1000
    assert sqs.pools() == thousand_pools  # each once: the accepted ones were not sent again
    assert sum(sqs.pauses) / 100 < 0.5  # each batch paused under half a second in all: inside the tick's 30 s


def _pools_of(entries: list[dict[str, Any]]) -> set[str]:
    return {json.loads(entry["MessageBody"])["pool"] for entry in entries}


def test_a_pool_sqs_keeps_refusing_is_reported_by_name_and_the_tick_does_the_rest(
        thousand_pools: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
        log_output: io.StringIO) -> None:
    """The tick names the pool (its log line and answer) and counts it (``PoolsNotQueued``, the
    alarm's metric); every other pool is queued and the tick's other work done. Before, it raised
    before its running count and gauges."""
    sqs = SqsAtScale(None, lambda entry, call: '"p0042"' in entry["MessageBody"])
    monkeypatch.setattr(app, "_queue", sqs.queue())
    capsys.readouterr()

    answer = app.tick(TICK_EVENT, Context())

    assert (answer["messages"], answer["not_queued"]) == (999, ["p0042"])
    assert sqs.pools() == [pool for pool in thousand_pools if pool != "p0042"]
    metrics = emitted(emf_documents(capsys.readouterr().out))
    assert metrics[("PoolsNotQueued", ("service",))] == [1.0]
    assert metrics[("Capacity", ("service",))] == [1000.0]  # the gauges were published
    (line,) = [line for line in json_lines(log_output.getvalue()) if line["message"].startswith("pools not queued")]
    assert (line["not_queued"], line["codes"], line["level"]) == (["p0042"], ["RequestThrottled"], "ERROR")


def test_a_batch_whose_call_times_out_or_is_throttled_is_sent_again_and_the_batches_after_it_are_sent(
        thousand_pools: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """``SendMessageBatch`` raising (botocore's read timeout after its own retries, a throttled
    request) for one batch on its first tries: before, the exception left the tick (no pool of
    that batch queued, no running count, no gauges). The batch is sent again; SQS (moto) took
    one message per pool."""
    def fail(entries: list[dict[str, Any]], call: int) -> Exception | None:
        pools = _pools_of(entries)
        attempts[frozenset(pools)] = attempts.get(frozenset(pools), 0) + 1
        if "p0042" in pools and attempts[frozenset(pools)] <= 2:
            return ReadTimeoutError(endpoint_url="https://sqs.us-east-1.amazonaws.com/")
        if "p0500" in pools and attempts[frozenset(pools)] == 1:
            return ClientError({"Error": {"Code": "RequestThrottled", "Message": "slow down"}}, "SendMessageBatch")
        return None

    attempts: dict[frozenset[str], int] = {}
    sqs = SqsAtScale(boto3.client("sqs"), fail=fail)
    monkeypatch.setattr(app, "_queue", sqs.queue())

    answer = tick_with_time_for_moto(monkeypatch)

    assert (answer["messages"], answer["not_queued"]) == (1000, [])
    assert sqs.pools() == thousand_pools  # each once, as moto took it


def test_a_batch_sqs_never_answers_is_reported_and_the_send_ends_within_its_time(
        thousand_pools: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """SQS that never answers one batch (each call times out after botocore's 7 s): the other
    batches are queued, the batch's pools reported with the failure."""
    timeout = ReadTimeoutError(endpoint_url="https://sqs.us-east-1.amazonaws.com/")
    sqs = SqsAtScale(None, fail=lambda entries, call: timeout if "p0042" in _pools_of(entries) else None)
    queue = sqs.queue()

    with pytest.raises(QueueRefused) as refused:
        queue.send([(PoolMessage(pool, TICK), 0) for pool in thousand_pools])

    assert sorted(refused.value.refused) == [(f"p00{n}", "ReadTimeoutError") for n in range(40, 50)]
    assert sqs.pools() == [pool for pool in thousand_pools if not pool.startswith("p004")]


def test_a_send_to_an_sqs_that_never_answers_stops_trying_within_its_budget(thousand_pools: list[str]) -> None:
    """Every call times out (7 s each, on a fake clock): the send stops starting calls after its
    budget and reports every pool, tried or not, instead of running past the tick's 30 s
    (100 batches of 4 tries, 8 at a time, would take 350 s)."""
    now = [0.0]

    def never_answers(entries: list[dict[str, Any]], call: int) -> Exception:
        now[0] += AWS_CALL_BOUND_SECONDS
        return ReadTimeoutError(endpoint_url="https://sqs.us-east-1.amazonaws.com/")

    sqs = SqsAtScale(None, fail=never_answers)
    queue = SqsPoolQueue(sqs.url, client_factory=lambda: sqs, threads=1, pause=sqs.pauses.append,
                         monotonic=lambda: now[0] + sum(sqs.pauses))

    with pytest.raises(QueueRefused) as refused:
        queue.send([(PoolMessage(pool, TICK), 0) for pool in thousand_pools])

    assert sorted(pool for pool, _ in refused.value.refused) == thousand_pools
    codes = {code for _, code in refused.value.refused}
    assert codes == {"ReadTimeoutError", NOT_SENT}
    assert now[0] + sum(sqs.pauses) <= SEND_BUDGET_SECONDS + AWS_CALL_BOUND_SECONDS
    assert sqs.calls == 2


def _tick_queue(sqs: SqsAtScale, clock: FakeClock) -> SqsPoolQueue:
    """The tick's queue on the fake clock: one call at a time, each pause a move of the clock."""
    return SqsPoolQueue(sqs.url, client_factory=lambda: sqs, threads=1, pause=clock.advance,
                        monotonic=clock.monotonic)


def test_a_tick_with_a_short_timeout_stops_sending_in_time_for_the_rest_of_its_work(
        thousand_pools: list[str], services: Services, monkeypatch: pytest.MonkeyPatch) -> None:
    """SQS never answers (each call times out after 7 s) and the tick function has 14 s: before,
    its send tried for a fixed 10 s, the last call ending 14 s in, and Lambda killed the tick
    there (no running count, no gauges, and EventBridge's retry of the failed tick sent every
    pool again). The send's time now comes from the invocation's: it stops in time for the
    rest of the tick, which reports the pools it did not queue."""
    clock = services.clock
    assert isinstance(clock, FakeClock)

    def never_answers(entries: list[dict[str, Any]], call: int) -> Exception:
        clock.advance(AWS_CALL_BOUND_SECONDS)
        return ReadTimeoutError(endpoint_url="https://sqs.us-east-1.amazonaws.com/")

    sqs = SqsAtScale(None, fail=never_answers)
    monkeypatch.setattr(app, "_queue", _tick_queue(sqs, clock))
    context = ClockedContext(clock, timeout=14)

    answer = app.tick(TICK_EVENT, context)

    assert context.get_remaining_time_in_millis() >= TICK_AFTER_SEND_SECONDS * 1000
    assert answer["messages"] == 0 and answer["not_queued"] == thousand_pools[:100]


def test_a_tick_with_time_to_spare_queues_every_pool_through_a_slow_sqs(
        thousand_pools: list[str], services: Services, monkeypatch: pytest.MonkeyPatch) -> None:
    """SQS answers each call in 150 ms, one call at a time: the 1,000 pools' 100 calls take 15 s,
    inside the tick's 30 s. Before, the send gave up after a fixed 10 s and a third of the pools
    waited for the next tick (which gave up on the same ones)."""
    clock = services.clock
    assert isinstance(clock, FakeClock)

    def slow(entries: list[dict[str, Any]], call: int) -> None:
        clock.advance(0.15)

    sqs = SqsAtScale(None, fail=slow)
    monkeypatch.setattr(app, "_queue", _tick_queue(sqs, clock))
    context = ClockedContext(clock, timeout=30)

    answer = app.tick(TICK_EVENT, context)

    assert (answer["messages"], answer["not_queued"]) == (1000, [])
    assert sqs.pools() == thousand_pools
    assert context.get_remaining_time_in_millis() >= TICK_AFTER_SEND_SECONDS * 1000


def test_ticks_through_an_sqs_too_slow_for_every_pool_take_turns_at_the_pools_left_out(
        thousand_pools: list[str], services: Services, monkeypatch: pytest.MonkeyPatch) -> None:
    """SQS answers each call in 0.5 s, one at a time: a 30 s tick sends about a third of 1,000
    pools before its send's time runs out. Each tick went through the pools in config order, so
    every tick sent the same first third and left the same two thirds (and any pool draining) off
    the queue for as long as SQS stayed slow, its error line saying the next tick would send
    them. Each tick now starts at the first pool the one before left out: three ticks send every
    pool."""
    clock = services.clock
    assert isinstance(clock, FakeClock)

    def slow(entries: list[dict[str, Any]], call: int) -> None:
        clock.advance(0.5)

    sqs = SqsAtScale(None, fail=slow)
    monkeypatch.setattr(app, "_queue", _tick_queue(sqs, clock))
    monkeypatch.setattr(app, "_ticker", None)
    sent_by_tick = []
    for _ in range(3):
        sqs.accepted.clear()
        answer = app.tick(TICK_EVENT, ClockedContext(clock, timeout=30))
        assert 0 < answer["messages"] < 500 and answer["not_queued"], answer  # the rest waits for the next tick
        sent_by_tick.append(set(sqs.pools()))
        clock.advance(60 - clock.monotonic() % 60)
    assert sent_by_tick[0].isdisjoint(sent_by_tick[1])
    assert set().union(*sent_by_tick) == set(thousand_pools)


def test_the_ticks_send_time_is_bounded_whatever_the_functions_timeout() -> None:
    """A tick given 15 minutes never sends into the next tick's minute; one given too little to
    wait for a call's end starts none."""
    assert tick_send_budget(900) == TICK_SEND_MAX_SECONDS < 60
    assert tick_send_budget(AWS_CALL_BOUND_SECONDS + TICK_AFTER_SEND_SECONDS) == 0
    assert tick_send_budget(-1) == 0
    assert tick_send_budget(30) == 30 - AWS_CALL_BOUND_SECONDS - TICK_AFTER_SEND_SECONDS


def test_a_bug_in_the_send_is_not_taken_for_an_sqs_failure() -> None:
    """Only AWS failures are retried and reported as refusals; anything else is ours and raised."""
    sqs = SqsAtScale(None, fail=lambda entries, call: TypeError("a bug"))
    with pytest.raises(TypeError):
        sqs.queue().send([(PoolMessage("a", TICK), 0)])
    assert sqs.calls == 1


def test_a_pool_removed_from_the_config_drains_and_is_forgotten(services: Services) -> None:
    """As vmpooler's purge: the removed pool's VMs are destroyed, never one in use; once it has
    none left the tick forgets it."""
    queue = RecordingQueue()
    ticker = Ticker()
    clock = services.clock
    assert isinstance(clock, FakeClock)
    removed = services.config.pool("centos")
    in_use = _fill_and_check_out_centos(services, queue, ticker)

    # Its last pass left VMs waiting on DNS, and no pass of it manages records any more (its
    # DNS entry left the config with it): the flag GET /status shows goes with the pool.
    services.client.hset(services.store.keys.dns_waiting, "centos", "1\nDNS record not created: refused")
    services.use_config(parse(CONFIG.replace("  - {name: centos, size: 1, provider: dummy}\n", "")))
    _tick_drains(services, queue, ticker, "centos")
    counts = services.store.counts(["centos"])["centos"]
    assert (counts["ready"], counts["pending"], counts["running"]) == (0, 0, 1)  # the VM in use stays
    assert [vm.name for vm in services.provider("dummy").list_vms(removed)] == [in_use]

    status, _, body = Gateway(app.app)("DELETE", f"/api/v3/vm/{in_use}", {}, b"", "127.0.0.1")
    assert status == 200, body  # its user returns it
    for _ in range(3):
        look_at(services, PoolMessage("centos", DRAIN), queue)
        clock.advance(60)
    assert services.provider("dummy").list_vms(removed) == []
    queue.sent.clear()
    ticker.tick(services, queue)
    assert [m.pool for m, _ in queue.sent] == ["debian"]  # drained and forgotten
    # Nothing of it stays in Redis for good (before: its marks and its fields of the service's
    # hashes, one set per pool ever removed), but the overrides vmpooler keeps too and what expires.
    client, keys = services.client, services.store.keys
    kept = [key for key in client.keys(f"{keys.prefix}*centos*")
            if client.ttl(key) < 0 and ":dummy:" not in key]  # the dummy's own folder marks aside
    assert kept == []
    for fields in (keys.clone_backoff, keys.last_boot, keys.sizing_state, keys.known_pools, keys.dns_waiting):
        assert not client.hexists(fields, "centos"), fields
    for scored in (keys.clone_demand, keys.clone_demand_renewed):
        assert client.zscore(scored, "centos") is None, scored


def test_a_vm_returned_to_a_removed_pool_is_destroyed_by_the_drain_its_return_queues(
        services: Services, queue: RecordingQueue) -> None:
    """The API's nudge for a returned VM of a pool its config no longer has was a ``nudge``, which
    the consumer drops for a pool it does not configure (its sender had it configured: the
    consumer is a push behind): the VM waited for the next tick's drain, up to a minute, where a
    configured pool's returned VM is destroyed at once. The API asks for the pool's drain now."""
    clock = services.clock
    assert isinstance(clock, FakeClock)
    ticker = Ticker()
    in_use = _fill_and_check_out_centos(services, queue, ticker)
    removed = services.config.pool("centos")
    services.use_config(parse(CONFIG.replace("  - {name: centos, size: 1, provider: dummy}\n", "")))
    _tick_drains(services, queue, ticker, "centos")
    assert [vm.name for vm in services.provider("dummy").list_vms(removed)] == [in_use]

    sqs = RecordingSqs()
    services.refill = SqsRefill("https://sqs.example/q", client_factory=lambda: sqs, store=services.store,
                                clock=services.clock, configured=services.configures)
    status, _, body = Gateway(app.app)("DELETE", f"/api/v3/vm/{in_use}", {}, b"", "127.0.0.1")
    assert status == 200, body
    assert [json.loads(entry["MessageBody"]) for entry in sqs.entries] == [
        {"delay": 0, "pool": "centos", "reason": DRAIN}]
    assert app.reconcile(sqs_event(sqs.entries[0]["MessageBody"]), Context()) == {"batchItemFailures": []}
    record = services.store.get_vm(in_use)
    assert record is not None and record.destroy_task  # its destroy started by the return's own message


@pytest.mark.parametrize("order", ["tick first", "drain first"])
def test_a_stale_tick_in_the_batch_of_a_drain_does_not_skip_the_drain(services: Services, queue: RecordingQueue,
                                                                      order: str) -> None:
    """A tick queued the pool's look (spread over the minute) just before the pool left the
    config; the next tick queued its drain; SQS handed both in one batch. The batch ran one of
    them for the pool, the first: a tick for a pool not configured is dropped (a consumer a push
    behind must not drain a pool just added), and the drain waited for the next tick's."""
    clock = services.clock
    assert isinstance(clock, FakeClock)
    for _ in range(4):  # centos full
        look_at(services, PoolMessage("centos", TICK), RecordingQueue())
        clock.advance(60)
    Ticker().tick(services, RecordingQueue())  # centos known to the fleet
    assert services.store.counts(["centos"])["centos"]["ready"] == 1
    services.use_config(parse(CONFIG.replace("  - {name: centos, size: 1, provider: dummy}\n", "")))
    bodies = [PoolMessage("centos", TICK).body(), PoolMessage("centos", DRAIN).body()]
    answer = app.reconcile(sqs_event(*(bodies if order == "tick first" else bodies[::-1])), Context())
    assert answer == {"batchItemFailures": []}
    assert services.store.counts(["centos"])["centos"]["ready"] == 0  # drained


def test_a_tick_deletes_the_clone_demands_the_previous_release_kept(services: Services) -> None:
    """The previous release kept the pools' clone demands in a hash nothing reads any more: the
    first tick of a new deployment deletes it, rather than leave one field per pool for good."""
    keys = services.store.keys
    services.client.hset(keys.clone_demand_before, mapping={"centos": "5 100.0", "gone": "3 90.0"})
    Ticker().tick(services, RecordingQueue())
    assert not services.client.exists(keys.clone_demand_before)


NO_DUMMY = ":providers:\n  :other: {provider_class: dummy}\n:pools:\n  - {name: debian, size: 2, provider: other}\n"
"""The config once centos and its provider, dummy, are both removed."""


def _given_up_lines(caplog: pytest.LogCaptureFixture, start: str) -> list[logging.LogRecord]:
    return [record for record in caplog.records if record.getMessage().startswith(start)]


def test_a_removed_pool_whose_provider_is_gone_gives_its_vms_up_after_a_grace_never_one_in_use(
        services: Services, queue: RecordingQueue, caplog: pytest.LogCaptureFixture) -> None:
    """A pool removed with its provider cannot drain: nothing can destroy its VMs. Before, each
    tick's drain logged an error and left it: the pool stayed known for good, its VMs' records
    stayed (counted, the one in use against max_running_vms, for ever once returned). Now it is
    said once; past the grace the records of its VMs not in use go (their machines left on the
    hypervisor, named in a warning), the one in use stays its user's until returned, and the pool
    is forgotten once it holds none."""
    clock = services.clock
    assert isinstance(clock, FakeClock)
    with_dummy = Services(services.config, services.client, clock=clock, prefix=services.store.keys.prefix)
    removed = services.config.pool("centos")
    services.use_config(parse(CONFIG.replace("size: 1, provider: dummy", "size: 2, provider: dummy")))
    for _ in range(4):  # centos full: two ready VMs
        look_at(services, PoolMessage("centos", TICK), queue)
        clock.advance(60)
    Ticker().tick(services, queue)  # both pools known
    status, _, body = Gateway(app.app)("POST", "/api/v3/vm/centos", {}, b"", "127.0.0.1")
    assert status == 200, body
    in_use = json.loads(body)["centos"]["hostname"].split(".")[0]
    (spare,) = services.store.hostnames("centos", "ready")
    services.use_config(parse(NO_DUMMY))

    with caplog.at_level("INFO", logger="vmpool"):
        for _ in range(3):  # three ticks within the grace: said once, nothing given up
            assert look_at(services, PoolMessage("centos", DRAIN), queue) is None
            clock.advance(60)
        assert len(_given_up_lines(caplog, "removed pool cannot drain")) == 1
        warned = _given_up_lines(caplog, "removed pool cannot drain")[0]
        assert warned.levelname == "WARNING" and warned.__dict__["vms"] == 2
        assert services.store.counts(["centos"])["centos"]["ready"] == 1

        clock.advance(PROVIDERLESS_GRACE_SECONDS)
        look_at(services, PoolMessage("centos", DRAIN), queue)
        counts = services.store.counts(["centos"])["centos"]
        assert (counts["ready"], counts["running"]) == (0, 1)  # the VM in use stays its user's
        (given_up,) = _given_up_lines(caplog, "VMs of a removed pool whose provider is gone given up")
        assert given_up.__dict__["hostnames"] == [spare] and given_up.__dict__["in_use"] == 1
        status, _, body = Gateway(app.app)("GET", f"/api/v3/vm/{in_use}", {}, b"", "127.0.0.1")
        assert status == 200 and json.loads(body)[in_use]["state"] == "running", body
        look_at(services, PoolMessage("centos", DRAIN), queue)  # the next tick: nothing more to say
        assert len(_given_up_lines(caplog, "VMs of a removed pool")) == 1
        assert "centos" in Fleet(services.store).names()

        status, _, body = Gateway(app.app)("DELETE", f"/api/v3/vm/{in_use}", {}, b"", "127.0.0.1")
        assert status == 200, body  # its user returns it
        look_at(services, PoolMessage("centos", DRAIN), queue)
    assert services.store.counts(["centos"])["centos"] == {state: 0 for state in STATES}
    assert "centos" not in Fleet(services.store).names()  # forgotten: the tick queues it no more
    assert services.store.recount_running(["debian"], clock.now()).running == 0
    # Nothing could destroy the machines: they are still there, as the warnings say.
    assert sorted(vm.name for vm in with_dummy.provider("dummy").list_vms(removed)) == sorted([spare, in_use])


def test_a_removed_pool_whose_provider_comes_back_within_the_grace_drains(
        services: Services, queue: RecordingQueue) -> None:
    """A push that removed the provider with the pool by mistake, put right within the grace:
    the drain destroys the pool's VMs as any drain does, nothing is given up."""
    clock = services.clock
    assert isinstance(clock, FakeClock)
    _fill_and_remove(services, queue, "  - {name: centos, size: 1, provider: dummy}\n")
    without_centos = services.config
    removed = Fleet(services.store).settings("centos")
    assert removed is not None
    services.use_config(parse(NO_DUMMY))
    assert look_at(services, PoolMessage("centos", DRAIN), queue) is None
    clock.advance(PROVIDERLESS_GRACE_SECONDS / 2)
    services.use_config(without_centos)  # the provider back
    _drain(services, queue)
    assert services.store.counts(["centos"])["centos"] == {state: 0 for state in STATES}
    assert services.provider("dummy").list_vms(removed) == []  # destroyed, not left
    assert "centos" not in Fleet(services.store).names()


def test_sqs_delays_are_whole_seconds_and_a_short_check_delay_never_becomes_zero() -> None:
    class Client:
        def __init__(self) -> None:
            self.entries: list[dict[str, Any]] = []

        def send_message_batch(self, QueueUrl: str, Entries: list[dict[str, Any]]) -> dict[str, Any]:
            self.entries.extend(Entries)
            return {"Successful": Entries}

    client = Client()
    SqsPoolQueue("url", client_factory=lambda: client).send(
        [(PoolMessage("a", FOLLOWUP), 0.2), (PoolMessage("b"), 0.0), (PoolMessage("c", FOLLOWUP), 5.0),
         (PoolMessage("d", FOLLOWUP), 3600.0)])
    assert [e["DelaySeconds"] for e in client.entries] == [1, 0, 5, 900]


def test_an_answer_failing_entries_never_sent_does_not_end_the_send() -> None:
    """An answer that is not SQS's (a proxy, a double) failing ids this queue never gives: the
    entries it does not answer are tried again and reported, not a KeyError ending the tick."""
    class Client:
        def __init__(self) -> None:
            self.calls = 0

        def send_message_batch(self, QueueUrl: str, Entries: list[dict[str, Any]]) -> dict[str, Any]:
            self.calls += 1
            failed = [{"Id": odd, "SenderFault": False, "Code": "Odd"} for odd in ("x", "\u00b2", "99")]
            return {"Successful": [{"Id": "0"}], "Failed": failed}

    client = Client()
    queue = SqsPoolQueue("url", client_factory=lambda: client, pause=lambda seconds: None)
    with pytest.raises(QueueRefused) as refused:
        queue.send([(PoolMessage("a"), 0.0), (PoolMessage("b"), 0.0)])
    assert [pool for pool, _ in refused.value.refused] == ["b"]
    assert client.calls > 1  # "b", never answered, was tried again


def test_queue_messages_round_trip() -> None:
    message = PoolMessage("a-pool", "retry", lease="abc", attempt=2)
    assert PoolMessage.parse(message.body()) == message
    followup = PoolMessage("a-pool", FOLLOWUP, mark="0123abcd")
    assert PoolMessage.parse(followup.body(5)) == followup
    assert PoolMessage.parse('{"pool": "x", "reason": "followup", "mark": 7}') == PoolMessage("x", FOLLOWUP)
    assert PoolMessage.parse('{"pool": "x"}') == PoolMessage("x")
    assert PoolMessage.parse('{"pool": 3}') is None and PoolMessage.parse("nope") is None
    # A retry count below zero would retry a failing pool without end: counted from 0.
    assert PoolMessage.parse('{"pool": "x", "attempt": -1000000}') == PoolMessage("x")


def _fill_and_remove(services: Services, queue: RecordingQueue, removed_block: str, config: str = CONFIG) -> None:
    """Fill both pools, let the tick record them, then push a config without ``removed_block``."""
    clock = services.clock
    assert isinstance(clock, FakeClock)
    services.use_config(parse(config))
    for _ in range(4):
        for pool in ("debian", "centos"):
            look_at(services, PoolMessage(pool, TICK), queue)
        clock.advance(60)
    Ticker().tick(services, queue)
    assert services.store.counts(["centos"])["centos"]["ready"] > 0
    services.use_config(parse(config.replace(removed_block, "")))


def _drain(services: Services, queue: RecordingQueue, passes: int = 4, pool: str = "centos") -> None:
    """``passes`` drain passes of ``pool``, a minute apart."""
    clock = services.clock
    assert isinstance(clock, FakeClock)
    for _ in range(passes):
        look_at(services, PoolMessage(pool, DRAIN), queue)
        clock.advance(60)


def _fill_and_check_out_centos(services: Services, queue: RecordingQueue, ticker: Ticker) -> str:
    """Both pools filled by their passes and a tick, then a centos VM checked out: its hostname."""
    clock = services.clock
    assert isinstance(clock, FakeClock)
    for _ in range(4):
        for pool in ("debian", "centos"):
            look_at(services, PoolMessage(pool, TICK), queue)
        clock.advance(60)
    ticker.tick(services, queue)
    status, _, body = Gateway(app.app)("POST", "/api/v3/vm/centos", {}, b"", "127.0.0.1")
    assert status == 200, body
    return str(json.loads(body)["centos"]["hostname"].split(".")[0])


def _tick_drains(services: Services, queue: RecordingQueue, ticker: Ticker, pool: str, passes: int = 3) -> None:
    """The tick after ``pool`` left the config queues its drain; then ``passes`` drain passes."""
    queue.sent.clear()
    ticker.tick(services, queue)
    assert (PoolMessage(pool, DRAIN), 0) in queue.sent
    _drain(services, queue, passes, pool)


def test_a_removed_pool_drains_whatever_runtime_size_or_template_it_was_given(services: Services) -> None:
    """The overrides an admin set while the pool was configured are not its size any more: the pool
    drains to nothing and is forgotten (before, its size override kept it refilled for ever). They
    stay in Redis, as vmpooler keeps them: a Lambda a push behind may see an added pool as removed."""
    queue = RecordingQueue()
    overrides = PoolOverrides(services.store)
    overrides.set("size", "centos", 3)
    overrides.set("template", "centos", "templates/other")
    _fill_and_remove(services, queue, "  - {name: centos, size: 1, provider: dummy}\n")
    _drain(services, queue)
    assert services.store.counts(["centos"])["centos"] == {state: 0 for state in STATES}
    assert "centos" not in Fleet(services.store).names()
    assert overrides.get("centos").size == 3


def test_a_removed_pool_with_a_sizing_block_drains(services: Services) -> None:
    """Its settings as recorded at the tick carry its sizing block; draining it must not fail on
    it (before, every drain pass raised on the block and the pool's VMs stayed for ever)."""
    queue = RecordingQueue()
    sized = ("  - {name: centos, size: 1, provider: dummy, sizing: {demand: {min: 1, max: 3}, "
             "schedule: [{days: daily, start: '00:00', end: '24:00', size: 2}]}}\n")
    _fill_and_remove(services, queue, sized, CONFIG.replace("  - {name: centos, size: 1, provider: dummy}\n", sized))
    _drain(services, queue)
    assert services.store.counts(["centos"])["centos"] == {state: 0 for state in STATES}
    assert "centos" not in Fleet(services.store).names()


def test_a_pool_added_by_a_push_is_not_drained_or_forgotten_by_a_consumer_a_push_behind(services: Services) -> None:
    """The tick's config has the new pool before a consumer's refresh does (up to 30 s). Before,
    that consumer took the pool's tick message for a removed pool's: it drained it and, the pool
    still empty, forgot it; the tick records its pools once per config, so when the pool was
    later removed nothing drained it and its VMs stayed for ever."""
    queue = RecordingQueue()
    added = CONFIG + "  - {name: fedora, size: 2, provider: dummy}\n"
    ahead = Services(parse(added), services.client, clock=services.clock, prefix=services.store.keys.prefix)
    behind = services  # the old config, without fedora
    ticker = Ticker()
    ticker.tick(ahead, queue)
    assert look_at(behind, PoolMessage("fedora", TICK), queue) is None  # not its pool yet: left alone
    assert "fedora" in Fleet(services.store).names()

    clock = services.clock
    assert isinstance(clock, FakeClock)
    for _ in range(3):
        look_at(ahead, PoolMessage("fedora", TICK), queue)
        clock.advance(60)
    assert services.store.counts(["fedora"])["fedora"]["ready"] == 2
    ahead.use_config(parse(CONFIG))  # removed again
    _tick_drains(ahead, queue, ticker, "fedora")
    assert services.store.counts(["fedora"])["fedora"] == {state: 0 for state in STATES}


def test_the_tick_records_a_configured_pool_it_finds_forgotten(services: Services) -> None:
    """Whatever forgot it (a consumer a push behind, a hand-edited Redis), a configured pool is
    recorded again at the next tick, so it can be drained once removed."""
    queue = RecordingQueue()
    ticker = Ticker()
    ticker.tick(services, queue)
    Fleet(services.store).forget("centos")
    ticker.tick(services, queue)
    assert "centos" in Fleet(services.store).names()


def test_a_function_a_push_behind_leaves_the_pool_to_the_newer_config(services: Services) -> None:
    """Each function reads a push within 30 s, so for a while functions of the old and the new
    config reconcile the same pool. Before, they undid each other's work: the old one drained the
    new template's VMs (pending and ready) and cloned its own, which the new one drained in turn
    (in one minute of overlap, 76 VMs of a pool of 4 taken out of service). Now the older
    function leaves the pool to the newer one (its message comes back later) and records none
    of its pools' settings."""
    template_a = CONFIG.replace("{name: centos, size: 1, provider: dummy}",
                                "{name: centos, size: 3, provider: dummy, template: t/a}")
    old = Services(dataclasses.replace(parse(template_a), generation=100.0), services.client,
                   clock=services.clock, prefix=services.store.keys.prefix)
    new = Services(dataclasses.replace(parse(template_a.replace("t/a", "t/b")), generation=200.0),
                   services.client, clock=services.clock, prefix=services.store.keys.prefix)
    clock = services.clock
    assert isinstance(clock, FakeClock)
    queue = RecordingQueue()
    for _ in range(4):  # the old config alone: the pool fills
        look_at(old, PoolMessage("centos", TICK), queue)
        clock.advance(31)
    first = set(services.store.hostnames("centos", "ready"))
    assert len(first) == 3

    for _ in range(8):  # the push: both configs at once
        for functions_config in (new, old):
            queue.sent.clear()
            report = look_at(functions_config, PoolMessage("centos", TICK), queue)
            if functions_config is old:
                assert report is None
                assert [(m.pool, m.reason) for m, _ in queue.sent] == [("centos", "retry")]
            clock.advance(4)
        for ticking in (new, old):
            Ticker().tick(ticking, queue)
    settings = Fleet(services.store).settings("centos")
    assert settings is not None and settings.template == "t/b"  # as the newer config has it

    records = [services.store.get_vm(key.split("vm:", 1)[1])
               for key in services.client.keys(services.store.keys.vm("*"))]
    by_state: dict[str, set[tuple[str, str]]] = {}
    for record in records:
        assert record is not None
        by_state.setdefault(record.state, set()).add((record.name, record.template))
    assert {template for _, template in by_state["ready"]} == {"t/b"} and len(by_state["ready"]) == 3
    gone = by_state.get("completed", set()) | by_state.get("destroyed", set())
    assert gone == {(host, "t/a") for host in first}  # only the old template's VMs went, once


def _two_generations(services: Services) -> tuple[FakeClock, RecordingQueue, Services, Services]:
    """The services' fake clock, a queue, and two functions on the same Redis running the same
    config at generations 200 (newer) and 100 (older)."""
    clock = services.clock
    assert isinstance(clock, FakeClock)

    def at(generation: float) -> Services:
        return Services(dataclasses.replace(parse(CONFIG), generation=generation), services.client, clock=clock,
                        prefix=services.store.keys.prefix)
    return clock, RecordingQueue(), at(200.0), at(100.0)


def test_a_push_undone_by_deleting_its_version_holds_the_pools_up_for_a_moment_only(services: Services) -> None:
    """docs/deploy.md's rollback may delete the newest object version: every function then reads
    the older config again. The newer generation, no longer used, gives way after
    NEWEST_CONFIG_SECONDS; the older config is reconciled again."""
    clock, queue, newer, older = _two_generations(services)
    assert look_at(newer, PoolMessage("centos", TICK), queue) is not None
    clock.advance(NEWEST_CONFIG_SECONDS)
    assert look_at(older, PoolMessage("centos", TICK), queue) is None  # the push may still be read
    clock.advance(1)
    assert look_at(older, PoolMessage("centos", TICK), queue) is not None  # nobody runs it any more
    assert look_at(newer, PoolMessage("centos", TICK), queue) is not None  # a newer one always runs
    assert look_at(older, PoolMessage("centos", TICK), queue) is None


def test_a_config_generation_a_failover_took_back_is_written_again_by_the_newer_config(services: Services) -> None:
    """Redis keeps the newest config generation a function ran with; a failover (or a restore)
    may take it back to an older one. The functions converge on the newer config again: the
    first of them to look at a pool writes it back, and the older one leaves the pools again."""
    clock, queue, newer, older = _two_generations(services)
    assert look_at(newer, PoolMessage("centos", TICK), queue) is not None
    assert look_at(older, PoolMessage("centos", TICK), queue) is None
    # The promoted replica had the older function's record, not the newer one's.
    services.client.set(services.store.keys.config_generation, f"100.0 {clock.now()!r}")
    clock.advance(1)
    assert look_at(older, PoolMessage("centos", TICK), queue) is not None  # as in a push's overlap
    assert look_at(newer, PoolMessage("centos", TICK), queue) is not None  # the newer config is not held up
    assert look_at(older, PoolMessage("centos", TICK), queue) is None  # and is the newest again


def _recorded_provider(services: Services, pool: str) -> str | None:
    settings = Fleet(services.store).settings(pool)
    return settings.provider if settings else None


def test_pool_settings_a_failover_lost_are_recorded_again_by_the_next_tick(services: Services) -> None:
    """The tick records the configured pools' settings once per config; which config it had
    recorded, it kept in the process. A failover that lost that write (an async replica promoted)
    left Redis with the previous config's settings, and the warm tick never recorded them again:
    centos, moved to another provider and then removed with its old one, drained with the old
    one's settings, "cannot drain: its provider is gone", its VMs kept for good."""
    queue, ticker = RecordingQueue(), Ticker()
    two_providers = CONFIG.replace(":providers:\n", ":providers:\n  :other: {provider_class: dummy}\n")
    services.use_config(parse(two_providers))
    ticker.tick(services, queue)
    before_move = services.client.hget(services.store.keys.known_pools, "centos")

    moved = parse(two_providers.replace("{name: centos, size: 1, provider: dummy}",
                                        "{name: centos, size: 1, provider: other}"))
    services.use_config(moved)
    ticker.tick(services, queue)
    assert _recorded_provider(services, "centos") == "other"
    # The promoted replica had not received that tick's write: the record is the first config's.
    services.client.hset(services.store.keys.known_pools, "centos", before_move)
    services.client.delete(services.store.keys.known_pools_config)
    ticker.tick(services, queue)  # the same warm process, the same config
    assert _recorded_provider(services, "centos") == "other"

    services.use_config(parse(":providers:\n  :other: {provider_class: dummy}\n:pools:\n"
                              "  - {name: debian, size: 2, provider: other}\n"))
    report = look_at(services, PoolMessage("centos", DRAIN), queue)
    assert report is not None and report.passes  # drained with the provider that made its VMs


@pytest.mark.parametrize("page", sorted(PAGES))
def test_a_page_instead_of_sqss_answer_is_sent_again_not_taken_for_a_send(page: str,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """An HTML or text page instead of SQS's answer (a proxy before the endpoint, an outage) to
    the first call. Before: a page with status 200 read as an answer listing no failure, so the
    messages counted as queued and were lost (the pools waited for the next tick). Now what
    SQS's answer does not list is sent again; SQS (moto) holds each message once."""
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    with mock_aws():
        sqs = boto3.client("sqs")
        url = sqs.create_queue(QueueName="vmpool-dev-reconcile")["QueueUrl"]
        answer_with_page(sqs, *PAGES[page], times=1)
        pauses: list[float] = []
        SqsPoolQueue(url, client_factory=lambda: sqs, pause=pauses.append).send(
            [(PoolMessage(pool, TICK), 0) for pool in ("a", "b", "c")])
        bodies = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10)["Messages"]
        assert sorted(PoolMessage.parse(m["Body"]).pool for m in bodies) == ["a", "b", "c"]  # type: ignore[union-attr]


@pytest.mark.parametrize(("page", "code"), [("200-html", "UnreadableAnswer"), ("200-text", "UnreadableAnswer"),
                                            ("502-html", "502"), ("503-text", "503")])
def test_an_sqs_that_answers_only_pages_is_reported_with_a_code(page: str, code: str,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """Pages only, every try: the pools are reported (the tick's ``PoolsNotQueued``) with a code
    saying what came back, never taken as queued."""
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    with mock_aws():
        sqs = boto3.client("sqs")
        url = sqs.create_queue(QueueName="vmpool-dev-reconcile")["QueueUrl"]
        answer_with_page(sqs, *PAGES[page])
        with pytest.raises(QueueRefused) as refused:
            queue = SqsPoolQueue(url, client_factory=lambda: sqs, pause=lambda seconds: None)
            queue.send([(PoolMessage("a", TICK), 0)])
    assert refused.value.refused == [("a", code)]


def test_an_answer_botocore_cannot_parse_is_an_sqs_failure_not_a_crash_of_the_tick(
        thousand_pools: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """botocore's ResponseParserError (an answer it cannot parse) is no BotoCoreError: before, it
    was taken for a bug of ours and raised out of the tick (no pool of the send reported, no
    running count, no gauges, and EventBridge's retry sent every pool again)."""
    sqs = SqsAtScale(None, fail=lambda entries, call: ResponseParserError("Unable to parse response")
                     if "p0042" in _pools_of(entries) else None)
    monkeypatch.setattr(app, "_queue", sqs.queue())

    answer = app.tick(TICK_EVENT, Context())

    assert answer["not_queued"] == [f"p00{n}" for n in range(40, 50)]
    assert sqs.pools() == [pool for pool in thousand_pools if not pool.startswith("p004")]


def test_the_consumer_publishes_how_late_past_its_due_time_each_pass_started(
        services: Services, queue: RecordingQueue, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """``PassLateness`` (the ``reconcile-late`` alarm): a pass's start past its message's due
    time, the send plus the delay the body records, when ``REPORTED_LATENESS_SECONDS`` or more.
    A follow-up sent with SQS's longest delay (900 s) and received 45 s after it became due
    started 45 s late, not 945 s (the age SQS's ApproximateAgeOfOldestMessage counts, which made
    the backlog alarm wait 24 minutes); a message delivered again after a failed pass (its
    visibility timeout) is not counted."""
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    with mock_aws():
        sqs = boto3.client("sqs")
        url = sqs.create_queue(QueueName="vmpool-dev-reconcile")["QueueUrl"]
        entries: list[dict[str, Any]] = []

        class Recording:
            def send_message_batch(self, **call: Any) -> Any:
                entries.extend(call["Entries"])
                return sqs.send_message_batch(**call)

        SqsPoolQueue(url, client_factory=Recording).send([(PoolMessage("debian", FOLLOWUP), 899.2),
                                                          (PoolMessage("centos", TICK), 0)])
        (received,) = sqs.receive_message(QueueUrl=url, AttributeNames=["All"])["Messages"]  # the tick's: due now
    followup = next(entry for entry in entries if entry["DelaySeconds"])
    assert followup["DelaySeconds"] == 900 and json.loads(followup["MessageBody"])["delay"] == 900
    assert PoolMessage.parse(followup["MessageBody"]) == PoolMessage("debian", FOLLOWUP)
    now_ms = int(time.time() * 1000)

    def record(n: int, body: str, sent_ms: int, receives: str) -> dict[str, Any]:
        return {"messageId": f"m{n}", "receiptHandle": "r", "body": body, "eventSource": "aws:sqs",
                "attributes": {"SentTimestamp": str(sent_ms), "ApproximateReceiveCount": receives}}

    event = {"Records": [
        record(0, followup["MessageBody"], now_ms - (900 + 45) * 1000, "1"),
        {**record(1, received["Body"], 0, ""), "attributes": received["Attributes"]},  # as SQS gave it
        record(2, PoolMessage("centos", TICK).body(), now_ms - 400_000, "2"),  # after a failed pass
    ]}
    assert received["Attributes"]["ApproximateReceiveCount"] == "1"
    app.reconcile(event, Context())

    # The tick's message, on time, is not published (an idle pass prints nothing); the
    # redelivery is left out.
    (late,) = emitted(emf_documents(capsys.readouterr().out))[("PassLateness", ("service",))]
    assert 45 <= late < 45 + REPORTED_LATENESS_SECONDS  # (a loaded machine's seconds in between)

    app.reconcile({"Records": event["Records"][1:]}, Context())
    assert ("PassLateness", ("service",)) not in emitted(emf_documents(capsys.readouterr().out))


@pytest.mark.parametrize("delay", ["900", True, -5, 10**9, 1.5, None])
def test_a_delay_no_sender_of_ours_records_counts_as_none(delay: Any) -> None:
    """A body's ``delay`` that is not SQS's (text, a boolean, out of range, a fraction) counts as
    0: the pass is measured from the send, never from a due time a body could push out of sight."""
    from chalicelib.manager.pool_queue import Received, seconds_late

    body = json.dumps({"pool": "debian", "reason": "followup", "delay": delay})
    assert seconds_late([Received("m", body, 1_000_000.0, 1)], 1_060_000.0) == [60.0]


def test_an_earlier_releases_message_is_not_measured_late() -> None:
    """During an upgrade the queue holds the earlier release's messages, which record no delay: a
    follow-up it sent with 900 s of delay, started 945 s after its send, is not 945 s late (the
    ``reconcile-late`` alarm would fire at every upgrade); ours record theirs, 0 included."""
    from chalicelib.manager.pool_queue import Received, seconds_late

    earlier = json.dumps({"pool": "debian", "reason": "followup"})
    assert seconds_late([Received("m", earlier, 1_000_000.0, 1)], 1_945_000.0) == []
    ours = PoolMessage("debian", TICK).body()
    assert json.loads(ours)["delay"] == 0
    assert seconds_late([Received("m", ours, 1_000_000.0, 1)], 1_060_000.0) == [60.0]


class MalformedReferences(SecretResolver):
    """A resolver that cannot use the references it is given (SecretConfigError, as for a
    reference naming both ``secret`` and ``ssm``): what no validated config reaches today, but
    the resolver raises, and a pass must survive."""

    def resolve(self, value: Any, *, force_fetch: bool = False) -> str | None:
        raise SecretConfigError("a secret reference names either 'secret' or 'ssm', not both")


DNS_CONFIG = CONFIG + """
:dns_configs:
  dyn: {dns_class: dynamic-dns, domain: example.com, server: 127.0.0.1, tsig_key_name: vmpool,
        tsig_secret: {ssm: /vmpool/dev/tsig}}
"""


def test_a_secret_reference_the_resolver_cannot_use_fails_the_pass_counted_and_waits_for_the_tick(
        redis_client: redis.Redis, queue: RecordingQueue, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str], log_output: io.StringIO) -> None:
    """SecretConfigError building a pool's DNS plugin (or provider) escaped run_pool: no
    ReconcileErrors, a log line with message ids only, and its SQS message failed, back after
    the visibility timeout, again and again into the DLQ. Now the pass fails as a secret failure:
    counted by pool and reason, logged with the pool, its message done, and no quick retry (the
    same reference fails every pass until a push): the next tick looks again."""
    config = parse(DNS_CONFIG.replace("provider: dummy}", "provider: dummy, dns_plugin: dyn}", 1))
    services = Services(config, redis_client, clock=FakeClock(), prefix="queuetest:", secrets=MalformedReferences())
    monkeypatch.setattr(app, "_services", services)
    monkeypatch.setattr(app, "_config", None)

    answer = app.reconcile(sqs_event('{"pool": "debian"}', '{"pool": "centos"}'), Context())

    assert answer == {"batchItemFailures": []}
    assert [m.pool for m, _ in queue.sent] == ["centos"]  # its clone's follow-up; no retry of debian 2 s on
    assert services.store.counts(["centos"])["centos"]["pending"] == 1
    documents = emf_documents(capsys.readouterr().out)
    assert counts_by_reason(documents, "ReconcileErrors") == {"secret": 1}
    assert [d["ReconcileErrors"] for d in documents if d.get("pool") == "debian" and "ReconcileErrors" in d] == [[1.0]]
    [line] = [line for line in json_lines(log_output.getvalue()) if line["message"] == "reconcile pass failed"]
    assert (line["pool"], line["reason"]) == ("debian", "secret") and "not both" in line["error"]
    assert services.store.acquire_lease("debian", 10, token="next-run") is not None  # released


def test_a_pool_whose_run_raises_is_counted_and_named_and_its_messages_return(
        services: Services, queue: RecordingQueue, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str], log_output: io.StringIO) -> None:
    """A run that raises what no step expects (a bug): its messages go back to the queue (the DLQ
    takes them after 5 deliveries, and its alarm fires), and now the failure is also counted in
    ReconcileErrors (pool, reason ``unexpected``) with a log line naming the pool and the
    traceback. Before: a warning with the message ids only, no metric."""
    provider = services.provider("dummy")
    list_vms = provider.list_vms

    def broken_for_debian(pool: Any) -> Any:
        if pool.name == "debian":
            raise KeyError("a bug")
        return list_vms(pool)

    monkeypatch.setattr(provider, "list_vms", broken_for_debian)
    answer = app.reconcile(sqs_event('{"pool": "debian"}', '{"pool": "centos"}'), Context())

    assert answer == {"batchItemFailures": [{"itemIdentifier": "m0"}]}
    documents = emf_documents(capsys.readouterr().out)
    assert counts_by_reason(documents, "ReconcileErrors") == {"unexpected": 1}
    assert [d["ReconcileErrors"] for d in documents if d.get("pool") == "debian" and "ReconcileErrors" in d] == [[1.0]]
    [line] = [line for line in json_lines(log_output.getvalue()) if line.get("pool") == "debian"
              and line["message"].startswith("pool not reconciled")]
    assert line["ids"] == ["m0"] and "KeyError" in line["exception"]


TEN_POOLS = ":providers:\n  :dummy: {createvm_max_time: 30, boot_time: 10}\n:pools:\n" + "".join(
    f"  - {{name: p{n}, size: 1, provider: dummy}}\n" for n in range(10))


def test_a_full_batch_with_one_slow_pool_answers_in_time_failing_that_message_alone(
        redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch) -> None:
    """Ten messages the tick put on (moto's) SQS, received as Lambda's event source receives them,
    given to the real consumer with 7.5 s of its invocation left; one pool's vCenter hangs. The
    consumer answers while that pass still hangs (it keeps SAFETY_SECONDS back), reports that
    message alone as a batch item failure (SQS deletes the nine others and delivers it again), and
    the nine other pools are reconciled: a clone each, and a follow-up each on the queue."""
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    services = Services(parse(TEN_POOLS), redis_client, clock=FakeClock(), prefix="tenbatch:")
    monkeypatch.setattr(app, "_services", services)
    monkeypatch.setattr(app, "_config", None)
    provider = services.provider("dummy")
    list_vms, release = provider.list_vms, threading.Event()

    def hanging_for_p3(pool: Any) -> Any:
        if pool.name == "p3":
            release.wait(30)
        return list_vms(pool)

    monkeypatch.setattr(provider, "list_vms", hanging_for_p3)
    given_up: list[Future[Any]] = []
    with mock_aws():
        sqs = boto3.client("sqs")
        url = sqs.create_queue(QueueName="vmpool-dev-reconcile")["QueueUrl"]
        monkeypatch.setattr(app, "_queue", SqsPoolQueue(url, client_factory=lambda: sqs))
        app._queue.send([(PoolMessage(f"p{n}"), 0.0) for n in range(10)])
        received = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, AttributeNames=["All"])["Messages"]
        assert len(received) == 10
        event = {"Records": [{"messageId": m["MessageId"], "receiptHandle": m["ReceiptHandle"], "body": m["Body"],
                              "attributes": m["Attributes"], "eventSource": "aws:sqs",
                              "eventSourceARN": "arn:aws:sqs:us-east-1:123456789012:vmpool-dev-reconcile"}
                             for m in received]}
        slow = next(m["MessageId"] for m in received if json.loads(m["Body"])["pool"] == "p3")
        try:
            answer = app.reconcile(event, Context(int((PASS_STOP_SECONDS + 0.5) * 1000)))
            given_up = [future for future in dispatch._given_up if not future.done()]
            counts = services.store.counts([f"p{n}" for n in range(10)])  # while p3's pass still hangs
        finally:
            release.set()
        futures.wait(given_up, timeout=30)  # the given-up pass ends here, not in the next test
        delayed = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])

    assert answer == {"batchItemFailures": [{"itemIdentifier": slow}]} and len(given_up) == 1
    assert {pool: c["pending"] for pool, c in counts.items()} == {f"p{n}": int(n != 3) for n in range(10)}
    queued = delayed["Attributes"]  # beside the ten received: the follow-ups (p3's too, once released)
    assert int(queued["ApproximateNumberOfMessages"]) + int(queued["ApproximateNumberOfMessagesDelayed"]) >= 9
