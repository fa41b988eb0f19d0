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

import boto3
import pytest
from cfnlint.api import ManualArgs, lint_file
from packaged import Package, build_package, operator_config, pools_config

from chalicelib import config as config_module
from chalicelib.config import MAX_POOLS
from infra import deploy
from infra import template as template_module
from infra.sync_config import STAGES
from tests.support import doc_prose

MAX_RESOURCES = 500
MAX_TEMPLATE_BYTES = 1_000_000  # through S3 (51,200 inline: deploy always uploads it)
MAX_OUTPUTS = 200
MAX_PARAMETERS = 200

SAM_EXPANSION = {"Schedule": 2, "SQS": 1, "Api": 0}
"""Resources the SAM transform adds per function event (a rule and its permission; an event
source mapping; API events are the RestAPI's), before CloudFormation counts."""


def deployed_resource_count(template: dict[str, Any]) -> int:
    """Resources after the SAM transform: Serverless::Api becomes RestApi + Deployment + Stage; a
    function's ``EventInvokeConfig`` one AWS::Lambda::EventInvokeConfig."""
    count = 0
    for resource in template["Resources"].values():
        count += 1
        if resource["Type"] == "AWS::Serverless::Api":
            count += 2
        if resource["Type"] == "AWS::Serverless::Function":
            for event in resource["Properties"].get("Events", {}).values():
                count += SAM_EXPANSION[event["Type"]]
            count += "EventInvokeConfig" in resource["Properties"]
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


def sam_expanded(package: Package, code_key: str) -> dict[str, Any]:
    """The resources CloudFormation makes of the template ``make deploy`` uploads (its functions'
    code at ``code_key``, infra/deploy.py): the SAM transform run as CloudFormation runs it
    (samtranslator, with cfn-lint's copy of SAM's managed policies)."""
    from cfnlint.data import Serverless
    from cfnlint.helpers import load_resource
    from samtranslator.parser.parser import Parser
    from samtranslator.translator.translator import Translator

    template = deploy.with_code_location(json.loads(package.template_path.read_text()), "my-deploy-bucket", code_key)
    translator = Translator(managed_policy_map=load_resource(Serverless, "ManagedPolicies.json"), sam_parser=Parser())
    resources: dict[str, Any] = translator.translate(sam_template=template, parameter_values={})["Resources"]
    return resources


def test_a_deploy_with_pools_added_or_removed_updates_the_functions_code_in_place(
        packages: dict[int, Package], monkeypatch: pytest.MonkeyPatch) -> None:
    """``make deploy`` of the same code packaged with other pools (1,000, then 3,000: pools added;
    the other way, removed): after the SAM transform the same resources, none added or removed (so
    nothing is replaced or left behind), and only the three functions' code differs, which Lambda
    updates in place. The SAM expansion is counted, not estimated: far from 500 resources (the
    figure the docs give: ``test_the_docs_give_the_resources_counted``)."""
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")  # SAM builds ARNs in the deploy's region
    codes = {pools: packages[pools].template_path.with_name("deployment.zip").read_bytes() for pools in (1000, 3000)}
    assert codes[1000] != codes[3000]  # the zip carries the pools: a new code key
    before, after = (sam_expanded(packages[pools], f"vmpool/dev/code-{pools}.zip") for pools in (1000, 3000))
    assert {name: r["Type"] for name, r in before.items()} == {name: r["Type"] for name, r in after.items()}
    changed = sorted(name for name in before if before[name] != after[name])
    assert changed == sorted(template_module.function_logical_id(f) for f in template_module.FUNCTIONS)
    for name in changed:
        assert {**before[name]["Properties"], "Code": None} == {**after[name]["Properties"], "Code": None}
        assert after[name]["Properties"]["Code"] == {"S3Bucket": "my-deploy-bucket",
                                                     "S3Key": "vmpool/dev/code-3000.zip"}
    assert len(before) == deployed_resource_count(packages[1000].template) < MAX_RESOURCES


