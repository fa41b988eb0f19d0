"""What `chalice package --merge-template` produces for a stage: the functions, their settings,
VPC, the refill queue wiring, IAM, the API's unknown-route answer, Redis. All read from the real
package (tests/infra/conftest.py), so they prove what would be deployed."""

from __future__ import annotations

import importlib
import json
import re
from typing import Any

from cfnlint.api import ManualArgs, lint_file
from packaged import ROOT, Package

from infra import sync_config
from infra.sync_config import RESOURCE_FREE_ACTIONS, STAGES
from infra.template import function_logical_id


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


def test_one_scheduled_function_per_pool_whose_handler_is_in_app(package: Package) -> None:
    app = importlib.import_module("app")
    pools = list(sync_config.pool_sizes(STAGES[package.stage]))
    reconcilers = {name: f for name, f in functions(package).items()
                   if f["Properties"]["Handler"].startswith("app.reconcile_")}

    assert sorted(reconcilers) == sorted(function_logical_id(sync_config.reconcile_function_name(p)) for p in pools)
    for pool in pools:
        function = reconcilers[function_logical_id(sync_config.reconcile_function_name(pool))]
        handler = function["Properties"]["Handler"].removeprefix("app.")
        assert handler == sync_config.reconcile_function_name(pool)
        assert callable(getattr(app, handler))
        (event,) = function["Properties"]["Events"].values()
        assert event["Type"] == "Schedule" and event["Properties"]["Schedule"] == "rate(1 minute)"


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
        assert "VMPOOL_REDIS_URL" in env, name
        role = package.resources[properties["Role"]["Fn::GetAtt"][0]]
        policy_file = ROOT / ".chalice" / settings["iam_policy_file"]
        assert role["Properties"]["Policies"][0]["PolicyDocument"] == json.loads(policy_file.read_text()), name
    # The reconcile budget leaves the last pass time to finish before the Lambda is killed.
    assert int(config["environment_variables"]["VMPOOL_RECONCILE_BUDGET_SECONDS"]) < config["lambda_timeout"]
    refill = config["lambda_functions"][sync_config.REFILL_FUNCTION]
    assert int(config["environment_variables"]["VMPOOL_REFILL_BUDGET_SECONDS"]) < refill["lambda_timeout"]


def test_chalice_config_covers_every_pool_of_every_stage() -> None:
    config = json.loads((ROOT / ".chalice" / "config.json").read_text())
    for stage in STAGES.values():
        entries = config["stages"][stage.name]["lambda_functions"]
        for pool in sync_config.pool_sizes(stage):
            assert sync_config.reconcile_function_name(pool) in entries, f"{stage.name}: {pool} (run infra.sync_config)"
    assert sync_config.main(["--check"]) == 0


def test_a_new_pool_changes_the_chalice_config() -> None:
    current = sync_config.rendered_files()
    pools = {name: [*sync_config.pool_sizes(stage), "centos-9"] for name, stage in STAGES.items()}
    with_new_pool = sync_config.rendered_files(pools)
    config = json.loads(with_new_pool[sync_config.CHALICE_DIR / "config.json"])
    assert "reconcile_centos_9" in config["stages"]["prod"]["lambda_functions"]
    assert with_new_pool[sync_config.CHALICE_DIR / "config.json"] != current[sync_config.CHALICE_DIR / "config.json"]


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
    assert sorted(e["Properties"]["ServiceName"]["Fn::Sub"].rsplit(".", 1)[1] for e in endpoints.values()) == [
        "secretsmanager", "sqs"]


def test_refill_consumer_is_wired_to_the_refill_queue(package: Package) -> None:
    stage = STAGES[package.stage]
    refill = package.resources[function_logical_id(sync_config.REFILL_FUNCTION)]
    (event,) = refill["Properties"]["Events"].values()
    assert event["Type"] == "SQS"
    queue_arn = event["Properties"]["Queue"]["Fn::Sub"]
    assert queue_arn.endswith(f":sqs:${{AWS::Region}}:${{AWS::AccountId}}:{stage.refill_queue_name}")
    assert refill["DependsOn"] == ["RefillQueue"]
    queue = package.resources["RefillQueue"]["Properties"]
    assert queue["QueueName"] == stage.refill_queue_name
    assert queue["VisibilityTimeout"] >= 6 * refill["Properties"]["Timeout"]
    assert queue["RedrivePolicy"]["deadLetterTargetArn"] == {"Fn::GetAtt": ["RefillDeadLetterQueue", "Arn"]}
    api = package.resources["APIHandler"]
    assert environment(package, api)["VMPOOL_REFILL_QUEUE_URL"] == {"Ref": "RefillQueue"}
    assert "VMPOOL_REFILL_QUEUE_URL" not in environment(package, refill)  # only the API sends


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
            secrets[role] = {re.sub(r".*:secret:", "", r) for r in statement["Resource"]}
    sqs = {role: {a for a in actions if a.startswith("sqs:")} for role, actions in by_role.items()}
    assert sqs.pop("ApiHandlerRole") == {"sqs:SendMessage"}
    assert sqs.pop("RefillRole") == {"sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:GetQueueAttributes"}
    assert all(actions == set() for actions in sqs.values())  # reconcile roles
    prefix = STAGES[package.stage].secret_prefix
    assert secrets["ApiHandlerRole"] == {f"{prefix}ldap-*", f"{prefix}redis-auth-*"}
    assert secrets["RefillRole"] == {f"{prefix}vsphere-*", f"{prefix}redis-auth-*"}
    names = {r["Properties"]["Name"] for r in package.of_type("AWS::SecretsManager::Secret").values()}
    assert names == {f"{prefix}ldap", f"{prefix}redis-auth", f"{prefix}vsphere"}


def test_unknown_routes_answer_404_ok_false(package: Package) -> None:
    responses = package.resources["RestAPI"]["Properties"]["GatewayResponses"]
    for kind in ("MISSING_AUTHENTICATION_TOKEN", "RESOURCE_NOT_FOUND"):
        assert responses[kind]["StatusCode"] == "404"
    for kind in ("MISSING_AUTHENTICATION_TOKEN", "RESOURCE_NOT_FOUND", "DEFAULT_4XX", "DEFAULT_5XX"):
        assert json.loads(responses[kind]["ResponseTemplates"]["application/json"]) == {"ok": False}


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


def test_deployment_zip_holds_the_app_and_its_config(package: Package) -> None:
    names = set(package.zip.namelist())
    assert {"app.py", "chalicelib/vmpool.yaml", "chalicelib/observability.py"} <= names
    assert any(n.startswith("chalicelib/store/lua/") and n.endswith(".lua") for n in names)
    # The dashboard is served by the API Lambda from its own files.
    assert {"chalicelib/dashboard/index.html", "chalicelib/dashboard/dashboard.js",
            "chalicelib/dashboard/dashboard.css"} <= names
    assert not any(n.startswith(("tests/", "infra/", "local/")) for n in names)


def test_stages_with_tracing_ship_the_xray_sdk(package: Package) -> None:
    assert any(stage.tracing for stage in STAGES.values())
    assert any(name.startswith("aws_xray_sdk/") for name in package.zip.namelist())
