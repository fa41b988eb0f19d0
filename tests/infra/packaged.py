"""The dev stage packaged for real (infra/package.sh: chalice package + merge), once per session.

A module of its own (not conftest.py) so the tests can import ``Package`` for their type hints."""

from __future__ import annotations

import json
import os
import subprocess
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import pytest

ROOT = Path(__file__).resolve().parents[2]
STAGE = "dev"


@dataclass
class Package:
    stage: str
    template_path: Path
    template: dict[str, Any]
    zip: zipfile.ZipFile

    @property
    def resources(self) -> dict[str, Any]:
        return self.template["Resources"]

    def of_type(self, kind: str) -> dict[str, Any]:
        return {name: r for name, r in self.resources.items() if r["Type"] == kind}


def pools_config(count: int) -> str:
    """A config of ``count`` pools written as vmpooler.yaml writes them (Ruby-symbol sections,
    aliases, template, folder, datastore, clone target), with the packaged default's provider."""
    pools = "\n".join(
        f"  - name: 'pool-{n:05d}'\n    alias: ['os-{n % 8}', 'group-{n % 100}']\n"
        f"    template: 'templates/os-{n % 8}-x86_64'\n    folder: 'vmpooler/pool-{n:05d}'\n"
        f"    datastore: 'vmstorage{n % 7}'\n    clone_target: 'cluster{n % 4}'\n    size: {1 + n % 5}\n"
        "    timeout: 15\n    ready_ttl: 60\n    provider: 'dummy'"
        for n in range(count))
    # Past 3,000 pools a day of the default tag limits' counts does not fit beside the pools'
    # figures in one /summary answer (docs/deploy.md): such a config must count fewer.
    tags = "  max_tag_names_per_day: 20\n  max_tag_values_per_day: 60\n" if count > 3000 else ""
    return (f"---\n:config:\n  site_name: 'vmpooler'\n  task_limit: 10\n{tags}:providers:\n  :dummy: {{}}\n"
            f":pools:\n{pools}\n")


OPERATOR_OSES = ("debian-12", "ubuntu-2404", "rhel-9", "win-2022", "sles-15", "macos-14", "centos-7", "fedora-40")


def operator_config(count: int) -> str:
    """A config of ``count`` pools as a site with several vCenters writes it: two vSphere
    providers (three datacenters) and the dummy one, LDAP logins over start_tls (389), a
    dynamic-dns server with a TSIG secret in SSM and self-registering VMs, pools of sizes 0 to 50
    with one to four aliases, a tenth of them sized by schedule and demand, a tenth with names of
    60 to 90 characters."""
    pools = []
    for n in range(count):
        system, arch = OPERATOR_OSES[n % 8], ("x86_64", "aarch64")[n // 8 % 2]
        name = f"{system}-{arch}-{n:04d}"
        if n % 10 == 3:
            name = f"release.engineering.{system}-{arch}.persistent_disk_{'x' * (n % 31)}_{n:04d}"
        aliases = [system, f"{system}-{arch}", f"team-{n % 37}", f"any-{arch}"][: 1 + n % 4]
        provider = ("east", "east", "west", "dummy")[n % 4]
        lines = [f"  - name: '{name}'", f"    alias: {aliases}", f"    template: 'templates/{system}-{arch}'",
                 f"    folder: 'vmpooler/{name[:60]}'", f"    size: {(0, 1, 2, 3, 5, 8, 10, 20, 50)[n % 9]}",
                 f"    provider: '{provider}'"]
        if provider != "dummy":
            lines += [f"    datastore: 'vmstorage{n % 7}'", f"    clone_target: 'cluster{n % 4}'"]
        if n % 8 == 1:
            lines.append("    datacenter: 'dc-east2'")
        lines.append(f"    dns_plugin: {('bind', 'selfreg')[n % 2]}")
        if n % 10 == 7:
            lines += ["    sizing:", "      schedule: [{days: weekdays, start: '07:00', end: '19:00', size: 20}]",
                      "      demand: {min: 1, max: 40}"]
        pools.append("\n".join(lines))
    return (f"""---
:config:
  site_name: 'vmpooler'
  task_limit: 40
  domain: vms.example.com
:auth:
  provider: ldap
  :ldap:
    host: 10.30.0.5
    base: ['ou=users,dc=example,dc=com', 'ou=contractors,dc=example,dc=com']
    user_object: [uid, sAMAccountName]
    service_account_hash:
      user_dn: cn=vmpool,ou=service,dc=example,dc=com
      password: {{secret: vmpool/{STAGE}/ldap, key: password}}
:providers:
  :east:
    provider_class: vsphere
    server: 10.20.0.10
    username: vmpool@vsphere.local
    password: {{secret: vmpool/{STAGE}/vsphere, key: east}}
    datacenter: dc-east1
  :west:
    provider_class: vsphere
    server: 10.20.1.10
    username: vmpool@vsphere.local
    password: {{secret: vmpool/{STAGE}/vsphere, key: west}}
    datacenter: dc-west
  :dummy: {{}}
:dns_configs:
  bind: {{dns_class: dynamic-dns, domain: vms.example.com, server: 10.9.0.53, tsig_key_name: vmpool,
         tsig_secret: {{ssm: /vmpool/{STAGE}/tsig}}}}
  selfreg: {{dns_class: dynamic-dns, domain: vms.example.com}}
:pools:
""" + "\n".join(pools) + "\n")


def build_package(config_file: Path | None = None, name: str = "", stage: str = STAGE) -> Iterator[Package]:
    """Package the stage (dev unless ``stage``); with ``config_file`` as its packaged config
    (``VMPOOL_CONFIG_FILE``, as ``make package`` takes it; the code is built once: later builds
    reuse Chalice's dependency zip and take seconds)."""
    out = ROOT / "build" / f"test-package-{stage}{name}"
    env = {name: value for name, value in os.environ.items() if name != "VMPOOL_CONFIG_FILE"}
    if config_file:
        env["VMPOOL_CONFIG_FILE"] = str(config_file)
    done = subprocess.run([str(ROOT / "infra" / "package.sh"), stage, str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=900, env=env)
    if done.returncode == 2 and "no Lambda-supported Python" in done.stderr:
        # Lambda no longer creates python3.11 functions, and the package must be built by the
        # Python it will run on: without a 3.12/3.13 here there is nothing valid to build.
        pytest.skip(done.stderr.strip())
    assert done.returncode == 0, f"infra/package.sh failed:\n{done.stderr[-4000:]}"
    template_path = out / "sam.json"
    with zipfile.ZipFile(out / "deployment.zip") as archive:
        yield Package(stage, template_path, json.loads(template_path.read_text()), archive)
