"""The `chalice deploy` path against a moto server: `make infra-deploy` creates the infrastructure
stack (no functions, no API), its settings are written into the Chalice stage, and
infra/chalice_deploy.sh deploys the three functions and the API wired to that stack.

Where moto falls short (docs/deploy.md lists it): it cannot compute the stack's outputs (it has
no ElastiCache in CloudFormation, and one output it cannot resolve drops them all), so the test
writes the settings from the stack's resources instead of from ``describe-stacks``; and its
ImportRestApi fails on the Swagger 2.0 document Chalice sends (it wants OpenAPI 3 and an
info.description), so `chalice deploy` stops
at the API, after the roles and the three functions (the schedule and the queue mapping
come after the API in Chalice's order)."""

from __future__ import annotations

import dataclasses
import fnmatch
import json
import os
import subprocess
from pathlib import Path
from typing import Iterator

import boto3
import pytest
from packaged import ROOT, Package

from infra import deploy, stage_settings, sync_config

STAGE = sync_config.STAGES["dev"]


@pytest.fixture
def restore_chalice_config() -> Iterator[None]:
    """The test writes the dev stage's stack settings; the repository's files come back after."""
    saved = {path: path.read_text() for path in (ROOT / ".chalice").glob("*.json")}
    deployed = ROOT / ".chalice" / "deployed" / "dev.json"
    yield
    sync_config.stack_settings_file(STAGE).unlink(missing_ok=True)
    deployed.unlink(missing_ok=True)
    for path, text in saved.items():
        path.write_text(text)


