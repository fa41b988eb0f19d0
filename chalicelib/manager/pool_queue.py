"""The reconcile queue's messages and their transport: what a message to look at a pool says,
and the SQS queue that carries them (with a delay each). Both the consumer (dispatch.py) and the
API's refill nudge (refill.py) build on this module, not on each other."""

from __future__ import annotations

import dataclasses
import json
import math
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, Protocol, Sequence

from chalicelib import aws_clients
from chalicelib.config import POOL_NAME_PATTERN

TICK = "tick"
NUDGE = "nudge"
FOLLOWUP = "followup"
RETRY = "retry"
DRAIN = "drain"

MAX_RETRIES = 5
"""Retries after a failed pass before the next tick takes over (bounds messages in an outage).
A retry past them only releases the lease it carries (``PoolMessage.releases_only``)."""
MAX_DELAY_SECONDS = 900
"""SQS's longest DelaySeconds."""
DELAY_FIELD = "delay"
"""The body's record of its ``DelaySeconds`` (SQS does not hand a message's delay to the consumer)."""
MAX_BODY_CHARS = 1024
"""Longer than any message we send (a pool name of 100 characters, a lease token, a reason);
SQS carries up to 256 KB, which is not parsed."""
RECONCILE_BATCH_WINDOW_SECONDS = 1
"""How long the queue's event source gathers messages before it invokes the consumer with fewer
than 10 (``MaximumBatchingWindowInSeconds``; Chalice's default 0 invokes with whatever one poll
returns). The tick's messages arrive at pools / 50 a second (20/s at 1,000 pools): in 1 s the
batches fill, so an invocation carries 10 passes, run in threads in about one pass's time, where
polls finding a message or two made up to one invocation per pass: up to 43 M invocations a month
at 1,000 pools (~$16 of requests and their START/END/REPORT log lines, against ~$1.6) and ten
times the concurrency (vSphere passes of 0.2 s at 3,000 pools: 12, over the dev stage's 10, and
its queue fell behind). The price: a checkout's nudge on a quiet stack waits up to 1 s more for
its pass (a refill starts up to 1 s later, against a clone and boot of tens of seconds).
docs/performance.md, "Invocations per minute in AWS". The queue's visibility timeout counts it
(infra/template.py ``RECONCILE_VISIBILITY_TIMEOUT``): a message is hidden from its receive, which
the window can precede the invocation by."""


@dataclass(frozen=True)
class PoolMessage:
    """A request to look at one pool. ``lease``: a lease token to release first (a Redis stall
    ate its release); ``attempt``: how many retries led here; ``draining``: a retry or follow-up
    of a drain pass (its sender had the pool as removed, ``drains``); ``mark``: a follow-up's, the
    one its pool's follow-up key held as it was queued (``Fleet.claim_followup``)."""

    pool: str
    reason: str = NUDGE
    lease: str | None = None
    attempt: int = 0
    draining: bool = False
    mark: str | None = None

    @property
    def drains(self) -> bool:
        """Whether the sender took the pool for removed from the config: a ``DRAIN``, or a retry
        or follow-up of a drain pass. Any other message for a pool its receiver does not configure
        was sent by a function that does (a push, or a deploy of a packaged config, not yet read
        by the receiver): draining on it would empty a pool just added (dispatch.look_at)."""
        return self.reason == DRAIN or self.draining

    @property
    def releases_only(self) -> bool:
        """Whether the message is a retry past ``MAX_RETRIES``: it releases the lease it carries
        and runs no pass (dispatch.look_at). A pass takes a lease of its own, which a Redis
        flapping may leave unreleased again: retries that ran passes carried a new lease each
        time, and so were queued for as long as Redis flapped, every 2 s a pool."""
        return self.reason == RETRY and self.attempt > MAX_RETRIES

    def body(self, delay_seconds: int = 0) -> str:
        """The message's JSON; with ``delay_seconds``, the ``DelaySeconds`` it is sent with (not
        part of the message: the consumer reads it to know when the message was due,
        ``seconds_late``)."""
        fields: dict[str, Any] = {key: value for key, value in dataclasses.asdict(self).items() if value}
        # Written even when 0: a body without it is an earlier release's, whose due time is unknown.
        fields[DELAY_FIELD] = delay_seconds
        return json.dumps(fields, separators=(",", ":"), sort_keys=True)

    @classmethod
    def parse(cls, body: str) -> "PoolMessage | None":
        """The message, or None for a body that is not ours (dropped: retrying it only fills
        the dead-letter queue, and raising would send the rest of its batch back too): longer
        than any we send, not JSON (nested past the parser's depth included), or naming no pool
        a config could hold."""
        if len(body) > MAX_BODY_CHARS:
            return None
        try:
            fields = json.loads(body)
        except (ValueError, RecursionError):
            return None
        if not isinstance(fields, dict) or not isinstance(fields.get("pool"), str):
            return None
        if not POOL_NAME_PATTERN.fullmatch(fields["pool"]):
            return None
        lease, attempt, mark = fields.get("lease"), fields.get("attempt", 0), fields.get("mark")
        return cls(
            pool=fields["pool"],
            reason=str(fields.get("reason") or NUDGE),
            lease=lease if isinstance(lease, str) else None,
            # A negative count would retry a failing pool forever (MAX_RETRIES counts up to it).
            attempt=attempt if isinstance(attempt, int) and not isinstance(attempt, bool) and attempt >= 0 else 0,
            draining=fields.get("draining") is True,
            mark=mark if isinstance(mark, str) and mark else None,
        )


