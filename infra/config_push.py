"""Publish a stage's pool config without a code deploy (``make config-push STAGE=prod CONFIG=...``).

The YAML is validated (``chalicelib.config.parse``, pydantic); an invalid file is refused with
every problem listed and nothing is published. The canonical JSON of a valid one
(``chalicelib.config.canonical_json``: what a Lambda builds without pydantic or yaml) is written
to the stage's config bucket (the stack output ``ConfigBucket``), where every function
picks it up within ``chalicelib.config_source.REFRESH_SECONDS`` (30 s) of its next invocation.
The bucket is versioned: rolling back is pushing the previous file (or restoring a version).
Versions that still hold a secret written inline (pushed before config-push refused them, or by
hand) are named in a warning at each push, with how to delete them: the secrets are to be rotated.

    python -m infra.config_push --stage dev --file my-vmpool.yaml [--bucket NAME]
"""

from __future__ import annotations

import argparse
import ipaddress
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from botocore.exceptions import ClientError

from chalicelib.aws_clients import failure_of
from chalicelib.clock import Clock, SystemClock
from chalicelib.config import (
    MAX_CONFIG_CHARACTERS,
    Config,
    ConfigError,
    canonical_json,
    from_text,
    has_pools_section,
    parse,
    read_config_file,
)
from chalicelib.config_source import DEFAULT_CONFIG_KEY, GENERATION_METADATA, next_generation, object_generation
from infra.deploy import said_in_one_line
from infra.shipped_config import inline_secrets, shipping_problems
from infra.sync_config import (
    STAGES,
    VCENTER_PORT,
    ldap_server,
    ssm_references,
    stack_name,
    tcp_ready_ports,
    ungranted_zones,
    unreadable_secrets,
    vcenters,
)


def stack_output(cloudformation: Any, stage: str, key: str) -> str:
    """One output of the stage's stack."""
    stack = cloudformation.describe_stacks(StackName=stack_name(stage))["Stacks"][0]
    for output in stack.get("Outputs", []):
        if output["OutputKey"] == key:
            return str(output["OutputValue"])
    raise SystemExit(f"config-push: stack {stack_name(stage)} has no output {key}; deploy the stage first")


def stack_parameters(cloudformation: Any, stage: str) -> dict[str, str] | None:
    """The deployed stack's parameter values, None when the stage has no stack (a bucket given
    by hand)."""
    try:
        stacks = cloudformation.describe_stacks(StackName=stack_name(stage))["Stacks"]
    except Exception as error:
        if "does not exist" in str(error):
            return None
        raise
    return {p["ParameterKey"]: str(p.get("ParameterValue", ""))
            for p in (stacks[0].get("Parameters", []) if stacks else [])}


def unreachable_dns(config: Config, parameters: dict[str, str]) -> list[str]:
    """The config's DNS entries (those pools use) that the deployed stack's network does not let
    the functions reach, each with why: its parameters were given at the last deploy, for the
    packaged config's entries (infra/template.py ``dns_rules``), and a push does not change
    them. Published, every VM of those pools would stay pending (``DNS record not created``)
    until its ``timeout`` destroyed it."""
    used = {pool.dns_plugin for pool in config.pools}
    cidr, port = parameters.get("DnsServerCidr", ""), parameters.get("DnsServerPort", "53")
    found = []
    for name, entry in sorted(config.dns_configs.items()):
        if name not in used:
            continue
        if entry.dns_class == "route53" and parameters.get("CreateVpcEndpoints", "true") != "false":
            found.append(f"dns_configs.{name}: route53 is reached through a NAT gateway only; the stack has "
                         "CreateVpcEndpoints=true")
        server = getattr(entry.settings, "server", None) if entry.dns_class == "dynamic-dns" else None
        if not server:
            continue
        wanted = int(getattr(entry.settings, "port", 53))
        found += _unreached(f"dns_configs.{name}", server, wanted, (cidr, "DnsServerCidr"), (port, "DnsServerPort"))
    return found


