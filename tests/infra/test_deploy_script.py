"""`make deploy` / infra/deploy.sh: the code and the template go through S3 and a CloudFormation
change set creates or updates vmpool-<stage> with the given parameters. Exercised against a moto
server (a real HTTP endpoint, as the AWS SDK sees it) with the real packaged stage.

What moto does not do (docs/deploy.md lists it): the SAM transform, so the change set of the
full stack is created and checked but not executed (``--no-execute``, the review option); the
infrastructure-only stack, which needs no transform, is executed in test_chalice_deploy.py."""

from __future__ import annotations

import datetime
import json
import os
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Iterator

import boto3
import pytest
from botocore.exceptions import ClientError
from moto import mock_aws
from moto.cloudformation.models import cloudformation_backends
from moto.core import DEFAULT_ACCOUNT_ID
from moto.s3.models import s3_backends
from packaged import ROOT, Package

from infra import deploy

BUCKET = "my-deploy-bucket"


@pytest.fixture
def aws(aws: boto3.Session) -> boto3.Session:
    """conftest's moto AWS, with the deploy bucket."""
    aws.client("s3").create_bucket(Bucket=BUCKET)
    return aws


def test_deploy_uploads_code_and_template_and_runs_a_change_set(aws: boto3.Session, package: Package,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    out = package.template_path.parent
    code = deploy.main(["--stage", "dev", "--bucket", BUCKET, "--package", str(out), "--poll", "0.1", "--no-execute",
                        "VpcId=vpc-0abc", "PrivateSubnetIds=subnet-1,subnet-2", "VCenterCidr=10.1.0.0/16"],
                       session=aws)
    assert code == 0, capsys.readouterr().err

    s3 = aws.client("s3")
    keys = sorted(o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET)["Contents"])
    assert [k.rsplit("/", 1)[0] for k in keys] == ["vmpool/dev", "vmpool/dev"]
    (code_key,) = [k for k in keys if k.endswith(".zip")]
    (template_key,) = [k for k in keys if k.endswith(".json")]
    assert s3.get_object(Bucket=BUCKET, Key=code_key)["Body"].read() == (out / "deployment.zip").read_bytes()
    uploaded = json.loads(s3.get_object(Bucket=BUCKET, Key=template_key)["Body"].read())
    assert len(json.dumps(uploaded)) > 51_200  # too big to pass inline: S3 is the only way
    functions = [r for r in uploaded["Resources"].values() if r["Type"] == "AWS::Serverless::Function"]
    assert {json.dumps(f["Properties"]["CodeUri"]) for f in functions} == {
        json.dumps({"Bucket": BUCKET, "Key": code_key})}

    cloudformation = aws.client("cloudformation")
    (change_set,) = cloudformation.list_change_sets(StackName="vmpool-dev")["Summaries"]
    described = cloudformation.describe_change_set(StackName="vmpool-dev", ChangeSetName=change_set["ChangeSetName"])
    assert set(described.get("Capabilities", deploy.CAPABILITIES)) == set(deploy.CAPABILITIES)  # moto omits them
    given = {p["ParameterKey"]: p["ParameterValue"] for p in described["Parameters"]}
    assert given["VpcId"] == "vpc-0abc" and given["VCenterCidr"] == "10.1.0.0/16"
    assert given["PrivateSubnetIds"] == "subnet-1,subnet-2"
    assert described["Status"] == "CREATE_COMPLETE"
    assert cloudformation.describe_stacks(StackName="vmpool-dev")["Stacks"][0]["StackStatus"] == "REVIEW_IN_PROGRESS"
    assert "ready for review" in capsys.readouterr().err


def test_an_update_keeps_parameters_not_given() -> None:
    assert deploy.parameters({"VCenterCidr": "10.2.0.0/16"}, ["VpcId", "VCenterCidr"]) == [
        {"ParameterKey": "VCenterCidr", "ParameterValue": "10.2.0.0/16"},
        {"ParameterKey": "VpcId", "UsePreviousValue": True}]


