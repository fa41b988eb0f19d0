"""Structured logs (Powertools Logger), CloudWatch EMF metrics (Powertools Metrics), tracing.

Metrics are emitted in the namespace ``vmpool/<stage>`` (``POWERTOOLS_METRICS_NAMESPACE``, set
per stage by infra/sync_config.py, so two stages in one account never mix); Powertools adds the
dimension ``service``. Each emission is its own EMF document (EphemeralMetrics).

Custom metrics are billed per metric (name + dimensions) per hour it receives data: a gauge per
pool would cost $0.30 a month per pool and metric, more than the pool's Lambda time. So gauges
and timings are service-wide (the tick publishes the totals and the number of empty pools once a
minute), and the few metrics with a ``pool`` dimension are published only when their event
happens for that pool: ``CheckoutMisses`` (a checkout found no ready VM; per ``alias`` for a
name that is only an alias), ``CloneFailures``,
``ReconcileErrors``, ``DnsFailures``, ``Migrations``, ``MigrationFailures``,
``TemplatePreparationFailures`` and ``CloneCancelsRefused``. A quiet pool adds
no metric at all; per-pool counts are in the logs (the ``reconcile pass`` and ``tick`` lines)
for Logs Insights.

``METRICS`` below is the single source of truth for metric names and their dimension sets: the
code emits the constants, and the CloudWatch dashboard and alarms (infra/template.py) are
generated from the same constants, so a renamed metric cannot leave a dashboard graphing nothing.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import sys
import threading
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping, Sequence, Union

from aws_lambda_powertools import Logger, Tracer
from aws_lambda_powertools.logging.formatter import LambdaPowertoolsFormatter, set_context_keys
from aws_lambda_powertools.metrics import EphemeralMetrics, MetricUnit
from aws_lambda_powertools.metrics.functions import is_metrics_disabled

from chalicelib.auth.secrets import RedactingFilter, SecretUnavailable, count_failures_with
from chalicelib.logs import SERVICE
from chalicelib.providers.failures import FailureKind

BASE_NAMESPACE = "vmpool"
NAMESPACE_ENV = "POWERTOOLS_METRICS_NAMESPACE"


def namespace_for(stage: str) -> str:
    """The metric namespace of a stage."""
    return f"{BASE_NAMESPACE}/{stage}"


NAMESPACE = os.environ.get(NAMESPACE_ENV) or BASE_NAMESPACE


def json_log_line(record: Mapping[str, Any]) -> str:
    """A log record as one line of JSON, as Powertools writes it (compact, other alphabets as they
    are), but always text a UTF-8 stream can write: a lone surrogate in any value (a direct
    invoke's ``requestId`` of ``\\ud800``, the request's correlation id on every line it logs)
    made the stream's encoder fail, and the line was lost, a ``--- Logging error ---`` traceback
    on stderr in its place. Such a line is written with every non-ASCII character escaped."""
    text = json.dumps(record, default=str, separators=(",", ":"), ensure_ascii=False)
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            return json.dumps(record, default=str, separators=(",", ":"))
    return text


logger = Logger(service=SERVICE, json_serializer=json_log_line)

append_request_keys: Callable[..., None] = (
    set_context_keys
    if type(logger.registered_formatter).thread_safe_append_keys is LambdaPowertoolsFormatter.thread_safe_append_keys
    else logger.thread_safe_append_keys)
"""``logger.thread_safe_append_keys``: keys on every line this thread (context) logs from now on.
Powertools' JSON formatter keeps them in one context variable whatever formatter object is
asked; reaching it through the logger is seven calls of Python a request (the handler and
formatter looked up each time), ``set_context_keys`` two (docs/performance.md, "Checkout CPU per
cycle")."""

REDACTION = RedactingFilter()
"""Masks every secret the service has resolved, in every log line (belt and braces: no code
path logs a secret on purpose)."""


def redact_secrets(values: Iterable[Any]) -> None:
    """Mask these values from now on in the Powertools logger's output (its children's too:
    chalicelib.logs) and the root handlers' (where libraries' loggers end up). Idempotent."""
    for value in values:
        REDACTION.add(value)
    handlers = [logger.registered_handler, *logging.getLogger().handlers]
    for handler in handlers:
        if REDACTION not in handler.filters:
            handler.addFilter(REDACTION)


# --- libraries' own loggers -----------------------------------------------------------------------

LIBRARY_LOGGERS = ("botocore", "boto3", "s3transfer", "urllib3", "pyVmomi", "redis", "ldap3")
"""Libraries whose loggers write through the service's JSON handler (``route_library_logs``)."""

_URL_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/\s@'\"<>]+@")
_QUERY_VALUE = re.compile(r"([?&][^=&#\s'\"<>?]+=)[^&#\s'\"<>]+")
_SECRET_ELEMENT = re.compile(
    r"(?is)(<(?:[\w.-]+:)?(password|passwd|pwd|secret|token|sessionCookie|credential)\b[^>]*>)(.*?)(</(?:[\w.-]+:)?\2\s*>)")
WIRE_MASK = "**********"


def mask_wire_secrets(text: str) -> str:
    """``text`` with what a library's line may carry of a credential masked: a URL's
    ``user:password@``, every query value (a presigned URL's signature, a token passed as a
    parameter) and the content of SOAP/XML elements named like a password, secret or token."""
    text = _URL_USERINFO.sub(lambda match: f"{match[1]}{WIRE_MASK}@", text)
    text = _QUERY_VALUE.sub(lambda match: f"{match[1]}{WIRE_MASK}", text)
    return _SECRET_ELEMENT.sub(lambda match: f"{match[1]}{WIRE_MASK}{match[4]}", text)


class LibraryRecords(logging.Filter):
    """What a library may write: INFO and above (its DEBUG is its wire log: botocore's response
    bodies, which for GetSecretValue are the secret, and pyVmomi's SOAP bodies, which for Login
    hold the password), its message and exception with ``mask_wire_secrets`` applied."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.INFO:
            return False
        message = record.getMessage()
        masked = mask_wire_secrets(message)
        if masked != message:
            record.msg, record.args = masked, None
        if record.exc_info and record.exc_info[0] is not None:
            text = logging.Formatter().formatException(record.exc_info)
            masked = mask_wire_secrets(text)
            if masked != text:
                # The fields Powertools' JSON formatter writes in preference to exc_info's.
                record.__dict__.update(exception=masked, exception_name=record.exc_info[0].__name__)
                record.exc_text, record.exc_info = masked, None
        return True


class _ServiceHandler(logging.Handler):
    """Hands a library's record to the service's logger (``vmpool``), named by the library's
    logger (the ``logger`` key): its handler's JSON formatter (service, correlation id, level,
    timestamp), secret mask (``REDACTION``) and lock, which the metrics' EMF lines share
    (``_write_line``): a library's line never splits another line."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.addFilter(LibraryRecords())

    def emit(self, record: logging.LogRecord) -> None:
        record.logger = record.name
        # The service logger's own handlers only: handed to the logger, the record would go on
        # to the root logger's handlers, which pass every name but the service's.
        for handler in logging.getLogger(SERVICE).handlers:
            if record.levelno >= handler.level:
                handler.handle(record)


