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


def build_package(config_file: Path | None = None, name: str = "") -> Iterator[Package]:
    """Package the stage; with ``config_file`` as its packaged config (``VMPOOL_CONFIG_FILE``, as
    ``make package`` takes it; the code is built once: later builds reuse Chalice's dependency zip
    and take seconds)."""
    out = ROOT / "build" / f"test-package-{STAGE}{name}"
    env = {name: value for name, value in os.environ.items() if name != "VMPOOL_CONFIG_FILE"}
    if config_file:
        env["VMPOOL_CONFIG_FILE"] = str(config_file)
    done = subprocess.run([str(ROOT / "infra" / "package.sh"), STAGE, str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=900, env=env)
    if done.returncode == 2 and "no Lambda-supported Python" in done.stderr:
        # Lambda no longer creates python3.11 functions, and the package must be built by the
        # Python it will run on: without a 3.12/3.13 here there is nothing valid to build.
        pytest.skip(done.stderr.strip())
    assert done.returncode == 0, f"infra/package.sh failed:\n{done.stderr[-4000:]}"
    template_path = out / "sam.json"
    with zipfile.ZipFile(out / "deployment.zip") as archive:
        yield Package(STAGE, template_path, json.loads(template_path.read_text()), archive)