def _deploy_sh_recording_calls(tmp_path: Path) -> tuple[Path, Path]:
    """A copy of infra/deploy.sh whose infra/package.sh records its calls (packaging is tested on
    its own, test_package.py), and the file the calls go to."""
    calls = tmp_path / "calls"
    infra = tmp_path / "repo" / "infra"
    infra.mkdir(parents=True)
    (infra / "deploy.sh").write_text((ROOT / "infra" / "deploy.sh").read_text())
    (infra / "deploy.sh").chmod(0o755)
    (infra / "package.sh").write_text(f'#!/bin/sh\necho "package $*" >> {calls}\n')
    (infra / "package.sh").chmod(0o755)
    return infra / "deploy.sh", calls


def test_deploy_sh_packages_then_deploys(tmp_path: Path) -> None:
    deploy_sh, calls = _deploy_sh_recording_calls(tmp_path)
    python = tmp_path / "python"
    python.write_text(f'#!/bin/sh\necho "python $*" >> {calls}\n')
    python.chmod(0o755)
    env: dict[str, Any] = {**os.environ, "PYTHON": str(python)}
    done = subprocess.run([str(deploy_sh), "prod", "my-bucket", "VpcId=vpc-1", "PrivateSubnetIds=a,b"],
                          env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert calls.read_text().splitlines() == [
        "package prod build/package-prod",
        ("python -m infra.deploy --stage prod --bucket my-bucket --package build/package-prod "
         "VpcId=vpc-1 PrivateSubnetIds=a,b")]


def test_deploy_without_a_bucket_says_how_to_call_it() -> None:
    done = subprocess.run([str(ROOT / "infra" / "deploy.sh"), "prod"], capture_output=True, text=True, timeout=30)
    assert done.returncode == 2 and "usage: infra/deploy.sh STAGE S3_BUCKET" in done.stderr


def test_make_deploy_without_bucket_is_refused_before_packaging(tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    """``make deploy STAGE=prod PARAMS="VpcId=..."`` without ``BUCKET=`` runs ``infra/deploy.sh
    prod VpcId=...``: the first parameter was taken for the bucket, the package built, and the
    upload failed minutes later on an invalid bucket name (``make infra-deploy`` likewise, through
    ``--bucket``). Refused at once, saying what is missing."""
    deploy_sh, calls = _deploy_sh_recording_calls(tmp_path)
    done = subprocess.run([str(deploy_sh), "prod", "VpcId=vpc-1", "PrivateSubnetIds=a,b"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "S3_BUCKET is missing ('VpcId=vpc-1' is a parameter)" in done.stderr
    assert not calls.exists()  # nothing packaged
    with pytest.raises(SystemExit):
        deploy.main(["--stage", "dev", "--bucket", "VpcId=vpc-1", "--infra-only"])
    assert "is not an S3 bucket name (BUCKET=... missing?)" in capsys.readouterr().err


def test_what_aws_refuses_is_said_in_one_line_not_a_traceback(aws: boto3.Session, package: Package,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    """A bucket that does not exist, a change set AWS will not create or execute (a parameter
    naming a VPC that is not there): before, botocore's ClientError went up as a traceback of
    `make deploy`; now one `deploy:` line naming the call and AWS's message, exit 1."""
    out = str(package.template_path.parent)
    code = deploy.main(["--stage", "dev", "--bucket", "no-such-bucket-here", "--package", out, "--poll", "0.1",
                        "--no-execute", "VpcId=vpc-0abc"], session=aws)
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err
    assert err.startswith("deploy: ") and "NoSuchBucket" in err and "PutObject" in err
    code = deploy.main(["--stage", "dev", "--bucket", BUCKET, "--infra-only", "--poll", "0.1",
                        "VpcId=vpc-0abc", "PrivateSubnetIds=subnet-1,subnet-2", "VCenterCidr=10.1.0.0/16"], session=aws)
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err and "vpc-0abc" in err


def error_page_endpoint(status: int, page: bytes) -> ThreadingHTTPServer:
    """An HTTP server on a free port answering every request ``status`` with ``page``: what a
    proxy or an endpoint in trouble sends instead of an AWS answer."""

    class ErrorPage(BaseHTTPRequestHandler):
        def answer(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            self.send_response(status)
            self.send_header("Content-Type", "text/html" if page.startswith(b"<") else "text/plain")
            self.send_header("Content-Length", str(len(page)))
            self.end_headers()
            self.wfile.write(page)

        do_GET = do_POST = do_PUT = do_HEAD = answer

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), ErrorPage)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.mark.parametrize(("status", "page"), [
    (500, b"Internal Server Error"),
    (502, b"<html><head><title>502</title></head><body>Bad gateway<br>\n<hr>nginx</body></html>\n" * 50),
    (200, b"<html><head><title>Sign in</title></head><body>Proxy login<br></body></html>"),
    (200, b"<html><head><title>Sign in</title></head><body>Proxy login</body></html>"),
], ids=["500-text", "502-html", "200-html", "200-well-formed-html"])
def test_an_answer_that_is_not_aws_is_said_in_one_line_not_a_traceback(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], status: int, page: bytes) -> None:
    """An endpoint (or a proxy before it) answering an error page botocore cannot parse: botocore
    raises its ResponseParserError, which is not a BotoCoreError, and `make deploy` ended in a
    traceback quoting the page. Now one `deploy:` line, exit 1."""
    server = error_page_endpoint(status, page)
    try:
        for name, value in {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{server.server_port}", "AWS_ACCESS_KEY_ID": "test",
                            "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1",
                            "AWS_MAX_ATTEMPTS": "1"}.items():
            monkeypatch.setenv(name, value)
        monkeypatch.delenv("AWS_PROFILE", raising=False)
        code = deploy.main(["--stage", "dev", "--bucket", BUCKET, "--infra-only", "--poll", "0.1"],
                           session=boto3.Session())
    finally:
        server.shutdown()
        server.server_close()
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err
    assert err.startswith("deploy: ") and err.count("\n") == 1 and len(err) < 500, err


def test_a_bug_of_ours_is_not_taken_for_an_unreadable_aws_answer(monkeypatch: pytest.MonkeyPatch) -> None:
    """Only a KeyError raised inside botocore (its parser, on a page that is not AWS's) is said
    in one line; one of our own code goes up with its traceback."""
    def broken(*args: Any, **kwargs: Any) -> dict[str, str]:
        return {}["Outputs"]

    monkeypatch.setattr(deploy, "deploy", broken)
    with pytest.raises(KeyError, match="Outputs"):
        deploy.main(["--stage", "dev", "--bucket", BUCKET, "--infra-only"], session=object())


def test_more_kms_keys_than_the_policies_keep_room_for_are_refused_before_anything_is_uploaded(
        aws: boto3.Session, capsys: pytest.CaptureFixture[str]) -> None:
    """CloudFormation checks each ``SecretsKmsKeyArns`` key's shape (the parameter's pattern) but
    not how many there are: eleven keys took a role past IAM's 10,240 characters, and the stack
    update failed minutes in. ``make deploy`` refuses them first, in one line."""
    keys = ",".join(f"arn:aws:kms:us-east-1:123456789012:key/{n:08d}-12ab-34cd-56ef-1234567890ab" for n in range(11))
    code = deploy.main(["--stage", "dev", "--bucket", BUCKET, "--infra-only", "--no-execute", "--poll", "0.1",
                        "VpcId=vpc-0abc", "PrivateSubnetIds=subnet-0a,subnet-0b", "VCenterCidr=10.1.0.0/16",
                        f"SecretsKmsKeyArns={keys}"], session=aws)
    assert code == 1
    assert capsys.readouterr().err == ("deploy: SecretsKmsKeyArns: 11 keys; at most 10 (the functions' IAM "
                                       "policies keep room for that many)\n")
    assert aws.client("s3").list_objects_v2(Bucket=BUCKET).get("KeyCount") == 0
    with pytest.raises(aws.client("cloudformation").exceptions.ClientError):
        aws.client("cloudformation").describe_stacks(StackName="vmpool-dev")


class _AccountOfQuota:
    """conftest's moto AWS whose Lambda answers GetAccountSettings (moto does not) with an
    account's concurrency quota and what of it is unreserved."""

    def __init__(self, aws: boto3.Session, quota: int, unreserved: int) -> None:
        self.aws, self.limits = aws, {"ConcurrentExecutions": quota, "UnreservedConcurrentExecutions": unreserved}

    def client(self, name: str, **options: Any) -> Any:
        if name != "lambda":
            return self.aws.client(name, **options)
        limits = self.limits
        return type("Lambda", (), {"get_account_settings": lambda self: {"AccountLimit": limits}})()


def test_a_first_deploy_into_an_account_too_small_for_the_stages_reserved_concurrency_is_refused_at_once(
        aws: boto3.Session, package: Package, capsys: pytest.CaptureFixture[str]) -> None:
    """A new account's Lambda concurrency quota may be 10 or 50, not 1,000: the dev stage's
    functions reserve 41 and Lambda keeps 100 unreserved, so the stack's create failed at its
    functions, after ElastiCache's 15 minutes, and rolled back. Refused before anything is
    uploaded, naming the quota to ask for; an account that holds them deploys."""
    arguments = ["--stage", "dev", "--bucket", BUCKET, "--package", str(package.template_path.parent), "--poll", "0.1",
                 "--no-execute", "VpcId=vpc-0abc", "PrivateSubnetIds=subnet-1,subnet-2", "VCenterCidr=10.1.0.0/16"]
    assert deploy.main(arguments, session=_AccountOfQuota(aws, quota=50, unreserved=50)) == 1
    err = capsys.readouterr().err
    assert err.startswith("deploy: the dev stage's functions reserve 41 concurrent executions") and err.count("\n") == 1
    assert "Lambda concurrency is 50 (50 unreserved)" in err and "'Concurrent executions' of at least 141\n" in err
    assert aws.client("s3").list_objects_v2(Bucket=BUCKET).get("KeyCount") == 0
    with pytest.raises(aws.client("cloudformation").exceptions.ClientError):
        aws.client("cloudformation").describe_stacks(StackName="vmpool-dev")

    assert deploy.main(arguments, session=_AccountOfQuota(aws, quota=1000, unreserved=1000)) == 0
    assert "ready for review" in capsys.readouterr().err


@pytest.fixture
def aws_here(monkeypatch: pytest.MonkeyPatch) -> Iterator[boto3.Session]:
    """moto in this process, with the deploy bucket: where a test sets what moto's API cannot (a
    stack rolled back, an upload's age)."""
    for name, value in {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
                        "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    with mock_aws():
        session = boto3.Session()
        session.client("s3").create_bucket(Bucket=BUCKET)
        yield session


def _infra_only(session: boto3.Session, *extra: str) -> int:
    """``--infra-only`` deploy of the dev stage into a VPC moto has (moto executes that stack)."""
    ec2 = session.client("ec2")
    vpc = ec2.create_vpc(CidrBlock="10.9.0.0/16")["Vpc"]["VpcId"]
    subnets = [ec2.create_subnet(VpcId=vpc, CidrBlock=f"10.9.{n}.0/24", AvailabilityZone=f"us-east-1{zone}")
               ["Subnet"]["SubnetId"] for n, zone in ((1, "a"), (2, "b"))]
    return deploy.main(["--stage", "dev", "--bucket", BUCKET, "--infra-only", "--poll", "0.1", *extra,
                        f"VpcId={vpc}", f"PrivateSubnetIds={','.join(subnets)}", "VCenterCidr=10.1.0.0/16"],
                       session=session)


def test_a_stack_whose_first_create_rolled_back_is_refused_saying_how_to_delete_it(
        aws_here: boto3.Session, capsys: pytest.CaptureFixture[str]) -> None:
    """A first create that failed leaves the stack in ROLLBACK_COMPLETE, which takes no change set:
    the next `make deploy` ended with AWS's "... can not be updated" and no word of what to do."""
    cloudformation = aws_here.client("cloudformation")
    cloudformation.create_stack(StackName="vmpool-dev",
                                TemplateBody=json.dumps({"Resources": {"Queue": {"Type": "AWS::SQS::Queue"}}}))
    for stack in cloudformation_backends[DEFAULT_ACCOUNT_ID]["us-east-1"].stacks.values():
        stack.status = "ROLLBACK_COMPLETE"  # what AWS leaves (moto never rolls back)
    assert _infra_only(aws_here) == 1
    err = capsys.readouterr().err
    assert err.startswith("deploy: vmpool-dev is in ROLLBACK_COMPLETE") and err.count("\n") == 1, err
    assert err.endswith("delete it, then deploy again: aws cloudformation delete-stack --stack-name vmpool-dev\n")
    assert aws_here.client("s3").list_objects_v2(Bucket=BUCKET)["KeyCount"] == 0  # refused before uploading


def test_a_stage_deleted_and_deployed_again_is_refused_while_its_kept_config_bucket_exists(
        aws_here: boto3.Session, capsys: pytest.CaptureFixture[str]) -> None:
    """Deleting the stack keeps its config bucket (``DeletionPolicy: Retain``: the pushed configs),
    whose name is fixed by the stage, account and region. The next create of the stage made a
    bucket of that name, which CloudFormation refuses (moto too: ``BucketAlreadyExists`` when the
    change set ran): in AWS minutes into the create, rolled back to ROLLBACK_COMPLETE. Refused
    before anything is uploaded, naming the bucket and what to do; with it gone, the create runs."""
    assert _infra_only(aws_here) == 0
    s3, cloudformation = aws_here.client("s3"), aws_here.client("cloudformation")
    bucket = f"vmpool-dev-config-{DEFAULT_ACCOUNT_ID}-us-east-1"
    s3.put_object(Bucket=bucket, Key="config/vmpool.yaml", Body=b"{}")
    cloudformation.delete_stack(StackName="vmpool-dev")
    s3.head_bucket(Bucket=bucket)  # kept, as AWS keeps it
    uploads = s3.list_objects_v2(Bucket=BUCKET)["KeyCount"]
    capsys.readouterr()

    assert _infra_only(aws_here) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"deploy: the config bucket {bucket} exists: it is kept when the stack vmpool-dev is "
                          "deleted") and err.count("\n") == 1, err
    assert f"aws s3 cp s3://{bucket}/config/vmpool.yaml" in err and '"Deleting a stage"' in err
    assert s3.list_objects_v2(Bucket=BUCKET)["KeyCount"] == uploads  # nothing uploaded
    assert [stack["StackStatus"] for stack in cloudformation.list_stacks()["StackSummaries"]] == ["DELETE_COMPLETE"]

    versions = s3.list_object_versions(Bucket=bucket).get("Versions", [])
    s3.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": v["Key"], "VersionId": v["VersionId"]}
                                                         for v in versions]})
    s3.delete_bucket(Bucket=bucket)
    assert _infra_only(aws_here) == 0
    assert cloudformation.describe_stacks(StackName="vmpool-dev")["Stacks"][0]["StackStatus"] == "CREATE_COMPLETE"


