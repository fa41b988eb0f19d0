"""Metrics: the EMF documents the code prints, and the dashboard and alarms that read them.

The registry ``observability.METRICS`` is the single source of truth; these tests hold the code
and the deployed template to it."""

from __future__ import annotations

import io
import json
import re
import sys
import threading
import time

import pytest
import redis
from packaged import Package

from chalicelib import observability as m
from chalicelib.clock import FakeClock
from chalicelib.config import parse
from chalicelib.manager.dispatch import publish_totals
from chalicelib.manager.runner import run_pool
from chalicelib.services import Services
from tests.support import clone_failures_by_reason, emf_documents, emitted

CONFIG = """\
config: {check_loop_delay_min: 0.1, task_limit: 10}
providers:
  dummy: {provider_class: dummy, seed: 3, createvm_max_time: 2, boot_time: 1}
pools:
  - {name: alpha, size: 2, provider: dummy}
  - {name: broken, size: 1, provider: dummy, createvm_fail_percent: 100}
"""


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
    m.emit(None, {m.CLONE_FAILURES: 1}, dimensions={"reason": "timeout"})
    found = emitted(emf_documents(capsys.readouterr().out))
    assert found == {(m.CHECKOUTS, ("service",)): [2.0], (m.CLONE_FAILURES, ("reason", "service")): [1.0]}


def strict_documents(stdout: str) -> list[dict[str, object]]:
    """The EMF documents on stdout, parsed as CloudWatch does: NaN and Infinity are not JSON."""
    def refuse(constant: str) -> None:
        raise ValueError(f"{constant} is not JSON")

    return [json.loads(line, parse_constant=refuse) for line in stdout.splitlines() if '"_aws"' in line]


def test_many_samples_are_split_into_documents_cloudwatch_accepts(capsys: pytest.CaptureFixture[str],
                                                                  recwarn: pytest.WarningsRecorder) -> None:
    """EMF takes at most 100 values of a metric a document; every sample is still published."""
    for count in (100, 250):
        m.emit(None, {m.CLONES_STARTED: 1}, seconds={m.CLONE_DURATION: [float(i) for i in range(count)]})
        documents = strict_documents(capsys.readouterr().out)
        assert all(len(document[m.CLONE_DURATION]) <= 100 for document in documents)  # type: ignore[arg-type]
        assert emitted(documents) == {(m.CLONE_DURATION, ("service",)): [float(i) for i in range(count)],
                                      (m.CLONES_STARTED, ("service",)): [1.0]}
    assert not [str(warning.message) for warning in recwarn]  # Powertools' plain-text "no metrics" warning


def test_a_sample_that_is_not_a_finite_number_is_left_out(capsys: pytest.CaptureFixture[str]) -> None:
    m.emit("alpha", {m.READY: float("nan"), m.PENDING: 2}, seconds={m.CLONE_DURATION: [float("inf"), 3.0]})
    m.emit(None, {m.EMPTY_POOLS: float("-inf")})  # nothing left to publish
    (document,) = strict_documents(capsys.readouterr().out)
    assert emitted([document]) == {(m.PENDING, ("pool", "service")): [2.0],
                                   (m.CLONE_DURATION, ("pool", "service")): [3.0]}


