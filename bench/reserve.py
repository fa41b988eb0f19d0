"""What one pool's clone reservation (lua/reserve_clones.lua) costs Redis while the fleet is
short of VMs: 1,000 (and 5,000) pools, each short (so each claims a share of task_limit), and 50,
500 or 2,000 clones in flight spread over them. The measured pool has its own clones in flight
and is at the task limit, so each call counts everything and reserves nothing (what a busy
pass's reservation does every ``clone_poll_interval``). Per call, median of ``CALLS``: the
script's time inside Redis (``INFO commandstats``, wall time: inflated on a busy machine) and
the commands it ran (docs/performance.md, "Fifth round", reserve_clones, and "Fair clone slots
at 1,000 short pools").

    python -m bench.reserve [--pools N]    (make bench: python bench/run.py --only reserve)
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
SHORT_POOLS = (1000, 5000)
"""The fleets of ``make bench``: clones in flight ``FLEETS`` over each of these (``--quick``: the
first two fleets over 1,000 pools)."""
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


def run(quick: bool = False, pools: tuple[int, ...] | None = None) -> dict[str, Any]:
    """Each fleet's figures, with the machine's core count and load average."""
    from local.redis_server import RedisServer

    shapes = [(short, in_flight) for short in (pools or ((POOLS,) if quick else SHORT_POOLS))
              for in_flight in (FLEETS[:2] if quick else FLEETS)]
    load = os.getloadavg()[0]
    with RedisServer() as server:
        client = redis.Redis(port=server.port, decode_responses=True)
        try:
            fleets = [_fleet(client, in_flight, short) for short, in_flight in shapes]
        finally:
            client.close()
    return {"cores": CORES, "load_average_before": load, "fleets": fleets}


def table(results: dict[str, Any]) -> list[tuple[str, str]]:
    """The reservation's rows of `make bench`'s table: Redis's time per pass that wants clones."""
    return [(f"clone reservation, {fleet['pools']:,} short pools",
             (f"{fleet['script_us']:g} us of Redis per pass ({fleet['commands']:g} commands),"
              f" {fleet['clones_in_flight']:,} clones in flight"))
            for fleet in results["fleets"]]


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pools", type=int, action="append",
                        help="pools short of VMs (each claims a share); repeat for several")
    arguments = parser.parse_args()
    print(json.dumps(run(pools=tuple(arguments.pools) if arguments.pools else None), indent=1))