def test_a_config_bucket_that_cannot_be_looked_at_does_not_stop_a_deploy(
        aws_here: boto3.Session, capsys: pytest.CaptureFixture[str]) -> None:
    """Without the right to ask (sts:GetCallerIdentity refused) the bucket is not checked: the
    deploy goes on, as before, and CloudFormation has the last word."""
    class NoSts:
        def client(self, name: str, **options: Any) -> Any:
            if name != "sts":
                return aws_here.client(name, **options)

            def refused(self: Any) -> None:
                raise ClientError({"Error": {"Code": "AccessDenied", "Message": "no"}}, "GetCallerIdentity")
            return type("Sts", (), {"get_caller_identity": refused})()

    assert deploy.refuse_a_config_bucket_left_behind(NoSts(), deploy.STAGES["dev"], "us-east-1") is None


def test_two_deploys_within_one_second_create_two_change_sets(
        aws_here: boto3.Session, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """The change set was named after the second: two deploys of a stage started within one
    second (two operators, a CI retry) named theirs alike, and AWS refused the second
    (AlreadyExistsException)."""
    monkeypatch.setattr(deploy.time, "strftime", lambda *_: "20261206093000")  # one second for both
    assert _infra_only(aws_here, "--no-execute") == 0
    assert _infra_only(aws_here, "--no-execute") == 0, capsys.readouterr().err
    summaries = aws_here.client("cloudformation").list_change_sets(StackName="vmpool-dev")["Summaries"]
    names = [summary["ChangeSetName"] for summary in summaries]
    assert len(names) == len(set(names)) == 2, names
    assert all(name.startswith("vmpool-dev-20261206093000-") for name in names), names


UPLOADS_BEFORE = datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc)


