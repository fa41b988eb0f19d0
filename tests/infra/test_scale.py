"""1,000 pools in one stack: the stage packaged with configs of 3, 100, 1,000, 3,000 and 10,000 pools
(the config's maximum; vmpooler.yaml's spelling) gives the same resources, each template lint-clean
and inside CloudFormation's limits, and a deployment zip that carries those pools inside Lambda's.

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

from chalicelib import config as config_module
from chalicelib.config import MAX_POOLS
from infra.sync_config import STAGES

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
    for count in (100, 1000, 3000, MAX_POOLS):
        config = directory / f"pools-{count}.yaml"
        config.write_text(pools_config(count))
        generator = build_package(config, name=f"-{count}-pools")
        found[count] = next(generator)
        generators.append(generator)
    yield found
    for generator in generators:
        generator.close()


@pytest.mark.parametrize("pools", [3, 100, 1000, 3000, MAX_POOLS])
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
    assert resources[3] == resources[100] == resources[1000] == resources[3000] == resources[MAX_POOLS]


MAX_RULES_PER_BUS = 300
MAX_API_RESOURCES = 300
"""API Gateway's resources (path segments) per REST API."""
MAX_ENVIRONMENT_BYTES = 4 * 1024
RESOLVED_BYTES = 200
"""Room for what an intrinsic function resolves to in AWS (an ARN, a queue URL, the Redis URL)."""


@pytest.mark.parametrize("pools", [1000, 3000, MAX_POOLS])
def test_per_resource_limits_hold_whatever_the_pools(packages: dict[int, Package], pools: int) -> None:
    """One schedule rule, each role's inline policy within IAM's 10,240 characters, each
    function's environment within Lambda's 4 KB (values the stack fills in counted generously),
    the API's resources within API Gateway's 300 (94: none per pool)."""
    package = packages[pools]
    functions = package.of_type("AWS::Serverless::Function")
    events = [e for f in functions.values() for e in f["Properties"].get("Events", {}).values()]
    assert sum(1 for e in events if e["Type"] == "Schedule") == 1 < MAX_RULES_PER_BUS
    for name, role in package.of_type("AWS::IAM::Role").items():
        documents = [p["PolicyDocument"] for p in role["Properties"]["Policies"]]
        assert sum(len(json.dumps(d, separators=(",", ":"))) for d in documents) < 10_240, name
    shared = package.template.get("Globals", {}).get("Function", {}).get("Environment", {}).get("Variables", {})
    for name, function in functions.items():
        variables = {**shared, **function["Properties"].get("Environment", {}).get("Variables", {})}
        size = sum(len(k) + (len(v) if isinstance(v, str) else RESOLVED_BYTES) for k, v in variables.items())
        assert size < MAX_ENVIRONMENT_BYTES, (name, size)
    paths = package.resources["RestAPI"]["Properties"]["DefinitionBody"]["paths"]
    segments = [path.strip("/").split("/") for path in paths]
    resources = {"/".join(parts[:end]) for parts in segments for end in range(len(parts) + 1)}
    assert len(resources) < MAX_API_RESOURCES


MAX_ZIP_BYTES = 50 * 1024 * 1024
"""Lambda's limit on a zip uploaded directly (`chalice deploy`); through S3 only the unzipped size counts."""
MAX_UNZIPPED_BYTES = 250 * 1024 * 1024
MAX_DASHBOARD_WIDGETS = 500
MAX_METRICS_PER_WIDGET = 500


@pytest.mark.parametrize("pools", [1000, 3000, MAX_POOLS])
def test_the_zip_carries_the_pools_it_was_packaged_with_inside_lambdas_limits(packages: dict[int, Package],
                                                                              pools: int) -> None:
    """``VMPOOL_CONFIG_FILE=my.yaml make package`` packages my.yaml: the functions start with its
    pools (until a push replaces them). Before, the given file was validated and then left out:
    the zip carried the demo's 3 pools, and the scale builds never had their pools in the zip."""
    package = packages[pools]
    member = STAGES[package.stage].config_file
    packaged = config_module.from_text(package.zip.read(member).decode(), member)
    assert len(packaged.pools) == pools
    assert packaged.pools[1].alias == ("os-1", "group-1") and packaged.pools[1].size == 2
    assert package.template_path.with_name("deployment.zip").stat().st_size < MAX_ZIP_BYTES
    assert sum(info.file_size for info in package.zip.infolist()) < MAX_UNZIPPED_BYTES


def test_dashboard_and_alarms_do_not_grow_with_the_pools(packages: dict[int, Package]) -> None:
    """One dashboard inside CloudWatch's 500 widgets, each graph inside its 500 metrics; the
    same alarms whatever the pools (per-pool graphs are Metrics Insights queries, not a series
    per pool)."""
    bodies = {pools: json.dumps(p.resources["Dashboard"], sort_keys=True) for pools, p in packages.items()}
    assert len(set(bodies.values())) == 1
    alarms = {pools: sorted(p.of_type("AWS::CloudWatch::Alarm")) for pools, p in packages.items()}
    assert len({tuple(names) for names in alarms.values()}) == 1
    body = json.loads(packages[MAX_POOLS].resources["Dashboard"]["Properties"]["DashboardBody"]["Fn::Sub"])
    assert len(body["widgets"]) <= MAX_DASHBOARD_WIDGETS
    for widget in body["widgets"]:
        assert len(widget["properties"].get("metrics", [])) <= MAX_METRICS_PER_WIDGET
