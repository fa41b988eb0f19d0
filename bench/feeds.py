"""The read-only feeds and the dashboard at 1,000 and 10,000 pools (docs/performance.md, "The
feeds at 1,000 and 10,000 pools").

- ``answers``: in this process through the app's Gateway (no HTTP), every feed of a fleet of
  1,000 pools of 10 VMs and of 10,000 pools of 2 (the config's most pools): its answer's size,
  the handler's time (median of 3), Redis round trips, and the peak of memory it allocated
  (tracemalloc).
- ``readers``: the local stack with 1,000 pools of 10: checkout latency (checkout + return
  cycles over the pools, one client) alone, then while 16 readers ask /status as fast as they get
  answers, alternated twice.
- ``browser``: the dashboard of 1,000 pools in headless Chromium (tools/cdp.py): first paint, the
  time until every pool's row is shown, and over ten status polls the JavaScript heap (after a
  garbage collection), the element count and the longest task.
"""

from __future__ import annotations

import http.client
import json
import os
import tempfile
import threading
import time
import tracemalloc
from pathlib import Path
from typing import Any

import redis

from bench.common import CORES, RoundTrips, median, ms, percentile
from local.stack import dummy_config, local_stack

FEEDS = ("/api/v3/status", "/api/v3/status?view=queue", "/api/v3/poolstat?pool=pool-00001,pool-00002",
         "/api/v3/totalrunning", "/api/v3/summary", "/api/v3/config", "/api/v3/vm", "/healthcheck",
         "/dashboard/stats/vmpooler/pool?history=true", "/dashboard/stats/vmpooler/running?history=true",
         "/dashboard/stats/history?hours=1", "/dashboard/stats/history?hours=168", "/dashboard/")


def _answers(pools: int, vms_per_pool: int) -> dict[str, Any]:
    from local.redis_server import RedisServer

    with RedisServer() as server:
        client = redis.Redis(port=server.port, decode_responses=True)
        import app as app_module
        from chalicelib.clock import FakeClock
        from chalicelib.config import parse
        from chalicelib.services import Services
        from local.gateway import Gateway

        lines = "\n".join(f"  - {{name: pool-{n:05d}, size: {vms_per_pool}, provider: dummy, alias: [a{n % 7}]}}"
                          for n in range(pools))
        # Fewer tag counts a day than the defaults: a day full of them would not fit one /summary
        # beside 10,000 pools' figures, and the config check refuses it (docs/deploy.md).
        tags = ":config:\n  max_tag_names_per_day: 20\n  max_tag_values_per_day: 60\n"
        services = Services(parse(tags + ":providers:\n  :dummy: {}\n:pools:\n" + lines), client, clock=FakeClock())
        keys = services.store.keys
        pipe = client.pipeline(transaction=False)
        for n in range(pools * vms_per_pool):
            pool, state, host = f"pool-{n % pools:05d}", ("running" if n % 3 == 0 else "ready"), f"vm{n:06d}"
            pipe.hset(keys.vm(host), mapping={"pool": pool, "state": state})
            pipe.zadd(keys.pool_state(pool, state), {host: 1})
        pipe.execute()
        saved = app_module._services
        app_module._services = services
        gateway = Gateway(app_module.app)
        result: dict[str, Any] = {"pools": pools, "vms": pools * vms_per_pool, "feeds": {}}
        try:
            for feed in FEEDS:
                gateway("GET", feed, {}, b"", "127.0.0.1")  # scripts loaded, connections open
                with RoundTrips() as counter:
                    status, _, body = gateway("GET", feed, {}, b"", "127.0.0.1")
                    trips = counter.count
                assert status == 200, (feed, body[:200])
                tracemalloc.start()
                gateway("GET", feed, {}, b"", "127.0.0.1")
                peak = tracemalloc.get_traced_memory()[1]
                tracemalloc.stop()
                times = []
                for _ in range(3):
                    started = time.perf_counter()
                    gateway("GET", feed, {}, b"", "127.0.0.1")
                    times.append(time.perf_counter() - started)
                result["feeds"][feed] = {"bytes": len(body), "ms": ms(median(times)), "round_trips": trips,
                                         "peak_mb": round(peak / 1e6, 1)}
        finally:
            app_module._services = saved
            client.close()
        return result


