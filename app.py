"""vmpool's Chalice app: wiring only. The logic lives in chalicelib/.

- The REST API: every route of ``chalicelib.api.routes.ROUTES`` under each API version.
- One scheduled Lambda per configured pool, running that pool's reconcile loop.
- The refill queue's consumer: reconciles a pool at once after a checkout or delete.
"""

from __future__ import annotations

import json
import os
import re
import time
from typing import Any, Callable

from chalice import Chalice, ConvertToMiddleware, Rate, Response

from chalicelib import config as config_module
from chalicelib import observability
from chalicelib.api.routes import ROUTES, Route, handle, render, request_from_chalice, versioned_paths
from chalicelib.manager.runner import run_pool
from chalicelib.observability import emit, logger, tracer
from chalicelib.services import Services

app = Chalice(app_name="vmpool")

CONFIG = config_module.load()
"""Loaded at import: an invalid config stops the Lambda (and `chalice package`) with its problems."""

RECONCILE_BUDGET_SECONDS = float(os.environ.get("VMPOOL_RECONCILE_BUDGET_SECONDS", "240"))
REFILL_BUDGET_SECONDS = float(os.environ.get("VMPOOL_REFILL_BUDGET_SECONDS", "50"))
REFILL_QUEUE_NAME = os.environ.get("VMPOOL_REFILL_QUEUE_NAME", "vmpool-refill")
SCHEDULE_MINUTES = int(os.environ.get("VMPOOL_SCHEDULE_MINUTES", "1"))

_services: Services | None = None


def services() -> Services:
    """Built on first use and kept for the life of the process (warm Lambdas reuse it)."""
    global _services
    if _services is None:
        _services = Services.from_environment(config=CONFIG)
    return _services


# --- REST API -----------------------------------------------------------------------------------


def _view(route: Route, version: int) -> Callable[..., Response]:
    def view(**params: str) -> Response:
        request = request_from_chalice(app.current_request, version, params)
        logger.set_correlation_id(request.request_id or None)
        status, body, headers = render(handle(services(), route.handler, request))
        return Response(body=body, status_code=status, headers=dict(headers))

    return view


# vmpooler reads a JSON body whatever its Content-Type says (curl -d sends a form type), and
# answers every request with JSON: no 415 from Chalice.
BODY_CONTENT_TYPES = ["*/*"]

for _route in ROUTES:
    for _path, _version in versioned_paths(_route):
        _suffix = f"v{_version}" if _path.startswith("/api/") else "legacy"
        app.route(_path, methods=[_route.method], name=f"{_route.name}_{_suffix}",
                  content_types=BODY_CONTENT_TYPES)(_view(_route, _version))


# --- reconcile: one scheduled Lambda per pool ---------------------------------------------------


def reconcile_function_name(pool_name: str) -> str:
    """A Python identifier and Lambda-safe name for the pool's reconcile function."""
    return "reconcile_" + re.sub(r"[^A-Za-z0-9_]", "_", pool_name)


def _reconciler(pool_name: str) -> Callable[[Any, Any], dict[str, Any]]:
    def reconcile(event: Any, context: Any) -> dict[str, Any]:
        report = run_pool(services(), pool_name, RECONCILE_BUDGET_SECONDS)
        return {"pool": pool_name, "leased": report.leased, "passes": len(report.passes),
                "failures": report.failures}

    reconcile.__name__ = reconcile_function_name(pool_name)
    return reconcile


for _pool in CONFIG.pools:
    _name = reconcile_function_name(_pool.name)
    # Chalice names the Lambda's handler after the module-level binding, so each pool gets one.
    globals()[_name] = app.schedule(Rate(SCHEDULE_MINUTES, unit=Rate.MINUTES), name=_name)(_reconciler(_pool.name))


# --- refill: reconcile a pool right after a checkout or delete ----------------------------------


def _seconds_queued(records: list[Any]) -> list[float]:
    """How long each message waited in the queue (SQS stamps when it was sent, in ms)."""
    now_ms = time.time() * 1000
    sent = (float(r.to_dict().get("attributes", {}).get("SentTimestamp", now_ms)) for r in records)
    return [max(0.0, now_ms - ms) / 1000 for ms in sent]


def _pool_named_in(body: str) -> str | None:
    """The pool a refill message names; None for a message that is not ours (it is dropped:
    retrying it would only fill the dead-letter queue)."""
    try:
        message = json.loads(body)
    except ValueError:
        return None
    pool = message.get("pool") if isinstance(message, dict) else None
    return pool if isinstance(pool, str) else None


@app.on_sqs_message(queue=REFILL_QUEUE_NAME, batch_size=10, name="refill")
def refill(event: Any) -> None:
    records = list(event)
    emit(None, {}, seconds={observability.REFILL_LATENCY: _seconds_queued(records)})
    pools = {_pool_named_in(record.body) for record in records}
    for pool_name in sorted(p for p in pools if p and CONFIG.pool(p)):
        run_pool(services(), pool_name, REFILL_BUDGET_SECONDS)


app.register_middleware(ConvertToMiddleware(logger.inject_lambda_context), "scheduled")
app.register_middleware(ConvertToMiddleware(logger.inject_lambda_context), "sqs")
# Tracing (a no-op unless the stage enables it): every kind of invocation, cold starts annotated.
app.register_middleware(ConvertToMiddleware(tracer.capture_lambda_handler), "all")
