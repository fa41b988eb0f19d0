"""Writes .chalice/config.json and the per-role IAM policy files from one description per stage.

Three functions whatever the pool count: the API, the tick (one schedule for every pool) and the
reconcile queue's consumer. Pools live in the config (S3 at run time), not in the package, so
adding a pool changes nothing here. A stage wired for ``chalice deploy`` also carries the
settings read from its infrastructure stack (``python -m infra.stage_settings``, kept in
``.chalice/stack-<stage>.json``); they are laid over the stage here::

    python -m infra.sync_config          # rewrite .chalice/config.json and .chalice/policy-*.json
    python -m infra.sync_config --check  # exit 1 if they are out of date (CI)

IAM is least privilege per role: API (LDAP secret, send to the reconcile queue), tick (send),
reconcile (vSphere secret, consume and send); every role reads the Redis AUTH token and the
stage's config object. The only ``Resource: "*"`` grants are the VPC network-interface actions
Lambda needs and X-Ray's write actions, which take no resource.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

from infra import config_walk

if TYPE_CHECKING:
    from chalicelib.auth.secrets import SecretReference
    from chalicelib.config import Config
    from chalicelib.dns.base import DnsConfig

ROOT = Path(__file__).resolve().parents[1]
CHALICE_DIR = ROOT / ".chalice"
APP_NAME = "vmpool"

API_FUNCTION = "api_handler"
TICK_FUNCTION = "tick"
RECONCILE_FUNCTION = "reconcile"
ROLES = ("api", "tick", "reconcile")
FUNCTION_NAMES = (API_FUNCTION, TICK_FUNCTION, RECONCILE_FUNCTION)


TICK_RETRY_ATTEMPTS = 0
"""Lambda's retries of a failed scheduled tick (its own default is 2, a minute and two minutes
on): none. The next tick comes within the minute and does the same work from the state of then;
a retry only ran beside it, so after a Redis outage up to three ticks sent every pool in ~2
minutes, and each failed tick counted up to three Errors in the ``lambda-errors`` alarm. The
``chalice deploy`` path sets the same (``infra/stage_settings.py --finish``); the full stack's is SAM's
``EventInvokeConfig`` on the function (infra/template.py)."""


def chalice_function_name(stage: Stage, function_name: str) -> str:
    """The name ``chalice deploy`` gives a function (the API handler is named after the app)."""
    return stage.prefix if function_name == API_FUNCTION else f"{stage.prefix}-{function_name}"

ENI_ACTIONS = (
    "ec2:CreateNetworkInterface",
    "ec2:DescribeNetworkInterfaces",
    "ec2:DeleteNetworkInterface",
    "ec2:AssignPrivateIpAddresses",
    "ec2:UnassignPrivateIpAddresses",
)
"""What Lambda needs to attach functions to a VPC; EC2 does not scope these to a resource."""

LOG_ACTIONS = ("logs:CreateLogStream", "logs:PutLogEvents")
"""What a function needs to write to its log group, and nothing to create one: in both paths the
group exists before the function runs (the packaged stack's ``LogGroup`` resources, which each
function refers to, infra/template.py ``log_groups_first``; Chalice's own groups, made before the
functions they belong to, for ``chalice deploy``), with the stage's retention. Until 2026-12-07
the roles also had ``logs:CreateLogGroup``: a group deleted by hand was recreated by Lambda at
the function's next invocation without retention, its lines kept for ever. A deleted group now
drops the function's lines until it is made again (docs/deploy.md)."""

XRAY_ACTIONS = ("xray:PutTraceSegments", "xray:PutTelemetryRecords")
"""X-Ray's write actions take no resource."""

RESOURCE_FREE_ACTIONS = frozenset(ENI_ACTIONS + XRAY_ACTIONS)

MAX_INLINE_POLICY_CHARACTERS = 10_240
"""IAM's limit on a role's inline policies together, whitespace not counted."""


class PolicyTooLarge(Exception):
    """A role's policy IAM would refuse (CloudFormation would fail the deploy minutes in)."""


@dataclass(frozen=True)
class Stage:
    """What differs between stages. Everything else is the same on purpose."""

    name: str
    tracing: bool
    log_retention_days: int
    api_reserved_concurrency: int
    reconcile_reserved_concurrency: int
    """Also the queue's event source maximum concurrency, so the consumer is never throttled."""
    tick_reserved_concurrency: int = 1
    config_file: str = "chalicelib/vmpool.yaml"
    log_level: str = "INFO"
    extra_environment: dict[str, str] = field(default_factory=dict)

    @property
    def prefix(self) -> str:
        """Every resource name of the stage starts with it."""
        return f"{APP_NAME}-{self.name}"

    @property
    def reconcile_queue_name(self) -> str:
        return f"{self.prefix}-reconcile"

    @property
    def config_bucket_prefix(self) -> str:
        """The config bucket is ``<this><account>-<region>`` (bucket names are global)."""
        return f"{self.prefix}-config-"

    @property
    def secret_prefix(self) -> str:
        """Secrets Manager names (and SSM parameter paths) this stage may read."""
        return f"{APP_NAME}/{self.name}/"

    @property
    def reserved_concurrency(self) -> int:
        return self.api_reserved_concurrency + self.reconcile_reserved_concurrency + self.tick_reserved_concurrency


