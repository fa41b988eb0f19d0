"""Pools change without a code deploy: `make config-push` validates and publishes the YAML to the
stage's config bucket; running functions use it within REFRESH_SECONDS and the tick fans out to
the new set (moto S3, a real Redis)."""

from __future__ import annotations

import datetime
import fnmatch
import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Iterator
from urllib.parse import urlsplit

import boto3
import moto.s3.models
import pytest
import redis
from botocore.awsrequest import AWSResponse
from moto import mock_aws

import app
from chalicelib.clock import FakeClock
from chalicelib.config import MAX_CONFIG_CHARACTERS, MAX_YAML_CHARACTERS, canonical_json, from_canonical, parse
from chalicelib.config_source import DEFAULT_CONFIG_KEY, REFRESH_SECONDS, ConfigSource, S3Fetch, from_environment
from chalicelib.manager.dispatch import Ticker, newest_config
from chalicelib.services import Services
from infra import config_push, sync_config
from infra.sync_config import STAGES
from local.gateway import Gateway
from tests.aws_pages import PAGES, _Raw, answer_with_page
from tests.core.test_cold_import import fresh
from tests.support import emf_documents, emitted

BUCKET = "vmpool-dev-config-123456789012-us-east-1"
PACKAGED = ":providers:\n  :dummy: {}\n:pools:\n  - {name: debian, size: 1, provider: dummy}\n"
PUSHED = PACKAGED + "  - {name: fedora, size: 2, provider: dummy}\n"


TICK = {"version": "0", "id": "e", "detail-type": "Scheduled Event", "source": "aws.events", "account": "1",
        "time": "2026-01-01T00:00:00Z", "region": "us-east-1", "resources": [], "detail": {}}
CONTEXT = SimpleNamespace(function_name="vmpool-dev-tick", memory_limit_in_mb=512, aws_request_id="t",
                          invoked_function_arn="arn:aws:lambda:us-east-1:123456789012:function:vmpool-dev-tick",
                          get_remaining_time_in_millis=lambda: 30_000)


class Recording:
    def __init__(self) -> None:
        self.sent: list[Any] = []

    def send(self, messages: list[Any], budget_seconds: float | None = None) -> None:
        self.sent.extend(messages)


