"""The local stack (``python -m local.run``) as a child process on free ports, for the
benchmarks and the fuzz tests, and configs of dummy pools for it.

    with local_stack(dummy_config([("pool", 4)])) as stack:
        stack.wait_ready("pool", 4, timeout=60)
        ...  # HTTP on stack.port, its Redis on stack.redis_port
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import redis

from chalicelib.store.keys import Keys
from local.processes import on_a_free_port, stops_with_this_process
from local.redis_server import free_port

ROOT = Path(__file__).resolve().parents[1]


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
            ready = client.zcard(Keys().pool_state(pool, "ready"))
            if ready >= count:
                return time.monotonic() - started
            if time.monotonic() - started > timeout:
                raise RuntimeError(f"pool {pool}: {ready} of {count} ready after {timeout:.0f} s")
            if self.process.poll() is not None:
                raise RuntimeError("the local stack exited")
            time.sleep(0.2)


@contextlib.contextmanager
def local_stack(config_yaml: str, workers: int | None = None, interval: float | None = 10.0,
                env: dict[str, str] | None = None) -> Iterator[Stack]:
    """Start the local stack on free ports with ``config_yaml``; stop it (SIGINT) on exit. Started
    again on another port if its own was taken before it bound it (``on_a_free_port``).
    ``interval``: the scheduler's tick (None: the stack's default, ``local.run``'s)."""
    workdir = Path(tempfile.mkdtemp(prefix="vmpool-bench-"))
    config_file = workdir / "vmpool.yaml"
    config_file.write_text(config_yaml)
    log_path = workdir / "stderr.log"

    def start(port: int) -> tuple[subprocess.Popen[str], int]:
        # local.run keeps its Redis data under .run/ (shared with `make run`); a bench stack gets
        # a state directory of its own so it neither loads nor overwrites anyone's data. Its Redis
        # on a free port it picks itself (and picks again if that one is taken meanwhile).
        launcher = ("import sys; from pathlib import Path; import local.run as run; "
                    f"run.STATE_DIR = Path({str(workdir)!r}); sys.exit(run.main(sys.argv[1:]))")
        command = [sys.executable, "-c", launcher, "--port", str(port), "--config", str(config_file)]
        if interval is not None:
            command += ["--interval", str(interval)]
        if workers is not None:  # 0: one process, the HTTP front beside the scheduler
            command += ["--workers", str(workers)]
        # It stops when this process dies, even SIGKILLed: no stack left serving after a killed run.
        environment = stops_with_this_process({**os.environ, "POWERTOOLS_LOG_LEVEL": "WARNING", **(env or {})})
        with log_path.open("w") as log:
            process = subprocess.Popen(command, cwd=ROOT, env=environment, stdout=subprocess.PIPE,
                                       stderr=log, text=True)
        try:
            redis_port = _banner(process)
        except RuntimeError:
            _stop(process)
            raise
        if redis_port is None:
            raise RuntimeError(f"the local stack exited before serving: {log_path.read_text()[-2000:]}")
        return process, redis_port

    process: subprocess.Popen[str] | None = None
    try:
        port, (process, redis_port) = on_a_free_port(
            lambda: free_port(), start, lambda port: f"port {port} is in use" in log_path.read_text())
        # Keep draining its output so it never blocks on a full pipe.
        threading.Thread(target=lambda: [None for _ in process.stdout], daemon=True).start()  # type: ignore[union-attr]
        yield Stack(process, port, redis_port)
    finally:
        if process is not None:
            _stop(process)
        shutil.rmtree(workdir, ignore_errors=True)


def _stop(process: subprocess.Popen[str]) -> None:
    """SIGINT (Ctrl-C); SIGKILL if it has not stopped within 30 s."""
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _banner(process: subprocess.Popen[str]) -> int | None:
    """The port of the stack's Redis, from the line it prints once it serves; None if it exits
    before. RuntimeError if it has printed nothing such within 60 s."""
    assert process.stdout is not None
    deadline = time.monotonic() + 60
    for line in process.stdout:
        found = re.search(r"redis on port (\d+)", line)
        if found:
            return int(found.group(1))
        if time.monotonic() > deadline:
            raise RuntimeError("the local stack did not start")
    process.stdout.close()
    process.wait()
    return None


def dummy_config(pools: Sequence[tuple[str, int]], task_limit: int = 100_000,
                 clone_seconds: float = 0, boot_seconds: float = 0, check_loop_delay: float = 1) -> str:
    """A config of dummy pools (name, size) whose clones take ``clone_seconds`` and boot in
    ``boot_seconds``; a long ready_ttl and vm_lifetime so nothing expires during a run, and no
    per-owner quota (every load client calls from the same address)."""
    lines = [
        ":config:",
        f"  task_limit: {task_limit}",
        f"  check_loop_delay_min: {check_loop_delay}",
        "  vm_lifetime: 12",
        "  domain: example.com",
        "  max_running_vms_per_user: 1000000",
        ":providers:",
        "  :dummy:",
        f"    createvm_max_time: {clone_seconds}",
        f"    createvm_min_time: {clone_seconds}",
        f"    boot_time: {boot_seconds}",
        ":pools:",
    ]
    for name, size in pools:
        lines += [f"  - name: {name}", f"    size: {size}", "    provider: dummy",
                  "    ready_ttl: 100000", "    timeout: 100000"]
    return "\n".join(lines) + "\n"
