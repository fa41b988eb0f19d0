"""The local stack end to end: `python -m local.run` fills pools, serves a checkout, refills at
once, takes the VM back, and Ctrl-C stops every process it started."""

from __future__ import annotations

import socket
import time
from pathlib import Path
from typing import Any

import pytest

from tests.local.stack import alive, call, descendants, local_stack, stop, wait_for

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
"""Long on purpose: the scheduler's second tick comes two minutes after the stack is launched at
the earliest, so a clone started before then is the instant refill's (pools with work in flight
are looked at again on their own delay, not the tick's). The test waits for the refill until
then, not for a fixed few seconds: that judged the machine's load, not the refill (it takes
milliseconds on a quiet machine; its speed is bench/fill.py's to measure)."""


@pytest.mark.slow
def test_local_stack_fills_serves_refills_and_stops_cleanly(tmp_path: Path) -> None:
    launched = time.monotonic()
    with local_stack(tmp_path, CONFIG, workers=2, interval=SCHEDULE_INTERVAL) as stack:
        processes = descendants(stack.process.pid)
        assert len(processes) >= 4, processes  # gunicorn's arbiter, two HTTP workers and redis-server

        def pools() -> dict[str, Any]:
            return call("GET", f"{stack.api}/status?view=pools")[1]["pools"]

        wait_for(lambda: all(p["ready"] == p["max"] for p in pools().values()), 15, "the pools to fill")

        status, body = call("POST", f"{stack.api}/vm", {"e2e-linux": "1"})
        assert status == 200 and body["ok"] is True, body
        fqdn = body["e2e-linux"]["hostname"]
        assert fqdn.endswith(".example.com")
        # The pool that served it is short one ready VM until the refill reconcile starts a clone.
        second_tick = launched + SCHEDULE_INTERVAL
        wait_for(lambda: all(p["ready"] + p["pending"] == p["max"] for p in pools().values()),
                 second_tick - time.monotonic(), "the replacement clone, before the next tick")
        assert time.monotonic() < second_tick, "refilled only by the tick"
        assert sum(p["running"] for p in pools().values()) == 1

        status, body = call("DELETE", f"{stack.api}/vm/{fqdn}")
        assert (status, body) == (200, {"ok": True})
        wait_for(lambda: sum(p["running"] for p in pools().values()) == 0, 5, "the returned VM to leave running")
        wait_for(lambda: all(p["ready"] == p["max"] for p in pools().values()), 10, "the pools to be full again")
        returncode = stop(stack.process)  # Ctrl-C: the whole foreground process group
    output = stack.log()

    assert returncode == 0, output
    assert "vmpool: stopped" in output
    survivors = {pid for pid in processes if alive(pid)}
    assert survivors == set(), output
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", stack.redis_port), timeout=1).close()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", stack.port), timeout=1).close()