@pytest.fixture
def s3(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    with mock_aws():
        client = boto3.client("s3")
        client.create_bucket(Bucket=BUCKET)
        client.put_bucket_versioning(Bucket=BUCKET, VersioningConfiguration={"Status": "Enabled"})
        yield client


def push_file(tmp_path: Path, text: str, capsys: pytest.CaptureFixture[str],
              clock: FakeClock | None = None) -> tuple[int, str]:
    path = tmp_path / "vmpool.yaml"
    path.write_text(text)
    code = config_push.main(["--stage", "dev", "--file", str(path), "--bucket", BUCKET], session=boto3.Session(),
                            clock=clock)
    out = capsys.readouterr()
    return code, out.out + out.err


def test_config_push_refuses_an_invalid_config_and_publishes_nothing(s3: Any, tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    code, output = push_file(tmp_path, PACKAGED.replace("size: 1", "size: lots"), capsys)
    assert code == 1
    assert "nothing published" in output and "size" in output
    assert "Contents" not in s3.list_objects_v2(Bucket=BUCKET)


def test_config_push_refuses_a_yaml_file_larger_than_any_servable_config_before_parsing_it(
        s3: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """10,000 pools with long alias lists, 9 MiB: refused at once, saying the bound and why.
    Before, files up to 16 MiB were parsed whole (8 s of CPU and 200 MB at 16 MiB, ~15 s on a
    loaded machine) to be refused only then, for the size of the answers they would make."""
    aliases = ", ".join(f"alias-{n:03d}" for n in range(85))
    pools = "".join(f"  - {{name: pool-{n:05d}, size: 1, provider: dummy, alias: [{aliases}]}}\n"
                    for n in range(10_000))
    text = ":providers:\n  :dummy: {}\n:pools:\n" + pools
    assert MAX_YAML_CHARACTERS < len(text) < MAX_CONFIG_CHARACTERS
    code, output = push_file(tmp_path, text, capsys)
    assert code == 1 and "Contents" not in s3.list_objects_v2(Bucket=BUCKET)
    assert "nothing published" in output and f"more than {MAX_YAML_CHARACTERS} characters (8 MiB) of YAML" in output
    assert "Traceback" not in output


def test_config_push_refuses_extra_config_files_past_8_mib_together_and_publishes_nothing(
        s3: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Each extra file was bounded at 8 MiB, not the files together (up to 50 of them)."""
    half = "# " + "x" * (MAX_YAML_CHARACTERS // 2) + "\n"
    for name in ("a.yaml", "b.yaml"):
        (tmp_path / name).write_text(half)
    code, output = push_file(tmp_path, ":config:\n  extra_config: a.yaml, b.yaml\n" + PACKAGED, capsys)
    assert code == 1 and "Contents" not in s3.list_objects_v2(Bucket=BUCKET)
    refusal = (f"with {tmp_path / 'b.yaml'} the config and its extra_config files "
               f"hold more than {MAX_YAML_CHARACTERS} characters (8 MiB) of YAML together")
    assert "nothing published" in output and refusal in output, output
    assert "Traceback" not in output


def test_config_push_reads_the_extra_config_files_beside_the_config_wherever_it_runs(
        s3: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """``make config-push CONFIG=conf/my.yaml`` whose ``extra_config`` names a file beside it
    publishes that file's pools, as packaging and ``make run`` read them. Before, the push read
    the name from the working directory: the config was refused (``cannot read``), or merged with
    another file of that name found there, and those pools published."""
    folder, elsewhere = tmp_path / "conf", tmp_path / "elsewhere"
    for directory, pool in ((folder, "fedora"), (elsewhere, "centos")):
        directory.mkdir()
        (directory / "extra-pools.yaml").write_text(f":pools:\n  - {{name: {pool}, size: 2, provider: dummy}}\n")
    monkeypatch.chdir(elsewhere)
    path = folder / "vmpool.yaml"
    path.write_text(":config:\n  extra_config: extra-pools.yaml\n" + PACKAGED)
    code = config_push.main(["--stage", "dev", "--file", str(path), "--bucket", BUCKET], session=boto3.Session())
    assert code == 0, capsys.readouterr().err
    pushed = from_canonical(json.loads(s3.get_object(Bucket=BUCKET, Key=DEFAULT_CONFIG_KEY)["Body"].read()))
    assert pushed.pool_names == ("debian", "fedora")



def test_the_functions_read_the_object_config_push_writes_whatever_their_environment(
        s3: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The functions read the object named by ``VMPOOL_CONFIG_KEY`` when set, but config-push
    always wrote ``config/vmpool.yaml``: an operator who set it pushed configs that never
    reached a function. One key, no setting."""
    code, output = push_file(tmp_path, PUSHED, capsys)
    assert code == 0, output
    source = from_environment(parse(PACKAGED), FakeClock(), {"VMPOOL_CONFIG_BUCKET": BUCKET,
                                                             "VMPOOL_CONFIG_KEY": "config/other.yaml"})
    assert source is not None
    assert source.current().pool_names == ("debian", "fedora")


SECRETS = """\
:providers:
  :vsphere: {server: vc1.example.com, username: u, password: {secret: %s, key: password}}
  :dummy: {}
:dns_configs:
  bind: {dns_class: dynamic-dns, domain: lab.example.net, server: 10.9.0.53, tsig_key_name: k, tsig_secret: {ssm: %s}}
:auth:
  :provider: ldap
  :ldap:
    host: ldap.example.com
    base: ou=users,dc=example,dc=com
    service_account_hash: {user_dn: "cn=vmpool,dc=example,dc=com", password: {secret: %s}}
:pools:
  - {name: debian, size: 1, provider: vsphere, template: t, dns_plugin: bind}
"""


def test_config_push_refuses_secrets_the_stages_functions_may_not_read(s3: Any, tmp_path: Path,
                                                                        capsys: pytest.CaptureFixture[str]) -> None:
    """The stage's roles read vmpool/<stage>/vsphere (reconcile), vmpool/<stage>/ldap (API) and SSM
    parameters under /vmpool/<stage>/. A config naming others (vmpool.yaml.example's
    ``vmpool/vcenter``, docs/auth.md's ``prod/vmpool/ldap``, the other stage's) was published, and
    every pass of its pools failed on AccessDenied (every login, for the LDAP one)."""
    arn = "arn:aws:secretsmanager:us-east-1:123456789012:secret:vmpool/dev/vsphere-AbCdEf"
    code, output = push_file(tmp_path, SECRETS % ("vmpool/vcenter", "/vmpool/prod/tsig", "prod/vmpool/ldap"), capsys)
    assert code == 1 and "nothing published" in output
    assert "providers.vsphere.password: Secrets Manager secret 'vmpool/vcenter'" in output
    assert "dns_configs.bind.tsig_secret: SSM parameter '/vmpool/prod/tsig'" in output
    assert "auth.ldap.service_account_hash.password: Secrets Manager secret 'prod/vmpool/ldap'" in output
    assert "Contents" not in s3.list_objects_v2(Bucket=BUCKET)
    # the API does not read the vSphere secret
    code, output = push_file(tmp_path, SECRETS % ("vmpool/dev/vsphere", "/vmpool/dev/tsig", "vmpool/dev/vsphere"),
                             capsys)
    assert code == 1 and "auth.ldap.service_account_hash.password" in output and "providers" not in output

    code, output = push_file(tmp_path, SECRETS % (arn, "vmpool/dev/tsig", "vmpool/dev/ldap"), capsys)
    assert code == 0, output
    assert len(s3.list_objects_v2(Bucket=BUCKET)["Contents"]) == 1


def test_running_functions_pick_up_a_pushed_config_within_the_refresh(s3: Any, tmp_path: Path,
                                                                        redis_client: redis.Redis,
                                                                        capsys: pytest.CaptureFixture[str],
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    clock = FakeClock()
    services = Services(parse(PACKAGED), redis_client, clock=clock, prefix="pushtest:")
    source = ConfigSource(services.config, S3Fetch(BUCKET, DEFAULT_CONFIG_KEY, lambda: s3), clock)
    monkeypatch.setattr(app, "_services", services)
    monkeypatch.setattr(app, "_config", source)
    queue = Recording()
    monkeypatch.setattr(app, "_queue", queue)
    monkeypatch.setattr(app, "_ticker", Ticker())

    app.services()  # a warm function: its first look finds nothing pushed yet
    assert services.config.pool_names == ("debian",)

    code, output = push_file(tmp_path, PUSHED, capsys)
    assert code == 0, output
    published = s3.get_object(Bucket=BUCKET, Key=DEFAULT_CONFIG_KEY)
    assert published["ContentType"] == "application/json"  # the validated config, canonical: no YAML to parse
    assert from_canonical(json.loads(published["Body"].read())) == parse(PUSHED)
    clock.advance(REFRESH_SECONDS - 1)
    assert app.services().config.pool_names == ("debian",)  # cached
    clock.advance(1)
    assert app.services().config.pool_names == ("debian", "fedora")  # within the refresh
    # Ordered by the push's generation: a function a push behind leaves the pools to this one.
    generation = app.services().config.generation
    assert generation == max(float(published["Metadata"]["generation"]), published["LastModified"].timestamp()) > 0

    status, _, body = Gateway(app.app)(
        "GET", "/api/v3/status?view=pools", {}, b"", "127.0.0.1")
    assert status == 200 and b"fedora" in body  # the API serves the new pool
    app.tick(TICK, CONTEXT)
    assert sorted(message.pool for message, _ in queue.sent) == ["debian", "fedora"]


def test_a_bad_object_in_the_bucket_keeps_the_last_good_config(s3: Any, capsys: pytest.CaptureFixture[str]) -> None:
    clock = FakeClock()
    initial = parse(PACKAGED)
    source = ConfigSource(initial, S3Fetch(BUCKET, DEFAULT_CONFIG_KEY, lambda: s3), clock)
    s3.put_object(Bucket=BUCKET, Key=DEFAULT_CONFIG_KEY, Body=b"pools: [this is: not: valid")
    capsys.readouterr()
    assert source.current() is initial
    clock.advance(REFRESH_SECONDS)
    assert source.current() is initial  # the same bad object: not parsed, nor counted, again
    # Counted once, for an alarm (before, a log line alone said so).
    assert emitted(emf_documents(capsys.readouterr().out))[("ConfigRejected", ("service",))] == [1.0]
    s3.put_object(Bucket=BUCKET, Key=DEFAULT_CONFIG_KEY, Body=PUSHED.encode())
    clock.advance(REFRESH_SECONDS)
    assert source.current().pool_names == ("debian", "fedora")
    clock.advance(REFRESH_SECONDS)
    assert source.current().pool_names == ("debian", "fedora")  # unchanged object: a 304, same config



def _config_lines(caplog: pytest.LogCaptureFixture) -> list[tuple[str, str]]:
    return [(record.levelname, record.getMessage()) for record in caplog.records
            if record.name == "vmpool" and "config" in record.getMessage()]


def test_a_stage_with_nothing_pushed_yet_runs_on_the_packaged_config_and_reports_no_failure(
        s3: Any, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture) -> None:
    """A new stage's bucket is empty until its first `make config-push`: the functions run on the
    packaged config, which is how docs/deploy.md describes it. Before, every warm function logged
    "config not refreshed: S3 failed" and counted ``AwsCallFailures`` every 30 s (in AWS with
    ``AccessDenied``: the roles could not list the bucket, so S3 would not say the key was missing).
    Now one info line says so; a pushed object that is later deleted is one warning, the config in
    use staying."""
    clock = FakeClock()
    initial = parse(PACKAGED)
    source = ConfigSource(initial, S3Fetch(BUCKET, DEFAULT_CONFIG_KEY, lambda: s3), clock)
    capsys.readouterr()
    for _ in range(3):
        assert source.current() is initial
        clock.advance(REFRESH_SECONDS)
    assert _config_lines(caplog) == [
        ("INFO", "no config pushed to the bucket yet: the packaged config is in use (make config-push)")]
    s3.put_object(Bucket=BUCKET, Key=DEFAULT_CONFIG_KEY, Body=PUSHED.encode())
    assert source.current().pool_names == ("debian", "fedora")
    caplog.clear()
    s3.delete_object(Bucket=BUCKET, Key=DEFAULT_CONFIG_KEY)  # versioned: a delete marker
    for _ in range(3):
        clock.advance(REFRESH_SECONDS)
        assert source.current().pool_names == ("debian", "fedora")
    assert _config_lines(caplog) == [
        ("WARNING", ("the pushed config object is gone from the bucket; the config in use stays until one is "
                     "pushed again"))]
    assert ("AwsCallFailures", ("service",)) not in emitted(emf_documents(capsys.readouterr().out))


@pytest.mark.parametrize("stage", sorted(STAGES))
@pytest.mark.parametrize("role", ["api", "tick", "reconcile"])
def test_every_role_may_list_the_config_bucket_so_a_missing_object_reads_as_missing(stage: str, role: str) -> None:
    """S3 answers a GetObject of a missing key with 404 ``NoSuchKey`` only to a caller that may
    list the bucket, and with 403 ``AccessDenied`` otherwise (moto, which checks no IAM, always
    says 404): each role may list the stage's config bucket (named as the template names it)
    and read its config objects, and nothing else of S3."""
    statements = sync_config.policy(STAGES[stage], role, zones=[])["Statement"]
    granted = {action: resource for statement in statements for action in statement["Action"]
               if action.startswith("s3:") for resource in statement["Resource"]}
    bucket = STAGES[stage].config_bucket_prefix + "123456789012-us-east-1"
    assert sorted(granted) == ["s3:GetObject", "s3:ListBucket"]
    assert fnmatch.fnmatchcase(f"arn:aws:s3:::{bucket}", granted["s3:ListBucket"])
    assert fnmatch.fnmatchcase(f"arn:aws:s3:::{bucket}/{DEFAULT_CONFIG_KEY}", granted["s3:GetObject"])



@pytest.mark.parametrize("region", ["us-east-1", "eu-west-1"])
def test_functions_fetch_the_config_from_the_regional_s3_name_the_vpc_endpoint_answers(
        region: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The stack's S3 interface endpoint answers, by private DNS, ``s3.<region>.amazonaws.com``
    and its subdomains, and the functions' security group reaches nothing else
    (``CreateVpcEndpoints=true``). botocore sends a us-east-1 client to the global
    ``<bucket>.s3.amazonaws.com`` unless told otherwise: a stage in us-east-1 timed out on every
    config refresh (public addresses, no route), and no push ever reached its functions."""
    monkeypatch.setenv("AWS_DEFAULT_REGION", region)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.delenv("AWS_S3_US_EAST_1_REGIONAL_ENDPOINT", raising=False)
    hosts: list[str] = []

    def not_sent(request: Any, **_: Any) -> AWSResponse:
        hosts.append(urlsplit(request.url).hostname or "")
        return AWSResponse(request.url, 304, {"Content-Length": "0"}, _Raw(b""))

    fetch = S3Fetch(BUCKET, DEFAULT_CONFIG_KEY)  # the client the functions build
    fetch._client = fetch._client_factory()
    fetch._client.meta.events.register("before-send", not_sent)
    assert fetch("an-etag") is None  # S3's "not modified"
    assert hosts == [f"{BUCKET}.s3.{region}.amazonaws.com"]


COLD_START = f"""
import json, os
import boto3
from moto import mock_aws

with mock_aws():
    s3 = boto3.client("s3")
    s3.create_bucket(Bucket={BUCKET!r})
    with open(os.environ["PUSHED_FILE"], "rb") as pushed:
        s3.put_object(Bucket={BUCKET!r}, Key={DEFAULT_CONFIG_KEY!r}, Body=pushed.read())
    import chalicelib.config
    built = []
    build = chalicelib.config.build

    def counting(document, reader=None):
        built.append(len(document.get("pools") or []))
        return build(document, reader)

    chalicelib.config.build = counting
    import app
    at_import = len(built)
    served = app.services().config
    print(json.dumps({{"at_import": at_import, "builds": len(built), "pools": list(served.pool_names),
                      "generation": served.generation}}))
"""


@pytest.mark.parametrize(("pushed", "builds", "served"), [
    ("the packaged config", 1, ["debian"]),
    ("another config", 2, ["debian", "fedora"]),
    ("an invalid config", 2, ["debian"]),
])
def test_a_cold_start_builds_its_config_once_and_serves_the_buckets(tmp_path: Path, pushed: str, builds: int,
                                                                    served: list[str]) -> None:
    """A fresh interpreter as Lambda starts one: ``import app`` builds the packaged config, the
    first request reads the bucket's. When the bucket holds the same text (a stage packaged with
    its pools and pushed) it is not built a second time (before: about 0.17 s of CPU more on the
    first request at 2,000 pools); another config is the one served; an invalid one is refused
    and the packaged one stays, as before."""
    packaged = canonical_json(parse(PACKAGED))
    objects = {"the packaged config": packaged, "another config": canonical_json(parse(PUSHED)),
               "an invalid config": json.dumps({**json.loads(packaged), "pools": [{"name": "debian", "size": "1"}]})}
    (tmp_path / "packaged.json").write_text(packaged)
    (tmp_path / "pushed.json").write_text(objects[pushed])

    found = fresh(COLD_START, {"VMPOOL_CONFIG_FILE": str(tmp_path / "packaged.json"), "VMPOOL_CONFIG_BUCKET": BUCKET,
                               "PUSHED_FILE": str(tmp_path / "pushed.json"), "AWS_DEFAULT_REGION": "us-east-1"})

    assert (found["at_import"], found["builds"], found["pools"]) == (1, builds, served)
    # The bucket's object, reused or built, is ordered by when S3 wrote it; the packaged one is not.
    assert (found["generation"] > 0) is (pushed != "an invalid config")


def test_pools_are_added_and_removed_at_1000_pools_by_a_push_alone(s3: Any, tmp_path: Path,
                                                                  redis_client: redis.Redis,
                                                                  capsys: pytest.CaptureFixture[str],
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """No deploy: a push of 1,000 pools reaches a warm function, which fans out to every one;
    a push without one of them drains it."""
    pools = [f"pool-{n:04d}" for n in range(1000)]
    thousand = ":providers:\n  :dummy: {}\n:pools:\n" + "".join(
        f"  - {{name: {name}, size: 1, provider: dummy}}\n" for name in pools)
    clock = FakeClock()
    services = Services(parse(PACKAGED), redis_client, clock=clock, prefix="push1000:")
    monkeypatch.setattr(app, "_services", services)
    monkeypatch.setattr(app, "_config", ConfigSource(services.config, S3Fetch(BUCKET, DEFAULT_CONFIG_KEY, lambda: s3),
                                                     clock))
    queue = Recording()
    monkeypatch.setattr(app, "_queue", queue)
    monkeypatch.setattr(app, "_ticker", Ticker())

    for text, expected in ((thousand, pools), (thousand.replace("  - {name: pool-0500, size: 1, provider: dummy}\n",
                                                                ""), pools)):
        code, output = push_file(tmp_path, text, capsys)
        assert code == 0, output
        clock.advance(REFRESH_SECONDS)
        queue.sent.clear()
        report = app.tick(TICK, CONTEXT)
        assert sorted(message.pool for message, _ in queue.sent) == expected
    assert report["pools"] == 999 and report["draining"] == ["pool-0500"]


class _CountingS3:
    """The moto client, counting the bytes each GET's body gave the reader (a GET answered
    304, the object unchanged, raises and counts nothing)."""

    def __init__(self, s3: Any) -> None:
        self.s3 = s3
        self.bytes_read: list[int] = []

    def get_object(self, **options: Any) -> dict[str, Any]:
        answer = self.s3.get_object(**options)
        body, counts = answer["Body"], self.bytes_read
        counts.append(0)

        class Counted:
            def read(self, size: int = -1) -> bytes:
                data = body.read(size)
                counts[-1] += len(data)
                return data

            def close(self) -> None:
                body.close()

        return {**answer, "Body": Counted()}


@pytest.mark.parametrize("body", [b"# " + b"x" * (MAX_CONFIG_CHARACTERS + 10) + b"\n", b"pools: [\xff\xfe]\n"],
                         ids=["too-large", "not-utf-8"])
def test_an_object_no_config_can_be_is_read_once_and_only_as_far_as_the_limit(s3: Any, body: bytes) -> None:
    """A bucket object larger than any config (or not text) is refused: the function reads no
    more of it than the largest config, keeps the last good config, and does not download the
    same object again at every refresh."""
    clock = FakeClock()
    initial = parse(PACKAGED)
    counting = _CountingS3(s3)
    source = ConfigSource(initial, S3Fetch(BUCKET, DEFAULT_CONFIG_KEY, lambda: counting), clock)
    s3.put_object(Bucket=BUCKET, Key=DEFAULT_CONFIG_KEY, Body=body)

    assert source.current() is initial
    assert counting.bytes_read[0] <= MAX_CONFIG_CHARACTERS + 1
    clock.advance(REFRESH_SECONDS)
    assert source.current() is initial
    assert len(counting.bytes_read) == 1  # the same object again: a 304, nothing read

    s3.put_object(Bucket=BUCKET, Key=DEFAULT_CONFIG_KEY, Body=PUSHED.encode())
    clock.advance(REFRESH_SECONDS)
    assert source.current().pool_names == ("debian", "fedora")


def test_config_push_refuses_a_key_written_twice_naming_its_lines(s3: Any, tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """Before, the last `size:` won silently and the config was published."""
    code, output = push_file(tmp_path, PACKAGED.replace("size: 1,", "size: 1, template: t/a, size: 10,"), capsys)
    assert code == 1
    assert f"pools[0].size: written twice, at lines 4 and 4 of {tmp_path / 'vmpool.yaml'}" in output, output
    assert "nothing published" in output
    assert "Contents" not in s3.list_objects_v2(Bucket=BUCKET)


def test_a_key_written_twice_with_one_value_is_pushed_and_warned_about_by_the_push_and_every_function(
        s3: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture) -> None:
    code, output = push_file(tmp_path, PUSHED + ":statsd:\n  port: 8125\n  :port: 8126\n", capsys)
    assert code == 0, output
    warning = (f"statsd.port: written twice, at lines 7 and 8 of {tmp_path / 'vmpool.yaml'}, in a section "
               "vmpool ignores: the last one would be used")
    assert f"config-push: warning: {warning}\n" in output
    # A function picking it up logs it (a JSON line of the Powertools logger).
    source = ConfigSource(parse(PACKAGED), S3Fetch(BUCKET, DEFAULT_CONFIG_KEY, lambda: s3), FakeClock())
    assert source.current().pool_names == ("debian", "fedora")
    assert [(record.name, record.levelname) for record in caplog.records
            if record.getMessage() == f"config: {warning}"] == [("vmpool", "WARNING")]


@pytest.mark.parametrize("page", sorted(PAGES))
def test_a_page_instead_of_s3s_answer_keeps_the_config_and_is_counted(
        s3: Any, page: str, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture) -> None:
    """A proxy's or an outage's page instead of S3's answer to a function's config refresh: the
    config in use stays, a warning line says what S3 did (a code, never the page) and it is
    counted (``AwsCallFailures``). Before, a page with status 200 failed on its missing ETag:
    a KeyError logged as if it were a bug, counted nowhere."""
    clock = FakeClock()
    initial = parse(PACKAGED)
    s3.put_object(Bucket=BUCKET, Key=DEFAULT_CONFIG_KEY, Body=PUSHED.encode())
    paged = boto3.client("s3")
    back = answer_with_page(paged, *PAGES[page])
    source = ConfigSource(initial, S3Fetch(BUCKET, DEFAULT_CONFIG_KEY, lambda: paged), clock)
    capsys.readouterr()

    assert source.current() is initial
    assert emitted(emf_documents(capsys.readouterr().out))[("AwsCallFailures", ("service",))] == [1.0]
    [line] = [record for record in caplog.records if record.getMessage().startswith("config not refreshed")]
    assert line.levelname == "WARNING" and vars(line)["failure"] in ("unreadable", "unavailable")
    assert "html" not in vars(line)["error"].lower()
    back()
    clock.advance(REFRESH_SECONDS)
    assert source.current().pool_names == ("debian", "fedora")  # S3 answers again: the push is live


S3_DENIED = (b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>AccessDenied</Code><Message>User: '
             b'arn:aws:sts::123456789012:assumed-role/vmpool-dev-reconcile/vmpool-dev-reconcile is not authorized to '
             b'perform: s3:GetObject on resource: "arn:aws:s3:::vmpool-dev-config-123456789012-us-east-1/config/'
             b'vmpool.yaml" because no identity-based policy allows the s3:GetObject action</Message>'
             b"<RequestId>R</RequestId><HostId>H</HostId></Error>")
"""S3's 403 to a role without ``s3:GetObject`` on the object, as S3 writes it since 2024."""


def test_an_s3_refusal_is_logged_without_the_accounts_arns(
        s3: Any, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture) -> None:
    """S3 refuses a function's config refresh (its role lost ``s3:GetObject``): the warning says
    what S3 said, the code and the action denied, with the role's and the bucket's ARNs and the
    account ID withheld, as a route53 refusal's are. Before, the line logged them whole
    (``User: arn:aws:sts::123456789012:assumed-role/...``) to whoever reads the logs."""
    initial = parse(PACKAGED)
    denied = boto3.client("s3")
    answer_with_page(denied, 403, S3_DENIED)
    source = ConfigSource(initial, S3Fetch(BUCKET, DEFAULT_CONFIG_KEY, lambda: denied), FakeClock())

    assert source.current() is initial
    [line] = [record for record in caplog.records if record.getMessage().startswith("config not refreshed")]
    error = vars(line)["error"]
    assert error.startswith("s3 get config: AccessDenied: User: (ARN withheld) is not authorized to perform: "
                            "s3:GetObject on resource: ")
    assert "123456789012" not in error and "arn:" not in error and "vmpool-dev-reconcile" not in error


DNS_CONFIG = """\
:providers:
  :dummy: {}
:dns_configs:
  bind: {dns_class: dynamic-dns, domain: lab.example.net, server: 10.9.0.53, port: %d, tsig_key_name: k,
         tsig_secret: {ssm: /vmpool/dev/tsig}}
  aws: {dns_class: route53, domain: aws.example.net, hosted_zone_id: Z0123456789ABC}
:pools:
  - {name: debian, size: 1, provider: dummy, dns_plugin: %s}
"""


def deployed_stack(parameters: dict[str, str]) -> None:
    """A stack ``vmpool-dev`` (moto) deployed with ``parameters``, its config bucket ``BUCKET``."""
    template = {"Parameters": {key: {"Type": "String", "Default": ""} for key in parameters},
                "Resources": {"Queue": {"Type": "AWS::SQS::Queue"}},
                "Outputs": {"ConfigBucket": {"Value": BUCKET}}}
    boto3.client("cloudformation").create_stack(
        StackName="vmpool-dev", TemplateBody=json.dumps(template),
        Parameters=[{"ParameterKey": key, "ParameterValue": value} for key, value in parameters.items()])


def push_to_stack(tmp_path: Path, text: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """config-push as an operator runs it: the bucket from the stack's output."""
    path = tmp_path / "vmpool.yaml"
    path.write_text(text)
    code = config_push.main(["--stage", "dev", "--file", str(path)], session=boto3.Session())
    out = capsys.readouterr()
    return code, out.out + out.err


@pytest.mark.parametrize(("parameters", "port", "plugin", "problem"), [
    ({"DnsServerCidr": "", "DnsServerPort": "53", "CreateVpcEndpoints": "true"}, 53, "bind",
     "dns_configs.bind: server 10.9.0.53 port 53: the stack has no DnsServerCidr"),
    ({"DnsServerCidr": "10.8.0.0/24", "DnsServerPort": "53", "CreateVpcEndpoints": "true"}, 53, "bind",
     "dns_configs.bind: server 10.9.0.53 is outside the stack's DnsServerCidr 10.8.0.0/24"),
    ({"DnsServerCidr": "10.9.0.0/24", "DnsServerPort": "53", "CreateVpcEndpoints": "true"}, 5353, "bind",
     "dns_configs.bind: server 10.9.0.53 port 5353: the stack's DnsServerPort is 53"),
    ({"DnsServerCidr": "", "DnsServerPort": "53", "CreateVpcEndpoints": "true"}, 53, "aws",
     "dns_configs.aws: route53 is reached through a NAT gateway only; the stack has CreateVpcEndpoints=true"),
], ids=["no-cidr", "outside", "port", "route53-endpoints"])
def test_config_push_refuses_dns_the_deployed_network_does_not_reach(
        s3: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str], parameters: dict[str, str], port: int,
        plugin: str, problem: str) -> None:
    """A DNS service the pushed config adds needs the network a deploy gives (``DnsServerCidr``,
    ``DnsServerPort``, NAT for Route 53); only the packaged config's entries were checked, at
    deploy. Before, such a push was published and every VM of the pool stayed pending
    (``DNS record not created``) until its timeout destroyed it. Now refused, with the deploy to run."""
    deployed_stack(parameters)
    code, output = push_to_stack(tmp_path, DNS_CONFIG % (port, plugin), capsys)
    assert code == 1 and "nothing published" in output and "Traceback" not in output
    assert problem in output and "make deploy STAGE=dev" in output
    assert "Contents" not in s3.list_objects_v2(Bucket=BUCKET)


def test_config_push_publishes_dns_the_deployed_network_reaches(s3: Any, tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str],
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    deployed_stack({"DnsServerCidr": "10.9.0.0/24", "DnsServerPort": "53", "CreateVpcEndpoints": "false"})
    granted = sync_config.route53_zones
    monkeypatch.setattr(sync_config, "route53_zones",  # the stage's own config manages the zone: IAM grants it
                        lambda stage, config=None: granted(stage, config) if config else ["Z0123456789ABC"])
    for plugin in ("bind", "aws"):
        code, output = push_to_stack(tmp_path, DNS_CONFIG % (53, plugin), capsys)
        assert code == 0, output


@pytest.mark.parametrize("page", ["200-html", "502-html"])
def test_config_push_says_an_aws_failure_in_a_line_and_publishes_nothing(
        s3: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str], page: str) -> None:
    """A page instead of CloudFormation's answer (a proxy, an outage): before, a traceback
    (botocore's KeyError for a well-formed HTML page, its ClientError for a 502)."""
    session = boto3.Session()

    class Paged:
        def client(self, service: str) -> Any:
            client = session.client(service)
            answer_with_page(client, *PAGES[page])
            return client

    path = tmp_path / "vmpool.yaml"
    path.write_text(PACKAGED)
    code = config_push.main(["--stage", "dev", "--file", str(path)], session=Paged())
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err and err.startswith("config-push: ")
    assert err.endswith("config-push: nothing published\n") and err.count("\n") == 2, err
    assert "Contents" not in s3.list_objects_v2(Bucket=BUCKET)


SSM_CONFIG = """\
:providers:
  :dummy: {}
:dns_configs:
  bind: {dns_class: dynamic-dns, domain: lab.example.net, tsig_key_name: k, tsig_secret: {ssm: /vmpool/dev/tsig}}
:pools:
  - {name: debian, size: 1, provider: dummy, dns_plugin: bind}
"""


@pytest.mark.parametrize(("parameters", "published"), [
    ({"CreateVpcEndpoints": "true"}, False),  # a stack deployed before CreateSsmEndpoint existed
    ({"CreateVpcEndpoints": "true", "CreateSsmEndpoint": "false"}, False),
    ({"CreateVpcEndpoints": "true", "CreateSsmEndpoint": "true"}, True),
    ({"CreateVpcEndpoints": "false", "CreateSsmEndpoint": "false"}, True),  # through the NAT gateway
], ids=["old-stack", "no-ssm-endpoint", "ssm-endpoint", "nat"])
def test_config_push_refuses_ssm_references_the_deployed_network_cannot_fetch(
        s3: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str], parameters: dict[str, str],
        published: bool) -> None:
    """SSM Parameter Store is reached through the stack's SSM endpoint (``CreateSsmEndpoint``) or
    a NAT gateway only. Before, a pushed ``{ssm: ...}`` reference was published and every fetch
    timed out: the pool's DNS records were never published (passes of a provider with such a
    password failed, LDAP logins answered 503)."""
    deployed_stack(parameters)
    code, output = push_to_stack(tmp_path, SSM_CONFIG, capsys)
    if published:
        assert code == 0, output
        return
    assert code == 1 and "nothing published" in output and "Traceback" not in output
    assert "dns_configs.bind.tsig_secret: SSM Parameter Store is reached through" in output
    assert 'make deploy STAGE=dev BUCKET=<deploy bucket> PARAMS="CreateSsmEndpoint=true"' in output
    assert "Contents" not in s3.list_objects_v2(Bucket=BUCKET)


@pytest.mark.parametrize("pusher_offset", [0.0, -3600.0, 3600.0], ids=["on-time", "behind", "ahead"])
def test_a_fix_pushed_within_the_same_second_is_the_newest_config(s3: Any, tmp_path: Path, redis_client: redis.Redis,
                                                                   capsys: pytest.CaptureFixture[str],
                                                                   monkeypatch: pytest.MonkeyPatch,
                                                                   pusher_offset: float) -> None:
    """An operator pushes a config, sees a mistake and pushes the fix at once: S3's Last-Modified
    (one-second resolution) is the same for both, and was each config's generation. Both were
    then the newest: for up to 30 s the functions still on the mistake ran passes with it
    (cloned its template, drained the fix's clones) against those on the fix. Now each push is
    later than the object it replaces, whatever the pusher's clock says, and one written by an
    older release (no generation of its own) is ordered by its Last-Modified as before."""
    written = datetime.datetime(2026, 12, 6, 15, 0, 0, 400_000, tzinfo=datetime.timezone.utc)
    monkeypatch.setattr(moto.s3.models, "utcnow", lambda: written.replace(tzinfo=None))  # all in one second
    pusher = FakeClock(written.timestamp() + pusher_offset)
    clock = FakeClock()

    def function() -> tuple[ConfigSource, Services]:
        source = ConfigSource(parse(PACKAGED), S3Fetch(BUCKET, DEFAULT_CONFIG_KEY, lambda: s3), clock)
        return source, Services(source.current(), redis_client, clock=clock, prefix="pushtest:")

    s3.put_object(Bucket=BUCKET, Key=DEFAULT_CONFIG_KEY, Body=canonical_json(parse(PACKAGED)).encode())  # older code
    older_release, on_older = function()
    mistake = PACKAGED + "  - {name: fedora, size: 2, provider: dummy, template: wrong}\n"
    assert push_file(tmp_path, mistake, capsys, pusher)[0] == 0
    on_mistake, with_mistake = function()
    assert push_file(tmp_path, PUSHED, capsys, pusher)[0] == 0
    on_fix, with_fix = function()
    versions = s3.list_object_versions(Bucket=BUCKET, Prefix=DEFAULT_CONFIG_KEY)["Versions"]
    assert len({version["LastModified"] for version in versions}) == 1 and len(versions) == 3

    generations = [source.current().generation for source in (older_release, on_mistake, on_fix)]
    assert generations == sorted(set(generations)), generations
    assert with_fix.config.pool("fedora").template != "wrong"
    assert newest_config(with_fix)
    assert not newest_config(with_mistake) and not newest_config(on_older)  # they leave the pools alone
    clock.advance(REFRESH_SECONDS)  # until they read the fix
    for source, services in ((on_mistake, with_mistake), (older_release, on_older)):
        services.use_config(source.current())
        assert services.config == with_fix.config and newest_config(services)


def test_config_push_refuses_a_route53_zone_the_stages_functions_may_not_change(
        s3: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The reconcile role may change the records of the hosted zones of the stage's packaged config
    only (IAM is deployed with the code). A pushed config naming another zone was published: in AWS
    every record change was refused (AccessDenied), so every VM of the entry's pools stayed pending
    until its timeout destroyed it, while ``make run`` (the operator's credentials) published them.
    Now refused, naming the zone and the deploy that grants it."""
    deployed_stack({"DnsServerCidr": "", "DnsServerPort": "53", "CreateVpcEndpoints": "false"})
    code, output = push_to_stack(tmp_path, DNS_CONFIG % (53, "aws"), capsys)
    assert code == 1 and "nothing published" in output and "Traceback" not in output
    assert "dns_configs.aws: hosted zone Z0123456789ABC" in output
    assert "chalicelib/vmpool.yaml" in output and "make deploy STAGE=dev" in output
    assert "Contents" not in s3.list_objects_v2(Bucket=BUCKET)


INLINE_PASSWORD = "hunter2-vcenter"
WITH_INLINE_SECRET = (":providers:\n  :vs: {provider_class: vsphere, server: vc, username: u, password: %s}\n"
                      "  :dummy: {}\n:pools:\n  - {name: debian, size: 1, provider: dummy}\n")
WITH_REFERENCE = WITH_INLINE_SECRET % "{secret: vmpool/dev/vsphere, key: vs}"


def test_a_push_names_the_older_versions_still_holding_a_secret_written_inline(
        s3: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The versioned bucket keeps a config pushed before config-push refused inline secrets (or
    copied in by hand) for 90 days, password and all. The push that moves the password to a
    reference says which versions hold one (by key path, never the value), that the secret is to be
    rotated, and how to delete each version; once they are deleted, the next push says nothing.
    Before, nothing said the password was still readable in the bucket."""
    old = [s3.put_object(Bucket=BUCKET, Key=DEFAULT_CONFIG_KEY,
                         Body=text.encode())["VersionId"]
           for text in (canonical_json(parse(WITH_INLINE_SECRET % INLINE_PASSWORD)), WITH_INLINE_SECRET % "other-pw")]

    code, output = push_file(tmp_path, WITH_REFERENCE, capsys)

    assert code == 0, output
    assert INLINE_PASSWORD not in output and "other-pw" not in output
    assert (f"config-push: warning: 2 version(s) of s3://{BUCKET}/{DEFAULT_CONFIG_KEY} hold secrets written inline "
            "(providers.vs.password), readable by whoever may read the bucket") in output
    assert "rotate those secrets" in output
    commands = [line.strip() for line in output.splitlines() if line.strip().startswith("aws s3api delete-object")]
    assert sorted(commands) == sorted(f"aws s3api delete-object --bucket {BUCKET} --key {DEFAULT_CONFIG_KEY} "
                                      f"--version-id {version}" for version in old)
    for version in old:  # what the commands do
        s3.delete_object(Bucket=BUCKET, Key=DEFAULT_CONFIG_KEY, VersionId=version)

    code, output = push_file(tmp_path, WITH_REFERENCE, capsys)
    assert code == 0 and "written inline" not in output, output
