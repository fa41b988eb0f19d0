"""`make run`: the whole service on this machine.

Starts a private redis-server (its own port and data dir) and serves the Chalice app on
http://127.0.0.1:$PORT with gunicorn and uvicorn (``local.http_front``): this process becomes
gunicorn's arbiter, which forks the HTTP workers (one per core, each running a few event loops on
their own threads, each loop serving one request at a time) and replaces one that dies. One of
the workers also runs every pool's reconcile on a timer (``local.scheduler``); if it dies,
another takes over. Ctrl-C stops all of it; so does killing this process (its children
die with it). One stack per state directory: a second one on the same directory refuses to start.

Why this layout (docs/performance.md, "Memory (item 6)"): every Python process costs its
interpreter and its imports (a forked one counts the pages it shares with its parent too), so
the stack has no process beside the workers but the arbiter, and the arbiter never imports the
app (it checks the config in a child that exits).

    python -m local.run [--port 8000] [--workers N] [--threads N] [--config FILE] [--provider dummy|vcsim]

With ``--provider vcsim`` it also starts our vCenter simulator (tools/vcsim) and serves pools of
real (simulated) vSphere clones instead of the dummy provider's.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import functools
import os
import subprocess
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from gunicorn.arbiter import Arbiter
from gunicorn.errors import HaltServer

from local.http_front import CLIENT_TIMEOUT_SECONDS, HttpFront
from local.redis_server import RedisServer

if TYPE_CHECKING:
    from local.gateway import AsgiApp
    from local.scheduler import LocalScheduler

ROOT = Path(__file__).resolve().parents[1]
STATE_DIR = Path(os.environ.get("VMPOOL_STATE_DIR") or ROOT / ".run")
"""Where the local Redis keeps its data and vcsim its certificate (VMPOOL_STATE_DIR overrides)."""


LOCK_NAME = "run.lock"


def _lock_state_dir() -> int:
    """Hold an exclusive lock on the state directory for the life of this stack, or refuse.
    flock: the kernel releases it when the holder dies, so a SIGKILLed stack never blocks the
    next start (its children hold it until they have stopped too)."""
    STATE_DIR.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(STATE_DIR / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(descriptor, 32).decode(errors="replace").strip() or "?"
        os.close(descriptor)
        raise SystemExit(f"{STATE_DIR} is in use by another `make run` (pid {holder}): stop it first, "
                         "or give this one its own VMPOOL_STATE_DIR") from None
    os.ftruncate(descriptor, 0)
    os.write(descriptor, f"{os.getpid()}\n".encode())
    return descriptor


class _StackArbiter(Arbiter):
    """gunicorn's arbiter, which also prints the banner once each of the first workers serves
    (they say so on ``ready_pipe``), or stops the stack if they have not within
    ``start_timeout`` seconds."""

    def __init__(self, front: HttpFront, ready_pipe: int, banner: str, start_timeout: float = 30.0) -> None:
        super().__init__(front)
        self._ready_pipe = ready_pipe
        os.set_blocking(ready_pipe, False)
        self._starting = self.num_workers
        self._banner = banner
        self._start_deadline = time.monotonic() + start_timeout

    def wait_for_signals(self, timeout: float = 1.0) -> list[int]:
        if self._starting <= 0:
            return super().wait_for_signals(timeout)
        signals = super().wait_for_signals(min(timeout, 0.05))
        with contextlib.suppress(BlockingIOError):
            self._starting -= len(os.read(self._ready_pipe, 64))
        if self._starting <= 0:
            print(self._banner, flush=True)
        elif time.monotonic() > self._start_deadline:
            raise HaltServer(f"the HTTP workers did not start on port {self.cfg.address[0][1]}", 1)
        return signals


SCHEDULER_LOCK_NAME = "scheduler.lock"


class _SchedulerSeat:
    """The stack's one reconcile scheduler, run by whichever HTTP worker holds the seat: a lock
    on a file in the state directory, taken by the first worker to ask; the others wait for it,
    and when the holder's process ends (the arbiter replaces it) the kernel drops its lock and a
    waiting worker takes over. Why one and not one per worker, though runs take the pool's lease
    so two could run safely: a run that finds the lease taken nudges the holder on the pool's
    wake list, which every scheduler listens to, so two schedulers nudge each other round and
    round while a pass runs (measured: more CPU per checkout, fewer checkouts/s)."""

    def __init__(self, interval: float) -> None:
        self._interval = interval
        self._changing = threading.Lock()
        self._scheduler: LocalScheduler | None = None
        self._leaving = False

    def take_when_free(self) -> None:
        """Wait for the seat (a thread of its own), then run the scheduler in this worker."""
        import app as chalice_app
        from local.scheduler import LocalScheduler

        descriptor = os.open(STATE_DIR / SCHEDULER_LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(descriptor, fcntl.LOCK_EX)  # held until this process ends
        with self._changing:
            if not self._leaving:
                self._scheduler = LocalScheduler(chalice_app.services(), interval_seconds=self._interval)
                self._scheduler.start()

    def leave(self) -> None:
        """Stop the scheduler if this worker runs it (the process ends next, giving up the seat)."""
        with self._changing:
            self._leaving = True
            scheduler = self._scheduler
        if scheduler is not None:
            scheduler.stop()


_seat: _SchedulerSeat | None = None
"""This HTTP worker's claim on the scheduler (None in the arbiter)."""


