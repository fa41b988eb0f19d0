"""The ``chalice deploy`` path: wire a Chalice stage to its infrastructure stack, and finish what
Chalice cannot set itself (infra/chalice_deploy.sh runs both steps around ``chalice deploy``).

    python -m infra.stage_settings --stage dev            # settings from the stack's outputs
    python -m infra.stage_settings --stage dev --finish   # after chalice deploy

The settings (subnets, the Lambda security group, Redis URL and AUTH token secret, the reconcile
queue URL, the config bucket, the secrets' customer-managed KMS keys, the replicas a checkout waits
for when the stack sets them) go to ``.chalice/stack-<stage>.json`` and, through
infra/sync_config.py, into the stage of ``.chalice/config.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from infra import sync_config
from infra.sync_config import CHALICE_DIR, STAGES, Stage, stack_name

OUTPUTS = {
    "VMPOOL_REDIS_URL": "RedisUrl",
    "VMPOOL_REDIS_AUTH_SECRET": "RedisAuthSecretArn",
    "VMPOOL_RECONCILE_QUEUE_URL": "ReconcileQueueUrl",
    "VMPOOL_CONFIG_BUCKET": "ConfigBucket",
}
"""Function environment variable -> the infra-only stack's output that holds it."""
KMS_KEYS_OUTPUT = "SecretsKmsKeyArns"
OPTIONAL_OUTPUTS = {"VMPOOL_REDIS_MIN_REPLICA_ACKS": "RedisMinReplicaAcks"}
"""Function environment variable -> the output that holds it when the stack was given its
parameter (an output only then): absent, the variable is not set."""


def settings_from_outputs(outputs: dict[str, str]) -> dict[str, Any]:
    missing = sorted({*OUTPUTS.values(), "PrivateSubnetIds", "LambdaSecurityGroupId"} - set(outputs))
    if missing:
        raise SystemExit(f"stage-settings: the stack has no output {', '.join(missing)}: "
                         "was it deployed with make infra-deploy?")
    settings: dict[str, Any] = {
        "subnet_ids": [s for s in outputs["PrivateSubnetIds"].split(",") if s],
        "security_group_ids": [outputs["LambdaSecurityGroupId"]],
        "environment_variables": {variable: outputs[key] for variable, key in OUTPUTS.items()},
    }
    settings["environment_variables"].update(
        {variable: outputs[key] for variable, key in OPTIONAL_OUTPUTS.items() if outputs.get(key, "").strip()})
    # The stack's SecretsKmsKeyArns (an output only when it names keys): the policy files grant
    # kms:Decrypt on them, as the full stack's roles get it (before: to be added by hand).
    keys = sorted(key.strip() for key in outputs.get(KMS_KEYS_OUTPUT, "").split(",") if key.strip())
    if keys:
        try:
            sync_config.kms_key_regions(keys)
        except sync_config.BadKmsKey as error:
            raise SystemExit(f"stage-settings: the stack's SecretsKmsKeyArns: {error}") from None
        settings[sync_config.SECRETS_KMS_SETTING] = keys
    return settings


def stack_outputs(cloudformation: Any, stage: Stage) -> dict[str, str]:
    stack = cloudformation.describe_stacks(StackName=stack_name(stage.name))["Stacks"][0]
    return {o["OutputKey"]: o["OutputValue"] for o in stack.get("Outputs", [])}


def write_settings(stage: Stage, settings: dict[str, Any]) -> Path:
    path = sync_config.stack_settings_file(stage)
    previous = path.read_text() if path.exists() else None
    path.write_text(json.dumps(settings, indent=2, sort_keys=True) + "\n")
    if sync_config.main([]) != 0:
        # Its reason is printed. Before, the exit status was dropped: chalice deploy went on with
        # the stage's previous config.json and policy files (no subnets or stack settings, no
        # kms:Decrypt), e.g. when the stack's keys took a policy past IAM's limit.
        if previous is None:
            path.unlink()
        else:
            path.write_text(previous)
        raise SystemExit(f"stage-settings: .chalice/ not updated for stage {stage.name}; nothing deployed")
    return path


