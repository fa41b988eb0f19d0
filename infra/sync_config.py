"""Writes .chalice/config.json and the per-role IAM policy files from one description per stage.

Chalice applies per-function settings only under ``stages.<stage>.lambda_functions``, and each
pool has its own reconcile Lambda (``reconcile_<pool>``), so the per-pool entries depend on the
pools in the stage's config file. Run this after adding or removing a pool::

    python -m infra.sync_config          # rewrite .chalice/config.json and .chalice/policy-*.json
    python -m infra.sync_config --check  # exit 1 if they are out of date (CI)

IAM is least privilege per role: API (LDAP secret, send to the refill queue), reconcile (vSphere
secret), refill (vSphere secret, consume the refill queue). The only ``Resource: "*"`` grants are
the VPC network-interface actions Lambda needs and X-Ray's write actions, which take no resource.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
CHALICE_DIR = ROOT / ".chalice"
APP_NAME = "vmpool"

API_FUNCTION = "api_handler"
REFILL_FUNCTION = "refill"
RECONCILE_PREFIX = "reconcile_"

ENI_ACTIONS = (
    "ec2:CreateNetworkInterface",
    "ec2:DescribeNetworkInterfaces",
    "ec2:DeleteNetworkInterface",
    "ec2:AssignPrivateIpAddresses",
    "ec2:UnassignPrivateIpAddresses",
)
"""What Lambda needs to attach functions to a VPC; EC2 does not scope these to a resource."""

XRAY_ACTIONS = ("xray:PutTraceSegments", "xray:PutTelemetryRecords")
"""X-Ray's write actions take no resource."""

RESOURCE_FREE_ACTIONS = frozenset(ENI_ACTIONS + XRAY_ACTIONS)


@dataclass(frozen=True)
class Stage:
    """What differs between stages. Everything else is the same on purpose."""

    name: str
    tracing: bool
    log_retention_days: int
    api_reserved_concurrency: int
    refill_reserved_concurrency: int
    reconcile_reserved_concurrency: int = 2
    """Two, not one: a scheduled run that finds the pool's lease held exits at once, while a
    throttled one is queued and retried by Lambda for hours."""
    config_file: str = "chalicelib/vmpool.yaml"
    log_level: str = "INFO"
    extra_environment: dict[str, str] = field(default_factory=dict)

    @property
    def refill_queue_name(self) -> str:
        return f"{APP_NAME}-{self.name}-refill"

    @property
    def secret_prefix(self) -> str:
        """Secrets Manager names (and SSM parameter paths) this stage may read."""
        return f"{APP_NAME}/{self.name}/"


STAGES: dict[str, Stage] = {
    "dev": Stage("dev", tracing=False, log_retention_days=14, api_reserved_concurrency=20,
                 refill_reserved_concurrency=2),
    "prod": Stage("prod", tracing=True, log_retention_days=30, api_reserved_concurrency=100,
                  refill_reserved_concurrency=5),
}

# Function settings. The reconcile budget leaves a minute of the timeout for the last pass;
# the API timeout stays under API Gateway's 29 s integration limit.
MEMORY_MB = 512  # pyVmomi's import and TLS handshakes are CPU-bound: 512 MB halves cold starts
RECONCILE_TIMEOUT = 300
RECONCILE_BUDGET = 240
REFILL_TIMEOUT = 60
REFILL_BUDGET = 50
API_TIMEOUT = 29
SCHEDULE_MINUTES = 1


def reconcile_function_name(pool_name: str) -> str:
    """The same name app.py gives the pool's Lambda (kept import-free: app.py loads the config)."""
    import re

    return RECONCILE_PREFIX + re.sub(r"[^A-Za-z0-9_]", "_", pool_name)


def pool_sizes(stage: Stage) -> dict[str, int]:
    """The pools in the stage's config file and their sizes: each gets a reconcile Lambda."""
    from chalicelib import config as config_module

    config = config_module.load({config_module.CONFIG_FILE_ENV: str(ROOT / stage.config_file)})
    return {pool.name: pool.size for pool in config.pools}


def environment(stage: Stage) -> dict[str, str]:
    """Environment of every function of the stage (the merge template adds the Redis URL and,
    for the API, the refill queue URL, which only the stack knows)."""
    return {
        "VMPOOL_CONFIG_FILE": stage.config_file,
        "VMPOOL_REFILL_QUEUE_NAME": stage.refill_queue_name,
        "VMPOOL_RECONCILE_BUDGET_SECONDS": str(RECONCILE_BUDGET),
        "VMPOOL_REFILL_BUDGET_SECONDS": str(REFILL_BUDGET),
        "VMPOOL_SCHEDULE_MINUTES": str(SCHEDULE_MINUTES),
        "POWERTOOLS_SERVICE_NAME": APP_NAME,
        "POWERTOOLS_METRICS_NAMESPACE": APP_NAME,
        "POWERTOOLS_LOG_LEVEL": stage.log_level,
        "POWERTOOLS_TRACE_DISABLED": "false" if stage.tracing else "true",
        **stage.extra_environment,
    }


def policy_file(stage: Stage, role: str) -> str:
    return f"policy-{stage.name}-{role}.json"


