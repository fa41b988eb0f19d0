"""Builds the template `chalice package --merge-template` merges into Chalice's SAM template.

infra/template.yaml holds the static resources; this adds what depends on the stage, which
Chalice's config cannot express. Nothing here depends on the pools: three functions and one
schedule serve any number of them (the resource count is the same for 3 or 1,000 pools).

- names (queues, secrets, the config bucket, the API, alarms, the dashboard) carrying the stage;
- every function's VPC settings, Redis URL, queue URL and config bucket (SAM ``Globals``);
- each function's log group, made before it, and its Lambda log format (``log_groups_first``);
- the reconcile consumer's partial batch responses (``ReportBatchItemFailures``);
- service-wide alarms and the CloudWatch dashboard, whose metric names come from
  chalicelib.observability (one source of truth).

``--infra-only`` builds the stack for the ``chalice deploy`` path instead: the same resources
without the functions and the API (Chalice deploys those), alarms naming the functions Chalice
creates (``vmpool-<stage>-<function>``), and the outputs ``infra/stage_settings.py`` reads.

    python -m infra.template --stage dev > build/merge-template-dev.json
    python -m infra.template --stage dev --infra-only > build/infra-dev.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from chalice.utils import to_cfn_resource_name

from chalicelib import observability as m
from chalicelib.auth.secrets import FAILURE_KEYS as SECRET_FAILURE_KEYS
from chalicelib.manager.pool_queue import MAX_DELAY_SECONDS, RECONCILE_BATCH_WINDOW_SECONDS, REPORTED_LATENESS_SECONDS
from chalicelib.store.store import MIN_REPLICA_ACKS_ENV
from infra import stage_settings, sync_config
from infra.sync_config import STAGES, Stage

if TYPE_CHECKING:
    from chalicelib.config import Config

STATIC_TEMPLATE = Path(__file__).with_name("template.yaml")
REDIS_NODES = ("001", "002")  # NumCacheClusters: 2 -> <replication group id>-001 and -002
DURATION_ALARM_FRACTION = 0.9
FUNCTIONS = sync_config.FUNCTION_NAMES
SAM_ONLY = ("RestAPI",)
"""Static resources that only amend Chalice's own (absent from the infra-only stack)."""


def function_logical_id(function_name: str) -> str:
    """The logical ID Chalice gives a Lambda function in its SAM template."""
    return "APIHandler" if function_name == sync_config.API_FUNCTION else to_cfn_resource_name(function_name)


def function_name_ref(stage: Stage, function_name: str, infra_only: bool) -> Any:
    """The deployed function's name: a Ref in the full stack, Chalice's name for ``chalice deploy``."""
    if infra_only:
        return deployed_function_name(stage, function_name)
    return {"Ref": function_logical_id(function_name)}


deployed_function_name = sync_config.chalice_function_name


def api_name(stage: Stage) -> str:
    return stage.prefix


def function_environment() -> dict[str, Any]:
    """What every function needs from the stack."""
    return {
        # No password in the environment: the code reads the AUTH token from the secret when it
        # first connects (see docs/deploy.md, "Redis AUTH").
        "VMPOOL_REDIS_URL": {"Fn::Sub": "rediss://${Redis.PrimaryEndPoint.Address}:${Redis.PrimaryEndPoint.Port}/0"},
        "VMPOOL_REDIS_AUTH_SECRET": {"Ref": "RedisAuthSecret"},
        "VMPOOL_RECONCILE_QUEUE_URL": {"Ref": "ReconcileQueue"},
        "VMPOOL_CONFIG_BUCKET": {"Ref": "ConfigBucket"},
        # Only when the operator gives RedisMinReplicaAcks: otherwise the config's
        # redis.min_replica_acks (1 in Lambda unless set) decides, as before.
        MIN_REPLICA_ACKS_ENV: {"Fn::If": [MIN_REPLICA_ACKS_CONDITION, {"Ref": MIN_REPLICA_ACKS_PARAMETER},
                                          {"Ref": "AWS::NoValue"}]},
    }


MIN_REPLICA_ACKS_PARAMETER = "RedisMinReplicaAcks"
"""The stack parameter that sets VMPOOL_REDIS_MIN_REPLICA_ACKS for every function (empty: not set).
Before it, the variable could be given to a deployed stage only by editing the functions by hand,
which the next deploy undid."""
MIN_REPLICA_ACKS_CONDITION = "HasRedisMinReplicaAcks"


