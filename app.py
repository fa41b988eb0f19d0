"""vmpool's Chalice app: wiring only. The logic lives in chalicelib/.

- The REST API: every route of ``chalicelib.api.routes.ROUTES`` under each API version.
- ``tick``: one schedule for every pool, putting one message per pool on the reconcile queue.
- ``reconcile``: the queue's consumer, one pass per message's pool; checkouts and deletes put
  their pool on the same queue, so the replacement starts at once (chalicelib/manager/dispatch.py).
"""

from __future__ import annotations

import os
import sys
import threading
import time
from typing import TYPE_CHECKING, Any, Callable

from chalice import ConvertToMiddleware, Rate, Response

from chalicelib import config as config_module
from chalicelib import config_source, observability
from chalicelib.api.chalice_app import RequestLocalChalice
from chalicelib.api.conditional import conditional
from chalicelib.api.http import ApiError, ApiRequest
from chalicelib.api.routes import ROUTES, Route, handle_when_built, render, request_from_chalice, versioned_paths
from chalicelib.manager.pool_queue import (
    NUDGE,
    RECONCILE_BATCH_WINDOW_SECONDS,
    REPORTED_LATENESS_SECONDS,
    PoolMessage,
    PoolQueue,
    Received,
    SqsPoolQueue,
    received,
    seconds_late,
)
from chalicelib.manager.refill import REFILL_QUEUE_ENV
from chalicelib.observability import emit, logger, tracer
from chalicelib.services import Services
from chalicelib.store import StoreUnavailable

if TYPE_CHECKING:
    from chalicelib.manager.dispatch import Ticker

# Powertools' Logger owns the "vmpool" logger (JSON lines); Chalice's own set-up of the logger
# named after the app would add a plain-text handler and lower its level to ERROR.
app = RequestLocalChalice(app_name="vmpool", configure_logs=False)

PACKAGED = config_module.load_with_digest()
CONFIG = PACKAGED.config
"""The packaged config, loaded at import: an invalid one stops the Lambda (and `chalice package`)
with its problems. In AWS the config pushed to S3 replaces it (chalicelib/config_source.py); when
the bucket holds the same text, the first request reuses this one instead of building it again."""

RECONCILE_QUEUE_NAME = os.environ.get("VMPOOL_RECONCILE_QUEUE_NAME", "vmpool-reconcile")
RECONCILE_CONCURRENCY = int(os.environ.get("VMPOOL_RECONCILE_CONCURRENCY", "10"))
SCHEDULE_MINUTES = int(os.environ.get("VMPOOL_SCHEDULE_MINUTES", "1"))

_services: Services | None = None
_config: config_source.ConfigSource | None = None
_queue: PoolQueue | None = None
_services_lock = threading.Lock()
_ticker: Ticker | None = None


def services() -> Services:
    """Built on first use and kept for the life of the process (warm Lambdas reuse it), with the
    current config (refreshed from S3 at most every 30 s when the stage keeps it there)."""
    global _services, _config
    if _services is None:
        with _services_lock:  # the local front's threads may ask at once
            if _services is None:
                built = Services.from_environment(config=CONFIG)
                _config = config_source.from_environment(
                    built.config, built.clock, os.environ,
                    initial_digest=PACKAGED.digest if built.config is CONFIG else None)
                _services = built
    if _config is not None:
        _services.use_config(_config.current())
    return _services


# --- REST API -----------------------------------------------------------------------------------


def _view(route: Route, version: int) -> Callable[..., Response]:
    def view(**params: str) -> Response:
        request: ApiRequest | None = None
        try:
            request = request_from_chalice(app.current_request, version, params)
        except ApiError as unreadable:  # the event's body is not what it says (bad base64)
            response = unreadable.response()
        else:
            # Per thread: the local front serves several requests of one process at once.
            observability.append_request_keys(correlation_id=request.request_id or None)
            response = handle_when_built(services, route.handler, request)
        status, body, headers = render(response)
        if request is not None and route.conditional:  # an ETag, or 304 to a caller holding it
            status, body, headers = conditional(request, status, body, headers, route.tag_basis)
        if getattr(app.current_request, "method", "") == "HEAD":  # GET's answer without its body (RFC 9110)
            body = ""
        return Response(body=body, status_code=status, headers=dict(headers))

    return view


# vmpooler reads a JSON body whatever its Content-Type says (curl -d sends a form type), and
# answers every request with JSON: no 415 from Chalice.
BODY_CONTENT_TYPES = ["*/*"]

# HEAD wherever GET is, as vmpooler's Sinatra answers it (`curl -I`, monitors): API Gateway
# answers a method a resource does not declare with its own 404.
for _route in ROUTES:
    for _path, _version in versioned_paths(_route):
        _suffix = f"v{_version}" if _path.startswith("/api/") else "legacy"
        _methods = [_route.method, "HEAD"] if _route.method == "GET" else [_route.method]
        app.route(_path, methods=_methods, name=f"{_route.name}_{_suffix}",
                  content_types=BODY_CONTENT_TYPES)(_view(_route, _version))


# --- reconcile: one tick fans out to every pool, one consumer reconciles any pool ---------------


def pool_queue() -> PoolQueue:
    """The reconcile queue (built on first use: only the tick and the consumer send to it)."""
    global _queue
    if _queue is None:
        _queue = SqsPoolQueue(os.environ[REFILL_QUEUE_ENV])
    return _queue


