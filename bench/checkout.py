"""Checkout throughput: N HTTP clients (separate processes, keep-alive connections) doing
checkout + delete cycles against the local stack, on a pool pre-filled so it never runs dry.

Each window's cycles/s counts only the cycles; the refill of the VMs they used may still be
owed when the window ends (the scheduler shares the cores with the API, and a manager that
refills slowly owes more). So each run also says what it owed (``refill_owed``: ready VMs
fewer than at the start), how long the stack took after the window to be back where it started
(``catch_up_seconds``), the cycles/s counting that time (``sustained_cycles_per_second``: what
the stack delivers while it keeps its pool full), and the CPU per cycle including it.

Per concurrency level: cycles/s, p50/p99 of each call, and Redis commands per checkout from
``INFO commandstats`` deltas over the measured window (every command Redis ran, including the
ones inside Lua scripts and the reconcile passes refilling the pool meanwhile). Round trips per
call are measured separately, in process (``round_trips``), where nothing else talks to Redis.
"""

from __future__ import annotations

import http.client as http_client
import json
import multiprocessing
import resource
import time
from typing import Any, Callable

from bench.common import (
    CORES,
    RoundTrips,
    command_delta,
    command_stats,
    median,
    ms,
    percentile,
    stack_cpu,
)
from bench.http_client import KeepAliveClient
from chalicelib.store.keys import Keys
from local.stack import Stack, dummy_config, local_stack

POOL = "big"
CATCH_UP_TIMEOUT_SECONDS = 300.0


def _client(port: int, pool: str, start_at: float, stop_at: float, out: "multiprocessing.Queue[Any]",
            http: str = "lean") -> None:
    """One client: cycles until ``stop_at``; reports per-call latencies and failures. ``http``:
    ``lean`` (bench.http_client, the default) or ``stdlib`` (``http.client``, what the figures
    before issue 14's CPU round used)."""
    request = _requester(port, http)
    checkout: list[float] = []
    delete: list[float] = []
    failures: dict[str, int] = {}
    while time.time() < start_at:
        time.sleep(0.001)
    while time.time() < stop_at:
        began = time.perf_counter()
        status, body = request("POST", f"/api/v3/vm/{pool}")
        took = time.perf_counter() - began
        if status != 200:
            failures[f"checkout {status}"] = failures.get(f"checkout {status}", 0) + 1
            continue
        checkout.append(took)
        hostname = json.loads(body)[pool]["hostname"]
        began = time.perf_counter()
        status, _ = request("DELETE", f"/api/v3/vm/{hostname}")
        delete.append(time.perf_counter() - began)
        if status != 200:
            failures[f"delete {status}"] = failures.get(f"delete {status}", 0) + 1
    out.put({"checkout": checkout, "delete": delete, "failures": failures})


def _requester(port: int, http: str) -> Callable[[str, str], tuple[int, bytes]]:
    """A function sending one request on a kept-alive connection: (status, body)."""
    if http == "lean":
        return KeepAliveClient("127.0.0.1", port).request
    connection = http_client.HTTPConnection("127.0.0.1", port, timeout=30)

    def request(method: str, path: str) -> tuple[int, bytes]:
        connection.request(method, path, body=b"")
        response = connection.getresponse()
        return response.status, response.read()

    return request


