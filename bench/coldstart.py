"""Cold start: how long a fresh interpreter takes to import the API handler module (``app``,
which also loads and validates the config) and the reconcile module, and the deployment zip's
size (build/package/deployment.zip, built by infra/package.sh).

Each import is timed in its own fresh interpreter (the interpreter's own start-up is not
counted); the figure is the median of several runs.
"""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

from bench.common import CORES, ROOT, median, ms

MODULES = {"api_handler (app)": "app", "reconcile (chalicelib.manager.reconcile)": "chalicelib.manager.reconcile"}
ZIP = ROOT / "build" / "package" / "deployment.zip"


def import_seconds(module: str) -> float:
    code = ("import time; began = time.perf_counter(); import importlib; "
            f"importlib.import_module({module!r}); print(time.perf_counter() - began)")
    environment = {key: value for key, value in os.environ.items() if not key.startswith("VMPOOL_")}
    environment["POWERTOOLS_METRICS_DISABLED"] = "true"
    output = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=environment, check=True,
                            capture_output=True, text=True).stdout
    return float(output.strip().splitlines()[-1])


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
        result[label] = {"import_ms": ms(median([import_seconds(module) for _ in range(runs)])),
                         "slowest_ms": slowest_imports(module)}
    if ZIP.exists():
        result["deployment_zip_bytes"] = ZIP.stat().st_size
    else:
        result["deployment_zip_bytes"] = None
        result["note"] = "no build/package/deployment.zip: run infra/package.sh to build it"
    return result
