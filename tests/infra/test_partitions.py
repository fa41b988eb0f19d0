"""The packaged stack deploys in every AWS partition (aws, aws-cn, aws-us-gov): each ARN it
builds names the stack's own partition (``${AWS::Partition}``), none is written ``arn:aws:``.

Before, the roles' grants of the config's secrets (``vmpool/<stage>/ldap-*``, ``vsphere-*``), its
SSM parameters and its route53 hosted zones kept the policy files' ``arn:aws:``: deployed in
aws-cn or aws-us-gov they named resources of another partition, and every read of them (each
login, each pass of a vSphere pool) was refused with AccessDenied.

Nor does it name a service by the ``aws`` partition's domain: ``kms:ViaService`` (the secrets'
customer-managed keys) is ``<service>.<region>.${AWS::URLSuffix}`` (``amazonaws.com.cn`` in
aws-cn), the VPC endpoints' services are named as each partition names them, and ``make deploy``
gives CloudFormation the template's URL in the region's domain."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from typing import Any, Iterator

import pytest
from cfnlint.api import ManualArgs, lint_file
from packaged import Package, build_package, pools_config

from infra import deploy, sync_config
from infra.sync_config import STAGES

PARTITION_REGIONS = ["us-east-1", "cn-north-1", "us-gov-west-1"]
"""One region of each partition, for cfn-lint."""


@pytest.fixture(scope="module", params=[1, 1000])
def packaged(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Package]:
    config = tmp_path_factory.mktemp("partition") / f"pools-{request.param}.yaml"
    config.write_text(pools_config(request.param))
    yield from build_package(config, name=f"-partition-{request.param}")


def test_no_arn_of_the_stack_names_the_aws_partition(packaged: Package) -> None:
    text = packaged.template_path.read_text()
    assert f"arn:${{AWS::Partition}}:ssm:*:*:parameter/{STAGES[packaged.stage].secret_prefix}*" in text
    assert "arn:aws:" not in text


def test_the_hosted_zones_a_stack_grants_are_in_its_partition(tmp_path: Path) -> None:
    """The route53 zones come from the stage's own config file (not a packaged one): a stage
    whose file names one grants it to the reconcile role, in the stack's partition."""
    config = tmp_path / "vmpool.yaml"
    config.write_text("dns_configs:\n  r53: {dns_class: route53, domain: vms.example.com, hosted_zone_id: Z0123}\n"
                      "pools:\n  - {name: p, size: 1, provider: dummy, dns_plugin: r53}\n")
    stage = dataclasses.replace(STAGES["dev"], config_file=str(config))
    granted = json.dumps(sync_config.stack_policy(stage, sync_config.policy(stage, "reconcile")))
    assert '"arn:${AWS::Partition}:route53:::hostedzone/Z0123"' in granted
    assert "arn:aws:" not in granted


def test_the_stack_is_lint_clean_in_each_partition(packaged: Package) -> None:
    matches = lint_file(Path(packaged.template_path), config=ManualArgs(regions=PARTITION_REGIONS))
    assert [f"{m.rule.id} {m.message}" for m in matches] == []


GLOBAL_SERVICE_PRINCIPALS = {"lambda.amazonaws.com", "apigateway.amazonaws.com"}
"""Service principals are ``<service>.amazonaws.com`` in every partition (aws-cn's included)."""


def test_no_service_of_the_stack_is_named_in_the_aws_partitions_domain(packaged: Package) -> None:
    """Each ``amazonaws.com`` in the packaged template is a service principal (the same in every
    partition); a service's host name takes the stack's domain, ``${AWS::URLSuffix}``."""
    text = packaged.template_path.read_text()
    named = set(re.findall(r'[\w.${}:-]*amazonaws\.com[\w.${}:-]*', text))
    assert named == GLOBAL_SERVICE_PRINCIPALS


def _in_stack(value: Any, template: dict[str, Any], partition: str, region: str) -> Any:
    """``value`` as CloudFormation resolves it in a stack of ``partition`` and ``region``
    (Ref of a pseudo parameter, Fn::Equals, Fn::If on a condition, Fn::Sub of them)."""
    pseudo = {"AWS::Partition": partition, "AWS::Region": region,
              "AWS::URLSuffix": sync_config.partition_of_region(region).url_suffix}
    if isinstance(value, list):
        return [_in_stack(item, template, partition, region) for item in value]
    if not isinstance(value, dict):
        return value
    (function, argument), = value.items()
    if function == "Ref":
        return pseudo[argument]
    if function == "Fn::Equals":
        left, right = _in_stack(argument, template, partition, region)
        return left == right
    if function == "Fn::If":
        condition, then, otherwise = argument
        held = _in_stack(template["Conditions"][condition], template, partition, region)
        return _in_stack(then if held else otherwise, template, partition, region)
    if function == "Fn::Sub":
        return re.sub(r"\$\{(AWS::\w+)\}", lambda match: pseudo[match[1]], argument)
    raise AssertionError(f"not resolved here: {function}")


ENDPOINT_SERVICES = {
    # As DescribeVpcEndpointServices lists the interface endpoints' services in each region.
    "us-east-1": {"SqsEndpoint": "com.amazonaws.us-east-1.sqs", "S3Endpoint": "com.amazonaws.us-east-1.s3",
                  "SsmEndpoint": "com.amazonaws.us-east-1.ssm",
                  "SecretsManagerEndpoint": "com.amazonaws.us-east-1.secretsmanager"},
    "cn-north-1": {"SqsEndpoint": "cn.com.amazonaws.cn-north-1.sqs", "S3Endpoint": "cn.com.amazonaws.cn-north-1.s3",
                   "SsmEndpoint": "com.amazonaws.cn-north-1.ssm",
                   "SecretsManagerEndpoint": "com.amazonaws.cn-north-1.secretsmanager"},
    "cn-northwest-1": {"SqsEndpoint": "cn.com.amazonaws.cn-northwest-1.sqs",
                       "S3Endpoint": "cn.com.amazonaws.cn-northwest-1.s3",
                       "SsmEndpoint": "com.amazonaws.cn-northwest-1.ssm",
                       "SecretsManagerEndpoint": "com.amazonaws.cn-northwest-1.secretsmanager"},
    "us-gov-west-1": {"SqsEndpoint": "com.amazonaws.us-gov-west-1.sqs", "S3Endpoint": "com.amazonaws.us-gov-west-1.s3",
                      "SsmEndpoint": "com.amazonaws.us-gov-west-1.ssm",
                      "SecretsManagerEndpoint": "com.amazonaws.us-gov-west-1.secretsmanager"},
}


@pytest.mark.parametrize("region", sorted(ENDPOINT_SERVICES))
def test_the_vpc_endpoints_name_their_services_as_the_stacks_partition_does(packaged: Package, region: str) -> None:
    """In aws-cn the SQS and S3 interface endpoints' services are ``cn.com.amazonaws.<region>.*``
    (``com.amazonaws.<region>.s3`` there is S3's gateway endpoint). Before, the stack asked for
    ``com.amazonaws.<region>.sqs`` and ``.s3`` everywhere: in aws-cn the deploy failed creating
    them (no such service, or not an interface one)."""
    partition = sync_config.partition_of_region(region).name
    named = {name: _in_stack(packaged.resources[name]["Properties"]["ServiceName"], packaged.template, partition,
                             region) for name in ENDPOINT_SERVICES[region]}
    assert named == ENDPOINT_SERVICES[region]


CN_KEY = "arn:aws-cn:kms:cn-north-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab"


def test_secrets_kms_keys_are_used_through_the_partitions_ssm_and_secrets_manager(packaged: Package) -> None:
    """``kms:ViaService`` names SSM and Secrets Manager as KMS sees them call: in aws-cn
    ``ssm.cn-north-1.amazonaws.com.cn``. Before, both deploy paths wrote ``amazonaws.com``: in
    aws-cn the condition never held, and every read of a secret or SecureString parameter under
    a customer-managed key was refused (AccessDeniedException: each login, each vSphere pass)."""
    expected = {"ssm.cn-north-1.amazonaws.com.cn", "secretsmanager.cn-north-1.amazonaws.com.cn"}
    (in_stack,) = packaged.resources["SecretsKmsDecryptPolicy"]["Properties"]["PolicyDocument"]["Statement"]
    assert set(_in_stack(in_stack["Condition"]["StringEquals"]["kms:ViaService"], packaged.template, "aws-cn",
                         "cn-north-1")) == expected
    for role in sync_config.ROLES:  # the chalice deploy path's policy files, from the keys' ARNs
        (statement,) = [s for s in sync_config.policy(STAGES[packaged.stage], role, [CN_KEY])["Statement"]
                        if s["Action"] == "kms:Decrypt"]
        assert set(statement["Condition"]["StringEquals"]["kms:ViaService"]) == expected
        assert statement["Resource"] == [CN_KEY]


class _S3:
    def __init__(self, region: str) -> None:
        self.meta = type("Meta", (), {"region_name": region})()


@pytest.mark.parametrize(("region", "host"), [("us-east-1", "s3.amazonaws.com"),
                                              ("eu-west-1", "s3.eu-west-1.amazonaws.com"),
                                              ("cn-north-1", "s3.cn-north-1.amazonaws.com.cn"),
                                              ("us-gov-west-1", "s3.us-gov-west-1.amazonaws.com")])