LIBRARY_HANDLER = _ServiceHandler()


def route_library_logs(level: int | str | None = None) -> None:
    """Send the libraries' loggers (``LIBRARY_LOGGERS``) through the service's JSON handler at
    ``level`` (the service logger's, from ``POWERTOOLS_LOG_LEVEL``), never below INFO; not on to
    the root logger, whose handler in Lambda writes plain text (``[WARNING] <time> <request id>
    message``) that Logs Insights cannot parse into fields. Idempotent."""
    wanted = logging.getLevelName(level) if isinstance(level, str) else level
    floor = max(int(wanted if isinstance(wanted, int) else logger.log_level), logging.INFO)
    for name in LIBRARY_LOGGERS:
        library = logging.getLogger(name)
        if LIBRARY_HANDLER not in library.handlers:
            library.addHandler(LIBRARY_HANDLER)
        library.setLevel(floor)
        library.propagate = False


route_library_logs()



class _NoTracer:
    """Stands in for Powertools' Tracer where tracing is off: decorators return the function."""

    def capture_lambda_handler(self, handler: Callable[..., Any] | None = None,
                               **options: Any) -> Callable[..., Any]:
        """The handler itself; called with options only (as Tracer's), the decorator."""
        return handler if handler is not None else self.capture_lambda_handler

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
TRACING = not isinstance(tracer, _NoTracer)
"""Whether this process traces (a stage with tracing, in Lambda): without it the tracer's
middleware would wrap every request in a function that only calls the next one."""

# --- metric names -------------------------------------------------------------------------------