def unreachable_ssm(config: Config, parameters: dict[str, str]) -> list[str]:
    """The config's SSM secret references the deployed stack's functions cannot fetch: SSM
    Parameter Store is reached through a NAT gateway (``CreateVpcEndpoints=false``) or the stack's
    SSM endpoint (``CreateSsmEndpoint=true``) only. Published, every fetch would time out: the
    passes of the pools whose provider or DNS entry needs the secret fail, LDAP logins answer 503."""
    if parameters.get("CreateVpcEndpoints", "true") == "false" or parameters.get("CreateSsmEndpoint") == "true":
        return []
    return [f"{path}: SSM Parameter Store is reached through the stack's SSM endpoint or a NAT gateway only; the "
            "stack has CreateVpcEndpoints=true and no CreateSsmEndpoint=true" for path in ssm_references(config)]


def unreachable_servers(config: Config, parameters: dict[str, str]) -> list[str]:
    """The config's vCenters (of providers pools use), new VMs (of vSphere pools checking their
    readiness over TCP) and LDAP server that the deployed stack's functions cannot reach, each with
    why: the security group sends to ``VCenterCidr`` on 443, to ``GuestCidr`` on
    ``GuestReadyPort`` and to ``LdapCidr`` on ``LdapPort`` (636 on a stack deployed before that
    parameter) only. Published, every pass of those pools would time out connecting to vCenter,
    their new VMs would stay pending until destroyed, or every login would answer 503. A server
    given by name cannot be matched to a range: only its port is."""
    found = []
    vcenter_cidr = parameters.get("VCenterCidr", "")
    for name, host, port in vcenters(config):
        if port != VCENTER_PORT:
            found.append(f"providers.{name}: vCenter {host} port {port}: the stack reaches vCenter on "
                         f"{VCENTER_PORT} only")
        elif vcenter_cidr and _outside(host, vcenter_cidr):
            found.append(f"providers.{name}: vCenter {host} is outside the stack's VCenterCidr {vcenter_cidr}")
    guest_cidr, guest_port = parameters.get("GuestCidr", ""), parameters.get("GuestReadyPort", "22")
    for port, pools in sorted(tcp_ready_ports(config).items()):
        shown = ", ".join(pools[:5]) + (f" and {len(pools) - 5} more" if len(pools) > 5 else "")
        if not guest_cidr:
            found.append(f"pools {shown}: readiness checked over TCP port {port}: the stack has no GuestCidr")
        elif str(port) != guest_port:
            found.append(f"pools {shown}: readiness checked over TCP port {port}: the stack's GuestReadyPort is "
                         f"{guest_port}")
    server = ldap_server(config)
    if server is not None:
        host, port = server
        found += _unreached("auth.ldap", host, port, (parameters.get("LdapCidr", ""), "LdapCidr"),
                            (parameters.get("LdapPort", "636"), "LdapPort"))
    return found


def _unreached(where: str, server: str, port: int, cidr: tuple[str, str], stack_port: tuple[str, str]) -> list[str]:
    """Why the stack's security group does not send to ``server`` on ``port``: ``cidr`` and
    ``stack_port`` are a stack parameter's value and name each; no range given, the address
    outside it, or another port."""
    (cidr_value, cidr_name), (port_value, port_name) = cidr, stack_port
    if not cidr_value:
        return [f"{where}: server {server} port {port}: the stack has no {cidr_name}"]
    found = []
    if _outside(server, cidr_value):
        found.append(f"{where}: server {server} is outside the stack's {cidr_name} {cidr_value}")
    if str(port) != port_value:
        found.append(f"{where}: server {server} port {port}: the stack's {port_name} is {port_value}")
    return found


def _outside(server: str, cidr: str) -> bool:
    """Whether ``server``, an address, is outside ``cidr`` (a name cannot be checked here)."""
    try:
        return ipaddress.ip_address(server) not in ipaddress.ip_network(cidr, strict=False)
    except ValueError:
        return False