def deployed_resources(stage: Stage) -> dict[str, dict[str, Any]]:
    """What chalice deploy recorded in .chalice/deployed/<stage>.json, by resource name."""
    path = CHALICE_DIR / "deployed" / f"{stage.name}.json"
    return {r["name"]: r for r in json.loads(path.read_text())["resources"]}


GATEWAY_RESPONSES = {"MISSING_AUTHENTICATION_TOKEN": "404", "RESOURCE_NOT_FOUND": "404", "THROTTLED": "429",
                     "DEFAULT_4XX": None, "DEFAULT_5XX": None}
"""API Gateway's own answers we shape, each kind with its status (None: the kind's own). vmpooler
answers unknown routes with 404 {"ok": false}; the defaults cover every other answer of its own
(its 403s, 413 ``Request Too Long``, 502 and 504 of a function that failed or timed out)."""
GATEWAY_POLICY = "default-src; frame-ancestors"
"""The Content-Security-Policy of API Gateway's own answers: the same as ``JSON_POLICY``
(``default-src 'none'; frame-ancestors 'none'``) written without quotes, which a gateway
response's static value (itself quoted, ``'...'``) cannot hold: a directive without sources is
one with ``'none'`` (CSP Level 3, "source lists"), so a browser loads nothing for the answer and
no page may frame it."""
GATEWAY_RESPONSE_HEADERS = {"Content-Type": "application/json", "Cache-Control": "no-store",
                            "X-Content-Type-Options": "nosniff", "X-Frame-Options": "DENY",
                            "Content-Security-Policy": GATEWAY_POLICY}
"""The headers of API Gateway's own answers: those of every JSON answer of the functions (its
throttling's 429 had none but Content-Type; a browser could keep it, or read it as it liked; until
2026-12-07 none had the Content-Security-Policy)."""
THROTTLED_RETRY_AFTER_SECONDS = 1
"""API Gateway's throttling refills its token bucket every second: its 429, like ours, says when
to come back (``Retry-After``)."""
NOT_FOUND_BODY = '{"ok":false}'
ERROR_BODY = '{"ok":false,"error":$context.error.messageString}'
"""API Gateway's other answers in the shape of ours, ``{"ok": false, "error": "..."}``, the error
its own message (``$context.error.messageString`` is that message as a quoted JSON string:
``"Too Many Requests"``, ``"Request Too Long"``, ``"Endpoint request timed out"``). Until
2026-12-07 they said ``{"ok":false}`` only, and a client could not tell its throttling from a
timeout."""


def gateway_response(kind: str) -> tuple[str | None, dict[str, str], str]:
    """What API Gateway answers for ``kind`` (a key of ``GATEWAY_RESPONSES``): its status (None:
    the kind's own), its headers, its body template."""
    status = GATEWAY_RESPONSES[kind]
    headers = dict(GATEWAY_RESPONSE_HEADERS)
    if kind == "THROTTLED":
        headers["Retry-After"] = str(THROTTLED_RETRY_AFTER_SECONDS)
    return status, headers, NOT_FOUND_BODY if status == "404" else ERROR_BODY


def sam_gateway_responses() -> dict[str, Any]:
    """The ``GatewayResponses`` of the full stack's ``RestAPI`` (SAM writes them into the API's
    OpenAPI document: no resource of their own, whatever the pools)."""
    found = {}
    for kind in GATEWAY_RESPONSES:
        status, headers, body = gateway_response(kind)
        found[kind] = {**({"StatusCode": status} if status else {}),
                       "ResponseParameters": {"Headers": {name: f"'{value}'" for name, value in headers.items()}},
                       "ResponseTemplates": {"application/json": body}}
    return found


