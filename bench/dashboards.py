"""Open dashboards at 1,000 pools and 20,000 VMs (docs/performance.md, "Open dashboards").

The local stack with 1,000 pools of 20 (dummy provider):

- each answer the page fetches (the page, ``/status``, ``/summary/clone`` and ``/boot``, the
  hour's history): its size, time over HTTP, and what it costs Redis (commands, and the
  microseconds ``INFO commandstats`` accounts, scripts' commands included);
- checkout latency (one client, checkout + return over the pools) alone, then while 50
  pollers each fetch what an open page fetches on its cadence (``/status`` every 5 s, the
  history every 30 s, the two summaries every minute; started spread over 5 s) with the
  ``Cache-Control: max-age`` the page sends, alternated;
- the page in headless Chromium (bench/feeds.py's ``browser_on``): first paint, every row shown.
"""

from __future__ import annotations

import http.client
import json
import os
import random
import threading
import time
from pathlib import Path
from typing import Any

from bench.common import CORES, command_delta, median, ms, percentile
from bench.feeds import _cycles, browser_on
from local.stack import dummy_config, local_stack

POOLS, SIZE, POLLERS = 1000, 20, 50
PAGE_FEEDS = {  # what an open page fetches: how often, and how old an answer it accepts (dashboard.js)
    "/api/v3/status": (5.0, 4),
    "/dashboard/stats/history?hours=1": (30.0, 30),
    "/api/v3/summary/clone": (60.0, 30),
    "/api/v3/summary/boot": (60.0, 30),
}


def _redis_usec(client: Any) -> dict[str, tuple[int, int]]:
    return {name.removeprefix("cmdstat_"): (int(s["calls"]), int(s["usec"]))
            for name, s in client.info("commandstats").items()}


def _answer_costs(port: int, client: Any) -> dict[str, Any]:
    """Each answer of an open page: bytes, HTTP time (median of 3), Redis commands and time."""
    costs: dict[str, Any] = {}
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    for feed in ("/dashboard/", *PAGE_FEEDS):
        times, body = [], b""
        for _ in range(3):
            before = _redis_usec(client)
            started = time.perf_counter()
            connection.request("GET", feed)
            answer = connection.getresponse()
            body = answer.read()
            times.append(time.perf_counter() - started)
            after = _redis_usec(client)
        calls = command_delta({k: v[0] for k, v in before.items()}, {k: v[0] for k, v in after.items()})
        usec = sum(v[1] - before.get(k, (0, 0))[1] for k, v in after.items() if k != "info")
        costs[feed] = {"status": answer.status, "bytes": len(body), "ms": ms(median(times)),
                       "redis_commands": sum(calls.values()), "redis_ms": round(usec / 1000, 1)}
    connection.close()
    return costs


def _poll(port: int, stop: threading.Event, offset: float, answers: list[tuple[str, float]]) -> None:
    """One open page: each feed at its cadence, the first ``offset`` seconds after the start."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    due = {feed: time.monotonic() + offset for feed in PAGE_FEEDS}
    while not stop.wait(max(0.0, min(due.values()) - time.monotonic())):
        feed = min(due, key=due.__getitem__)
        every, max_age = PAGE_FEEDS[feed]
        due[feed] += every
        started = time.perf_counter()
        try:
            connection.request("GET", feed, headers={"Cache-Control": f"max-age={max_age}"})
            connection.getresponse().read()
            answers.append((feed, time.perf_counter() - started))
        except (http.client.HTTPException, OSError) as error:  # dropped: a browser connects again
            answers.append((type(error).__name__, time.perf_counter() - started))
            connection.close()
    connection.close()


def _log_problems(command: Any) -> list[str]:
    """The stack's log lines (local.stack keeps them beside its config) that tell of a worker
    killed or a request failed: the first 20."""
    log = Path(command[command.index("--config") + 1]).parent / "stderr.log"
    lines = log.read_text(errors="replace").splitlines() if log.exists() else []
    return [line[:300] for line in lines if any(w in line.lower() for w in ("error", "kill", "timeout"))][:20]


def _windows(port: int, client: Any, pools: int, seconds: float) -> list[dict[str, Any]]:
    windows = []
    for pollers in (0, POLLERS, 0, POLLERS):
        stop, answers = threading.Event(), []  # type: ignore[var-annotated]
        threads = [threading.Thread(target=_poll, args=(port, stop, random.uniform(0, 5), answers))
                   for _ in range(pollers)]
        for thread in threads:
            thread.start()
        before, errors = _redis_usec(client), []  # type: ignore[var-annotated]
        checkouts = _cycles(port, pools, seconds, errors)
        after = _redis_usec(client)
        stop.set()
        for thread in threads:
            thread.join()
        status = [t for feed, t in answers if feed == "/api/v3/status"]
        usec = sum(v[1] - before.get(k, (0, 0))[1] for k, v in after.items() if k != "info")
        windows.append({"pollers": pollers, "checkouts": len(checkouts),
                        "checkout_p50_ms": ms(percentile(checkouts, 0.5)),
                        "checkout_p99_ms": ms(percentile(checkouts, 0.99)),
                        "checkout_errors": errors, "answers": len(answers),
                        "poll_errors": sorted({feed for feed, _ in answers if feed not in PAGE_FEEDS}),
                        "poll_error_count": sum(1 for feed, _ in answers if feed not in PAGE_FEEDS),
                        "status_p50_ms": ms(percentile(status, 0.5)),
                        "status_p99_ms": ms(percentile(status, 0.99)),
                        "redis_busy_percent": round(100 * usec / 1e6 / seconds, 1)})
    return windows


def run(quick: bool = False) -> dict[str, Any]:
    pools, seconds = (200, 15.0) if quick else (POOLS, 40.0)
    result: dict[str, Any] = {"cores": CORES, "load_average_before": os.getloadavg()[0], "pools": pools,
                              "vms": pools * SIZE}
    with local_stack(dummy_config([(f"pool-{n:05d}", SIZE) for n in range(pools)]), interval=10) as stack:
        result["fill_seconds"] = round(stack.wait_ready(f"pool-{pools - 1:05d}", SIZE, timeout=1200), 1)
        client = stack.redis
        result["answers"] = _answer_costs(stack.port, client)
        result["windows"] = _windows(stack.port, client, pools, seconds)
        result["browser"] = browser_on(stack.port, pools)
    return result


if __name__ == "__main__":
    print(json.dumps(run(quick=os.environ.get("QUICK") == "1"), indent=1))