def build(stage: Stage, infra_only: bool = False, config_file: Path | None = None) -> dict[str, Any]:
    """The merge template for one stage (or the infra-only stack); ``config_file``: the config
    packaged with it, when not the stage's own file (its DNS entries' needs are checked)."""
    template = yaml.safe_load(STATIC_TEMPLATE.read_text())
    resources = template["Resources"]
    rules = network_rules(stage, config_file)
    if rules:
        template["Rules"] = rules
    resources["ReconcileQueue"]["Properties"]["QueueName"] = stage.reconcile_queue_name
    resources["ReconcileDeadLetterQueue"]["Properties"]["QueueName"] = f"{stage.reconcile_queue_name}-dlq"
    queue = resources["ReconcileQueue"]["Properties"]
    queue["VisibilityTimeout"] = RECONCILE_VISIBILITY_TIMEOUT
    queue["MessageRetentionPeriod"] = reconcile_retention_seconds(queue)
    for logical_id, name in (("RedisAuthSecret", "redis-auth"), ("VSphereSecret", "vsphere"),
                             ("LdapSecret", "ldap")):
        resources[logical_id]["Properties"]["Name"] = stage.secret_prefix + name
    resources["Redis"]["Properties"]["ReplicationGroupId"] = stage.prefix
    resources["ConfigBucket"]["Properties"]["BucketName"] = {
        "Fn::Sub": stage.config_bucket_prefix + "${AWS::AccountId}-${AWS::Region}"}
    template["Parameters"]["SecretsKmsKeyArns"].update(secrets_kms_parameter_constraint())
    resources.update(alarms(stage, infra_only))
    resources["Dashboard"] = dashboard(stage, infra_only)
    if infra_only:
        for logical_id in SAM_ONLY:
            del resources[logical_id]
        template["Description"] += " - infrastructure for `chalice deploy`"
        template["Outputs"].update(stage_outputs())
        return template
    template["Globals"] = {"Function": {
        "VpcConfig": {
            "SecurityGroupIds": [{"Fn::GetAtt": ["LambdaSecurityGroup", "GroupId"]}],
            "SubnetIds": {"Ref": "PrivateSubnetIds"},
        },
        "Environment": {"Variables": function_environment()},
    }}
    resources["RestAPI"]["Properties"]["Name"] = api_name(stage)
    resources["RestAPI"]["Properties"]["GatewayResponses"] = stage_settings.sam_gateway_responses()
    resources["SecretsKmsDecryptPolicy"] = secrets_kms_policy()
    resources.update(role_policies(stage))
    resources.update(log_groups_first(stage))
    # The consumer reports failures per message (its queue URL in Globals orders it after the queue).
    reconcile_id = function_logical_id(sync_config.RECONCILE_FUNCTION)
    resources[reconcile_id]["Properties"]["Events"] = {
        f"{reconcile_id}SqsEventSource": {"Properties": {"FunctionResponseTypes": ["ReportBatchItemFailures"]}}}
    # The tick is never retried (SAM's EventInvokeConfig: one AWS::Lambda::EventInvokeConfig).
    tick = resources.setdefault(function_logical_id(sync_config.TICK_FUNCTION), {}).setdefault("Properties", {})
    tick["EventInvokeConfig"] = {"MaximumRetryAttempts": sync_config.TICK_RETRY_ATTEMPTS}
    return template


def log_group_logical_id(function_name: str) -> str:
    """The logical ID of the log group Chalice makes for a function (``log_retention_in_days``)."""
    return to_cfn_resource_name(f"{function_name}-log-group")


def log_groups_first(stage: Stage) -> dict[str, Any]:
    """Each function's log group, named before the function exists (``sync_config.log_group_name``),
    and the function told to write to it (``LoggingConfig.LogGroup``, with ``sync_config.logging_config``):
    the function refers to its group, so CloudFormation creates the group first and deletes it
    last. Chalice names each group after its function (``/aws/lambda/${Tick}``), which made the
    group wait for the function: the schedule or the queue's event source could invoke it in
    between, Lambda created the group itself, and the stack's create failed on the group
    "already exists" (a stack delete removed the group before the function, which could
    recreate it, to fail the next create the same way). ``UpdateReplacePolicy: Retain``: a stack
    that had the old names keeps their groups (and their lines, until the retention ends) when
    the update replaces them; ``DeletionPolicy: Delete``: a deleted stack leaves no group behind
    that a new stack of the stage would then fail to create."""
    found: dict[str, Any] = {}
    for function in FUNCTIONS:
        group = log_group_logical_id(function)
        found[group] = {"UpdateReplacePolicy": "Retain", "DeletionPolicy": "Delete",
                        "Properties": {"LogGroupName": sync_config.log_group_name(stage, function)}}
        found[function_logical_id(function)] = {"Properties": {"LoggingConfig": {
            **sync_config.logging_config(stage), "LogGroup": {"Ref": group}}}}
    return found


def role_logical_id(function_name: str) -> str:
    """The logical ID of the IAM role Chalice makes for a function (its own policy file)."""
    if function_name == sync_config.API_FUNCTION:
        return "ApiHandlerRole"
    return function_logical_id(function_name) + "Role"


ROLE_OF_FUNCTION = {sync_config.API_FUNCTION: "api", sync_config.TICK_FUNCTION: "tick",
                    sync_config.RECONCILE_FUNCTION: "reconcile"}


def role_policies(stage: Stage) -> dict[str, Any]:
    """Each function's role with its policy file's statements (.chalice/policy-<stage>-<role>.json,
    which Chalice puts in the role) as the stack grants them (``sync_config.stack_policy``): the
    stack's own queue, bucket, Redis AUTH secret and log groups by their exact ARNs. Before
    2026-12-07 the roles had the files' ARNs, any region and account: a dev stage's functions
    could read and delete the reconcile messages, read the config and the Redis AUTH token of
    every dev stage of the account in another region, and any account's named alike that let
    them."""
    found = {}
    for function in FUNCTIONS:
        role = role_logical_id(function)
        document = json.loads((sync_config.CHALICE_DIR / sync_config.policy_file(stage, ROLE_OF_FUNCTION[function]))
                              .read_text())
        found[role] = {"Properties": {"Policies": [{"PolicyName": f"{role}Policy",
                                                    "PolicyDocument": sync_config.stack_policy(stage, document)}]}}
    return found


