"""Publish a stage's pool config without a code deploy (``make config-push STAGE=prod CONFIG=...``).

The YAML is validated (``chalicelib.config.parse``, pydantic); an invalid file is refused with
every problem listed and nothing is published. The canonical JSON of a valid one
(``chalicelib.config.canonical_json``: what a Lambda builds without pydantic or yaml) is written
to the stage's config bucket (the stack output ``ConfigBucket``), where every function
picks it up within ``chalicelib.config_source.REFRESH_SECONDS`` (30 s) of its next invocation.
The bucket is versioned: rolling back is pushing the previous file (or restoring a version).

    python -m infra.config_push --stage dev --file my-vmpool.yaml [--bucket NAME]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from chalicelib.config import ConfigError, canonical_json, parse, read_config_file
from chalicelib.config_source import DEFAULT_CONFIG_KEY
from infra.sync_config import STAGES, stack_name, unreadable_secrets


def stack_output(cloudformation: Any, stage: str, key: str) -> str:
    """One output of the stage's stack."""
    stack = cloudformation.describe_stacks(StackName=stack_name(stage))["Stacks"][0]
    for output in stack.get("Outputs", []):
        if output["OutputKey"] == key:
            return str(output["OutputValue"])
    raise SystemExit(f"config-push: stack {stack_name(stage)} has no output {key}; deploy the stage first")


def push(text: str, bucket: str, s3: Any, source: str = "config") -> str:
    """Validate and publish the canonical JSON; returns the new object's version (or ETag).
    Raises ConfigError. The validation's warnings (unknown keys, a key written twice with one
    value) are printed to stderr; they travel in the canonical JSON too, and every function logs
    them when it loads it."""
    config = parse(text, source)
    for warning in config.warnings:
        print(f"config-push: warning: {warning}", file=sys.stderr)
    answer = s3.put_object(Bucket=bucket, Key=DEFAULT_CONFIG_KEY, Body=canonical_json(config).encode("utf-8"),
                           ContentType="application/json",
                           Metadata={"pools": str(len(config.pools))})
    return str(answer.get("VersionId") or answer.get("ETag"))


def main(argv: list[str] | None = None, session: Any = None) -> int:
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
    # What the stage's functions may not read (IAM) would fail at every use once published.
    try:
        unreadable = unreadable_secrets(STAGES[args.stage], path)
    except ConfigError:
        unreadable = []  # the push below lists every problem of an invalid file
    if unreadable:
        print(f"config-push: {path} names secrets the {args.stage} stage's functions may not read; nothing "
              "published:\n  " + "\n  ".join(unreadable), file=sys.stderr)
        return 1
    bucket = args.bucket or stack_output(session.client("cloudformation"), args.stage, "ConfigBucket")
    try:
        version = push(text, bucket, session.client("s3"), str(path))
    except ConfigError as error:
        print(f"config-push: {path} is not valid; nothing published:\n{error}", file=sys.stderr)
        return 1
    print(f"config-push: published {path} to s3://{bucket}/{DEFAULT_CONFIG_KEY} (version {version}); "
          "running functions use it within a minute")
    return 0


if __name__ == "__main__":
    sys.exit(main())
