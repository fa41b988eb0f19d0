"""Metrics: the EMF documents the code prints, and the dashboard and alarms that read them.

The registry ``observability.METRICS`` is the single source of truth; these tests hold the code
and the deployed template to it."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
import redis
from packaged import Package

from chalicelib import observability as m
from chalicelib.clock import FakeClock
from chalicelib.config import parse
from chalicelib.manager.runner import run_pool
from chalicelib.services import Services

CONFIG = """\
config: {check_loop_delay_min: 0.1, task_limit: 10}
providers:
  dummy: {provider_class: dummy, seed: 3, createvm_max_time: 2, boot_time: 1}
pools:
  - {name: alpha, size: 2, provider: dummy}
  - {name: broken, size: 1, provider: dummy, createvm_fail_percent: 100}
"""


def emf_documents(stdout: str) -> list[dict[str, Any]]:
    """The EMF documents among the JSON lines on stdout (log lines are JSON too)."""
    documents = []
    for line in stdout.splitlines():
        if line.startswith("{") and '"_aws"' in line:
            documents.append(json.loads(line))
    return documents


def emitted(documents: list[dict[str, Any]]) -> dict[tuple[str, tuple[str, ...]], list[float]]:
    """(metric name, sorted dimension names) -> every value published."""
    found: dict[tuple[str, tuple[str, ...]], list[float]] = {}
    for document in documents:
        (directive,) = document["_aws"]["CloudWatchMetrics"]
        assert directive["Namespace"] == m.NAMESPACE
        (dimensions,) = directive["Dimensions"]
        assert all(isinstance(document[d], str) for d in dimensions)
        for metric in directive["Metrics"]:
            values = document[metric["Name"]]
            found.setdefault((metric["Name"], tuple(sorted(dimensions))), []).extend(
                values if isinstance(values, list) else [values])
    return found


def test_emf_document_shape(capsys: pytest.CaptureFixture[str]) -> None:
    m.emit("alpha", {m.READY: 3, m.PENDING: 1}, seconds={m.CLONE_DURATION: [12.5, 20.0]})
    (document,) = emf_documents(capsys.readouterr().out)

    directive = document["_aws"]["CloudWatchMetrics"][0]
    assert directive["Namespace"] == "vmpool"
    assert directive["Dimensions"] == [["pool", "service"]]
    assert {x["Name"]: x["Unit"] for x in directive["Metrics"]} == {
        "Ready": "Count", "Pending": "Count", "CloneDuration": "Seconds"}
    assert (document["pool"], document["service"]) == ("alpha", "vmpool")
    assert document["Ready"] == [3.0] and document["CloneDuration"] == [12.5, 20.0]
    assert isinstance(document["_aws"]["Timestamp"], int)


def test_service_wide_and_reason_metrics_carry_their_own_dimensions(capsys: pytest.CaptureFixture[str]) -> None:
    m.emit(None, {m.CHECKOUTS: 2})
    m.emit(None, {m.CLONE_FAILURES: 1}, dimensions={"reason": m.clone_failure_reason("Task timed out")})
    found = emitted(emf_documents(capsys.readouterr().out))
    assert found == {(m.CHECKOUTS, ("service",)): [2.0], (m.CLONE_FAILURES, ("reason", "service")): [1.0]}


def test_clone_failure_reasons_are_a_small_fixed_set() -> None:
    assert m.clone_failure_reason("Task timed out after 600 s") == "timeout"
    assert m.clone_failure_reason("template 'templates/x' not found") == "template"
    assert m.clone_failure_reason("Insufficient disk space on datastore") == "capacity"
    assert m.clone_failure_reason("Permission to perform this operation was denied") == "permission"
    assert m.clone_failure_reason("something unheard of") == "other"
    assert set(m.CLONE_FAILURE_REASONS) == {"timeout", "template", "capacity", "permission", "connection", "other"}


def test_reconcile_passes_emit_only_registered_metrics(redis_client: redis.Redis, clock: FakeClock,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    services = Services(parse(CONFIG), redis_client, clock=clock, prefix="vmpool:")
    for _ in range(3):  # start clones; they finish; they boot
        for pool in ("alpha", "broken"):
            run_pool(services, pool, budget_seconds=0)
        clock.advance(5)
    found = emitted(emf_documents(capsys.readouterr().out))

    for name, dimensions in found:
        assert name in m.METRICS, name
        assert dimensions in m.METRICS[name].dimension_sets, (name, dimensions)
    pool = tuple(sorted(m.POOL_DIMENSIONS))
    for name in (m.READY, m.PENDING, m.RUNNING, m.CAPACITY, m.CLONES_STARTED, m.CLONE_FAILURES,
                 m.PROVIDER_CALLS, m.RECONCILE_DURATION, m.CLONE_DURATION, m.BOOT_DURATION):
        assert (name, pool) in found, name
    assert found[(m.CAPACITY, pool)][0] in (1.0, 2.0)
    assert sum(found[(m.CLONE_FAILURES, ("service",))]) >= 1
    assert any(dims == ("reason", "service") for name, dims in found if name == m.CLONE_FAILURES)


# --- the deployed dashboard and alarms read what the code emits -------------------------------

SEARCH = re.compile(r"\{(?P<schema>[^}]+)\} MetricName=\\?\"(?P<name>\w+)\\?\"")


def dashboard_references(package: Package) -> set[tuple[str, tuple[str, ...]]]:
    (dashboard,) = package.of_type("AWS::CloudWatch::Dashboard").values()
    body = json.loads(dashboard["Properties"]["DashboardBody"]["Fn::Sub"])
    found = set()
    for widget in body["widgets"]:
        for row in widget["properties"]["metrics"]:
            for item in row:
                if isinstance(item, dict) and "expression" in item:
                    for match in SEARCH.finditer(item["expression"]):
                        namespace, *dims = match["schema"].split(",")
                        if namespace == m.NAMESPACE:
                            found.add((match["name"], tuple(sorted(dims))))
            if row and row[0] == m.NAMESPACE:
                plain = [x for x in row if isinstance(x, str)]
                found.add((plain[1], tuple(sorted(plain[2::2]))))
    return found


def alarm_references(package: Package) -> set[tuple[str, tuple[str, ...]]]:
    found = set()
    for alarm in package.of_type("AWS::CloudWatch::Alarm").values():
        properties = alarm["Properties"]
        metrics = [properties] + [q["MetricStat"]["Metric"] for q in properties.get("Metrics", []) if "MetricStat" in q]
        for metric in metrics:
            if metric.get("Namespace") == m.NAMESPACE:
                found.add((metric["MetricName"], tuple(sorted(d["Name"] for d in metric["Dimensions"]))))
    return found


def test_dashboard_and_alarms_reference_only_metrics_the_code_emits(package: Package) -> None:
    references = dashboard_references(package) | alarm_references(package)
    assert len(references) >= 12
    for name, dimensions in references:
        assert name in m.METRICS, name
        assert dimensions in m.METRICS[name].dimension_sets, (name, dimensions)
    # Everything the code emits is on the dashboard.
    assert {name for name, _ in references} == set(m.METRICS)


def test_each_pool_with_a_size_has_an_empty_alarm(package: Package) -> None:
    from infra import sync_config

    sizes = sync_config.pool_sizes(sync_config.STAGES[package.stage])
    alarmed = {next(d["Value"] for d in a["Properties"]["Dimensions"] if d["Name"] == "pool")
               for a in package.of_type("AWS::CloudWatch::Alarm").values()
               if a["Properties"].get("MetricName") == m.READY}
    assert alarmed == {pool for pool, size in sizes.items() if size > 0}
