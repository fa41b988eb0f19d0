"""Open dashboards at 1,000 pools and 20,000 VMs (docs/performance.md, "Open dashboards").

The local stack with 1,000 pools of 20 (dummy provider):

- each answer the page fetches (the page, ``/status``, ``/summary/clone`` and ``/boot``, the
  hour's history): its size, time over HTTP, and what it costs Redis (commands, and the
  microseconds ``INFO commandstats`` accounts, scripts' commands included);
- checkout latency (one client, checkout + return over the pools) alone, then while 50
  pollers each fetch what an open page fetches on its cadence (``/status`` every 5 s, the
  history and the two summaries every minute; started spread over 5 s) with the
  ``Cache-Control: max-age`` the page sends, alternated;
- one open page's bytes on the wire a minute (``wire``), as it asks now (gzip, ``If-None-Match``,
  the history once a minute) beside one asking as it did before (neither; the history every
  30 s), over the same 3 minutes (``WIRE_ONLY=1`` stops after it; ``POOL_SIZE`` sets the VMs a pool);
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
    "/dashboard/stats/history?hours=1": (60.0, 30),
    "/api/v3/summary/clone": (60.0, 30),
    "/api/v3/summary/boot": (60.0, 30),
}
EARLIER_PAGE_FEEDS = {**PAGE_FEEDS, "/dashboard/stats/history?hours=1": (30.0, 30)}
"""What a page fetched before it asked the history once a minute (docs/performance.md)."""
BROWSER_HEADERS = {"Accept-Encoding": "gzip, deflate, br, zstd"}
"""What Chromium asks for: the front compresses answers of 1 KB and more (api/conditional.py)."""


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


def _wire_bytes(answer: http.client.HTTPResponse, body: bytes) -> int:
    """An answer's bytes on the wire: its status line, headers and body as sent."""
    return len(f"HTTP/1.1 {answer.status} {answer.reason}\r\n") + sum(
        len(f"{name}: {value}\r\n") for name, value in answer.getheaders()) + 2 + len(body)


def _page_on_the_wire(port: int, feeds: dict[str, tuple[float, int]], validated: bool, seconds: float,
                      tally: dict[str, Any]) -> None:
    """One open page for ``seconds``: each feed at its cadence, the page once; ``validated``:
    as the page asks now (gzip, its ETags), else as it asked before (neither)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    etags: dict[str, str] = {}
    headers = dict(BROWSER_HEADERS) if validated else {}
    started = time.monotonic()
    due = {feed: started for feed in feeds}
    for feed in ("/dashboard/", *feeds):
        tally.setdefault(feed, {"answers": 0, "not_modified": 0, "bytes": 0})
    queue = ["/dashboard/"]
    while time.monotonic() - started < seconds:
        if not queue:
            feed = min(due, key=due.__getitem__)
            time.sleep(max(0.0, due[feed] - time.monotonic()))
            if time.monotonic() - started >= seconds:
                break
            due[feed] += feeds[feed][0]
            queue.append(feed)
        feed = queue.pop()
        sent = {**headers, **({"Cache-Control": f"max-age={feeds[feed][1]}"} if feed in feeds else {})}
        if validated and feed in etags:
            sent["If-None-Match"] = etags[feed]
        connection.request("GET", feed, headers=sent)
        answer = connection.getresponse()
        body = answer.read()
        if answer.getheader("ETag"):
            etags[feed] = answer.getheader("ETag") or ""
        figures = tally[feed]
        figures["answers"] += 1
        figures["not_modified"] += answer.status == 304
        figures["bytes"] += _wire_bytes(answer, body)
    connection.close()


def wire(port: int, seconds: float = 180.0) -> dict[str, Any]:
    """One open page's bytes on the wire per minute, as it asks now and as it asked before (no
    compression, no ETags, the history every 30 s), side by side over the same ``seconds``."""
    tallies: dict[str, dict[str, Any]] = {"before": {}, "after": {}}
    threads = [threading.Thread(target=_page_on_the_wire, args=(port, EARLIER_PAGE_FEEDS, False, seconds,
                                                                tallies["before"])),
               threading.Thread(target=_page_on_the_wire, args=(port, PAGE_FEEDS, True, seconds, tallies["after"]))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    result: dict[str, Any] = {"seconds": seconds}
    for name, tally in tallies.items():
        result[name] = {"bytes_per_minute": round(sum(f["bytes"] for f in tally.values()) * 60 / seconds),
                        "feeds": tally}
    return result


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
    size = int(os.environ.get("POOL_SIZE", SIZE))
    result: dict[str, Any] = {"cores": CORES, "load_average_before": os.getloadavg()[0], "pools": pools,
                              "vms": pools * size}
    with local_stack(dummy_config([(f"pool-{n:05d}", size) for n in range(pools)]), interval=10) as stack:
        result["fill_seconds"] = round(stack.wait_ready(f"pool-{pools - 1:05d}", size, timeout=1200), 1)
        client = stack.redis
        result["answers"] = _answer_costs(stack.port, client)
        result["wire"] = wire(stack.port, 60.0 if quick else 180.0)
        if os.environ.get("WIRE_ONLY") == "1":
            return result
        result["windows"] = _windows(stack.port, client, pools, seconds)
        result["browser"] = browser_on(stack.port, pools)
    return result


if __name__ == "__main__":
    print(json.dumps(run(quick=os.environ.get("QUICK") == "1"), indent=1))
