"""Run Python against an unpacked deployment zip as the Lambda runtime would: the runtime's
Python, ``/var/task`` = the unpacked zip first on the path, then only what the runtime itself
provides (the AWS SDK: ``build/venv-<version>/runtime-sdk``, infra/lambda_venv.sh), nothing else.

The tests run the packaged functions this way (so nothing the code imports was slimmed away,
infra/slim_zip.py) and ``make bench`` times their cold import (bench/coldstart.py)."""

from __future__ import annotations

import json
import shutil
import subprocess
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

ROOT = Path(__file__).resolve().parents[1]

LAMBDA_ENVIRONMENT = {"AWS_REGION": "us-east-1", "AWS_DEFAULT_REGION": "us-east-1",
                      "AWS_LAMBDA_FUNCTION_NAME": "vmpool", "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "512",
                      "LANG": "en_US.UTF-8", "TZ": ":UTC"}


class NoLambdaPython(Exception):
    """No Python 3.12/3.13 here (infra/lambda_venv.sh exits 2): nothing valid to run."""


@dataclass(frozen=True)
class Sandbox:
    python: Path
    """The Lambda venv's python; run with -I -S it sees the standard library only."""
    task_root: Path
    sdk: Path

    def command(self, *args: str) -> list[str]:
        """``python -I -S`` with sys.path = [task root, runtime SDK] + the standard library; then
        ``args`` (``-c CODE`` or a script path: a script's folder is not put on the path)."""
        prelude = f"import sys; sys.path[:0] = [{str(self.task_root)!r}, {str(self.sdk)!r}]"
        if args and args[0] == "-c":
            return [str(self.python), "-I", "-S", "-c", f"{prelude}\n{args[1]}", *args[2:]]
        runner = f"{prelude}\nimport runpy; sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name='__main__')"
        return [str(self.python), "-I", "-S", "-c", runner, *args]

    def environment(self, stage_environment: Mapping[str, str], extra: Mapping[str, str] = {}) -> dict[str, str]:
        """What a function of the stage sees: the stage's variables, Lambda's own, ``extra``."""
        return {"PATH": "/usr/bin:/bin", "LAMBDA_TASK_ROOT": str(self.task_root), **LAMBDA_ENVIRONMENT,
                **stage_environment, **extra}

    def run(self, args: Sequence[str], stage_environment: Mapping[str, str], extra: Mapping[str, str] = {},
            timeout: float = 300) -> subprocess.CompletedProcess[str]:
        """Run in the task root (Lambda's working directory), output captured."""
        return subprocess.run(self.command(*args), cwd=self.task_root, env=self.environment(stage_environment, extra),
                              capture_output=True, text=True, timeout=timeout)


def lambda_python() -> Path:
    """The Lambda venv's python (built on first use by infra/lambda_venv.sh)."""
    done = subprocess.run([str(ROOT / "infra" / "lambda_venv.sh")], cwd=ROOT, capture_output=True, text=True,
                          timeout=900)
    if done.returncode == 2:
        raise NoLambdaPython(done.stderr.strip())
    if done.returncode != 0:
        raise RuntimeError(f"infra/lambda_venv.sh failed:\n{done.stderr[-4000:]}")
    return Path(done.stdout.strip().splitlines()[-1])


def unpack(deployment_zip: Path, task_root: Path, python: Path | None = None) -> Sandbox:
    """The zip unpacked into ``task_root`` (emptied first), ready to run."""
    python = python or lambda_python()
    shutil.rmtree(task_root, ignore_errors=True)
    task_root.mkdir(parents=True)
    with zipfile.ZipFile(deployment_zip) as archive:
        archive.extractall(task_root)
    sdk = python.parent.parent / "runtime-sdk"
    if not sdk.is_dir():
        raise RuntimeError(f"{sdk} is missing: remove {python.parent.parent} and run infra/lambda_venv.sh")
    return Sandbox(python, task_root, sdk)


def stage_environment(stage: str) -> dict[str, str]:
    """The stage's environment variables as the package declares them (.chalice/config.json)."""
    config = json.loads((ROOT / ".chalice" / "config.json").read_text())
    return dict(config["stages"][stage]["environment_variables"])