@dataclass(frozen=True)
class Received:
    """One record of the consumer's SQS event."""

    message_id: str
    body: str
    sent_ms: float | None
    """When SQS received it (its ``SentTimestamp``), None when the record does not say."""
    receive_count: int | None = None
    """How many times SQS has handed it out (its ``ApproximateReceiveCount``), None when the
    record does not say."""


def received(event: Any) -> list[Received]:
    """The records of an SQS event. SQS sends each with a text ``messageId`` and ``body`` and a
    numeric ``SentTimestamp``; a direct invoke may send anything, and nothing in it may fail the
    batch: a record without a text id cannot be reported and is left out, a body that is not
    text is read as an empty one (dropped as not ours), a send time that is not a number as
    unknown, an event without a list of records as no records."""
    records = event.get("Records") if isinstance(event, dict) else None
    found: list[Received] = []
    for record in records if isinstance(records, list) else []:
        if not isinstance(record, dict) or not isinstance(record.get("messageId"), str):
            continue
        body = record.get("body")
        attributes = record.get("attributes")
        attributes = attributes if isinstance(attributes, dict) else {}
        sent, count = _digits(attributes.get("SentTimestamp")), _digits(attributes.get("ApproximateReceiveCount"))
        found.append(Received(record["messageId"], body if isinstance(body, str) else "",
                              None if sent is None else float(sent), count))
    return found


def _digits(value: Any) -> int | None:
    """A number SQS sends as text (``"1733450000000"``), or None for anything else."""
    return int(value) if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) < 20 else None


REPORTED_LATENESS_SECONDS = 10.0
"""The lateness below which a pass's start is not published (``seconds_late``): a healthy queue
starts passes within a few seconds of their due time, and a document per invocation would print
a line per idle pass (1,000 pools handed over one message at a time: 43 M lines, ~$5 of log
ingestion a month) where an idle pass prints nothing."""


