"""Structured logs (Powertools Logger), CloudWatch EMF metrics (Powertools Metrics), tracing.

Metrics are emitted in the namespace ``vmpool``; Powertools adds the dimension ``service``, and
per-pool metrics carry the dimension ``pool`` too. Each emission is its own EMF document
(EphemeralMetrics) so a long-running reconcile loop publishes each pass as it finishes instead of
at the end of the invocation.

``METRICS`` below is the single source of truth for metric names and their dimension sets: the
code emits the constants, and the CloudWatch dashboard and alarms (infra/template.py) are
generated from the same constants, so a renamed metric cannot leave a dashboard graphing nothing.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping, Sequence, Union

from aws_lambda_powertools import Logger, Tracer
from aws_lambda_powertools.metrics import EphemeralMetrics, MetricUnit

from chalicelib.auth.secrets import RedactingFilter

NAMESPACE = "vmpool"
SERVICE = "vmpool"

logger = Logger(service=SERVICE)

REDACTION = RedactingFilter()
"""Masks every secret the service has resolved, in every log line (belt and braces: no code
path logs a secret on purpose)."""


def redact_secrets(values: Iterable[Any]) -> None:
    """Mask these values from now on in the Powertools logger's output and the root handlers'
    (where the stdlib loggers of chalicelib.auth end up). Idempotent."""
    for value in values:
        REDACTION.add(value)
    handlers = [logger.registered_handler, *logging.getLogger().handlers]
    for handler in handlers:
        if REDACTION not in handler.filters:
            handler.addFilter(REDACTION)



class _NoTracer:
    """Stands in for Powertools' Tracer where tracing is off: decorators return the function."""

    def capture_lambda_handler(self, handler: Callable[..., Any]) -> Callable[..., Any]:
        return handler

    def capture_method(self, method: Callable[..., Any]) -> Callable[..., Any]:
        return method


def _tracing_enabled(environ: Mapping[str, str]) -> bool:
    """Powertools' rule: on in a real Lambda unless POWERTOOLS_TRACE_DISABLED is true."""
    disabled = environ.get("POWERTOOLS_TRACE_DISABLED", "false").strip().lower() in ("1", "true", "yes", "on")
    in_lambda = bool(environ.get("LAMBDA_TASK_ROOT")) and not environ.get("AWS_CHALICE_CLI_MODE")
    return in_lambda and not disabled


def make_tracer(environ: Mapping[str, str] = os.environ) -> "Tracer | _NoTracer":
    """Powertools Tracer when the stage enables tracing (it needs aws-xray-sdk, which Tracer
    imports at construction), else a no-op, so a stage without tracing needs no X-Ray SDK."""
    if not _tracing_enabled(environ):
        return _NoTracer()
    try:
        return Tracer(service=SERVICE)
    except ImportError:
        logger.warning("tracing is enabled but aws-xray-sdk is not packaged; tracing stays off")
        return _NoTracer()


tracer = make_tracer()

# --- metric names -------------------------------------------------------------------------------

# Per-pool gauges, each reconcile pass.
READY = "Ready"
PENDING = "Pending"
RUNNING = "Running"
CAPACITY = "Capacity"
# Per-pool counters and timings, each reconcile pass.
CLONES_STARTED = "ClonesStarted"
CLONE_FAILURES = "CloneFailures"
VMS_DESTROYED = "VMsDestroyed"
PROVIDER_CALLS = "ProviderCalls"
RECONCILE_DURATION = "ReconcileDuration"
CLONE_DURATION = "CloneDuration"
BOOT_DURATION = "BootDuration"
RECONCILE_ERRORS = "ReconcileErrors"
DNS_FAILURES = "DnsFailures"
MIGRATIONS = "Migrations"
MIGRATION_FAILURES = "MigrationFailures"
# Pools with a ``sizing`` block, each reconcile pass (docs/sizing.md).
TARGET_SIZE = "TargetSize"
PREDICTED_DEMAND = "PredictedDemand"
# API (service-wide).
CHECKOUTS = "Checkouts"
CHECKOUT_MISSES = "CheckoutMisses"
DELETES = "Deletes"
# Refill queue consumer (service-wide).
REFILL_LATENCY = "RefillLatency"

POOL_DIMENSIONS = ("pool", "service")
SERVICE_DIMENSIONS = ("service",)
REASON_DIMENSIONS = ("reason", "service")
POOL_REASON_DIMENSIONS = ("pool", "reason", "service")


@dataclass(frozen=True)
class MetricSpec:
    """A metric the code emits: its unit and every dimension set it is published with."""

    name: str
    unit: MetricUnit
    dimension_sets: tuple[tuple[str, ...], ...]


def _spec(name: str, unit: MetricUnit, *dimension_sets: tuple[str, ...]) -> MetricSpec:
    return MetricSpec(name, unit, tuple(tuple(sorted(dims)) for dims in dimension_sets))


_COUNT, _SECONDS = MetricUnit.Count, MetricUnit.Seconds