def _load_app(threads: int) -> AsgiApp:
    """The app an HTTP worker serves, imported in the worker (the arbiter never imports it)."""
    import app as chalice_app
    from local.gateway import AsgiApp

    return AsgiApp(chalice_app.app, body_timeout=CLIENT_TIMEOUT_SECONDS, threads=threads)


def _worker_ready(interval: float, ready_pipe: int) -> None:
    """In an HTTP worker, once its app is loaded: claim the scheduler's seat (``_SchedulerSeat``),
    and tell the arbiter this worker serves."""
    global _seat
    _seat = _SchedulerSeat(interval)
    threading.Thread(target=_seat.take_when_free, name="scheduler-seat", daemon=True).start()
    os.write(ready_pipe, b".")


def _leave_worker(error: BaseException | None) -> NoReturn:
    """An HTTP worker is done (gunicorn's worker code ends it with SystemExit, which reaches
    here through the arbiter's stack it was forked from): stop its scheduler and exit now, so
    nothing of ``main``'s (stopping Redis) runs in the worker."""
    if _seat is not None:
        _seat.leave()
    code = error.code if isinstance(error, SystemExit) else 1
    if code is not None and not isinstance(code, int):
        print(code, file=sys.stderr)
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code or 0)


def _serve(port: int, workers: int, threads: int, interval: float, banner: str) -> None:
    """Become gunicorn's arbiter, forking the HTTP workers; return when it stops (it ends this
    process with SystemExit on Ctrl-C or SIGTERM, once its workers are gone)."""
    ready_read, ready_write = os.pipe()
    front = HttpFront(functools.partial(_load_app, threads), "127.0.0.1", port, workers,
                      on_worker_ready=functools.partial(_worker_ready, interval, ready_write))
    arbiter = _StackArbiter(front, ready_read, banner)
    arbiter_pid = os.getpid()
    try:
        arbiter.run()
    except BaseException as error:
        if os.getpid() != arbiter_pid:
            _leave_worker(error)
        raise
    if os.getpid() != arbiter_pid:
        _leave_worker(None)


VCSIM_CONFIG = """\
# Written by `make run PROVIDER=vcsim`: two pools of clones in the local vCenter simulator.
:config:
  domain: example.com
  vm_lifetime: 2
  create_folders: true
  check_loop_delay_min: 1
  experimental_features: true
:providers:
  :vsphere:
    provider_class: vsphere
    server: "{server}"
    username: {username}
    password: {password}
    ca_bundle: {ca_bundle}
    ready_check: tools
:pools:
  - name: debian-12-x86_64
    alias: [debian, linux]
    template: {template}
    folder: vmpool/debian-12-x86_64
    size: 3
    provider: vsphere
  - name: centos-9-x86_64
    alias: [centos, linux]
    template: {template}
    folder: vmpool/centos-9-x86_64
    size: 2
    provider: vsphere
"""


def _start_vcsim() -> tuple[subprocess.Popen[bytes], Path]:
    """Start the simulator (3 s boot delay) and write a config for it under .run/."""
    from urllib.parse import urlsplit

    from tools.vcsim import launcher

    cert = STATE_DIR / "vcsim.pem"
    process, url = launcher.start_vcsim(port=0, boot_delay=3.0, cert_path=cert)
    config_file = STATE_DIR / "vcsim.yaml"
    config_file.write_text(VCSIM_CONFIG.format(
        server=urlsplit(url).netloc, username=launcher.USERNAME, password=launcher.PASSWORD,
        ca_bundle=cert, template=launcher.TEMPLATE,
    ))
    print(f"vmpool: vcsim at {url}", flush=True)
    return process, config_file


def _require_free_port(port: int) -> None:
    """Workers share the port (SO_REUSEPORT), which would also let them share it with a stale
    stack still running; refuse to start in that case instead."""
    import socket

    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            raise SystemExit(f"port {port} is in use: is another `make run` still running?") from None


