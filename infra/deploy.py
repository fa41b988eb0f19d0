"""Deploy a packaged stage through S3 and a CloudFormation change set (infra/deploy.sh runs it).

    python -m infra.deploy --stage prod --bucket my-deploy-bucket [--package build/package-prod] Key=Value ...
    python -m infra.deploy --stage prod --bucket my-deploy-bucket --infra-only Key=Value ...   (chalice deploy path)

1. The deployment zip goes to ``s3://BUCKET/vmpool/<stage>/code-<sha256>.zip`` (skipped when that
   content is there already) and every function's ``CodeUri`` points at it.
2. The template goes to S3 too: at 137 KB it is over CloudFormation's 51,200-byte inline limit
   (the old ``aws cloudformation deploy`` without ``--s3-bucket`` failed for every stage).
   Before anything is uploaded, the template's rules (what the packaged config's DNS entries and
   SSM references need of the parameters, infra/template.py ``network_rules``) are checked with
   the parameters the change set would get: a broken one ends the command with its description.
3. A change set creates or updates the stack ``vmpool-<stage>``: parameters given as Key=Value,
   the others keep their previous values on an update. A change set without changes is deleted
   and the command succeeds. The stack's outputs are printed at the end. A stack whose first
   create was rolled back (ROLLBACK_COMPLETE) cannot be updated: the command says to delete it.
4. Once the stack is updated, the stage's code zips and templates in the bucket but the newest
   ``--keep`` (default KEEP_UPLOADS) are deleted, never the ones the stack now uses.

AWS credentials and region come from the environment as for the AWS CLI (``AWS_ENDPOINT_URL``
too: the tests deploy to a moto server).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import secrets
import sys
import time
from pathlib import Path
from typing import Any, Callable

from chalicelib.aws_clients import failure_of
from infra.sync_config import (
    STAGES,
    UNRESERVED_MINIMUM,
    BadKmsKey,
    Stage,
    kms_key_regions,
    partition_of_region,
    stack_name,
)

CAPABILITIES = ["CAPABILITY_IAM", "CAPABILITY_AUTO_EXPAND"]
NO_CHANGES = ("didn't contain changes", "No updates are to be performed")
KMS_KEYS_PARAMETER = "SecretsKmsKeyArns"
KEEP_UPLOADS = 5
"""Code zips (4.8 MB each) and templates of a stage a deploy leaves in the bucket, the newest:
every deploy of new code added one, kept for good. The ones before the current release stay
for a rollback (``make deploy`` of a previous tag finds its zip there)."""
UPLOAD_KINDS = ("code-", "template-")
"""The stage's uploads under ``vmpool/<stage>/``, by name prefix (deploy() names them)."""


class DeployError(Exception):
    pass


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:20]


def upload(s3: Any, bucket: str, key: str, data: bytes) -> None:
    """Put ``data`` at ``key`` unless an object is there already (keys are content hashes)."""
    try:
        s3.head_object(Bucket=bucket, Key=key)
        return
    except Exception:  # noqa: BLE001 - any miss (404, 403 on a missing key) means upload
        pass
    s3.put_object(Bucket=bucket, Key=key, Body=data)


def template_url(s3: Any, bucket: str, key: str) -> str:
    """The uploaded template's URL for CloudFormation, in the domain of the region's partition:
    until 2026-12-07 always ``amazonaws.com``, so in aws-cn (``s3.<region>.amazonaws.com.cn``)
    ``make deploy`` gave CloudFormation an S3 host of another partition and its change set failed."""
    region = s3.meta.region_name or "us-east-1"
    host = "s3.amazonaws.com" if region == "us-east-1" else f"s3.{region}.{partition_of_region(region).url_suffix}"
    return f"https://{bucket}.{host}/{key}"


def with_code_location(template: dict[str, Any], bucket: str, key: str) -> dict[str, Any]:
    """The template with every function's code in S3 (what `aws cloudformation package` does)."""
    for resource in template["Resources"].values():
        if resource.get("Type") == "AWS::Serverless::Function":
            resource["Properties"]["CodeUri"] = {"Bucket": bucket, "Key": key}
    return template