def _upload_aged(session: boto3.Session, key: str, days_old: int) -> None:
    session.client("s3").put_object(Bucket=BUCKET, Key=key, Body=b"x")
    stored = s3_backends[DEFAULT_ACCOUNT_ID]["aws"].get_object(BUCKET, key)
    assert stored is not None
    stored.last_modified = UPLOADS_BEFORE - datetime.timedelta(days=days_old)


def test_a_deploy_keeps_the_newest_uploads_of_its_stage_and_deletes_the_rest(
        aws_here: boto3.Session, capsys: pytest.CaptureFixture[str]) -> None:
    """Each deploy of new code left its 4.8 MB zip (and its template) in the bucket for good.
    Once the stack is updated, the stage keeps the newest KEEP_UPLOADS of each (a rollback to a
    recent tag finds its zip) and the ones the stack uses; other stages' and other keys stay."""
    for age in range(1, 9):
        _upload_aged(aws_here, f"vmpool/dev/code-{age:020d}.zip", age)
        _upload_aged(aws_here, f"vmpool/dev/template-{age:020d}.json", age)
    _upload_aged(aws_here, "vmpool/prod/code-old.zip", 300)
    _upload_aged(aws_here, "vmpool/dev/notes.txt", 300)
    assert _infra_only(aws_here) == 0, capsys.readouterr().err
    assert "deleted 7 older uploads of dev" in capsys.readouterr().err  # 3 zips, 4 templates

    keys = {item["Key"] for item in aws_here.client("s3").list_objects_v2(Bucket=BUCKET)["Contents"]}
    assert {key for key in keys if "/code-" in key} == {
        "vmpool/prod/code-old.zip", *(f"vmpool/dev/code-{age:020d}.zip" for age in range(1, 6))}
    templates = {key for key in keys if key.startswith("vmpool/dev/template-")}
    assert len(templates) == deploy.KEEP_UPLOADS  # the one just uploaded and the 4 newest before it
    assert {f"vmpool/dev/template-{age:020d}.json" for age in range(1, 5)} < templates
    assert "vmpool/dev/notes.txt" in keys
    # What the stack uses stays whatever its age (a redeploy of an old tag: its upload is old).
    oldest = "vmpool/dev/code-00000000000000000005.zip"
    assert deploy.prune_uploads(aws_here.client("s3"), BUCKET, "vmpool/dev", 1, {oldest}) == [
        *(f"vmpool/dev/code-{age:020d}.zip" for age in (2, 3, 4)),
        *(f"vmpool/dev/template-{age:020d}.json" for age in (1, 2, 3, 4))]  # the newest: this deploy's