def test_the_docs_give_the_resources_counted(package: Package, monkeypatch: pytest.MonkeyPatch) -> None:
    """README.md and docs/deploy.md state the stack's resources, in the template and after the SAM
    transform (counted by samtranslator): an alarm, endpoint or rule added without its doc fails
    here (the docs said 53 and 58 after a day that added an alarm and made them 54 and 59)."""
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    in_template = len(package.resources)
    deployed = len(sam_expanded(package, "vmpool/dev/code.zip"))
    assert deployed == deployed_resource_count(package.template)
    deploy_doc = doc_prose("docs/deploy.md")
    for sentence in (f"{deployed} resources after the SAM transform for 3, 100, 1,000, 3,000 or 10,000 pools",
                     f"| resources | {in_template} in the template, **{deployed} after the SAM transform**",
                     f"the same {deployed} resources, only the three functions' `Code` differs"):
        assert sentence in deploy_doc, f"docs/deploy.md no longer says {sentence!r}"
    sentence = f"three functions and {deployed} resources after the SAM transform"
    assert sentence in doc_prose("README.md"), f"README.md no longer says {sentence!r}"


MAX_RULES_PER_BUS = 300
MAX_API_RESOURCES = 300
"""API Gateway's resources (path segments) per REST API."""
MAX_ENVIRONMENT_BYTES = 4 * 1024
RESOLVED_BYTES = 200
"""Room for what an intrinsic function resolves to in AWS (an ARN, a queue URL, the Redis URL)."""


MAX_INLINE_POLICY_CHARACTERS = 10_240
"""IAM: a role's inline policies together (its own and each AWS::IAM::Policy naming it),
whitespace not counted."""
MAX_MANAGED_POLICY_CHARACTERS = 6_144
KMS_KEYS_GIVEN = 10
"""Customer-managed keys counted in ``SecretsKmsKeyArns`` (each an ARN of ~75 characters)."""


def policy_characters(document: Any) -> int:
    """A policy document's size as IAM counts it, each parameter it names resolved generously."""
    text = json.dumps(document, separators=(",", ":"))
    return len(text) + text.count('{"Ref":"SecretsKmsKeyArns"}') * KMS_KEYS_GIVEN * RESOLVED_BYTES


def inline_policy_sizes(template: dict[str, Any]) -> dict[str, int]:
    """Each role's inline policies together: those in the role, and the AWS::IAM::Policy resources
    attached to it (the secrets' KMS statement), which IAM stores in the role too."""
    resources = template["Resources"]
    sizes = {name: sum(policy_characters(p["PolicyDocument"]) for p in role["Properties"].get("Policies", []))
             for name, role in resources.items() if role["Type"] == "AWS::IAM::Role"}
    for policy in (r for r in resources.values() if r["Type"] == "AWS::IAM::Policy"):
        for role in policy["Properties"]["Roles"]:
            sizes[role["Ref"]] += policy_characters(policy["Properties"]["PolicyDocument"])
    return sizes


@pytest.mark.parametrize("pools", [1000, 3000, MAX_POOLS])
def test_per_resource_limits_hold_whatever_the_pools(packages: dict[int, Package], pools: int) -> None:
    """One schedule rule, each role's inline policies within IAM's 10,240 characters (the secrets'
    KMS policy attached to it counted, with ten keys), managed policies within 6,144, each
    function's environment within Lambda's 4 KB (values the stack fills in counted generously),
    the API's resources within API Gateway's 300 (94: none per pool)."""
    package = packages[pools]
    functions = package.of_type("AWS::Serverless::Function")
    events = [e for f in functions.values() for e in f["Properties"].get("Events", {}).values()]
    assert sum(1 for e in events if e["Type"] == "Schedule") == 1 < MAX_RULES_PER_BUS
    for name, size in inline_policy_sizes(package.template).items():
        assert size < MAX_INLINE_POLICY_CHARACTERS, (name, size)
    for name, managed in package.of_type("AWS::IAM::ManagedPolicy").items():
        assert policy_characters(managed["Properties"]["PolicyDocument"]) < MAX_MANAGED_POLICY_CHARACTERS, name
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