# Service-wide gauges, published by the tick once a minute.
READY = "Ready"
PENDING = "Pending"
RUNNING = "Running"
CAPACITY = "Capacity"
EMPTY_POOLS = "EmptyPools"
# Counters and timings of reconcile passes (service-wide; published by passes that changed something).
CLONES_STARTED = "ClonesStarted"
CLONE_FAILURES = "CloneFailures"
VMS_DESTROYED = "VMsDestroyed"
PROVIDER_CALLS = "ProviderCalls"
RECONCILE_DURATION = "ReconcileDuration"
CLONE_DURATION = "CloneDuration"
BOOT_DURATION = "BootDuration"
RECONCILE_ERRORS = "ReconcileErrors"
# Per pool, each only when it happens for the pool.
DNS_FAILURES = "DnsFailures"
MIGRATIONS = "Migrations"
MIGRATION_FAILURES = "MigrationFailures"
TEMPLATE_PREPARATION_FAILURES = "TemplatePreparationFailures"
# A clone past its pool's timeout whose cancel the provider refused (providers.base.CancelRefused:
# its metric_key is the reason); its slot is freed CLONE_CANCEL_WAIT_SECONDS later instead.
CLONE_CANCELS_REFUSED = "CloneCancelsRefused"
# Pools with a ``sizing`` block, each reconcile pass (docs/sizing.md).
TARGET_SIZE = "TargetSize"
PREDICTED_DEMAND = "PredictedDemand"
# API (service-wide; misses per pool too).
CHECKOUTS = "Checkouts"
CHECKOUT_MISSES = "CheckoutMisses"
DELETES = "Deletes"
# Reconcile queue consumer (service-wide): how long a checkout's nudge waited in the queue.
REFILL_LATENCY = "RefillLatency"
# Reconcile queue consumer (service-wide): how late each pass started past its message's due time
# (its send plus its delay; first deliveries only), when 10 s or more (pool_queue.seconds_late).
# The reconcile-late alarm.
PASS_LATENESS = "PassLateness"
# Any function (service-wide): a config pushed to S3 refused, the last good one kept.
CONFIG_REJECTED = "ConfigRejected"
# The scheduler's tick (service-wide): VMs its rebuild of the service's running set added or
# removed, a path that moved VMs without keeping the set (a bug; the quota was off until then).
RUNNING_COUNT_DRIFT = "RunningCountDrift"
# The scheduler's tick (service-wide): pools whose message SQS did not take (after the retries the
# tick's time allowed); they wait for the next tick.
POOLS_NOT_QUEUED = "PoolsNotQueued"
# Any function (service-wide): an AWS call that failed where the function carries on without it
# (a config refresh from S3: the config in use stays; a refill nudge to SQS: the tick refills; a
# pass's follow-up or retry to SQS: the tick looks at the pool).
# Its warning line gives the call, AWS's code and the failure's class (aws_clients.AwsCallFailed).
AWS_CALL_FAILURES = "AwsCallFailures"
# Any function (service-wide, and by reason): a secret reference of the config (Secrets Manager,
# SSM) that could not be fetched (auth/secrets.py SecretUnavailable: its metric_key is the reason).
SECRET_FAILURES = "SecretFailures"
# A reconcile pass (service-wide, and by provider and reason): the names of a provider's VMs,
# read once after Redis lost its data (manager/names.py), could not be read (the provider's
# failure kind; its pools clone under random names until a read succeeds). Should stay 0.
NAMES_READ_FAILURES = "NamesReadFailures"
# The scheduler's tick (service-wide): runtime templates and clone targets the config in effect has
# no room for in /config, left out (store/pool_overrides.py ``fitting``). Should stay 0.
OVERRIDES_IGNORED = "OverridesIgnored"

POOL_DIMENSIONS = ("pool", "service")
SERVICE_DIMENSIONS = ("service",)
REASON_DIMENSIONS = ("reason", "service")
POOL_REASON_DIMENSIONS = ("pool", "reason", "service")
ALIAS_DIMENSIONS = ("alias", "service")
PROVIDER_REASON_DIMENSIONS = ("provider", "reason", "service")


@dataclass(frozen=True)
class MetricSpec:
    """A metric the code emits: its unit and every dimension set it is published with."""

    name: str
    unit: MetricUnit
    dimension_sets: tuple[tuple[str, ...], ...]


def _spec(name: str, unit: MetricUnit, *dimension_sets: tuple[str, ...]) -> MetricSpec:
    return MetricSpec(name, unit, tuple(tuple(sorted(dims)) for dims in dimension_sets))


_COUNT, _SECONDS = MetricUnit.Count, MetricUnit.Seconds

SERVICE_COUNTS = (READY, PENDING, RUNNING, CAPACITY, EMPTY_POOLS, CLONES_STARTED, VMS_DESTROYED, PROVIDER_CALLS,
                  CHECKOUTS, DELETES, CONFIG_REJECTED, RUNNING_COUNT_DRIFT, POOLS_NOT_QUEUED, OVERRIDES_IGNORED,
                  AWS_CALL_FAILURES)
