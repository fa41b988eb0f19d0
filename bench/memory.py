"""Memory of the local stack holding a 2,000-VM pool (issue 14 item 6; vmpooler 3.9.1: 93 MB).

The pool is filled, then 200 checkouts and returns go through the HTTP front so every process
has done its work once; the figures are taken after that, by part and by process
(bench.common.stack_memory): the stack's main process (the reconcile scheduler), gunicorn's
arbiter forked from it, and the HTTP workers the arbiter forks; with ``WORKERS=0`` the one
process that serves HTTP beside the scheduler. Then, on the same stack, one window of checkout
cycles at 8 clients (bench.checkout.window): what each layout's memory costs in throughput.
"""

from __future__ import annotations

import http.client
import json
from typing import Any

from bench.checkout import window
from bench.common import CORES, stack_memory
from local.stack import dummy_config, local_stack

POOL = "mem"
SIZE = 2000


def _measure(workers: int | None, cycles: bool = True) -> dict[str, Any]:
    with local_stack(dummy_config([(POOL, SIZE)]), interval=10.0, workers=workers) as stack:
        stack.wait_ready(POOL, SIZE, timeout=600)
        connection = http.client.HTTPConnection("127.0.0.1", stack.port, timeout=30)
        for _ in range(200):
            connection.request("POST", f"/api/v3/vm/{POOL}", body=b"")
            response = connection.getresponse()
            body = response.read()
            if response.status == 200:
                connection.request("DELETE", f"/api/v3/vm/{json.loads(body)[POOL]['hostname']}")
                connection.getresponse().read()
        connection.close()
        parts = stack_memory(stack.process.pid)
        checkout = window(stack, POOL) if cycles else None
    service = [part for name, part in parts.items() if name != "redis-server"]
    return {"parts": parts, "service_rss_mb": round(sum(part["rss_mb"] for part in service), 1),
            "service_pss_mb": round(sum(part["pss_mb"] for part in service), 1),
            **({"checkout": checkout} if checkout else {})}


def run(quick: bool = False) -> dict[str, Any]:
    """The stack as `make run` starts it (one HTTP worker per core), with one HTTP worker, and in
    one process (`WORKERS=0`): vmpooler's figure is one process (its API and manager together)."""
    return {"cores": CORES, "pool_size": SIZE, **_measure(None), "one_worker": _measure(1),
            "one_process": _measure(0)}
