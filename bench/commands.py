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

import json
import os
import time
from typing import Any

from bench.checkout import POOL, _one_run
from bench.common import command_delta, command_stats
from chalicelib.store.keys import STATES, Keys
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


def commands_per_cycle(clients: int, seconds: float, runs: int, pool_size: int) -> dict[str, Any]:
    """Each run's commands per cycle, in all and by command (``settle``'s own reads left out)."""
    results = []
    with local_stack(dummy_config([(POOL, pool_size)]), interval=5.0) as stack:
        stack.wait_ready(POOL, pool_size, timeout=600)
        settle(stack, pool_size)
        for _ in range(runs):
            before = command_stats(stack.redis)
            run = _one_run(stack, clients, seconds)
            looks = settle(stack, pool_size)
            commands = command_delta(before, command_stats(stack.redis))
            commands.pop("info", None)  # the readings'
            commands["zcard"] = commands.get("zcard", 0) - looks * len(STATES)
            cycles = max(run["cycles"], 1)
            results.append({"cycles": run["cycles"], "cycles_per_second": round(run["cycles_per_second"]),
                            "redis_commands_per_cycle": round(sum(commands.values()) / cycles, 2),
                            "by_command": {name: round(calls / cycles, 2) for name, calls in
                                           sorted(commands.items(), key=lambda item: -item[1]) if calls}})
    return {"clients": clients, "seconds": seconds, "pool_size": pool_size, "runs": results}


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="exact Redis commands per checkout + delete cycle (JSON)")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--pool", type=int, default=600)
    options = parser.parse_args()
    figures = commands_per_cycle(options.clients, options.seconds, options.runs, options.pool)
    print(json.dumps({**figures, "load_average": os.getloadavg()}))
