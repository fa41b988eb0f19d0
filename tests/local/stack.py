"""Start `python -m local.run` the way a developer does, on free ports with a state directory of
its own, and read what it left behind (its processes, its log)."""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
import re
import resource
import signal
import socket
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from local.processes import on_a_free_port, stops_with_this_process
from local.processes import process_alive as alive
from tests.support import eventually, free_port

REPO_ROOT = Path(__file__).resolve().parents[2]


@dataclass
class RunningStack:
    process: subprocess.Popen[bytes]
    port: int
    redis_port: int
    log_path: Path
    state_dir: Path

    @property
    def api(self) -> str:
        return f"http://127.0.0.1:{self.port}/api/v3"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def stack_command(port: int, workers: int, interval: float) -> list[str]:
    return [sys.executable, "-m", "local.run", "--port", str(port), "--workers", str(workers),
            "--interval", str(interval)]


def stack_env(config_file: Path, state_dir: Path) -> dict[str, str]:
    """The environment of a test's stack: its config and state directory, and it stops when the
    test process dies (``stops_with_this_process``), so a SIGKILLed pytest leaves no stack behind."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("VMPOOL_")}
    env.update(VMPOOL_CONFIG_FILE=str(config_file), POWERTOOLS_LOG_LEVEL="WARNING",
               VMPOOL_STATE_DIR=str(state_dir))
    return stops_with_this_process(env)


@contextlib.contextmanager
def local_stack(tmp_path: Path, config: str, workers: int = 2, interval: float = 30.0,
                name: str = "stack", env: dict[str, str] | None = None,
                state_dir: Path | None = None, sigint_ignored: bool = False,
                extra_args: list[str] | None = None) -> Iterator[RunningStack]:
    """A running local stack; Ctrl-C (SIGINT to its process group) stops it on the way out.
    ``sigint_ignored``: started as a script's background job is, with SIGINT ignored."""
    config_file = tmp_path / f"{name}.yaml"
    config_file.write_text(config)
    state_dir = state_dir or tmp_path / f"{name}-state"
    log_path = tmp_path / f"{name}.log"

    def start(port: int) -> tuple[subprocess.Popen[bytes], re.Match[str]]:
        with log_path.open("wb") as log:
            process = subprocess.Popen(stack_command(port, workers, interval) + (extra_args or []), cwd=REPO_ROOT,
                                       env={**stack_env(config_file, state_dir), **(env or {})}, stdout=log,
                                       stderr=subprocess.STDOUT, start_new_session=True,
                                       preexec_fn=_ignore_sigint if sigint_ignored else None)
        try:
            return process, _banner(process, log_path)
        except AssertionError:
            stop(process)
            raise

    port, (process, banner) = on_a_free_port(
        lambda: free_port(), start, lambda port: f"port {port} is in use" in log_path.read_text(errors="replace"))
    try:
        yield RunningStack(process, port, int(banner.group(1)), log_path, state_dir)
    finally:
        stop(process)


def _banner(process: subprocess.Popen[bytes], log_path: Path) -> re.Match[str]:
    """The line a stack prints once it serves (its Redis port in it); AssertionError if it exits
    first or has not printed it within 30 s."""
    def started() -> re.Match[str] | None:
        if process.poll() is not None:
            raise AssertionError(f"the stack exited ({process.returncode}):\n{log_path.read_text()}")
        return re.search(r"redis on port (\d+)", log_path.read_text())

    return wait_for(started, 30, "the stack to start", lambda: log_path.read_text())


def _ignore_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def stop(process: subprocess.Popen[bytes]) -> int:
    """Ctrl-C for the whole foreground process group; SIGKILL if it has not stopped in 20 s."""
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGINT)
    try:
        return process.wait(20)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        raise