def secrets_kms_policy() -> dict[str, Any]:
    """``kms:Decrypt`` on the keys ``SecretsKmsKeyArns`` names, for every function's role, only
    when SSM or Secrets Manager of the stack's region asks on the function's behalf
    (``sync_config.secrets_kms_statement``, which the ``chalice deploy`` path's policy files
    share): an SSM SecureString parameter or a secret encrypted with a customer-managed key is
    refused (AccessDeniedException from KMS, through SSM's GetParameter or Secrets Manager's
    GetSecretValue) without it; AWS-managed keys need nothing. Made only when the parameter
    names a key."""
    return {
        "Type": "AWS::IAM::Policy",
        "Condition": "HasSecretsKmsKeys",
        "Properties": {
            "PolicyName": "secrets-kms-decrypt",
            "Roles": [{"Ref": role_logical_id(function)} for function in FUNCTIONS],
            "PolicyDocument": {"Version": "2012-10-17", "Statement": [sync_config.secrets_kms_statement(
                {"Ref": "SecretsKmsKeyArns"}, ["${AWS::Region}"], in_template=True)]},
        },
    }


def secrets_kms_parameter_constraint() -> dict[str, str]:
    """What CloudFormation checks of each ``SecretsKmsKeyArns`` member before it changes anything:
    a KMS key ARN no longer than the roles' policies keep room for (``sync_config.SECRETS_KMS_RESERVE``;
    ``make deploy`` also refuses more than ``MAX_SECRETS_KMS_KEYS`` keys). A longer list would take a role
    past IAM's 10,240 characters and fail the deploy in CloudFormation, minutes in."""
    return {
        "AllowedPattern": f"^({sync_config.KMS_KEY_ARN_PATTERN})?$",
        "ConstraintDescription": (
            "each entry must be a KMS key ARN (arn:<partition>:kms:<region>:<account>:key/<id>) of at most "
            f"{sync_config.MAX_KMS_KEY_ARN_CHARACTERS} characters, without spaces; at most "
            f"{sync_config.MAX_SECRETS_KMS_KEYS} keys"),
    }


def reconcile_retention_seconds(queue: dict[str, Any]) -> int:
    """How long the reconcile queue keeps a message: until one that fails every delivery (a
    pass that raises, or does not end in its invocation's time) has been moved to the dead-letter
    queue. A failed message comes back once its visibility timeout has passed, and is moved at its
    (maxReceiveCount + 1)th receive, up to SQS's longest delay after it was sent. With 600 s and a
    360 s visibility timeout it was dropped after its second delivery: the dead-letter queue, and
    its alarm, never saw a message."""
    from chalicelib.manager.pool_queue import MAX_DELAY_SECONDS

    redeliveries = queue["RedrivePolicy"]["maxReceiveCount"]
    return int(MAX_DELAY_SECONDS + redeliveries * queue["VisibilityTimeout"] + sync_config.RECONCILE_TIMEOUT
               + MOVE_SLACK_SECONDS)


MOVE_SLACK_SECONDS = 300
"""Room for SQS's lateness: a visible message is received by the next poll, not at once."""

RECONCILE_VISIBILITY_TIMEOUT = 6 * sync_config.RECONCILE_TIMEOUT + RECONCILE_BATCH_WINDOW_SECONDS
"""How long a received reconcile message stays hidden: six times the consumer's timeout plus the
event source's batching window, as Lambda recommends for SQS sources (a message is hidden from
the poll that receives it, which the window can precede the invocation by). Six times alone (360
s) was 1 s short with the 1 s window. A message whose pass failed comes back after it."""

LATE_PASS_SECONDS = 120
"""How late past its due time a pass may start before the ``reconcile-late`` alarm fires: two
ticks, a pool's pass starting after the next tick's message for it was due. A healthy consumer
starts a pass within seconds of its due time (SQS's poll); one short of consumers falls further
behind each minute, so this fires within minutes of it, where ``reconcile-backlog`` (the age of
the oldest message, which counts a follow-up's delay) needs 24."""
BACKLOG_WAIT_SECONDS = 120
"""How long a reconcile message may wait to be received before its pool counts as not looked at."""


def reconcile_backlog_threshold() -> int:
    """The age of the oldest reconcile message past which the ``reconcile-backlog`` alarm fires.
    SQS counts a message's age from its send, and AWS's description of the metric ("the
    approximate age of the oldest non-deleted message in the queue", docs/deploy.md, Alarms)
    leaves out only poison pills and messages received three times, not delayed ones: a pool's
    check-delay follow-up, sent with a ``DelaySeconds`` of up to ``MAX_DELAY_SECONDS`` (900 s),
    is that old when it first becomes visible. So the threshold starts from the longest delay.
    A message whose pass failed once (a Redis or vCenter hiccup, reported by the
    ``reconcile-errors`` alarm) is received again one visibility timeout after its first
    receive, aged that plus ``BACKLOG_WAIT_SECONDS`` plus a poll's lateness (a consumer's
    timeout of room): only an age beyond all that says messages are not being received. Before,
    the threshold (540 s) left out the delay: a stack whose follow-ups waited their 900 s, as
    designed, raised the alarm while healthy."""
    return (MAX_DELAY_SECONDS + RECONCILE_VISIBILITY_TIMEOUT + sync_config.RECONCILE_TIMEOUT
            + BACKLOG_WAIT_SECONDS)


def network_rules(stage: Stage, config_file: Path | None = None) -> dict[str, Any]:
    """What the packaged config (the stage's file, or ``config_file``) needs of the stack's
    network parameters, as CloudFormation rules: its DNS entries' (``dns_rules``) and its SSM
    secret references' (``ssm_rules``). The config is loaded once (seconds at 2,000 pools)."""
    config = sync_config.load_config(config_file or sync_config.ROOT / stage.config_file)
    return {**dns_rules(stage, config), **ssm_rules(config), **ldap_rules(config), **guest_rules(config)}