"""The counts published service-wide only (by ``service``), never per pool or reason."""
SERVICE_DURATIONS = (RECONCILE_DURATION, CLONE_DURATION, BOOT_DURATION, REFILL_LATENCY, PASS_LATENESS)
"""The durations (seconds) published service-wide only."""

METRICS: dict[str, MetricSpec] = {
    spec.name: spec
    for spec in (
        *(_spec(name, _COUNT, SERVICE_DIMENSIONS) for name in SERVICE_COUNTS),
        *(_spec(name, _SECONDS, SERVICE_DIMENSIONS) for name in SERVICE_DURATIONS),
        # Per pool only when a clone failed; by reason (a bounded set) for the dashboard.
        _spec(CLONE_FAILURES, _COUNT, POOL_DIMENSIONS, SERVICE_DIMENSIONS, REASON_DIMENSIONS),
        # By reason too: a provider's failure kind, redis or lease (what to fix differs).
        _spec(RECONCILE_ERRORS, _COUNT, POOL_DIMENSIONS, SERVICE_DIMENSIONS, REASON_DIMENSIONS),
        _spec(DNS_FAILURES, _COUNT, POOL_REASON_DIMENSIONS),
        _spec(MIGRATIONS, _COUNT, POOL_DIMENSIONS),
        _spec(MIGRATION_FAILURES, _COUNT, POOL_DIMENSIONS),
        # create_template_delta_disks: a preparation failed or outlasted the clone timeout. Per
        # pool and reason for the dashboard, service-wide for the alarm.
        _spec(TEMPLATE_PREPARATION_FAILURES, _COUNT, POOL_REASON_DIMENSIONS, SERVICE_DIMENSIONS),
        _spec(CLONE_CANCELS_REFUSED, _COUNT, POOL_REASON_DIMENSIONS),
        _spec(TARGET_SIZE, _COUNT, POOL_DIMENSIONS),
        _spec(PREDICTED_DEMAND, _COUNT, POOL_DIMENSIONS),
        # Per alias for a name asked for that is only an alias (no pool of that name).
        _spec(CHECKOUT_MISSES, _COUNT, POOL_DIMENSIONS, SERVICE_DIMENSIONS, ALIAS_DIMENSIONS),
        _spec(SECRET_FAILURES, _COUNT, SERVICE_DIMENSIONS, REASON_DIMENSIONS),
        _spec(NAMES_READ_FAILURES, _COUNT, SERVICE_DIMENSIONS, PROVIDER_REASON_DIMENSIONS),
    )
}


def count_secret_failure(error: SecretUnavailable) -> None:
    """Count a failed fetch of a secret in ``SecretFailures`` (service-wide, and by ``reason``:
    the error's bounded ``metric_key``), as the other typed failures are counted
    (``AwsCallFailures``, a provider's ``ReconcileErrors``): a secret that cannot be read fails
    every login (LDAP), every Redis connection or every pass of a provider's pools, and only
    its callers' log lines said so. Registered for every resolver of the process below."""
    emit(None, {SECRET_FAILURES: 1})
    emit(None, {SECRET_FAILURES: 1}, dimensions={"reason": error.metric_key})


PER_POOL_METRICS = tuple(name for name, spec in METRICS.items() if any("pool" in dims for dims in spec.dimension_sets))
"""The metrics with a ``pool`` dimension: each is published only when its event happens for the
pool (a miss, a failure, a migration), never every pass."""

Values = Union[float, Sequence[float]]

_SWITCHES = (b"POWERTOOLS_DEV", b"POWERTOOLS_METRICS_DISABLED")
"""The environment variables Powertools' ``is_metrics_disabled`` reads (as ``os.environ`` keeps
them on POSIX)."""
_switches_seen: tuple[Any, bool] = (None, False)
"""The values of ``_SWITCHES`` last looked at and Powertools' answer for them, one tuple replaced
whole (threads emit at once)."""


def metrics_disabled() -> bool:
    """Powertools' ``is_metrics_disabled``, worked out again only when ``POWERTOOLS_DEV`` or
    ``POWERTOOLS_METRICS_DISABLED`` changed (tests and the local stack set them at run time).
    Its rule reads the environment through ``os.getenv`` (eleven calls of Python an emission,
    two emissions a checkout cycle: docs/performance.md, "Checkout CPU per cycle"); here the
    two values are looked up in ``os.environ``'s own dict, which every change through
    ``os.environ`` (``monkeypatch.setenv``, ``patch.dict``) updates, as ``os.getenv`` reads it."""
    global _switches_seen
    data = getattr(os.environ, "_data", None)
    if not isinstance(data, dict):  # not CPython's POSIX layout: Powertools' rule every time
        return is_metrics_disabled()
    values = (data.get(_SWITCHES[0]), data.get(_SWITCHES[1]))
    seen = _switches_seen
    if values != seen[0]:
        seen = _switches_seen = (values, is_metrics_disabled())
    return seen[1]