def test_infra_stack_then_chalice_deploy(aws: boto3.Session, package: Package, restore_chalice_config: None,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    ec2 = aws.client("ec2")
    vpc = ec2.create_vpc(CidrBlock="10.9.0.0/16")["Vpc"]["VpcId"]
    subnets = [ec2.create_subnet(VpcId=vpc, CidrBlock=f"10.9.{n}.0/24", AvailabilityZone=f"us-east-1{zone}")
               ["Subnet"]["SubnetId"] for n, zone in ((1, "a"), (2, "b"))]
    aws.client("s3").create_bucket(Bucket="deploy-bucket")

    code = deploy.main(["--stage", "dev", "--bucket", "deploy-bucket", "--infra-only", "--poll", "0.1",
                        f"VpcId={vpc}", f"PrivateSubnetIds={','.join(subnets)}", "VCenterCidr=10.1.0.0/16"],
                       session=aws)
    assert code == 0, capsys.readouterr().err
    cloudformation = aws.client("cloudformation")
    stack = cloudformation.describe_stacks(StackName="vmpool-dev")["Stacks"][0]
    assert stack["StackStatus"] == "CREATE_COMPLETE"
    resources = {r["LogicalResourceId"]: r["PhysicalResourceId"]
                 for r in cloudformation.list_stack_resources(StackName="vmpool-dev")["StackResourceSummaries"]}
    assert not any(kind.startswith("AWS::Serverless") or kind == "AWS::Lambda::Function" for kind in
                   [r["ResourceType"] for r in cloudformation.list_stack_resources(
                       StackName="vmpool-dev")["StackResourceSummaries"]])

    # What `python -m infra.stage_settings` reads from describe-stacks, taken from the resources.
    outputs = {"RedisUrl": "rediss://vmpool-dev.example:6379/0", "RedisAuthSecretArn": "vmpool/dev/redis-auth",
               "ReconcileQueueUrl": resources["ReconcileQueue"], "ConfigBucket": resources["ConfigBucket"],
               "PrivateSubnetIds": ",".join(subnets), "LambdaSecurityGroupId": resources["LambdaSecurityGroup"]}
    stage_settings.write_settings(STAGE, stage_settings.settings_from_outputs(outputs))
    config = json.loads((ROOT / ".chalice" / "config.json").read_text())["stages"]["dev"]
    assert config["subnet_ids"] == subnets and config["security_group_ids"] == [resources["LambdaSecurityGroup"]]

    done = subprocess.run([str(ROOT / "infra" / "chalice_deploy.sh"), "dev"], cwd=ROOT, capture_output=True,
                          text=True, timeout=600, env={**os.environ, "KEEP_STAGE_SETTINGS": "1"})
    assert done.returncode != 0 and "ImportRestApi operation" in done.stderr  # moto cannot import Swagger 2.0

    lambda_ = aws.client("lambda")
    names = sorted(f["FunctionName"] for f in lambda_.list_functions()["Functions"])
    assert names == ["vmpool-dev", "vmpool-dev-reconcile", "vmpool-dev-tick"]  # Chalice: the API is the app
    reconcile = lambda_.get_function(FunctionName="vmpool-dev-reconcile")
    assert reconcile["Configuration"]["VpcConfig"]["SubnetIds"] == subnets
    assert reconcile["Concurrency"]["ReservedConcurrentExecutions"] == STAGE.reconcile_reserved_concurrency
    env = reconcile["Configuration"]["Environment"]["Variables"]
    assert env["VMPOOL_RECONCILE_QUEUE_URL"] == resources["ReconcileQueue"]
    assert env["VMPOOL_CONFIG_BUCKET"] == resources["ConfigBucket"]
    assert env["POWERTOOLS_METRICS_NAMESPACE"] == "vmpool/dev"
    # Chalice creates the queue mapping after the API, so here it is made as Chalice would make it.
    queue_arn = aws.client("sqs").get_queue_attributes(QueueUrl=resources["ReconcileQueue"],
                                                       AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    lambda_.create_event_source_mapping(EventSourceArn=queue_arn, FunctionName="vmpool-dev-reconcile", BatchSize=10)
    stage_settings.report_batch_failures(aws, STAGE)  # the --finish step Chalice cannot do
    (mapping,) = lambda_.list_event_source_mappings(FunctionName="vmpool-dev-reconcile")["EventSourceMappings"]
    assert mapping["FunctionResponseTypes"] == ["ReportBatchItemFailures"]
    # --finish: a failed tick is not retried by Lambda (its default: twice), as in the full stack.
    stage_settings.no_tick_retries(aws, STAGE)
    assert lambda_.get_function_event_invoke_config(FunctionName="vmpool-dev-tick")["MaximumRetryAttempts"] == 0

    # --finish: each function writes JSON lines into the group Chalice made for it with the
    # stage's retention, which its role may write to. The API function (``vmpool-dev``) wrote to
    # /aws/lambda/vmpool-dev, which its role may not create nor write to, and Chalice's group for
    # it (vmpool-dev-api_handler) stayed empty. (moto keeps no LoggingConfig: the calls are read.)
    told = _LoggingConfigs(aws)
    stage_settings.log_into_chalices_groups(told, STAGE)
    retention = {group["logGroupName"]: group.get("retentionInDays")
                 for group in aws.client("logs").describe_log_groups(logGroupNamePrefix="/aws/lambda/")["logGroups"]}
    assert sorted(told.configs) == names
    account = aws.client("sts").get_caller_identity()["Account"]
    for function, config in told.configs.items():
        assert (config["LogFormat"], config["SystemLogLevel"], config["ApplicationLogLevel"]) == (
            "JSON", "WARN", STAGE.log_level), function
        assert retention.get(config["LogGroup"]) == STAGE.log_retention_days, function
        role = {"vmpool-dev": "api", "vmpool-dev-tick": "tick", "vmpool-dev-reconcile": "reconcile"}[function]
        stream = f"arn:aws:logs:us-east-1:{account}:log-group:{config['LogGroup']}:log-stream:x"
        assert _allows(role, "logs:PutLogEvents", stream), function
        # Chalice made the group (before the function); a role that could make one let Lambda
        # make a deleted group again without the retention.
        assert not _allows(role, "logs:CreateLogGroup", stream.removesuffix(":log-stream:x")), function


class _LoggingConfigs:
    """conftest's moto AWS whose Lambda records the ``LoggingConfig`` each function is given
    (moto takes the parameter and keeps nothing of it)."""

    def __init__(self, aws: boto3.Session) -> None:
        self.aws, self.configs = aws, {}

    def client(self, name: str, **options: object) -> object:
        client = self.aws.client(name, **options)  # type: ignore[call-overload]
        if name == "lambda":
            update = client.update_function_configuration

            def recorded(**kwargs: object) -> object:
                self.configs[kwargs["FunctionName"]] = kwargs["LoggingConfig"]
                return update(**kwargs)

            client.update_function_configuration = recorded
        return client


KMS_KEYS = ["arn:aws:kms:eu-west-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab",
            "arn:aws:kms:eu-west-1:123456789012:alias/vmpool-secrets"]
STACK_OUTPUTS = {"RedisUrl": "rediss://vmpool-dev.example:6379/0", "RedisAuthSecretArn": "vmpool/dev/redis-auth",
                 "ReconcileQueueUrl": "https://sqs.eu-west-1.amazonaws.com/123456789012/vmpool-dev-reconcile",
                 "ConfigBucket": "vmpool-dev-config-123456789012-eu-west-1", "PrivateSubnetIds": "subnet-1,subnet-2",
                 "LambdaSecurityGroupId": "sg-1"}


def _kms_statements(role: str) -> list[dict[str, object]]:
    document = json.loads((ROOT / ".chalice" / sync_config.policy_file(STAGE, role)).read_text())
    return [s for s in document["Statement"] if s["Action"] == "kms:Decrypt"]


def test_chalice_deploy_roles_decrypt_with_the_infra_stacks_kms_keys(restore_chalice_config: None) -> None:
    """The infrastructure stack's ``SecretsKmsKeyArns`` reach the ``chalice deploy`` path's policy
    files: every role gets the full stack's statement (``kms:Decrypt`` on those keys, through SSM or
    Secrets Manager of their region only). Before, the infra-only stack dropped the parameter (its
    condition unused) and docs/deploy.md said to add the statement to .chalice/policy-*.json by
    hand: a stage deployed this way read no secret under a customer-managed key (AccessDenied)."""
    from infra import template

    infra = template.build(STAGE, infra_only=True)
    assert infra["Outputs"]["SecretsKmsKeyArns"] == {
        "Condition": "HasSecretsKmsKeys", "Value": {"Fn::Join": [",", {"Ref": "SecretsKmsKeyArns"}]}}

    stage_settings.write_settings(STAGE, stage_settings.settings_from_outputs(
        {**STACK_OUTPUTS, "SecretsKmsKeyArns": ",".join(reversed(KMS_KEYS))}))
    (in_stack,) = template.build(STAGE)["Resources"]["SecretsKmsDecryptPolicy"]["Properties"]["PolicyDocument"][
        "Statement"]
    resolved = json.loads(json.dumps(in_stack).replace("${AWS::Region}", "eu-west-1")
                          .replace("${AWS::URLSuffix}", "amazonaws.com"))
    resolved["Resource"] = sorted(KMS_KEYS)
    resolved["Condition"]["StringEquals"]["kms:ViaService"] = [
        service["Fn::Sub"] for service in resolved["Condition"]["StringEquals"]["kms:ViaService"]]
    for role in sync_config.ROLES:
        assert _kms_statements(role) == [resolved], role
    assert resolved["Condition"] == {"StringEquals": {"kms:ViaService": [
        "ssm.eu-west-1.amazonaws.com", "secretsmanager.eu-west-1.amazonaws.com"]}}
    assert sync_config.main(["--check"]) == 0

    stage_settings.write_settings(STAGE, stage_settings.settings_from_outputs(STACK_OUTPUTS))  # no keys
    assert all(_kms_statements(role) == [] for role in sync_config.ROLES)
    with pytest.raises(SystemExit, match="not a KMS key ARN"):
        stage_settings.settings_from_outputs({**STACK_OUTPUTS, "SecretsKmsKeyArns": "my-key"})


def test_stage_settings_that_would_take_a_policy_past_iams_limit_stop_the_chalice_deploy(
        restore_chalice_config: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """``infra/stage_settings.py`` wrote the stack's settings and ignored the policy files' rewrite
    failing (a policy past IAM's 10,240 characters): it said ``wrote ...`` and exited 0, so
    infra/chalice_deploy.sh went on to ``chalice deploy`` the stage's previous config.json and
    policy files (no subnets, no stack settings, no kms:Decrypt). Now it stops, nothing changed."""
    zones = "\n".join(f"  z{n}: {{dns_class: route53, domain: z{n}.example.com, hosted_zone_id: Z{n:020d}}}"
                      for n in range(200))
    config = tmp_path / "vmpool.yaml"
    config.write_text(f"dns_configs:\n{zones}\npools:\n  - {{name: p, size: 1, provider: dummy}}\n")
    monkeypatch.setitem(sync_config.STAGES, "dev", dataclasses.replace(STAGE, config_file=str(config)))
    before = {path: path.read_text() for path in (ROOT / ".chalice").glob("*.json")}
    with pytest.raises(SystemExit, match="not updated for stage dev; nothing deployed"):
        stage_settings.write_settings(STAGE, stage_settings.settings_from_outputs(STACK_OUTPUTS))
    assert "IAM takes at most 10240" in capsys.readouterr().err
    assert {path: path.read_text() for path in (ROOT / ".chalice").glob("*.json")} == before
    assert not sync_config.stack_settings_file(STAGE).exists()


def test_chalice_deploy_functions_get_the_replicas_the_infra_stack_was_given(restore_chalice_config: None) -> None:
    """The infra-only stack outputs ``RedisMinReplicaAcks`` only when it was given one, and the
    ``chalice deploy`` path's functions then carry it (``VMPOOL_REDIS_MIN_REPLICA_ACKS``), as the
    full stack's do; not given, the variable is absent and the config decides."""
    from infra import template

    assert template.build(STAGE, infra_only=True)["Outputs"]["RedisMinReplicaAcks"] == {
        "Condition": "HasRedisMinReplicaAcks", "Value": {"Ref": "RedisMinReplicaAcks"}}

    def environment() -> dict[str, str]:
        config = json.loads((ROOT / ".chalice" / "config.json").read_text())
        return dict(config["stages"][STAGE.name]["environment_variables"])

    stage_settings.write_settings(STAGE, stage_settings.settings_from_outputs({**STACK_OUTPUTS,
                                                                              "RedisMinReplicaAcks": "0"}))
    assert environment()["VMPOOL_REDIS_MIN_REPLICA_ACKS"] == "0"
    stage_settings.write_settings(STAGE, stage_settings.settings_from_outputs(STACK_OUTPUTS))
    assert "VMPOOL_REDIS_MIN_REPLICA_ACKS" not in environment()


def _granted(role: str, action: str) -> list[str]:
    document = json.loads((ROOT / ".chalice" / sync_config.policy_file(STAGE, role)).read_text())
    return [resource for statement in document["Statement"] if action in statement["Action"]
            for resource in (statement["Resource"] if isinstance(statement["Resource"], list)
                             else [statement["Resource"]])]


def _allows(role: str, action: str, arn: str) -> bool:
    return any(fnmatch.fnmatchcase(arn, pattern.replace("?", "[!/]")) for pattern in _granted(role, action))


@pytest.mark.parametrize(("region", "partition", "suffix"), [("eu-west-1", "aws", ""), ("cn-north-1", "aws-cn", ".cn")])
def test_chalice_deploy_roles_reach_only_their_own_stacks_resources(restore_chalice_config: None, region: str,
                                                                    partition: str, suffix: str) -> None:
    """The ``chalice deploy`` path's roles had the policy files' ARNs, any region and account
    (``arn:aws:sqs:*:*:vmpool-dev-reconcile``), where the full stack's are exact: a dev stage's
    functions could receive and delete the reconcile messages, read the config and the Redis AUTH
    token of the account's dev stage in any other region; and in aws-cn none of them named
    anything. Wired to its infrastructure stack, the stage's files grant the full stack's policy
    resolved for that stack: its queue, bucket, AUTH secret and log groups, in its partition."""
    account, other_region = "123456789012", "us-east-1" if partition == "aws" else "cn-northwest-1"
    stage_settings.write_settings(STAGE, stage_settings.settings_from_outputs({
        **STACK_OUTPUTS, "ReconcileQueueUrl": f"https://sqs.{region}.amazonaws.com{suffix}/{account}/vmpool-dev-reconcile",
        "ConfigBucket": f"vmpool-dev-config-{account}-{region}"}))

    def arns(where: str) -> dict[str, str]:
        return {"queue": f"arn:{partition}:sqs:{where}:{account}:vmpool-dev-reconcile",
                "bucket": f"arn:{partition}:s3:::vmpool-dev-config-{account}-{where}",
                "config": f"arn:{partition}:s3:::vmpool-dev-config-{account}-{where}/config/vmpool.json",
                "token": f"arn:{partition}:secretsmanager:{where}:{account}:secret:vmpool/dev/redis-auth-AbCdEf",
                "logs": f"arn:{partition}:logs:{where}:{account}:log-group:/aws/lambda/vmpool-dev-tick:log-stream:x"}

    for where, granted in ((region, True), (other_region, False)):
        arn = arns(where)
        for role in sync_config.ROLES:
            assert _allows(role, "sqs:SendMessage", arn["queue"]) is granted, (role, where)
            assert _allows(role, "s3:ListBucket", arn["bucket"]) is granted, (role, where)
            assert _allows(role, "s3:GetObject", arn["config"]) is granted, (role, where)
            assert _allows(role, "secretsmanager:GetSecretValue", arn["token"]) is granted, (role, where)
            assert _allows(role, "logs:PutLogEvents", arn["logs"]) is granted, (role, where)
        assert _allows("reconcile", "sqs:DeleteMessage", arn["queue"]) is granted, where
    for role in sync_config.ROLES:
        text = (ROOT / ".chalice" / sync_config.policy_file(STAGE, role)).read_text()
        assert "arn:aws:" not in text if partition != "aws" else f"arn:{partition}:" in text
    assert sync_config.main(["--check"]) == 0

    before = {path: path.read_text() for path in (ROOT / ".chalice").glob("*.json")}
    with pytest.raises(SystemExit, match="nothing deployed"):
        stage_settings.write_settings(STAGE, stage_settings.settings_from_outputs(
            {**STACK_OUTPUTS, "ReconcileQueueUrl": "vmpool-dev-reconcile"}))
    assert {path: path.read_text() for path in (ROOT / ".chalice").glob("*.json")} == before