def push(text: str, bucket: str, s3: Any, source: str = "config", config: Config | None = None,
         clock: Clock | None = None, body: str | None = None) -> str:
    """Validate and publish the canonical JSON; returns the new object's version (or ETag).
    Raises ConfigError. The validation's warnings (unknown keys, a key written twice with one
    value) are printed to stderr; they travel in the canonical JSON too, and every function logs
    them when it loads it. ``config``: ``text`` already parsed. The object carries its
    generation (``config_source.GENERATION_METADATA``): later than the object it replaces, even
    within the same second or from a clock behind. ``body``: the config's canonical JSON, already
    checked (``shipped_config.shipping_problems``); made and checked here when not given."""
    config = config or parse(text, source)
    if body is None:
        body = canonical_json(config)
        problems = shipping_problems(config, body)
        if problems:
            raise ConfigError(problems)
    for warning in config.warnings:
        print(f"config-push: warning: {warning}", file=sys.stderr)
    generation = next_generation(_published_generation(s3, bucket), (clock or SystemClock()).now())
    warn_of_versions_with_inline_secrets(s3, bucket)
    answer = s3.put_object(Bucket=bucket, Key=DEFAULT_CONFIG_KEY, Body=body.encode("utf-8"),
                           ContentType="application/json",
                           Metadata={"pools": str(len(config.pools)), GENERATION_METADATA: repr(generation),
                                     SECRETS_METADATA: REFERENCES_ONLY})
    return str(answer.get("VersionId") or answer.get("ETag"))


SECRETS_METADATA = "secrets"
REFERENCES_ONLY = "references"
"""User metadata of every object config-push writes (it refuses a secret written inline): such a
version is known to hold none, and is not read again to be checked."""
MAX_VERSIONS_CHECKED = 200
"""Older versions of the config object a push reads at most (the newest first): the bucket keeps
each for 90 days, and a site pushing many times a day would otherwise download them all."""
VERSIONS_LISTED = 10
"""Versions a warning names with their delete command (the rest are counted)."""
VERSION_READS_AT_ONCE = 8


def versions_with_inline_secrets(s3: Any, bucket: str) -> tuple[list[tuple[str, list[str]]], int]:
    """The versions of the config object (its current one included: a push makes it an older one)
    that hold a secret written inline, each with the secrets' key paths (never their values), and
    how many could not be checked (unreadable, no config, past ``MAX_VERSIONS_CHECKED``). They
    were written before config-push refused inline secrets (2026-12-07), or by hand: the bucket
    keeps every version 90 days, readable by whoever may read the bucket."""
    listed: list[str] = []
    unchecked = 0
    pages = s3.get_paginator("list_object_versions").paginate(Bucket=bucket, Prefix=DEFAULT_CONFIG_KEY)
    for page in pages:
        for version in page.get("Versions", []):
            if version.get("Key") != DEFAULT_CONFIG_KEY:
                continue
            if len(listed) < MAX_VERSIONS_CHECKED:
                listed.append(str(version.get("VersionId")))
            else:
                unchecked += 1
    # A HEAD each (a version config-push wrote is not read further), several at once: 200 one
    # after the other are seconds of round trips at every push.
    with ThreadPoolExecutor(max_workers=VERSION_READS_AT_ONCE) as pool:
        checked = list(pool.map(lambda version_id: _inline_secrets_of(s3, bucket, version_id), listed))
    found = [(version_id, paths) for version_id, paths in zip(listed, checked, strict=True) if paths]
    unchecked += sum(1 for paths in checked if paths is None)
    return found, unchecked


def _inline_secrets_of(s3: Any, bucket: str, version_id: str) -> list[str] | None:
    """The key paths of the secrets written inline in one version of the config object (None: it
    is no config this release reads, or too large to be one)."""
    head = s3.head_object(Bucket=bucket, Key=DEFAULT_CONFIG_KEY, VersionId=version_id)
    if (head.get("Metadata") or {}).get(SECRETS_METADATA) == REFERENCES_ONLY:
        return []
    if int(head.get("ContentLength") or 0) > 4 * MAX_CONFIG_CHARACTERS:  # UTF-8: 4 bytes a character at most
        return None
    body = s3.get_object(Bucket=bucket, Key=DEFAULT_CONFIG_KEY, VersionId=version_id)["Body"]
    try:
        text = body.read().decode("utf-8")
        return inline_secrets(from_text(text, f"version {version_id}"))
    except (UnicodeDecodeError, ConfigError):
        return None
    finally:
        body.close()