def stage_config(stage: Stage, pools: list[str]) -> dict[str, Any]:
    """One stage of .chalice/config.json."""
    functions: dict[str, Any] = {
        API_FUNCTION: {
            "lambda_timeout": API_TIMEOUT,
            "reserved_concurrency": stage.api_reserved_concurrency,
            "iam_policy_file": policy_file(stage, "api"),
        },
        REFILL_FUNCTION: {
            "lambda_timeout": REFILL_TIMEOUT,
            "reserved_concurrency": stage.refill_reserved_concurrency,
            "iam_policy_file": policy_file(stage, "refill"),
        },
    }
    for pool in pools:
        functions[reconcile_function_name(pool)] = {
            "lambda_timeout": RECONCILE_TIMEOUT,
            "reserved_concurrency": stage.reconcile_reserved_concurrency,
            "iam_policy_file": policy_file(stage, "reconcile"),
        }
    return {
        "api_gateway_stage": "api",
        "api_gateway_endpoint_type": "REGIONAL",
        "autogen_policy": False,
        "iam_policy_file": policy_file(stage, "reconcile"),
        "lambda_memory_size": MEMORY_MB,
        "lambda_timeout": RECONCILE_TIMEOUT,
        "log_retention_in_days": stage.log_retention_days,
        "xray": stage.tracing,
        "environment_variables": environment(stage),
        "tags": {"app": APP_NAME, "stage": stage.name},
        "lambda_functions": functions,
    }


def chalice_config(pools_by_stage: dict[str, list[str]]) -> dict[str, Any]:
    """The whole .chalice/config.json."""
    return {
        "version": "2.0",
        "app_name": APP_NAME,
        "stages": {name: stage_config(STAGES[name], pools_by_stage[name]) for name in STAGES},
    }


def _statement(actions: tuple[str, ...] | list[str], resources: list[str] | str) -> dict[str, Any]:
    return {"Effect": "Allow", "Action": sorted(actions), "Resource": resources}


def policy(stage: Stage, role: str) -> dict[str, Any]:
    """The IAM policy of one role ("api", "reconcile" or "refill") of a stage.

    ARNs name this stage's resources with the region and account left open, because the policy
    files are static (the stack must be named ``vmpool-<stage>``: Lambda names start with it).
    """
    prefix = stage.secret_prefix
    queue = f"arn:aws:sqs:*:*:{stage.refill_queue_name}"
    secrets = ["ldap", "redis-auth"] if role == "api" else ["vsphere", "redis-auth"]
    statements = [
        _statement(["logs:CreateLogGroup", "logs:CreateLogStream", "logs:PutLogEvents"],
                   [f"arn:aws:logs:*:*:log-group:/aws/lambda/{APP_NAME}-{stage.name}-*",
                    f"arn:aws:logs:*:*:log-group:/aws/lambda/{APP_NAME}-{stage.name}-*:*"]),
        _statement(ENI_ACTIONS, "*"),
        _statement(["secretsmanager:GetSecretValue"],
                   [f"arn:aws:secretsmanager:*:*:secret:{prefix}{name}-*" for name in secrets]),
        _statement(["ssm:GetParameter"], [f"arn:aws:ssm:*:*:parameter/{prefix}*"]),
    ]
    if role == "api":
        statements.append(_statement(["sqs:SendMessage"], [queue]))
    if role == "refill":
        statements.append(_statement(["sqs:ReceiveMessage", "sqs:DeleteMessage",
                                      "sqs:GetQueueAttributes"], [queue]))
    zones = route53_zones(stage)
    if role != "api" and zones:
        statements.append(_statement(["route53:ChangeResourceRecordSets", "route53:ListResourceRecordSets"],
                                     [f"arn:aws:route53:::hostedzone/{zone}" for zone in zones]))
    if stage.tracing:
        statements.append(_statement(XRAY_ACTIONS, "*"))
    return {"Version": "2012-10-17", "Statement": statements}


def route53_zones(stage: Stage) -> list[str]:
    """The hosted zones the stage's ``route53`` DNS entries manage (the reconcile passes change
    their records, docs/dns.md)."""
    from chalicelib import config as config_module

    config = config_module.load({config_module.CONFIG_FILE_ENV: str(ROOT / stage.config_file)})
    return sorted({
        str(entry.get("hosted_zone_id")).split("/")[-1]
        for entry in config.dns_configs.values() if entry.dns_class == "route53"
    })


def rendered_files(pools_by_stage: dict[str, list[str]] | None = None) -> dict[Path, str]:
    """Every file this module owns, path -> content."""
    pools_by_stage = pools_by_stage or {name: list(pool_sizes(stage)) for name, stage in STAGES.items()}
    files = {CHALICE_DIR / "config.json": _dump(chalice_config(pools_by_stage))}
    for stage in STAGES.values():
        for role in ("api", "reconcile", "refill"):
            files[CHALICE_DIR / policy_file(stage, role)] = _dump(policy(stage, role))
    return files


def _dump(document: dict[str, Any]) -> str:
    return json.dumps(document, indent=2) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="fail if the files are out of date")
    args = parser.parse_args(argv)
    stale = []
    for path, content in rendered_files().items():
        current = path.read_text() if path.exists() else None
        if current != content:
            stale.append(path)
            if not args.check:
                path.write_text(content)
    if args.check and stale:
        names = ", ".join(str(p.relative_to(ROOT)) for p in stale)
        print(f"out of date (run python -m infra.sync_config): {names}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