def _one_run(stack: Stack, clients: int, seconds: float, pool: str = POOL, http: str = "lean") -> dict[str, Any]:
    context = multiprocessing.get_context("fork")
    queue: "multiprocessing.Queue[Any]" = context.Queue()
    start_at = time.time() + 0.5 + 0.02 * clients  # every client connected and waiting
    stop_at = start_at + seconds
    processes = [context.Process(target=_client, args=(stack.port, pool, start_at, stop_at, queue, http))
                 for _ in range(clients)]
    for process in processes:
        process.start()
    redis_client = stack.redis
    ready_key = Keys().pool_state(pool, "ready")
    while time.time() < start_at:
        time.sleep(0.001)
    ready_before = redis_client.zcard(ready_key)
    before = command_stats(redis_client)
    cpu_before = stack_cpu(stack.process.pid)
    clients_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    results = [queue.get(timeout=seconds + 60) for _ in processes]
    after = command_stats(redis_client)
    cpu_after = stack_cpu(stack.process.pid)
    for process in processes:
        process.join()
    clients_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    refill_owed = max(ready_before - redis_client.zcard(ready_key), 0)
    catch_up = _catch_up(stack, ready_key, ready_before)
    cpu_caught_up = stack_cpu(stack.process.pid)
    cpu = {part: cpu_after[part] - cpu_before[part] for part in cpu_after}
    cpu["http clients"] = (clients_after.ru_utime + clients_after.ru_stime
                           - clients_before.ru_utime - clients_before.ru_stime)
    checkout = [t for r in results for t in r["checkout"]]
    delete = [t for r in results for t in r["delete"]]
    failures: dict[str, int] = {}
    for result in results:
        for name, count in result["failures"].items():
            failures[name] = failures.get(name, 0) + count
    commands = command_delta(before, after)
    cycles = len(delete)
    cpu_ms_per_cycle = {part: ms(used / max(cycles, 1)) for part, used in cpu.items()}
    with_refill = {part: ms((cpu_caught_up[part] - cpu_before[part]) / max(cycles, 1)) for part in cpu_after}
    return {
        "cycles_per_second": cycles / seconds,
        "sustained_cycles_per_second": cycles / (seconds + catch_up),
        "refill_owed": refill_owed,
        "catch_up_seconds": round(catch_up, 2),
        "checkout_p50_ms": ms(percentile(checkout, 0.50)),
        "checkout_p99_ms": ms(percentile(checkout, 0.99)),
        "delete_p50_ms": ms(percentile(delete, 0.50)),
        "delete_p99_ms": ms(percentile(delete, 0.99)),
        "redis_commands_per_checkout": round(sum(commands.values()) / max(cycles, 1), 2),
        "commands": commands,
        "cpu_ms_per_cycle": cpu_ms_per_cycle,
        "cpu_ms_per_cycle_with_refill": with_refill,
        "cycles": cycles,
        "failures": failures,
    }


def _catch_up(stack: Stack, ready_key: str, ready_before: int) -> float:
    """Seconds until the pool has as many ready VMs as when the window began (the refill the
    window's cycles left owed is done). Not ``Stack.wait_ready``: that looks every 0.2 s, too
    coarse for catch-ups of tens of milliseconds, and bench.ab runs this against older trees'
    ``local.stack``, so the finer poll stays here."""
    started = time.monotonic()
    while stack.redis.zcard(ready_key) < ready_before:
        if time.monotonic() - started > CATCH_UP_TIMEOUT_SECONDS:
            raise RuntimeError(f"the refill did not catch up within {CATCH_UP_TIMEOUT_SECONDS:.0f} s")
        time.sleep(0.01)
    return time.monotonic() - started


def round_trips(pool_size: int = 50) -> dict[str, float]:
    """Redis round trips of one checkout and one delete, through the app's own Gateway in this
    process (no HTTP, no other client), with the refill trigger the local stack uses."""
    import os

    from local.redis_server import RedisServer
    from local.stack import dummy_config as config_text

    with RedisServer() as server:
        os.environ.update({"VMPOOL_CONFIG": config_text([(POOL, pool_size)]),
                           "VMPOOL_REDIS_URL": server.url, "VMPOOL_REFILL": "wake",
                           "POWERTOOLS_METRICS_DISABLED": "true", "POWERTOOLS_LOG_LEVEL": "WARNING"})
        os.environ.pop("VMPOOL_CONFIG_FILE", None)
        import importlib

        import app as app_module
        from chalicelib.manager.runner import run_pool
        from local.gateway import Gateway

        app_module = importlib.reload(app_module)  # the config above, whatever was imported before
        services = app_module.services()
        while services.store.counts([POOL])[POOL]["ready"] < pool_size:
            run_pool(services, POOL, 5.0)
        gateway = Gateway(app_module.app)
        checkout_trips: list[int] = []
        delete_trips: list[int] = []
        with RoundTrips() as counter:
            for _ in range(20):
                counter.take()
                status, _, body = gateway("POST", f"/api/v3/vm/{POOL}", {}, b"", "127.0.0.1")
                checkout_trips.append(counter.take())
                assert status == 200, body
                hostname = json.loads(body)[POOL]["hostname"]
                status, _, body = gateway("DELETE", f"/api/v3/vm/{hostname}", {}, b"", "127.0.0.1")
                delete_trips.append(counter.take())
                assert status == 200, body
        return {"checkout": median(checkout_trips), "delete": median(delete_trips)}


