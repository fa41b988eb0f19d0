"""Builds the template `chalice package --merge-template` merges into Chalice's SAM template.

infra/template.yaml holds the static resources; this adds what depends on the stage and its
pools, which Chalice's config cannot express:

- names (queues, secrets) matching the stage's .chalice/config.json environment and IAM policies;
- every function's VPC settings and Redis URL (SAM ``Globals``, so a new pool's Lambda gets them);
- the API handler's refill queue URL, and the refill consumer created after its queue;
- alarms (per pool: empty for N minutes, run near its timeout) and the CloudWatch dashboard,
  whose metric names come from chalicelib.observability (one source of truth).

    python -m infra.template --stage dev > build/merge-template-dev.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import yaml
from chalice.utils import to_cfn_resource_name

from chalicelib import observability as m
from infra import sync_config
from infra.sync_config import APP_NAME, STAGES, Stage

STATIC_TEMPLATE = Path(__file__).with_name("template.yaml")
REDIS_NODES = ("001", "002")  # NumCacheClusters: 2 -> <replication group id>-001 and -002
API_NAME = APP_NAME  # Chalice titles the REST API after the app
DURATION_ALARM_FRACTION = 0.9


def function_logical_id(function_name: str) -> str:
    """The logical ID Chalice gives a Lambda function in its SAM template."""
    return "APIHandler" if function_name == sync_config.API_FUNCTION else to_cfn_resource_name(function_name)


def build(stage: Stage, pools: list[str], pool_sizes: dict[str, int] | None = None) -> dict[str, Any]:
    """The merge template for one stage."""
    template = yaml.safe_load(STATIC_TEMPLATE.read_text())
    resources = template["Resources"]
    prefix = f"{APP_NAME}-{stage.name}"
    resources["RefillQueue"]["Properties"]["QueueName"] = stage.refill_queue_name
    resources["RefillDeadLetterQueue"]["Properties"]["QueueName"] = f"{stage.refill_queue_name}-dlq"
    for logical_id, name in (("RedisAuthSecret", "redis-auth"), ("VSphereSecret", "vsphere"),
                             ("LdapSecret", "ldap")):
        resources[logical_id]["Properties"]["Name"] = stage.secret_prefix + name
    resources["Redis"]["Properties"]["ReplicationGroupId"] = prefix
    template["Globals"] = {
        "Function": {
            "VpcConfig": {
                "SecurityGroupIds": [{"Fn::GetAtt": ["LambdaSecurityGroup", "GroupId"]}],
                "SubnetIds": {"Ref": "PrivateSubnetIds"},
            },
            "Environment": {"Variables": {
                # No password in the environment: the code reads the AUTH token from the secret
                # when it first connects (see docs/deploy.md, "Redis AUTH").
                "VMPOOL_REDIS_URL": {"Fn::Sub": "rediss://${Redis.PrimaryEndPoint.Address}:${Redis.PrimaryEndPoint.Port}/0"},
                "VMPOOL_REDIS_AUTH_SECRET": {"Ref": "RedisAuthSecret"},
            }},
        }
    }
    resources["APIHandler"] = {"Properties": {"Environment": {"Variables": {
        "VMPOOL_REFILL_QUEUE_URL": {"Ref": "RefillQueue"}}}}}
    # Chalice 1.34 names the API handler's log group after "ApiHandler"; the function is "APIHandler".
    resources["ApiHandlerLogGroup"] = {"Properties": {"LogGroupName": {"Fn::Sub": "/aws/lambda/${APIHandler}"}}}
    # The SQS event source mapping needs the queue; SAM passes DependsOn to the function it makes.
    resources[function_logical_id(sync_config.REFILL_FUNCTION)] = {"DependsOn": ["RefillQueue"]}
    resources.update(alarms(stage, pools, pool_sizes or {}))
    resources["Dashboard"] = dashboard(stage)
    return template


# --- alarms -------------------------------------------------------------------------------------


def _actions() -> dict[str, Any]:
    topic = {"Fn::If": ["HasAlarmTopic", [{"Ref": "AlarmTopicArn"}], {"Ref": "AWS::NoValue"}]}
    return {"AlarmActions": topic, "OKActions": topic}


def _dimensions(**dims: Any) -> list[dict[str, Any]]:
    return [{"Name": name, "Value": value} for name, value in dims.items()]


def _alarm(name: str, description: str, **properties: Any) -> dict[str, Any]:
    return {"Type": "AWS::CloudWatch::Alarm",
            "Properties": {"AlarmName": name, "AlarmDescription": description, **_actions(), **properties}}


def alarms(stage: Stage, pools: list[str], pool_sizes: dict[str, int]) -> dict[str, Any]:
    """Every alarm: per pool, service-wide, queue and Redis."""
    prefix = f"{APP_NAME}-{stage.name}"
    found: dict[str, Any] = {}
    for pool in pools:
        function_id = function_logical_id(sync_config.reconcile_function_name(pool))
        if pool_sizes.get(pool, 1) > 0:
            found[f"{function_id}EmptyAlarm"] = _alarm(
                f"{prefix}-pool-empty-{pool}",
                f"Pool {pool} has had no ready VM for the last PoolEmptyMinutes minutes (or reports nothing).",
                Namespace=m.NAMESPACE, MetricName=m.READY,
                Dimensions=_dimensions(pool=pool, service=m.SERVICE),
                Statistic="Maximum", Period=60, EvaluationPeriods={"Ref": "PoolEmptyMinutes"},
                Threshold=1, ComparisonOperator="LessThanThreshold", TreatMissingData="breaching")
        found[f"{function_id}DurationAlarm"] = _alarm(
            f"{prefix}-reconcile-near-timeout-{pool}",
            f"A reconcile run of pool {pool} took over {int(DURATION_ALARM_FRACTION * 100)}% of its timeout.",
            Namespace="AWS/Lambda", MetricName="Duration",
            Dimensions=_dimensions(FunctionName={"Ref": function_id}),
            Statistic="Maximum", Period=300, EvaluationPeriods=1,
            Threshold=DURATION_ALARM_FRACTION * sync_config.RECONCILE_TIMEOUT * 1000,
            ComparisonOperator="GreaterThanOrEqualToThreshold", TreatMissingData="notBreaching")
    service = _dimensions(service=m.SERVICE)
    found["ReconcileErrorsAlarm"] = _alarm(
        f"{prefix}-reconcile-errors", "Reconcile passes failed (provider or Redis errors) 3+ times in 5 minutes.",
        Namespace=m.NAMESPACE, MetricName=m.RECONCILE_ERRORS, Dimensions=service, Statistic="Sum",
        Period=300, EvaluationPeriods=1, Threshold=3, ComparisonOperator="GreaterThanOrEqualToThreshold",
        TreatMissingData="notBreaching")

    def stat(metric_id: str, name: str) -> dict[str, Any]:
        return {"Id": metric_id, "ReturnData": False, "MetricStat": {
            "Metric": {"Namespace": m.NAMESPACE, "MetricName": name, "Dimensions": service},
            "Period": 900, "Stat": "Sum"}}

    found["CloneFailureRateAlarm"] = _alarm(
        f"{prefix}-clone-failure-rate", "Over 20% of clones failed in 15 minutes (at least 5 attempts).",
        Metrics=[stat("failed", m.CLONE_FAILURES), stat("started", m.CLONES_STARTED),
                 {"Id": "rate", "Label": "clone failure %", "ReturnData": True,
                  "Expression": "IF((started + failed) >= 5, 100 * failed / (started + failed), 0)"}],
        EvaluationPeriods=1, Threshold=20, ComparisonOperator="GreaterThanThreshold",
        TreatMissingData="notBreaching")
    found["RefillDeadLetterAlarm"] = _alarm(
        f"{prefix}-refill-dlq-not-empty", "Refill messages failed 3 times and sit in the dead-letter queue.",
        Namespace="AWS/SQS", MetricName="ApproximateNumberOfMessagesVisible",
        Dimensions=_dimensions(QueueName={"Fn::GetAtt": ["RefillDeadLetterQueue", "QueueName"]}),
        Statistic="Maximum", Period=300, EvaluationPeriods=1, Threshold=1,
        ComparisonOperator="GreaterThanOrEqualToThreshold", TreatMissingData="notBreaching")
    found["ApiErrorsAlarm"] = _alarm(
        f"{prefix}-api-5xx", "The API answered 5 or more 5xx in 5 minutes.",
        Namespace="AWS/ApiGateway", MetricName="5XXError",
        Dimensions=_dimensions(ApiName=API_NAME, Stage="api"), Statistic="Sum", Period=300,
        EvaluationPeriods=1, Threshold=5, ComparisonOperator="GreaterThanOrEqualToThreshold",
        TreatMissingData="notBreaching")
    for node in REDIS_NODES:
        node_id = {"Fn::Sub": "${Redis}-" + node}
        found[f"RedisMemory{node}Alarm"] = _alarm(
            f"{prefix}-redis-{node}-memory", "Redis memory over 80%: it never evicts, so writes will fail when full.",
            Namespace="AWS/ElastiCache", MetricName="DatabaseMemoryUsagePercentage",
            Dimensions=_dimensions(CacheClusterId=node_id), Statistic="Maximum", Period=300,
            EvaluationPeriods=1, Threshold=80, ComparisonOperator="GreaterThanOrEqualToThreshold")
        found[f"RedisCpu{node}Alarm"] = _alarm(
            f"{prefix}-redis-{node}-cpu", "Redis engine CPU over 80% for 15 minutes.",
            Namespace="AWS/ElastiCache", MetricName="EngineCPUUtilization",
            Dimensions=_dimensions(CacheClusterId=node_id), Statistic="Average", Period=300,
            EvaluationPeriods=3, Threshold=80, ComparisonOperator="GreaterThanOrEqualToThreshold")
    return found


# --- dashboard ----------------------------------------------------------------------------------


def per_pool(name: str, stat: str) -> str:
    """A SEARCH over every pool, so a new pool appears without regenerating the dashboard."""
    dims = ",".join(m.POOL_DIMENSIONS)
    return f"SEARCH('{{{m.NAMESPACE},{dims}}} MetricName=\"{name}\"', '{stat}', 60)"


def _search_widget(title: str, expressions: list[tuple[str, str]], **extra: Any) -> dict[str, Any]:
    metrics = [[{"expression": expression, "label": label, "id": f"e{index}"}]
               for index, (expression, label) in enumerate(expressions)]
    return _widget(title, metrics, **extra)


def _widget(title: str, metrics: list[Any], stat: str = "Sum", period: int = 60, **extra: Any) -> dict[str, Any]:
    return {"type": "metric", "width": 8, "height": 6, "properties": {
        "title": title, "region": "${AWS::Region}", "view": "timeSeries", "stat": stat,
        "period": period, "metrics": metrics, **extra}}


def _service(*names: str) -> list[list[str]]:
    return [[m.NAMESPACE, name, "service", m.SERVICE] for name in names]


def dashboard(stage: Stage) -> dict[str, Any]:
    """The CloudWatch dashboard (described in docs/deploy.md)."""
    prefix = f"{APP_NAME}-{stage.name}"
    lambdas = f"{{AWS/Lambda,FunctionName}} {prefix}-"
    widgets = [
        _search_widget("Ready VMs per pool", [(per_pool(m.READY, "Minimum"), "")]),
        _search_widget("Pending (cloning or booting) per pool", [(per_pool(m.PENDING, "Maximum"), "")]),
        _search_widget("Running (checked out) per pool", [(per_pool(m.RUNNING, "Maximum"), "")]),
        _search_widget("Pool size (capacity) and VMs destroyed per pool",
                       [(per_pool(m.CAPACITY, "Maximum"), "size"), (per_pool(m.VMS_DESTROYED, "Sum"), "destroyed")]),
        _widget("Checkouts, misses (503), deletes", _service(m.CHECKOUTS, m.CHECKOUT_MISSES, m.DELETES)),
        _widget("Clones started and failed (all pools)", _service(m.CLONES_STARTED, m.CLONE_FAILURES)),
        _search_widget("Clone failures by reason", [(
            (f"SEARCH('{{{m.NAMESPACE},{','.join(m.REASON_DIMENSIONS)}}} MetricName=\"{m.CLONE_FAILURES}\"', "
             "'Sum', 300)"), "")]),
        _search_widget("Clone and boot time p90 (s) per pool",
                       [(per_pool(m.CLONE_DURATION, "p90"), "clone"), (per_pool(m.BOOT_DURATION, "p90"), "boot")]),
        _search_widget("Reconcile pass p99 (s) per pool", [(per_pool(m.RECONCILE_DURATION, "p99"), "")]),
        _search_widget("vCenter calls per pool", [(per_pool(m.PROVIDER_CALLS, "Sum"), "")]),
        _search_widget("DNS failures by reason, migrations per pool", [
            ((f"SEARCH('{{{m.NAMESPACE},{','.join(m.POOL_REASON_DIMENSIONS)}}} "
              f"MetricName=\"{m.DNS_FAILURES}\"', 'Sum', 300)"), "dns"),
            (per_pool(m.MIGRATIONS, "Sum"), "migrated"), (per_pool(m.MIGRATION_FAILURES, "Sum"), "migration failed")]),
        _widget("Reconcile errors and refill latency p90 (s)",
                [*_service(m.RECONCILE_ERRORS),
                 [m.NAMESPACE, m.REFILL_LATENCY, "service", m.SERVICE, {"stat": "p90", "yAxis": "right"}]]),
        _search_widget("Lambda errors and throttles", [
            (f"SEARCH('{lambdas} MetricName=\"Errors\"', 'Sum', 60)", "errors"),
            (f"SEARCH('{lambdas} MetricName=\"Throttles\"', 'Sum', 60)", "throttles")]),
        _search_widget("Lambda duration max (ms)", [
            (f"SEARCH('{lambdas} MetricName=\"Duration\"', 'Maximum', 60)", "")]),
        _widget("API requests, 4xx, 5xx", [["AWS/ApiGateway", name, "ApiName", API_NAME, "Stage", "api"]
                                           for name in ("Count", "4XXError", "5XXError")]),
        _widget("API latency p50/p99 (ms)", [
            ["AWS/ApiGateway", "Latency", "ApiName", API_NAME, "Stage", "api", {"stat": "p50"}],
            ["AWS/ApiGateway", "Latency", "ApiName", API_NAME, "Stage", "api", {"stat": "p99"}]]),
        _widget("Refill queue and dead letters", [
            ["AWS/SQS", "ApproximateNumberOfMessagesVisible", "QueueName", stage.refill_queue_name],
            ["AWS/SQS", "ApproximateAgeOfOldestMessage", "QueueName", stage.refill_queue_name, {"yAxis": "right"}],
            ["AWS/SQS", "ApproximateNumberOfMessagesVisible", "QueueName", f"{stage.refill_queue_name}-dlq"]],
            stat="Maximum"),
        _widget("Redis memory % and engine CPU %", [
            ["AWS/ElastiCache", metric, "CacheClusterId", "${Redis}-" + node]
            for node in REDIS_NODES for metric in ("DatabaseMemoryUsagePercentage", "EngineCPUUtilization")],
            stat="Maximum", period=300),
        _widget("Redis connections and commands", [
            ["AWS/ElastiCache", metric, "CacheClusterId", "${Redis}-" + node]
            for node in REDIS_NODES for metric in ("CurrConnections", "GetTypeCmds", "SetTypeCmds")],
            stat="Maximum", period=300),
        _search_widget("Sized pools: target size and predicted demand (docs/sizing.md)",
                       [(per_pool(m.TARGET_SIZE, "Maximum"), "target"),
                        (per_pool(m.PREDICTED_DEMAND, "Maximum"), "predicted")]),
    ]
    for index, widget in enumerate(widgets):
        widget["x"], widget["y"] = (index % 3) * 8, (index // 3) * 6
    body = json.dumps({"widgets": widgets}, separators=(",", ":"))
    return {"Type": "AWS::CloudWatch::Dashboard",
            "Properties": {"DashboardName": prefix, "DashboardBody": {"Fn::Sub": body}}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stage", choices=sorted(STAGES), required=True)
    args = parser.parse_args(argv)
    stage = STAGES[args.stage]
    sizes = sync_config.pool_sizes(stage)
    json.dump(build(stage, list(sizes), sizes), sys.stdout, indent=1)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
