"""The local stack's CPU while nothing happens, at 1,000 pools (not part of `make bench`: minutes).

    .venv/bin/python -m bench.idle_cpu [--pools 1000] [--runs 3] [--seconds 60] [--interval S]

Starts ``python -m local.run`` (its own redis-server, one HTTP worker) with ``--pools`` dummy
pools of size 1, waits until every pool is full and the fill's follow-ups have run out, then
reads utime+stime (``/proc/<pid>/stat``) of the stack's process (the scheduler: its tick, nudge
listener and passes), of its redis-server and of everything else it started (the HTTP front),
over ``--runs`` windows of ``--seconds`` each. No request is made meanwhile: what it prints is
what an idle stack costs a minute. ``--interval``: the scheduler's tick; left out, the stack's
default.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from chalicelib.store.keys import Keys
from local.stack import dummy_config, local_stack

TICKS_PER_SECOND = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` so far, in seconds (0 when it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICKS_PER_SECOND  # fields 14 and 15 of proc(5)


def descendants(pid: int) -> list[int]:
    """Every process started under ``pid`` (children, theirs...)."""
    found: list[int] = []
    parents = [pid]
    while parents:
        parent = parents.pop()
        try:
            children = [int(child) for child in Path(f"/proc/{parent}/task/{parent}/children").read_text().split()]
        except OSError:
            continue
        found += children
        parents += children
    return found


def process_name(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pools", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--interval", type=float, default=None, help="the tick (default: the stack's own)")
    parser.add_argument("--settle", type=float, default=20.0, help="seconds waited once every pool is full")
    args = parser.parse_args(argv)
    names = [f"pool-{n:05d}" for n in range(args.pools)]
    with local_stack(dummy_config([(name, 1) for name in names]), workers=1, interval=args.interval) as stack:
        client, keys = stack.redis, Keys()
        started = time.monotonic()
        while True:
            pipe = client.pipeline(transaction=False)
            for name in names:
                pipe.zcard(keys.pool_state(name, "ready"))
            if all(pipe.execute()):
                break
            if time.monotonic() - started > 600:
                raise SystemExit("the pools did not fill within 10 minutes")
            time.sleep(1.0)
        filled = time.monotonic() - started
        time.sleep(args.settle)
        stack_pid = stack.process.pid
        redis_pids = [pid for pid in descendants(stack_pid) if process_name(pid).startswith("redis-server")]
        runs = []
        for _ in range(args.runs):
            others = [pid for pid in descendants(stack_pid) if pid not in redis_pids]
            before = (cpu_seconds(stack_pid), sum(map(cpu_seconds, redis_pids)), sum(map(cpu_seconds, others)))
            time.sleep(args.seconds)
            after = (cpu_seconds(stack_pid), sum(map(cpu_seconds, redis_pids)), sum(map(cpu_seconds, others)))
            per_minute = [round((end - begin) * 60 / args.seconds, 2) for begin, end in zip(before, after, strict=True)]
            runs.append(dict(zip(("scheduler_process", "redis_server", "http_front"), per_minute, strict=True)))
        print(json.dumps({"pools": args.pools, "interval": args.interval, "filled_seconds": round(filled, 1),
                          "cpu_seconds_per_minute": runs}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