STAGES: dict[str, Stage] = {
    # The reconcile consumer's concurrency: 10 passes a batch, one batch per ~0.5 s at 512 MB with
    # vSphere pools of 50 VMs; 10,000 pools steady need about 9, each 1,000 pools with work in
    # flight (a follow-up every 5 s) about 9 more (docs/deploy.md, "Reconcile concurrency"). 10
    # for dev, until 2026-12-06, left a 10,000-pool stage no room for one wave of refills.
    "dev": Stage("dev", tracing=False, log_retention_days=14, api_reserved_concurrency=20,
                 reconcile_reserved_concurrency=20),
    "prod": Stage("prod", tracing=True, log_retention_days=30, api_reserved_concurrency=100,
                  reconcile_reserved_concurrency=50),
}

ACCOUNT_CONCURRENCY = 1000
"""An account's default Lambda concurrency per region."""
UNRESERVED_MINIMUM = 100
"""Lambda refuses reservations that leave less than this unreserved."""

# Function settings. A reconcile batch keeps 5 s of its timeout back to report (dispatch.py);
# the API timeout stays under API Gateway's 29 s integration limit.
MEMORY_MB = 512  # pyVmomi's import and TLS handshakes are CPU-bound: 512 MB halves cold starts
RECONCILE_TIMEOUT = 60
TICK_TIMEOUT = 30
API_TIMEOUT = 29
SCHEDULE_MINUTES = 1


SECRETS_BY_ROLE = {"api": ("ldap", "redis-auth"), "tick": ("redis-auth",), "reconcile": ("vsphere", "redis-auth")}
"""The Secrets Manager secrets (``vmpool/<stage>/<name>``) each role may read."""
ROLE_OF_SECTION = {"auth": "api", "providers": "reconcile", "dns_configs": "reconcile", "pools": "reconcile"}
"""Which function resolves the secret references of a config section (``redis``: none in AWS,
where the stack gives the Redis URL and its AUTH token's secret)."""


def stack_name(stage: str) -> str:
    """The CloudFormation stack of a stage (the IAM policies name its functions after it)."""
    return f"{APP_NAME}-{stage}"


def environment(stage: Stage) -> dict[str, str]:
    """Environment of every function of the stage (the merge template adds the Redis URL, the
    queue URL and the config bucket, which only the stack knows)."""
    from chalicelib.observability import namespace_for

    return {
        "VMPOOL_CONFIG_FILE": stage.config_file,
        "VMPOOL_RECONCILE_QUEUE_NAME": stage.reconcile_queue_name,
        "VMPOOL_RECONCILE_CONCURRENCY": str(stage.reconcile_reserved_concurrency),
        "VMPOOL_SCHEDULE_MINUTES": str(SCHEDULE_MINUTES),
        "POWERTOOLS_SERVICE_NAME": APP_NAME,
        "POWERTOOLS_METRICS_NAMESPACE": namespace_for(stage.name),
        "POWERTOOLS_LOG_LEVEL": stage.log_level,
        "POWERTOOLS_TRACE_DISABLED": "false" if stage.tracing else "true",
        **stage.extra_environment,
    }


def policy_file(stage: Stage, role: str) -> str:
    return f"policy-{stage.name}-{role}.json"


def stack_settings_file(stage: Stage) -> Path:
    """Settings read from the stage's infrastructure stack, for ``chalice deploy`` (stage_settings.py)."""
    return CHALICE_DIR / f"stack-{stage.name}.json"


SECRETS_KMS_SETTING = "secrets_kms_key_arns"
"""The stack setting (``.chalice/stack-<stage>.json``) listing the infrastructure stack's
``SecretsKmsKeyArns``: the policy files grant them (``policy``)."""


def stack_settings(stage: Stage) -> dict[str, Any]:
    path = stack_settings_file(stage)
    return json.loads(path.read_text()) if path.exists() else {}


def stage_config(stage: Stage, settings: dict[str, Any] | None = None) -> dict[str, Any]:
    """One stage of .chalice/config.json (with the stack's settings for ``chalice deploy``, if any)."""
    from chalicelib.api.conditional import COMPRESS_FROM_BYTES

    functions: dict[str, Any] = {
        API_FUNCTION: {
            "lambda_timeout": API_TIMEOUT,
            "reserved_concurrency": stage.api_reserved_concurrency,
            "iam_policy_file": policy_file(stage, "api"),
        },
        TICK_FUNCTION: {
            "lambda_timeout": TICK_TIMEOUT,
            "reserved_concurrency": stage.tick_reserved_concurrency,
            "iam_policy_file": policy_file(stage, "tick"),
        },
        RECONCILE_FUNCTION: {
            "lambda_timeout": RECONCILE_TIMEOUT,
            "reserved_concurrency": stage.reconcile_reserved_concurrency,
            "iam_policy_file": policy_file(stage, "reconcile"),
        },
    }
    settings = settings or {}
    config: dict[str, Any] = {
        "api_gateway_stage": "api",
        "api_gateway_endpoint_type": "REGIONAL",
        # API Gateway compresses answers of at least this many bytes for callers asking for gzip
        # or deflate: the dashboard's feeds (1.25 MB of history at 1,000 pools), not the small
        # answers vmpooler's clients mostly get (api/conditional.py).
        "minimum_compression_size": COMPRESS_FROM_BYTES,
        "autogen_policy": False,
        "iam_policy_file": policy_file(stage, "reconcile"),
        "lambda_memory_size": MEMORY_MB,
        "lambda_timeout": RECONCILE_TIMEOUT,
        "log_retention_in_days": stage.log_retention_days,
        "xray": stage.tracing,
        "environment_variables": {**environment(stage), **settings.get("environment_variables", {})},
        "tags": {"app": APP_NAME, "stage": stage.name},
        "lambda_functions": functions,
    }
    for key in ("subnet_ids", "security_group_ids"):
        if key in settings:
            config[key] = settings[key]
    return config