def emit(pool: str | None, counts: Mapping[str, Values], unit: MetricUnit = MetricUnit.Count,
         seconds: Mapping[str, Values] | None = None, dimensions: Mapping[str, str] | None = None) -> None:
    """Publish metrics for one pool (or service-wide when ``pool`` is None) as EMF documents.

    A value may be a list: EMF carries every sample (a pass that saw three clones finish
    publishes three clone durations), at most ``SAMPLES_PER_DOCUMENT`` of a metric a document.
    ``dimensions`` adds dimensions beyond ``pool``/``service``. A metric missing from ``METRICS``
    (or emitted with dimensions it does not declare) is still published, with a warning: the
    dashboard would not show it. A sample that is not a finite number is left out, with a
    warning: CloudWatch drops the whole document of a value JSON cannot carry (NaN, Infinity).
    Nothing is printed while ``POWERTOOLS_METRICS_DISABLED`` is set (the local stack).
    """
    if metrics_disabled():
        return
    names = dict(dimensions or {})
    if pool is not None:
        names["pool"] = pool
    dimension_set = tuple(sorted([*names, "service"]))
    columns: list[tuple[str, MetricUnit, list[float]]] = []
    for metric_unit, series in ((unit, counts), (MetricUnit.Seconds, seconds or {})):
        for name, value in series.items():
            spec = METRICS.get(name)
            if spec is None or dimension_set not in spec.dimension_sets:
                logger.warning("metric not in observability.METRICS", extra={"metric": name,
                                                                             "dimensions": dimension_set})
            samples = _samples(value)
            finite = [float(sample) for sample in samples if math.isfinite(sample)]
            if len(finite) < len(samples):
                logger.warning("metric samples that are not finite numbers left out",
                               extra={"metric": name, "left_out": len(samples) - len(finite)})
            if finite:
                columns.append((name, metric_unit, finite))
    longest = max((len(values) for _, _, values in columns), default=0)
    for start in range(0, longest, SAMPLES_PER_DOCUMENT):
        metrics = _thread_metrics()
        for dimension, label in names.items():
            metrics.add_dimension(name=dimension, value=label)
        for name, metric_unit, values in columns:
            for sample in values[start:start + SAMPLES_PER_DOCUMENT]:
                metrics.add_metric(name=name, unit=metric_unit, value=sample)
        document = metrics.serialize_metric_set()
        metrics.clear_metrics()
        _write_line(json.dumps(document, separators=(",", ":")))


def _write_line(text: str) -> None:
    """One line on stdout in one write, under the lock of the log handler that writes there too.
    Powertools prints a document and its newline in two writes: the reconcile consumer's threads
    (a batch's pools at once) interleaved them with each other's and with log lines, two JSON
    documents on one line, and CloudWatch dropped what it could not parse (a tenth of the
    documents with eight threads busy)."""
    handler = logger.registered_handler
    handler.acquire()
    try:
        sys.stdout.write(text + "\n")
    finally:
        handler.release()


SAMPLES_PER_DOCUMENT = 99
"""EMF takes at most 100 values of a metric in one document. Powertools prints a document by
itself the moment one of its metrics holds 100 values (with ``print``, even with
POWERTOOLS_METRICS_DISABLED): so ``emit`` never lets a document reach 100."""


_per_thread = threading.local()


def _thread_metrics() -> EphemeralMetrics:
    """This thread's metrics object, made once: building one costs more than publishing with it
    (issue 14: it was a fifth of a DELETE's CPU). Each flush empties it; an emission that failed
    half-way is cleared before reuse."""
    metrics: EphemeralMetrics | None = getattr(_per_thread, "metrics", None)
    if metrics is None:
        metrics = EphemeralMetrics(namespace=NAMESPACE, service=SERVICE)
        _per_thread.metrics = metrics
    elif metrics.metric_set or metrics.dimension_set:
        metrics.clear_metrics()
    return metrics


def _samples(value: Values) -> Sequence[float]:
    return [value] if isinstance(value, (int, float)) else value


# --- clone failure reasons ----------------------------------------------------------------------

CLONE_FAILURE_REASONS = tuple(kind.value for kind in FailureKind)
"""The few kinds a clone failure is counted under (the metric dimension ``reason``): the kind the
provider reported (``providers.base.FailureKind``)."""


count_failures_with(count_secret_failure)
