"""Reconcile passes: wall time, Redis round trips and provider calls.

- dummy: one pass over each of 100 pools x 50 VMs, in three phases: ``fill`` (the first pass
  starts every clone), ``ready`` (clones finish, VMs become ready), ``steady`` (nothing to do),
  plus ``churn`` (a tenth of every pool was checked out since the last pass);
- scaling: the steady pass of one pool at growing sizes (the target: O(1) in the pool's size);
- refill: the passes of a 20-VM pool replacing N VMs its users returned (the target: the round
  trips of each step independent of N);
- vcsim: one pool of 200 VMs through the vSphere provider (SOAP calls counted by the provider).

Redis round trips are counted in this process (``RoundTrips``); for the dummy provider, whose VMs
live in Redis too, its own commands are reported as provider calls and left out of the store's.
"""

from __future__ import annotations

import functools
import time
from typing import Any, Callable

import redis

from bench.common import CORES, RoundTrips, median, ms
from chalicelib.clock import FakeClock
from chalicelib.config import Config, PoolConfig, parse
from chalicelib.manager.reconcile import reconcile_pool
from chalicelib.providers.base import Provider
from chalicelib.store import CheckoutRequest, Store
from local.stack import dummy_config


def _measure(counter: RoundTrips, provider: Provider, action: Callable[[], Any],
             provider_in_redis: bool) -> dict[str, float]:
    counter.take()
    calls = provider.call_count()
    started = time.perf_counter()
    action()
    seconds = time.perf_counter() - started
    provider_calls = provider.call_count() - calls
    trips = counter.take() - (provider_calls if provider_in_redis else 0)
    return {"seconds": seconds, "redis_round_trips": trips, "provider_calls": provider_calls}


def _pass_all(store: Store, provider: Provider, config: Config, clock: FakeClock) -> None:
    """One second later, one pass over every pool."""
    clock.advance(1)
    for pool in config.pools:
        reconcile_pool(store, provider, pool, clock, config.service)


def _dummy_world(client: redis.Redis, pools: list[tuple[str, int]]) -> tuple[Config, Store, Provider, FakeClock]:
    from chalicelib.providers.dummy import DummyProvider

    client.flushall()
    config = parse(dummy_config(pools))
    clock = FakeClock()
    store = Store(client, data_ttl_hours=config.redis.data_ttl_hours)
    provider = DummyProvider(config.providers["dummy"], client, clock)
    return config, store, provider, clock