def guest_rules(config: Config) -> dict[str, Any]:
    """vSphere pools that check a new VM's readiness over TCP (``ready_check: tcp``, the default)
    connect to it, which the functions' security group allows in ``GuestCidr`` on
    ``GuestReadyPort`` only. Before, nothing asked for ``GuestCidr``: deployed without it, every
    new VM of such a pool stayed pending until its ``timeout`` destroyed it, and the pools never
    had a ready VM. Pools checking on several ports cannot all be reached (one port is opened)."""
    ports = sync_config.tcp_ready_ports(config)
    if not ports:
        return {}
    pools = sorted(name for names in ports.values() for name in names)
    shown = ", ".join(pools[:5]) + (f" and {len(pools) - 5} more" if len(pools) > 5 else "")
    # Fn::And takes at most 10 conditions; two ports already make it unsatisfiable.
    wanted = " and ".join(f"GuestReadyPort={port}" for port in sorted(ports))
    on_ports = [{"Fn::Equals": [{"Ref": "GuestReadyPort"}, str(port)]} for port in sorted(ports)[:9]]
    return {"GuestsReachable": {"Assertions": [{
        "Assert": {"Fn::And": [{"Fn::Not": [{"Fn::Equals": [{"Ref": "GuestCidr"}, ""]}]}, *on_ports]},
        "AssertDescription": f"The packaged config's vSphere pools ({shown}) check new VMs' readiness over TCP: give "
                             f"GuestCidr (the range the VMs get addresses in) and {wanted}, or set their ready_check "
                             "to tools (docs/deploy.md, Prerequisites)"}]}}


def ldap_rules(config: Config) -> dict[str, Any]:
    """LDAP auth in the packaged config logs users in over TCP to its server, which the functions'
    security group reaches in ``LdapCidr`` on ``LdapPort`` only. Before, the group opened 636 alone
    and nothing asked for ``LdapCidr``: a stack deployed without it, or for LDAP's default
    ``start_tls`` on 389, timed out every login (503) while every pool refilled."""
    server = sync_config.ldap_server(config)
    if server is None:
        return {}
    host, port = server
    return {"LdapReachable": {"Assertions": [{
        "Assert": {"Fn::And": [{"Fn::Not": [{"Fn::Equals": [{"Ref": "LdapCidr"}, ""]}]},
                               {"Fn::Equals": [{"Ref": "LdapPort"}, str(port)]}]},
        "AssertDescription": f"The packaged config logs users in against LDAP at {host} port {port}: give LdapCidr "
                             f"(the LDAP servers' range) and LdapPort={port} (docs/deploy.md, Prerequisites)"}]}}


def ssm_rules(config: Config) -> dict[str, Any]:
    """An SSM secret reference (``{ssm: ...}``) of the packaged config is fetched from SSM
    Parameter Store, which none of the stack's default endpoints serves and the functions' security
    group reaches only through the stack's own endpoints: without a NAT gateway
    (``CreateVpcEndpoints=false``) or the SSM endpoint (``CreateSsmEndpoint=true``) every fetch
    timed out (``SecretFailures`` unavailable): the passes of a provider or DNS entry with such a
    password failed, LDAP logins answered 503. docs/deploy.md said to add an SSM endpoint, which
    the functions' security group did not let them reach."""
    references = sync_config.ssm_references(config)
    if not references:
        return {}
    return {"SsmReachable": {"Assertions": [{
        "Assert": {"Fn::Or": [{"Fn::Equals": [{"Ref": "CreateVpcEndpoints"}, "false"]},
                              {"Fn::Equals": [{"Ref": "CreateSsmEndpoint"}, "true"]}]},
        "AssertDescription": _listed_description(
            "SSM secret references", references, "are fetched from SSM Parameter Store, which no endpoint of this "
            "stack serves unless asked: deploy with CreateSsmEndpoint=true (an SSM endpoint), or "
            "CreateVpcEndpoints=false with subnets that route through a NAT gateway", docs="Prerequisites")}]}}


def dns_rules(stage: Stage, config: Config | None = None) -> dict[str, Any]:
    """What the pools' DNS entries in the packaged config need of the stack's parameters, as
    CloudFormation rules: a change set that would deploy functions unable to reach their DNS
    service is refused before anything is built (infra/deploy.py checks them before it asks).
    Without them the stack deployed, and every VM of those pools stayed pending with ``DNS record
    not created`` until its ``timeout`` destroyed it: no pool with DNS ever had a ready VM.

    - ``route53``: the Route 53 API is reached over the internet only (the stack's endpoints are
      Secrets Manager, SQS and S3, and the functions' security group sends HTTPS nowhere else):
      the subnets must route through a NAT gateway, ``CreateVpcEndpoints=false``.
    - ``dynamic-dns`` with a ``server``: RFC 2136 updates over TCP to it, which the security
      group allows to ``DnsServerCidr`` on ``DnsServerPort`` only."""
    entries = sync_config.dns_entries(stage, config, used_only=True)
    rules: dict[str, Any] = {}
    route53 = sorted(entry.name for entry in entries if entry.dns_class == "route53")
    if route53:
        rules["Route53ThroughNat"] = {"Assertions": [{
            "Assert": {"Fn::Equals": [{"Ref": "CreateVpcEndpoints"}, "false"]},
            "AssertDescription": _listed_description(
                "route53 DNS entries", route53, "call the Route 53 API, which no VPC endpoint of this stack reaches: "
                "deploy with CreateVpcEndpoints=false and subnets that route through a NAT gateway")}]}
    servers = sorted(entry.name for entry in entries
                     if entry.dns_class == "dynamic-dns" and getattr(entry.settings, "server", None))
    if servers:
        ports = sorted({int(getattr(entry.settings, "port", 53)) for entry in entries if entry.name in servers})
        rules["DnsServersReachable"] = {"Assertions": [{
            "Assert": {"Fn::Not": [{"Fn::Equals": [{"Ref": "DnsServerCidr"}, ""]}]},
            "AssertDescription": _listed_description(
                "dynamic-dns entries with a server", servers, "send DNS updates over TCP: give DnsServerCidr "
                f"(the servers' range) and DnsServerPort (theirs: {', '.join(map(str, ports))})")}]}
    return rules