def parameters(given: dict[str, str], existing: list[str]) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = [{"ParameterKey": k, "ParameterValue": v} for k, v in sorted(given.items())]
    found += [{"ParameterKey": k, "UsePreviousValue": True} for k in existing if k not in given]
    return found


def _evaluate(expression: Any, values: dict[str, str]) -> Any:
    """A rule's condition or assertion over the parameters' values (what infra/template.py
    writes: Ref, Fn::Equals, Fn::Not, Fn::And, Fn::Or)."""
    if isinstance(expression, dict) and len(expression) == 1:
        (function, argument), = expression.items()
        if function == "Ref":
            return values.get(argument, "")
        if function == "Fn::Equals":
            left, right = (_evaluate(item, values) for item in argument)
            return str(left) == str(right)
        if function == "Fn::Not":
            return not _evaluate(argument[0], values)
        if function == "Fn::And":
            return all(_evaluate(item, values) for item in argument)
        if function == "Fn::Or":
            return any(_evaluate(item, values) for item in argument)
    return expression


def broken_rules(template: dict[str, Any], given: dict[str, str], stack: dict[str, Any] | None) -> list[str]:
    """The template's rules the parameters would break (their descriptions): given values, else
    the stack's previous ones, else the defaults. CloudFormation refuses such a change set too;
    asking first says why in one line instead of a failed change set."""
    values = {name: str(p.get("Default", "")) for name, p in template.get("Parameters", {}).items()}
    values.update({p["ParameterKey"]: p.get("ParameterValue", "") for p in (stack or {}).get("Parameters", [])})
    values.update(given)
    broken = []
    for rule in template.get("Rules", {}).values():
        if "RuleCondition" in rule and not _evaluate(rule["RuleCondition"], values):
            continue
        broken += [str(a.get("AssertDescription", a["Assert"])) for a in rule.get("Assertions", [])
                   if not _evaluate(a["Assert"], values)]
    return broken


def check_kms_keys(given: dict[str, str], region: str) -> None:
    """Refuse a ``SecretsKmsKeyArns`` the functions' IAM policies keep no room for (more than
    ``sync_config.MAX_SECRETS_KMS_KEYS`` keys, or not key ARNs), or that names a key of another
    region or partition than the stack's (``region``: the functions' SSM and Secrets Manager could
    never use it), before anything is uploaded: CloudFormation checks each key's shape (the
    parameter's pattern, the same in every region) but not how many there are nor where they are;
    too many took a role past IAM's limit only when the stack updated its policies, and a key of
    another region or partition was granted to no effect (a mistyped region: the reads of the
    secrets were refused at the first login or pass, AccessDeniedException)."""
    if KMS_KEYS_PARAMETER not in given:
        return  # the stack's previous value, checked when it was given
    keys = [key.strip() for key in given[KMS_KEYS_PARAMETER].split(",") if key.strip()]
    try:
        kms_key_regions(keys, region)
    except BadKmsKey as error:
        raise DeployError(f"{KMS_KEYS_PARAMETER}: {error}") from None


def check_concurrency(session: Any, stage: Stage) -> None:
    """Refuse, before anything is uploaded, a first deploy of ``stage`` into an account whose
    Lambda concurrency cannot hold the functions' reservations (``Stage.reserved_concurrency``)
    beside the ``UNRESERVED_MINIMUM`` Lambda keeps unreserved. New accounts start with a quota far
    below the usual 1,000 (10 or 50): the create then failed at the functions, after ElastiCache's
    15 minutes, and rolled the whole stack back. What cannot be asked (no permission for
    GetAccountSettings, an endpoint without it) is not checked: CloudFormation still refuses."""
    try:
        limits = session.client("lambda").get_account_settings()["AccountLimit"]
        unreserved = int(limits["UnreservedConcurrentExecutions"])
        quota = int(limits["ConcurrentExecutions"])
    except Exception as error:  # any failure to ask: not checked (a bug of ours is raised)
        if failure_of(error) is None and not isinstance(error, (KeyError, TypeError, ValueError)):
            raise
        return
    if unreserved - stage.reserved_concurrency < UNRESERVED_MINIMUM:
        raise DeployError(
            f"the {stage.name} stage's functions reserve {stage.reserved_concurrency} concurrent executions and "
            f"Lambda keeps {UNRESERVED_MINIMUM} unreserved; this account's Lambda concurrency is {quota} "
            f"({unreserved} unreserved): the create would fail and roll back. Ask Service Quotas for 'Concurrent "
            f"executions' of at least {stage.reserved_concurrency + UNRESERVED_MINIMUM + quota - unreserved}")