def test_uploads_that_cannot_be_deleted_leave_the_deploy_done_with_a_warning(
        aws_here: boto3.Session, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """A deploy role without s3:DeleteObject still deploys: the stack is updated before."""
    def refused(*_: Any) -> list[str]:
        raise ClientError({"Error": {"Code": "AccessDenied", "Message": "Access Denied"}}, "DeleteObjects")

    monkeypatch.setattr(deploy, "prune_uploads", refused)
    assert _infra_only(aws_here) == 0
    err = capsys.readouterr().err
    assert "deploy: the stack is updated; older uploads were not deleted: An error occurred (AccessDenied)" in err
    status = aws_here.client("cloudformation").describe_stacks(StackName="vmpool-dev")["Stacks"][0]["StackStatus"]
    assert status == "CREATE_COMPLETE"


def test_a_parameter_value_the_stack_cannot_take_is_refused_before_anything_is_uploaded(
        aws_here: boto3.Session, capsys: pytest.CaptureFixture[str]) -> None:
    """``RedisMinReplicaAcks`` takes "", "0" or "1" (the stack's Redis has one replica: with "2"
    every checkout would wait for a second one and answer 503). A value outside a parameter's
    ``AllowedValues``, bounds or pattern, or a parameter the template does not have (a typo), is
    refused in one line before the upload (CloudFormation refused them after it); a value it takes
    reaches the stack."""
    assert _infra_only(aws_here, "RedisMinReplicaAcks=2") == 1
    err = capsys.readouterr().err
    assert err.startswith("deploy: RedisMinReplicaAcks='2' is not one of '', '0', '1': Replicas that must have a "
                          "checkout") and err.count("\n") == 1, err
    assert _infra_only(aws_here, "RedisMinReplicaAck=0") == 1
    err = capsys.readouterr().err
    assert err.startswith("deploy: RedisMinReplicaAck is no parameter of the stack (its parameters: ") and (
        "RedisMinReplicaAcks" in err), err
    assert _infra_only(aws_here, "PoolEmptyMinutes=2000") == 1  # CloudWatch evaluates a day at most
    assert capsys.readouterr().err.startswith("deploy: PoolEmptyMinutes='2000' is outside 1 to 1440: ")
    assert deploy.main(["--stage", "dev", "--bucket", BUCKET, "--infra-only", "VpcId=vpc-1", "PrivateSubnetIds=s-1",
                        "VCenterCidr=10.1.0.0"], session=aws_here) == 1
    assert capsys.readouterr().err.startswith("deploy: VCenterCidr='10.1.0.0' does not match ")
    assert aws_here.client("s3").list_objects_v2(Bucket=BUCKET)["KeyCount"] == 0
    with pytest.raises(ClientError):
        aws_here.client("cloudformation").describe_stacks(StackName="vmpool-dev")

    assert _infra_only(aws_here, "RedisMinReplicaAcks=0") == 0, capsys.readouterr().err
    (stack,) = aws_here.client("cloudformation").describe_stacks(StackName="vmpool-dev")["Stacks"]
    assert {p["ParameterKey"]: p["ParameterValue"] for p in stack["Parameters"]}["RedisMinReplicaAcks"] == "0"


def test_a_stage_created_again_is_refused_while_secrets_of_its_names_wait_out_their_recovery_window(
        aws_here: boto3.Session, capsys: pytest.CaptureFixture[str]) -> None:
    """Secrets Manager keeps a deleted secret's name for its recovery window (7 to 30 days) and
    creates no secret of a name one holds (moto too, below). A stage whose secrets were deleted
    (by hand, or a stack deleted and created again within the window) failed at its secrets minutes
    into the create, with ElastiCache under way, and rolled back to ROLLBACK_COMPLETE. Refused
    before anything is uploaded, naming each secret and the commands; once they are gone for good
    the create runs."""
    secrets = aws_here.client("secretsmanager")
    secrets.create_secret(Name="vmpool/dev/vsphere", SecretString='{"username": "u", "password": "p"}')
    secrets.delete_secret(SecretId="vmpool/dev/vsphere", RecoveryWindowInDays=7)
    secrets.create_secret(Name="vmpool/dev/ldap", SecretString='{"password": "p"}')  # left outside any stack
    secrets.create_secret(Name="vmpool/dev/vsphere-old", SecretString="{}")  # another name: not in the way
    with pytest.raises(ClientError):  # what the stack's create would meet
        secrets.create_secret(Name="vmpool/dev/vsphere", SecretString="{}")

    assert _infra_only(aws_here) == 1
    err = capsys.readouterr().err
    assert err.startswith("deploy: the stack vmpool-dev creates secrets whose names Secrets Manager holds: "
                          "vmpool/dev/vsphere (scheduled for deletion on ") and err.count("\n") == 1, err
    assert "vmpool/dev/ldap (exists)" in err and "vsphere-old" not in err and "redis-auth" not in err
    assert err.endswith("for s in vmpool/dev/vsphere vmpool/dev/ldap; do aws secretsmanager delete-secret "
                        "--secret-id $s --force-delete-without-recovery; done\n"), err
    assert aws_here.client("s3").list_objects_v2(Bucket=BUCKET)["KeyCount"] == 0

    for name in ("vmpool/dev/vsphere", "vmpool/dev/ldap"):
        secrets.delete_secret(SecretId=name, ForceDeleteWithoutRecovery=True)
    assert _infra_only(aws_here) == 0, capsys.readouterr().err


def test_secrets_that_cannot_be_looked_at_do_not_stop_a_deploy(
        aws_here: boto3.Session, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without the right to ask (DescribeSecret refused) the secrets are not checked: the deploy
    goes on and CloudFormation has the last word."""
    real = aws_here.client

    def client(name: str, **options: Any) -> Any:
        made = real(name, **options)
        if name == "secretsmanager":
            def refused(**_: Any) -> Any:
                raise ClientError({"Error": {"Code": "AccessDeniedException", "Message": "no"}}, "DescribeSecret")
            made.describe_secret = refused
        return made

    monkeypatch.setattr(aws_here, "client", client)
    assert _infra_only(aws_here) == 0


def test_an_update_with_a_template_that_dropped_a_parameter_passes_no_previous_value_for_it(
        aws_here: boto3.Session, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """Every parameter of the stack went into the change set as ``UsePreviousValue``, also one the
    template being deployed no longer declares (a release that removed it; a rollback with this
    deploy to a release from before ``RedisMinReplicaAcks`` or ``CreateSsmEndpoint``), which
    CloudFormation refuses (``Parameters: [...] do not exist in the template``; moto does not).
    Only the parameters the template declares keep their previous values."""
    from infra import template

    assert _infra_only(aws_here, "RedisMinReplicaAcks=0") == 0, capsys.readouterr().err
    build = template.build

    def older_release(*args: Any, **options: Any) -> dict[str, Any]:
        built = build(*args, **options)
        del built["Parameters"]["RedisMinReplicaAcks"]
        del built["Conditions"]["HasRedisMinReplicaAcks"]
        del built["Outputs"]["RedisMinReplicaAcks"]
        return built

    monkeypatch.setattr(template, "build", older_release)
    sent: list[Any] = []
    real = aws_here.client

    def client(name: str, **options: Any) -> Any:
        made = real(name, **options)
        if name == "cloudformation":
            create = made.create_change_set
            made.create_change_set = lambda **call: sent.append(call["Parameters"]) or create(**call)
        return made

    monkeypatch.setattr(aws_here, "client", client)
    assert _infra_only(aws_here, "--no-execute") == 0, capsys.readouterr().err
    (parameters,) = sent
    keys = [p["ParameterKey"] for p in parameters]
    assert "RedisMinReplicaAcks" not in keys and {"VpcId", "PoolEmptyMinutes"} <= set(keys)
    assert {"ParameterKey": "PoolEmptyMinutes", "UsePreviousValue": True} in parameters


def test_a_plain_chalice_package_is_refused_saying_how_to_build_the_stages_package(
        aws: boto3.Session, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``chalice package out`` run by hand writes Chalice's own template (the three functions and
    the API: no VPC, Redis, queue or config bucket) and its unslimmed zip. ``--package out`` is
    refused in one line naming how to build the stage's package, with or without parameters, and
    nothing is uploaded. Before, it was refused for its first parameter (``VpcId is no parameter
    of the stack (its parameters: ;``) or, given none, deployed: functions with no Redis to reach."""
    out = tmp_path / "out"
    out.mkdir()
    function = {"Type": "AWS::Serverless::Function",
                "Properties": {"Runtime": "python3.11", "Handler": "app.tick", "CodeUri": "./deployment.zip"}}
    (out / "sam.json").write_text(json.dumps({
        "AWSTemplateFormatVersion": "2010-09-09", "Transform": "AWS::Serverless-2016-10-31",
        "Outputs": {"APIHandlerName": {"Value": {"Ref": "APIHandler"}}},
        "Resources": {"Tick": function, "Reconcile": function, "APIHandler": function}}))
    (out / "deployment.zip").write_bytes(b"PK\x05\x06" + b"\x00" * 18)  # an empty zip: never read
    for parameters in (["VpcId=vpc-0abc", "PrivateSubnetIds=subnet-1,subnet-2", "VCenterCidr=10.1.0.0/16"], []):
        code = deploy.main(["--stage", "dev", "--bucket", BUCKET, "--package", str(out), "--poll", "0.1",
                            *parameters], session=aws)
        err = capsys.readouterr().err
        assert code == 1 and err == (
            f"deploy: {out} is a plain `chalice package` output (its template has no VpcId parameter: none of the "
            "stack's VPC, Redis, queue or config bucket), not the stage's package; build it with infra/package.sh "
            f"dev {out} (make package STAGE=dev builds build/package), which runs chalice package with the stack "
            "merged in and slims the zip\n"), err
    (out / "sam.json").unlink()
    assert deploy.main(["--stage", "dev", "--bucket", BUCKET, "--package", str(out)], session=aws) == 1
    assert capsys.readouterr().err.startswith(f"deploy: {out} holds no sam.json: it is not a packaged stage; ")
    assert aws.client("s3").list_objects_v2(Bucket=BUCKET)["KeyCount"] == 0
    with pytest.raises(ClientError):
        aws.client("cloudformation").describe_stacks(StackName="vmpool-dev")
