"""Redis commands per checkout + delete cycle, exact: N clients cycle for a few seconds, then the
count goes on until the pool is whole again (every returned VM destroyed and replaced) and the
scheduler idle, so the refill of every cycle is counted and none of the next window's.

``bench.checkout`` counts over its timed window only: the refill lags the window, so its figure
moves by a tenth from one window to the next. This one gives the same number, to a few hundredths,
whatever the machine's load (the count of passes, which coalesce under load, is what still
varies it). Every command Redis ran counts, those run inside Lua scripts too (``INFO
commandstats``), the dummy provider's included: its VMs live in the same Redis.

    python -m bench.commands --clients 8 --seconds 2 --runs 2 --pool 600
"""

from __future__ import annotations

import collections
import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any

import redis

from bench.checkout import POOL, _one_run
from bench.common import command_delta, command_stats
from chalicelib.providers import dummy
from chalicelib.store.keys import STATES, Keys
from chalicelib.store.scripts import script_source
from local.stack import Stack, dummy_config, local_stack

SETTLE_POLL_SECONDS = 2.5
IDLE_COMMANDS = 12
"""Commands in one poll interval that still count as idle (the scheduler's wake-list BLPOPs)."""


def settle(stack: Stack, size: int, timeout: float = 300.0) -> int:
    """Wait until the pool holds ``size`` ready VMs and nothing else, and Redis is idle; returns
    how many times it looked (each look: one ZCARD per state and one INFO)."""
    keys, client = Keys(), stack.redis
    deadline = time.monotonic() + timeout
    last: int | None = None
    looks = 0
    while time.monotonic() < deadline:
        looks += 1
        counts = {state: client.zcard(keys.pool_state(POOL, state)) for state in STATES}
        total = sum(command_stats(client).values())
        whole = counts["ready"] == size and sum(counts.values()) == size
        if whole and last is not None and total - last <= IDLE_COMMANDS + len(STATES) + 1:
            return looks
        last = total
        time.sleep(SETTLE_POLL_SECONDS)
    raise RuntimeError(f"pool {POOL} did not settle in {timeout:.0f} s")


def script_names() -> dict[str, str]:
    """The SHA1 of every script the local stack runs, to its name: the store's (lua/*.lua, as
    loaded) and the dummy provider's."""
    names = {hashlib.sha1(text.encode()).hexdigest(): f"dummy {name.strip('_').lower()}"
             for name, text in vars(dummy).items() if name in ("_WRITE_VMS", "_START_IF_PRESENT")}
    lua = Path(script_source.__code__.co_filename).with_name("lua")
    for path in lua.glob("*.lua"):
        names[hashlib.sha1(script_source(path.stem).encode()).hexdigest()] = path.stem
    return names


def script_time(entries: list[dict[str, Any]], cycles: int) -> dict[str, dict[str, float]]:
    """Redis's own time (SLOWLOG durations, microseconds) in each script, per cycle and per call,
    the commands the script runs included. (The slowlog lists those too, with the caller's
    address: a plain command cannot be told from one a script ran, so only scripts are given.)"""
    names = script_names()
    took: dict[str, list[int]] = collections.defaultdict(list)
    for entry in entries:
        command = entry["command"]
        words = (command.decode("latin-1") if isinstance(command, bytes) else command).split(" ", 2)
        if words[0].upper() in ("EVALSHA", "EVAL") and len(words) > 1:
            took[names.get(words[1], words[1][:12])].append(int(entry["duration"]))
    return {name: {"us_per_cycle": round(sum(durations) / max(cycles, 1), 1), "calls_per_cycle":
                   round(len(durations) / max(cycles, 1), 2), "us_per_call": round(sum(durations) / len(durations), 1)}
            for name, durations in sorted(took.items(), key=lambda item: -sum(item[1]))}


def _redis_cpu_seconds(client: redis.Redis) -> float:
    info = client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


SLOWLOG_ENTRIES = 1_000_000


def _slowlog_everything(client: redis.Redis, on: bool) -> None:
    client.config_set("slowlog-log-slower-than", 0 if on else 10_000)
    client.config_set("slowlog-max-len", SLOWLOG_ENTRIES if on else 128)
    client.slowlog_reset()


def commands_per_cycle(clients: int, seconds: float, runs: int, pool_size: int,
                       redis_time: bool = False) -> dict[str, Any]:
    """Each run's commands per cycle, in all and by command (``settle``'s own reads left out);
    with ``redis_time``, redis-server's CPU per cycle and the time of each script in it
    (``script_time``; SLOWLOG logs every command meanwhile, which costs Redis about a microsecond
    a command)."""
    results = []
    with local_stack(dummy_config([(POOL, pool_size)]), interval=5.0) as stack:
        stack.wait_ready(POOL, pool_size, timeout=600)
        settle(stack, pool_size)
        for _ in range(runs):
            if redis_time:
                _slowlog_everything(stack.redis, True)
            cpu_before = _redis_cpu_seconds(stack.redis)
            before = command_stats(stack.redis)
            run = _one_run(stack, clients, seconds)
            looks = settle(stack, pool_size)
            timed: dict[str, Any] = {}
            if redis_time:
                cycles = max(run["cycles"], 1)
                used = _redis_cpu_seconds(stack.redis) - cpu_before
                timed = {"redis_cpu_us_per_cycle": round(used * 1e6 / cycles, 1),
                         "scripts": script_time(stack.redis.slowlog_get(SLOWLOG_ENTRIES), cycles)}
                _slowlog_everything(stack.redis, False)
            commands = command_delta(before, command_stats(stack.redis))
            commands.pop("info", None)  # the readings'
            commands["zcard"] = commands.get("zcard", 0) - looks * len(STATES)
            cycles = max(run["cycles"], 1)
            results.append({"cycles": run["cycles"], "cycles_per_second": round(run["cycles_per_second"]),
                            "redis_commands_per_cycle": round(sum(commands.values()) / cycles, 2),
                            "by_command": {name: round(calls / cycles, 2) for name, calls in
                                           sorted(commands.items(), key=lambda item: -item[1]) if calls},
                            **({"redis_time": timed} if redis_time else {})})
    return {"clients": clients, "seconds": seconds, "pool_size": pool_size, "runs": results}


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="exact Redis commands per checkout + delete cycle (JSON)")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--pool", type=int, default=600)
    parser.add_argument("--redis-time", action="store_true",
                        help="redis-server's CPU per cycle, and the time of each script in it (SLOWLOG)")
    options = parser.parse_args()
    figures = commands_per_cycle(options.clients, options.seconds, options.runs, options.pool, options.redis_time)
    print(json.dumps({**figures, "load_average": os.getloadavg()}))
