"""What one pool's clone reservation (lua/reserve_clones.lua) costs Redis while the fleet has
clones in flight: 1,000 pools, each short of VMs (so each claims a share of task_limit), and 50,
500 or 2,000 clones in flight spread over them. The measured pool has its own clones in flight
and is at the task limit, so each call counts everything and reserves nothing (what a busy
pass's reservation does every ``clone_poll_interval``). Per call, median of ``CALLS``: the
script's time inside Redis (``INFO commandstats``, wall time: inflated on a busy machine) and
the commands it ran (docs/performance.md, "Fifth round", reserve_clones).

    python -m bench.reserve [--pools N]
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Any

import redis

from bench.common import CORES, median
from chalicelib.store import Store

POOLS = 1000
FLEETS = (50, 500, 2000)
CALLS = 40


def _fleet(client: redis.Redis, in_flight: int, pools: int = POOLS) -> dict[str, Any]:
    client.flushall()
    store = Store(client)
    names = [f"pool-{n:04d}" for n in range(pools)]
    for n in range(in_flight):  # round robin: pool-0000 gets its share of the clones
        pool = names[n % pools]
        assert store.reserve_clones(pool, 100, in_flight, "tmpl", "example.com", [f"{pool}-{n}"], 100.0)
    for pool in names[in_flight:]:  # the other pools are short too: each claims a share
        store.reserve_clones(pool, 100, in_flight, "tmpl", "example.com", [], 100.0)
    times, commands = [], []
    for _ in range(CALLS):
        client.config_resetstat()
        assert store.reserve_clones(names[0], 100, in_flight, "tmpl", "example.com", ["spare"], 101.0) == []
        stats = client.info("commandstats")
        times.append(stats["cmdstat_evalsha"]["usec"])
        commands.append(sum(entry["calls"] for name, entry in stats.items()
                            if name not in ("cmdstat_evalsha", "cmdstat_config|resetstat")))
    return {"pools": pools, "clones_in_flight": in_flight, "script_us": median(times),
            "commands": median(commands)}


def run(quick: bool = False, pools: int = POOLS) -> dict[str, Any]:
    from local.redis_server import RedisServer

    with RedisServer() as server:
        client = redis.Redis(port=server.port, decode_responses=True)
        try:
            fleets = [_fleet(client, in_flight, pools) for in_flight in (FLEETS[:2] if quick else FLEETS)]
        finally:
            client.close()
    return {"cores": CORES, "load_average_before": os.getloadavg()[0], "fleets": fleets}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pools", type=int, default=POOLS, help="pools short of VMs (each claims a share)")
    print(json.dumps(run(pools=parser.parse_args().pools), indent=1))
