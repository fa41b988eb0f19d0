"""Structured logs (Powertools Logger) and CloudWatch EMF metrics (Powertools Metrics).

Metrics are emitted per pool with the dimension ``pool``, in the namespace ``vmpool``. Each
emission is its own EMF document (EphemeralMetrics) so a long-running reconcile loop publishes
each pass as it finishes instead of at the end of the invocation.
"""

from __future__ import annotations

from typing import Mapping

from aws_lambda_powertools import Logger
from aws_lambda_powertools.metrics import EphemeralMetrics, MetricUnit

NAMESPACE = "vmpool"
SERVICE = "vmpool"

logger = Logger(service=SERVICE)


def emit(pool: str | None, counts: Mapping[str, float], unit: MetricUnit = MetricUnit.Count,
         seconds: Mapping[str, float] | None = None) -> None:
    """Publish metrics for one pool (or service-wide when ``pool`` is None) as one EMF document."""
    metrics = EphemeralMetrics(namespace=NAMESPACE, service=SERVICE)
    if pool is not None:
        metrics.add_dimension(name="pool", value=pool)
    for name, value in counts.items():
        metrics.add_metric(name=name, unit=unit, value=value)
    for name, value in (seconds or {}).items():
        metrics.add_metric(name=name, unit=MetricUnit.Seconds, value=value)
    metrics.flush_metrics()