CHECKED_CONFIG_NAME = "config.json"


def _check_config() -> tuple[int, list[str]]:
    """Load and validate the config as the app does, in a child process (this one never imports
    the app), and write its canonical JSON into the state directory for the HTTP workers: they
    build it as the Lambdas do, without pydantic or PyYAML (7.6 MB a process). (0, the pool
    names), or (2, []) after printing what is wrong with the config (1 for any other failure)."""
    read, write = os.pipe()
    child = os.fork()  # this process has no other thread yet
    if child == 0:
        os.close(read)
        status, answer = 0, ""
        try:
            from chalicelib.config import ConfigError, canonical_json

            try:
                import app as chalice_app

                checked = os.open(STATE_DIR / CHECKED_CONFIG_NAME, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                with os.fdopen(checked, "w") as out:  # secrets in the clear, as in the YAML: 0600
                    out.write(canonical_json(chalice_app.CONFIG))
                answer = "\n".join(chalice_app.CONFIG.pool_names)
            except ConfigError as error:
                status, answer = 2, str(error)
        except BaseException:  # noqa: BLE001 - say why, and the stack refuses to start
            traceback.print_exc()
            status = 1
        with os.fdopen(write, "wb") as out:
            out.write(answer.encode())
        sys.stderr.flush()
        os._exit(status)
    os.close(write)
    with os.fdopen(read, "rb") as answer_pipe:
        answer = answer_pipe.read().decode()
    status = os.waitstatus_to_exitcode(os.waitpid(child, 0)[1])
    if status != 0:
        if answer:
            print(answer, file=sys.stderr)
        return status or 1, []
    os.environ.pop("VMPOOL_CONFIG", None)  # what it held is in the checked file now
    os.environ["VMPOOL_CONFIG_FILE"] = str(STATE_DIR / CHECKED_CONFIG_NAME)
    return 0, answer.split("\n") if answer else []


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8000")))
    # One worker per core, each running 4 event loops on their own threads (their Redis waits
    # overlap): more workers measured fewer cycles/s here, 2 loops fewer, 6 or 8 no more
    # (docs/performance.md, "The local HTTP front").
    parser.add_argument("--workers", type=int, default=int(os.environ.get("WORKERS", os.cpu_count() or 1)))
    parser.add_argument("--threads", type=int, default=int(os.environ.get("THREADS", "4")),
                        help="event loops (threads) per worker, each serving one request at a time")
    parser.add_argument("--config", default=os.environ.get("VMPOOL_CONFIG_FILE"))
    parser.add_argument("--redis-port", type=int, default=int(os.environ.get("VMPOOL_LOCAL_REDIS_PORT", "0")))
    parser.add_argument("--interval", type=float, default=10.0, help="seconds between scheduled passes")
    parser.add_argument("--provider", choices=("dummy", "vcsim"), default=os.environ.get("PROVIDER", "dummy"))
    args = parser.parse_args(argv)

    _lock_state_dir()  # before anything starts; held (open) until this process and its workers exit
    vcsim_process = None
    redis_server = None
    try:
        if args.provider == "vcsim":
            vcsim_process, config_file = _start_vcsim()
            os.environ["VMPOOL_CONFIG_FILE"] = str(config_file)
        elif args.config:
            os.environ["VMPOOL_CONFIG_FILE"] = str(Path(args.config).resolve())
        status, pools = _check_config()  # before anything is served
        if status:
            return status
        _require_free_port(args.port)
        redis_server = RedisServer(
            port=args.redis_port or None, data_dir=STATE_DIR / f"redis-{args.provider}", persist=True,
            die_with_parent=True,
        ).start()
        os.environ["VMPOOL_REDIS_URL"] = redis_server.url
        os.environ.setdefault("POWERTOOLS_METRICS_DISABLED", "true")
        os.environ.setdefault("POWERTOOLS_LOG_LEVEL", "INFO")
        workers = max(args.workers, 1)
        banner = (f"vmpool: serving http://127.0.0.1:{args.port}/api/v3 with {workers} workers; "
                  f"redis on port {redis_server.port}; pools: {', '.join(pools)}. Ctrl-C stops.")
        _serve(args.port, workers, max(args.threads, 1), args.interval, banner)
        return 0
    except KeyboardInterrupt:  # Ctrl-C before the arbiter took over the signals
        return 0
    finally:  # in this process only: an HTTP worker leaves through _leave_worker
        if redis_server is not None:
            redis_server.stop()
        if vcsim_process is not None:
            from tools.vcsim.launcher import stop_vcsim

            stop_vcsim(vcsim_process)
        print("vmpool: stopped", flush=True)


if __name__ == "__main__":
    sys.exit(main())
