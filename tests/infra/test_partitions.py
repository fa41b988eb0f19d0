"""The packaged stack deploys in every AWS partition (aws, aws-cn, aws-us-gov): each ARN it
builds names the stack's own partition (``${AWS::Partition}``), none is written ``arn:aws:``.

Before, the roles' grants of the config's secrets (``vmpool/<stage>/ldap-*``, ``vsphere-*``), its
SSM parameters and its route53 hosted zones kept the policy files' ``arn:aws:``: deployed in
aws-cn or aws-us-gov they named resources of another partition, and every read of them (each
login, each pass of a vSphere pool) was refused with AccessDenied."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Iterator

import pytest
from cfnlint.api import ManualArgs, lint_file
from packaged import Package, build_package, pools_config

from infra import sync_config
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