def dummy_pools(client: redis.Redis, pools: int, size: int, runs: int) -> dict[str, Any]:
    """The four phases over ``pools`` pools of ``size``; medians over ``runs`` runs."""
    phases: dict[str, list[dict[str, float]]] = {"fill": [], "ready": [], "steady": [], "churn": []}
    for _ in range(runs):
        config, store, provider, clock = _dummy_world(client, [(f"p{i:03d}", size) for i in range(pools)])
        with RoundTrips() as counter:
            one_pass = functools.partial(_pass_all, store, provider, config, clock)
            phases["fill"].append(_measure(counter, provider, one_pass, True))
            phases["ready"].append(_measure(counter, provider, one_pass, True))
            phases["steady"].append(_measure(counter, provider, one_pass, True))
            for pool in config.pools:
                store.checkout([CheckoutRequest(pool.name, [pool.name], max(size // 10, 1))],
                               clock.now(), {"lifetime": "2"})
            phases["churn"].append(_measure(counter, provider, one_pass, True))
    result: dict[str, Any] = {"pools": pools, "size": size, "runs": runs}
    for name, samples in phases.items():
        result[name] = _medians(samples) | {"per_pool_ms": ms(median([s["seconds"] for s in samples]) / pools)}
    return result


def steady_scaling(client: redis.Redis, sizes: tuple[int, ...]) -> dict[str, Any]:
    """The steady pass of a single pool, by size: round trips, provider calls and time must not
    grow. Also, per size: the pass every ``vm_checktime`` that compares the whole inventory, and
    a churn pass after 10 checkouts (its cost: the VMs that changed)."""
    result = {}
    for size in sizes:
        config, store, provider, clock = _dummy_world(client, [("scale", size)])
        pool = config.pools[0]
        for _ in range(3):  # fill, ready, then the first pass after the fill's changes
            clock.advance(1)
            reconcile_pool(store, provider, pool, clock, config.service)
        inventory_seconds: list[float] = []
        for name in ("list_vms", "find_vms", "inventory_changes"):
            setattr(provider, name, functools.partial(_timed, getattr(provider, name), inventory_seconds))
        one_pass = functools.partial(reconcile_pool, store, provider, pool, clock, config.service)
        measured = functools.partial(_measure_split, provider, one_pass, inventory_seconds)
        with RoundTrips() as counter:
            steady = [measured(counter) for _ in range(5)]
            clock.advance(config.service.vm_checktime * 60)
            whole = measured(counter)
            checked_out = store.checkout([CheckoutRequest(pool.name, [pool.name], 10)], clock.now(), {"lifetime": "2"})
            assert checked_out.ok
            clock.advance(1)
            churn = measured(counter)
        result[str(size)] = _medians(steady) | {"whole_inventory": _medians([whole]), "churn_10": _medians([churn])}
    return result


def _measure_split(provider: Provider, action: Callable[[], Any], inventory_seconds: list[float],
                   counter: RoundTrips) -> dict[str, float]:
    """``_measure``, with the provider's part of the time (the dummy keeps its folder in Redis; a
    whole inventory is one HGETALL and a JSON document per VM) apart from the pass's own."""
    inventory_seconds.clear()
    sample = _measure(counter, provider, action, True)
    sample["inventory_seconds"] = sum(inventory_seconds)
    sample["without_inventory_seconds"] = sample["seconds"] - sample["inventory_seconds"]
    return sample


def _timed(function: Callable[..., Any], seconds: list[float], *args: Any) -> Any:
    started = time.perf_counter()
    try:
        return function(*args)
    finally:
        seconds.append(time.perf_counter() - started)


def idle_invocation(client: redis.Redis, size: int = 50, runs: int = 21) -> dict[str, Any]:
    """What an idle pool's scheduled Lambda does once warm: ``run_pool`` (lease, one steady
    pass, metrics, release). Its duration is what each idle invocation is billed for."""
    from chalicelib.manager.runner import run_pool
    from chalicelib.services import Services

    config, _, _, clock = _dummy_world(client, [("idle", size)])
    services = Services(config, client, clock)
    while services.store.counts(["idle"])["idle"]["ready"] < size:
        clock.advance(1)
        run_pool(services, "idle", 0.0)
    samples = []
    with RoundTrips() as counter:
        for _ in range(runs):
            counter.take()
            started = time.perf_counter()
            report = run_pool(services, "idle", 60.0)
            samples.append({"seconds": time.perf_counter() - started, "redis_round_trips": counter.take(),
                            "provider_calls": report.passes[0].provider_calls})
            assert len(report.passes) == 1, "an idle pool returns after one pass"
    return {"size": size, **_medians(samples)}


def vcsim_pool(client: redis.Redis, size: int, steady_runs: int) -> dict[str, Any]:
    """One pool of ``size`` VMs against our vCenter simulator: fill, until ready, steady."""
    import tempfile
    from pathlib import Path

    from chalicelib.providers.vsphere.provider import VSphereProvider
    from tests.vsphere.vcsim import VcsimServer, vcsim_config
    from tools.vcsim import launcher

    launcher.build()
    server = VcsimServer(boot_delay=0.5, cert_path=Path(tempfile.mkdtemp(prefix="vcsim-bench-")) / "vcsim.pem")
    server.start()
    try:
        client.flushall()
        config = vcsim_config(server, pools=[{"name": "vc", "size": size, "folder": "vmpool/bench",
                                              "ready_check": "tools"}],
                              service={"task_limit": size})
        pool: PoolConfig = config.pools[0]
        clock = FakeClock()
        store = Store(client)
        provider = VSphereProvider(config.providers["vsphere"], config.service, clock)
        one_pass = lambda: reconcile_pool(store, provider, pool, clock, config.service)  # noqa: E731
        with RoundTrips() as counter:
            result: dict[str, Any] = {"size": size, "fill": _medians([_measure(counter, provider, one_pass, False)])}
            passes, started = 0, time.perf_counter()
            counter.take()
            calls = provider.call_count()
            while store.counts([pool.name])[pool.name]["ready"] < size:
                if time.perf_counter() - started > 300:
                    raise RuntimeError(f"vcsim pool not ready: {store.counts([pool.name])}")
                one_pass()
                passes += 1
                time.sleep(0.2)
            result["until_ready"] = {"seconds": round(time.perf_counter() - started, 4), "passes": passes,
                                     "redis_round_trips": counter.take(),
                                     "provider_calls": provider.call_count() - calls}
            result["steady"] = _medians([_measure(counter, provider, one_pass, False) for _ in range(steady_runs)])
        # Leave nothing behind in the simulator's memory (it stops anyway) nor in Redis.
        return result
    finally:
        server.stop()


def refill_round_trips(client: redis.Redis, returned: tuple[int, ...] = (1, 10)) -> dict[str, Any]:
    """A pool of 20 at task_limit 10 (instant clones), N of its VMs checked out and returned:
    the Redis round trips of the passes until it is full again with the N destroyed (the dummy's
    own included), and per replaced VM."""
    result: dict[str, Any] = {}
    for count in (1, *returned):  # the first run loads the scripts into Redis: not reported
        client.flushall()
        config = parse(dummy_config([("refill", 20)], task_limit=10))
        clock = FakeClock()
        store = Store(client, data_ttl_hours=config.redis.data_ttl_hours)
        from chalicelib.providers.dummy import DummyProvider

        provider = DummyProvider(config.providers["dummy"], client, clock)
        pool = config.pools[0]
        one_pass = functools.partial(reconcile_pool, store, provider, pool, clock, config.service)
        while one_pass().work_in_flight:  # filled, then nothing left to do
            clock.advance(1)
        taken = store.checkout([CheckoutRequest(pool.name, [pool.name], count)], clock.now(), {"lifetime": "2"})
        for vm in taken.vms:
            store.return_vm(vm.hostname, clock.now(), "returned")
        passes: list[int] = []
        with RoundTrips() as counter:
            while True:
                clock.advance(1)
                counter.take()
                report = one_pass()
                passes.append(counter.take())
                if not report.work_in_flight:
                    break
        result[str(count)] = {"passes": passes, "redis_round_trips": sum(passes),
                              "per_replaced_vm": round(sum(passes) / count, 1)}
    return result


def _medians(samples: list[dict[str, float]]) -> dict[str, float]:
    medians = {"seconds": round(median([s["seconds"] for s in samples]), 4),
               "redis_round_trips": median([s["redis_round_trips"] for s in samples]),
               "provider_calls": median([s["provider_calls"] for s in samples])}
    for optional in ("inventory_seconds", "without_inventory_seconds"):
        if optional in samples[0]:
            medians[optional] = round(median([s[optional] for s in samples]), 4)
    return medians


def run(quick: bool = False) -> dict[str, Any]:
    from local.redis_server import RedisServer

    with RedisServer() as server:
        client = redis.Redis(port=server.port, decode_responses=True)
        result: dict[str, Any] = {"cores": CORES}
        result["dummy_100x50"] = dummy_pools(client, 100 if not quick else 20, 50, 1 if quick else 3)
        result["idle_invocation"] = idle_invocation(client)
        result["refill_20"] = refill_round_trips(client)
        result["steady_by_pool_size"] = steady_scaling(client, (50, 500, 2000) if quick else (50, 500, 2000, 10000))
        try:
            result["vcsim"] = vcsim_pool(client, 50 if quick else 200, 3)
        except Exception as error:  # noqa: BLE001 - vcsim needs Go; the rest still counts
            result["vcsim"] = {"skipped": f"{type(error).__name__}: {error}"}
        client.close()
    return result