def warn_of_versions_with_inline_secrets(s3: Any, bucket: str) -> None:
    """Say which versions of the config object hold a secret written inline, and what to do: delete
    them, and rotate those secrets (whoever could read the bucket may have them). Said, never a
    refusal: the push that moves the secrets to references is what the operator needs. Without
    the right to list or read versions (``s3:ListBucketVersions``, ``s3:GetObjectVersion``), a
    warning that they were not checked."""
    try:
        found, unchecked = versions_with_inline_secrets(s3, bucket)
    except Exception as error:  # an AWS failure (no s3:ListBucketVersions, a proxy's page): said; a bug raised
        failure = failure_of(error)
        if failure is None:
            raise
        code = failure.code
        print(f"config-push: warning: the config object's older versions could not be checked for secrets written "
              f"inline ({code}); docs/deploy.md, \"Secrets left in older config versions\"", file=sys.stderr)
        return
    if not found:
        return
    paths = sorted({path for _, version_paths in found for path in version_paths})
    commands = [f"  aws s3api delete-object --bucket {bucket} --key {DEFAULT_CONFIG_KEY} --version-id {version_id}"
                for version_id, _ in found[:VERSIONS_LISTED]]
    more = len(found) - VERSIONS_LISTED
    print(f"config-push: warning: {len(found)} version(s) of s3://{bucket}/{DEFAULT_CONFIG_KEY} hold secrets written "
          f"inline ({', '.join(paths)}), readable by whoever may read the bucket for the 90 days it keeps them: rotate "
          "those secrets (the values in the config's references must be new ones), then delete the versions "
          "(docs/deploy.md, \"Secrets left in older config versions\"):\n" + "\n".join(commands)
          + (f"\n  ... and {more} more" if more > 0 else "")
          + (f"\n  ({unchecked} version(s) not checked)" if unchecked else ""), file=sys.stderr)


def _published_generation(s3: Any, bucket: str) -> float:
    """The generation of the config object the bucket holds (0: none). Without the right to
    read it (a pusher allowed ``s3:PutObject`` only), 0 and a warning: the push is then ordered
    by this machine's clock alone, as every push was before."""
    try:
        head = s3.head_object(Bucket=bucket, Key=DEFAULT_CONFIG_KEY)
    except ClientError as error:
        code = str(error.response.get("Error", {}).get("Code", ""))
        if code not in ("404", "NoSuchKey", "NotFound"):
            print(f"config-push: warning: the published config's generation could not be read ({code}): this push "
                  "is ordered by this machine's clock only", file=sys.stderr)
        return 0.0
    return object_generation(head.get("LastModified"), head.get("Metadata"))