METRICS: dict[str, MetricSpec] = {
    spec.name: spec
    for spec in (
        _spec(READY, _COUNT, POOL_DIMENSIONS),
        _spec(PENDING, _COUNT, POOL_DIMENSIONS),
        _spec(RUNNING, _COUNT, POOL_DIMENSIONS),
        _spec(CAPACITY, _COUNT, POOL_DIMENSIONS),
        # Also service-wide, so one alarm (the clone failure rate) covers every pool.
        _spec(CLONES_STARTED, _COUNT, POOL_DIMENSIONS, SERVICE_DIMENSIONS),
        _spec(CLONE_FAILURES, _COUNT, POOL_DIMENSIONS, SERVICE_DIMENSIONS, REASON_DIMENSIONS),
        _spec(VMS_DESTROYED, _COUNT, POOL_DIMENSIONS),
        _spec(PROVIDER_CALLS, _COUNT, POOL_DIMENSIONS),
        _spec(RECONCILE_DURATION, _SECONDS, POOL_DIMENSIONS),
        _spec(CLONE_DURATION, _SECONDS, POOL_DIMENSIONS),
        _spec(BOOT_DURATION, _SECONDS, POOL_DIMENSIONS),
        _spec(RECONCILE_ERRORS, _COUNT, POOL_DIMENSIONS, SERVICE_DIMENSIONS),
        _spec(DNS_FAILURES, _COUNT, POOL_REASON_DIMENSIONS),
        _spec(MIGRATIONS, _COUNT, POOL_DIMENSIONS),
        _spec(MIGRATION_FAILURES, _COUNT, POOL_DIMENSIONS),
        _spec(TARGET_SIZE, _COUNT, POOL_DIMENSIONS),
        _spec(PREDICTED_DEMAND, _COUNT, POOL_DIMENSIONS),
        _spec(CHECKOUTS, _COUNT, SERVICE_DIMENSIONS),
        _spec(CHECKOUT_MISSES, _COUNT, SERVICE_DIMENSIONS),
        _spec(DELETES, _COUNT, SERVICE_DIMENSIONS),
        _spec(REFILL_LATENCY, _SECONDS, SERVICE_DIMENSIONS),
    )
}

Values = Union[float, Sequence[float]]


def emit(pool: str | None, counts: Mapping[str, Values], unit: MetricUnit = MetricUnit.Count,
         seconds: Mapping[str, Values] | None = None, dimensions: Mapping[str, str] | None = None) -> None:
    """Publish metrics for one pool (or service-wide when ``pool`` is None) as one EMF document.

    A value may be a list: EMF carries every sample (a pass that saw three clones finish
    publishes three clone durations). ``dimensions`` adds dimensions beyond ``pool``/``service``.
    A metric missing from ``METRICS`` (or emitted with dimensions it does not declare) is still
    published, with a warning: the dashboard would not show it.
    """
    metrics = EphemeralMetrics(namespace=NAMESPACE, service=SERVICE)
    names = dict(dimensions or {})
    if pool is not None:
        names["pool"] = pool
    for dimension, label in names.items():
        metrics.add_dimension(name=dimension, value=label)
    dimension_set = tuple(sorted([*names, "service"]))
    published = False
    for metric_unit, series in ((unit, counts), (MetricUnit.Seconds, seconds or {})):
        for name, value in series.items():
            spec = METRICS.get(name)
            if spec is None or dimension_set not in spec.dimension_sets:
                logger.warning("metric not in observability.METRICS", extra={"metric": name,
                                                                             "dimensions": dimension_set})
            for sample in _samples(value):
                metrics.add_metric(name=name, unit=metric_unit, value=sample)
                published = True
    if published:
        metrics.flush_metrics()


def _samples(value: Values) -> Iterable[float]:
    return [value] if isinstance(value, (int, float)) else value


# --- clone failure reasons ----------------------------------------------------------------------

_REASON_PATTERNS: tuple[tuple[str, re.Pattern[str]], ...] = tuple(
    (reason, re.compile(pattern, re.IGNORECASE))
    for reason, pattern in (
        ("timeout", r"time(d)? ?out|deadline"),
        ("template", r"template|not found|no such|does not exist"),
        ("capacity", r"insufficient|no space|capacity|quota|resource pool|datastore.*full"),
        ("permission", r"permission|denied|not authori[sz]ed|forbidden|login|credential"),
        ("connection", r"connect|unreachable|refused|reset|ssl|tls|network"),
    )
)

CLONE_FAILURE_REASONS = tuple(reason for reason, _ in _REASON_PATTERNS) + ("other",)
"""The few classes a clone failure is counted under (the metric dimension ``reason``)."""


def clone_failure_reason(error: str) -> str:
    """The class of a clone failure's error text: a bounded set, safe as a metric dimension."""
    for reason, pattern in _REASON_PATTERNS:
        if pattern.search(error or ""):
            return reason
    return "other"
