"""CPU of the reconcile passes refilling a small pool, per replaced VM, in process.

A pool of 20 at task_limit 10 with the dummy's instant clones, as ``bench.checkout``'s small
pool: each iteration checks out ``--returned`` VMs and returns them through the store, then runs
``reconcile_pool`` (fake clock, one second apart) until the pool is full again with the returned
VMs destroyed. Only the passes are measured: the checkouts and returns are the API's.

Instructions, not seconds, since the machine's load moves every timing: under callgrind started
with its instrumentation off, the script turns it on around the passes only:

    valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file=/tmp/refill.%p \\
        .venv/bin/python -m bench.refill_cpu --callgrind
    grep ^totals /tmp/refill.<pid>           # instructions of the measured passes

Without valgrind it prints the passes' CPU per replaced VM (``time.process_time``, median of the
iterations); ``--profile`` prints cProfile's calls of Python per replaced VM and top functions.
``--redis-clock``: the passes read the time through the service's ``RedisAlignedClock`` (over the
fake wall clock the iterations advance), as the stack's scheduler does, instead of the fake clock
itself: what the clock's readings cost (store/redis_clock.py).
"""

from __future__ import annotations

import argparse
import cProfile
import functools
import json
import os
import pstats
import statistics
import sys
import time
from typing import Callable

from bench.cycle_cpu import _callgrind

POOL = "refill"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--returned", type=int, default=20, help="VMs checked out and returned per iteration")
    parser.add_argument("--iterations", type=int, default=20)
    parser.add_argument("--callgrind", action="store_true", help="callgrind's instrumentation on around the passes")
    parser.add_argument("--profile", action="store_true", help="cProfile the passes; print the top functions")
    parser.add_argument("--top", type=int, default=30)
    parser.add_argument("--redis-clock", action="store_true",
                        help="the passes read RedisAlignedClock (over the fake wall clock), as in the stack")
    args = parser.parse_args(argv)
    os.environ.setdefault("POWERTOOLS_LOG_LEVEL", "WARNING")

    from chalicelib.clock import Clock, FakeClock
    from chalicelib.config import parse
    from chalicelib.manager.reconcile import reconcile_pool
    from chalicelib.providers.dummy import DummyProvider
    from chalicelib.store import CheckoutRequest, Store
    from chalicelib.store.connection import connect
    from chalicelib.store.redis_clock import RedisAlignedClock
    from local.redis_server import RedisServer
    from local.stack import dummy_config

    with RedisServer() as server:
        config = parse(dummy_config([(POOL, 20)], task_limit=10))
        client = connect(config.redis, url=server.url)  # the service's client, as the stack's scheduler
        wall = FakeClock()
        clock: Clock = RedisAlignedClock(client, wall) if args.redis_clock else wall
        store = Store(client, data_ttl_hours=config.redis.data_ttl_hours)
        provider = DummyProvider(config.providers["dummy"], client, clock)
        one_pass = functools.partial(reconcile_pool, store, provider, config.pools[0], clock, config.service)
        while one_pass().work_in_flight:
            wall.advance(1)

        def iteration(around: Callable[[bool], None] = lambda on: None) -> float:
            taken = store.checkout([CheckoutRequest(POOL, [POOL], args.returned)], clock.now(), {"lifetime": "2"})
            for vm in taken.vms:
                store.return_vm(vm.hostname, clock.now(), "returned")
            around(True)
            began = time.process_time()
            while True:
                wall.advance(1)
                if not one_pass().work_in_flight:
                    break
            used = time.process_time() - began
            around(False)
            return used

        for _ in range(3):  # warm: the scripts loaded, caches filled
            iteration()
        result: dict[str, object] = {"returned": args.returned, "iterations": args.iterations,
                                      "redis_clock": args.redis_clock}
        if args.callgrind:
            for _ in range(args.iterations):
                iteration(lambda on: _callgrind("--instr=" + ("on" if on else "off")))
        elif args.profile:
            profiler = cProfile.Profile(time.process_time)
            for _ in range(args.iterations):
                iteration(lambda on: profiler.enable() if on else profiler.disable())
            stats = pstats.Stats(profiler, stream=sys.stderr)
            result["python_calls_per_replaced_vm"] = round(stats.total_calls / (args.iterations * args.returned))
            stats.sort_stats("tottime").print_stats(args.top)
        else:
            used = [iteration() for _ in range(args.iterations)]
            result["cpu_us_per_replaced_vm"] = round(statistics.median(used) / args.returned * 1e6, 1)
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
