"""What every benchmark shares: statistics, a Redis round-trip counter, and the local stack.

Figures are medians of several runs; latencies are reported as p50/p99 over every call of a run.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

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


def stack_cpu(pid: int) -> dict[str, float]:
    """CPU seconds used so far by the local stack, by part: its main process (the reconcile
    scheduler's threads), its HTTP workers, and its redis-server."""
    usage = {"reconcile (scheduler)": _cpu_seconds(pid), "api workers": 0.0, "redis-server": 0.0}
    for child in _children(pid):
        try:
            command = Path(f"/proc/{child}/cmdline").read_bytes()
            part = "redis-server" if b"redis-server" in command else "api workers"
            usage[part] += _cpu_seconds(child)
        except OSError:
            continue  # exited meanwhile
    return usage


# --- the local stack --------------------------------------------------------------------------


@dataclass
class Stack:
    """A running ``python -m local.run`` (HTTP workers, its own redis-server, the scheduler)."""

    process: subprocess.Popen[str]
    port: int
    redis_port: int

    @property
    def redis(self) -> redis.Redis:
        return redis.Redis(port=self.redis_port, decode_responses=True)

    def wait_ready(self, pool: str, count: int, timeout: float) -> float:
        """Wait until ``pool`` has ``count`` ready VMs; return the seconds it took."""
        client = self.redis
        started = time.monotonic()
        while True:
            ready = client.zcard(f"vmpool:pool:{pool}:ready")
            if ready >= count:
                return time.monotonic() - started
            if time.monotonic() - started > timeout:
                raise RuntimeError(f"pool {pool}: {ready} of {count} ready after {timeout:.0f} s")
            if self.process.poll() is not None:
                raise RuntimeError("the local stack exited")
            time.sleep(0.2)


def free_port() -> int:
    from local.redis_server import free_port as pick

    return pick()


@contextlib.contextmanager
def local_stack(config_yaml: str, workers: int | None = None, interval: float = 10.0,
                env: dict[str, str] | None = None) -> Iterator[Stack]:
    """Start the local stack on free ports with ``config_yaml``; stop it (SIGINT) on exit."""
    workdir = Path(tempfile.mkdtemp(prefix="vmpool-bench-"))
    config_file = workdir / "vmpool.yaml"
    config_file.write_text(config_yaml)
    port, redis_port = free_port(), free_port()
    # local.run keeps its Redis data under .run/ (shared with `make run`); a bench stack gets a
    # state directory of its own so it neither loads nor overwrites anyone's data.
    launcher = ("import sys; from pathlib import Path; import local.run as run; "
                f"run.STATE_DIR = Path({str(workdir)!r}); sys.exit(run.main(sys.argv[1:]))")
    command = [sys.executable, "-c", launcher, "--port", str(port), "--config", str(config_file),
               "--redis-port", str(redis_port), "--interval", str(interval)]
    if workers:
        command += ["--workers", str(workers)]
    environment = {**os.environ, "POWERTOOLS_LOG_LEVEL": "WARNING", **(env or {})}
    log = (workdir / "stderr.log").open("w")
    process = subprocess.Popen(command, cwd=ROOT, env=environment, stdout=subprocess.PIPE,
                               stderr=log, text=True)
    try:
        assert process.stdout is not None
        deadline = time.monotonic() + 60
        for line in process.stdout:
            found = re.search(r"redis on port (\d+)", line)
            if found:
                redis_port = int(found.group(1))
                break
            if time.monotonic() > deadline:
                raise RuntimeError("the local stack did not start")
        else:
            tail = (workdir / "stderr.log").read_text()[-2000:]
            raise RuntimeError(f"the local stack exited before serving: {tail}")
        # Keep draining its output so it never blocks on a full pipe.
        threading.Thread(target=lambda: [None for _ in process.stdout], daemon=True).start()  # type: ignore[union-attr]
        yield Stack(process, port, redis_port)
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        log.close()
        shutil.rmtree(workdir, ignore_errors=True)


def dummy_config(pools: Sequence[tuple[str, int]], task_limit: int = 100_000,
                 clone_seconds: float = 0, boot_seconds: float = 0, check_loop_delay: float = 1) -> str:
    """A config of dummy pools (name, size) whose clones take ``clone_seconds`` and boot in
    ``boot_seconds``; a long ready_ttl and vm_lifetime so nothing expires during a run."""
    lines = [
        ":config:",
        f"  task_limit: {task_limit}",
        f"  check_loop_delay_min: {check_loop_delay}",
        "  vm_lifetime: 12",
        "  domain: example.com",
        ":providers:",
        "  :dummy:",
        f"    createvm_max_time: {clone_seconds}",
        f"    boot_time: {boot_seconds}",
        ":pools:",
    ]
    for name, size in pools:
        lines += [f"  - name: {name}", f"    size: {size}", "    provider: dummy",
                  "    ready_ttl: 100000", "    timeout: 100000"]
    return "\n".join(lines) + "\n"
