"""Cold start as Lambda sees it: the dev stage packaged (infra/package.sh, slimmed by
infra/slim_zip.py) and unpacked as /var/task, each import timed in a fresh interpreter of the
runtime's Python that sees the zip and the runtime's SDK only (infra/lambda_sandbox.py).

- ``api``: ``import app`` with the dev stage's environment (tracing off): the API function's
  cold import (tick and the reconcile consumer import the same module). CPU time of the
  process (``time.process_time``), the interpreter's own start-up excluded; median of 7.
- ``api_traced``: the same with the prod stage's environment and package (tracing on:
  Powertools' Tracer and the X-Ray SDK, which only a stage that traces ships: infra/slim_zip.py).
- ``reconcile_first_use``: what the tick's or the consumer's first invocation adds after that:
  the reconcile code (``chalicelib.manager.dispatch`` and the pass), which the API never loads.
- ``vsphere_first_use``: what the consumer's first vSphere pass adds after that
  (``chalicelib.providers.vsphere.provider``, pyVmomi: the package itself imports nothing, so that
  the config can import the provider's settings module without pyVmomi).
- the zip's size, and its largest top-level packages.
"""

from __future__ import annotations

import collections
import subprocess
import zipfile
from pathlib import Path
from typing import Any

from bench.common import CORES, ROOT, median, ms
from infra import lambda_sandbox

PACKAGE = ROOT / "build" / "bench-package"
TASK_ROOT = ROOT / "build" / "bench-task-root"
TRACED_STAGE = "prod"
"""The stage whose package the traced case runs: dev's has no X-Ray SDK."""
TIMED = ("{setup}\nimport time\nbefore = time.process_time(); began = time.perf_counter()\n{code}\n"
         "print(time.process_time() - before, time.perf_counter() - began)")
CASES = {
    "api": ("dev", "", "import app"),
    "api_traced": (TRACED_STAGE, "", "import app"),
    "reconcile_first_use": ("dev", "import app", "import chalicelib.manager.dispatch"),
    "vsphere_first_use": ("dev", "import app, chalicelib.manager.dispatch",
                          "import chalicelib.providers.vsphere.provider"),
}


def timed(sandbox: lambda_sandbox.Sandbox, stage: str, setup: str, code: str) -> tuple[float, float]:
    """CPU and wall seconds of ``code`` (after ``setup``) in a fresh sandboxed interpreter."""
    done = sandbox.run(["-c", TIMED.format(setup=setup or "pass", code=code)], lambda_sandbox.stage_environment(stage),
                       {"POWERTOOLS_METRICS_DISABLED": "true"}, timeout=120)
    if done.returncode != 0:
        raise RuntimeError(f"{code!r} failed in the sandbox:\n{done.stderr[-3000:]}")
    cpu, wall = done.stdout.strip().splitlines()[-1].split()
    return float(cpu), float(wall)


def slowest_imports(sandbox: lambda_sandbox.Sandbox, top: int = 6) -> list[tuple[str, float]]:
    """The top-level packages ``import app`` spends most in (self time, ``-X importtime``):
    which dependency to trim or defer."""
    command = sandbox.command("-c", "import app")
    done = subprocess.run([command[0], "-X", "importtime", *command[1:]], cwd=sandbox.task_root,
                          env=sandbox.environment(lambda_sandbox.stage_environment("dev")),
                          capture_output=True, text=True, timeout=120)
    spent: collections.Counter[str] = collections.Counter()
    for line in done.stderr.splitlines():
        parts = line.split("|")
        if len(parts) == 3 and parts[0].rsplit(":", 1)[-1].strip().isdigit():
            spent[parts[2].strip().split(".")[0]] += int(parts[0].rsplit(":", 1)[-1]) / 1000
    return [(name, round(took, 1)) for name, took in spent.most_common(top)]


def largest_packages(deployment_zip: Path, top: int = 8) -> list[tuple[str, int]]:
    """Compressed bytes per top-level entry of the zip, largest first."""
    sizes: collections.Counter[str] = collections.Counter()
    with zipfile.ZipFile(deployment_zip) as archive:
        for member in archive.infolist():
            sizes[member.filename.split("/")[0]] += member.compress_size
    return sizes.most_common(top)


def run(quick: bool = False) -> dict[str, Any]:
    runs = 3 if quick else 7
    result: dict[str, Any] = {"cores": CORES, "runs": runs}
    sandboxes = {}
    for stage in ("dev", TRACED_STAGE):
        package = PACKAGE if stage == "dev" else PACKAGE.with_name(f"{PACKAGE.name}-{stage}")
        packaged = subprocess.run([str(ROOT / "infra" / "package.sh"), stage, str(package)], cwd=ROOT,
                                  capture_output=True, text=True, timeout=900)
        if packaged.returncode == 2:
            return {**result, "skipped": packaged.stderr.strip()[-300:]}
        if packaged.returncode != 0:
            raise RuntimeError(f"infra/package.sh failed:\n{packaged.stderr[-3000:]}")
        task_root = TASK_ROOT if stage == "dev" else TASK_ROOT.with_name(f"{TASK_ROOT.name}-{stage}")
        sandboxes[stage] = lambda_sandbox.unpack(package / "deployment.zip", task_root)
    deployment_zip = PACKAGE / "deployment.zip"
    sandbox = sandboxes["dev"]
    version = subprocess.run([str(sandbox.python), "-c", "import platform; print(platform.python_version())"],
                             capture_output=True, text=True, check=True).stdout.strip()
    result["python"] = version
    for name, (stage, setup, code) in CASES.items():
        samples = [timed(sandboxes[stage], stage, setup, code) for _ in range(runs)]
        cpu = sorted(sample[0] for sample in samples)
        result[name] = {"cpu_ms": ms(median(cpu)), "cpu_ms_min": ms(cpu[0]), "cpu_ms_max": ms(cpu[-1]),
                        "wall_ms": ms(median([sample[1] for sample in samples]))}
    result["api"]["slowest_ms"] = slowest_imports(sandbox)
    result["deployment_zip_bytes"] = deployment_zip.stat().st_size
    result["largest_packages_bytes"] = largest_packages(deployment_zip)
    return result