PACKAGED_PARAMETER = "VpcId"
"""A parameter of the stage's merged template (infra/template.yaml): a template without it is
Chalice's own, which has none of the stack's infrastructure."""


def refuse_what_package_sh_did_not_build(package: Path, stage: str) -> None:
    """Refuse, before anything is uploaded, a ``--package`` folder that is not the stage's package
    (``infra/package.sh``, which ``make package`` and ``make deploy`` run): missing, or a plain
    ``chalice package`` output. Chalice's own template has no VPC, Redis, queue or config bucket,
    and its zip carries the AWS SDK, pydantic and the config as written (a secret inline too) for
    the Python that ran it. Before, such a folder was refused for its first parameter
    (``VpcId is no parameter of the stack (its parameters: ;``), or, given none, deployed:
    functions outside the VPC with no Redis to reach."""
    build = f"infra/package.sh {stage} {package} (make package STAGE={stage} builds build/package)"
    missing = [name for name in ("sam.json", "deployment.zip") if not (package / name).is_file()]
    if missing:
        raise DeployError(f"{package} holds no {' or '.join(missing)}: it is not a packaged stage; build it with "
                          f"{build}")
    try:
        declared = json.loads((package / "sam.json").read_text()).get("Parameters") or {}
    except ValueError:
        declared = {}
    if PACKAGED_PARAMETER not in declared:
        raise DeployError(f"{package} is a plain `chalice package` output (its template has no {PACKAGED_PARAMETER} "
                          "parameter: none of the stack's VPC, Redis, queue or config bucket), not the stage's "
                          f"package; build it with {build}, which runs chalice package with the stack merged in and "
                          "slims the zip")


def refuse_values_not_allowed(template: dict[str, Any], given: dict[str, str]) -> None:
    """Refuse, before anything is uploaded, a given parameter the template does not have (a
    typo) or a value its declaration refuses: outside ``AllowedValues`` (``RedisMinReplicaAcks=2``:
    the stack's Redis has one replica, and every checkout would wait for a second and answer 503),
    ``MinValue``/``MaxValue`` (``PoolEmptyMinutes=2000``) or ``AllowedPattern`` (each member of a
    list). CloudFormation refuses them too, but only once the package is uploaded."""
    declared = template.get("Parameters", {})
    for key, value in sorted(given.items()):
        if key not in declared:
            raise DeployError(f"{key} is no parameter of the stack (its parameters: {', '.join(sorted(declared))}; "
                              "docs/deploy.md, \"Parameters\")")
        problem = _refused_value(declared[key], value)
        if problem:
            raise DeployError(f"{key}={value!r} {problem}: {declared[key].get('Description', '')}".rstrip(": "))


def _refused_value(declaration: dict[str, Any], value: str) -> str:
    """Why a parameter's declaration refuses ``value`` ("" when it takes it)."""
    allowed = declaration.get("AllowedValues")
    if allowed is not None and value not in [str(item) for item in allowed]:
        return "is not one of " + ", ".join(repr(str(item)) for item in allowed)
    if declaration.get("Type") == "Number" and ("MinValue" in declaration or "MaxValue" in declaration):
        try:
            number = float(value)
        except ValueError:
            return "is not a number"
        low, high = declaration.get("MinValue"), declaration.get("MaxValue")
        if (low is not None and number < float(low)) or (high is not None and number > float(high)):
            return f"is outside {low if low is not None else '...'} to {high if high is not None else '...'}"
    pattern = declaration.get("AllowedPattern")
    if pattern is not None:
        listed = str(declaration.get("Type", "")).startswith(("List<", "CommaDelimited"))
        for member in [item.strip() for item in value.split(",")] if listed else [value]:
            if re.fullmatch(pattern, member) is None:
                return f"does not match {pattern}" + (f" ({member!r})" if listed else "")
    return ""


