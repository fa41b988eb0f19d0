"""Logs are JSON lines a person can search by pool, hostname and request (CloudWatch Logs
Insights): the API's checkout and return, and the manager's moves, each name their VM."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

from chalicelib.config import parse
from chalicelib.manager.runner import run_pool
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



def test_a_pass_draining_a_whole_pool_writes_a_bounded_line(
        make_harness: HarnessFactory, log_output: io.StringIO) -> None:
    """POST /config/pooltemplate (or /poolreset) drains a pool in one pass. Its ``reconcile pass``
    line named every VM with its reason, each naming the template: a pool of 400 given a
    1,024-character template was a 407 KB line (10 MB at 10,000 VMs), past what CloudWatch Logs
    keeps as one event. It names the first VMs and counts the rest; each VM still has its line."""
    config = (":config:\n  domain: example.com\n  experimental_features: true\n  task_limit: 400\n"
              ":providers:\n  :dummy: {createvm_max_time: 0, boot_time: 0}\n"
              ":pools:\n  - {name: big, size: 400, provider: dummy, template: templates/big}\n")
    harness = make_harness(parse(config), prefix="logtest-drain:", headers={"Content-Type": "application/json"})
    harness.fill("big")
    template = "templates/" + "/".join(["t" * 80] * 12)
    assert harness.post("/api/v3/config/pooltemplate", {"big": template}).status == 201
    log_output.seek(0)
    log_output.truncate()
    harness.clock.advance(1)
    run_pool(harness.services, "big")

    lines = log_output.getvalue().splitlines()
    (line,) = [line for line in lines if '"message":"reconcile pass"' in line]
    assert len(line) < 32 * 1024, len(line)
    logged = json.loads(line)
    assert logged["completed"] == 400 and 0 < len(logged["reasons"]) < 400
    assert set(logged["reasons"].values()) == {f"pool template changed to {template}"}
    taken = [record for record in json_lines("\n".join(lines)) if record["message"] == "VM taken out of service"]
    assert len(taken) == 400


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


LAMBDA_RUNTIME_WITH_LIBRARY_LINES = """
import logging, socket, sys
# What Lambda's Python runtime sets up before it imports the handler: a plain-text handler on the
# root logger (``[LEVEL] time request-id message``).
logging.basicConfig(stream=sys.stdout, level=logging.WARNING,
                    format="[%(levelname)s]\\t%(asctime)s\\t%(message)s")
import app  # noqa: F401 - the functions' entry point
import urllib3

with socket.socket() as closed:  # a port nothing listens on: urllib3 warns as it retries
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
try:
    urllib3.PoolManager().request("GET", f"http://vmpool:{PASSWORD}@127.0.0.1:{port}/sdk?password={PASSWORD}",
                                  retries=urllib3.Retry(1, backoff_factor=0))
except urllib3.exceptions.MaxRetryError:
    pass
logging.getLogger("redis.connection").warning("reconnecting to rediss://:%s@redis.example.com:6379/0", PASSWORD)
soap = f"<soapenv:Body><Login><userName>root</userName><password>{PASSWORD}</password></Login></soapenv:Body>"
logging.getLogger("pyVmomi.SoapAdapter").debug("request body %s", soap)
logging.getLogger("pyVmomi.SoapAdapter").warning("fault answering %s", soap)
"""


def _lambda_lines(level: str, password: str) -> tuple[str, list[dict[str, str]]]:
    script = f"PASSWORD = {password!r}\n" + LAMBDA_RUNTIME_WITH_LIBRARY_LINES
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=ROOT,
                          env={**os.environ, "POWERTOOLS_METRICS_DISABLED": "true", "POWERTOOLS_LOG_LEVEL": level})
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout + done.stderr, json_lines(done.stdout)


def test_a_librarys_warning_is_one_json_line_of_the_service_without_its_credentials() -> None:
    """urllib3 retrying a vCenter URL, redis-py naming its URL, pyVmomi quoting a SOAP body: in
    Lambda these went to the runtime's plain-text handler (``[WARNING] ...``), which Logs
    Insights cannot split into fields, with the URL's password in it. Each is now one JSON line
    of the service, its logger named, the password masked."""
    password = "Hunter2-wire-secret"
    output, lines = _lambda_lines("INFO", password)

    assert all(line.startswith("{") for line in output.splitlines() if line.strip()), output
    assert password not in output
    retries = [line for line in lines if line.get("logger") == "urllib3.connectionpool"]
    assert len(retries) == 1, lines
    assert (retries[0]["level"], retries[0]["service"]) == ("WARNING", "vmpool")
    assert "Retrying" in retries[0]["message"] and "/sdk?password=" in retries[0]["message"]
    (redis_line,) = [line for line in lines if line.get("logger") == "redis.connection"]
    assert "@redis.example.com:6379/0" in redis_line["message"]
    (soap_line,) = [line for line in lines if line.get("logger") == "pyVmomi.SoapAdapter"]
    assert soap_line["level"] == "WARNING" and "<userName>root</userName><password>" in soap_line["message"]


def test_a_librarys_wire_log_is_never_written_even_at_debug() -> None:
    """At ``POWERTOOLS_LOG_LEVEL=DEBUG`` the service's own lines are all written, but not the
    libraries' DEBUG: it is their wire log (pyVmomi's SOAP bodies, botocore's response bodies,
    a GetSecretValue's being the secret)."""
    password = "Hunter2-wire-secret"
    output, lines = _lambda_lines("DEBUG", password)

    assert password not in output
    assert not [line for line in lines if line["level"] == "DEBUG" and "logger" in line], lines
    assert [line["level"] for line in lines if line.get("logger") == "pyVmomi.SoapAdapter"] == ["WARNING"]