def test_make_deploy_gives_cloudformation_the_template_in_the_regions_domain(region: str, host: str) -> None:
    """Before, ``make deploy`` in aws-cn named ``<bucket>.s3.cn-north-1.amazonaws.com``, a host of
    another partition: CloudFormation could not read the template and the change set failed."""
    assert deploy.template_url(_S3(region), "vmpool-deploy", "vmpool/dev/t.json") == (
        f"https://vmpool-deploy.{host}/vmpool/dev/t.json")


def _wired(url: str) -> dict[str, Any]:
    """A stage's stack settings (``.chalice/stack-<stage>.json``) naming its reconcile queue."""
    return {"environment_variables": {"VMPOOL_RECONCILE_QUEUE_URL": url}}


@pytest.mark.parametrize(("url", "partition"), [
    ("https://sqs.eu-west-1.amazonaws.com/123456789012/vmpool-dev-reconcile", "aws"),
    ("https://sqs.cn-north-1.amazonaws.com.cn/123456789012/vmpool-dev-reconcile", "aws-cn"),
    ("https://sqs.us-gov-west-1.amazonaws.com/123456789012/vmpool-dev-reconcile", "aws-us-gov")])
def test_a_queue_url_in_its_regions_domain_places_the_stack_in_that_partition(url: str, partition: str) -> None:
    place = sync_config.stack_place(STAGES["dev"], _wired(url))
    assert place is not None and place.partition == partition


@pytest.mark.parametrize("url", ["https://sqs.eu-west-1.amazonaws.com.cn/123456789012/vmpool-dev-reconcile",
                                 "https://sqs.cn-north-1.amazonaws.com/123456789012/vmpool-dev-reconcile"])
def test_a_queue_url_in_another_partitions_domain_is_refused(url: str) -> None:
    """SQS's host in a region is in its partition's domain only. Before, ``.amazonaws.com.cn``
    passed for any region and ``.amazonaws.com`` for aws-cn's: the stage was wired to a URL no
    queue has (every tick's sends failing), with policies naming the region's partition."""
    with pytest.raises(sync_config.BadStackSettings, match=r"is in aws(-cn)?, whose queues are https://sqs"):
        sync_config.stack_place(STAGES["dev"], _wired(url))


CN_STACK = "https://sqs.cn-north-1.amazonaws.com.cn/123456789012/vmpool-dev-reconcile"
KEYS_ELSEWHERE = ["arn:aws:kms:cn-north-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab",  # aws, not aws-cn
                  "arn:aws-cn:kms:cn-northwest-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab"]


@pytest.mark.parametrize("key", KEYS_ELSEWHERE)
def test_the_chalice_deploy_path_refuses_a_kms_key_of_another_partition_or_region(key: str) -> None:
    """The functions ask SSM and Secrets Manager of their own region, which use keys of that
    region only: a key of another partition or region (a copied ARN, a mistyped region) was
    granted to no effect, and each read of the secrets it was meant for refused
    (AccessDeniedException) at the first login or vSphere pass. Writing the stage's policy files
    (``python -m infra.stage_settings``, ``sync_config``) now refuses it, saying where each is."""
    place = sync_config.stack_place(STAGES["dev"], _wired(CN_STACK))
    with pytest.raises(sync_config.BadKmsKey, match="the stack is in cn-north-1 \\(aws-cn\\)"):
        sync_config.policy(STAGES["dev"], "api", [key], zones=[], place=place)
    granted = sync_config.policy(STAGES["dev"], "api", [CN_KEY], zones=[], place=place)
    assert [s["Resource"] for s in granted["Statement"] if s["Action"] == "kms:Decrypt"] == [[CN_KEY]]


def test_make_deploy_refuses_a_kms_key_of_another_region_before_anything_is_uploaded(
        aws: Any, capsys: pytest.CaptureFixture[str]) -> None:
    """CloudFormation checks each ``SecretsKmsKeyArns`` member against one pattern, the same in
    every region and partition: ``make deploy`` refuses a key of another, in one line."""
    aws.client("s3").create_bucket(Bucket="deploy-bucket")
    key = "arn:aws:kms:eu-west-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab"  # the stack: us-east-1
    code = deploy.main(["--stage", "dev", "--bucket", "deploy-bucket", "--infra-only", "--no-execute", "--poll", "0.1",
                        "VpcId=vpc-0abc", "PrivateSubnetIds=subnet-0a,subnet-0b", "VCenterCidr=10.1.0.0/16",
                        f"SecretsKmsKeyArns={key}"], session=aws)
    assert code == 1
    assert capsys.readouterr().err.startswith(f"deploy: SecretsKmsKeyArns: {key!r} is a key of eu-west-1 (aws); the "
                                              "stack is in us-east-1 (aws)")
    assert aws.client("s3").list_objects_v2(Bucket="deploy-bucket").get("KeyCount") == 0
