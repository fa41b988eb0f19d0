"""The API's CPU per checkout cycle, in process: ``POST /api/v3/vm/<pool>`` then ``DELETE
/api/v3/vm/<hostname>`` through the local front's Gateway and the service's Chalice app (what an
HTTP worker runs per request, less uvicorn and httptools), against a private redis-server.

Timings on the shared machine move with its load; instruction counts do not. Under callgrind the
script zeroes the counters once the pool is full and the cycles warmed up, and dumps them after
the measured cycles, so the dump holds those cycles only:

    valgrind --tool=callgrind --callgrind-out-file=/tmp/cycles.%p \\
        .venv/bin/python -m bench.cycle_cpu --cycles 500 --callgrind
    callgrind_annotate /tmp/cycles.<pid>.1 | head     # the dump of the measured cycles (the last file: the exit)

Without valgrind it prints the process's CPU per cycle (``time.process_time``, median of
``--repeats`` batches); ``--profile`` prints cProfile's top functions over the measured cycles.

``--refused`` measures a refused checkout instead of a cycle: every VM of a pool of 20 checked
out, then ``POST /api/v3/vm/<pool>`` answered 503 (what the small pool's clients retry at once
while its refill runs), the same counters and profile per refusal:

    valgrind --tool=callgrind --callgrind-out-file=/tmp/refused.%p \\
        .venv/bin/python -m bench.cycle_cpu --refused --cycles 500 --callgrind
"""

from __future__ import annotations

import argparse
import cProfile
import importlib
import json
import os
import pstats
import shutil
import statistics
import subprocess
import sys
import time
from typing import Any

POOL = "big"
REFUSED_POOL_SIZE = 20
HEADERS = {"host": "127.0.0.1", "content-length": "0"}
"""What the benchmark's lean client sends (bench/http_client.py), as the ASGI front hands them on."""


def _callgrind(command: str) -> None:
    """Ask the callgrind running this process to zero (``-z``) or dump (``-d``) its counters.
    callgrind reads the request between basic blocks: the sleep lets it land before we go on."""
    tool = shutil.which("callgrind_control")
    if tool is None:
        raise SystemExit("callgrind_control not found")
    subprocess.run([tool, command, str(os.getpid())], check=True, stdout=subprocess.DEVNULL)
    time.sleep(0.5)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cycles", type=int, default=1000, help="measured cycles per batch")
    parser.add_argument("--repeats", type=int, default=5, help="batches (the median is printed)")
    parser.add_argument("--log-level", default="WARNING", help="POWERTOOLS_LOG_LEVEL (the bench stack's: WARNING)")
    parser.add_argument("--callgrind", action="store_true", help="zero and dump callgrind's counters around one batch")
    parser.add_argument("--profile", action="store_true", help="cProfile one batch; print the top functions")
    parser.add_argument("--top", type=int, default=40)
    parser.add_argument("--pools", type=int, default=1,
                        help="pools in the config (the others of size 1, never checked out from)")
    parser.add_argument("--refused", action="store_true",
                        help=f"refused checkouts of an empty pool of {REFUSED_POOL_SIZE} instead of cycles")
    args = parser.parse_args(argv)
    batches = 1 if args.callgrind or args.profile else args.repeats
    pool_size = REFUSED_POOL_SIZE if args.refused else min(args.cycles * batches + 100, 10_000)

    # Before any import of the service: its Powertools logger takes POWERTOOLS_LOG_LEVEL when
    # created, and local.stack imports chalicelib.store, whose breaker imports the logger.
    os.environ.update({"POWERTOOLS_METRICS_DISABLED": "true", "POWERTOOLS_LOG_LEVEL": args.log_level})
    from local.redis_server import RedisServer
    from local.stack import dummy_config

    pools = [(POOL, pool_size), *((f"other-{n}", 1) for n in range(1, args.pools))]
    with RedisServer() as server:
        os.environ.update({"VMPOOL_CONFIG": dummy_config(pools), "VMPOOL_REDIS_URL": server.url})
        for name in ("VMPOOL_CONFIG_FILE", "VMPOOL_RECONCILE_QUEUE_URL"):
            os.environ.pop(name, None)
        import app as app_module
        from chalicelib.manager.runner import run_pool
        from local.gateway import Gateway

        app_module = importlib.reload(app_module)
        services = app_module.services()
        while services.store.counts([POOL])[POOL]["ready"] < pool_size:
            run_pool(services, POOL, 30.0)
        gateway = Gateway(app_module.app)

        def refusals(count: int) -> None:
            for _ in range(count):
                status, _, body = gateway("POST", f"/api/v3/vm/{POOL}", HEADERS, b"", "127.0.0.1")
                if status != 503:
                    raise RuntimeError(f"checkout of an empty pool answered {status}: {body!r}")

        def checkouts(count: int) -> None:
            for _ in range(count):
                status, _, body = gateway("POST", f"/api/v3/vm/{POOL}", HEADERS, b"", "127.0.0.1")
                if status != 200:
                    raise RuntimeError(f"checkout answered {status}: {body!r}")
                hostname = json.loads(body)[POOL]["hostname"]
                status, _, body = gateway("DELETE", f"/api/v3/vm/{hostname}", HEADERS, b"", "127.0.0.1")
                if status != 200:
                    raise RuntimeError(f"delete answered {status}: {body!r}")

        if args.refused:
            for _ in range(pool_size):  # every VM checked out and kept: the pool is empty
                status, _, body = gateway("POST", f"/api/v3/vm/{POOL}", HEADERS, b"", "127.0.0.1")
                if status != 200:
                    raise RuntimeError(f"checkout answered {status}: {body!r}")
            cycles = refusals
        else:
            cycles = checkouts
        cycles(min(50, args.cycles))  # warm: imports on first use, the connection pool, caches
        result: dict[str, Any] = {"refusals" if args.refused else "cycles": args.cycles}
        if args.callgrind:
            _callgrind("-z")
            cycles(args.cycles)
            _callgrind("-d")
        elif args.profile:
            profiler = cProfile.Profile(time.process_time)  # CPU, not the wall: the machine is shared
            profiler.enable()
            cycles(args.cycles)
            profiler.disable()
            pstats.Stats(profiler, stream=sys.stderr).sort_stats("tottime").print_stats(args.top)
            pstats.Stats(profiler, stream=sys.stderr).sort_stats("cumulative").print_stats(args.top)
        else:
            per_cycle = []
            for _ in range(batches):
                began = time.process_time()
                cycles(args.cycles)
                per_cycle.append((time.process_time() - began) / args.cycles * 1e6)
            unit = "cpu_us_per_refusal" if args.refused else "cpu_us_per_cycle"
            result[unit] = round(statistics.median(per_cycle), 1)
            result["batches_us"] = [round(value, 1) for value in per_cycle]
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