def seconds_late(records: Sequence[Received], now_ms: float, at_least: float = 0.0) -> list[float]:
    """How late each message's pass starts (at ``now_ms``, SQS's epoch milliseconds): the time
    past when the message was due, its send plus the ``DelaySeconds`` its body records (0 when
    it records something SQS would not take). Not a message of an earlier release, which records
    no delay: sent with up to 900 s of it, it would read as that late and fire the
    ``reconcile-late`` alarm at every upgrade. First deliveries only: a
    message delivered again waited out the visibility timeout after a failed pass (counted in
    ``ReconcileErrors``), not a queue that fell behind. A pass starting late says messages wait
    to be received (too few consumers, throttled), whatever delay each was sent with, which the
    age of the queue's oldest message cannot tell apart from a follow-up's 900 s delay. Only
    those at least ``at_least`` seconds late."""
    late = []
    for record in records:
        if record.sent_ms is None or record.receive_count != 1:
            continue
        message = PoolMessage.parse(record.body)
        if message is None:
            continue
        delay = _recorded_delay(record.body)
        if delay is None:
            continue
        seconds = max(0.0, now_ms - record.sent_ms - 1000 * delay) / 1000
        if seconds >= at_least:
            late.append(seconds)
    return late


def _recorded_delay(body: str) -> int | None:
    """The ``DelaySeconds`` a body records (``PoolMessage.body``); None when it records none (an
    earlier release's), 0 when not one SQS takes."""
    fields = json.loads(body)
    if DELAY_FIELD not in fields:
        return None
    delay = fields[DELAY_FIELD]
    if isinstance(delay, int) and not isinstance(delay, bool) and 0 <= delay <= MAX_DELAY_SECONDS:
        return delay
    return 0


Delayed = tuple[PoolMessage, float]


class PoolQueue(Protocol):
    def send(self, messages: Sequence[Delayed], budget_seconds: float | None = None) -> None:
        """Queue each message after its delay (seconds). Raises on failure. ``budget_seconds``:
        how long the send may go on starting calls (None: the queue's own)."""
        ...


SEND_ATTEMPTS = 4
"""Tries of a message SQS turned down for its own reasons (throttled, an internal error), or
whose whole call failed (timed out, throttled: after botocore's own retries)."""
RETRY_PAUSE_SECONDS = 0.05
"""The pause before the first retry of those messages, doubled before each next."""
SEND_BUDGET_SECONDS = 10.0
"""How long one send goes on starting calls (its batches' first tries and their retries), unless
its caller gives its own budget (the tick derives one from its invocation's remaining time:
dispatch.tick_send_budget); a call started ends within ``aws_clients.AWS_CALL_BOUND_SECONDS``, so
a send returns within 17 s."""
NOT_SENT = "NotSent"
"""The code of a message refused without a try: the send's time had run out."""


class QueueRefused(Exception):
    """Messages SQS did not take: ``refused`` lists (pool, SQS's error code) of each. The rest of
    the send went through."""

    def __init__(self, refused: list[tuple[str, str]]) -> None:
        pools = sorted({pool for pool, _ in refused})
        super().__init__(f"SQS did not queue {len(refused)} message(s), {refused[0][1]} first; pools: "
                         + ", ".join(pools[:10]) + (" ..." if len(pools) > 10 else ""))
        self.refused = refused


