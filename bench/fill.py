"""Fill and refill speed, and fair clone slots (issue 14 items 1 and 2), against the local stack.

The issue's side-by-side scenario with vmpooler 3.9.1, at the shared defaults (task_limit 10,
check_loop_delay_min 5, instant dummy clones):

- ``fill``: one pool of 500 (200 with --quick) from empty to full;
- ``refill``: every VM of that pool checked out and returned over HTTP: the time from the first
  checkout until it is full again, while one client checks out (and returns) a VM of a 20-VM
  pool of the same service every 0.25 s: its 200s and 503s show whether the big pool starves
  the small one.
"""

from __future__ import annotations

import http.client
import json
import threading
import time
from typing import Any

from bench.common import CORES
from local.stack import Stack, dummy_config, local_stack

BIG, SMALL = "big", "small"
SMALL_SIZE = 20


def _config(size: int) -> str:
    return dummy_config([(BIG, size), (SMALL, SMALL_SIZE)], task_limit=10, check_loop_delay=5)


def _checkout(connection: http.client.HTTPConnection, pool: str) -> str | None:
    connection.request("POST", f"/api/v3/vm/{pool}", body=b"")
    response = connection.getresponse()
    body = response.read()
    if response.status != 200:
        return None
    return str(json.loads(body)[pool]["hostname"])


def _give_back(connection: http.client.HTTPConnection, hostname: str) -> None:
    connection.request("DELETE", f"/api/v3/vm/{hostname}")
    connection.getresponse().read()


def _refill_with_small_checkouts(stack: Stack, size: int) -> dict[str, Any]:
    """From the first checkout of the big pool to its being full again, with a small-pool
    client checking out and returning a VM every 0.25 s in a thread of its own."""
    done = threading.Event()
    small = {"served": 0, "refused": 0}

    def small_client() -> None:
        connection = http.client.HTTPConnection("127.0.0.1", stack.port, timeout=30)
        while not done.is_set():
            hostname = _checkout(connection, SMALL)
            small["served" if hostname else "refused"] += 1
            if hostname:
                _give_back(connection, hostname)
            done.wait(0.25)
        connection.close()

    connection = http.client.HTTPConnection("127.0.0.1", stack.port, timeout=30)
    started = time.monotonic()
    thread = threading.Thread(target=small_client, daemon=True)
    thread.start()
    taken = [name for name in (_checkout(connection, BIG) for _ in range(size)) if name]
    for hostname in taken:
        _give_back(connection, hostname)
    connection.close()
    try:
        stack.wait_ready(BIG, size, timeout=600)
    finally:
        done.set()
        thread.join()
    served, refused = small["served"], small["refused"]
    return {"checked_out_and_returned": len(taken), "seconds_to_full": round(time.monotonic() - started, 1),
            "small_pool_served": served, "small_pool_refused": refused,
            "small_pool_success": round(served / max(served + refused, 1), 3)}


SLOW_CLONE_SECONDS = 5.0


def slow_clones(size: int) -> dict[str, Any]:
    """A pool of ``size`` whose clones take exactly SLOW_CLONE_SECONDS, at task_limit 10: its
    fill rate against task_limit / clone time (issue 14: within 20 %)."""
    config = dummy_config([(BIG, size)], task_limit=10, check_loop_delay=5, clone_seconds=SLOW_CLONE_SECONDS)
    with local_stack(config, interval=10.0) as stack:
        seconds = stack.wait_ready(BIG, size, timeout=600)
    ideal = 10 / SLOW_CLONE_SECONDS
    return {"size": size, "clone_seconds": SLOW_CLONE_SECONDS, "fill_seconds": round(seconds, 1),
            "vms_per_second": round(size / seconds, 2), "ideal_vms_per_second": ideal,
            "of_ideal": round(size / seconds / ideal, 3)}


def run(quick: bool = False) -> dict[str, Any]:
    size = 200 if quick else 500
    with local_stack(_config(size), interval=10.0) as stack:
        fill_seconds = stack.wait_ready(BIG, size, timeout=600)
        stack.wait_ready(SMALL, SMALL_SIZE, timeout=60)
        refill = _refill_with_small_checkouts(stack, size)
    return {"cores": CORES, "size": size, "task_limit": 10, "check_loop_delay_min": 5,
            "fill_seconds": round(fill_seconds, 1), "refill": refill,
            "slow_clones": slow_clones(20 if quick else 50)}
