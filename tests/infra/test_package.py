"""What `chalice package --merge-template` produces for a stage: the functions, their settings,
VPC, the reconcile queue wiring, IAM, the API's unknown-route answer, Redis. All read from the real
package (tests/infra/conftest.py), so they prove what would be deployed."""

from __future__ import annotations

import dataclasses
import fnmatch
import importlib
import json
import re
import socket
import threading
from pathlib import Path
from typing import Any, Iterator

import boto3
import pytest
from cfnlint.api import ManualArgs, lint_file
from moto_endpoint import moto_endpoint
from packaged import ROOT, Package, build_package

from chalicelib.api.conditional import COMPRESS_FROM_BYTES
from chalicelib.api.http import JSON_HEADERS
from chalicelib.config import canonical_json, from_canonical, parse
from chalicelib.manager.pool_queue import MAX_DELAY_SECONDS
from infra import lambda_sandbox, stage_settings, sync_config
from infra.sync_config import RESOURCE_FREE_ACTIONS, STAGES
from infra.template import function_logical_id
from local.redis_server import RedisServer
from tests.dns.bind import BindServer
from tools.vcsim import launcher

FUNCTIONS_SCRIPT = Path(__file__).with_name("packaged_functions.py")


def functions(package: Package) -> dict[str, Any]:
    return package.of_type("AWS::Serverless::Function")


def effective(package: Package, function: dict[str, Any], key: str) -> Any:
    """A function property as SAM resolves it: the function's own value, else Globals."""
    return function["Properties"].get(key, package.template.get("Globals", {}).get("Function", {}).get(key))


def environment(package: Package, function: dict[str, Any]) -> dict[str, Any]:
    merged = dict(package.template.get("Globals", {}).get("Function", {}).get("Environment", {}).get("Variables", {}))
    merged.update(function["Properties"].get("Environment", {}).get("Variables", {}))
    return merged


def test_merged_template_is_cfn_lint_clean(package: Package) -> None:
    matches = lint_file(package.template_path, config=ManualArgs(regions=["us-east-1"]))
    assert [f"{m.rule.id} {m.message} ({m.linenumber})" for m in matches] == []


def test_three_functions_one_schedule_whatever_the_pools(package: Package) -> None:
    app = importlib.import_module("app")
    found = functions(package)
    assert sorted(f["Properties"]["Handler"] for f in found.values()) == ["app.app", "app.reconcile", "app.tick"]
    (tick_event,) = found["Tick"]["Properties"]["Events"].values()
    assert tick_event["Type"] == "Schedule" and tick_event["Properties"]["Schedule"] == "rate(1 minute)"
    assert callable(app.tick) and callable(app.reconcile)


def test_every_function_gets_its_stage_settings(package: Package) -> None:
    stage = STAGES[package.stage]
    config = json.loads((ROOT / ".chalice" / "config.json").read_text())["stages"][stage.name]
    found = functions(package)
    assert set(found) == {function_logical_id(name) for name in config["lambda_functions"]}
    for name, settings in config["lambda_functions"].items():
        function = found[function_logical_id(name)]
        properties = function["Properties"]
        assert properties["Timeout"] == settings["lambda_timeout"], name
        assert properties["MemorySize"] == config["lambda_memory_size"], name
        assert properties["ReservedConcurrentExecutions"] == settings["reserved_concurrency"], name
        assert properties["Runtime"] in {"python3.12", "python3.13"}, name
        env = environment(package, function)
        assert {k: env[k] for k in config["environment_variables"]} == config["environment_variables"], name
        for variable in ("VMPOOL_REDIS_URL", "VMPOOL_RECONCILE_QUEUE_URL", "VMPOOL_CONFIG_BUCKET"):
            assert variable in env, (name, variable)
        role = package.resources[properties["Role"]["Fn::GetAtt"][0]]
        policy_file = ROOT / ".chalice" / settings["iam_policy_file"]
        # The policy file's statements, the stack's own resources named exactly (sync_config.stack_policy).
        assert role["Properties"]["Policies"][0]["PolicyDocument"] == sync_config.stack_policy(
            stage, json.loads(policy_file.read_text())), name
    assert config["environment_variables"]["POWERTOOLS_METRICS_NAMESPACE"] == f"vmpool/{stage.name}"


def _references(value: Any) -> set[str]:
    """The logical IDs a template value names (Ref, Fn::GetAtt, ``${Name}`` in Fn::Sub)."""
    if isinstance(value, list):
        return set().union(*(_references(item) for item in value))
    if not isinstance(value, dict):
        return set()
    found: set[str] = set()
    for key, item in value.items():
        if key == "Ref" and isinstance(item, str):
            found.add(item)
        elif key == "Fn::GetAtt":
            found.add(item[0] if isinstance(item, list) else str(item).split(".")[0])
        elif key == "Fn::Sub":
            text, variables = (item, {}) if isinstance(item, str) else item
            found |= {name.split(".")[0] for name in re.findall(r"\$\{([^}!]+)\}", text)} | _references(variables)
        else:
            found |= _references(item)
    return found


def _made_before(package: Package, logical_id: str) -> set[str]:
    """What CloudFormation creates before ``logical_id`` (and deletes after it): what it names,
    depends on, and so on."""
    resources, found, todo = package.resources, set(), [logical_id]
    while todo:
        resource = resources[todo.pop()]
        depends_on = resource.get("DependsOn", [])
        named = _references(resource.get("Properties", {})) | set([depends_on] if isinstance(depends_on, str)
                                                                    else depends_on)
        for name in (named & set(resources)) - found:
            found.add(name)
            todo.append(name)
    return found


def test_each_function_writes_to_a_log_group_made_before_it(package: Package) -> None:
    """Chalice named each log group after its function (``/aws/lambda/${Tick}``), so CloudFormation
    created the group after the function: the schedule or the queue's event source could invoke
    it in between, Lambda created the group itself, and the stack's create failed on the group
    "already exists" (a delete removed the group first, the function could recreate it). Now the
    group's name is known before the function exists, the function is told to write there, and
    so depends on it: the group is made first and deleted last, with the stage's retention, and
    the function's role may write to it."""
    stage = STAGES[package.stage]
    written = set()
    for name, function in functions(package).items():
        group_id = function["Properties"].get("LoggingConfig", {}).get("LogGroup", {}).get("Ref")
        assert group_id in package.of_type("AWS::Logs::LogGroup"), name
        group = package.resources[group_id]
        assert group_id in _made_before(package, name), name
        assert name not in _made_before(package, group_id), name
        assert group["Properties"]["RetentionInDays"] == stage.log_retention_days, name
        log_group = group["Properties"]["LogGroupName"]
        assert isinstance(log_group, str) and log_group.startswith("/aws/lambda/"), name
        role = package.resources[function["Properties"]["Role"]["Fn::GetAtt"][0]]
        (statement,) = [s for s in role["Properties"]["Policies"][0]["PolicyDocument"]["Statement"]
                        if "logs:PutLogEvents" in s["Action"]]
        stream = ("arn:${AWS::Partition}:logs:${AWS::Region}:${AWS::AccountId}:log-group:"
                  f"{log_group}:log-stream:2026/12/07/[$LATEST]0123")
        assert any(fnmatch.fnmatchcase(stream, resource["Fn::Sub"]) for resource in statement["Resource"]), name
        written.add(group_id)
    assert written == set(package.of_type("AWS::Logs::LogGroup"))  # one each, none left unwritten