class SqsPoolQueue:
    """The reconcile queue in SQS: batches of 10, each message with its own delay. A message SQS
    turns down for its own reasons (a batch partly throttled), or a batch whose whole call failed
    (timed out, throttled), is sent again, alone with the others turned down, after a short
    pause, while the send's ``budget_seconds`` last; what SQS still refuses, or what was not
    tried in that time, raises QueueRefused once every batch had its turn (one batch's failure
    never keeps the next from being sent). A call that timed out may have queued its messages:
    sent again, a pool gets two looks, harmless under its lease."""

    def __init__(self, queue_url: str, client_factory: Callable[[], Any] | None = None, threads: int = 8,
                 pause: Callable[[float], None] = time.sleep, budget_seconds: float = SEND_BUDGET_SECONDS,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self.queue_url = queue_url
        self._client_factory = client_factory or _default_sqs_client
        self._client: Any = None
        self.threads = threads
        self._pause = pause
        self.budget_seconds = budget_seconds
        self._monotonic = monotonic

    def send(self, messages: Sequence[Delayed], budget_seconds: float | None = None) -> None:
        if not messages:
            return
        if self._client is None:
            self._client = self._client_factory()
        batches = [messages[start:start + 10] for start in range(0, len(messages), 10)]
        deadline = self._monotonic() + (self.budget_seconds if budget_seconds is None else budget_seconds)
        if len(batches) == 1:
            refused = self._send_batch(batches[0], deadline)
        else:
            # 1,000 pools are 100 calls: in parallel they take a tenth of the time.
            with ThreadPoolExecutor(max_workers=self.threads) as pool:
                refused = [item for found in pool.map(lambda batch: self._send_batch(batch, deadline), batches)
                           for item in found]
        if refused:
            raise QueueRefused(refused)

    def _send_batch(self, batch: Sequence[Delayed], deadline: float) -> list[tuple[str, str]]:
        """Send one batch, trying only before ``deadline`` (the send's monotonic time); (pool,
        code) of each message SQS would not take or that was not tried."""
        waiting = dict(enumerate(batch))
        refused: list[tuple[str, str]] = []
        code = NOT_SENT
        for attempt in range(SEND_ATTEMPTS):
            pause = RETRY_PAUSE_SECONDS * 2 ** (attempt - 1) if attempt else 0.0
            if self._monotonic() + pause >= deadline:
                break
            if pause:
                self._pause(pause)
            delays = {index: _delay_seconds(delay) for index, (_, delay) in waiting.items()}
            entries = [{"Id": str(index), "MessageBody": message.body(delays[index]), "DelaySeconds": delays[index]}
                       for index, (message, _) in waiting.items()]
            try:
                answer = self._client.send_message_batch(QueueUrl=self.queue_url, Entries=entries)
            except Exception as error:  # noqa: BLE001 - what is not an AWS failure is raised again
                code = _aws_failure_code(error)  # the whole batch stays waiting
                continue
            turned_down: dict[int, Delayed] = {}
            # An answer that lists an entry neither sent nor failed is not SQS's (a proxy's page
            # with status 200 reads as an empty answer): the entry was not queued; try it again.
            answered = {str(entry.get("Id")) for entry in [*(answer.get("Successful") or []),
                                                           *(answer.get("Failed") or [])]}
            for index in waiting.keys() - {_entry_index(key) for key in answered}:
                turned_down[index] = waiting[index]
                code = aws_clients.UNREADABLE_ANSWER
            for failure in answer.get("Failed") or []:
                failed = _entry_index(failure.get("Id"))
                if failed is None or failed not in waiting:
                    continue  # no entry of this call (not SQS's answer): what was sent is judged above
                if failure.get("SenderFault"):  # our request was wrong: sending it again changes nothing
                    refused.append((waiting[failed][0].pool, str(failure.get("Code"))))
                else:
                    turned_down[failed] = waiting[failed]
                    code = str(failure.get("Code"))
            waiting = turned_down
            if not waiting:
                return refused
        return refused + [(message.pool, code) for message, _ in waiting.values()]


def _entry_index(entry_id: object) -> int | None:
    """The index of the batch entry a ``SendMessageBatch`` answer names (``Id``), None for an id
    this queue never gives (an answer that is not SQS's: before, a KeyError ended the tick)."""
    text = str(entry_id)
    return int(text) if text.isascii() and text.isdecimal() else None


def _delay_seconds(delay: float) -> int:
    """SQS's ``DelaySeconds`` for a delay: whole seconds, rounded up (a sub-second check delay
    must not become 0: a pass loop), at most ``MAX_DELAY_SECONDS``."""
    return max(0, min(math.ceil(delay), MAX_DELAY_SECONDS))


def _aws_failure_code(error: Exception) -> str:
    """The code of a failed AWS call (SQS's error code, or the kind of failure when SQS did not
    answer: ``ReadTimeoutError``, ``EndpointConnectionError``, or none it could read:
    ``UnreadableAnswer``, an error page from a proxy or an outage); any other exception is a bug
    of ours, raised again."""
    failure = aws_clients.failure_of(error)
    if failure is None:
        raise error
    return failure.code


def _default_sqs_client() -> Any:
    return aws_clients.client("sqs")
