"""The local stack end to end: `python -m local.run` fills pools, serves a checkout, refills at
once, takes the VM back, and Ctrl-C stops every process it started."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import IO, Any

import pytest

from local.redis_server import free_port
from tests.local.stack import REPO_ROOT, alive, call, descendants, stack_env, wait_for

__all__ = ["REPO_ROOT", "call", "launch", "wait_for"]  # the dashboard's browser test starts the stack here too

# Fast dummy clones; the pool names are the test's own so a developer's stack state is untouched.
CONFIG = """\
config: {domain: example.com, check_loop_delay_min: 0.2, task_limit: 10}
providers:
  dummy: {provider_class: dummy, createvm_max_time: 0.3, boot_time: 0.2, destroyvm_max_time: 0.2}
pools:
  - {name: e2e-debian, size: 3, provider: dummy, alias: [e2e-linux]}
  - {name: e2e-centos, size: 2, provider: dummy}
"""
SCHEDULE_INTERVAL = 120
"""Long on purpose: the next tick after the start is two minutes away, so only the instant refill
can start a clone within REFILL_BOUND of the checkout (pools with work in flight are looked at
again on their own delay, not the tick's)."""
REFILL_BOUND = 5.0
"""Seconds; generous for a loaded machine (the refill takes milliseconds on a quiet one) and
still far below the tick."""


def launch(config: str, tmp_path: Path, port: int, log: IO[str], *args: str) -> subprocess.Popen[bytes]:
    """`python -m local.run` on ``port`` with ``config``, in its own session (so its whole process
    group can be stopped), its state under ``tmp_path``, its output in ``log``."""
    config_file = tmp_path / "vmpool.yaml"
    config_file.write_text(config)
    return subprocess.Popen(
        [sys.executable, "-m", "local.run", "--port", str(port), *args],
        cwd=REPO_ROOT, env=stack_env(config_file, tmp_path / "state"), stdout=log, stderr=subprocess.STDOUT,
        start_new_session=True,
    )


@pytest.mark.slow
def test_local_stack_fills_serves_refills_and_stops_cleanly(tmp_path: Path) -> None:
    port = free_port()
    log = (tmp_path / "stack.log").open("w+")
    stack = launch(CONFIG, tmp_path, port, log, "--workers", "2", "--interval", str(SCHEDULE_INTERVAL))
    api = f"http://127.0.0.1:{port}/api/v3"
    try:
        banner = wait_for(
            lambda: re.search(r"redis on port (\d+)", Path(log.name).read_text()), 20, "the stack to start"
        )
        redis_port = int(banner.group(1))
        processes = descendants(stack.pid)
        assert len(processes) >= 4, processes  # gunicorn's arbiter, two HTTP workers and redis-server

        def pools() -> dict[str, Any]:
            return call("GET", f"{api}/status?view=pools")[1]["pools"]

        wait_for(lambda: all(p["ready"] == p["max"] for p in pools().values()), 15, "the pools to fill")

        status, body = call("POST", f"{api}/vm", {"e2e-linux": "1"})
        assert status == 200 and body["ok"] is True, body
        fqdn = body["e2e-linux"]["hostname"]
        assert fqdn.endswith(".example.com")
        checked_out = time.monotonic()
        # The pool that served it is short one ready VM until the refill reconcile starts a clone.
        wait_for(lambda: all(p["ready"] + p["pending"] == p["max"] for p in pools().values()), REFILL_BOUND,
                 "the replacement clone")
        assert time.monotonic() - checked_out < REFILL_BOUND
        assert sum(p["running"] for p in pools().values()) == 1

        status, body = call("DELETE", f"{api}/vm/{fqdn}")
        assert (status, body) == (200, {"ok": True})
        wait_for(lambda: sum(p["running"] for p in pools().values()) == 0, 5, "the returned VM to leave running")
        wait_for(lambda: all(p["ready"] == p["max"] for p in pools().values()), 10, "the pools to be full again")
    finally:
        os.killpg(stack.pid, signal.SIGINT)  # Ctrl-C: the whole foreground process group
        try:
            returncode = stack.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(stack.pid, signal.SIGKILL)
            stack.wait()
            raise
        output = Path(log.name).read_text()
        log.close()

    assert returncode == 0, output
    assert "vmpool: stopped" in output
    survivors = {pid for pid in processes if alive(pid)}
    assert survivors == set(), output
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", redis_port), timeout=1).close()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
