"""Logs are JSON lines a person can search by pool, hostname and request (CloudWatch Logs
Insights): the API's checkout and return, and the manager's moves, each name their VM."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

from chalicelib.config import parse
from tests.harness import HarnessFactory
from tests.support import json_lines

ROOT = Path(__file__).resolve().parents[2]

CONFIG = (
    ":config:\n  domain: example.com\n:providers:\n  :dummy: {}\n"
    ":pools:\n  - {name: debian, size: 1, provider: dummy}\n"
)




def test_api_and_manager_logs_carry_pool_hostname_and_correlation_id(
        make_harness: HarnessFactory, log_output: io.StringIO) -> None:
    harness = make_harness(parse(CONFIG), prefix="logtest:")
    harness.reconcile("debian")
    harness.reconcile("debian")
    hostname = harness.checkout("debian")
    assert harness.delete(f"/api/v3/vm/{hostname}").status == 200

    logs = json_lines(log_output.getvalue())
    by_message = {record["message"]: record for record in logs}
    ready = by_message["VM ready"]
    assert (ready["pool"], ready["hostname"]) == ("debian", hostname)
    checked_out, returned = by_message["VM checked out"], by_message["VM returned"]
    assert (checked_out["pool"], checked_out["hostname"]) == ("debian", hostname)
    assert (returned["pool"], returned["hostname"]) == ("debian", hostname)
    # Each API request's lines carry its own request id, as API Gateway would give it.
    assert checked_out["correlation_id"] and returned["correlation_id"]
    assert checked_out["correlation_id"] != returned["correlation_id"]



LOGGERS_OF_EVERY_MODULE = """
import importlib, logging, pkgutil, chalicelib
for module in pkgutil.walk_packages(chalicelib.__path__, "chalicelib."):
    importlib.import_module(module.name)
print("\\n".join(name for name in logging.root.manager.loggerDict if name.startswith("chalicelib")))
"""


def test_every_module_logs_through_the_service_logger() -> None:
    """A logger named after its module sits under the root logger: in Lambda its lines are the
    runtime's plain text, not the service's JSON (chalicelib/logs.py)."""
    done = subprocess.run([sys.executable, "-c", LOGGERS_OF_EVERY_MODULE], capture_output=True, text=True,
                          timeout=120, cwd=ROOT, env={**os.environ, "POWERTOOLS_METRICS_DISABLED": "true"})
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == []
