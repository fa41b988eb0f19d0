"""`make bench`: run every benchmark, write bench/results.json and print a short table.

    python bench/run.py [--quick] [--only NAME,...]
        (NAME: checkout, reconcile, refill, fill, memory, coldstart, fleet, sizing, feeds, quota, reserve,
        dashboards, dns)

Targets (issue 7), on this machine: >= 1,500 checkout+delete cycles/s at 8 clients, checkout
p99 < 5 ms, one Redis round trip per checkout, refill start < 1 s p50, a steady pool's pass in
O(1) Redis round trips and provider calls; demand sizing (issue 15) beats the best fixed pool size
on replayed CI traces. docs/performance.md explains the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any, Callable

if __package__ in (None, ""):  # `python bench/run.py`: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# The app's logs would drown the table; metrics go nowhere locally.
os.environ.setdefault("POWERTOOLS_LOG_LEVEL", "WARNING")
os.environ.setdefault("POWERTOOLS_METRICS_DISABLED", "true")

from bench import (
    checkout,
    coldstart,
    dashboards,
    dns_records,
    feeds,
    fill,
    fleet,
    memory,
    quota,
    reconcile,
    refill,
    reserve,
    sizing,
)
from bench.common import CORES, ROOT

BENCHMARKS: dict[str, Callable[[bool], dict[str, Any]]] = {
    "checkout": checkout.run,
    "reconcile": reconcile.run,
    "refill": refill.run,
    "fill": fill.run,
    "memory": memory.run,
    "coldstart": coldstart.run,
    "fleet": fleet.run,
    "sizing": sizing.run,
    "feeds": feeds.run,
    "quota": quota.run,
    "reserve": reserve.run,
    "dashboards": dashboards.run,
    "dns": dns_records.run,
}
RESULTS = ROOT / "bench" / "results.json"


def _refusing_row(label: str, run: dict[str, Any]) -> tuple[str, str]:
    """A run on a pool that may run dry: cycles/s, checkout latency, checkouts refused."""
    refused = sum(count for name, count in run["failures"].items() if name.startswith("checkout"))
    return (label, (f"{run['cycles_per_second']:7.0f} cycles/s  checkout p50 {run['checkout_p50_ms']} ms"
                    f" p99 {run['checkout_p99_ms']} ms  ({refused} checkouts refused: pool empty)"))


def table(results: dict[str, Any]) -> list[str]:
    """The headline figures, one per line, each with the machine's core count."""
    cores = f"[{CORES} cores]"
    rows: list[tuple[str, str]] = []
    if "checkout" in results:
        c = results["checkout"]
        for clients, level in c["levels"].items():
            rows.append((f"checkout {clients:>2} clients",
                         (f"{level['cycles_per_second']:7.0f} cycles/s  checkout p50 {level['checkout_p50_ms']} ms"
                          f" p99 {level['checkout_p99_ms']} ms  delete p50 {level['delete_p50_ms']} ms"
                          f" p99 {level['delete_p99_ms']} ms"
                          f"  {level['redis_commands_per_checkout']} redis cmds/cycle")))
            rows.append(("  with its refill", (f"{level['sustained_cycles_per_second']:7.0f} cycles/s  (owed "
                                               f"{level['refill_owed']:.0f} ready VMs at the end, caught up in "
                                               f"{level['catch_up_seconds']} s)")))
            cpu = ", ".join(f"{part} {used}" for part, used in level["cpu_ms_per_cycle"].items())
            rows.append(("  cpu ms/cycle", cpu))
            cpu = ", ".join(f"{part} {used}" for part, used in level["cpu_ms_per_cycle_with_refill"].items())
            rows.append(("  with its refill", cpu))
        small, steady = c.get("small_pool"), c.get("sustained")
        if small:
            rows.append(_refusing_row(f"checkout  8 clients, pool of {small['pool_size']}", small))
        if steady:
            rows.append(_refusing_row(f"checkout  8 clients, pool of {steady['pool_size']}, {steady['seconds']:g} s",
                                      steady))
        trips = c["round_trips_per_call"]
        rows.append(("redis round trips", f"checkout {trips['checkout']:g}, delete {trips['delete']:g}"))
        client = ("bench/http_client.py, keep-alive" if c.get("http_client") == "lean"
                  else "http.client, keep-alive")
        rows.append(("checkout clients' HTTP", client))
    if "reconcile" in results:
        r = results["reconcile"]
        pools = r["dummy_100x50"]
        for phase in ("fill", "ready", "steady", "churn"):
            p = pools[phase]
            rows.append((f"reconcile {pools['pools']}x{pools['size']} {phase}",
                         (f"{p['seconds']:.2f} s ({p['per_pool_ms']} ms/pool)"
                          f"  {p['redis_round_trips']:g} redis round trips  {p['provider_calls']:g} provider calls")))
        idle = r["idle_invocation"]
        rows.append((f"idle run_pool, pool of {idle['size']}",
                     (f"{idle['seconds'] * 1000:.1f} ms"
                      f"  {idle['redis_round_trips']:g} redis round trips (incl. dummy provider)")))
        for returned, p in r.get("refill_20", {}).items():
            rows.append((f"refill, pool of 20, {returned} returned",
                         (f"{p['redis_round_trips']:g} redis round trips in {len(p['passes'])} passes"
                          f" {p['passes']} (incl. dummy provider), {p['per_replaced_vm']:g} per replaced VM")))
        for size, p in r["steady_by_pool_size"].items():
            rows.append((f"steady pass, pool of {size}",
                         (f"{p['seconds'] * 1000:.1f} ms ({p['without_inventory_seconds'] * 1000:.1f} ms without"
                          f" the provider's inventory)  {p['redis_round_trips']:g} redis round trips"
                          f"  {p['provider_calls']:g} provider calls")))
            for label, key in (("whole inventory, every vm_checktime", "whole_inventory"),
                               ("churn: 10 checked out", "churn_10")):
                if key in p:
                    q = p[key]
                    rows.append((f"  {label}",
                                 (f"{q['seconds'] * 1000:.1f} ms ({q['without_inventory_seconds'] * 1000:.1f} ms"
                                  f" without the provider's)  {q['redis_round_trips']:g} redis round trips"
                                  f"  {q['provider_calls']:g} provider calls")))
        v = r["vcsim"]
        if "skipped" in v:
            rows.append(("reconcile vcsim", "skipped: " + v["skipped"]))
        else:
            for phase in ("fill", "until_ready", "steady"):
                p = v[phase]
                rows.append((f"vcsim {v['size']} VMs {phase}",
                             (f"{p['seconds']:.2f} s  {p['redis_round_trips']:g} redis round trips"
                              f"  {p['provider_calls']:g} SOAP calls")))
    if "refill" in results:
        f = results["refill"]
        rows.append(("refill start", f"p50 {f['p50_ms']} ms  p99 {f['p99_ms']} ms  ({f['samples']} checkouts)"))
    if "fill" in results:
        f = results["fill"]
        r = f["refill"]
        rows.append((f"fill {f['size']} VMs from empty", f"{f['fill_seconds']} s (task_limit 10, instant clones)"))
        rows.append((f"refill {r['checked_out_and_returned']} returned VMs",
                     (f"{r['seconds_to_full']} s; meanwhile a 20-VM pool served {r['small_pool_served']}"
                      f" / refused {r['small_pool_refused']} checkouts ({r['small_pool_success']:.0%})")))
        slow = f.get("slow_clones")
        if slow:
            rows.append((f"fill {slow['size']} VMs, {slow['clone_seconds']:g} s clones",
                         (f"{slow['fill_seconds']} s: {slow['vms_per_second']} VMs/s, {slow['of_ideal']:.0%} of"
                          f" task_limit / clone time ({slow['ideal_vms_per_second']:g} VMs/s)")))
    if "memory" in results:
        m = results["memory"]
        shapes = ((f"memory, pool of {m['pool_size']}", m), ("  with one HTTP worker", m.get("one_worker")),
                  ("  in one process (WORKERS=0)", m.get("one_process")))
        for label, figures in shapes:
            if figures:
                each = " + ".join(f"{rss:g}" for part, entry in figures["parts"].items() if part != "redis-server"
                                  for rss, _ in entry.get("each_mb", []))
                checkout = figures.get("checkout")
                cycles = (f"; {checkout['cycles_per_second']} cycles/s at {checkout['clients']} clients"
                          if checkout else "")
                rows.append((label, (f"service RSS {figures['service_rss_mb']} MB ({each}; PSS "
                                     f"{figures['service_pss_mb']} MB, shared pages once); vmpooler 93 MB{cycles}")))
        rows.append(("  redis-server (not counted)", f"{m['parts'].get('redis-server', {}).get('rss_mb', 0)} MB"))
    if "coldstart" in results:
        s = results["coldstart"]
        if "skipped" in s:
            rows.append(("cold start", "skipped: " + s["skipped"]))
        else:
            labels = {"api": "cold import app (API)", "api_traced": "  with tracing (prod)",
                      "reconcile_first_use": "  + tick/consumer's first run",
                      "vsphere_first_use": "  + first vSphere use"}
            for name, label in labels.items():
                c = s[name]
                rows.append((f"{label}", (f"{c['cpu_ms']} ms CPU, python {s['python']}, median of {s['runs']}"
                                          f" ({c['cpu_ms_min']}-{c['cpu_ms_max']})")))
            rows.append(("deployment.zip", f"{s['deployment_zip_bytes'] / 1e6:.2f} MB"))
    if "sizing" in results:
        rows += sizing.table(results["sizing"])
    if "feeds" in results:
        rows += feeds.table(results["feeds"])
    if "quota" in results:
        rows += quota.table(results["quota"])
    if "reserve" in results:
        rows += reserve.table(results["reserve"])
    if "dns" in results:
        rows += dns_records.table(results["dns"])
    width = max(len(name) for name, _ in rows) if rows else 0
    return [f"{name:<{width}}  {value}  {cores}" for name, value in rows]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="short runs and smaller pools (a smoke test)")
    parser.add_argument("--only", default=",".join(BENCHMARKS), help="comma-separated benchmarks to run")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    chosen = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = set(chosen) - set(BENCHMARKS)
    if unknown:
        parser.error(f"unknown benchmarks: {', '.join(sorted(unknown))}; choose from {', '.join(BENCHMARKS)}")
    results: dict[str, Any] = {
        "machine": {"cores": CORES, "python": platform.python_version(), "platform": platform.platform(),
                    "load_average_before": os.getloadavg()},
        "quick": args.quick,
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    for name in chosen:
        began = time.monotonic()
        print(f"bench: {name}...", file=sys.stderr, flush=True)
        results[name] = BENCHMARKS[name](args.quick)
        results[name]["bench_seconds"] = round(time.monotonic() - began, 1)
    results["machine"]["load_average_after"] = os.getloadavg()
    args.output.write_text(json.dumps(results, indent=2) + "\n")
    load = results["machine"]["load_average_before"][0]
    load_after = results["machine"]["load_average_after"][0]
    print(f"vmpool bench on {CORES} cores, load average {load:.2f} at start, {load_after:.2f} at the end"
          + (" (busy machine: timings are inflated)" if max(load, load_after) > CORES / 2 else ""))
    print("\n".join(table(results)))
    print(f"(details: {args.output})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