def test_no_function_may_make_its_log_group_again_without_the_stages_retention(package: Package) -> None:
    """The stack makes each function's group, with the stage's retention, before the function.
    The roles could also create log groups: a group deleted by hand was made again by Lambda at
    the function's next invocation, with no retention (its lines kept, and paid for, for ever).
    Now no role of the stack may create one (under any spelling of the action, a wildcard
    included); each still makes its streams and writes its lines."""
    statements = _statements(package) + [
        (name, statement) for name, policy in package.of_type("AWS::IAM::Policy").items()
        for statement in policy["Properties"]["PolicyDocument"]["Statement"]]
    writes: dict[str, set[str]] = {}
    for role, statement in statements:
        for action in _listed(statement["Action"]):
            assert not fnmatch.fnmatchcase("logs:createloggroup", action.lower()), (role, action)
            if action.startswith("logs:"):
                writes.setdefault(role, set()).add(action)
    assert writes == {role: {"logs:CreateLogStream", "logs:PutLogEvents"}
                      for role in package.of_type("AWS::IAM::Role")}


def test_lambda_writes_json_lines_and_none_of_its_own_per_invocation(package: Package) -> None:
    """Lambda's advanced logging controls: JSON, so it filters by level; its START, END and
    REPORT lines (about 0.3 KB an invocation) dropped (SystemLogLevel WARN); the application's
    level the stage's, which Powertools takes from Lambda (``AWS_LAMBDA_LOG_LEVEL``) over
    ``POWERTOOLS_LOG_LEVEL`` once the format is JSON."""
    for name, function in functions(package).items():
        config = function["Properties"].get("LoggingConfig", {})
        assert (config.get("LogFormat"), config.get("SystemLogLevel")) == ("JSON", "WARN"), name
        assert config.get("ApplicationLogLevel") == environment(package, function)["POWERTOOLS_LOG_LEVEL"], name
    # Lambda gives a line without a level (the metrics' EMF lines) INFO: a stage logging only
    # warnings would lose every metric, so it is refused.
    with pytest.raises(ValueError, match="metrics"):
        sync_config.logging_config(dataclasses.replace(STAGES[package.stage], log_level="WARNING"))


def test_reserved_concurrency_fits_the_account_default() -> None:
    """Both stages in one account, at Lambda's default 1,000, leave at least 100 unreserved
    (Lambda refuses more), and the consumer's event source never asks for more than it has."""
    total = sum(stage.reserved_concurrency for stage in STAGES.values())
    assert total <= sync_config.ACCOUNT_CONCURRENCY - sync_config.UNRESERVED_MINIMUM
    config = json.loads((ROOT / ".chalice" / "config.json").read_text())
    for stage in STAGES.values():
        env = config["stages"][stage.name]["environment_variables"]
        assert int(env["VMPOOL_RECONCILE_CONCURRENCY"]) == stage.reconcile_reserved_concurrency >= 2


def test_chalice_config_is_up_to_date() -> None:
    assert sync_config.main(["--check"]) == 0


def endpoint_service(name: Any) -> str:
    """A VPC endpoint's service (``sqs``) from its ServiceName: a ``Fn::Sub``, or a ``Fn::If`` on
    the partition whose branches name the same service (tests/infra/test_partitions.py resolves
    each)."""
    if "Fn::If" in name:
        _, in_aws_cn, elsewhere = name["Fn::If"]
        assert endpoint_service(in_aws_cn) == endpoint_service(elsewhere)
        return endpoint_service(elsewhere)
    return str(name["Fn::Sub"].rsplit(".", 1)[1])


def test_every_function_runs_in_the_vpc_behind_the_lambda_security_group(package: Package) -> None:
    for name, function in functions(package).items():
        vpc = effective(package, function, "VpcConfig")
        assert vpc == {"SecurityGroupIds": [{"Fn::GetAtt": ["LambdaSecurityGroup", "GroupId"]}],
                       "SubnetIds": {"Ref": "PrivateSubnetIds"}}, name
    egress = package.resources["LambdaSecurityGroup"]["Properties"]["SecurityGroupEgress"]
    assert egress == [{"IpProtocol": "tcp", "FromPort": 443, "ToPort": 443, "CidrIp": {"Ref": "VCenterCidr"},
                       "Description": "vCenter and ESXi"}]
    to_redis = package.resources["LambdaToRedis"]["Properties"]
    assert (to_redis["FromPort"], to_redis["DestinationSecurityGroupId"]) == (
        6379, {"Fn::GetAtt": ["RedisSecurityGroup", "GroupId"]})
    from_lambda = package.resources["RedisFromLambda"]["Properties"]
    assert (from_lambda["FromPort"], from_lambda["SourceSecurityGroupId"]) == (
        6379, {"Fn::GetAtt": ["LambdaSecurityGroup", "GroupId"]})
    endpoints = package.of_type("AWS::EC2::VPCEndpoint")
    assert sorted(endpoint_service(e["Properties"]["ServiceName"]) for e in endpoints.values()) == [
        "s3", "secretsmanager", "sqs", "ssm"]  # SSM with CreateSsmEndpoint=true only (test_ssm_network.py)


def test_nat_mode_reaches_aws_over_https(package: Package) -> None:
    """CreateVpcEndpoints=false: Secrets Manager (the Redis token), SQS and S3 through the NAT."""
    nat = package.resources["LambdaToAwsThroughNat"]
    assert nat["Condition"] == "ThroughNat"
    assert package.template["Conditions"]["ThroughNat"] == {"Fn::Equals": [{"Ref": "CreateVpcEndpoints"}, "false"]}
    assert (nat["Properties"]["FromPort"], nat["Properties"]["ToPort"], nat["Properties"]["CidrIp"]) == (
        443, 443, "0.0.0.0/0")
    for name, endpoint in package.of_type("AWS::EC2::VPCEndpoint").items():
        assert endpoint["Condition"] == ("CreateSsmEndpointInVpc" if name == "SsmEndpoint" else "CreateEndpoints")
    assert {"Condition": "CreateEndpoints"} in package.template["Conditions"]["CreateSsmEndpointInVpc"]["Fn::And"]