def _listed_description(what: str, names: list[str], need: str, docs: str = "DNS") -> str:
    shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
    return f"The packaged config's {what} ({shown}) {need} (docs/deploy.md, {docs})"


def stage_outputs() -> dict[str, Any]:
    """What ``chalice deploy`` needs from the infra-only stack (infra/stage_settings.py). The KMS
    keys only when the parameter names some: its policy files then grant them; the replica acks
    only when given: the functions' environment then carries them."""
    return {
        "SecretsKmsKeyArns": {"Condition": "HasSecretsKmsKeys",
                              "Value": {"Fn::Join": [",", {"Ref": "SecretsKmsKeyArns"}]}},
        MIN_REPLICA_ACKS_PARAMETER: {"Condition": MIN_REPLICA_ACKS_CONDITION,
                                     "Value": {"Ref": MIN_REPLICA_ACKS_PARAMETER}},
        "RedisUrl": {"Value": function_environment()["VMPOOL_REDIS_URL"]},
        "ReconcileQueueName": {"Value": {"Fn::GetAtt": ["ReconcileQueue", "QueueName"]}},
        "RedisAuthSecretArn": {"Value": {"Ref": "RedisAuthSecret"}},
        "PrivateSubnetIds": {"Value": {"Fn::Join": [",", {"Ref": "PrivateSubnetIds"}]}},
    }


# --- alarms -------------------------------------------------------------------------------------


def _actions() -> dict[str, Any]:
    topic = {"Fn::If": ["HasAlarmTopic", [{"Ref": "AlarmTopicArn"}], {"Ref": "AWS::NoValue"}]}
    return {"AlarmActions": topic, "OKActions": topic}


def _dimensions(**dims: Any) -> list[dict[str, Any]]:
    return [{"Name": name, "Value": value} for name, value in dims.items()]


def _alarm(name: str, description: str, **properties: Any) -> dict[str, Any]:
    return {"Type": "AWS::CloudWatch::Alarm",
            "Properties": {"AlarmName": name, "AlarmDescription": description, **_actions(), **properties}}


def _sum_over_functions(stage: Stage, metric: str, infra_only: bool) -> list[dict[str, Any]]:
    """Metric math: one Lambda metric summed over the stage's three functions."""
    queries: list[dict[str, Any]] = [
        {"Id": f"f{index}", "ReturnData": False, "MetricStat": {
            "Metric": {"Namespace": "AWS/Lambda", "MetricName": metric,
                       "Dimensions": _dimensions(FunctionName=function_name_ref(stage, function, infra_only))},
            "Period": 300, "Stat": "Sum"}}
        for index, function in enumerate(FUNCTIONS)]
    ids = " + ".join(f"FILL(f{index}, 0)" for index in range(len(FUNCTIONS)))
    return [*queries, {"Id": "total", "Label": f"{metric} (all functions)", "ReturnData": True, "Expression": ids}]


