"""infra/deploy.sh: the one deploy command runs the package build, then CloudFormation package
and deploy of the stack vmpool-<stage> with the given parameters (a recording `aws` stands in)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_deploy_packages_uploads_and_deploys_the_stage_stack(tmp_path: Path) -> None:
    calls = tmp_path / "calls"
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    fake_aws = fake_bin / "aws"
    fake_aws.write_text(f'#!/bin/sh\necho "aws $*" >> {calls}\n')
    fake_aws.chmod(0o755)
    # Packaging is tested on its own (test_package.py); here a stand-in records the call.
    infra = tmp_path / "repo" / "infra"
    infra.mkdir(parents=True)
    (infra / "deploy.sh").write_text((ROOT / "infra" / "deploy.sh").read_text())
    (infra / "deploy.sh").chmod(0o755)
    (infra / "package.sh").write_text(f'#!/bin/sh\necho "package $*" >> {calls}\n')
    (infra / "package.sh").chmod(0o755)
    env = {**os.environ, "PATH": f"{fake_bin}:{os.environ['PATH']}"}
    done = subprocess.run([str(infra / "deploy.sh"), "prod", "my-bucket", "VpcId=vpc-1", "PrivateSubnetIds=a,b"],
                          env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    lines = calls.read_text().splitlines()
    assert lines[0] == "package prod build/package-prod"
    assert lines[1].startswith("aws cloudformation package --template-file build/package-prod/sam.json")
    assert "--s3-bucket my-bucket" in lines[1]
    assert lines[2].startswith("aws cloudformation deploy --stack-name vmpool-prod")
    assert lines[2].endswith("--parameter-overrides VpcId=vpc-1 PrivateSubnetIds=a,b")
    assert lines[3].startswith("aws cloudformation describe-stacks --stack-name vmpool-prod")


def test_deploy_without_a_bucket_says_how_to_call_it() -> None:
    done = subprocess.run([str(ROOT / "infra" / "deploy.sh"), "prod"], capture_output=True, text=True, timeout=30)
    assert done.returncode == 2 and "usage: infra/deploy.sh STAGE S3_BUCKET" in done.stderr