def main(argv: list[str] | None = None, session: Any = None, clock: Clock | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stage", choices=sorted(STAGES), required=True)
    parser.add_argument("--file", default="chalicelib/vmpool.yaml", help="the YAML to publish")
    parser.add_argument("--bucket", help="the config bucket (default: the stack's ConfigBucket output)")
    args = parser.parse_args(argv)
    if session is None:
        import boto3

        session = boto3.Session()
    path = Path(args.file)
    try:
        text = read_config_file(path)
    except OSError as error:
        print(f"config-push: cannot read {path}: {error.strerror}", file=sys.stderr)
        return 1
    # Parsed once (2,000 pools take seconds), its extra_config files read from its folder, as
    # packaging and make run read them: from the working directory, a config beside its extra
    # files was refused (or merged with another file of that name) when pushed from elsewhere.
    try:
        config = parse(text, str(path), base_dir=path.parent)
    except ConfigError as error:
        print(f"config-push: {path} is not valid; nothing published:\n{error}", file=sys.stderr)
        return 1
    if not config.pools and not has_pools_section(text, str(path)):
        # Published, a config of no pools drains every pool of the stage within a minute (their
        # ready VMs destroyed): not for a file that only lost its pools section by mistake.
        print(f"config-push: {path} has no pools section (an empty or truncated file, or the section's name "
              "mistyped); published, it would drain every pool of the stage and destroy their ready VMs; nothing "
              "published. To remove every pool, write an empty list: ':pools: []'", file=sys.stderr)
        return 1
    # What the stage's functions may not read (IAM) would fail at every use once published.
    unreadable = unreadable_secrets(STAGES[args.stage], config)
    if unreadable:
        print(f"config-push: {path} names secrets the {args.stage} stage's functions may not read; nothing "
              "published:\n  " + "\n  ".join(unreadable), file=sys.stderr)
        return 1
    # What reaches the bucket: no secret inline (every version is kept), CA files carried, within
    # the 16 MiB a function reads (past it, every function refuses the push and keeps the last).
    body = canonical_json(config)
    problems = shipping_problems(config, body)
    if problems:
        print(f"config-push: {path} cannot be published to the functions; nothing published:\n  "
              + "\n  ".join(problems), file=sys.stderr)
        return 1
    try:
        return _push_checked(args.stage, path, text, config, args.bucket, session, clock, body)
    except Exception as error:
        if not said_in_one_line("config-push", error):
            raise
        print("config-push: nothing published", file=sys.stderr)
        return 1


def _push_checked(stage: str, path: Path, text: str, config: Config, bucket: str | None, session: Any,
                  clock: Clock | None = None, body: str | None = None) -> int:
    """Check ``config`` (``text`` validated) against the deployed stack, then publish it; 0 or 1
    (what was wrong printed)."""
    cloudformation = session.client("cloudformation")
    parameters = stack_parameters(cloudformation, stage)
    if parameters is None:
        print(f"config-push: warning: no stack {stack_name(stage)}: its network was not checked against the "
              "config's vCenters, LDAP server, DNS entries and SSM references", file=sys.stderr)
    else:
        gaps = unreachable_dns(config, parameters)
        if gaps:
            print(f"config-push: {path} names DNS services the {stage} stack's functions cannot reach; nothing "
                  "published:\n  " + "\n  ".join(gaps) + "\nDeploy the network first (docs/deploy.md, DNS), e.g. "
                  f"make deploy STAGE={stage} BUCKET=<deploy bucket> PARAMS=\"DnsServerCidr=<the servers' range> "
                  "DnsServerPort=<their port>\" (CreateVpcEndpoints=false for route53), then push again",
                  file=sys.stderr)
            return 1
        gaps = unreachable_servers(config, parameters)
        if gaps:
            print(f"config-push: {path} names servers the {stage} stack's functions cannot reach; nothing published:"
                  "\n  " + "\n  ".join(gaps) + "\nDeploy the network first (docs/deploy.md, Parameters), e.g. "
                  f"make deploy STAGE={stage} BUCKET=<deploy bucket> PARAMS=\"VCenterCidr=<vCenter's range> "
                  "GuestCidr=<the VMs' range> GuestReadyPort=<their port> LdapCidr=<the LDAP servers' range> "
                  "LdapPort=<their port>\" (or ready_check: tools), then push again", file=sys.stderr)
            return 1
        gaps = unreachable_ssm(config, parameters)
        if gaps:
            print(f"config-push: {path} names SSM parameters the {stage} stack's functions cannot fetch; nothing "
                  "published:\n  " + "\n  ".join(gaps) + "\nDeploy the SSM endpoint first (docs/deploy.md, "
                  f"Prerequisites): make deploy STAGE={stage} BUCKET=<deploy bucket> PARAMS=\"CreateSsmEndpoint=true\""
                  " (or CreateVpcEndpoints=false behind a NAT gateway), then push again", file=sys.stderr)
            return 1
    # Route 53 zones as secrets: the reconcile role may change those of the packaged config only.
    stage_file = STAGES[stage].config_file
    used = {pool.dns_plugin for pool in config.pools}
    ungranted = set(ungranted_zones(STAGES[stage], config))
    entries = [f"dns_configs.{name}: hosted zone {zone}" for name, entry in sorted(config.dns_configs.items())
               if name in used and (zone := str(getattr(entry.settings, "hosted_zone_id", "")).split("/")[-1])
               in ungranted]
    if entries:
        print(f"config-push: {path} names route53 hosted zones the {stage} stage's functions may not change (IAM "
              f"grants the zones of {stage_file}, deployed with the code); nothing published:\n  "
              + "\n  ".join(entries) + f"\nPut the entry in {stage_file}, run python -m infra.sync_config and make "
              f"deploy STAGE={stage} BUCKET=<deploy bucket>, then push again", file=sys.stderr)
        return 1
    bucket = bucket or stack_output(cloudformation, stage, "ConfigBucket")
    version = push(text, bucket, session.client("s3"), str(path), config, clock, body)
    print(f"config-push: published {path} to s3://{bucket}/{DEFAULT_CONFIG_KEY} (version {version}); "
          "running functions use it within a minute")
    return 0


if __name__ == "__main__":
    sys.exit(main())
