"""What the operator pushes or packages is what the functions can read, and no secret travels in
the clear: ``make config-push``, packaging (``infra/slim_zip.py``, the step that writes the config
into the zip) and ``make chalice-deploy`` refuse, before anything is published, built or deployed,

- a secret written inline (each secret-bearing field: the vSphere password, LDAP's service
  account password, a dynamic-dns TSIG key, Redis's password; Route 53 has none: the functions'
  role is its credential). Before, it went into the zip (readable by whoever may read the deploy
  bucket or the function's code) and into every kept version of the config bucket;
- a config whose canonical JSON is more than the 16 MiB a function reads (many providers each
  carrying a CA bundle of up to 1 MiB). Before, the push was published and every function
  refused it (``s3 config: more than 16777216 bytes``), keeping the config it had;
- on the chalice deploy path, whose zip ships the stage's YAML as it is, a CA file's path. Before,
  an LDAP ``ca_file`` stopped every function's import (``no such file``) until a config-push."""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any, Iterator

import boto3
import pytest
from moto import mock_aws

from chalicelib.config import MAX_CONFIG_CHARACTERS, ConfigError, canonical_json, from_text, parse
from infra import config_push

ROOT = Path(__file__).resolve().parents[2]
BUCKET = "vmpool-dev-config-123456789012-us-east-1"
SECRET = "hunter2-in-the-clear"
POOL = "  - {name: p, size: 1, provider: vsphere, template: t, folder: f%s}\n"
VSPHERE = "  :vsphere: {server: vc.example.com, username: u, password: %s}\n"
REFERENCE = "{secret: vmpool/dev/vsphere, key: password}"

INLINE = {
    "providers.vsphere.password": ":providers:\n" + VSPHERE % SECRET + ":pools:\n" + POOL % "",
    "auth.ldap.service_account_hash.password": (
        ":auth:\n  provider: ldap\n  :ldap:\n    host: ldap.example.com\n    base: 'dc=example,dc=com'\n"
        "    service_account_hash: {user_dn: 'cn=vmpool,dc=example,dc=com', password: %s}\n" % SECRET
        + ":providers:\n" + VSPHERE % REFERENCE + ":pools:\n" + POOL % ""),
    "dns_configs.bind.tsig_secret": (
        ":providers:\n" + VSPHERE % REFERENCE
        + ":dns_configs:\n  bind: {dns_class: dynamic-dns, domain: lab.example.net, server: 10.9.0.53, "
          "tsig_key_name: k, tsig_secret: %s}\n" % SECRET + ":pools:\n" + POOL % ", dns_plugin: bind"),
    "redis.password": ":redis: {server: r, password: %s}\n" % SECRET + ":providers:\n" + VSPHERE % REFERENCE
                      + ":pools:\n" + POOL % "",
}