def test_reconcile_consumer_reports_failures_per_message(package: Package) -> None:
    stage = STAGES[package.stage]
    reconcile = package.resources["Reconcile"]
    (event,) = reconcile["Properties"]["Events"].values()
    assert event["Type"] == "SQS"
    assert event["Properties"]["Queue"]["Fn::Sub"].endswith(
        f":sqs:${{AWS::Region}}:${{AWS::AccountId}}:{stage.reconcile_queue_name}")
    assert event["Properties"]["FunctionResponseTypes"] == ["ReportBatchItemFailures"]
    # Batches fill (1 s gathers 10 of the tick's messages from 500 pools up): a tenth of the
    # invocations and concurrency of one message per poll (app.RECONCILE_BATCH_WINDOW_SECONDS).
    assert event["Properties"]["BatchSize"] == 10 and event["Properties"]["MaximumBatchingWindowInSeconds"] == 1
    assert event["Properties"]["ScalingConfig"]["MaximumConcurrency"] == stage.reconcile_reserved_concurrency
    queue = package.resources["ReconcileQueue"]["Properties"]
    assert queue["QueueName"] == stage.reconcile_queue_name
    # Six consumer timeouts plus the batching window, as Lambda recommends (test_queue_visibility30.py).
    assert queue["VisibilityTimeout"] >= (6 * reconcile["Properties"]["Timeout"]
                                          + event["Properties"]["MaximumBatchingWindowInSeconds"])
    assert queue["RedrivePolicy"]["deadLetterTargetArn"] == {"Fn::GetAtt": ["ReconcileDeadLetterQueue", "Arn"]}


def test_a_message_failing_every_delivery_reaches_the_dead_letter_queue(package: Package) -> None:
    """A pass that raises each time (or never ends in its invocation's time) fails its message at
    every delivery: SQS gives it back once its visibility timeout has passed and moves it to the
    dead-letter queue at the receive after its ``maxReceiveCount``-th, so the DLQ alarm fires.
    The queue must keep it that long, from a send with SQS's longest delay. Before, it kept
    messages 600 s, with a 360 s visibility timeout: a failing message was delivered twice and
    dropped, the DLQ and its alarm never saw one."""
    queue = package.resources["ReconcileQueue"]["Properties"]
    poll_lateness = 20  # a visible message waits for the next poll (long polls of up to 20 s)
    deliveries, visible_at = 0, MAX_DELAY_SECONDS
    while visible_at < queue["MessageRetentionPeriod"] and deliveries <= queue["RedrivePolicy"]["maxReceiveCount"]:
        deliveries += 1  # the last of them finds it over maxReceiveCount and moves it
        visible_at += queue["VisibilityTimeout"] + poll_lateness
    assert deliveries == queue["RedrivePolicy"]["maxReceiveCount"] + 1
    dead_letters = package.resources["ReconcileDeadLetterQueue"]["Properties"]
    assert dead_letters["MessageRetentionPeriod"] > queue["MessageRetentionPeriod"]  # it keeps its first send time


def test_the_backlog_alarm_ignores_one_failed_pass_and_fires_on_a_backlog(package: Package) -> None:
    """A reconcile message whose pass failed once comes back one visibility timeout after it was
    received: its age then is what it waited, plus that timeout, plus the next poll's lateness.
    The ``reconcile-backlog`` alarm (the oldest message's age) must not fire on that alone; the
    ``reconcile-errors`` alarm reports failed passes. Before, its threshold was 120 s against a
    360 s visibility timeout: every retried message raised it. It still fires on a message not
    received for a retry's length more, or one that failed twice."""
    queue = package.resources["ReconcileQueue"]["Properties"]
    (alarm,) = [a["Properties"] for a in package.of_type("AWS::CloudWatch::Alarm").values()
                if a["Properties"]["AlarmName"] == f"vmpool-{package.stage}-reconcile-backlog"]
    assert (alarm["Namespace"], alarm["MetricName"], alarm["Statistic"]) == (
        "AWS/SQS", "ApproximateAgeOfOldestMessage", "Maximum")
    assert alarm["Dimensions"] == [{"Name": "QueueName", "Value": {"Fn::GetAtt": ["ReconcileQueue", "QueueName"]}}]
    assert alarm["ComparisonOperator"] == "GreaterThanOrEqualToThreshold"
    poll_lateness = 20  # long polls of up to 20 s
    received_promptly = 60  # the first receive, on a queue that is keeping up
    # SQS ages a message from its send, its delay included (a follow-up waits up to 900 s by
    # design): before, a 540 s threshold fired on every healthy stack with long check delays.
    longest_delay = MAX_DELAY_SECONDS
    retried_once = longest_delay + received_promptly + queue["VisibilityTimeout"] + poll_lateness
    assert alarm["Threshold"] > retried_once
    failed_twice = longest_delay + 2 * queue["VisibilityTimeout"]
    assert alarm["Threshold"] < failed_twice
    assert f"{alarm['Threshold']} s" in alarm["AlarmDescription"]


def test_every_alarm_evaluates_at_most_a_day_whatever_the_parameters(package: Package) -> None:
    """CloudWatch refuses an alarm whose periods times its evaluation periods pass a day: with
    PoolEmptyMinutes=2000 (no MaxValue) the change set was accepted and the empty-pools alarm
    refused minutes into the deploy (a first one after ElastiCache's 15-20 minutes), which rolled
    back. The parameter's bounds now refuse such a value before anything is built."""
    parameters = package.template["Parameters"]
    for name, alarm in package.of_type("AWS::CloudWatch::Alarm").items():
        properties = alarm["Properties"]
        evaluations = properties["EvaluationPeriods"]
        if isinstance(evaluations, dict):
            evaluations = parameters[evaluations["Ref"]].get("MaxValue", float("inf"))
        periods = [properties.get("Period")] + [q["MetricStat"]["Period"] for q in properties.get("Metrics", [])
                                                if "MetricStat" in q]
        assert max(p for p in periods if p) * evaluations <= 86_400, name


def test_every_name_carries_the_stage(package: Package) -> None:
    stage = STAGES[package.stage]
    assert package.resources["RestAPI"]["Properties"]["Name"] == f"vmpool-{stage.name}"
    named = {"AWS::SQS::Queue": "QueueName", "AWS::CloudWatch::Alarm": "AlarmName",
             "AWS::CloudWatch::Dashboard": "DashboardName", "AWS::ElastiCache::ReplicationGroup": "ReplicationGroupId"}
    for kind, key in named.items():
        for name, resource in package.of_type(kind).items():
            assert resource["Properties"][key].startswith(f"vmpool-{stage.name}"), (name, resource["Properties"][key])
    for name, secret in package.of_type("AWS::SecretsManager::Secret").items():
        assert secret["Properties"]["Name"].startswith(f"vmpool/{stage.name}/"), name
    bucket = package.resources["ConfigBucket"]["Properties"]["BucketName"]["Fn::Sub"]
    assert bucket.startswith(f"vmpool-{stage.name}-config-")


def _statements(package: Package) -> list[tuple[str, dict[str, Any]]]:
    found = []
    for name, role in package.of_type("AWS::IAM::Role").items():
        assert "ManagedPolicyArns" not in role["Properties"], name
        for policy in role["Properties"]["Policies"]:
            found += [(name, statement) for statement in policy["PolicyDocument"]["Statement"]]
    return found