def left_behind_secrets(session: Any, stage: Stage) -> list[str]:
    """The stage's Secrets Manager secrets (``vmpool/<stage>/...``, which the stack creates) that
    exist already, each as ``<name> (scheduled for deletion on <date>)`` or ``<name> (exists)``.
    Secrets Manager creates no secret of a name another secret holds, and a deleted secret holds
    its name for its whole recovery window (7 to 30 days; 30 unless its deleter said otherwise):
    a stage deleted and created again within it, or whose secrets were deleted by hand, failed
    at the secrets minutes into the create and rolled back to ROLLBACK_COMPLETE. What cannot be
    asked (no secretsmanager:DescribeSecret) is not checked: CloudFormation still refuses."""
    client = session.client("secretsmanager")
    found = []
    for logical_name in SECRET_NAMES:
        name = stage.secret_prefix + logical_name
        try:
            described = client.describe_secret(SecretId=name)
        except Exception as error:  # ResourceNotFoundException (the create can make it), or not asked
            if failure_of(error) is None and not isinstance(error, (KeyError, TypeError)):
                raise
            continue
        if described.get("Name", name) != name:
            continue  # a partial-ARN match of another secret, not this name
        deleted = described.get("DeletedDate")
        found.append(f"{name} (scheduled for deletion on {deleted:%Y-%m-%d})" if hasattr(deleted, "strftime")
                     else f"{name} (scheduled for deletion)" if deleted else f"{name} (exists)")
    return found


SECRET_NAMES = ("redis-auth", "vsphere", "ldap")
"""The secrets the stack creates, ``vmpool/<stage>/<name>`` (infra/template.py)."""


def refuse_secrets_left_behind(session: Any, stage: Stage) -> None:
    """Refuse, before anything is uploaded, to create the stack while a secret of its names
    exists or waits out its recovery window (``left_behind_secrets``), saying what to do."""
    found = left_behind_secrets(session, stage)
    if not found:
        return
    names = " ".join(entry.split(" ", 1)[0] for entry in found)
    keep = (" To keep a password you set, first restore-secret and get-secret-value it" if "scheduled" in str(found)
            else " To keep a password you set, first get-secret-value it")
    raise DeployError(
        f"the stack {stack_name(stage.name)} creates secrets whose names Secrets Manager holds: {', '.join(found)}; a "
        f"deleted secret keeps its name until its recovery window ends (7 to 30 days), so the create would fail and "
        f"roll back.{keep}, then delete them for good and deploy again (docs/deploy.md, \"Deleting a stage\"): for s "
        f"in {names}; do aws secretsmanager delete-secret --secret-id $s --force-delete-without-recovery; done")


def config_bucket_name(stage: Stage, account: str, region: str) -> str:
    """The stage's config bucket as the stack names it (infra/template.py): bucket names are
    global, so the account and region are part of it."""
    return f"{stage.config_bucket_prefix}{account}-{region}"


def refuse_a_config_bucket_left_behind(session: Any, stage: Stage, region: str) -> None:
    """Refuse, before anything is uploaded, to create the stack when its config bucket already
    exists: the stack keeps the bucket when it is deleted (``DeletionPolicy: Retain``, it holds
    the pushed configs and their versions), and CloudFormation creates no bucket of a name that
    exists. So a stage deleted and deployed again failed at the bucket, minutes into the create
    (ElastiCache's creation under way), and rolled the whole stack back to ROLLBACK_COMPLETE.
    What cannot be asked (no permission for sts:GetCallerIdentity or s3:ListBucket, a 403 on a
    bucket of another owner) is not checked: CloudFormation still refuses."""
    try:
        account = str(session.client("sts").get_caller_identity()["Account"])
        bucket = config_bucket_name(stage, account, region)
        session.client("s3").head_bucket(Bucket=bucket)
    except Exception as error:  # a 404 (no such bucket: the create can make it) or not asked
        if failure_of(error) is None and not isinstance(error, (KeyError, TypeError)):
            raise
        return
    raise DeployError(
        f"the config bucket {bucket} exists: it is kept when the stack {stack_name(stage.name)} is deleted "
        f"(it holds the configs pushed to it) and CloudFormation creates no bucket of a name that exists, so the "
        f"create would fail and roll back. Keep the config you need (aws s3 cp s3://{bucket}/config/vmpool.yaml "
        f"pushed-config.json), delete the bucket with every object version (docs/deploy.md, \"Deleting a stage\"), "
        f"deploy again, then push the config")


