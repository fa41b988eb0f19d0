"""DNS records at 1,000 VMs against a real BIND 9 (docs/performance.md, "DNS records at 1,000
VMs"): what one RFC 2136 call of the ``dynamic-dns`` plugin costs (a new name's lookup, a
create, a held name's lookup, a delete), and the reconcile passes of one pool of 1,000 VMs (dummy
provider, fake clock) publishing them all and withdrawing half: wall time and DNS calls a pass.

Each call is one message on the plugin's kept TCP connection; a pass's creates and deletes go 50
VMs to one update (``create_many``, ``delete_many``), and the pass's DNS budget
(``DNS_SECONDS_PER_PASS``, 15 s) leaves the rest to the next pass. Needs ``/usr/sbin/named``.
"""

from __future__ import annotations

import os
import time
from typing import Any, Callable

import redis
import yaml

from bench.common import CORES

CALLS = 1000
POOL = 1000


def _per_call(plugin: Any, calls: int) -> dict[str, float]:
    """ms per call of each kind, ``calls`` names each."""
    kinds: list[tuple[str, Callable[[int], Any]]] = [
        ("lookup_free_ms", lambda i: plugin.addresses(f"bench-{i}")),
        # A clone pass's lookups: 50 questions pipelined on the connection (names_in_use's batch).
        ("lookup_batched_ms", lambda i: i % 50 == 0 and plugin.addresses_many(
            [f"bench-free-{j}" for j in range(i, min(i + 50, calls))])),
        ("create_ms", lambda i: plugin.create_or_replace(f"bench-{i}", f"10.9.{i // 250}.{i % 250 + 1}")),
        ("lookup_held_ms", lambda i: plugin.addresses(f"bench-{i}")),
        ("delete_ms", lambda i: plugin.delete(f"bench-{i}")),
        ("recreate_ms", lambda i: plugin.create_or_replace(f"bench-{i}", f"10.9.{i // 250}.{i % 250 + 1}")),
        # A pass's creates, 50 names to one update (publish_pending's batch).
        ("create_batched_ms", lambda i: i % 50 == 0 and plugin.create_many(
            [(f"bench-{j}", f"10.8.{j // 250}.{j % 250 + 1}", None) for j in range(i, min(i + 50, calls))])),
        # The records an outage left: 50 names to one update (delete_left_records' batch).
        ("delete_batched_ms", lambda i: i % 50 == 0 and plugin.delete_many(
            [(f"bench-{j}", None) for j in range(i, min(i + 50, calls))])),
    ]
    result = {}
    for kind, call in kinds:
        began = time.monotonic()
        for i in range(calls):
            call(i)
        result[kind] = round((time.monotonic() - began) / calls * 1000, 2)
    return result


def _passes(client: redis.Redis, entry: dict[str, Any], size: int) -> dict[str, Any]:
    """One pool of ``size`` VMs on the BIND entry: the passes until all are ready and published,
    then until half of them, returned, are destroyed with their records."""
    from chalicelib.clock import FakeClock
    from chalicelib.config import parse
    from tests.harness import Harness

    document = {
        "config": {"timeout": 60, "task_limit": size},
        "providers": {"dummy": {"provider_class": "dummy", "seed": 5, "boot_time": 20}},
        "dns_configs": {"zone": entry},
        "pools": [{"name": "dns", "size": size, "provider": "dummy", "dns_plugin": "zone"}],
    }
    world = Harness(parse(yaml.safe_dump(document)), client, FakeClock(), prefix="bench-dns")
    plugin = world.services.dns_plugin(world.pool("dns"))
    calls: dict[str, int] = {}
    for name in ("create_many", "delete_many", "addresses", "addresses_many"):  # DNS calls, 50 names each
        method = getattr(plugin, name)
        setattr(plugin, name, lambda *args, _m=method, _n=name: (calls.__setitem__(_n, calls.get(_n, 0) + 1),
                                                                 _m(*args))[1])

    def measured(until: Callable[[], bool]) -> list[dict[str, Any]]:
        passes = []
        while not until() and len(passes) < 10:
            calls.clear()
            opened = plugin.connections_opened
            began = time.monotonic()
            world.passes("dns", 1)
            passes.append({"seconds": round(time.monotonic() - began, 2), "dns_calls": dict(calls),
                           "connections": plugin.connections_opened - opened,
                           "ready": world.count("dns", "ready"), "pending": world.count("dns", "pending")})
        return passes

    fill = measured(lambda: world.count("dns", "ready") == size)
    for host in sorted(world.hosts("dns", "ready"))[: size // 2]:
        world.store.move(host, "dns", "ready", "completed", world.clock.now(), reason="returned")
    drain = measured(lambda: world.count("dns", "completed") == 0)
    world.services.client.flushdb()
    return {"size": size, "fill": fill, "drain": drain}


def run(quick: bool = False) -> dict[str, Any]:
    from chalicelib.config import build
    from chalicelib.dns.registry import build_dns_plugin
    from local.redis_server import RedisServer
    from tests.dns.bind import NAMED, BindServer

    if not os.path.exists(NAMED):
        return {"skipped": f"{NAMED} not installed"}
    with BindServer() as bind, RedisServer() as server:
        plugin = build_dns_plugin(build({"dns_configs": {"e": bind.dns_config()}}).dns_configs["e"])
        client = redis.Redis(port=server.port, decode_responses=True)
        result: dict[str, Any] = {"cores": CORES, "calls": CALLS // 10 if quick else CALLS}
        result["per_call"] = _per_call(plugin, result["calls"])
        result["pool"] = _passes(client, bind.dns_config(), POOL // 10 if quick else POOL)
        client.close()
    return result


def table(result: dict[str, Any]) -> list[tuple[str, str]]:
    """The headline rows."""
    if "skipped" in result:
        return [("dns (BIND)", "skipped: " + result["skipped"])]
    per = result["per_call"]
    rows = [("dns call (BIND, TCP)", (f"lookup {per['lookup_free_ms']} ms (free) {per['lookup_held_ms']} ms (held)"
                                       f" ({per['lookup_batched_ms']} ms 50 pipelined)"
                                       f"  create {per['create_ms']} ms ({per['create_batched_ms']} ms 50 to an update)"
                                       f"  delete {per['delete_ms']} ms"
                                       f" ({per['delete_batched_ms']} ms 50 to an update)"))]
    pool = result["pool"]
    for phase in ("fill", "drain"):
        shown = "; ".join(f"{p['seconds']} s {sum(p['dns_calls'].values())} calls {p['connections']} conn."
                          for p in pool[phase])
        rows.append((f"dns pool of {pool['size']} {phase}", shown))
    return rows


if __name__ == "__main__":
    import json
    print(json.dumps(run(), indent=2))
