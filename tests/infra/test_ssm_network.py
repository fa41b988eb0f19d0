"""A stage whose config names SSM parameters (``{ssm: ...}`` secret references) can fetch them
once deployed, or is refused before anything is deployed.

The functions run in private subnets; their security group sends HTTPS to the stack's own
endpoints only (Secrets Manager, SQS, S3), or anywhere through a NAT gateway. SSM Parameter
Store has no endpoint by default. Before, such a config deployed without a word and every fetch
timed out (``SecretFailures``, unavailable): a provider's passes failed, LDAP logins answered
503, DNS records were never published. docs/deploy.md said to add an SSM endpoint, which the
functions' security group sent nothing to. Now ``CreateSsmEndpoint=true`` makes one behind the
stack's endpoint security group, and a config needing it is refused without it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import boto3
import pytest
from test_dns_network import REQUIRED, _value, refused_deploy, stage_with
from test_dns_network import aws as aws  # the fixture: conftest's moto AWS with the deploy bucket

from infra import deploy, template
from infra.sync_config import STAGES, ssm_references

CONFIG = """\
:dns_configs:
  bind: {dns_class: dynamic-dns, domain: lab.example.net, tsig_key_name: vmpool-key,
         tsig_secret: {ssm: /vmpool/dev/tsig}}
  spare: {dns_class: dynamic-dns, domain: spare.example.net, tsig_key_name: k, tsig_secret: {ssm: /vmpool/dev/spare}}
:providers:
  :dummy: {}
:pools:
  - {name: lab, size: 1, provider: dummy, dns_plugin: bind}
"""

def created(built: dict[str, Any], logical_id: str, given: dict[str, str]) -> bool:
    """Whether the stack creates ``logical_id`` with these parameters."""
    values = {name: str(p.get("Default", "")) for name, p in built["Parameters"].items()} | given
    conditions = dict(built["Conditions"])
    condition = built["Resources"][logical_id].get("Condition")
    if condition is None:
        return True

    def holds(expression: Any) -> Any:
        if isinstance(expression, dict) and list(expression) == ["Fn::And"]:
            return all(holds(item) for item in expression["Fn::And"])
        if isinstance(expression, dict) and list(expression) == ["Condition"]:
            return holds(conditions[expression["Condition"]])
        return _value(expression, values, conditions)

    return bool(holds(conditions[condition]))


def test_only_the_ssm_references_a_function_fetches_are_counted(tmp_path: Path) -> None:
    """The ``spare`` entry's TSIG secret is fetched by nothing (no pool uses it), nor is a
    ``redis`` section's password in AWS (the stack gives Redis's token)."""
    from infra.sync_config import load_config

    path = tmp_path / "vmpool.yaml"
    path.write_text(CONFIG + ":redis:\n  server: r\n  password: {ssm: /vmpool/dev/redis}\n")
    assert ssm_references(load_config(path)) == ["dns_configs.bind.tsig_secret"]


def test_an_ssm_reference_needs_the_ssm_endpoint_or_nat_and_the_endpoint_is_reachable(tmp_path: Path) -> None:
    for infra_only in (False, True):
        built = template.build(stage_with(tmp_path, CONFIG), infra_only=infra_only)
        [broken] = deploy.broken_rules(built, REQUIRED, None)
        assert "SSM secret references (dns_configs.bind.tsig_secret)" in broken
        assert "CreateSsmEndpoint=true" in broken and "CreateVpcEndpoints=false" in broken
        assert not created(built, "SsmEndpoint", REQUIRED)

        with_endpoint = {**REQUIRED, "CreateSsmEndpoint": "true"}
        assert deploy.broken_rules(built, with_endpoint, None) == []
        assert created(built, "SsmEndpoint", with_endpoint)
        endpoint = built["Resources"]["SsmEndpoint"]["Properties"]
        assert endpoint["ServiceName"] == {"Fn::Sub": "com.amazonaws.${AWS::Region}.ssm"}
        assert endpoint["PrivateDnsEnabled"] is True  # the SDK's ordinary ssm.<region> name answers
        # Behind the security group the functions send HTTPS to (their only way out without NAT).
        assert endpoint["SecurityGroupIds"] == [{"Fn::GetAtt": ["EndpointSecurityGroup", "GroupId"]}]
        to_endpoints = built["Resources"]["LambdaToEndpoints"]["Properties"]
        assert to_endpoints["DestinationSecurityGroupId"] == {"Fn::GetAtt": ["EndpointSecurityGroup", "GroupId"]}
        assert (to_endpoints["FromPort"], to_endpoints["ToPort"]) == (443, 443)

        through_nat = {**REQUIRED, "CreateVpcEndpoints": "false", "CreateSsmEndpoint": "true"}
        assert deploy.broken_rules(built, through_nat, None) == []
        assert not created(built, "SsmEndpoint", through_nat)  # NAT: no endpoint at all


def test_a_config_without_ssm_references_needs_no_ssm_endpoint(tmp_path: Path) -> None:
    unused = CONFIG.replace("dns_plugin: bind", "dns_plugin: spare").replace("/vmpool/dev/spare", "unused")
    unused = unused.replace("tsig_secret: {ssm: unused}", "tsig_secret: {secret: vmpool/dev/vsphere, key: tsig}")
    assert "Rules" not in template.build(stage_with(tmp_path, unused))
    built = template.build(STAGES["dev"])
    assert "Rules" not in built and not created(built, "SsmEndpoint", REQUIRED)  # nothing is paid for unasked


def test_make_deploy_refuses_an_unreachable_ssm_reference_before_uploading_anything(
        aws: boto3.Session, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    arguments = refused_deploy(aws, tmp_path, CONFIG, capsys, "CreateSsmEndpoint=true")

    assert deploy.main([*arguments, "CreateSsmEndpoint=true"], session=aws) == 0
    assert "ready for review" in capsys.readouterr().err