def run(quick: bool = False) -> dict[str, Any]:
    """Every concurrency level, several runs each; medians across runs."""
    pool_size = 3000 if quick else 10000  # the config allows at most 10,000 per pool
    seconds = 2.0 if quick else 5.0
    repeats = 1 if quick else 3
    levels = (1, 8) if quick else (1, 8, 32)
    result: dict[str, Any] = {"cores": CORES, "pool_size": pool_size, "seconds_per_run": seconds,
                              "runs": repeats, "http_client": "lean", "levels": {}}
    with local_stack(dummy_config([(POOL, pool_size)]), interval=5.0) as stack:
        result["fill_seconds"] = round(stack.wait_ready(POOL, pool_size, timeout=600), 1)
        for clients in levels:
            runs = []
            for _ in range(repeats):
                # Start every run from a full pool, so no run sees it short.
                stack.wait_ready(POOL, int(pool_size * 0.9), timeout=600)
                runs.append(_one_run(stack, clients, seconds))
            level: dict[str, Any] = {key: median([r[key] for r in runs]) for key in runs[0]
                     if isinstance(runs[0][key], (int, float))}
            level["commands"] = runs[-1]["commands"]
            for figure in ("cpu_ms_per_cycle", "cpu_ms_per_cycle_with_refill"):
                level[figure] = {part: median([r[figure][part] for r in runs]) for part in runs[0][figure]}
            level["failures"] = {k: sum(r["failures"].get(k, 0) for r in runs)
                                 for r in runs for k in r["failures"]}
            result["levels"][str(clients)] = level
    result["small_pool"] = small_pool(seconds)
    result["sustained"] = sustained(6.0 if quick else SUSTAINED_SECONDS)
    result["round_trips_per_call"] = _in_subprocess(round_trips)
    return result


SMALL_POOL, SMALL_SIZE, SMALL_TASK_LIMIT, SMALL_CLIENTS = "small", 20, 10, 8


def small_pool(seconds: float) -> dict[str, Any]:
    """8 clients on a pool of 20 (instant clones, task_limit 10): every returned VM is destroyed
    and replaced, so the pool holds only while its refill keeps up with the cycles. From the
    command line, several runs on one stack: ``python -m bench.checkout --small-pool``."""
    config = dummy_config([(SMALL_POOL, SMALL_SIZE)], task_limit=SMALL_TASK_LIMIT)
    with local_stack(config, interval=5.0) as stack:
        stack.wait_ready(SMALL_POOL, SMALL_SIZE, timeout=120)
        run = _one_run(stack, SMALL_CLIENTS, seconds, pool=SMALL_POOL)
    run.pop("commands")
    return {"pool_size": SMALL_SIZE, "clients": SMALL_CLIENTS, **run}


SUSTAINED_POOL, SUSTAINED_SIZE, SUSTAINED_SECONDS = "steady", 1000, 15.0


def sustained(seconds: float) -> dict[str, Any]:
    """8 clients for ``seconds`` on a pool of 1,000 (instant clones, the default task_limit):
    longer than the pool lasts unless the refill keeps up while the clients run, so cycles/s
    here is what the stack sustains, and refused checkouts say when its refill fell behind."""
    with local_stack(dummy_config([(SUSTAINED_POOL, SUSTAINED_SIZE)]), interval=5.0) as stack:
        stack.wait_ready(SUSTAINED_POOL, SUSTAINED_SIZE, timeout=300)
        run = _one_run(stack, 8, seconds, pool=SUSTAINED_POOL)
    run.pop("commands")
    return {"pool_size": SUSTAINED_SIZE, "clients": 8, "seconds": seconds, **run}


def _in_subprocess(function: Any) -> Any:
    """Run ``function`` in a fresh process (it sets environment variables and imports app)."""
    context = multiprocessing.get_context("spawn")
    with context.Pool(1) as pool:
        return pool.apply(function)


def one_level(clients: int, seconds: float, runs: int, pool_size: int, workers: int | None = None,
              http: str = "lean", task_limit: int | None = None) -> dict[str, Any]:
    """One concurrency level only, each run's figures (for A/B comparisons of two checkouts of
    the repository, run alternately: see docs/performance.md). ``task_limit``: the config's
    (None: ``dummy_config``'s default, no limit in practice)."""
    config = dummy_config([(POOL, pool_size)], **({} if task_limit is None else {"task_limit": task_limit}))
    with local_stack(config, workers=workers, interval=5.0) as stack:
        stack.wait_ready(POOL, pool_size, timeout=600)
        results = []
        for _ in range(runs):
            stack.wait_ready(POOL, int(pool_size * 0.9), timeout=600)
            results.append(_one_run(stack, clients, seconds, http=http))
    return {"clients": clients, "http": http, "seconds": seconds, "pool_size": pool_size, "workers": workers,
            "task_limit": task_limit,
            "cycles_per_second": [r["cycles_per_second"] for r in results],
            "sustained_cycles_per_second": [r["sustained_cycles_per_second"] for r in results],
            "refill_owed": [r["refill_owed"] for r in results],
            "catch_up_seconds": [r["catch_up_seconds"] for r in results],
            "api_cpu_ms_per_cycle": [r["cpu_ms_per_cycle"]["api workers"] for r in results],
            "client_cpu_ms_per_cycle": [r["cpu_ms_per_cycle"]["http clients"] for r in results],
            "scheduler_cpu_ms_per_cycle": [r["cpu_ms_per_cycle"]["reconcile (scheduler)"] for r in results],
            "redis_commands_per_checkout": [r["redis_commands_per_checkout"] for r in results],
            "checkout_p50_ms": [r["checkout_p50_ms"] for r in results],
            "checkout_p99_ms": [r["checkout_p99_ms"] for r in results],
            "failures": [r["failures"] for r in results]}


