"""The tick and the reconcile consumer as Lambda invokes them while Redis refuses connections (a
real redis-server, stopped after the service used it): the tick says so in one line of its own
and fails as an error Lambda counts; the consumer hands back to the queue only the messages that
carry a lease to release, and drops the rest (the next tick queues every pool again), counted in
one warning a window instead of a dead-letter queue filled after half an hour."""

from __future__ import annotations

import io
import time
from typing import Any, Iterator

import pytest

import app
from chalicelib.clock import FakeClock
from chalicelib.config import parse
from chalicelib.manager import dispatch
from chalicelib.manager.dispatch import REDIS_DROPPED
from chalicelib.manager.pool_queue import FOLLOWUP, NUDGE, RETRY, TICK, PoolMessage
from chalicelib.refusals import WINDOW_SECONDS
from chalicelib.services import Services
from chalicelib.store.connection import connect
from local.redis_server import RedisServer
from tests.support import TICK_EVENT, Context, RecordingQueue, json_lines

CONFIG = """
:config: {domain: example.com}
:providers:
  :dummy: {createvm_max_time: 30, boot_time: 10}
:pools:
  - {name: debian, size: 2, provider: dummy}
  - {name: centos, size: 1, provider: dummy}
"""


@pytest.fixture
def queue(monkeypatch: pytest.MonkeyPatch) -> RecordingQueue:
    recording = RecordingQueue()
    monkeypatch.setattr(app, "_queue", recording)
    return recording


@pytest.fixture
def redis_down(queue: RecordingQueue, monkeypatch: pytest.MonkeyPatch) -> Iterator[Services]:
    """The service after a tick with Redis up; Redis then stopped (its port refuses connections)."""
    server = RedisServer().start()
    try:
        config = parse(CONFIG)
        services = Services(config, connect(config.redis, url=server.url), clock=FakeClock(), prefix="redisdown:")
        monkeypatch.setattr(app, "_services", services)
        monkeypatch.setattr(app, "_config", None)
        monkeypatch.setattr(app, "_ticker", None)
        monkeypatch.setattr(dispatch, "_executor", None)
        assert app.tick(TICK_EVENT, Context())["messages"] == 2  # the service in use
        queue.sent.clear()
        server.stop(restart=True)  # SIGTERM; the port stays held, refusing connections
        yield services
    finally:
        if server.process is None:
            server.start()
        server.stop()


def problems(log: io.StringIO) -> list[dict[str, Any]]:
    return [line for line in json_lines(log.getvalue()) if line["level"] in ("WARNING", "ERROR", "CRITICAL")]


def test_a_tick_with_redis_down_says_so_once_and_fails_as_an_error_lambda_counts(
        redis_down: Services, queue: RecordingQueue, log_output: io.StringIO) -> None:
    """Before, redis-py's error raised out of the tick with nothing of ours in the log: Lambda's
    record of it was the only trace, a traceback of some 30 frames through redis-py."""
    with pytest.raises(app.TickFailed) as raised:
        app.tick(TICK_EVENT, Context())

    (line,) = problems(log_output)
    assert (line["level"], line["message"]) == (
        "ERROR", "tick failed: redis unavailable; the next tick tries again within a minute")
    assert line["error"] == "redis: ConnectionError", line  # what failed, no host, no secret
    assert "exception" not in line and "Traceback" not in log_output.getvalue()
    # Raised on its own (Lambda's record of it is its few frames, not redis-py's chain).
    assert raised.value.__cause__ is None and raised.value.__suppress_context__
    assert queue.sent == []


def sqs_batch(bodies: list[str], receive_count: int | None) -> dict[str, Any]:
    attributes = {"SentTimestamp": str(int(time.time() * 1000))}
    if receive_count is not None:
        attributes["ApproximateReceiveCount"] = str(receive_count)
    return {"Records": [{"messageId": f"m{n}", "receiptHandle": "r", "body": body, "attributes": attributes,
                         "eventSource": "aws:sqs"} for n, body in enumerate(bodies)]}


def test_messages_failing_for_want_of_redis_are_dropped_but_a_lease_release_comes_back_once(
        redis_down: Services, queue: RecordingQueue, log_output: io.StringIO) -> None:
    """A batch of a tick's, a nudge's, a follow-up's message and a retry carrying a lease: only the
    retry goes back to the queue, on its first delivery (delivered again after the visibility
    timeout, it releases its lease if Redis is back; by its second, the lease has expired by
    itself). The drops are said once, then counted in the window's summary line. Before, every
    message went back to the queue, and after five deliveries (half an hour) to the DLQ."""
    bodies = [PoolMessage("debian", TICK).body(), PoolMessage("centos", NUDGE).body(),
              PoolMessage("debian", FOLLOWUP, mark="a1b2").body(),
              PoolMessage("centos", RETRY, lease="t0k3n", attempt=1).body()]

    first = app.reconcile(sqs_batch(bodies, None), Context())
    again = app.reconcile(sqs_batch(bodies, 2), Context())

    assert first == {"batchItemFailures": [{"itemIdentifier": "m3"}]}
    assert again == {"batchItemFailures": []}
    assert queue.sent == []
    said = problems(log_output)
    assert [line["message"] for line in said if line["message"] == REDIS_DROPPED] == [REDIS_DROPPED]
    log_output.truncate(0)
    log_output.seek(0)
    assert isinstance(redis_down.clock, FakeClock)
    redis_down.clock.advance(WINDOW_SECONDS)
    assert app.reconcile({"Records": []}, Context()) == {"batchItemFailures": []}
    (summary,) = problems(log_output)
    # 3 dropped in the first batch (the first said at once), 4 in the second
    assert summary["message"] == "requests refused" and summary["refused"] == {REDIS_DROPPED: 6}
    assert summary["by_name"][REDIS_DROPPED] == {"debian": 3, "centos": 3}