def _cycles(port: int, pools: int, seconds: float, errors: list[str] | None = None) -> list[float]:
    """Checkout + return cycles over the pools for ``seconds``: each checkout's latency. A
    connection the server dropped is opened again, as a browser would, and counted in ``errors``
    (raised when it is None)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    latencies: list[float] = []
    end, n = time.monotonic() + seconds, 0
    while time.monotonic() < end:
        pool = f"pool-{n % pools:05d}"
        n += 1
        started = time.perf_counter()
        try:
            connection.request("POST", f"/api/v3/vm/{pool}")
            answer = connection.getresponse()
            body = json.loads(answer.read())
            latencies.append(time.perf_counter() - started)
            if answer.status == 200:
                connection.request("DELETE", f"/api/v3/vm/{body[pool]['hostname']}")
                connection.getresponse().read()
        except (http.client.HTTPException, OSError) as error:
            if errors is None:
                raise
            errors.append(type(error).__name__)
            connection.close()
    connection.close()
    return latencies


def _read(port: int, stop: threading.Event, latencies: list[float]) -> None:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    while not stop.is_set():
        started = time.perf_counter()
        connection.request("GET", "/api/v3/status")
        connection.getresponse().read()
        latencies.append(time.perf_counter() - started)
    connection.close()


def _readers(pools: int, size: int, readers: int, seconds: float) -> dict[str, Any]:
    windows: list[dict[str, Any]] = []
    with local_stack(dummy_config([(f"pool-{n:05d}", size) for n in range(pools)]), interval=10) as stack:
        stack.wait_ready(f"pool-{pools - 1:05d}", size, timeout=600)
        for count in (0, readers, 0, readers):
            stop, read = threading.Event(), []  # type: ignore[var-annotated]
            threads = [threading.Thread(target=_read, args=(stack.port, stop, read)) for _ in range(count)]
            for thread in threads:
                thread.start()
            checkouts = _cycles(stack.port, pools, seconds)
            stop.set()
            for thread in threads:
                thread.join()
            windows.append({"readers": count, "checkouts": len(checkouts),
                            "checkout_p50_ms": ms(percentile(checkouts, 0.5)),
                            "checkout_p99_ms": ms(percentile(checkouts, 0.99)),
                            "status_answers": len(read), "status_p50_ms": ms(percentile(read, 0.5))})
    return {"pools": pools, "vms": pools * size, "seconds_per_window": seconds, "windows": windows}


def _browser(pools: int) -> dict[str, Any]:
    from tools.cdp import CHROMIUM

    if not CHROMIUM:
        return {"skipped": "chromium is not installed"}
    with local_stack(dummy_config([(f"pool-{n:05d}", 1) for n in range(pools)]), interval=10) as stack:
        stack.wait_ready(f"pool-{pools - 1:05d}", 1, timeout=600)
        return browser_on(stack.port, pools)


def browser_on(port: int, pools: int) -> dict[str, Any]:
    """The dashboard served on ``port`` (``pools`` pools) in headless Chromium: first paint, every
    row shown, and over ten status polls its heap, elements and longest task."""
    from tools.cdp import BrowserPage

    page = BrowserPage(Path(tempfile.mkdtemp(prefix="bench-cdp-")))
    try:
        page.call("Page.enable")
        page.call("Page.addScriptToEvaluateOnNewDocument", source=(
            "window.benchLongTasks = []; new PerformanceObserver(function (list) { list.getEntries()"
            ".forEach(function (e) { window.benchLongTasks.push(e.duration); }); })"
            ".observe({type: 'longtask', buffered: true});"))
        page.call("Page.navigate", url=f"http://127.0.0.1:{port}/dashboard/")
        deadline = time.monotonic() + 120
        while page.evaluate("document.querySelectorAll('tr.pool').length") < pools:
            assert time.monotonic() < deadline, "the dashboard never showed every pool"
            time.sleep(0.1)
        first = page.evaluate("""({paint: Math.round((performance.getEntriesByName('first-contentful-paint')[0]
                                                       || {startTime: 0}).startTime),
                                   rows: Math.round(performance.now())})""")
        polls = []
        page.call("HeapProfiler.enable")
        for _ in range(10):
            time.sleep(5)
            page.call("HeapProfiler.collectGarbage")
            polls.append({"heap": page.call("Runtime.getHeapUsage")["usedSize"], **page.evaluate(
                """({elements: document.getElementsByTagName('*').length,
                    longest: Math.max.apply(null, window.benchLongTasks.concat([0]))})""")})
    finally:
        page.close()
    return {"pools": pools, "first_paint_ms": first["paint"], "rows_shown_ms": first["rows"],
            "heap_mb": [round(p["heap"] / 1e6, 2) for p in polls], "elements": [p["elements"] for p in polls],
            "longest_task_ms": round(max(p["longest"] for p in polls))}


def run(quick: bool = False) -> dict[str, Any]:
    sizes = ((200, 10), (1000, 2)) if quick else ((1000, 10), (10000, 2))
    result: dict[str, Any] = {"cores": CORES, "load_average_before": os.getloadavg()[0],
                              "answers": [_answers(pools, vms) for pools, vms in sizes]}
    result["readers"] = _readers(200 if quick else 1000, 10, 16, 3.0 if quick else 8.0)
    result["browser"] = _browser(200 if quick else 1000)
    return result


def table(results: dict[str, Any]) -> list[tuple[str, str]]:
    """The feeds' rows of `make bench`'s table."""
    rows: list[tuple[str, str]] = []
    for fleet in results["answers"]:
        for feed, figures in fleet["feeds"].items():
            rows.append((f"{fleet['pools']} pools {feed}",
                         (f"{figures['bytes']:>10,} B {figures['ms']:8.1f} ms {figures['round_trips']:3d} redis round "
                          f"trips, peak {figures['peak_mb']} MB")))
    readers = results["readers"]
    for window in readers["windows"]:
        rows.append((f"checkout, {readers['pools']} pools, {window['readers']:2d} /status readers",
                     (f"p50 {window['checkout_p50_ms']} ms p99 {window['checkout_p99_ms']} ms "
                      f"({window['checkouts']} checkouts; /status answered {window['status_answers']} times, "
                      f"p50 {window['status_p50_ms']} ms)")))
    browser = results["browser"]
    if "skipped" in browser:
        rows.append(("dashboard in chromium", "skipped: " + browser["skipped"]))
    else:
        rows.append((f"dashboard of {browser['pools']} pools",
                     (f"first paint {browser['first_paint_ms']} ms, every row at {browser['rows_shown_ms']} ms; "
                      f"10 polls: heap {min(browser['heap_mb'])}-{max(browser['heap_mb'])} MB, "
                      f"{min(browser['elements'])}-{max(browser['elements'])} elements, "
                      f"longest task {browser['longest_task_ms']} ms")))
    return rows