def window(stack: Stack, pool: str, clients: int = 8, seconds: float = 3.0) -> dict[str, Any]:
    """One window of ``clients`` checking out of ``pool`` and returning, on a running stack: its
    cycles/s and checkout p99 (what ``bench.memory`` reports beside each layout's memory)."""
    run = _one_run(stack, clients, seconds, pool=pool)
    return {"clients": clients, "seconds": seconds, "cycles_per_second": round(run["cycles_per_second"]),
            "checkout_p99_ms": run["checkout_p99_ms"], "cpu_ms_per_cycle": run["cpu_ms_per_cycle"]}


def compare_clients(rounds: int, seconds: float, pool_size: int) -> dict[str, Any]:
    """The benchmark's two HTTP clients on one stack, windows alternating (lean first in even
    rounds, stdlib first in odd ones): what each costs per cycle, and what the stack does with
    the CPU the cheaper one leaves it. Prints each window; returns the medians."""
    import os

    runs: dict[str, list[dict[str, Any]]] = {"lean": [], "stdlib": []}
    with local_stack(dummy_config([(POOL, pool_size)]), interval=5.0) as stack:
        stack.wait_ready(POOL, pool_size, timeout=600)
        for round_number in range(rounds):
            for http in ("lean", "stdlib") if round_number % 2 == 0 else ("stdlib", "lean"):
                stack.wait_ready(POOL, pool_size, timeout=600)
                run = _one_run(stack, 8, seconds, http=http)
                runs[http].append(run)
                cpu = ", ".join(f"{part} {used}" for part, used in run["cpu_ms_per_cycle"].items())
                print(f"load {os.getloadavg()[0]:4.1f} round {round_number} {http:6} {run['cycles_per_second']:5.0f} "
                      f"cycles/s, p99 {run['checkout_p99_ms']:6.2f} ms, cpu ms/cycle: {cpu}", flush=True)
    return {http: {"cycles_per_second": median([r["cycles_per_second"] for r in http_runs]),
                   "checkout_p99_ms": median([r["checkout_p99_ms"] for r in http_runs]),
                   "cpu_ms_per_cycle": {part: median([r["cpu_ms_per_cycle"][part] for r in http_runs])
                                        for part in http_runs[0]["cpu_ms_per_cycle"]}}
            for http, http_runs in runs.items()}


if __name__ == "__main__":
    import argparse
    import os

    parser = argparse.ArgumentParser(description="checkout + delete cycles/s at one concurrency level (JSON)")
    parser.add_argument("--clients", type=int, default=None, help="default 8")
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--pool", type=int, default=None, help="its size (default 6,000)")
    parser.add_argument("--workers", type=int, default=None, help="local.run --workers (default: its own)")
    parser.add_argument("--task-limit", type=int, default=None,
                        help="the config's task_limit (default: dummy_config's, no limit in practice)")
    parser.add_argument("--small-pool", action="store_true",
                        help=(f"small_pool()'s figure: {SMALL_SIZE} VMs, task_limit {SMALL_TASK_LIMIT}, "
                              f"{SMALL_CLIENTS} clients (unless --pool, --task-limit, --clients say otherwise)"))
    parser.add_argument("--http", choices=("lean", "stdlib"), default="lean",
                        help="the clients' HTTP: bench.http_client (default) or http.client")
    parser.add_argument("--compare-http", action="store_true",
                        help="alternate windows of both clients on one stack (--runs rounds)")
    options = parser.parse_args()
    preset = ({"pool": SMALL_SIZE, "task_limit": SMALL_TASK_LIMIT, "clients": SMALL_CLIENTS}
              if options.small_pool else {})
    for name, default in (("pool", 6000), ("clients", 8)):
        if getattr(options, name) is None:
            setattr(options, name, preset.get(name, default))
    if options.task_limit is None:
        options.task_limit = preset.get("task_limit")
    if options.compare_http:
        medians = compare_clients(options.runs, options.seconds, options.pool)
        print(json.dumps({**medians, "load_average": os.getloadavg()}))
        raise SystemExit(0)
    figures = one_level(options.clients, options.seconds, options.runs, options.pool, options.workers, options.http,
                        options.task_limit)
    print(json.dumps({**figures, "load_average": os.getloadavg()}))