MAX_ALARM_METRIC_STATS = 10
"""PutMetricAlarm: at most 20 queries, 10 of them metrics (MetricStat) and 10 expressions."""
MAX_ALARM_EXPRESSIONS = 10
MAX_ALARM_ACTIONS = 5
MAX_ALARM_WINDOW_SECONDS = 86_400
"""An alarm's period times its evaluation periods: one day at most."""


def _resolved_number(template: dict[str, Any], value: Any) -> int:
    """A number, or a parameter's largest allowed value."""
    if isinstance(value, dict):
        return int(template["Parameters"][value["Ref"]]["MaxValue"])
    return int(value)


def alarm_limit_breaches(template: dict[str, Any]) -> list[str]:
    """What CloudWatch would refuse of the template's alarms (PutMetricAlarm's limits)."""
    found = []
    for name, alarm in template["Resources"].items():
        if alarm["Type"] != "AWS::CloudWatch::Alarm":
            continue
        properties = alarm["Properties"]
        queries = properties.get("Metrics", [])
        stats = [q for q in queries if "MetricStat" in q]
        expressions = [q for q in queries if "Expression" in q]
        if len(stats) > MAX_ALARM_METRIC_STATS or len(expressions) > MAX_ALARM_EXPRESSIONS:
            found.append(f"{name}: {len(stats)} metrics, {len(expressions)} expressions")
        periods = [q["MetricStat"]["Period"] for q in stats] or [properties["Period"]]
        window = max(periods) * _resolved_number(template, properties["EvaluationPeriods"])
        if window > MAX_ALARM_WINDOW_SECONDS:
            found.append(f"{name}: evaluates {window} s")
        for key in ("AlarmActions", "OKActions"):
            actions = properties.get(key, [])
            if isinstance(actions, dict):  # Fn::If between the topic and none
                actions = actions["Fn::If"][1]
            if len(actions) > MAX_ALARM_ACTIONS:
                found.append(f"{name}: {len(actions)} {key}")
    return found


@pytest.mark.parametrize("pools", [1000, MAX_POOLS])
def test_alarms_are_inside_cloudwatchs_limits(packages: dict[int, Package], pools: int) -> None:
    """Metric math alarms within 10 metrics, every alarm's window within a day
    (``PoolEmptyMinutes`` at its maximum), at most 5 actions each."""
    assert alarm_limit_breaches(packages[pools].template) == []


@pytest.mark.parametrize("pools", [1000, MAX_POOLS])
def test_the_chalice_deploy_paths_stack_is_lint_clean_and_inside_the_limits(tmp_path: Path, pools: int) -> None:
    """The infrastructure stack of the ``chalice deploy`` path (``python -m infra.template
    --infra-only``), packaged with a config of ``pools``: cfn-lint clean and inside the same
    limits. Before, no test linted it: its ``HasSecretsKmsKeys`` condition was unused (W8001)."""

    config = tmp_path / "pools.yaml"
    config.write_text(pools_config(pools))
    stack = template_module.build(STAGES["dev"], infra_only=True, config_file=config)
    path = tmp_path / "infra.json"
    path.write_text(json.dumps(stack, indent=1))
    matches = lint_file(path, config=ManualArgs(regions=["us-east-1"]))
    assert [f"{m.rule.id} {m.message}" for m in matches] == []
    assert deployed_resource_count(stack) < MAX_RESOURCES
    assert len(path.read_bytes()) < MAX_TEMPLATE_BYTES
    assert len(stack["Outputs"]) <= MAX_OUTPUTS and len(stack["Parameters"]) <= MAX_PARAMETERS
    assert alarm_limit_breaches(stack) == []
    assert all(size < MAX_INLINE_POLICY_CHARACTERS for size in inline_policy_sizes(stack).values())