def report_batch_failures(session: Any, stage: Stage) -> None:
    """Partial batch responses on the reconcile function's queue mapping (Chalice 1.34 has no option)."""
    lambda_ = session.client("lambda")
    function = f"{stage.prefix}-{sync_config.RECONCILE_FUNCTION}"
    for mapping in lambda_.list_event_source_mappings(FunctionName=function)["EventSourceMappings"]:
        lambda_.update_event_source_mapping(UUID=mapping["UUID"], FunctionResponseTypes=["ReportBatchItemFailures"])


def name_the_api(session: Any, stage: Stage) -> None:
    """The stage in the API's name (Chalice names it after the app) and vmpooler's 404s."""
    api_id = deployed_resources(stage)["rest_api"]["rest_api_id"]
    apigateway = session.client("apigateway")
    apigateway.update_rest_api(restApiId=api_id, patchOperations=[
        {"op": "replace", "path": "/name", "value": stage.prefix}])
    for kind in GATEWAY_RESPONSES:
        status, headers, body = gateway_response(kind)
        options: dict[str, Any] = {"statusCode": status} if status else {}
        apigateway.put_gateway_response(
            restApiId=api_id, responseType=kind, **options,
            responseParameters={f"gatewayresponse.header.{name}": f"'{value}'" for name, value in headers.items()},
            responseTemplates={"application/json": body})
    apigateway.create_deployment(restApiId=api_id, stageName="api", description="gateway responses")


def log_into_chalices_groups(session: Any, stage: Stage) -> None:
    """Each function's ``LoggingConfig`` as the full stack sets it (``sync_config.logging_config``:
    JSON lines, no START/END/REPORT), its log group the one Chalice made for it with the stage's
    retention (``sync_config.log_group_name``); Chalice 1.34 has no option for either. Before, the
    API function (which Chalice names ``vmpool-<stage>``, its group ``vmpool-<stage>-api_handler``)
    wrote to ``/aws/lambda/vmpool-<stage>``, a group its role may neither create nor write to: the
    API's lines were lost, and Chalice's group for it stayed empty. Each function is waited for first:
    ``chalice deploy`` has just updated it, and Lambda refuses an update while one is in progress."""
    lambda_ = session.client("lambda")
    for function in sync_config.FUNCTION_NAMES:
        name = sync_config.chalice_function_name(stage, function)
        lambda_.get_waiter("function_updated_v2").wait(FunctionName=name)
        lambda_.update_function_configuration(FunctionName=name, LoggingConfig={
            **sync_config.logging_config(stage), "LogGroup": sync_config.log_group_name(stage, function)})


def no_tick_retries(session: Any, stage: Stage) -> None:
    """The tick's failed invocations never retried by Lambda (``sync_config.TICK_RETRY_ATTEMPTS``,
    as the full stack sets them; Chalice 1.34 has no option): the next tick comes within the minute."""
    session.client("lambda").put_function_event_invoke_config(
        FunctionName=sync_config.chalice_function_name(stage, sync_config.TICK_FUNCTION),
        MaximumRetryAttempts=sync_config.TICK_RETRY_ATTEMPTS)


def finish(session: Any, stage: Stage) -> None:
    report_batch_failures(session, stage)
    no_tick_retries(session, stage)
    log_into_chalices_groups(session, stage)
    name_the_api(session, stage)


def main(argv: list[str] | None = None, session: Any = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stage", choices=sorted(STAGES), required=True)
    parser.add_argument("--finish", action="store_true", help="after chalice deploy: what Chalice cannot set")
    args = parser.parse_args(argv)
    if session is None:
        import boto3

        session = boto3.Session()
    stage = STAGES[args.stage]
    if args.finish:
        finish(session, stage)
        print(f"stage-settings: {stage.name}: partial batch responses on, tick not retried, JSON logs into "
              f"Chalice's log groups, API named {stage.prefix}", file=sys.stderr)
        return 0
    path = write_settings(stage, settings_from_outputs(stack_outputs(session.client("cloudformation"), stage)))
    print(f"stage-settings: wrote {path.relative_to(sync_config.ROOT)} and .chalice/config.json", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
