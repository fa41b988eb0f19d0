"""What the service-wide quota costs Redis per checkout, at 3, 1,000 and 10,000 pools
(docs/performance.md, "The service-wide quota at 10,000 pools").

Redis runs every script on its one thread: a checkout's script time is time no other request
gets. Each fleet has one running VM in every pool (so every pool's running set exists) and a
pool of ready VMs that the measured checkouts take from, each by another owner (an owner's
holdings cost the same at any fleet size) held to a quota (``Quota``, as the API checks it).
The checkout script runs alone (its confirmation, a second script, is not run: the VMs are left
unconfirmed). Two measures of what it costs Redis, per checkout over ``CHECKOUTS`` checkouts:
the CPU time redis-server used (``INFO cpu``, user + system: what the one thread can give, and
the least sensitive to other processes on a shared machine) and the script's own time
(``INFO commandstats``, wall time inside Redis: inflated when the machine is busy); and the
commands it ran. Also the same two for the scheduler's tick rebuilding the service's running
set (``Store.recount_running``, once a minute) at each size. Then the owner's own quota: checkouts
by one owner holding 0, 100 and 500 VMs, far below its limit (docs/performance.md, "An owner's
quota, however much it holds").
"""

from __future__ import annotations

import os
from typing import Any, Sequence

import redis

from bench.common import CORES
from chalicelib.store import CheckoutRequest, Quota, Store

FLEETS = (3, 1000, 10000)
CHECKOUTS = 300
HOLDINGS = (0, 100, 500)
"""VMs one owner holds, far below its limit, before its measured checkouts."""
OWNER_CHECKOUTS = 100


def _seed(store: Store, pools: Sequence[str], ready: int) -> None:
    """``ready`` VMs ready in the first pool, and one running VM in every pool (checked out
    without a quota: the seeding is not measured)."""
    pipe = store.client.pipeline(transaction=False)
    for n, pool in enumerate(pools):
        for i in range(ready if n == 0 else 1):
            host = f"vm-{n:05d}-{i:04d}"
            pipe.hset(store.keys.vm(host), mapping={"name": host, "pool": pool, "state": "ready"})
            pipe.zadd(store.keys.pool_state(pool, "ready"), {host: 1.0})
    pipe.execute()
    for pool in pools[1:]:
        assert store.checkout([CheckoutRequest(pool, [pool], 1)], 1000.0, {}).ok


def _cpu_us(client: redis.Redis) -> float:
    """CPU time redis-server has used, user + system, in microseconds."""
    cpu = client.info("cpu")
    return (float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"])) * 1e6


def _stats(client: redis.Redis) -> dict[str, tuple[int, int]]:
    """command -> (calls, microseconds) since the last CONFIG RESETSTAT."""
    return {name.removeprefix("cmdstat_"): (entry["calls"], entry["usec"])
            for name, entry in client.info("commandstats").items()}


def _fleet(client: redis.Redis, pools: int) -> dict[str, Any]:
    client.flushall()
    names = [f"pool-{n:05d}" for n in range(pools)]
    store = Store(client)
    _seed(store, names, CHECKOUTS + 1)
    request = [CheckoutRequest(names[0], [names[0]], 1)]

    def quota(owner: int) -> Quota:
        return Quota(f"addr:bench-{owner}", max_owner_vms=10, max_vms=pools + CHECKOUTS * 2, pools=names)

    assert store.checkout(request, 1000.0, {}, quota(-1)).ok  # scripts loaded (and the running set built)
    store._confirm = lambda *args: None  # type: ignore[method-assign]  # the checkout script alone
    client.config_resetstat()
    cpu = _cpu_us(client)
    for owner in range(CHECKOUTS):
        assert store.checkout(request, 1000.0, {}, quota(owner)).ok
    cpu = _cpu_us(client) - cpu
    stats = _stats(client)
    calls, usec = stats["evalsha"]
    commands = sum(count for name, (count, _) in stats.items() if name not in ("evalsha", "config|resetstat"))
    client.config_resetstat()
    recount_cpu = _cpu_us(client)
    recount = store.recount_running(names, 1000.0)
    recount_cpu = _cpu_us(client) - recount_cpu
    assert calls == CHECKOUTS and recount.running == pools + CHECKOUTS, (calls, recount)
    return {"pools": pools, "checkouts": calls, "redis_cpu_us_per_checkout": round(cpu / calls, 1),
            "checkout_script_us": round(usec / calls, 1), "commands_per_checkout": round(commands / calls, 1),
            "recount_redis_cpu_us": round(recount_cpu), "recount_us": _stats(client)["evalsha"][1],
            "running": recount.running}


def _holder(client: redis.Redis, held: int) -> dict[str, Any]:
    """``OWNER_CHECKOUTS`` checkouts by one owner already holding ``held`` VMs, its limit (1,000)
    far away: what the owner's quota costs as its holdings grow (lua/quota.lua)."""
    client.flushall()
    store, pool = Store(client), "pool-00000"
    _seed(store, [pool], held + OWNER_CHECKOUTS + 1)
    request = [CheckoutRequest(pool, [pool], 1)]
    quota = Quota("addr:bench-holder", max_owner_vms=1000, max_vms=10000, pools=[pool])
    for _ in range(held + 1):  # + 1: the scripts loaded and the running set built
        assert store.checkout(request, 1000.0, {}, quota).ok
    store._confirm = lambda *args: None  # type: ignore[method-assign]  # the checkout script alone
    client.config_resetstat()
    cpu = _cpu_us(client)
    for _ in range(OWNER_CHECKOUTS):
        assert store.checkout(request, 1000.0, {}, quota).ok
    cpu = _cpu_us(client) - cpu
    stats = _stats(client)
    calls, usec = stats["evalsha"]
    commands = sum(count for name, (count, _) in stats.items() if name not in ("evalsha", "config|resetstat"))
    return {"held": held, "checkouts": calls, "redis_cpu_us_per_checkout": round(cpu / calls, 1),
            "checkout_script_us": round(usec / calls, 1), "commands_per_checkout": round(commands / calls, 1)}


def run(quick: bool = False) -> dict[str, Any]:
    from local.redis_server import RedisServer

    with RedisServer() as server:
        client = redis.Redis(port=server.port, decode_responses=True)
        try:
            fleets = [_fleet(client, pools) for pools in (FLEETS[:2] if quick else FLEETS)]
            holders = [_holder(client, held) for held in HOLDINGS]
        finally:
            client.close()
    return {"cores": CORES, "load_average_before": os.getloadavg()[0], "fleets": fleets, "holders": holders}


def table(results: dict[str, Any]) -> list[tuple[str, str]]:
    """The quota's rows of `make bench`'s table."""
    return [(f"checkout with quotas, {fleet['pools']} pools",
             (f"Redis CPU {fleet['redis_cpu_us_per_checkout']} us (script {fleet['checkout_script_us']} us,"
              f" {fleet['commands_per_checkout']:g} commands) per checkout; the tick's rebuild of the running"
              f" set: CPU {fleet['recount_redis_cpu_us']} us (script {fleet['recount_us']} us)"))
            for fleet in results["fleets"]] + [
        (f"checkout by an owner holding {holder['held']} VMs",
         (f"Redis CPU {holder['redis_cpu_us_per_checkout']} us (script {holder['checkout_script_us']} us,"
          f" {holder['commands_per_checkout']:g} commands) per checkout"))
        for holder in results.get("holders", ())]
