"""What every benchmark shares: statistics, a Redis round-trip counter, and the local stack.

Figures are medians of several runs; latencies are reported as p50/p99 over every call of a run.
"""

from __future__ import annotations

import os
import statistics
import threading
from pathlib import Path
from typing import Any, Callable, Sequence

import redis
import redis.connection

ROOT = Path(__file__).resolve().parents[1]
CORES = os.cpu_count() or 1


def percentile(values: Sequence[float], fraction: float) -> float:
    """The nearest-rank percentile (``fraction`` in 0..1) of ``values``; 0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(fraction * len(ordered) + 0.5) - 1))
    return ordered[index]


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else 0.0


def ms(seconds: float) -> float:
    """Seconds as milliseconds, rounded for the table and results.json."""
    return round(seconds * 1000, 2)


# --- Redis round trips ------------------------------------------------------------------------


class RoundTrips:
    """Counts Redis round trips made by this process: one per command written to a connection
    (a pipeline or MULTI block is written in one go and counts once). Thread-safe enough for
    counting: the GIL serialises the increments of one ``+=`` per call site here."""

    def __init__(self) -> None:
        self.count = 0
        self._original: Callable[..., None] | None = None
        self._lock = threading.Lock()

    def __enter__(self) -> "RoundTrips":
        original = redis.connection.AbstractConnection.send_packed_command
        self._original = original
        counter = self

        def counting(connection: object, command: object, check_health: bool = True) -> None:
            with counter._lock:
                counter.count += 1
            original(connection, command, check_health)

        redis.connection.AbstractConnection.send_packed_command = counting  # type: ignore[method-assign]
        return self

    def __exit__(self, *exc: object) -> None:
        redis.connection.AbstractConnection.send_packed_command = self._original  # type: ignore[method-assign]

    def take(self) -> int:
        """The count so far, then start again from zero."""
        with self._lock:
            count, self.count = self.count, 0
        return count


def command_stats(client: redis.Redis) -> dict[str, int]:
    """``INFO commandstats`` as command -> calls. Commands run inside Lua scripts count too."""
    info = client.info("commandstats")
    return {name.removeprefix("cmdstat_"): int(stats["calls"]) for name, stats in info.items()}


def command_delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    """Calls per command between two ``command_stats`` readings, without the readings themselves."""
    delta = {name: calls - before.get(name, 0) for name, calls in after.items()}
    delta["info"] = delta.get("info", 0) - 1
    return {name: calls for name, calls in sorted(delta.items()) if calls > 0}


# --- CPU accounting ---------------------------------------------------------------------------


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        text = (task / "children").read_text().split()
        found += [int(child) for child in text]
    return found


def _tree_cpu_seconds(pid: int) -> float:
    """CPU seconds of ``pid`` and every live process below it."""
    total = _cpu_seconds(pid)
    for child in _children(pid):
        try:
            total += _tree_cpu_seconds(child)
        except OSError:
            continue  # exited meanwhile
    return total


def stack_cpu(pid: int) -> dict[str, float]:
    """CPU seconds used so far by the local stack, by part: its main process (the reconcile
    scheduler's threads), its HTTP front (gunicorn's arbiter and workers), and its redis-server."""
    usage = {"reconcile (scheduler)": _cpu_seconds(pid), "api workers": 0.0, "redis-server": 0.0}
    for child in _children(pid):
        try:
            command = Path(f"/proc/{child}/cmdline").read_bytes()
            part = "redis-server" if b"redis-server" in command else "api workers"
            usage[part] += _tree_cpu_seconds(child)
        except OSError:
            continue  # exited meanwhile
    return usage


def _memory_kb(pid: int) -> tuple[int, int]:
    """A process's resident set and proportional set size (shared pages split among the
    processes sharing them: forked workers share most of theirs), in kB."""
    found = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("Rss", "Pss"):
            found[name] = int(value.split()[0])
    return found.get("Rss", 0), found.get("Pss", 0)


def stack_memory(pid: int) -> dict[str, dict[str, float]]:
    """Memory of the local stack in MB, by part (see ``stack_cpu``): RSS summed over the part's
    processes, and PSS (which counts pages the forked workers share once), and each process's
    [RSS, PSS] (``each_mb``). Every process of the tree counts: the HTTP front is gunicorn's
    arbiter and, below it, its workers."""
    parts: dict[str, dict[str, Any]] = {}

    def add(part: str, process: int) -> None:
        rss, pss = _memory_kb(process)
        entry = parts.setdefault(part, {"processes": 0, "rss_mb": 0.0, "pss_mb": 0.0, "each_mb": []})
        entry["processes"] += 1
        entry["rss_mb"] = round(entry["rss_mb"] + rss / 1024, 1)
        entry["pss_mb"] = round(entry["pss_mb"] + pss / 1024, 1)
        entry["each_mb"].append([round(rss / 1024, 1), round(pss / 1024, 1)])

    def add_tree(part: str, process: int) -> None:
        add(part, process)
        for child in _children(process):
            add_tree(part, child)

    add("reconcile (scheduler)", pid)
    for child in _children(pid):
        try:
            command = Path(f"/proc/{child}/cmdline").read_bytes()
            add_tree("redis-server" if b"redis-server" in command else "api workers", child)
        except OSError:
            continue
    return parts
