"""Refill latency: from a checkout (HTTP, against the local stack) to the start of its
replacement clone, i.e. the ``clone_start`` the reconcile pass records on the new VM.

The pool is small and full, the schedule's interval long (60 s): only the checkout's nudge can
start the replacement within the measured time.
"""

from __future__ import annotations

import http.client
import json
import time
from typing import Any

from bench.common import CORES, ms, percentile
from local.stack import dummy_config, local_stack

POOL = "refill"
SIZE = 10


def _pool_members(client: Any) -> set[str]:
    members: set[str] = set()
    for state in ("pending", "ready"):
        members |= set(client.zrange(f"vmpool:pool:{POOL}:{state}", 0, -1))
    return members


def run(quick: bool = False) -> dict[str, Any]:
    samples = 10 if quick else 40
    latencies: list[float] = []
    with local_stack(dummy_config([(POOL, SIZE)], clone_seconds=0.5, boot_seconds=0.5),
                     interval=60.0) as stack:
        client = stack.redis
        stack.wait_ready(POOL, SIZE, timeout=60)
        connection = http.client.HTTPConnection("127.0.0.1", stack.port, timeout=10)
        for _ in range(samples):
            stack.wait_ready(POOL, SIZE, timeout=60)
            before = _pool_members(client)
            checked_out = time.time()
            connection.request("POST", f"/api/v3/vm/{POOL}", body=b"")
            response = connection.getresponse()
            hostname = json.loads(response.read())[POOL]["hostname"].split(".")[0]
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                new = _pool_members(client) - before
                starts = [float(client.hget(f"vmpool:vm:{name}", "clone_start") or 0) for name in new]
                starts = [start for start in starts if start >= checked_out - 0.001]
                if starts:
                    latencies.append(max(min(starts) - checked_out, 0.0))
                    break
                time.sleep(0.002)
            else:
                latencies.append(float("inf"))
            connection.request("DELETE", f"/api/v3/vm/{hostname}")
            connection.getresponse().read()
        connection.close()
    return {"cores": CORES, "samples": len(latencies), "p50_ms": ms(percentile(latencies, 0.5)),
            "p99_ms": ms(percentile(latencies, 0.99)), "max_ms": ms(max(latencies))}
