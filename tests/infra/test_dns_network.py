"""A stage whose pools publish DNS records can reach its DNS service once deployed, or is refused
before anything is deployed.

The functions run in private subnets behind one security group that sends HTTPS to vCenter and
the stack's endpoints only. Before, a config with a ``dynamic-dns`` server (RFC 2136 over TCP 53)
or a ``route53`` entry (the Route 53 API, which no endpoint of the stack serves) deployed without
a word, and every VM of those pools stayed pending (``DNS record not created``) until its timeout
destroyed it: the pools never had a ready VM."""

from __future__ import annotations

import dataclasses
import ipaddress
import json
from pathlib import Path
from typing import Any

import boto3
import pytest

from infra import deploy, template
from infra.sync_config import STAGES, Stage

CONFIG = """\
:dns_configs:
  bind: {dns_class: dynamic-dns, domain: lab.example.net, server: 10.9.0.53, tsig_key_name: vmpool-key,
         tsig_secret: {ssm: /vmpool/dev/tsig}}
  aws: {dns_class: route53, domain: vms.example.com, hosted_zone_id: Z0123456789ABCDEFGHIJ}
  dhcp: {dns_class: dynamic-dns, domain: dhcp.example.org}
:providers:
  :dummy: {}
:pools:
  - {name: lab, size: 1, provider: dummy, dns_plugin: bind}
  - {name: cloud, size: 1, provider: dummy, dns_plugin: aws}
  - {name: dhcp, size: 1, provider: dummy, dns_plugin: dhcp}
"""
REQUIRED = {"VpcId": "vpc-0abc", "PrivateSubnetIds": "subnet-1,subnet-2", "VCenterCidr": "10.1.0.0/16"}
BUCKET = "my-deploy-bucket"


def stage_with(tmp_path: Path, config: str) -> Stage:
    path = tmp_path / "vmpool.yaml"
    path.write_text(config)
    return dataclasses.replace(STAGES["dev"], config_file=str(path))


def _value(expression: Any, values: dict[str, str], conditions: dict[str, Any]) -> Any:
    """An intrinsic of the template's security group rules and conditions, for given parameters."""
    if isinstance(expression, dict) and len(expression) == 1:
        (function, argument), = expression.items()
        if function == "Ref":
            return values[argument]
        if function == "Fn::Equals":
            return str(_value(argument[0], values, conditions)) == str(_value(argument[1], values, conditions))
        if function == "Fn::Not":
            return not _value(argument[0], values, conditions)
        if function == "Condition":
            return _value(conditions[argument], values, conditions)
    return expression


def lambda_egress(built: dict[str, Any], given: dict[str, str]) -> list[tuple[int, int, str]]:
    """(from port, to port, CIDR) of every TCP egress rule of the functions' security group the
    stack creates with these parameters."""
    values = {name: str(p.get("Default", "")) for name, p in built["Parameters"].items()} | given
    conditions = built["Conditions"]
    resources = built["Resources"]
    rules = list(resources["LambdaSecurityGroup"]["Properties"]["SecurityGroupEgress"])
    for resource in resources.values():
        if (resource.get("Type") == "AWS::EC2::SecurityGroupEgress"
                and resource["Properties"]["GroupId"] == {"Fn::GetAtt": ["LambdaSecurityGroup", "GroupId"]}
                and ("Condition" not in resource or _value({"Condition": resource["Condition"]}, values, conditions))):
            rules.append(resource["Properties"])
    return [(int(_value(r["FromPort"], values, conditions)), int(_value(r["ToPort"], values, conditions)),
             str(_value(r["CidrIp"], values, conditions))) for r in rules if "CidrIp" in r and r["IpProtocol"] == "tcp"]


def reaches(egress: list[tuple[int, int, str]], address: str, port: int) -> bool:
    return any(low <= port <= high and ipaddress.ip_address(address) in ipaddress.ip_network(cidr)
               for low, high, cidr in egress)


def test_the_functions_reach_a_dynamic_dns_server_and_route53_with_the_parameters_the_docs_give(
        tmp_path: Path) -> None:
    built = template.build(stage_with(tmp_path, CONFIG))
    given = {**REQUIRED, "DnsServerCidr": "10.9.0.0/24", "CreateVpcEndpoints": "false"}
    assert deploy.broken_rules(built, given, None) == []
    egress = lambda_egress(built, given)
    assert reaches(egress, "10.9.0.53", 53)
    assert reaches(egress, "52.94.236.248", 443)  # route53.amazonaws.com, through the NAT gateway
    assert not reaches(lambda_egress(built, REQUIRED), "10.9.0.53", 53)  # nothing is opened unasked