def alarms(stage: Stage, infra_only: bool = False) -> dict[str, Any]:
    """Every alarm: service-wide, per function, queue and Redis. None per pool."""
    prefix = stage.prefix
    namespace = m.namespace_for(stage.name)
    service = _dimensions(service=m.SERVICE)
    found: dict[str, Any] = {}
    found["EmptyPoolsAlarm"] = _alarm(
        f"{prefix}-pools-empty",
        "Some pool with a size has had no ready VM for PoolEmptyMinutes minutes, or the tick stopped "
        "reporting (docs/deploy.md: why is this pool empty). The tick's log line names the pools.",
        Namespace=namespace, MetricName=m.EMPTY_POOLS, Dimensions=service,
        Statistic="Minimum", Period=60, EvaluationPeriods={"Ref": "PoolEmptyMinutes"},
        Threshold=1, ComparisonOperator="GreaterThanOrEqualToThreshold", TreatMissingData="breaching")
    def service_count_alarm(name: str, description: str, metric: str, statistic: str,
                            threshold: int) -> dict[str, Any]:
        """Service-wide events counted over 5 minutes; no data means none happened."""
        return _alarm(f"{prefix}-{name}", description, Namespace=namespace, MetricName=metric,
                      Dimensions=service, Statistic=statistic, Period=300, EvaluationPeriods=1,
                      Threshold=threshold, ComparisonOperator="GreaterThanOrEqualToThreshold",
                      TreatMissingData="notBreaching")

    found["ReconcileErrorsAlarm"] = service_count_alarm(
        "reconcile-errors", "Reconcile passes failed (provider or Redis errors) 3+ times in 5 minutes.",
        m.RECONCILE_ERRORS, "Sum", 3)
    found["PoolsNotQueuedAlarm"] = service_count_alarm(
        "pools-not-queued",
        "3+ ticks in 5 minutes could not put some pool's message on the reconcile queue (SQS throttling, "
        "timing out or refusing). The tick's error log line names the pools and SQS's codes.",
        m.POOLS_NOT_QUEUED, "SampleCount", 3)
    found["SecretFailuresAlarm"] = service_count_alarm(
        "secrets-unavailable",
        "Secret references of the config (Secrets Manager, SSM) could not be fetched 3+ times in 5 minutes: "
        "LDAP logins, Redis connections or a provider's passes fail until they can. The dashboard's graph "
        "gives the reason (refused: IAM, KMS or a wrong name; unavailable or throttled: AWS; malformed: the "
        "secret's content); the callers' log lines name the reference.",
        m.SECRET_FAILURES, "Sum", 3)
    found["NamesReadFailuresAlarm"] = service_count_alarm(
        "names-not-read",
        "3+ reads in 5 minutes of the names of a provider's VMs (once after Redis lost its data) failed: "
        "its pools clone under random names until one succeeds. The dashboard's graph names the provider "
        "and the failure kind; the pass's 'names of the VMs Redis forgot not read' warning gives the error.",
        m.NAMES_READ_FAILURES, "Sum", 3)
    found["TemplatePreparationFailuresAlarm"] = service_count_alarm(
        "template-preparation-failures",
        "A template's preparation (create_template_delta_disks) failed or was still under way after the "
        "clone timeout: its pool clones from the template as it is (full copies, slower). The warning or "
        "error log line names the pool and template; the dashboard's graph gives the reason.",
        m.TEMPLATE_PREPARATION_FAILURES, "Sum", 1)

    def stat(metric_id: str, name: str) -> dict[str, Any]:
        return {"Id": metric_id, "ReturnData": False, "MetricStat": {
            "Metric": {"Namespace": namespace, "MetricName": name, "Dimensions": service},
            "Period": 900, "Stat": "Sum"}}

    found["CloneFailureRateAlarm"] = _alarm(
        f"{prefix}-clone-failure-rate", "Over 20% of clones failed in 15 minutes (at least 5 attempts).",
        Metrics=[stat("failed", m.CLONE_FAILURES), stat("started", m.CLONES_STARTED),
                 {"Id": "rate", "Label": "clone failure %", "ReturnData": True,
                  "Expression": "IF((started + failed) >= 5, 100 * failed / (started + failed), 0)"}],
        EvaluationPeriods=1, Threshold=20, ComparisonOperator="GreaterThanThreshold",
        TreatMissingData="notBreaching")
    found["LambdaErrorsAlarm"] = _alarm(
        f"{prefix}-lambda-errors", "The stage's functions failed (crashed or timed out) 3+ times in 5 minutes.",
        Metrics=_sum_over_functions(stage, "Errors", infra_only), EvaluationPeriods=1, Threshold=3,
        ComparisonOperator="GreaterThanOrEqualToThreshold", TreatMissingData="notBreaching")
    found["LambdaThrottlesAlarm"] = _alarm(
        f"{prefix}-lambda-throttles", "The stage's functions were throttled (reserved concurrency too small).",
        Metrics=_sum_over_functions(stage, "Throttles", infra_only), EvaluationPeriods=1, Threshold=1,
        ComparisonOperator="GreaterThanOrEqualToThreshold", TreatMissingData="notBreaching")
    found["ReconcileNearTimeoutAlarm"] = _alarm(
        f"{prefix}-reconcile-near-timeout",
        f"A reconcile batch took over {int(DURATION_ALARM_FRACTION * 100)}% of its timeout.",
        Namespace="AWS/Lambda", MetricName="Duration",
        Dimensions=_dimensions(FunctionName=function_name_ref(stage, sync_config.RECONCILE_FUNCTION, infra_only)),
        Statistic="Maximum", Period=300, EvaluationPeriods=1,
        Threshold=DURATION_ALARM_FRACTION * sync_config.RECONCILE_TIMEOUT * 1000,
        ComparisonOperator="GreaterThanOrEqualToThreshold", TreatMissingData="notBreaching")
    def queue_alarm(name: str, description: str, metric: str, queue: str, threshold: int) -> dict[str, Any]:
        return _alarm(f"{prefix}-{name}", description, Namespace="AWS/SQS", MetricName=metric,
                      Dimensions=_dimensions(QueueName={"Fn::GetAtt": [queue, "QueueName"]}),
                      Statistic="Maximum", Period=300, EvaluationPeriods=1, Threshold=threshold,
                      ComparisonOperator="GreaterThanOrEqualToThreshold", TreatMissingData="notBreaching")

    found["ReconcileLateAlarm"] = _alarm(
        f"{prefix}-reconcile-late",
        f"A pool's pass started over {LATE_PASS_SECONDS} s after its message was due (its send plus its "
        "delay; first deliveries only): reconcile messages wait to be received (too few consumers for the "
        "pools, throttled), so pools are looked at late. PassLateness on the dashboard.",
        Namespace=namespace, MetricName=m.PASS_LATENESS, Dimensions=service, Statistic="Maximum", Period=300,
        EvaluationPeriods=1, Threshold=LATE_PASS_SECONDS, ComparisonOperator="GreaterThanOrEqualToThreshold",
        TreatMissingData="notBreaching")
    backlog_age = reconcile_backlog_threshold()
    found["ReconcileBacklogAlarm"] = queue_alarm(
        "reconcile-backlog",
        f"The oldest reconcile message is over {backlog_age} s old, more than the longest check delay "
        f"({MAX_DELAY_SECONDS} s, which SQS counts in a message's age) and one failed pass's retry "
        f"({RECONCILE_VISIBILITY_TIMEOUT} s visibility timeout) explain: messages are not being received "
        "(throttled or too few consumers) or passes keep failing; pools are not being looked at.",
        "ApproximateAgeOfOldestMessage", "ReconcileQueue", backlog_age)
    found["ReconcileDeadLetterAlarm"] = queue_alarm(
        "reconcile-dlq-not-empty", "Reconcile messages failed 5 times and sit in the dead-letter queue.",
        "ApproximateNumberOfMessagesVisible", "ReconcileDeadLetterQueue", 1)
    found["ApiErrorsAlarm"] = _alarm(
        f"{prefix}-api-5xx", "The API answered 5 or more 5xx in 5 minutes.",
        Namespace="AWS/ApiGateway", MetricName="5XXError",
        Dimensions=_dimensions(ApiName=api_name(stage), Stage="api"), Statistic="Sum", Period=300,
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


def _widget(title: str, metrics: list[Any], stat: str = "Sum", period: int = 60, **extra: Any) -> dict[str, Any]:
    return {"type": "metric", "width": 8, "height": 6, "properties": {
        "title": title, "region": "${AWS::Region}", "view": "timeSeries", "stat": stat,
        "period": period, "metrics": metrics, **extra}}


TOP_POOLS = 20
"""Pools drawn in each per-pool graph: those with the most of the metric."""
_QUERY_FUNCTIONS = {"Sum": "SUM", "Maximum": "MAX"}


def _by_pool(stage: Stage, title: str, *names: str, stat: str = "Sum",
             by_alias: tuple[str, ...] = ()) -> dict[str, Any]:
    """The ``TOP_POOLS`` pools with the most of each metric (only pools where it happened
    publish it), by a Metrics Insights query: it ranks every matching metric (up to 10,000)
    before its LIMIT. A SEARCH returns an arbitrary 500 of its matches, and a graph draws at most
    500 series: at 1,000 pools failing at once it showed half of them, maybe not the worst.
    ``by_alias``: metrics also ranked by their ``alias`` dimension in the same graph."""
    return _ranked(stage, title, [(name, "pool") for name in names] + [(name, "alias") for name in by_alias],
                   stat=stat)


DYNAMIC_LABEL = "${!LABEL}"
"""CloudWatch's ``${LABEL}`` (a series' own label: a query's GROUP BY values, the pool), escaped
for the dashboard body's ``Fn::Sub``, which would take ``${LABEL}`` for a parameter."""


def _ranked(stage: Stage, title: str, series: list[tuple[str, str]], stat: str = "Sum") -> dict[str, Any]:
    """A graph of the ``TOP_POOLS`` series with the most of each (metric, dimension) of
    ``series``: the metric's dimension set holding that dimension, grouped by all but
    ``service`` (``_by_pool`` says why a Metrics Insights query). A graph of several queries
    labels each series with what tells its query apart (the metric, the dimension) and its own
    label (the pool): a fixed label, the metric's name, was every pool's, so pools could not be
    told apart."""
    namespace = m.namespace_for(stage.name)
    function = _QUERY_FUNCTIONS[stat]
    several_names = len({name for name, _ in series}) > 1
    several_keys = len({key for _, key in series}) > 1
    expressions = []
    for index, (name, key) in enumerate(series):
        dims = sorted(next(d for d in m.METRICS[name].dimension_sets if key in d))
        group = ", ".join(d for d in dims if d != "service")
        query = (f'SELECT {function}({name}) FROM SCHEMA("{namespace}", {", ".join(dims)}) '
                 f"GROUP BY {group} ORDER BY {function}() DESC LIMIT {TOP_POOLS}")
        told_apart = [*([name] if several_names else []), *([key] if several_keys else [])]
        label = " ".join([*told_apart, DYNAMIC_LABEL]) if told_apart else ""
        expressions.append([{"expression": query, "label": label, "id": f"q{index}"}])
    return _widget(f"{title} (top {TOP_POOLS})", expressions, period=300)


def _log_widget(title: str, log_group: str, query: str) -> dict[str, Any]:
    return {"type": "log", "width": 8, "height": 6, "properties": {
        "title": title, "region": "${AWS::Region}", "view": "table",
        "query": f"SOURCE '{log_group}' | {query}"}}


def dashboard(stage: Stage, infra_only: bool = False) -> dict[str, Any]:
    """The CloudWatch dashboard (described in docs/deploy.md)."""
    namespace = m.namespace_for(stage.name)

    def service(*names: str, **options: Any) -> list[list[Any]]:
        return [[namespace, name, "service", m.SERVICE, *([options] if options else [])] for name in names]

    def per_function(metric: str) -> list[list[Any]]:
        return [["AWS/Lambda", metric, "FunctionName", "${" + function_logical_id(f) + "}" if not infra_only
                 else deployed_function_name(stage, f), {"label": f}] for f in FUNCTIONS]

    api = api_name(stage)
    tick_log, reconcile_log = (sync_config.log_group_name(stage, function)
                               for function in (sync_config.TICK_FUNCTION, sync_config.RECONCILE_FUNCTION))
    widgets = [
        _widget("VMs ready, pending, running; capacity", service(m.READY, m.PENDING, m.RUNNING, m.CAPACITY),
                stat="Maximum"),
        _widget("Pools with no ready VM", service(m.EMPTY_POOLS), stat="Maximum"),
        _log_widget("Empty pools (last tick)", tick_log,
                    "filter message = 'tick' | sort @timestamp desc | limit 1 | fields @timestamp, empty_count, empty"),
        _widget("Checkouts, misses (503), deletes", service(m.CHECKOUTS, m.CHECKOUT_MISSES, m.DELETES)),
        _by_pool(stage, "Checkout misses by pool or alias", m.CHECKOUT_MISSES, by_alias=(m.CHECKOUT_MISSES,)),
        _by_pool(stage, "Clone failures by pool, clone cancels refused by pool and reason", m.CLONE_FAILURES,
                 m.CLONE_CANCELS_REFUSED),
        _by_pool(stage, "DNS failures by pool and reason, migrations by pool", m.DNS_FAILURES, m.MIGRATIONS,
                 m.MIGRATION_FAILURES),
        _by_pool(stage, "Template preparations failed or timed out, by pool and reason",
                 m.TEMPLATE_PREPARATION_FAILURES),
        _widget("Clones started and failed, VMs destroyed",
                service(m.CLONES_STARTED, m.CLONE_FAILURES, m.VMS_DESTROYED)),
        _widget("Clone and boot time p90 (s)", service(m.CLONE_DURATION, m.BOOT_DURATION, stat="p90"), stat="p90"),
        _widget("Reconcile pass p99 (s), errors", [*service(m.RECONCILE_DURATION, stat="p99"),
                                                  *service(m.RECONCILE_ERRORS, yAxis="right")]),
        _widget("Refill latency p50/p90 (s): checkout to consumer",
                [*service(m.REFILL_LATENCY, stat="p50"), *service(m.REFILL_LATENCY, stat="p90")]),
        _widget(f"Passes started {int(REPORTED_LATENESS_SECONDS)} s or more late: max seconds past the message's "
                "due time, and how many (should stay empty)",
                [*service(m.PASS_LATENESS, stat="Maximum"),
                 *service(m.PASS_LATENESS, stat="SampleCount", yAxis="right")],
                stat="Maximum", annotations={"horizontal": [{"label": "reconcile-late", "value": LATE_PASS_SECONDS}]}),
        _log_widget("Pools with the most passes (last hour)", reconcile_log,
                    "filter message = 'reconcile pass' | stats count(*) as passes by pool "
                    "| sort passes desc | limit 20"),
        _widget("vCenter calls", service(m.PROVIDER_CALLS)),
        _widget("Config pushes refused (last good config kept)", service(m.CONFIG_REJECTED)),
        _widget("Running count drift (VMs the tick's rebuild corrected; should stay 0)",
                service(m.RUNNING_COUNT_DRIFT)),
        _widget("Pools the tick could not queue (SQS refused or timed out; should stay 0)",
                service(m.POOLS_NOT_QUEUED)),
        _widget("Runtime templates and clone targets ignored (no room in /config; should stay 0)",
                service(m.OVERRIDES_IGNORED)),
        _widget("AWS calls failed (config refreshes, refill nudges; their warning lines say why)",
                service(m.AWS_CALL_FAILURES)),
        _widget("Secrets not fetched, by reason (logins, Redis connections, passes fail; should stay 0)",
                [[namespace, m.SECRET_FAILURES, "reason", reason, "service", m.SERVICE, {"label": reason}]
                 for reason in SECRET_FAILURE_KEYS]),
        _ranked(stage, "Names of VMs Redis forgot not read, by provider and reason (random clone names "
                "until read; should stay empty)", [(m.NAMES_READ_FAILURES, "provider")]),
        _widget("Lambda errors", per_function("Errors")),
        _widget("Lambda throttles", per_function("Throttles")),
        _widget("Lambda duration max (ms)", per_function("Duration"), stat="Maximum"),
        _widget("API requests, 4xx, 5xx", [["AWS/ApiGateway", name, "ApiName", api, "Stage", "api"]
                                           for name in ("Count", "4XXError", "5XXError")]),
        _widget("API latency p50/p99 (ms)", [
            ["AWS/ApiGateway", "Latency", "ApiName", api, "Stage", "api", {"stat": "p50"}],
            ["AWS/ApiGateway", "Latency", "ApiName", api, "Stage", "api", {"stat": "p99"}]]),
        _widget("Reconcile queue and dead letters", [
            ["AWS/SQS", "ApproximateNumberOfMessagesVisible", "QueueName", stage.reconcile_queue_name],
            ["AWS/SQS", "ApproximateNumberOfMessagesDelayed", "QueueName", stage.reconcile_queue_name],
            ["AWS/SQS", "ApproximateAgeOfOldestMessage", "QueueName", stage.reconcile_queue_name, {"yAxis": "right"}],
            ["AWS/SQS", "ApproximateNumberOfMessagesVisible", "QueueName", f"{stage.reconcile_queue_name}-dlq"]],
            stat="Maximum"),
        _widget("Redis memory % and engine CPU %", [
            ["AWS/ElastiCache", metric, "CacheClusterId", "${Redis}-" + node]
            for node in REDIS_NODES for metric in ("DatabaseMemoryUsagePercentage", "EngineCPUUtilization")],
            stat="Maximum", period=300),
        _widget("Redis connections and commands", [
            ["AWS/ElastiCache", metric, "CacheClusterId", "${Redis}-" + node]
            for node in REDIS_NODES for metric in ("CurrConnections", "GetTypeCmds", "SetTypeCmds")],
            stat="Maximum", period=300),
        _by_pool(stage, "Sized pools: target size and predicted demand (docs/sizing.md)", m.TARGET_SIZE,
                 m.PREDICTED_DEMAND, stat="Maximum"),
        _by_pool(stage, "Failed reconcile passes by pool", m.RECONCILE_ERRORS),
    ]
    for index, widget in enumerate(widgets):
        widget["x"], widget["y"] = (index % 3) * 8, (index // 3) * 6
    body = json.dumps({"widgets": widgets}, separators=(",", ":"))
    return {"Type": "AWS::CloudWatch::Dashboard",
            "Properties": {"DashboardName": stage.prefix, "DashboardBody": {"Fn::Sub": body}}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stage", choices=sorted(STAGES), required=True)
    parser.add_argument("--infra-only", action="store_true", help="the stack for the chalice deploy path")
    parser.add_argument("--config", type=Path, help="the config packaged with it (default: the stage's file)")
    args = parser.parse_args(argv)
    json.dump(build(STAGES[args.stage], infra_only=args.infra_only, config_file=args.config), sys.stdout, indent=1)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