def _listed(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def test_iam_grants_no_wildcard_action_and_resource_star_only_for_eni_and_xray(package: Package) -> None:
    statements = _statements(package)
    assert statements
    for role, statement in statements:
        assert statement["Effect"] == "Allow"
        actions = _listed(statement["Action"])
        assert not [a for a in actions if "*" in a], (role, actions)
        if "*" in _listed(statement["Resource"]):
            assert set(actions) <= RESOURCE_FREE_ACTIONS, (role, actions)


def test_each_role_reaches_only_its_own_queue_actions_and_secrets(package: Package) -> None:
    by_role: dict[str, set[str]] = {}
    secrets: dict[str, set[str]] = {}
    for role, statement in _statements(package):
        by_role.setdefault(role, set()).update(_listed(statement["Action"]))
        if statement["Action"] == ["secretsmanager:GetSecretValue"]:
            secrets[role] = {re.sub(r".*:secret:", "", r["Fn::Sub"]) if "Fn::Sub" in r else r["Ref"]
                             for r in statement["Resource"]}
    sqs = {role: {a for a in actions if a.startswith("sqs:")} for role, actions in by_role.items()}
    assert sqs == {"ApiHandlerRole": {"sqs:SendMessage"}, "TickRole": {"sqs:SendMessage"},
                   "ReconcileRole": {"sqs:SendMessage", "sqs:ReceiveMessage", "sqs:DeleteMessage",
                                     "sqs:GetQueueAttributes"}}
    prefix = STAGES[package.stage].secret_prefix
    assert secrets == {"ApiHandlerRole": {f"{prefix}ldap-*", "RedisAuthSecret"},
                       "TickRole": {"RedisAuthSecret"},
                       "ReconcileRole": {f"{prefix}vsphere-*", "RedisAuthSecret"}}
    names = {r["Properties"]["Name"] for r in package.of_type("AWS::SecretsManager::Secret").values()}
    assert names == {f"{prefix}ldap", f"{prefix}redis-auth", f"{prefix}vsphere"}
    assert all("s3:GetObject" in actions for actions in by_role.values())  # the pool config


def test_each_role_names_the_stacks_own_resources_by_their_exact_arns(package: Package) -> None:
    """The roles had the policy files' ARNs, region and account left open: a dev stage's functions
    could receive and delete the reconcile messages, read the config and the Redis AUTH token of
    the account's dev stage in any other region. The stack's queue, bucket and AUTH secret are
    named by the stack's own references, its log groups in its own region and account."""
    stage = STAGES[package.stage]
    by_action: dict[str, list[Any]] = {}
    for _role, statement in _statements(package):
        for action in _listed(statement["Action"]):
            by_action.setdefault(action, []).extend(_listed(statement["Resource"]))
    queue = {"Fn::GetAtt": ["ReconcileQueue", "Arn"]}
    for action in ("sqs:SendMessage", "sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:GetQueueAttributes"):
        assert {json.dumps(r) for r in by_action[action]} == {json.dumps(queue)}, action
    bucket, objects = {"Fn::GetAtt": ["ConfigBucket", "Arn"]}, {"Fn::Sub": "${ConfigBucket.Arn}/config/*"}
    assert {json.dumps(r) for r in by_action["s3:ListBucket"]} == {json.dumps(bucket)}
    assert {json.dumps(r) for r in by_action["s3:GetObject"]} == {json.dumps(objects)}
    assert {"Ref": "RedisAuthSecret"} in by_action["secretsmanager:GetSecretValue"]
    assert not [r for r in by_action["secretsmanager:GetSecretValue"] if isinstance(r, str) and "redis-auth" in r]
    assert {r["Fn::Sub"] for r in by_action["logs:PutLogEvents"]} == {
        f"arn:${{AWS::Partition}}:logs:${{AWS::Region}}:${{AWS::AccountId}}:log-group:/aws/lambda/{stage.prefix}-*{end}"
        for end in ("", ":*")}
    # What the config names (its secrets and SSM parameters, which may be ARNs elsewhere) keeps
    # the policy files' open region and account, in the stack's partition.
    assert by_action["ssm:GetParameter"] == [
        {"Fn::Sub": f"arn:${{AWS::Partition}}:ssm:*:*:parameter/{stage.secret_prefix}*"}] * 3


def test_unknown_routes_answer_404_ok_false(package: Package) -> None:
    responses = package.resources["RestAPI"]["Properties"]["GatewayResponses"]
    for kind in ("MISSING_AUTHENTICATION_TOKEN", "RESOURCE_NOT_FOUND"):
        assert responses[kind]["StatusCode"] == "404"
        assert json.loads(responses[kind]["ResponseTemplates"]["application/json"]) == {"ok": False}


def _as_api_gateway_answers(template: str, message: str) -> Any:
    """A gateway response's body as API Gateway renders it for an error of ``message``."""
    return json.loads(template.replace("$context.error.messageString", json.dumps(message)))


def _csp_directives(policy: str) -> dict[str, set[str]]:
    """A Content-Security-Policy as a browser reads it: each directive's sources, ``'none'`` and no
    source alike (CSP Level 3: an empty source list is one holding ``'none'``)."""
    found = {}
    for directive in filter(None, (part.strip() for part in policy.split(";"))):
        name, *sources = directive.split()
        found[name] = set(sources) - {"'none'"}
    return found


def test_api_gateway_answers_of_its_own_are_ours_in_shape_and_headers(package: Package,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """API Gateway's own answers (an unknown route, its throttling's 429, a payload too large, a
    function that timed out) said only Content-Type: a browser or a proxy could keep them (no
    ``no-store``) and read them as it liked (no ``nosniff``). Then they lacked the
    Content-Security-Policy and said ``{"ok":false}`` whatever happened, so a client could not tell
    a throttle from a timeout. They carry every JSON answer's headers (the policy written without
    quotes, which a gateway response's static value cannot hold, to the same effect), say what went
    wrong as our errors do, and the 429 says when to come back; in the template and as
    stage_settings puts them on a Chalice-deployed stage."""
    headers = stage_settings.GATEWAY_RESPONSE_HEADERS
    assert set(headers) == set(JSON_HEADERS)
    for name, value in headers.items():
        assert "'" not in value, name
        if name == "Content-Security-Policy":
            assert _csp_directives(value) == _csp_directives(JSON_HEADERS[name]) == {
                "default-src": set(), "frame-ancestors": set()}
        else:
            assert value == JSON_HEADERS[name], name
    responses = package.resources["RestAPI"]["Properties"]["GatewayResponses"]
    assert set(responses) == set(stage_settings.GATEWAY_RESPONSES)
    quoted = {name: f"'{value}'" for name, value in headers.items()}
    for kind, response in responses.items():
        expected = {**quoted, "Retry-After": "'1'"} if kind == "THROTTLED" else quoted
        assert response["ResponseParameters"]["Headers"] == expected, kind
    assert responses["THROTTLED"]["StatusCode"] == "429"
    for kind, message in (("THROTTLED", "Too Many Requests"), ("DEFAULT_4XX", "Request Too Long"),
                          ("DEFAULT_5XX", "Endpoint request timed out")):
        body = _as_api_gateway_answers(responses[kind]["ResponseTemplates"]["application/json"], message)
        assert body == {"ok": False, "error": message}, kind

    class Recorder:
        def __init__(self) -> None:
            self.responses: dict[str, dict[str, Any]] = {}

        def client(self, name: str) -> Recorder:
            return self

        def __getattr__(self, method: str) -> Any:
            def call(**options: Any) -> None:
                if method == "put_gateway_response":
                    self.responses[options.pop("responseType")] = options
            return call

    recorder = Recorder()
    stage = STAGES[package.stage]
    monkeypatch.setattr(stage_settings, "deployed_resources", lambda _: {"rest_api": {"rest_api_id": "api"}})
    stage_settings.name_the_api(recorder, stage)
    assert recorder.responses == {
        kind: {"restApiId": "api", **({"statusCode": response["StatusCode"]} if "StatusCode" in response else {}),
               "responseParameters": {f"gatewayresponse.header.{name}": value
                                      for name, value in response["ResponseParameters"]["Headers"].items()},
               "responseTemplates": response["ResponseTemplates"]}
        for kind, response in responses.items()}


def test_api_gateway_records_no_path_and_no_header_of_a_request(package: Package) -> None:
    """GET and DELETE /token/<t> carry the token in the path, and every authenticated request a
    token or a password in a header. The stage's execution logs (at INFO with data tracing: the
    headers and the path), its X-Ray segments (the URL) and an access log of $context.path would
    each keep them in clear. Before, the template left them to the stage's defaults and to
    whoever edits the stage in the console; now each is pinned off at every deploy."""
    properties = package.resources["RestAPI"]["Properties"]
    assert properties["TracingEnabled"] is False
    assert properties["MethodSettings"] == [
        {"ResourcePath": "/*", "HttpMethod": "*", "LoggingLevel": "OFF", "DataTraceEnabled": False}]
    access_log = json.dumps(properties.get("AccessLogSetting", {}))
    assert "$context.path" not in access_log and "$input" not in access_log


def test_api_gateway_serves_head_wherever_get_is(package: Package) -> None:
    """HEAD is GET without its body (docs/api.md). Before, API Gateway had no HEAD method and
    answered its own 404 {"ok": false} to ``curl -I``."""
    paths = package.resources["RestAPI"]["Properties"]["DefinitionBody"]["paths"]
    with_get = sorted(path for path, methods in paths.items() if "get" in methods)
    assert with_get and [path for path in with_get if "head" not in paths[path]] == []
    for path in with_get:
        assert paths[path]["head"]["x-amazon-apigateway-integration"] == (
            paths[path]["get"]["x-amazon-apigateway-integration"]), path


def test_api_gateway_compresses_answers_the_local_gateway_compresses(package: Package) -> None:
    """The dashboard's feeds (1.25 MB of history a poll at 1,000 pools) went out uncompressed.
    API Gateway compresses from the size the local gateway does (local.gateway.compressed), so
    small answers (a checkout, ``{"ok": true}``) stay as vmpooler's clients always got them."""
    assert package.resources["RestAPI"]["Properties"]["MinimumCompressionSize"] == COMPRESS_FROM_BYTES


def test_redis_is_encrypted_authenticated_and_fails_over(package: Package) -> None:
    redis = package.resources["Redis"]
    properties = redis["Properties"]
    assert properties["TransitEncryptionEnabled"] and properties["AtRestEncryptionEnabled"]
    assert properties["AutomaticFailoverEnabled"] and properties["MultiAZEnabled"]
    assert properties["NumCacheClusters"] >= 2 and "NumNodeGroups" not in properties  # cluster mode off
    assert properties["AuthToken"] == {"Fn::Sub": "{{resolve:secretsmanager:${RedisAuthSecret}::token}}"}
    assert redis["DeletionPolicy"] == "Snapshot"
    params = package.resources["RedisParameters"]["Properties"]["Properties"]
    assert params["maxmemory-policy"] == "noeviction"



def _resolved(value: Any, parameters: dict[str, str], conditions: dict[str, bool]) -> Any:
    """A template value as CloudFormation resolves it for these parameters (Ref to a parameter,
    Fn::If over a condition, AWS::NoValue dropping the key); anything else left as it is."""
    if isinstance(value, dict) and len(value) == 1:
        (function, argument), = value.items()
        if function == "Ref" and argument in parameters:
            return parameters[argument]
        if function == "Fn::If":
            condition, when_true, when_false = argument
            return _resolved(when_true if conditions[condition] else when_false, parameters, conditions)
    if isinstance(value, dict):
        resolved = {key: _resolved(item, parameters, conditions) for key, item in value.items()}
        return {key: item for key, item in resolved.items() if item != {"Ref": "AWS::NoValue"}}
    return value


def test_the_replicas_a_checkout_waits_for_are_a_stack_parameter(package: Package) -> None:
    """``VMPOOL_REDIS_MIN_REPLICA_ACKS`` could not be given to a deployed stage: no parameter or
    stage setting reached the functions' environment (only an edit of each function by hand, which
    the next deploy undid). ``RedisMinReplicaAcks`` sets it for every function; left empty the
    variable is absent and the config's ``redis.min_replica_acks`` (1 in Lambda) decides as
    before. Only values the stack's one replica can satisfy are allowed."""
    from chalicelib.config import RedisConfig
    from chalicelib.store.store import ReplicaAcks

    parameter = package.template["Parameters"]["RedisMinReplicaAcks"]
    assert parameter["Default"] == "" and parameter["AllowedValues"] == ["", "0", "1"]
    assert package.resources["Redis"]["Properties"]["NumCacheClusters"] == 2  # one replica: "2" would never be met
    condition = package.template["Conditions"]["HasRedisMinReplicaAcks"]
    for given, replicas in (("", 1), ("0", 0), ("1", 1)):
        conditions = {"HasRedisMinReplicaAcks": given != ""}
        assert condition == {"Fn::Not": [{"Fn::Equals": [{"Ref": "RedisMinReplicaAcks"}, ""]}]}
        for name, function in functions(package).items():
            env = _resolved(environment(package, function), {"RedisMinReplicaAcks": given}, conditions)
            assert ("VMPOOL_REDIS_MIN_REPLICA_ACKS" in env) == (given != ""), (name, given)
            lambda_env = {"AWS_LAMBDA_FUNCTION_NAME": name, **{k: str(v) for k, v in env.items()}}
            assert ReplicaAcks.from_config(RedisConfig(), lambda_env).replicas == replicas, (name, given)


def test_a_deployed_stage_keeps_the_default_key_prefix_on_a_redis_without_cluster_mode(package: Package) -> None:
    """The README advised the ``{vmpool}:`` prefix (VMPOOL_KEY_PREFIX) for a clustered Redis,
    which no deploy setting could give the functions. The stack's Redis has cluster mode off and
    the client speaks to one primary: no function is given a prefix, and the README says so."""
    assert "NumNodeGroups" not in package.resources["Redis"]["Properties"]
    for name, function in functions(package).items():
        assert "VMPOOL_KEY_PREFIX" not in environment(package, function), name
    config = json.loads((ROOT / ".chalice" / "config.json").read_text())["stages"][package.stage]
    assert "VMPOOL_KEY_PREFIX" not in config["environment_variables"]
    readme = re.sub(r"\s+", " ", (ROOT / "README.md").read_text(encoding="utf-8"))
    assert "a deployed stage uses the default prefix `vmpool:` and `make deploy` has no setting for it" in readme


def test_deployment_zip_holds_the_app_and_its_config(package: Package) -> None:
    names = set(package.zip.namelist())
    assert {"app.py", "chalicelib/vmpool.yaml", "chalicelib/observability.py"} <= names
    assert any(n.startswith("chalicelib/store/lua/") and n.endswith(".lua") for n in names)
    # The dashboard is served by the API Lambda from its own files.
    assert {"chalicelib/dashboard/index.html", "chalicelib/dashboard/dashboard.js",
            "chalicelib/dashboard/dashboard.css"} <= names
    assert not any(n.startswith(("tests/", "infra/", "local/")) for n in names)


def test_the_packaged_config_is_the_canonical_json_of_the_validated_yaml(package: Package) -> None:
    """The Lambdas read the stage's config file as packaging validated it: canonical JSON, built
    without pydantic (left out of the zip) or yaml; the same config as the YAML gives."""
    member = sync_config.STAGES[package.stage].config_file
    packaged = json.loads(package.zip.read(member))
    assert packaged["vmpool_config_format"] == 1
    assert from_canonical(packaged) == parse((ROOT / member).read_text())
    names = package.zip.namelist()
    assert not [n for n in names if n.split("/")[0].split("-")[0].removesuffix(".py").lower() in (
        "pydantic", "pydantic_core", "annotated_types", "typing_inspection", "yaml", "_yaml", "pyyaml")]
    assert any(n.startswith("aws_lambda_powertools/") for n in names)  # in the zip: no layer needed


def test_deployment_zip_leaves_the_sdk_to_the_runtime_and_ships_bytecode(package: Package) -> None:
    """botocore (16 of 21.6 MB, pulled in by aws-xray-sdk) would shadow the runtime's copy; a
    zip without bytecode compiles every module at each cold start; issue 14 wants < 5 MB."""
    names = set(package.zip.namelist())
    assert not [n for n in names if n.split("/")[0].split("-")[0].removesuffix(".py") in (
        "botocore", "boto3", "s3transfer", "jmespath", "urllib3", "dateutil", "python_dateutil", "six")]
    runtime = json.loads(package.template_path.read_text())["Resources"]["Reconcile"]["Properties"]["Runtime"]
    tag = "cpython-" + runtime.removeprefix("python").replace(".", "")
    # The app's own code: sources (readable tracebacks) and bytecode for the runtime's Python.
    for module in ("app", "chalicelib/manager/dispatch", "chalicelib/store/store"):
        directory, _, name = module.rpartition("/")
        cached = f"{directory + '/' if directory else ''}__pycache__/{name}.{tag}.pyc"
        assert f"{module}.py" in names and cached in names, module
    # Libraries: bytecode only, no stubs.
    assert {"redis/client.pyc", "pyVmomi/VmomiSupport.pyc", "ldap3/__init__.pyc"} <= names
    assert not [n for n in names if n.endswith((".py", ".pyi")) and not n.startswith(("app.py", "chalicelib/"))]
    assert package.template_path.with_name("deployment.zip").stat().st_size < 5_000_000  # was 21.6 MB


@pytest.fixture(scope="module")
def sandbox(package: Package, tmp_path_factory: pytest.TempPathFactory) -> lambda_sandbox.Sandbox:
    """The packaged zip unpacked as Lambda's /var/task, run by the runtime's Python with only the
    runtime's SDK beside it (infra/lambda_sandbox.py)."""
    try:
        return lambda_sandbox.unpack(package.template_path.with_name("deployment.zip"),
                                     tmp_path_factory.mktemp("task-root"))
    except lambda_sandbox.NoLambdaPython as error:
        pytest.skip(str(error))


def packaged_form(document: dict[str, Any]) -> str:
    """A config as packaging and config-push hand it to the Lambdas: validated, canonical JSON."""
    return canonical_json(parse(json.dumps(document)))


def run_packaged(sandbox: lambda_sandbox.Sandbox, stage: str, args: list[str], extra: dict[str, str]) -> Any:
    done = sandbox.run([str(FUNCTIONS_SCRIPT), *args], lambda_sandbox.stage_environment(stage), extra)
    assert done.returncode == 0, done.stderr[-6000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def prod_sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[lambda_sandbox.Sandbox]:
    """The prod stage's package (it traces) unpacked as ``sandbox`` unpacks dev's."""
    for prod in build_package(stage="prod"):
        try:
            yield lambda_sandbox.unpack(prod.template_path.with_name("deployment.zip"),
                                        tmp_path_factory.mktemp("prod-task-root"))
        except lambda_sandbox.NoLambdaPython as error:
            pytest.skip(str(error))


def test_the_api_cold_import_leaves_vsphere_ldap_dns_and_the_tracer_to_whoever_needs_them(
        sandbox: lambda_sandbox.Sandbox, prod_sandbox: lambda_sandbox.Sandbox) -> None:
    found = run_packaged(sandbox, "dev", [], {})
    assert found == {"loaded_by_cold_import": [], "tracer": "_NoTracer"}
    # A stage with tracing gets Powertools' Tracer, from the X-Ray SDK (and wrapt) in its zip;
    # wrapt's import hooks use importlib.metadata, so that stage runs it at once.
    found = run_packaged(prod_sandbox, "prod", [], {})
    assert found == {"loaded_by_cold_import": ["aws_xray_sdk", "importlib.metadata._meta"], "tracer": "Tracer"}


def test_a_stage_without_tracing_ships_no_xray_sdk(package: Package, prod_sandbox: lambda_sandbox.Sandbox) -> None:
    """Only Powertools' Tracer imports the X-Ray SDK and wrapt, and a stage without tracing (dev:
    ``POWERTOOLS_TRACE_DISABLED``) never makes one: its zip leaves them out (205 KB zipped, 4.45 ->
    4.22 MB on 2026-12-07); a stage that traces keeps them (the test above runs its Tracer)."""
    assert [stage.name for stage in STAGES.values() if stage.tracing] == ["prod"]
    assert sync_config.environment(STAGES[package.stage])["POWERTOOLS_TRACE_DISABLED"] == "true"
    shipped = {name.split("/", 1)[0] for name in package.zip.namelist()}
    assert not [top for top in shipped if top.startswith(("aws_xray_sdk", "wrapt"))]
    assert (prod_sandbox.task_root / "aws_xray_sdk").is_dir() and (prod_sandbox.task_root / "wrapt").is_dir()


DOCSTRINGS_SCRIPT = """
import json, sys, traceback
sys.dont_write_bytecode = True
import chalicelib.config as config
found = {"module": config.__doc__, "function": config.from_canonical.__doc__, "class": config.ConfigError.__doc__,
         "bytecode": config.__spec__.cached, "source": config.__file__}
try:
    config.from_canonical({"format": "another"})
except config.ConfigError as error:
    found["raised_at"] = [frame.line for frame in traceback.extract_tb(error.__traceback__)][-1]
print(json.dumps(found))
"""


def test_the_apps_bytecode_leaves_its_docstrings_to_the_sources_beside_it(sandbox: lambda_sandbox.Sandbox) -> None:
    """The app ships its sources beside its bytecode (readable tracebacks); the bytecode carried
    every module's and function's docstring a second time, 180 KB of the zip on 2026-12-07 (as
    much as the app had grown in a day). Imported from the zip's bytecode, they are gone; a class
    keeps its own, and a traceback still shows the source line that raised."""
    done = sandbox.run(["-c", DOCSTRINGS_SCRIPT], lambda_sandbox.stage_environment("dev"))
    assert done.returncode == 0, done.stderr[-4000:]
    found = json.loads(done.stdout.strip().splitlines()[-1])
    assert found["bytecode"].startswith(str(sandbox.task_root)) and found["source"].endswith("chalicelib/config.py")
    assert '"""Build the config from its canonical form' in Path(found["source"]).read_text()
    assert (found["module"], found["function"]) == (None, None)
    assert found["class"].startswith("The configuration is invalid")
    assert found["raised_at"].startswith("raise ConfigError([(f\"{source}: not a canonical vmpool config")


@pytest.fixture
def vcsim_url(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    launcher.build()
    cert = tmp_path / "vcsim.pem"
    process, url = launcher.start_vcsim(0, 0.2, cert)
    try:
        yield url, cert
    finally:
        launcher.stop_vcsim(process)


@pytest.fixture
def sqs_endpoint() -> Iterator[str]:
    with moto_endpoint() as url:
        yield url


def test_each_packaged_function_runs_from_the_slimmed_zip(sandbox: lambda_sandbox.Sandbox, redis_server: RedisServer,
                                                          vcsim_url: tuple[str, Path], sqs_endpoint: str,
                                                          bind: BindServer, tmp_path: Path) -> None:
    """Nothing the code imports was slimmed away: in the sandbox, the API answers (a body that is
    not base64 with a 400), the tick queues every pool, the consumer's passes clone on vSphere
    (vcsim, through the trimmed pyVmomi) and on the dummy provider (a poison message in their
    batch dropped alone), a checkout succeeds, a dynamic-dns entry publishes, finds and deletes a
    record on a real BIND (through the trimmed dnspython), and every module of the app imports."""
    url, cert = vcsim_url
    aws = {"AWS_ENDPOINT_URL": sqs_endpoint, "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test"}
    sqs = boto3.client("sqs", region_name="us-east-1", endpoint_url=sqs_endpoint, aws_access_key_id="test",
                       aws_secret_access_key="test")
    queue_url = sqs.create_queue(QueueName="vmpool-dev-reconcile")["QueueUrl"]
    config = tmp_path / "vmpool.yaml"
    config.write_text(packaged_form({
        "config": {"create_folders": True, "domain": "example.com"},
        "providers": {"vsphere": {"provider_class": "vsphere", "server": url.split("//")[-1].split("/")[0],
                                  "username": launcher.USERNAME, "password": launcher.PASSWORD,
                                  "ca_bundle": str(cert), "connect_timeout": 2, "call_timeout": 10},
                      "dummy": {"createvm_max_time": 0, "boot_time": 0}},
        "dns_configs": {"bind": bind.dns_config()},
        "pools": [{"name": "vs", "size": 1, "provider": "vsphere", "template": launcher.TEMPLATE,
                   "folder": "vmpool/vs"},
                  {"name": "dm", "size": 1, "provider": "dummy"}]}))
    found = run_packaged(sandbox, "dev", ["vs", "dm"], {
        **aws, "VMPOOL_CONFIG_FILE": str(config), "VMPOOL_REDIS_URL": f"redis://127.0.0.1:{redis_server.port}/7",
        "VMPOOL_RECONCILE_QUEUE_URL": queue_url, "VMPOOL_KEY_PREFIX": "sandbox:"})
    assert found["loaded_by_cold_import"] == []
    assert found["config_libraries_loaded"] == []  # the canonical config: no yaml, no pydantic
    assert found["status_code"] == 200
    assert found["unreadable_body"] == [400, False]
    assert found["tick"]["messages"] == 2
    queued = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["All"])["Attributes"]
    assert int(queued["ApproximateNumberOfMessagesDelayed"]) + int(queued["ApproximateNumberOfMessages"]) >= 2
    assert found["reconcile"] == {"batchItemFailures": []}
    assert len(found["vsphere_vms"]) == 1 and found["pools"]["vs"]["pending"] + found["pools"]["vs"]["ready"] == 1
    assert found["checkout_status"] == 200
    assert (found["dns_published"], found["dns_after_delete"]) == (["10.0.0.7"], [])
    assert found["module_import_failures"] == {}
    # Refused before it is parsed: the zip carries neither PyYAML nor pydantic (before, PyYAML's
    # 0.24 MB only ever parsed a config that the missing pydantic then refused).
    assert "no PyYAML" in found["yaml_config"] and "make config-push" in found["yaml_config"]
    assert found["c_extensions"] == {"hiredis": True}  # stripped, it still loads
    assert found["versions"]["redis"] == found["redis_version"] and found["versions"]["aws-lambda-powertools"]
    assert found["time_zone"] == "America/Argentina/Buenos_Aires"  # from tzdata, sourceless


@pytest.fixture
def silent_vcenter() -> Iterator[int]:
    """A vCenter address that takes connections and never answers (a hung vCenter, a firewall
    that drops after the handshake): every pass of its pools waits as long as its timeouts let it."""
    listener = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(listener.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield int(listener.getsockname()[1])
    finally:
        stop.set()
        thread.join(5)
        for connection in held:
            connection.close()
        listener.close()


def test_the_packaged_consumer_answers_a_batch_of_slow_pools_inside_its_time_naming_each(
        sandbox: lambda_sandbox.Sandbox, redis_server: RedisServer, silent_vcenter: int, sqs_endpoint: str,
        tmp_path: Path) -> None:
    """Run from the zip as Lambda runs it (Chalice's handler with the Powertools middlewares), the
    consumer gets a full batch of 10 pools whose vCenter never answers, with 12 s of its
    invocation left: it answers before that time runs out (SAFETY_SECONDS kept back) and reports
    every message as a batch item failure, so SQS delivers each again and deletes none."""
    aws = {"AWS_ENDPOINT_URL": sqs_endpoint, "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test"}
    sqs = boto3.client("sqs", region_name="us-east-1", endpoint_url=sqs_endpoint, aws_access_key_id="test",
                       aws_secret_access_key="test")
    queue_url = sqs.create_queue(QueueName="vmpool-dev-reconcile")["QueueUrl"]
    pools = [f"slow-{n}" for n in range(10)]
    config = tmp_path / "vmpool.yaml"
    config.write_text(packaged_form({
        "providers": {"vsphere": {"provider_class": "vsphere", "server": f"127.0.0.1:{silent_vcenter}",
                                  "username": "u", "password": "p", "connect_timeout": 120, "call_timeout": 120}},
        "pools": [{"name": pool, "size": 1, "provider": "vsphere", "template": "t", "folder": f"vmpool/{pool}"}
                  for pool in pools]}))
    remaining_ms = 12_000
    found = run_packaged(sandbox, "dev", ["--slow-batch", str(remaining_ms), *pools], {
        **aws, "VMPOOL_CONFIG_FILE": str(config), "VMPOOL_REDIS_URL": f"redis://127.0.0.1:{redis_server.port}/8",
        "VMPOOL_RECONCILE_QUEUE_URL": queue_url, "VMPOOL_KEY_PREFIX": "slowbatch:"})
    assert sorted(item["itemIdentifier"] for item in found["answer"]["batchItemFailures"]) == [
        f"m-{pool}" for pool in pools]
    assert found["seconds"] < remaining_ms / 1000 - 2 and found["left_ms"] > 2_000, found


def test_packaging_refuses_a_config_with_a_key_written_twice_and_warns_of_a_harmless_one(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """What packaging does to the stage's config (slim_zip.canonical_config): before, the last
    `size:` of the pool won silently and was packaged."""
    from infra import slim_zip

    config = ":providers:\n  :dummy: {}\n:pools:\n  - name: a\n    provider: dummy\n    size: 1\n    size: SIZE\n"
    (tmp_path / "vmpool.yaml").write_text(config.replace("SIZE", "10"))
    with pytest.raises(SystemExit) as refused:
        slim_zip.canonical_config(tmp_path, "vmpool.yaml")
    assert "pools[0].size: written twice, at lines 6 and 7 of vmpool.yaml" in str(refused.value)
    assert (tmp_path / "vmpool.yaml").read_text() == config.replace("SIZE", "10")  # nothing written

    (tmp_path / "vmpool.yaml").write_text(config.replace("SIZE", "1"))
    slim_zip.canonical_config(tmp_path, "vmpool.yaml")
    warning = "pools[0].size: written twice, at lines 6 and 7 of vmpool.yaml, with the same value: one is enough"
    assert f"slim_zip: warning: vmpool.yaml: {warning}\n" in capsys.readouterr().err
    assert json.loads((tmp_path / "vmpool.yaml").read_text())["warnings"] == [warning]  # each function logs it


def test_secrets_under_a_customer_kms_key_can_be_decrypted_through_ssm_and_secrets_manager_only(
        package: Package) -> None:
    """An SSM SecureString parameter or a secret encrypted with a customer-managed KMS key needs
    ``kms:Decrypt`` on that key: before, no role had it, and every read of such a secret failed
    (AccessDeniedException: a provider's every pass, the LDAP bind at every login). Granted on the
    keys ``SecretsKmsKeyArns`` names to every function's role, only through SSM or Secrets Manager
    of the stack's region; nothing when the parameter is empty (its default)."""
    parameter = package.template["Parameters"]["SecretsKmsKeyArns"]
    assert (parameter["Type"], parameter["Default"]) == ("CommaDelimitedList", "")
    policy = package.resources["SecretsKmsDecryptPolicy"]
    assert policy["Condition"] == "HasSecretsKmsKeys"
    assert package.template["Conditions"]["HasSecretsKmsKeys"] == {
        "Fn::Not": [{"Fn::Equals": [{"Fn::Join": ["", {"Ref": "SecretsKmsKeyArns"}]}, ""]}]}
    function_roles = {function["Properties"]["Role"]["Fn::GetAtt"][0]
                      for function in package.of_type("AWS::Serverless::Function").values()}
    assert {role["Ref"] for role in policy["Properties"]["Roles"]} == function_roles
    assert function_roles <= set(package.of_type("AWS::IAM::Role"))
    (statement,) = policy["Properties"]["PolicyDocument"]["Statement"]
    assert (statement["Effect"], statement["Action"], statement["Resource"]) == (
        "Allow", "kms:Decrypt", {"Ref": "SecretsKmsKeyArns"})
    assert statement["Condition"] == {"StringEquals": {"kms:ViaService": [
        {"Fn::Sub": "ssm.${AWS::Region}.${AWS::URLSuffix}"},
        {"Fn::Sub": "secretsmanager.${AWS::Region}.${AWS::URLSuffix}"}]}}


def test_slimming_a_slimmed_zip_again_changes_nothing(package: Package, tmp_path: Path) -> None:
    """``python -m infra.slim_zip`` run again on the stage's package (by hand, as its docstring
    shows, after ``make package``) leaves it byte for byte as it was, every library's bytecode
    kept. Before, a library's ``module.pyc`` without its source was dropped as stale: the zip
    went from 4.6 to 2.0 MB and no function could import redis, Powertools or pyVmomi."""
    import subprocess

    python = subprocess.run([str(ROOT / "infra" / "lambda_venv.sh")], cwd=ROOT, capture_output=True, text=True,
                            check=True).stdout.strip()
    slimmed = package.template_path.with_name("deployment.zip")
    again = tmp_path / "deployment.zip"
    again.write_bytes(slimmed.read_bytes())
    done = subprocess.run([python, "-m", "infra.slim_zip", str(again), "--config", "chalicelib/vmpool.yaml"], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert again.read_bytes() == slimmed.read_bytes()


def test_a_failed_tick_is_not_retried_by_lambda(package: Package, monkeypatch: pytest.MonkeyPatch) -> None:
    """The deployed stack tells Lambda not to retry a failed tick (an ``EventInvokeConfig`` on it
    after the SAM transform, with no retries). Lambda's default, two retries a minute and two
    minutes on, ran up to three ticks in ~2 minutes after a Redis outage, each sending every pool,
    beside the ticks of those minutes."""
    from test_scale import sam_expanded

    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    configs = [{key: resource["Properties"].get(key) for key in ("FunctionName", "Qualifier", "MaximumRetryAttempts")}
               for resource in sam_expanded(package, "vmpool/dev/code.zip").values()
               if resource["Type"] == "AWS::Lambda::EventInvokeConfig"]
    assert configs == [{"FunctionName": {"Ref": "Tick"}, "Qualifier": "$LATEST", "MaximumRetryAttempts": 0}]