def chalice_config(settings_by_stage: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """The whole .chalice/config.json."""
    settings_by_stage = settings_by_stage or {}
    return {
        "version": "2.0",
        "app_name": APP_NAME,
        "stages": {name: stage_config(stage, settings_by_stage.get(name)) for name, stage in STAGES.items()},
    }


def _statement(actions: tuple[str, ...] | list[str], resources: list[str] | str) -> dict[str, Any]:
    return {"Effect": "Allow", "Action": sorted(actions), "Resource": resources}


SECRETS_KMS_SERVICES = ("ssm", "secretsmanager")
"""The services that may use the secrets' customer-managed keys on a function's behalf."""


@dataclass(frozen=True)
class Partition:
    """An AWS partition: its name in ARNs and the domain its services' names end in (what a
    stack's ``${AWS::Partition}`` and ``${AWS::URLSuffix}`` are there)."""

    name: str
    url_suffix: str


def partition_of_region(region: str) -> Partition:
    """The partition of ``region`` (botocore's partition data: ``cn-*`` is ``aws-cn``, whose
    services are ``<service>.<region>.amazonaws.com.cn``; ``us-gov-*`` is ``aws-us-gov``);
    ``aws`` for a region botocore does not know."""
    import botocore.loaders

    for partition in botocore.loaders.create_loader().load_data("partitions")["partitions"]:
        if re.fullmatch(partition["regionRegex"], region) or region in partition.get("regions", {}):
            return Partition(partition["id"], partition["outputs"]["dnsSuffix"])
    return Partition("aws", "amazonaws.com")


def secrets_kms_statement(keys: Any, regions: list[str], in_template: bool = False) -> dict[str, Any]:
    """``kms:Decrypt`` on ``keys`` (the customer-managed KMS keys that encrypt the config's SSM
    SecureString parameters or Secrets Manager secrets) only when SSM or Secrets Manager of one of
    ``regions`` asks on the function's behalf (``kms:ViaService``): without it each read of such a
    secret is refused (AccessDeniedException from KMS). One statement for both deploy paths: the
    stack's (``in_template``: ``keys`` its ``SecretsKmsKeyArns`` parameter, the region
    ``${AWS::Region}``, the domain ``${AWS::URLSuffix}``) and the policy files of ``chalice deploy``
    (the ARNs the infrastructure stack gave, their regions, each region's partition's domain).
    Until 2026-12-07 the domain was always ``amazonaws.com``: in aws-cn, where SSM and Secrets
    Manager are ``<service>.<region>.amazonaws.com.cn``, the condition never held and every read
    of a secret under such a key was refused."""
    if in_template:
        return {"Effect": "Allow", "Action": "kms:Decrypt", "Resource": keys,
                "Condition": {"StringEquals": {"kms:ViaService": [
                    {"Fn::Sub": f"{service}.{region}.${{AWS::URLSuffix}}"}
                    for region in regions for service in SECRETS_KMS_SERVICES]}}}
    services = [f"{service}.{region}.{partition_of_region(region).url_suffix}"
                for region in regions for service in SECRETS_KMS_SERVICES]
    return {"Effect": "Allow", "Action": "kms:Decrypt", "Resource": keys,
            "Condition": {"StringEquals": {"kms:ViaService": services}}}


KMS_KEY_ARN_PATTERN = r"arn:(aws[a-z-]{0,12}):kms:([a-z0-9-]{1,20}):[0-9]{12}:(?:key|alias)/[A-Za-z0-9/_-]{1,64}"
"""A customer-managed KMS key's ARN (or an alias's), each part bounded so the statement that
grants the keys has a largest size (``SECRETS_KMS_RESERVE``). The stack's ``SecretsKmsKeyArns``
parameter takes each member only in this shape (its ``AllowedPattern``)."""
_KMS_ARN = re.compile(KMS_KEY_ARN_PATTERN)
MAX_KMS_KEY_ARN_CHARACTERS = len("arn:aws:kms::000000000000:alias/") + 12 + 20 + 64
MAX_KMS_REGION_CHARACTERS = 20
MAX_SECRETS_KMS_KEYS = 10
"""The most keys ``SecretsKmsKeyArns`` may name (``kms_key_regions``, ``make deploy``)."""


class BadKmsKey(ValueError):
    """A ``SecretsKmsKeyArns`` entry that is not a KMS key or alias ARN, or too many of them."""


def kms_key_regions(keys: list[str], stack_region: str | None = None) -> list[str]:
    """The regions of the KMS keys (in their ARNs): SSM and Secrets Manager use a key of their
    own region only, so these are the ``kms:ViaService`` regions of the statement. Raises
    BadKmsKey for an entry that is no key ARN, or for more than ``MAX_SECRETS_KMS_KEYS``; with
    ``stack_region`` (where the stack is), for a key of another region or partition: the
    functions ask SSM and Secrets Manager of their own region only, which can use no such key.
    Before, such a key (a mistyped region, a copied ARN of another partition) was granted to no
    effect: the reads of the secrets it was meant for were refused (AccessDeniedException), found
    only at the first login or vSphere pass."""
    if len(keys) > MAX_SECRETS_KMS_KEYS:
        raise BadKmsKey(f"{len(keys)} keys; at most {MAX_SECRETS_KMS_KEYS} (the functions' IAM policies keep room "
                        "for that many)")
    regions = []
    for key in keys:
        match = _KMS_ARN.fullmatch(key)
        if match is None:
            raise BadKmsKey(f"{key!r} is not a KMS key ARN (arn:aws:kms:<region>:<account>:key/<id>, "
                            f"at most {MAX_KMS_KEY_ARN_CHARACTERS} characters)")
        partition, region = match.groups()
        if stack_region is not None and (region, partition) != (stack_region, partition_of_region(stack_region).name):
            raise BadKmsKey(f"{key!r} is a key of {region} ({partition}); the stack is in {stack_region} "
                            f"({partition_of_region(stack_region).name}), whose SSM and Secrets Manager use keys of "
                            "their own region only: the functions could never decrypt with it")
        if region not in regions:
            regions.append(region)
    return regions


def _characters(document: Any) -> int:
    """A policy document's size as IAM counts it (whitespace not counted)."""
    return len(json.dumps(document, separators=(",", ":")))


_LONGEST_KMS_REGION = "cn-" + "r" * (MAX_KMS_REGION_CHARACTERS - 5) + "-1"
"""A region as long as a key's ARN may name, in the partition of the longest domain (aws-cn's
``amazonaws.com.cn``)."""
SECRETS_KMS_RESERVE = _characters({"Version": "2012-10-17", "Statement": [secrets_kms_statement(
    ["k" * MAX_KMS_KEY_ARN_CHARACTERS] * MAX_SECRETS_KMS_KEYS, [_LONGEST_KMS_REGION])]})
"""The room every role's policy keeps for the secrets' KMS statement at its largest (the most
keys, each ARN and the region as long as they may be), as a policy document of its own: the full
stack attaches it to each role as one more inline policy (``SecretsKmsDecryptPolicy``, whose keys
are a deploy parameter that packaging cannot know), and IAM counts a role's inline policies
together. Without it a policy just under the limit passed here and the deploy failed minutes in,
in CloudFormation, once keys were named."""


def _stack_arns(stage: Stage) -> dict[str, Any]:
    """The policy files' ARNs of resources the full stack makes (region and account left open, a
    name prefix for the bucket, a suffix for the secret), each as the stack names it exactly."""
    bucket = f"arn:aws:s3:::{stage.config_bucket_prefix}*"
    return {
        f"arn:aws:sqs:*:*:{stage.reconcile_queue_name}": {"Fn::GetAtt": ["ReconcileQueue", "Arn"]},
        bucket: {"Fn::GetAtt": ["ConfigBucket", "Arn"]},
        f"{bucket}/config/*": {"Fn::Sub": "${ConfigBucket.Arn}/config/*"},
        f"arn:aws:secretsmanager:*:*:secret:{stage.secret_prefix}redis-auth-*": {"Ref": "RedisAuthSecret"},
        **{log_group: {"Fn::Sub": log_group.replace("arn:aws:logs:*:*:", _STACK_ACCOUNT_REGION.format("logs"))}
           for log_group in _log_groups(stage)},
    }


_STACK_ACCOUNT_REGION = "arn:${{AWS::Partition}}:{}:${{AWS::Region}}:${{AWS::AccountId}}:"
_FILES_PARTITION = "arn:aws:"


def _in_stack_partition(resource: str) -> Any:
    """A policy file's ARN (``arn:aws:...``, the files are static) in the stack's own partition
    (``${AWS::Partition}``: aws-cn, aws-us-gov), region and account left as the file has them.
    Before, the secrets, SSM parameters and hosted zones the stack's roles grant kept ``arn:aws:``:
    in aws-cn or aws-us-gov they named nothing, and every read of them was refused."""
    if resource.startswith(_FILES_PARTITION):
        return {"Fn::Sub": "arn:${AWS::Partition}:" + resource[len(_FILES_PARTITION):]}
    return resource


def log_group_name(stage: Stage, function_name: str) -> str:
    """The log group a function of the stage writes to, the same in both deploy paths: the name
    Chalice gives the group it makes for ``log_retention_in_days`` (``/aws/lambda/<app>-<stage>-<function>``,
    ``vmpool-dev-api_handler`` for the API too), which each function is told to write to
    (``logging_config``). Known before any function exists, so the full stack creates the group
    first; and within ``_log_groups``, which the roles may write to."""
    return f"/aws/lambda/{stage.prefix}-{function_name}"


LAMBDA_LOG_LEVELS = {"DEBUG": "DEBUG", "INFO": "INFO"}
"""A stage's ``log_level`` (Python's name) -> Lambda's ``ApplicationLogLevel``. Nothing above INFO:
Lambda gives a line without a ``level`` key (the metrics' EMF lines) INFO, and drops it below
the application level, so at WARN no metric would reach CloudWatch."""


def logging_config(stage: Stage) -> dict[str, str]:
    """Every function's ``LoggingConfig`` (Lambda's advanced logging controls) but its log group:
    ``LogFormat`` JSON, so Lambda can filter by level; ``SystemLogLevel`` WARN, which drops Lambda's
    own START, END and REPORT lines of every invocation (about 0.3 KB each); ``ApplicationLogLevel``
    the stage's ``log_level``, because with JSON Powertools takes Lambda's level
    (``AWS_LAMBDA_LOG_LEVEL``) over ``POWERTOOLS_LOG_LEVEL``: left unset it would be INFO whatever the
    stage asks. Powertools' lines are JSON written to stdout, which Lambda passes on unchanged (its
    JSON formatter is the root logger's, which Powertools keeps its records off)."""
    level = LAMBDA_LOG_LEVELS.get(stage.log_level.upper())
    if level is None:
        raise ValueError(f"stage {stage.name}: log_level {stage.log_level!r}; one of {', '.join(LAMBDA_LOG_LEVELS)} "
                         "(above INFO Lambda would drop the metrics' lines, which carry no level)")
    return {"LogFormat": "JSON", "SystemLogLevel": "WARN", "ApplicationLogLevel": level}


def _log_groups(stage: Stage) -> list[str]:
    return [f"arn:aws:logs:*:*:log-group:/aws/lambda/{stage.prefix}-*",
            f"arn:aws:logs:*:*:log-group:/aws/lambda/{stage.prefix}-*:*"]


def stack_policy(stage: Stage, document: dict[str, Any]) -> dict[str, Any]:
    """A role's policy (``policy``) as the full stack grants it (infra/template.py): the resources
    the stack makes named exactly (its reconcile queue, config bucket and Redis AUTH secret; its
    own region's and account's log groups), where the policy files of ``chalice deploy`` leave
    region and account open. The secrets and SSM parameters the config names stay as they are
    (a reference may be an ARN of another region or account)."""
    known = _stack_arns(stage)

    def scoped(resources: Any) -> Any:
        if isinstance(resources, list):
            return [known.get(resource, _in_stack_partition(resource)) if isinstance(resource, str) else resource
                    for resource in resources]
        return resources

    return {**document, "Statement": [{**statement, "Resource": scoped(statement["Resource"])}
                                      for statement in document["Statement"]]}


@dataclass(frozen=True)
class StackPlace:
    """Where a stack's resources are: the values of its pseudo parameters, its Redis AUTH secret's
    ARN (or a pattern of it) and its config bucket's name."""

    partition: str
    region: str
    account: str
    redis_auth_secret: str
    config_bucket: str

    def sub(self, text: str) -> str:
        """``text`` (an ``Fn::Sub`` string) with the stack's pseudo parameters resolved."""
        for name, value in (("${AWS::Partition}", self.partition), ("${AWS::Region}", self.region),
                            ("${AWS::AccountId}", self.account)):
            text = text.replace(name, value)
        return text


def _longest_place(stage: Stage) -> StackPlace:
    """Intrinsic values at their longest, to count a stack policy as IAM will: the longest partition
    (aws-us-gov), a region of 16 characters, an account, a secret's 6-character suffix."""
    partition, region, account = "aws-us-gov", "x" * 16, "0" * 12
    return StackPlace(partition, region, account,
                      f"arn:{partition}:secretsmanager:{region}:{account}:secret:{stage.secret_prefix}redis-auth-XXXXXX",
                      f"{stage.config_bucket_prefix}{account}-{region}")


def _resolved(stage: Stage, value: Any, place: StackPlace) -> Any:
    """``value`` (a stack policy) with its intrinsic functions resolved for a stack at ``place``."""
    if isinstance(value, list):
        return [_resolved(stage, item, place) for item in value]
    if not isinstance(value, dict):
        return value
    bucket = place.sub("arn:${AWS::Partition}:s3:::") + place.config_bucket
    if value == {"Fn::GetAtt": ["ReconcileQueue", "Arn"]}:
        return place.sub(_STACK_ACCOUNT_REGION.format("sqs")) + stage.reconcile_queue_name
    if value == {"Fn::GetAtt": ["ConfigBucket", "Arn"]}:
        return bucket
    if value == {"Ref": "RedisAuthSecret"}:
        return place.redis_auth_secret
    if set(value) == {"Fn::Sub"} and isinstance(value["Fn::Sub"], str):
        return place.sub(value["Fn::Sub"].replace("${ConfigBucket.Arn}", bucket))
    return {key: _resolved(stage, item, place) for key, item in value.items()}


def _at_longest(stage: Stage, value: Any) -> Any:
    """``value`` (a stack policy) with its intrinsic functions resolved to their longest values."""
    return _resolved(stage, value, _longest_place(stage))


class BadStackSettings(ValueError):
    """A stage's stack settings (``.chalice/stack-<stage>.json``) that do not say where its stack is."""


_QUEUE_URL = re.compile(r"https://sqs\.([a-z0-9-]{1,20})\.(amazonaws\.com(?:\.cn)?)/([0-9]{12})/[A-Za-z0-9_-]{1,80}")


def stack_place(stage: Stage, settings: dict[str, Any]) -> StackPlace | None:
    """Where the infrastructure stack of a stage wired for ``chalice deploy`` is (its settings,
    ``stack_settings``: the reconcile queue's URL names its region and account), None for a stage
    not wired. Raises BadStackSettings for a queue URL that does not."""
    variables = settings.get("environment_variables", {})
    url = variables.get("VMPOOL_RECONCILE_QUEUE_URL")
    if url is None:
        return None
    match = _QUEUE_URL.fullmatch(url)
    if match is None:
        raise BadStackSettings(f"{stack_settings_file(stage).name}: VMPOOL_RECONCILE_QUEUE_URL {url[:200]!r} is not "
                               "an SQS queue URL (https://sqs.<region>.amazonaws.com/<account>/<name>): the policy "
                               "files could not name the stack's resources exactly")
    region, domain, account = match.groups()
    stack_partition = partition_of_region(region)
    partition, suffix = stack_partition.name, stack_partition.url_suffix
    if domain != suffix:
        # SQS's host in a region is in its partition's domain only (sqs.cn-north-1.amazonaws.com.cn);
        # before, either domain passed for any region, and a URL no queue has was deployed.
        raise BadStackSettings(f"{stack_settings_file(stage).name}: VMPOOL_RECONCILE_QUEUE_URL {url[:200]!r} names "
                               f"{domain}, but {region} is in {partition}, whose queues are "
                               f"https://sqs.{region}.{suffix}/<account>/<name>")
    secret = variables.get("VMPOOL_REDIS_AUTH_SECRET", "")
    if not secret.startswith(f"arn:{partition}:secretsmanager:{region}:{account}:secret:"):
        # A name: its ARN ends in a dash and six characters Secrets Manager chose.
        secret = f"arn:{partition}:secretsmanager:{region}:{account}:secret:{stage.secret_prefix}redis-auth-??????"
    bucket = variables.get("VMPOOL_CONFIG_BUCKET") or f"{stage.config_bucket_prefix}{account}-{region}"
    return StackPlace(partition, region, account, secret, bucket)


def policy(stage: Stage, role: str, kms_keys: list[str] | None = None, zones: list[str] | None = None,
           place: StackPlace | None = None) -> dict[str, Any]:
    """The IAM policy of one role ("api", "tick" or "reconcile") of a stage; with ``kms_keys``
    (the ``chalice deploy`` path: the infrastructure stack's ``SecretsKmsKeyArns``), the
    statement that lets it decrypt secrets under them (``secrets_kms_statement``). ``zones``:
    the stage's ``route53_zones`` when the caller has them (None: read from its config file).

    Without ``place``, ARNs name this stage's resources with the region and account left open:
    the policy files of a stage not wired for ``chalice deploy``, which the full stack scopes to
    its own (``stack_policy``; the stack must be named ``vmpool-<stage>``: Lambda names start
    with it). With ``place`` (``stack_place``: a stage wired to its infrastructure stack), the
    policy the full stack would grant, resolved for that stack: its queue, config bucket, Redis
    AUTH secret and log groups by their exact ARNs, everything in its partition. Until
    2026-12-07 ``chalice deploy`` gave its roles the open ARNs: a dev stage's functions could
    receive and delete the reconcile messages and read the config and Redis AUTH token of the
    account's dev stage in any other region.
    """
    prefix = stage.secret_prefix
    queue = f"arn:aws:sqs:*:*:{stage.reconcile_queue_name}"
    secrets = SECRETS_BY_ROLE[role]
    statements = [
        _statement(LOG_ACTIONS, _log_groups(stage)),
        _statement(ENI_ACTIONS, "*"),
        _statement(["secretsmanager:GetSecretValue"],
                   [f"arn:aws:secretsmanager:*:*:secret:{prefix}{name}-*" for name in secrets]),
        _statement(["ssm:GetParameter"], [f"arn:aws:ssm:*:*:parameter/{prefix}*"]),
        _statement(["s3:GetObject"], [f"arn:aws:s3:::{stage.config_bucket_prefix}*/config/*"]),
        # So S3 answers 404 NoSuchKey for a config object not pushed yet: without the right to
        # list the bucket it answers 403 AccessDenied, which reads as a role that may not read it.
        _statement(["s3:ListBucket"], [f"arn:aws:s3:::{stage.config_bucket_prefix}*"]),
        _statement(["sqs:SendMessage"], [queue]),
    ]
    if role == "reconcile":
        statements.append(_statement(["sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:GetQueueAttributes"], [queue]))
    zones = route53_zones(stage) if zones is None else zones
    if role == "reconcile" and zones:
        statements.append(_statement(["route53:ChangeResourceRecordSets", "route53:ListResourceRecordSets"],
                                     [f"arn:aws:route53:::hostedzone/{zone}" for zone in zones]))
    if stage.tracing:
        statements.append(_statement(XRAY_ACTIONS, "*"))
    document = {"Version": "2012-10-17", "Statement": statements}
    if place is not None:
        document = _resolved(stage, stack_policy(stage, document), place)
        statements = document["Statement"]
    size = _characters(document) + SECRETS_KMS_RESERVE
    if not kms_keys and place is None:  # the full stack's roles: its exact ARNs are longer than the files'
        size = max(size, _characters(_at_longest(stage, stack_policy(stage, document))) + SECRETS_KMS_RESERVE)
    if kms_keys:  # the chalice deploy path: the statement in this document, a region per key at most
        regions = kms_key_regions(sorted(kms_keys), place.region if place else None)
        statements.append(secrets_kms_statement(sorted(kms_keys), regions))
        size = max(size, _characters({"Version": "2012-10-17", "Statement": statements}))
    if size > MAX_INLINE_POLICY_CHARACTERS:
        raise PolicyTooLarge(
            f"the {role} role's IAM policy of stage {stage.name} would be {size} characters with the room kept for "
            f"the secrets' KMS statement ({SECRETS_KMS_RESERVE}: up to {MAX_SECRETS_KMS_KEYS} SecretsKmsKeyArns); "
            f"IAM takes at most {MAX_INLINE_POLICY_CHARACTERS} per role ({len(zones)} route53 hosted zones in "
            f"{stage.config_file}: use fewer zones, e.g. one zone for several dns_configs entries)")
    return {"Version": "2012-10-17", "Statement": statements}


def load_config(config_file: Path) -> Config:
    """A config file loaded as packaging and ``make run`` load it (``extra_config`` files from its
    folder). Raises ConfigError. At 2,000 pools a load takes a second or more: load a file once
    and hand the config to the functions below."""
    from chalicelib import config as config_module

    return config_module.load({config_module.CONFIG_FILE_ENV: str(config_file)})


def route53_zones(stage: Stage, config: Config | None = None) -> list[str]:
    """The hosted zones the stage's ``route53`` DNS entries manage (the reconcile passes change
    their records, docs/dns.md). Read from the stage's packaged config file (or ``config``):
    IAM is deployed with the code, so a pushed config that names a new zone needs a deploy too."""
    return sorted({
        str(getattr(entry.settings, "hosted_zone_id", "")).split("/")[-1]
        for entry in dns_entries(stage, config) if entry.dns_class == "route53"
    })


def dns_entries(stage: Stage, config: Config | None = None, used_only: bool = False) -> list[DnsConfig]:
    """The ``:dns_configs:`` entries of the stage's packaged config file (or of ``config``);
    with ``used_only``, those some pool names in ``dns_plugin``."""
    config = config or load_config(ROOT / stage.config_file)
    used = {pool.dns_plugin for pool in config.pools}
    return [entry for name, entry in config.dns_configs.items() if not used_only or name in used]


VCENTER_PORT = 443
"""The one port the functions' security group opens to ``VCenterCidr`` (infra/template.yaml)."""


def ldap_server(config: Config) -> tuple[str, int] | None:
    """The LDAP server the API logs users in against (host, port), None without LDAP auth. The
    functions reach it through the stack's ``LdapCidr`` on ``LdapPort`` only."""
    auth = config.auth
    if auth is None or auth.provider != "ldap" or auth.ldap is None:
        return None
    return auth.ldap.host, int(auth.ldap.port)


def vcenters(config: Config) -> list[tuple[str, str, int]]:
    """(provider block, host, port) of each vSphere provider some pool uses: the functions reach
    vCenter through the stack's ``VCenterCidr`` on 443 only."""
    from chalicelib.providers.vsphere.config import split_host_port

    used = {pool.provider for pool in config.pools}
    found = []
    for name, provider in sorted(config.providers.items()):
        server = getattr(provider.settings, "server", None)
        if provider.provider_class == "vsphere" and name in used and server:
            found.append((name, *split_host_port(server, getattr(provider.settings, "port", None))))
    return found


def tcp_ready_ports(config: Config) -> dict[int, list[str]]:
    """The ports vSphere pools check their new VMs' readiness on over TCP (``ready_check: tcp``,
    the default), each with its pools: the functions reach the guests in the stack's
    ``GuestCidr`` on ``GuestReadyPort`` only."""
    from chalicelib.providers.vsphere.config import vsphere_settings

    found: dict[int, list[str]] = {}
    for pool in config.pools:
        provider = config.providers.get(pool.provider)
        if provider is None or provider.provider_class != "vsphere":
            continue
        settings = vsphere_settings(provider.settings).for_pool(pool.settings)
        if (settings.ready_check or "tcp") == "tcp":
            found.setdefault(int(settings.ready_port or 22), []).append(pool.name)
    return found


def vcenters_on_other_ports(config: Config) -> list[str]:
    """The vSphere providers of ``config`` on a port the stack never opens (``providers.<name>:
    <host> port <port>``): every pass of their pools would time out connecting."""
    return [f"providers.{name}: vCenter {host} port {port}" for name, host, port in vcenters(config)
            if port != VCENTER_PORT]


def ungranted_zones(stage: Stage, config: Config) -> list[str]:
    """The route53 hosted zones ``config`` names that the stage's policy files do not grant
    (they grant the zones of the stage's own config file): packaged in its place, the config's
    DNS records would fail to publish (AccessDenied) on every pass."""
    return sorted(set(route53_zones(stage, config)) - set(route53_zones(stage)))


def unreadable_secrets(stage: Stage, config: Config) -> list[str]:
    """The secret references of ``config`` the function that resolves them may not read in
    the stage (its IAM policy, ``policy``), each as ``<key path>: <where>``. Deployed, each would
    fail with AccessDenied at every use: a provider's on every pass of its pools, the LDAP one
    at every login (vmpool.yaml.example and docs/auth.md showed such names)."""
    found = []
    for path, reference in _secret_references(config, "", set()):
        role = ROLE_OF_SECTION.get(path.split(".")[0].split("[")[0])
        if role and not _readable(stage, role, reference.store, reference.name):
            own = ", ".join(stage.secret_prefix + name for name in SECRETS_BY_ROLE[role] if name != "redis-auth")
            found.append(f"{path}: {reference.describe()} (the {role} function may read {own} and SSM "
                         f"parameters under /{stage.secret_prefix})")
    return found


def ssm_references(config: Config) -> list[str]:
    """The key paths of ``config``'s SSM parameter references (``{ssm: ...}``) a function
    resolves: not the ``redis`` section's (the stack gives Redis's URL and token), nor those of DNS
    entries no pool uses. The functions reach SSM through a NAT gateway or the stack's SSM
    endpoint (``CreateSsmEndpoint``) only: the stack's other endpoints do not serve it."""
    used = {pool.dns_plugin for pool in config.pools}
    found = []
    for path, reference in _secret_references(config, "", set()):
        section = path.split(".")[0].split("[")[0]
        if reference.store != "ssm" or section not in ROLE_OF_SECTION:
            continue
        if section == "dns_configs" and not any(path.startswith(f"dns_configs.{name}.") for name in used if name):
            continue
        found.append(path)
    return found


def _readable(stage: Stage, role: str, store: str, name: str) -> bool:
    """What ``policy`` grants: the role's secrets by name or ARN, SSM parameters under the prefix."""
    if store == "ssm":
        return (name.split(":parameter/", 1)[-1] if name.startswith("arn:") else name).lstrip("/").startswith(
            stage.secret_prefix)
    if name.startswith("arn:"):
        name = name.split(":secret:", 1)[-1]
    return any(name == stage.secret_prefix + own or (name.startswith(stage.secret_prefix + own + "-")
                                                    and len(name) == len(stage.secret_prefix + own) + 7)
               for own in SECRETS_BY_ROLE[role])


def _secret_references(value: Any, path: str, seen: set[int]) -> Iterator[tuple[str, SecretReference]]:
    """Every secret reference in a loaded config, with its key path (validated settings blocks
    are dataclasses, mappings and tuples)."""
    from chalicelib.auth.secrets import SecretReference

    return config_walk.values_of_type(SecretReference, value, path, seen)


def rendered_files() -> dict[Path, str]:
    """Every file this module owns, path -> content."""
    settings = {name: stack_settings(stage) for name, stage in STAGES.items()}
    files = {CHALICE_DIR / "config.json": _dump(chalice_config(settings))}
    zones: dict[str, list[str]] = {}  # per config file: each is loaded once, whatever its stages and roles
    for stage in STAGES.values():
        if stage.config_file not in zones:
            zones[stage.config_file] = route53_zones(stage)
        for role in ROLES:
            files[CHALICE_DIR / policy_file(stage, role)] = _dump(
                policy(stage, role, settings[stage.name].get(SECRETS_KMS_SETTING), zones[stage.config_file],
                       stack_place(stage, settings[stage.name])))
    return files


def _dump(document: dict[str, Any]) -> str:
    return json.dumps(document, indent=2) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="fail if the files are out of date")
    parser.add_argument("--granted", nargs=2, metavar=("STAGE", "CONFIG_FILE"),
                        help="fail if CONFIG_FILE names route53 zones STAGE's policy does not grant or a vCenter on a "
                             "port the stack does not open, warn of secrets it may not read (packaging)")
    args = parser.parse_args(argv)
    if args.granted:
        stage_name, config_file = args.granted
        if stage_name not in STAGES:
            parser.error(f"unknown stage {stage_name}")
        from chalicelib.config import ConfigError

        try:
            given = load_config(Path(config_file))
            missing = ungranted_zones(STAGES[stage_name], given)
            unreadable = unreadable_secrets(STAGES[stage_name], given)
            other_ports = vcenters_on_other_ports(given)
        except ConfigError as error:
            print(f"sync_config: {error}", file=sys.stderr)
            return 1
        if unreadable:
            # A warning, not a refusal: both stages package one file (chalicelib/vmpool.yaml), whose
            # secrets can be one stage's only; the packaged config is used until the first push,
            # and make config-push refuses such references.
            print(f"sync_config: warning: {config_file} names secrets the {stage_name} stage's functions may not "
                  "read (IAM refuses them at every use): packaged, they fail until make config-push publishes a "
                  "config naming readable ones:\n  " + "\n  ".join(unreadable), file=sys.stderr)
        if missing:
            more = f" and {len(missing) - 10} more" if len(missing) > 10 else ""
            print(f"sync_config: {config_file} names route53 hosted zones the {stage_name} stage's IAM policy does "
                  f"not grant: {', '.join(missing[:10])}{more}. The policy grants the zones of "
                  f"{STAGES[stage_name].config_file}: put the config there and run python -m infra.sync_config",
                  file=sys.stderr)
            return 1
        if other_ports:
            print(f"sync_config: {config_file} names vCenters on a port the stack never opens (its functions reach "
                  f"VCenterCidr on {VCENTER_PORT} only, docs/deploy.md, Prerequisites): every pass of their pools "
                  "would time out connecting:\n  " + "\n  ".join(other_ports), file=sys.stderr)
            return 1
        return 0
    try:
        files = rendered_files()
    except (PolicyTooLarge, BadKmsKey, BadStackSettings) as error:
        print(f"sync_config: {error}", file=sys.stderr)
        return 1
    stale = []
    for path, content in files.items():
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