@pytest.fixture(scope="module")
def operator_package(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Package]:
    """The dev stage packaged with ``operator_config(1000)`` (several vCenters, LDAP, DNS)."""
    config = tmp_path_factory.mktemp("operator") / "pools-1000-operator.yaml"
    config.write_text(operator_config(1000))
    yield from build_package(config, name="-1000-operator")


OPERATOR_NETWORK = ["VCenterCidr=10.20.0.0/23", "GuestCidr=10.50.0.0/16", "LdapCidr=10.30.0.0/24", "LdapPort=389",
                    "DnsServerCidr=10.9.0.0/24", "CreateSsmEndpoint=true"]


def test_make_deploy_of_1000_pools_over_several_vcenters_asks_for_their_network_and_creates_the_stack(
        operator_package: Package, package: Package, aws: boto3.Session, capsys: pytest.CaptureFixture[str]) -> None:
    """``make deploy`` (infra/deploy.py against moto) of a package carrying 1,000 pools over two
    vCenters with LDAP logins and DNS updates: lint-clean, the same resources as any pool count,
    refused in one line while a parameter leaves the new VMs, LDAP, DNS or SSM unreachable (nothing uploaded),
    then uploaded through S3 (the template is past the 51,200 inline bytes) and a change set
    created with the network it needs."""
    matches = lint_file(Path(operator_package.template_path), config=ManualArgs(regions=["us-east-1"]))
    assert [f"{m.rule.id} {m.message}" for m in matches] == []
    assert deployed_resource_count(operator_package.template) == deployed_resource_count(package.template)
    assert sorted(operator_package.template["Rules"]) == ["DnsServersReachable", "GuestsReachable", "LdapReachable",
                                                          "SsmReachable"]
    aws.client("s3").create_bucket(Bucket="my-deploy-bucket")
    out = operator_package.template_path.parent
    arguments = ["--stage", "dev", "--bucket", "my-deploy-bucket", "--package", str(out), "--poll", "0.1",
                 "--no-execute", "VpcId=vpc-0abc", "PrivateSubnetIds=subnet-1,subnet-2"]
    for left_out in ("GuestCidr", "LdapCidr", "LdapPort", "DnsServerCidr", "CreateSsmEndpoint"):
        given = [p for p in OPERATOR_NETWORK if not p.startswith(f"{left_out}=")]
        assert deploy.main([*arguments, *given], session=aws) == 1
        error = capsys.readouterr().err
        assert error.startswith("deploy: ") and error.count("\n") == 1 and "Traceback" not in error, error
    assert "Contents" not in aws.client("s3").list_objects_v2(Bucket="my-deploy-bucket")

    assert deploy.main([*arguments, *OPERATOR_NETWORK], session=aws) == 0, capsys.readouterr().err
    s3 = aws.client("s3")
    keys = {o["Key"] for o in s3.list_objects_v2(Bucket="my-deploy-bucket")["Contents"]}
    (template_key,) = [k for k in keys if k.endswith(".json")]
    assert s3.head_object(Bucket="my-deploy-bucket", Key=template_key)["ContentLength"] > 51_200
    member = STAGES["dev"].config_file
    packaged = config_module.from_text(operator_package.zip.read(member).decode(), member)
    assert len(packaged.pools) == 1000 and {p.provider for p in packaged.pools} == {"east", "west", "dummy"}
    cloudformation = aws.client("cloudformation")
    (change_set,) = cloudformation.list_change_sets(StackName="vmpool-dev")["Summaries"]
    described = cloudformation.describe_change_set(StackName="vmpool-dev", ChangeSetName=change_set["ChangeSetName"])
    assert described["Status"] == "CREATE_COMPLETE"
    given = {p["ParameterKey"]: p["ParameterValue"] for p in described["Parameters"]}
    assert given["LdapPort"] == "389" and given["LdapCidr"] == "10.30.0.0/24"