def wait_for(condition: Callable[[], Any], timeout: float, what: str,
             details: Callable[[], str] = lambda: "") -> Any:
    """``tests.support.eventually`` for a stack that may not answer yet; on a timeout the
    failure also shows ``details()`` (the stack's log)."""
    try:
        return eventually(condition, timeout, what, ignoring=(urllib.error.URLError, ConnectionError, OSError))
    except AssertionError as error:
        raise AssertionError(f"{error}\n{details()}") from None


def call(method: str, url: str, body: Any = None, headers: dict[str, str] | None = None,
         timeout: float = 10) -> tuple[int, Any]:
    """One HTTP request; the status and the JSON answer."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def descendants(pid: int) -> set[int]:
    """Every process below ``pid``, read from /proc."""
    parents = process_parents()
    found: set[int] = set()
    frontier = {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def process_parents() -> dict[int, int]:
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    return parents


def group_members(pgid: int) -> set[int]:
    """The live processes of process group ``pgid`` (``alive``), read from /proc."""
    members: set[int] = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) == pgid and alive(int(entry.name)):
                members.add(int(entry.name))
    return members


def read_answer(connection: socket.socket) -> bytes:
    """One whole answer (head and Content-Length body) from a kept-alive connection."""
    received = b""
    while b"\r\n\r\n" not in received:
        chunk = connection.recv(65536)
        assert chunk, f"closed before a whole answer: {received!r}"
        received += chunk
    head, _, body = received.partition(b"\r\n\r\n")
    length = int(next(line.split(b":", 1)[1] for line in head.split(b"\r\n")
                      if line.lower().startswith(b"content-length:")))
    while len(body) < length:
        chunk = connection.recv(65536)
        assert chunk, f"closed inside the body: {received!r}"
        body += chunk
    return head + b"\r\n\r\n" + body


@contextlib.contextmanager
def http_front(load_app: Callable[[], Any], open_files: int | None = None, **options: Any) -> Iterator[int]:
    """``local.http_front.HttpFront`` with one worker, serving ``load_app()`` in a forked process
    on a free port (yielded) until the block ends; ``open_files``: the process's limit of open
    descriptors (soft and hard), as ``ulimit -n`` would set it. Its log (gunicorn's, on stderr)
    is read to see whether it refused a port taken meanwhile, and is copied to the test's
    stderr at the end."""
    from local.gunicorn_front import HttpFront

    context = multiprocessing.get_context("fork")
    with tempfile.TemporaryDirectory(prefix="vmpool-front-") as workdir:
        log_path = Path(workdir) / "front.log"
        log_path.touch()

        def refused(port: int) -> bool:
            """gunicorn's worker could not bind ``port``: something else listens on it. (It tries
            again for 5 s, then the arbiter starts another worker that tries again: not waited for.)"""
            return f"Connection in use: ('127.0.0.1', {port})" in log_path.read_text(errors="replace")

        def start(port: int) -> multiprocessing.process.BaseProcess:
            ready = context.Semaphore(0)

            def serve() -> None:
                with log_path.open("ab") as log:
                    os.dup2(log.fileno(), sys.stderr.fileno())
                if open_files is not None:
                    resource.setrlimit(resource.RLIMIT_NOFILE, (open_files, open_files))
                HttpFront(load_app, "127.0.0.1", port, workers=1, on_worker_ready=ready.release, **options).run()

            server = context.Process(target=serve)
            server.start()

            def started() -> bool:
                if server.exitcode is not None or refused(port):
                    raise AssertionError(f"the HTTP front exited or refused its port ({server.exitcode}):\n"
                                         f"{log_path.read_text()}")
                return ready.acquire(timeout=0.1)

            try:
                wait_for(started, 30, "the HTTP front to start", log_path.read_text)
            except AssertionError:
                _stop_front(server)
                raise
            return server

        port, server = on_a_free_port(lambda: free_port(), start, refused)  # free_port: patched in tests
        try:
            yield port
        finally:
            _stop_front(server)
            sys.stderr.write(log_path.read_text(errors="replace"))


def _stop_front(server: multiprocessing.process.BaseProcess) -> None:
    server.terminate()
    server.join(timeout=15)