def test_parameters_that_leave_the_dns_service_unreachable_break_the_stacks_rules(tmp_path: Path) -> None:
    built = template.build(stage_with(tmp_path, CONFIG))
    with_ssm = {**REQUIRED, "CreateSsmEndpoint": "true"}  # bind's TSIG secret is an SSM parameter
    broken = deploy.broken_rules(built, with_ssm, None)
    assert len(broken) == 2
    servers, route53 = sorted(broken, key=lambda description: "route53" in description)
    assert "dynamic-dns entries with a server (bind)" in servers and "DnsServerCidr" in servers
    assert "route53 DNS entries (aws)" in route53 and "CreateVpcEndpoints=false" in route53
    # An update: a parameter given before counts (UsePreviousValue), one given now overrides it.
    previous = {"Parameters": [{"ParameterKey": "DnsServerCidr", "ParameterValue": "10.9.0.0/24"},
                               {"ParameterKey": "CreateVpcEndpoints", "ParameterValue": "false"},
                               {"ParameterKey": "CreateSsmEndpoint", "ParameterValue": "true"}]}
    assert deploy.broken_rules(built, {}, previous) == []
    assert len(deploy.broken_rules(built, {"CreateVpcEndpoints": "true"}, previous)) == 1
    # The same for the infra-only stack of the chalice deploy path.
    assert len(deploy.broken_rules(template.build(stage_with(tmp_path, CONFIG), infra_only=True), with_ssm,
                                   None)) == 2


def test_a_config_without_managed_dns_adds_no_rule(tmp_path: Path) -> None:
    """Entries no pool names, and dynamic-dns without a server (the VMs register themselves),
    need nothing of the network: such a stack deploys with the defaults, as before."""
    unused = CONFIG.replace("dns_plugin: bind", "dns_plugin: dhcp").replace("dns_plugin: aws", "dns_plugin: dhcp")
    assert "Rules" not in template.build(stage_with(tmp_path, unused))
    assert "Rules" not in template.build(STAGES["dev"])


@pytest.fixture
def aws(aws: boto3.Session) -> boto3.Session:
    """conftest's moto AWS, with the deploy bucket."""
    aws.client("s3").create_bucket(Bucket=BUCKET)
    return aws


def test_make_deploy_refuses_such_parameters_before_uploading_or_creating_anything(
        aws: boto3.Session, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    arguments = refused_deploy(aws, tmp_path, CONFIG, capsys, "CreateVpcEndpoints=false")
    with pytest.raises(aws.client("cloudformation").exceptions.ClientError, match="does not exist"):
        aws.client("cloudformation").describe_stacks(StackName="vmpool-dev")

    assert deploy.main([*arguments, "CreateVpcEndpoints=false", "DnsServerCidr=10.9.0.0/24"], session=aws) == 0
    assert "ready for review" in capsys.readouterr().err


def refused_deploy(aws: boto3.Session, tmp_path: Path, config: str, capsys: pytest.CaptureFixture[str],
                   naming: str) -> list[str]:
    """The arguments of a ``make deploy`` of ``config``'s infra-only package with the required
    parameters, after checking that it is refused with one line naming ``naming`` and that
    nothing was uploaded."""
    package = tmp_path / "package"
    package.mkdir()
    (package / "sam.json").write_text(json.dumps(template.build(stage_with(tmp_path, config), infra_only=True)))
    (package / "deployment.zip").write_bytes(b"PK\x05\x06" + bytes(18))
    arguments = ["--stage", "dev", "--bucket", BUCKET, "--package", str(package), "--poll", "0.1", "--no-execute",
                 *(f"{k}={v}" for k, v in REQUIRED.items())]

    assert deploy.main(arguments, session=aws) == 1
    error = capsys.readouterr().err
    assert error.startswith("deploy: ") and error.count("\n") == 1 and naming in error
    assert "Contents" not in aws.client("s3").list_objects_v2(Bucket=BUCKET)
    return arguments
