"""A small request's latency beside /status readers: the local stack (dummy provider, one worker,
its event loops) with 1,000 pools of 2 VMs; GET /api/v3/vm/<host> one after another for 8 s,
alone and while 1, 4 and 8 clients ask /api/v3/status as fast as they are answered (each on a
kept-alive connection). docs/performance.md, "A small request beside the feeds".

    python -m bench.feed_neighbours [POOLS] [WORKERS]
"""

from __future__ import annotations

import http.client
import json
import sys
import threading
import time
from typing import Any

from bench.common import ms, percentile
from chalicelib.store.keys import Keys
from local.stack import dummy_config, local_stack

WINDOW_SECONDS = 8.0


def _get(port: int, path: str, connection: http.client.HTTPConnection | None = None) -> float:
    """Seconds one GET took (a connection of its own unless one is given)."""
    client = connection or http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    started = time.perf_counter()
    client.request("GET", path)
    answer = client.getresponse()
    answer.read()
    took = time.perf_counter() - started
    assert answer.status == 200, (path, answer.status)
    if connection is None:
        client.close()
    return took


def _read_status(port: int, stop: threading.Event, times: list[float]) -> None:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    while not stop.is_set():
        times.append(_get(port, "/api/v3/status", connection))
    connection.close()


def run(pools: int = 1000, workers: int = 1) -> dict[str, Any]:
    windows = []
    with local_stack(dummy_config([(f"pool-{n:05d}", 2) for n in range(pools)]), workers=workers) as stack:
        stack.wait_ready(f"pool-{pools - 1:05d}", 2, timeout=900)
        small = "/api/v3/vm/" + stack.redis.zrange(Keys().pool_state("pool-00000", "ready"), 0, 0)[0]
        alone = [_get(stack.port, "/api/v3/status") for _ in range(10)]
        for readers in (0, 1, 4, 8):
            stop, status_times = threading.Event(), []  # type: ignore[var-annotated]
            threads = [threading.Thread(target=_read_status, args=(stack.port, stop, status_times))
                       for _ in range(readers)]
            for thread in threads:
                thread.start()
            small_times = []
            end = time.monotonic() + WINDOW_SECONDS
            while time.monotonic() < end:
                small_times.append(_get(stack.port, small))
            stop.set()
            for thread in threads:
                thread.join()
            windows.append({"status_readers": readers, "small_gets": len(small_times),
                            "small_p50_ms": ms(percentile(small_times, 0.5)),
                            "small_p99_ms": ms(percentile(small_times, 0.99)),
                            "status_answers": len(status_times),
                            "status_p50_ms": ms(percentile(status_times, 0.5)) if status_times else None})
    return {"pools": pools, "workers": workers, "status_alone_p50_ms": ms(percentile(alone, 0.5)),
            "windows": windows}


if __name__ == "__main__":
    print(json.dumps(run(*(int(arg) for arg in sys.argv[1:3])), indent=2))