def _existing_stack(cloudformation: Any, name: str) -> dict[str, Any] | None:
    try:
        stacks = cloudformation.describe_stacks(StackName=name)["Stacks"]
    except Exception as error:
        if "does not exist" in str(error):
            return None
        raise
    stack = stacks[0] if stacks else None
    if stack is not None and stack["StackStatus"] == "REVIEW_IN_PROGRESS":
        return None  # a change set was created but never executed: create again
    return stack


def refuse_a_stack_never_created(stack: dict[str, Any] | None, name: str) -> None:
    """A stack whose first create failed and was rolled back (ROLLBACK_COMPLETE) takes no
    change set: CloudFormation's refusal ("... is in ROLLBACK_COMPLETE state and can not be
    updated") said nothing of what to do. It holds nothing but its events: delete it."""
    if stack is not None and stack["StackStatus"] == "ROLLBACK_COMPLETE":
        raise DeployError(
            f"{name} is in ROLLBACK_COMPLETE (its first create failed: the reason is in its events) and can "
            f"never be updated; delete it, then deploy again: aws cloudformation delete-stack --stack-name {name}")


def change_set_name(stack: str) -> str:
    """A name no other deploy of the stage takes: the time to the second and a random part
    (two deploys started within one second had the same name, and the second failed)."""
    return f"{stack}-{time.strftime('%Y%m%d%H%M%S')}-{secrets.token_hex(4)}"


def prune_uploads(s3: Any, bucket: str, prefix: str, keep: int, in_use: set[str]) -> list[str]:
    """Delete the stage's uploads (``prefix``: ``vmpool/<stage>``) of each kind but the ``keep``
    newest and those ``in_use``; the keys deleted."""
    deleted = []
    for kind in UPLOAD_KINDS:
        found = [item for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=f"{prefix}/{kind}")
                 for item in page.get("Contents", [])]
        found.sort(key=lambda item: (item["LastModified"], item["Key"]), reverse=True)
        deleted += [item["Key"] for item in found[keep:] if item["Key"] not in in_use]
    for start in range(0, len(deleted), 1000):  # DeleteObjects takes 1,000 keys a call
        s3.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": key} for key in deleted[start:start + 1000]],
                                                 "Quiet": True})
    return deleted