@pytest.fixture
def s3(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    with mock_aws():
        client = boto3.client("s3")
        client.create_bucket(Bucket=BUCKET)
        yield client


def push(tmp_path: Path, text: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    path = tmp_path / "vmpool.yaml"
    path.write_text(text)
    code = config_push.main(["--stage", "dev", "--file", str(path), "--bucket", BUCKET], session=boto3.Session())
    out = capsys.readouterr()
    return code, out.out + out.err


@pytest.mark.parametrize("field", sorted(INLINE))
def test_config_push_refuses_a_secret_written_inline_naming_its_field_never_its_value(
        s3: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str], field: str) -> None:
    code, output = push(tmp_path, INLINE[field], capsys)
    assert code == 1 and "Contents" not in s3.list_objects_v2(Bucket=BUCKET)
    assert f"{field}: a secret written inline" in output and "nothing published" in output
    assert "{secret: vmpool/<stage>/" in output  # what to write instead
    assert SECRET not in output


def test_config_push_publishes_the_same_config_with_references(s3: Any, tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    code, output = push(tmp_path, INLINE["providers.vsphere.password"].replace(SECRET, REFERENCE), capsys)
    assert code == 0, output
    assert "vmpool/dev/vsphere" in s3.get_object(Bucket=BUCKET, Key="config/vmpool.yaml")["Body"].read().decode()


def pem_file(path: Path, characters: int) -> Path:
    """A file of PEM certificate blocks (as ``config.carried_ca`` reads them) of about ``characters``."""
    block = "-----BEGIN CERTIFICATE-----\n" + "\n".join(
        base64.b64encode(os.urandom(48)).decode() for _ in range(40)) + "\n-----END CERTIFICATE-----\n"
    path.write_text(block * (characters // len(block)))
    return path


def test_config_push_refuses_a_config_larger_than_a_function_reads_naming_its_largest_parts(
        s3: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """17 vCenters, each trusting a corporate CA bundle of 0.99 MiB: a YAML of 3 KB, whose
    canonical JSON (each provider carrying its bundle) is over 16 MiB."""
    bundle = pem_file(tmp_path / "corp-ca.pem", 1_040_000)
    providers = "".join(f"  :vc{n}: {{provider_class: vsphere, server: vc{n}.example.com, username: u, "
                        f"password: {{secret: vmpool/dev/vsphere, key: vc{n}}}, ca_bundle: {bundle}}}\n"
                        for n in range(17))
    pools = "".join(f"  - {{name: p{n}, size: 1, provider: vc{n}, template: t, folder: f}}\n" for n in range(17))
    text = ":providers:\n" + providers + ":pools:\n" + pools
    with pytest.raises(ConfigError, match=f"more than {MAX_CONFIG_CHARACTERS} characters"):
        from_text(canonical_json(parse(text)), "s3 config")  # what every function would do with it

    code, output = push(tmp_path, text, capsys)
    assert code == 1 and "Contents" not in s3.list_objects_v2(Bucket=BUCKET)
    assert "nothing published" in output and f"more than the 16 MiB ({MAX_CONFIG_CHARACTERS} characters)" in output
    assert re.search(r"the largest parts: providers\.vc\d+: 1\.0\d MiB \(ca_bundle 1\.0\d MiB\);", output), output
    assert "more parts of 1 KiB or more" in output  # 17 providers, 5 shown


def zip_with_config(path: Path, text: str) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("chalicelib/vmpool.yaml", text)
        archive.writestr("app.py", "")
    return path


@pytest.mark.parametrize(("text", "said"), [
    (INLINE["providers.vsphere.password"], "providers.vsphere.password: a secret written inline"),
    (":providers:\n  :vsphere: {server: vc.example.com, username: u, password: " + REFERENCE
     + ", ca_bundle: /etc/vmpool/missing-ca.pem}\n:pools:\n" + POOL % "",
     "providers.vsphere.ca_bundle: /etc/vmpool/missing-ca.pem: CA file not carried"),
], ids=["inline-secret", "ca-bundle-not-carried"])
def test_packaging_refuses_a_config_the_functions_cannot_use_and_leaves_no_zip(tmp_path: Path, text: str,
                                                                                said: str) -> None:
    """The packaging step that writes the config into the zip (infra/package.sh runs it) refuses,
    and leaves no zip to deploy (Chalice's holds the YAML as written). Before, the password was in
    the deployed zip and a vCenter's missing CA file travelled as a path every pass failed on."""
    package = zip_with_config(tmp_path / "deployment.zip", text)
    done = subprocess.run([sys.executable, "-m", "infra.slim_zip", str(package), "--config", "chalicelib/vmpool.yaml"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode != 0, done.stderr
    assert said in done.stderr and "nothing packaged" in done.stderr and "Traceback" not in done.stderr
    assert SECRET not in done.stderr + done.stdout
    assert not package.exists()


@pytest.fixture
def stage_config() -> Iterator[Path]:
    """The dev stage's packaged config file (what Chalice ships); the repository's comes back after."""
    name = json.loads((ROOT / ".chalice" / "config.json").read_text())["stages"]["dev"]["environment_variables"][
        "VMPOOL_CONFIG_FILE"]
    path = ROOT / name
    saved = path.read_text()
    yield path
    path.write_text(saved)


def test_chalice_deploy_refuses_a_config_naming_a_ca_file_before_building_anything(
        stage_config: Path, tmp_path: Path) -> None:
    """The chalice deploy path ships the YAML, validated again by every function where the CA
    file is not: refused at once, naming the field and the fixes (LAMBDA_PYTHON names no Python:
    the check comes before the build)."""
    ca_file = pem_file(tmp_path / "corp-ca.pem", 5_000)
    stage_config.write_text(
        ":auth:\n  provider: ldap\n  :ldap:\n    host: ldap.example.com\n    base: 'dc=example,dc=com'\n"
        f"    ca_file: {ca_file}\n:providers:\n  :dummy: {{}}\n:pools:\n  - {{name: p, size: 1, provider: dummy}}\n")
    env = {**os.environ, "LAMBDA_PYTHON": str(tmp_path / "no-python"), "PYTHON": sys.executable,
           "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_ENDPOINT_URL": "http://127.0.0.1:9"}
    done = subprocess.run([str(ROOT / "infra" / "chalice_deploy.sh"), "dev"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 1, done.stderr
    assert f"auth.ldap.ca_file: {ca_file}: a CA file's path" in done.stderr
    assert "auth.ldap.ca_data" in done.stderr and "make deploy" in done.stderr and "nothing deployed" in done.stderr


def test_chalice_deploy_ships_a_config_carrying_its_certificates(stage_config: Path, tmp_path: Path) -> None:
    """The same config with the certificates written in it (``ca_data``) passes the check."""
    pem = pem_file(tmp_path / "corp-ca.pem", 5_000).read_text()
    indented = "".join(f"      {line}\n" for line in pem.splitlines())
    stage_config.write_text(
        ":auth:\n  provider: ldap\n  :ldap:\n    host: ldap.example.com\n    base: 'dc=example,dc=com'\n"
        f"    ca_data: |\n{indented}:providers:\n  :dummy: {{}}\n:pools:\n  - {{name: p, size: 1, provider: dummy}}\n")
    done = subprocess.run([sys.executable, "-m", "infra.shipped_config", "--chalice-deploy", str(stage_config)],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


def test_chalice_deploy_refuses_an_extra_config_file_chalice_would_not_ship(stage_config: Path, tmp_path: Path) -> None:
    """Chalice ships chalicelib/ beside app.py: an ``extra_config`` file elsewhere is not in the
    zip, and every function's import would fail reading it. One inside chalicelib/ ships."""
    outside = tmp_path / "more-pools.yaml"
    outside.write_text(":pools:\n  - {name: q, size: 1, provider: dummy}\n")
    stage_config.write_text(f":config:\n  extra_config: {outside}\n:providers:\n  :dummy: {{}}\n:pools:\n"
                            "  - {name: p, size: 1, provider: dummy}\n")
    done = subprocess.run([sys.executable, "-m", "infra.shipped_config", "--chalice-deploy", str(stage_config)],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and f"config.extra_config: {outside}: outside chalicelib/" in done.stderr

    inside = stage_config.parent / "test-shipped-more-pools.yaml"
    inside.write_text(outside.read_text())
    try:
        stage_config.write_text(stage_config.read_text().replace(str(outside), inside.name))
        done = subprocess.run([sys.executable, "-m", "infra.shipped_config", "--chalice-deploy", str(stage_config)],
                              cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
    finally:
        inside.unlink()
