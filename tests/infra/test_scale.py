"""1,000 pools in one stack: the stage packaged with configs of 3, 100 and 1,000 pools gives the
same resources, each template lint-clean and inside CloudFormation's limits.

Before, each pool had its own function, role, log group, rule, permission and two alarms: 67
pools passed the 500-resource limit. The code is packaged once (the session's package); the
100- and 1,000-pool builds reuse Chalice's dependency zip and take seconds."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator

import pytest
from cfnlint.api import ManualArgs, lint_file
from packaged import Package, build_package, pools_config

MAX_RESOURCES = 500
MAX_TEMPLATE_BYTES = 1_000_000  # through S3 (51,200 inline: deploy always uploads it)
MAX_OUTPUTS = 200
MAX_PARAMETERS = 200

SAM_EXPANSION = {"Schedule": 2, "SQS": 1, "Api": 0}
"""Resources the SAM transform adds per function event (a rule and its permission; an event
source mapping; API events are the RestAPI's), before CloudFormation counts."""


def deployed_resource_count(template: dict[str, Any]) -> int:
    """Resources after the SAM transform: Serverless::Api becomes RestApi + Deployment + Stage."""
    count = 0
    for resource in template["Resources"].values():
        count += 1
        if resource["Type"] == "AWS::Serverless::Api":
            count += 2
        if resource["Type"] == "AWS::Serverless::Function":
            for event in resource["Properties"].get("Events", {}).values():
                count += SAM_EXPANSION[event["Type"]]
    return count


@pytest.fixture(scope="module")
def packages(package: Package, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[int, Package]]:
    found = {3: package}
    directory = tmp_path_factory.mktemp("pools")
    generators = []
    for count in (100, 1000):
        config = directory / f"pools-{count}.yaml"
        config.write_text(pools_config(count))
        generator = build_package(config, name=f"-{count}-pools")
        found[count] = next(generator)
        generators.append(generator)
    yield found
    for generator in generators:
        generator.close()


@pytest.mark.parametrize("pools", [3, 100, 1000])
def test_the_stack_is_lint_clean_and_inside_cloudformation_limits(packages: dict[int, Package], pools: int) -> None:
    package = packages[pools]
    matches = lint_file(Path(package.template_path), config=ManualArgs(regions=["us-east-1"]))
    assert [f"{m.rule.id} {m.message}" for m in matches] == []
    template = package.template
    assert deployed_resource_count(template) < MAX_RESOURCES
    assert len(package.template_path.read_bytes()) < MAX_TEMPLATE_BYTES
    assert len(template.get("Outputs", {})) <= MAX_OUTPUTS
    assert len(template.get("Parameters", {})) <= MAX_PARAMETERS


def test_resources_do_not_depend_on_the_pool_count(packages: dict[int, Package]) -> None:
    counts = {pools: deployed_resource_count(p.template) for pools, p in packages.items()}
    assert len(set(counts.values())) == 1, counts
    resources = {pools: json.dumps(p.template["Resources"], sort_keys=True) for pools, p in packages.items()}
    assert resources[3] == resources[100] == resources[1000]