def _wait(describe: Callable[[], dict[str, Any]], key: str, done: Callable[[str], bool],
          timeout: float, poll: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        answer = describe()
        if done(str(answer[key])):
            return answer
        if time.monotonic() > deadline:
            raise DeployError(f"still {answer[key]} after {timeout:.0f} s")
        time.sleep(poll)


def deploy(session: Any, stage: str, bucket: str, package: Path | None, given: dict[str, str],
           timeout: float = 3600, poll: float = 5, execute: bool = True, keep: int = KEEP_UPLOADS) -> dict[str, str]:
    """Upload, create and execute the change set; returns the stack's outputs. Without a
    ``package``, the infra-only stack of the ``chalice deploy`` path (infra.template). Once the
    stack is updated, the stage's uploads but the ``keep`` newest are deleted."""
    s3 = session.client("s3")
    cloudformation = session.client("cloudformation")
    prefix = f"vmpool/{stage}"
    code: bytes | None = None
    if package is None:
        from infra.template import build

        template = build(STAGES[stage], infra_only=True)
    else:
        refuse_what_package_sh_did_not_build(package, stage)
        code = (package / "deployment.zip").read_bytes()
        code_key = f"{prefix}/code-{_digest(code)}.zip"
        template = with_code_location(json.loads((package / "sam.json").read_text()), bucket, code_key)
    check_kms_keys(given, cloudformation.meta.region_name)
    refuse_values_not_allowed(template, given)
    name = stack_name(stage)
    stack = _existing_stack(cloudformation, name)
    refuse_a_stack_never_created(stack, name)
    broken = broken_rules(template, given, stack)
    if broken:
        raise DeployError("; ".join(broken))
    if stack is None:  # an update keeps the bucket and the reservations the stack has
        refuse_a_config_bucket_left_behind(session, STAGES[stage], cloudformation.meta.region_name)
        refuse_secrets_left_behind(session, STAGES[stage])
        if package is not None:
            check_concurrency(session, STAGES[stage])
    if code is not None:
        upload(s3, bucket, code_key, code)
    body = json.dumps(template, separators=(",", ":")).encode()
    template_key = f"{prefix}/template-{_digest(body)}.json"
    upload(s3, bucket, template_key, body)

    # The stack's parameters this template still declares: a previous value passed for one it
    # does not (a release that removed it, a rollback to a release before it was added) makes
    # CloudFormation refuse the change set ("Parameters: [...] do not exist in the template").
    declared = template.get("Parameters", {})
    existing = [p["ParameterKey"] for p in (stack or {}).get("Parameters", []) if p["ParameterKey"] in declared]
    change_set = change_set_name(name)
    cloudformation.create_change_set(
        StackName=name, ChangeSetName=change_set, ChangeSetType="UPDATE" if stack else "CREATE",
        TemplateURL=template_url(s3, bucket, template_key), Parameters=parameters(given, existing),
        Capabilities=CAPABILITIES, Tags=[{"Key": "app", "Value": "vmpool"}, {"Key": "stage", "Value": stage}])
    described = _wait(lambda: cloudformation.describe_change_set(StackName=name, ChangeSetName=change_set),
                      "Status", lambda s: s in ("CREATE_COMPLETE", "FAILED"), timeout, poll)
    if described["Status"] == "FAILED":
        reason = str(described.get("StatusReason", ""))
        if any(text in reason for text in NO_CHANGES):
            cloudformation.delete_change_set(StackName=name, ChangeSetName=change_set)
            print(f"deploy: {name} is up to date", file=sys.stderr)
            return _outputs(cloudformation, name)
        raise DeployError(f"change set {change_set} failed: {reason}")
    if not execute:
        print(f"deploy: change set {change_set} ({len(described.get('Changes', []))} changes) is ready for review; "
              f"execute it in the console or with: aws cloudformation execute-change-set --stack-name {name} "
              f"--change-set-name {change_set}", file=sys.stderr)
        return {}
    print(f"deploy: executing {change_set} ({len(described.get('Changes', []))} changes)", file=sys.stderr)
    cloudformation.execute_change_set(StackName=name, ChangeSetName=change_set)
    final = _wait(lambda: cloudformation.describe_stacks(StackName=name)["Stacks"][0], "StackStatus",
                  lambda s: s.endswith("_COMPLETE") or s.endswith("_FAILED"), timeout, poll)
    if final["StackStatus"] not in ("CREATE_COMPLETE", "UPDATE_COMPLETE"):
        raise DeployError(f"{name} ended {final['StackStatus']}: see its events in the CloudFormation console")
    in_use = {template_key, *([code_key] if code is not None else [])}
    try:
        pruned = prune_uploads(s3, bucket, prefix, keep, in_use)
    except Exception as error:  # the deploy is done: a refusal (no s3:DeleteObject) is a warning
        if failure_of(error) is None:
            raise
        print(f"deploy: the stack is updated; older uploads were not deleted: {_one_line(str(error))}", file=sys.stderr)
        pruned = []
    if pruned:
        print(f"deploy: deleted {len(pruned)} older uploads of {stage} from s3://{bucket}/{prefix}/ "
              f"(the newest {keep} of each kind are kept)", file=sys.stderr)
    return _outputs(cloudformation, name)


def _outputs(cloudformation: Any, name: str) -> dict[str, str]:
    stack = cloudformation.describe_stacks(StackName=name)["Stacks"][0]
    return {o["OutputKey"]: o["OutputValue"] for o in stack.get("Outputs", [])}


def _one_line(text: str, limit: int = 300) -> str:
    """``text`` on one line, whitespace runs as one space, cut at ``limit`` characters."""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[:limit] + "..."


def said_in_one_line(tool: str, error: Exception) -> bool:
    """Print an AWS failure (``aws_clients.failure_of``) as one ``tool:`` line on stderr and say
    True; False for anything else (a bug of ours, to go up with its traceback). What AWS refused
    (a missing bucket, a change set it will not create or execute, no credentials): the call
    and AWS's message. A page botocore cannot read (a proxy's or an outage's "500 Internal
    Server Error", a sign-in page with status 200): its ResponseParserError is no BotoCoreError
    and a well-formed HTML page makes its XML parser raise a KeyError; both went up as
    tracebacks quoting the page."""
    failure = failure_of(error)
    if failure is None:
        return False
    if failure.metric_key == "unreadable":
        print(f"{tool}: an answer from AWS could not be read (an error page from a proxy or an outage?); "
              f"try again: {type(error).__name__}: {_one_line(str(error), 120)}", file=sys.stderr)
    else:
        print(f"{tool}: {_one_line(str(error))}", file=sys.stderr)
    return True


def _bucket_name(value: str) -> str:
    """``--bucket``'s value; one with ``=`` is a Key=Value taken for it (``make infra-deploy``
    without ``BUCKET=``), refused before anything is built or asked of AWS."""
    if "=" in value or not value:
        raise argparse.ArgumentTypeError(f"{value!r} is not an S3 bucket name (BUCKET=... missing?)")
    return value


def _at_least_one(value: str) -> int:
    """``--keep``'s value: a whole number >= 1 (the upload the stack uses is kept anyway)."""
    if not value.isdigit() or int(value) < 1:
        raise argparse.ArgumentTypeError(f"{value!r} is not a whole number >= 1")
    return int(value)


def main(argv: list[str] | None = None, session: Any = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stage", choices=sorted(STAGES), required=True)
    parser.add_argument("--bucket", required=True, type=_bucket_name, help="an S3 bucket for the code and the template")
    parser.add_argument("--package", type=Path, help="the packaged stage (default build/package-<stage>)")
    parser.add_argument("--infra-only", action="store_true",
                        help="deploy the infrastructure stack of the chalice deploy path (no code, no API)")
    parser.add_argument("--no-execute", action="store_true", help="create the change set and stop, for review")
    parser.add_argument("--keep", type=_at_least_one, default=KEEP_UPLOADS,
                        help=f"code zips and templates of the stage kept in the bucket (default {KEEP_UPLOADS})")
    parser.add_argument("--poll", type=float, default=5.0, help=argparse.SUPPRESS)
    parser.add_argument("parameters", nargs="*", metavar="Key=Value")
    args = parser.parse_args(argv)
    given = {}
    for item in args.parameters:
        key, sep, value = item.partition("=")
        if not sep or not key:
            parser.error(f"not Key=Value: {item}")
        given[key] = value
    if session is None:
        import boto3

        session = boto3.Session()
    package = None if args.infra_only else (args.package or Path("build") / f"package-{args.stage}")
    try:
        outputs = deploy(session, args.stage, args.bucket, package, given, poll=args.poll,
                         execute=not args.no_execute, keep=args.keep)
    except DeployError as error:  # our own words, whole (the limit is for AWS's and pages' messages)
        print(f"deploy: {_one_line(str(error), limit=1000)}", file=sys.stderr)
        return 1
    except Exception as error:
        if not said_in_one_line("deploy", error):
            raise
        return 1
    for key, value in sorted(outputs.items()):
        print(f"{key}\t{value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
