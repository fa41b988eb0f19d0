"""Replay of checkout traces against pool sizing: demand sizing versus the best fixed size.

    python bench/sizing.py            (or `make bench`, section "sizing")

The simulator and the traces are in tools/sizing_replay/ (the tests use them too).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # `python bench/sizing.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tools.sizing_replay.simulator import compare, scenarios


def run(quick: bool = False) -> dict[str, Any]:
    """The bench section: every shipped scenario (quick: the first one only)."""
    began = time.monotonic()
    chosen = scenarios()[:1] if quick else scenarios()
    results = {scenario.trace.name: compare(scenario) for scenario in chosen}
    return {"scenarios": results, "seconds": round(time.monotonic() - began, 1)}


def table(results: dict[str, Any]) -> list[tuple[str, str]]:
    rows = []
    for name, r in results["scenarios"].items():
        d, b, s = r["demand_sizing"], r["best_fixed"], r["same_idle_fixed"]
        verdict = "PASS" if r["passed"] else "FAIL"
        rows.append((f"sizing {name} (lead {r['lead_minutes']} min)",
                     (f"demand: {d['misses']} misses {d['idle_vm_hours']} idle VM-h | best fixed {b['size']}:"
                      f" {b['misses']} misses {b['idle_vm_hours']} VM-h (-{r['idle_saving_percent']}% idle)"
                      f" | fixed {s['size']} (same idle): {s['misses']} misses | {verdict}")))
    return rows


if __name__ == "__main__":
    outcome = run("--quick" in sys.argv)
    for label, value in table(outcome):
        print(f"{label:<40} {value}")
    print(f"({outcome['seconds']} s)")