@app.schedule(Rate(SCHEDULE_MINUTES, unit=Rate.MINUTES), name="tick")
def tick(event: Any) -> dict[str, Any]:
    """One message per pool on the reconcile queue (and per removed pool still draining)."""
    global _ticker
    # The reconcile code is imported by the tick and the consumer only: the API function, which
    # imports this same module, never loads it (tests/core/test_cold_import.py).
    from chalicelib.manager.dispatch import Ticker

    if _ticker is None:
        _ticker = Ticker()
    context = event.context

    def remaining_seconds() -> float:
        return float(context.get_remaining_time_in_millis()) / 1000

    try:
        report = _ticker.tick(services(), pool_queue(), remaining_seconds)
    except StoreUnavailable as error:
        # One line of ours (no traceback: it would be redis-py's, 30 frames); the short failure
        # raised after it counts the invocation in Lambda's Errors, which the lambda-errors alarm
        # watches: the prompt alarm of a Redis outage (docs/deploy.md, "Alarms": Redis unreachable).
        logger.error("tick failed: redis unavailable; the next tick tries again within a minute",
                     extra={"error": str(error)})
        raise TickFailed("redis unavailable (the tick's error log line says more)") from None
    logger.info("tick", extra={"pools": report.configured, "draining": report.draining, "messages": report.messages,
                               "empty": report.empty[:100], "empty_count": len(report.empty),
                               "not_queued_count": len(report.not_queued)})
    return {"pools": report.configured, "draining": report.draining, "messages": report.messages,
            "not_queued": report.not_queued[:100]}


class TickFailed(Exception):
    """The tick could not do its work (Redis unavailable): raised once its error line is written,
    so Lambda counts the invocation as failed (``Errors``; the stack does not retry it,
    infra/sync_config.py ``TICK_RETRY_ATTEMPTS``), with a short traceback of its own."""


def _seconds_queued(records: list[Received]) -> list[float]:
    """How long each nudge waited in the queue (SQS stamps when it was sent, in ms)."""
    now_ms = time.time() * 1000
    waits = []
    for record in records:
        message = PoolMessage.parse(record.body)
        if message is not None and message.reason == NUDGE and record.sent_ms is not None:
            waits.append(max(0.0, now_ms - record.sent_ms) / 1000)
    return waits


@app.on_sqs_message(queue=RECONCILE_QUEUE_NAME, batch_size=10, name="reconcile",
                    maximum_concurrency=RECONCILE_CONCURRENCY,
                    maximum_batching_window_in_seconds=RECONCILE_BATCH_WINDOW_SECONDS)
def reconcile(event: Any) -> dict[str, Any]:
    """Each message's pool once, all pools of the batch at once; failures reported per message
    (the event source mapping has ReportBatchItemFailures), so one pool never fails another."""
    from chalicelib.manager.dispatch import environment_spent, handle_batch

    records = received(event.to_dict())  # whatever the invoke holds: never raises
    if environment_spent():
        _end_spent_environment([record.message_id for record in records])
    # The batch's passes start now, each in its own thread (dispatch.handle_batch).
    emit(None, {}, seconds={observability.REFILL_LATENCY: _seconds_queued(records),
                            observability.PASS_LATENESS: seconds_late(records, time.time() * 1000,
                                                                      REPORTED_LATENESS_SECONDS)})
    context = event.context

    def remaining_seconds() -> float:
        return float(context.get_remaining_time_in_millis()) / 1000

    failed = handle_batch(services(), [(r.message_id, r.body) for r in records], pool_queue(), remaining_seconds,
                          {r.message_id: r.receive_count for r in records})
    services().refusals.flush_if_due()  # the count of messages dropped in a window now over
    return {"batchItemFailures": [{"itemIdentifier": message_id} for message_id in failed]}


SPENT_EXIT_STATUS = 75
"""The reconcile process's exit status when passes it gave up on fill it (EX_TEMPFAIL)."""


def _end_spent_environment(ids: list[str]) -> None:
    """End this process at once, the batch unanswered: passes earlier invocations gave up on
    still hold MAX_PASSES_GIVEN_UP threads (``dispatch.environment_spent``: calls that never
    return), and a thread cannot be stopped. Before, the environment turned every batch away
    (each message back to the queue) until Lambda retired it, which a busy consumer's never is.
    A process that exits during an invocation is a crash to Lambda (``Runtime.ExitError``): it
    resets the environment, and the next batch gets a fresh one. The invocation fails, so SQS
    returns every message of the batch to the queue, as the partial-batch answer listing them
    all did. Raising would not do: the Python runtime reports the error and keeps the process.
    ``os._exit``, not ``sys.exit``: the interpreter's exit would wait for the stuck threads."""
    logger.error("passes given up on fill this environment: it exits so Lambda starts a fresh one; the "
                 "batch's messages return to the queue", extra={"ids": ids[:10], "messages": len(ids)})
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    os._exit(SPENT_EXIT_STATUS)


app.register_middleware(ConvertToMiddleware(logger.inject_lambda_context), "scheduled")
app.register_middleware(ConvertToMiddleware(logger.inject_lambda_context), "sqs")
# Tracing (a no-op unless the stage enables it): every kind of invocation, cold starts annotated.
# Without the handlers' answers: Powertools records them in the trace by default, and the API's
# carry tokens (POST /token, GET /token/<t>) that would sit there in clear.
# Registered only where tracing is on: off (the local stack, stages without it) it did nothing but
# cost every request a wrapper built and called (docs/performance.md, "Checkout CPU per cycle").
if observability.TRACING:
    app.register_middleware(ConvertToMiddleware(tracer.capture_lambda_handler(capture_response=False)), "all")
