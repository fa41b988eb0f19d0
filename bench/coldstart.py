"""Cold start: how long a fresh interpreter takes to import the API handler module (``app``,
which also loads and validates the config) and the reconcile module, and the deployment zip's
size (build/package/deployment.zip, built by infra/package.sh).

Each import is timed in its own fresh interpreter (the interpreter's own start-up is not
counted); the figure is the median of several runs.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Any

from bench.common import CORES, ROOT, median, ms

MODULES = {"api_handler (app)": "app", "reconcile (chalicelib.manager.reconcile)": "chalicelib.manager.reconcile"}
ZIP = ROOT / "build" / "package" / "deployment.zip"


LAMBDA_PYTHON = "python3.13"
"""The runtime the package is built for (infra/package.sh): issue 14's cold-start target is the
API handler's import CPU on it, from the package as shipped."""


def import_seconds(module: str, python: str = sys.executable, cwd: Path = ROOT) -> tuple[float, float]:
    """(wall, CPU) seconds to import ``module`` in a fresh interpreter."""
    code = ("import time; began, cpu = time.perf_counter(), time.process_time(); import importlib; "
            f"importlib.import_module({module!r}); print(time.perf_counter() - began, time.process_time() - cpu)")
    environment = {key: value for key, value in os.environ.items() if not key.startswith("VMPOOL_")}
    environment["POWERTOOLS_METRICS_DISABLED"] = "true"
    if cwd != ROOT:
        environment["PYTHONPATH"] = str(cwd)
    output = subprocess.run([python, "-c", code], cwd=cwd, env=environment, check=True,
                            capture_output=True, text=True).stdout
    wall, cpu = output.strip().splitlines()[-1].split()
    return float(wall), float(cpu)


def packaged_import_cpu(runs: int) -> dict[str, Any]:
    """The API handler's import CPU on LAMBDA_PYTHON from the unpacked deployment zip (its
    precompiled bytecode), median of ``runs``; says why when it cannot be measured."""
    python = shutil.which(LAMBDA_PYTHON)
    if not ZIP.exists() or python is None:
        return {"skipped": "no build/package/deployment.zip (make package)" if python else f"no {LAMBDA_PYTHON}"}
    with tempfile.TemporaryDirectory(prefix="vmpool-coldstart-") as unpacked:
        with zipfile.ZipFile(ZIP) as package:
            package.extractall(unpacked)
        try:
            cpu = [import_seconds("app", python, Path(unpacked))[1] for _ in range(runs)]
        except subprocess.CalledProcessError as error:
            return {"skipped": f"import app failed on {LAMBDA_PYTHON}: {error.stderr.strip()[-300:]}"}
    return {"python": LAMBDA_PYTHON, "runs": runs, "import_cpu_ms": ms(median(cpu))}


def slowest_imports(module: str, top: int = 6) -> list[tuple[str, float]]:
    """The top-level packages ``module`` pulls in that cost most to import (cumulative ms,
    ``python -X importtime``): which dependency to trim or defer."""
    run = subprocess.run([sys.executable, "-X", "importtime", "-c", f"import {module}"], cwd=ROOT,
                         capture_output=True, text=True, check=True,
                         env={**os.environ, "POWERTOOLS_METRICS_DISABLED": "true"})
    rows = []
    for line in run.stderr.splitlines():
        parts = line.split("|")
        if len(parts) == 3 and parts[1].strip().isdigit():
            name = parts[2].rstrip()
            depth = (len(name) - len(name.lstrip())) // 2
            if depth >= 1 and "." not in name.strip():
                rows.append((name.strip(), int(parts[1]) / 1000))
    return [(name, round(took, 1)) for name, took in sorted(rows, key=lambda r: -r[1])[:top]]


def run(quick: bool = False) -> dict[str, Any]:
    runs = 3 if quick else 7
    result: dict[str, Any] = {"cores": CORES, "runs": runs, "python": sys.version.split()[0]}
    for label, module in MODULES.items():
        samples = [import_seconds(module) for _ in range(runs)]
        result[label] = {"import_ms": ms(median([wall for wall, _ in samples])),
                         "import_cpu_ms": ms(median([cpu for _, cpu in samples])),
                         "slowest_ms": slowest_imports(module)}
    result["api_handler_packaged"] = packaged_import_cpu(runs)
    if ZIP.exists():
        result["deployment_zip_bytes"] = ZIP.stat().st_size
    else:
        result["deployment_zip_bytes"] = None
        result["note"] = "no build/package/deployment.zip: run infra/package.sh to build it"
    return result