def test_nothing_is_printed_while_metrics_are_disabled(capsys: pytest.CaptureFixture[str],
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """The local stack disables metrics; a pass that saw 150 clones finish printed one anyway
    (Powertools' own flush at 100 values ignores the switch)."""
    monkeypatch.setenv("POWERTOOLS_METRICS_DISABLED", "true")
    m.emit(None, {m.CHECKOUTS: 1})
    m.emit(None, {}, seconds={m.CLONE_DURATION: [1.0] * 150})
    assert emf_documents(capsys.readouterr().out) == []


def test_metrics_switched_off_and_on_at_run_time_follow_the_environment(
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """Whether metrics are off is remembered between emissions (Powertools reads the environment
    each time, a cost on every checkout): a switch turned at run time, either way, still counts
    from the next emission, as do POWERTOOLS_DEV and a switch set back to false."""
    monkeypatch.delenv("POWERTOOLS_METRICS_DISABLED", raising=False)
    monkeypatch.delenv("POWERTOOLS_DEV", raising=False)
    published = []
    for change in ({}, {"POWERTOOLS_METRICS_DISABLED": "true"}, {"POWERTOOLS_METRICS_DISABLED": None},
                   {"POWERTOOLS_DEV": "true"}, {"POWERTOOLS_METRICS_DISABLED": "false"},
                   {"POWERTOOLS_DEV": None}, {"POWERTOOLS_METRICS_DISABLED": "1"}):
        for name, value in change.items():
            if value is None:
                monkeypatch.delenv(name)
            else:
                monkeypatch.setenv(name, value)
        m.emit(None, {m.CHECKOUTS: 1})
        m.emit(None, {m.DELETES: 1})
        published.append(len(emf_documents(capsys.readouterr().out)))
    # Powertools' rule: off when disabled is true, or in dev mode unless disabled says false.
    assert published == [2, 0, 2, 0, 2, 2, 0]


class UnbufferedStdout(io.StringIO):
    """stdout as in Lambda: each write goes out at once, in a system call that lets other
    threads run meanwhile."""

    def write(self, text: str) -> int:
        written = super().write(text)
        time.sleep(0)  # releases the GIL, as the system call does
        return written


def test_threads_emitting_and_logging_at_once_write_whole_lines(monkeypatch: pytest.MonkeyPatch) -> None:
    """The reconcile consumer runs a batch's pools in threads, each publishing and logging at
    the end of its pass: every EMF document and log line is a line of its own (two on one line
    are one CloudWatch cannot parse, and both are lost)."""
    stdout = UnbufferedStdout()
    monkeypatch.setattr(sys, "stdout", stdout)
    handler = m.logger.registered_handler
    previous = handler.setStream(stdout)

    def pass_end() -> None:
        for _ in range(50):
            m.emit("alpha", {m.CLONE_FAILURES: 1})
            m.logger.warning("reconcile pass failed", extra={"pool": "alpha"})

    threads = [threading.Thread(target=pass_end) for _ in range(4)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        handler.setStream(previous)
    records = [json.loads(line) for line in stdout.getvalue().splitlines()]
    assert sum("_aws" in record for record in records) == 200
    assert sum(record.get("message") == "reconcile pass failed" for record in records) == 200


KINDS_CONFIG = """\
config: {task_limit: 10}
providers:
  dummy: {provider_class: dummy, createvm_fail_percent: 100}
pools:
  - {name: no-network, size: 2, provider: dummy, createvm_fail_kind: network}
  - {name: no-template, size: 1, provider: dummy, createvm_fail_kind: template}
  - {name: denied, size: 1, provider: dummy, createvm_fail_kind: permission}
  - {name: flaky, size: 1, provider: dummy}
"""


def test_clone_failures_are_counted_under_the_kind_the_provider_reported(
        redis_client: redis.Redis, clock: FakeClock, capsys: pytest.CaptureFixture[str]) -> None:
    services = Services(parse(KINDS_CONFIG), redis_client, clock=clock, prefix="vmpool:")
    for pool in ("no-network", "no-template", "denied", "flaky"):
        run_pool(services, pool, budget_seconds=0)  # starts the clones
        run_pool(services, pool, budget_seconds=0)  # sees them fail
    assert clone_failures_by_reason(emf_documents(capsys.readouterr().out)) == {
        "network": 2, "template": 1, "permission": 1, "other": 1}
    assert set(m.CLONE_FAILURE_REASONS) == {
        "template", "network", "placement", "permission", "capacity", "timeout", "connection", "host", "other"}


def test_reconcile_passes_and_the_tick_emit_only_registered_metrics(redis_client: redis.Redis, clock: FakeClock,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    services = Services(parse(CONFIG), redis_client, clock=clock, prefix="vmpool:")
    for _ in range(3):  # start clones; they finish; they boot
        for pool in ("alpha", "broken"):
            run_pool(services, pool, budget_seconds=0)
        clock.advance(5)
    publish_totals(services)
    found = emitted(emf_documents(capsys.readouterr().out))

    for name, dimensions in found:
        assert name in m.METRICS, name
        assert dimensions in m.METRICS[name].dimension_sets, (name, dimensions)
    service = ("service",)
    for name in (m.READY, m.PENDING, m.RUNNING, m.CAPACITY, m.EMPTY_POOLS, m.CLONES_STARTED, m.CLONE_FAILURES,
                 m.PROVIDER_CALLS, m.RECONCILE_DURATION, m.CLONE_DURATION, m.BOOT_DURATION):
        assert (name, service) in found, name
    assert found[(m.CAPACITY, service)] == [3.0] and found[(m.EMPTY_POOLS, service)] == [1.0]  # broken is empty
    # Per pool: only the failing pool's failures.
    assert {(name, dims) for name, dims in found if "pool" in dims} == {(m.CLONE_FAILURES, ("pool", "service"))}
    assert any(dims == ("reason", "service") for name, dims in found if name == m.CLONE_FAILURES)


def test_an_idle_pass_publishes_no_metric(redis_client: redis.Redis, clock: FakeClock,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    """1,000 idle pools add no metric data and no EMF log volume."""
    services = Services(parse(CONFIG), redis_client, clock=clock, prefix="vmpool:")
    for _ in range(4):
        run_pool(services, "alpha")
        clock.advance(5)
    capsys.readouterr()
    report = run_pool(services, "alpha")
    assert not report.passes[0].work_in_flight
    assert emf_documents(capsys.readouterr().out) == []


def test_few_metrics_per_pool_and_each_only_on_events() -> None:
    """Gauges and timings are service-wide; what has a pool dimension is published only when it
    happens for the pool (test_an_idle_pass_publishes_no_metric)."""
    assert set(m.PER_POOL_METRICS) == {m.CHECKOUT_MISSES, m.CLONE_FAILURES, m.RECONCILE_ERRORS, m.DNS_FAILURES,
                                       m.MIGRATIONS, m.MIGRATION_FAILURES, m.TEMPLATE_PREPARATION_FAILURES,
                                       m.CLONE_CANCELS_REFUSED,
                                       # only pools with a ``sizing`` block (opt-in) publish these, each pass
                                       m.TARGET_SIZE, m.PREDICTED_DEMAND}
    for name in (m.READY, m.PENDING, m.RUNNING, m.CAPACITY, m.RECONCILE_DURATION, m.PROVIDER_CALLS):
        assert m.METRICS[name].dimension_sets == (("service",),)


def test_a_checkout_miss_is_counted_for_its_pool(redis_client: redis.Redis, clock: FakeClock,
                                                 capsys: pytest.CaptureFixture[str],
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    import app
    from local.gateway import Gateway

    services = Services(parse(CONFIG), redis_client, clock=clock, prefix="vmpool:")
    monkeypatch.setattr(app, "_services", services)
    monkeypatch.setattr(app, "_config", None)
    status, _, _ = Gateway(app.app)("POST", "/api/v3/vm/alpha", {}, b"", "127.0.0.1")
    assert status == 503
    found = emitted(emf_documents(capsys.readouterr().out))
    assert found[(m.CHECKOUT_MISSES, ("pool", "service"))] == [1.0]
    assert found[(m.CHECKOUT_MISSES, ("service",))] == [1.0]



def _checkout_miss_output(config: str, body: bytes, redis_client: redis.Redis, clock: FakeClock,
                          capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> str:
    """What the API prints (log lines and EMF documents) for a POST /vm of ``body`` that misses."""
    import app
    from local.gateway import Gateway

    services = Services(parse(config), redis_client, clock=clock, prefix="vmpool:")
    monkeypatch.setattr(app, "_services", services)
    monkeypatch.setattr(app, "_config", None)
    capsys.readouterr()
    status, _, _ = Gateway(app.app)("POST", "/api/v3/vm", {}, body, "127.0.0.1")
    assert status == 503
    return capsys.readouterr().out


def test_a_checkout_miss_is_counted_per_pool_only_for_a_pool_asked_for(
        redis_client: redis.Redis, clock: FakeClock, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The ``pool`` dimension of a miss was once the name asked for: an alias (``any``) graphed
    as a pool of its own. Then each pool of the alias was counted, a document per pool. A name
    that is a pool is counted for it; an alias only service-wide."""
    config = CONFIG.replace("{name: alpha, size: 2,", "{name: alpha, size: 2, alias: [any],").replace(
        "{name: broken, size: 1,", "{name: broken, size: 1, alias: [any],")
    documents = emf_documents(_checkout_miss_output(config, b'{"any": 1, "alpha": 1}', redis_client, clock,
                                                    capsys, monkeypatch))
    missed = [document["pool"] for document in documents
              if m.CHECKOUT_MISSES in document and "pool" in document["_aws"]["CloudWatchMetrics"][0]["Dimensions"][0]]
    assert missed == ["alpha"]
    assert emitted(documents)[(m.CHECKOUT_MISSES, ("service",))] == [1.0]


def test_a_checkout_miss_of_a_name_that_is_only_an_alias_is_counted_for_the_alias(
        redis_client: redis.Redis, clock: FakeClock, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A miss of an alias that is no pool's name counted service-wide only: the dashboard's
    misses-by-pool graph never showed it, and an operator could not tell which name callers
    were refused. It is counted once per alias (one document, whatever its pools), under an
    ``alias`` dimension, and the graph ranks aliases too."""
    config = CONFIG.replace("{name: alpha, size: 2,", "{name: alpha, size: 2, alias: [any],").replace(
        "{name: broken, size: 1,", "{name: broken, size: 1, alias: [any, broken-too],")
    documents = emf_documents(_checkout_miss_output(config, b'{"any": 1, "broken-too": 1, "alpha": 1}',
                                                    redis_client, clock, capsys, monkeypatch))
    by_alias = sorted(document["alias"] for document in documents
                      if m.CHECKOUT_MISSES in document and "alias" in document)
    assert by_alias == ["any", "broken-too"]
    found = emitted(documents)
    assert found[(m.CHECKOUT_MISSES, ("alias", "service"))] == [1.0, 1.0]
    assert found[(m.CHECKOUT_MISSES, ("service",))] == [1.0]


def test_the_log_bytes_of_a_missed_checkout_do_not_grow_with_its_aliass_pools(
        redis_client: redis.Redis, clock: FakeClock, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A 503 of an alias wrote one EMF document per pool the alias names: ~300 KB of logs per
    request for an alias of 1,000 pools, which any caller could repeat (log ingestion is billed
    per byte). One pool or 1,000 (names of the same length), the 503 prints the same bytes."""
    def config(pools: int) -> str:
        lines = "".join(f"  - {{name: p{index:04d}, size: 1, provider: dummy, alias: [many]}}\n"
                        for index in range(pools))
        return CONFIG.split("pools:\n")[0] + "pools:\n" + lines

    sizes = [len(_checkout_miss_output(config(pools), b'{"many": 1}', redis_client, clock, capsys, monkeypatch))
             for pools in (1, 1000)]
    assert sizes[0] > 0
    assert sizes[1] - sizes[0] < 200, sizes  # a timestamp's or request id's width, not a document per pool


# --- the deployed dashboard and alarms read what the code emits -------------------------------

QUERY = re.compile(r'^SELECT (?P<function>SUM|MAX)\((?P<name>\w+)\) '
                   r'FROM SCHEMA\("(?P<namespace>[^"]+)", (?P<dims>[\w, ]+)\) '
                   r"GROUP BY (?P<group>[\w, ]+) ORDER BY (?P=function)\(\) DESC LIMIT (?P<limit>\d+)$")
"""A per-pool graph's Metrics Insights query."""


def dashboard_references(package: Package) -> set[tuple[str, tuple[str, ...]]]:
    (dashboard,) = package.of_type("AWS::CloudWatch::Dashboard").values()
    body = json.loads(dashboard["Properties"]["DashboardBody"]["Fn::Sub"])
    namespace = m.namespace_for(package.stage)
    found = set()
    for widget in body["widgets"]:
        for row in widget["properties"].get("metrics", []):
            for item in row:
                if isinstance(item, dict) and "expression" in item:
                    match = QUERY.match(item["expression"])
                    assert match, item["expression"]
                    if match["namespace"] == namespace:
                        found.add((match["name"], tuple(sorted(match["dims"].split(", ")))))
            if row and row[0] == namespace:
                plain = [x for x in row if isinstance(x, str)]
                found.add((plain[1], tuple(sorted(plain[2::2]))))
    return found


def alarm_references(package: Package) -> set[tuple[str, tuple[str, ...]]]:
    namespace = m.namespace_for(package.stage)
    found = set()
    for alarm in package.of_type("AWS::CloudWatch::Alarm").values():
        properties = alarm["Properties"]
        metrics = [properties] + [q["MetricStat"]["Metric"] for q in properties.get("Metrics", []) if "MetricStat" in q]
        for metric in metrics:
            if metric.get("Namespace") == namespace:
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


def test_per_pool_graphs_rank_every_pool_and_draw_the_worst(package: Package) -> None:
    """At 1,000 pools failing at once, a SEARCH drew an arbitrary 500 of them (its cap, and a
    graph's), maybe not the worst: each per-pool graph is a Metrics Insights query that ranks
    every matching metric, grouped by pool, and draws the first few."""
    (dashboard,) = package.of_type("AWS::CloudWatch::Dashboard").values()
    body = json.loads(dashboard["Properties"]["DashboardBody"]["Fn::Sub"])
    per_pool = []
    for widget in body["widgets"]:
        expressions = [item["expression"] for row in widget["properties"].get("metrics", [])
                       for item in row if isinstance(item, dict) and "expression" in item]
        assert all("SEARCH(" not in expression for expression in expressions)
        matches = [QUERY.match(expression) for expression in expressions]
        assert all(matches), expressions
        per_pool += [match for match in matches if match]
        assert sum(int(match["limit"]) for match in matches if match) <= 100
    assert {match["name"] for match in per_pool if "pool" in match["group"]} == set(m.PER_POOL_METRICS)
    for match in per_pool:
        assert {"pool", "alias", "provider"} & set(match["group"].split(", ")) and "service" not in match["group"]
    by_alias = [(match["name"], match["dims"]) for match in per_pool if match["group"] == "alias"]
    assert by_alias == [(m.CHECKOUT_MISSES, "alias, service")]


def test_a_per_pool_graph_of_several_queries_labels_each_pool_apart(package: Package) -> None:
    """A graph drawing several metrics labelled every series with its metric's name alone: 20
    lines called ``CloneFailures``, no telling which pool failed. Each series' label now holds
    CloudWatch's ``${LABEL}`` (the query's GROUP BY values: the pool), after what tells the
    graph's queries apart. Written ``${!LABEL}`` in the body's ``Fn::Sub`` (``${LABEL}`` would be
    taken for a parameter): rendered here as CloudFormation renders it."""
    (dashboard,) = package.of_type("AWS::CloudWatch::Dashboard").values()
    body = json.loads(dashboard["Properties"]["DashboardBody"]["Fn::Sub"])
    graphs = [[item["label"] for row in widget["properties"].get("metrics", [])
               for item in row if isinstance(item, dict) and "expression" in item] for widget in body["widgets"]]
    several = [labels for labels in graphs if len(labels) > 1]
    assert len(several) >= 4
    for labels in several:
        assert all(re.fullmatch(r"[^$]*\$\{!LABEL\}", label) for label in labels), labels
        rendered = [label.replace("${!", "${") for label in labels]
        assert all(label.endswith(" ${LABEL}") for label in rendered), rendered
        assert len(set(rendered)) == len(rendered), rendered  # the queries told apart too


def test_one_alarm_for_empty_pools_and_lambda_errors_and_throttles(package: Package) -> None:
    alarms = {a["Properties"]["AlarmName"]: a["Properties"] for a in package.of_type("AWS::CloudWatch::Alarm").values()}
    prefix = f"vmpool-{package.stage}"
    empty = alarms[f"{prefix}-pools-empty"]
    assert (empty["Namespace"], empty["MetricName"]) == (m.namespace_for(package.stage), m.EMPTY_POOLS)
    for kind in ("errors", "throttles"):
        metric = "Errors" if kind == "errors" else "Throttles"
        queries = alarms[f"{prefix}-lambda-{kind}"]["Metrics"]
        functions = {q["MetricStat"]["Metric"]["Dimensions"][0]["Value"]["Ref"] for q in queries if "MetricStat" in q}
        assert functions == {"APIHandler", "Tick", "Reconcile"}
        assert {q["MetricStat"]["Metric"]["MetricName"] for q in queries if "MetricStat" in q} == {metric}


def test_a_template_preparation_given_up_raises_an_alarm(package: Package) -> None:
    """``TemplatePreparationFailures`` (a preparation failed, or a vCenter task on the template
    never ended) was graphed but raised no alarm: the pool went on cloning full copies, slower,
    unnoticed. The alarm reads its service-wide series, which the code publishes with each
    per-pool one (tests/vsphere/test_template_preparation.py)."""
    alarms = {a["Properties"]["AlarmName"]: a["Properties"] for a in package.of_type("AWS::CloudWatch::Alarm").values()}
    alarm = alarms[f"vmpool-{package.stage}-template-preparation-failures"]
    namespace = m.namespace_for(package.stage)
    assert (alarm["Namespace"], alarm["MetricName"]) == (namespace, m.TEMPLATE_PREPARATION_FAILURES)
    assert [d["Name"] for d in alarm["Dimensions"]] == ["service"]
    assert ("service",) in m.METRICS[m.TEMPLATE_PREPARATION_FAILURES].dimension_sets
    assert (alarm["Statistic"], alarm["Threshold"], alarm["TreatMissingData"]) == ("Sum", 1, "notBreaching")


def test_secrets_that_cannot_be_fetched_raise_an_alarm_and_are_graphed_by_reason(package: Package) -> None:
    """``SecretFailures`` (auth/secrets.py counts each failed fetch) has an alarm on its
    service-wide series and a graph of each reason a failure can have."""
    from chalicelib.auth.secrets import FAILURE_KEYS

    alarms = {a["Properties"]["AlarmName"]: a["Properties"] for a in package.of_type("AWS::CloudWatch::Alarm").values()}
    alarm = alarms[f"vmpool-{package.stage}-secrets-unavailable"]
    namespace = m.namespace_for(package.stage)
    assert (alarm["Namespace"], alarm["MetricName"], alarm["Statistic"]) == (namespace, m.SECRET_FAILURES, "Sum")
    assert [d["Name"] for d in alarm["Dimensions"]] == ["service"]
    (dashboard,) = package.of_type("AWS::CloudWatch::Dashboard").values()
    body = json.loads(dashboard["Properties"]["DashboardBody"]["Fn::Sub"])
    graphed = {row[3] for widget in body["widgets"] for row in widget["properties"].get("metrics", [])
               if row[:3] == [namespace, m.SECRET_FAILURES, "reason"]}
    assert graphed == set(FAILURE_KEYS)


def test_names_not_read_raise_an_alarm_and_are_graphed_by_provider(package: Package) -> None:
    """``NamesReadFailures`` (manager/names.py: a provider's VM names not read after Redis lost
    its data, its pools cloning under random names until they are) has an alarm on its
    service-wide series and a graph ranking providers and failure kinds; before, only the pass's
    warning line said so."""
    alarms = {a["Properties"]["AlarmName"]: a["Properties"] for a in package.of_type("AWS::CloudWatch::Alarm").values()}
    alarm = alarms[f"vmpool-{package.stage}-names-not-read"]
    namespace = m.namespace_for(package.stage)
    assert (alarm["Namespace"], alarm["MetricName"], alarm["Statistic"]) == (namespace, m.NAMES_READ_FAILURES, "Sum")
    assert [d["Name"] for d in alarm["Dimensions"]] == ["service"]
    assert alarm["TreatMissingData"] == "notBreaching"
    (dashboard,) = package.of_type("AWS::CloudWatch::Dashboard").values()
    body = json.loads(dashboard["Properties"]["DashboardBody"]["Fn::Sub"])
    graphed = [match for widget in body["widgets"] for row in widget["properties"].get("metrics", [])
               for item in row if isinstance(item, dict) and (match := QUERY.match(item.get("expression", "")))
               and match["name"] == m.NAMES_READ_FAILURES]
    assert [(match["dims"], match["group"]) for match in graphed] == [("provider, reason, service", "provider, reason")]


def test_passes_started_late_raise_an_alarm_within_minutes(package: Package) -> None:
    """``reconcile-late`` watches ``PassLateness`` (published by the consumer): a backlog is
    reported within minutes, where ``reconcile-backlog`` (kept: it alone sees a queue nothing
    receives, when no pass starts to be late) waits out SQS's longest delay."""
    from infra.template import LATE_PASS_SECONDS, reconcile_backlog_threshold

    alarms = {a["Properties"]["AlarmName"]: a["Properties"] for a in package.of_type("AWS::CloudWatch::Alarm").values()}
    late = alarms[f"vmpool-{package.stage}-reconcile-late"]
    assert (late["Namespace"], late["MetricName"], late["Statistic"]) == (
        m.namespace_for(package.stage), m.PASS_LATENESS, "Maximum")
    assert [d["Name"] for d in late["Dimensions"]] == ["service"]
    assert late["Threshold"] == LATE_PASS_SECONDS <= 300 < reconcile_backlog_threshold()
    assert late["Period"] * late["EvaluationPeriods"] <= 300
    assert alarms[f"vmpool-{package.stage}-reconcile-backlog"]["MetricName"] == "ApproximateAgeOfOldestMessage"
