"""`make run`: the whole service on this machine.

Starts a private redis-server (its own port and data dir), serves the Chalice app on
http://127.0.0.1:$PORT with gunicorn and uvicorn (``local.http_front``: a worker process per
core, each running a few event loops on their own threads, each loop serving one request at a
time), and runs every pool's reconcile on a timer. ``--workers 0`` (``WORKERS=0``) serves HTTP in
this process instead, the same loops on threads beside the scheduler's: one Python process in
all, for a small installation (no arbiter restarting a stuck worker; one core's worth of Python
for HTTP and the passes together; a loop stuck in a request has the stack stop and start
itself again, ``restart_after_a_stuck_loop``). Ctrl-C
stops all of it; so does killing this process (its children die with it). A redis-server or HTTP
front that dies is started again (a redis-server that cannot be, for 30 s, stops the stack). One
stack per state directory: a second one on the same directory refuses to start.

    python -m local.run [--port 8000] [--workers N] [--threads N] [--config FILE] [--provider dummy|vcsim]

With ``--provider vcsim`` it also starts our vCenter simulator (tools/vcsim) and serves pools of
real (simulated) vSphere clones instead of the dummy provider's.
"""

from __future__ import annotations

import os
import signal

if __name__ == "__main__":
    # Ctrl-C while this module's imports run (most of a second on a cold start): one line and a
    # clean exit, as later; nothing is started yet. Before, a 20-40 line KeyboardInterrupt
    # traceback. ``main`` installs its own handling before it starts anything.
    def _stopped_before_starting(signum: int, frame: object) -> None:
        os.write(1, b"vmpool: stopped\n")
        os._exit(0)

    signal.signal(signal.SIGINT, _stopped_before_starting)
    # SIGTERM too (`kill`, a supervisor, make's group): before, the default action ended the
    # process with no line, status -15, unlike a Ctrl-C at the same moment.
    signal.signal(signal.SIGTERM, _stopped_before_starting)

import argparse
import fcntl
import gc
import multiprocessing
import socket
import subprocess
import sys
import time
import traceback
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

if TYPE_CHECKING:
    from local.http_front import InProcessFront
    from local.processes import PortHold
    from local.redis_server import RedisServer

ENVIRONMENT_AT_START = dict(os.environ)
"""The environment as the stack was started (``main`` changes its own): a restart's."""

ROOT = Path(__file__).resolve().parents[1]
STATE_DIR = Path(os.environ.get("VMPOOL_STATE_DIR") or ROOT / ".run")
"""Where the local Redis keeps its data and vcsim its certificate (VMPOOL_STATE_DIR overrides)."""


LOCK_NAME = "run.lock"


def _lock_state_dir() -> int:
    """Hold an exclusive lock on the state directory for the life of this stack, or refuse.
    flock: the kernel releases it when the holder dies, so a SIGKILLed stack never blocks the
    next start (its children hold it until they have stopped too: redis-server, which writes
    the data there, is handed it)."""
    try:
        STATE_DIR.mkdir(parents=True, exist_ok=True)
        descriptor = os.open(STATE_DIR / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as error:  # read-only, not a directory, no permission: say so, no traceback
        raise SystemExit(f"cannot use {STATE_DIR} as the state directory: {error.strerror}; "
                         "set VMPOOL_STATE_DIR to a writable directory") from None
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(descriptor, 32).decode(errors="replace").strip() or "?"
        os.close(descriptor)
        raise SystemExit(f"{STATE_DIR} is in use by another `make run` (pid {holder}, or what it started): "
                         "stop it first, or give this one its own VMPOOL_STATE_DIR") from None
    try:
        os.ftruncate(descriptor, 0)
        os.write(descriptor, f"{os.getpid()}\n".encode())
    except OSError as error:  # its file system full
        raise SystemExit(f"cannot write to the state directory {STATE_DIR}: {error.strerror}") from None
    return descriptor


def _serve_http(port: int, workers: int, threads: int, parent: int,
                ready: "multiprocessing.synchronize.Semaphore") -> None:
    """The HTTP front's process: gunicorn's arbiter, which forks the workers."""
    from local.processes import die_with_parent, release_free_memory

    # The stack's SIGTERM handling (``_StopWhileStarting``) is not this process's: a SIGTERM
    # before gunicorn installs its own ends it (before, the stack's stop waited 10 s, then killed it).
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    # SIGKILL: an arbiter stopped (SIGSTOP) when the stack dies acts on no other signal, and its
    # workers (whose parent lives on, stopped) went on serving the port with nobody to stop them.
    die_with_parent(parent, signal.SIGKILL)
    import app as chalice_app
    from local.gateway import AsgiApp
    from local.gunicorn_front import HttpFront
    from local.http_front import CLIENT_TIMEOUT_SECONDS

    def asgi_app() -> AsgiApp:
        return AsgiApp(chalice_app.app, body_timeout=CLIENT_TIMEOUT_SECONDS, threads=threads, offloaded=feed_paths())

    front = HttpFront(asgi_app, "127.0.0.1", port, workers, on_worker_ready=ready.release)
    release_free_memory()  # what importing the front freed, before the workers are forked from here
    front.run()


def _serve_http_here(port: int, threads: int) -> "InProcessFront | None":
    """The HTTP front in this process (``--workers 0``), serving: the same protocol, gateway and
    event loops as a worker's, on threads beside the scheduler's. None, having said why, when it
    cannot listen or does not start."""
    import app as chalice_app
    from local.gateway import AsgiApp
    from local.http_front import CLIENT_TIMEOUT_SECONDS, WORKER_TIMEOUT_SECONDS, InProcessFront

    def asgi_app() -> AsgiApp:
        return AsgiApp(chalice_app.app, body_timeout=CLIENT_TIMEOUT_SECONDS, threads=threads, offloaded=feed_paths())

    # VMPOOL_HTTP_LOOP_TIMEOUT: for tests, a real stall the product bounds below 30 s (a stopped
    # directory holds a login up to 25 s) seen by the watchdog in a few seconds.
    loop_timeout = float(os.environ.get("VMPOOL_HTTP_LOOP_TIMEOUT") or WORKER_TIMEOUT_SECONDS)
    try:
        front = InProcessFront(asgi_app, "127.0.0.1", port, loop_timeout=loop_timeout)
    except OSError as error:
        print(f"the HTTP server cannot listen on port {port}: {error.strerror}", file=sys.stderr)
        return None
    try:
        started = front.start()
    except BaseException:  # Ctrl-C while it starts: its loops stop with what the stack started
        front.stop(timeout=5)
        raise
    if not started:
        front.stop(timeout=5)
        print(f"the HTTP server did not start on port {port}", file=sys.stderr)
        return None
    return front


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
    process, url = launcher.start_vcsim(port=0, boot_delay=3.0, cert_path=cert, die_with_parent=True)
    config_file = STATE_DIR / "vcsim.yaml"
    config_file.write_text(VCSIM_CONFIG.format(
        server=urlsplit(url).netloc, username=launcher.USERNAME, password=launcher.PASSWORD,
        ca_bundle=cert, template=launcher.TEMPLATE,
    ))
    print(f"vmpool: vcsim at {url}", flush=True)
    return process, config_file


ANOTHER_PORT = " (`make run PORT=<another>` serves on another port)"
"""Said with a refused port: the README's way to pick another, which the refusal did not name."""


def _require_free_port(port: int) -> "socket.socket":
    """Claim ``port`` for this stack for as long as the socket returned stays open, or refuse.

    Workers share the port (SO_REUSEPORT), which would also let them share it with a stale
    stack still running; refuse to start in that case instead. Connections a stopped stack
    closed (TIME_WAIT for a minute) do not count: SO_REUSEADDR, as gunicorn's own sockets have.
    Two stacks started at once would both find the port free before either's workers bind it,
    and then both serve it, each with its own Redis: the claim (a name in Linux's abstract
    socket namespace, freed by the kernel when the last process holding it dies) lets one of
    them through."""
    from local.redis_server import listened_on

    claim = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        claim.bind(f"\0vmpool-http-127.0.0.1:{port}")
    except OSError:
        claim.close()
        raise SystemExit(f"port {port} is in use by another `make run` starting or running{ANOTHER_PORT}") from None
    if listened_on(port):
        claim.close()
        raise SystemExit(f"port {port} is in use: is another `make run` still running?{ANOTHER_PORT}")
    return claim


CHECKED_CONFIG_NAME = "config.json"


def _check_config() -> int:
    """Validate the config named by the environment in a child process, and point the
    environment at its canonical JSON (written into the state directory, 0600): the stack's
    processes then build it as the Lambdas do, without pydantic or PyYAML, which only the child
    imports (7.6 MB in each of the four processes otherwise). 0, or 2 after printing what is
    wrong with the config (1 for any other failure)."""
    from local.processes import die_with_parent

    stack = os.getpid()
    read, write = os.pipe()
    # The child ignores Ctrl-C (blocked until it does): interrupted, it printed a traceback and
    # could run on into this process's code; this process stops it instead (below).
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    child = os.fork()  # this process has no other thread yet
    if child == 0:
        # The check stops with the stack, a SIGKILLed one too: before, it ran on orphaned (ppid 1)
        # for as long as a check takes (15 s for 10,000 pools under load), and wrote config.json
        # into a state directory the next `make run` may already use.
        die_with_parent(stack, signal.SIGKILL)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)  # not the stack's (``_StopWhileStarting``)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
        os.close(read)
        status, answer = _write_checked_config()
        with os.fdopen(write, "wb") as out:
            out.write(answer.encode())
        sys.stderr.flush()
        os._exit(status)
    try:
        os.close(write)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
        with os.fdopen(read, "rb") as answer_pipe:
            answer = answer_pipe.read().decode()
    except BaseException:  # Ctrl-C: the check stops with the stack
        os.kill(child, signal.SIGKILL)
        os.waitpid(child, 0)
        raise
    status = os.waitstatus_to_exitcode(os.waitpid(child, 0)[1])
    if status != 0:
        if answer:
            print(answer, file=sys.stderr)
        return status or 1
    os.environ.pop("VMPOOL_CONFIG", None)  # what it held is in the checked file now
    os.environ["VMPOOL_CONFIG_FILE"] = str(STATE_DIR / CHECKED_CONFIG_NAME)
    return 0


def _write_checked_config() -> tuple[int, str]:
    """Validate the config the environment names and write its canonical JSON for the stack's
    processes (replacing the file in one step: a process reading it never sees half of it).
    0, or 2 and what is wrong with the config (1 for any other failure)."""
    try:
        from chalicelib.config import ConfigError, canonical_json, load

        try:
            config = load()
            for warning in config.warnings:  # where it is seen; each process logs them too
                print(f"vmpool: config warning: {warning}", file=sys.stderr)
            checked = canonical_json(config)
            written = STATE_DIR / f"{CHECKED_CONFIG_NAME}.new"
            descriptor = os.open(written, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(descriptor, "w") as out:  # secrets in the clear, as in the YAML: 0600
                out.write(checked)
            os.replace(written, STATE_DIR / CHECKED_CONFIG_NAME)
        except ConfigError as error:
            return 2, str(error)
        except OSError as error:  # the state directory full or gone
            return 1, f"cannot write {STATE_DIR / CHECKED_CONFIG_NAME}: {error.strerror}"
    except BaseException:  # noqa: BLE001 - say why, and the stack refuses to start
        traceback.print_exc()
        return 1, ""
    return 0, ""


STOPS_WITH_THE_STACK = """
import signal, sys
from local.processes import die_with_parent
die_with_parent(int(sys.argv[1]), signal.SIGKILL)
"""
"""The start of the programs the stack runs in a fresh interpreter (its pid their first argument):
they stop with it, a SIGKILLed one too. Before, a `make run` killed while the config's files were
listed (its start) or checked (an edit) left that interpreter running on, orphaned (ppid 1), for
as long as it took (up to CONFIG_CHECK_TIMEOUT_SECONDS), the check writing config.json. Set in the
program, not by ``preexec_fn`` (unsafe with the scheduler's threads running)."""
CHECK_CONFIG_PROGRAM = STOPS_WITH_THE_STACK + """
import sys, local.run as run
status, answer = run._write_checked_config()
print(answer, file=sys.stderr, end="")
sys.exit(status)
"""
LIST_CONFIG_FILES_PROGRAM = STOPS_WITH_THE_STACK + """
import sys
from pathlib import Path
from chalicelib.config import config_files
print("\\n".join(str(path) for path in config_files(Path(sys.argv[2]))))
"""
CONFIG_CHECK_SECONDS = 2.0
"""How often the stack looks at the developer's config file for changes."""
CONFIG_CHECK_TIMEOUT_SECONDS = 60.0
"""How long a changed config's check may take. A check of config.MAX_POOLS pools (10,000
vmpooler-style, 2.5 MB) takes 3.3 s of CPU in its fresh interpreter and 15-16 s of wall time on
2 cores at load 15 (docs/performance.md, "Validating 10,000 pools"); 1,000 pools 0.7 s of CPU.
At 30 s, before the check got faster (6.2 s of CPU), such an edit under that load was never
served: every check timed out (29.8-30.0 s)."""


class ConfigWatch:
    """The developer's config file and the ``extra_config`` files it names, validated again when
    one changes (its size or modification time; looked at every CONFIG_CHECK_SECONDS) in a fresh
    interpreter, and written for the stack's processes as at start: they read it again within
    seconds (config_source.LOCAL_REFRESH_SECONDS), as the Lambdas read a pushed config. An edit
    that does not validate is refused with its problems on stderr; the running config stays.
    A check that ends without a verdict (killed, or over CONFIG_CHECK_TIMEOUT_SECONDS) is run
    again (after that timeout): before, the edit counted as looked at and was never served until
    the developer saved the file again.
    Before, an edit to an extra file alone was not noticed until the main file changed."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._files = self._listed()
        self._seen = self._signature()
        self._checked_at = time.monotonic()

    def _listed(self) -> list[Path]:
        """The files the config is loaded from (read again when the main file changes), listed
        in a fresh interpreter: reading the YAML imports PyYAML and libyaml (2-3 MB), and this
        process is the scheduler's, forked into gunicorn's arbiter and the HTTP workers, which
        all kept it. Only the main file when the listing fails (its check says why)."""
        try:
            listed = subprocess.run([sys.executable, "-c", LIST_CONFIG_FILES_PROGRAM, str(os.getpid()), str(self.path)],
                                    cwd=ROOT, capture_output=True, text=True, timeout=CONFIG_CHECK_TIMEOUT_SECONDS)
        except subprocess.TimeoutExpired:
            return [self.path]
        names = listed.stdout.splitlines()
        return [Path(name) for name in names] if listed.returncode == 0 and names else [self.path]

    def _signature(self) -> tuple[tuple[int, int] | None, ...] | None:
        """Each file's size and modification time (None for an extra file missing); None while
        the main file is missing."""
        stats: list[tuple[int, int] | None] = []
        for file in self._files:
            try:
                stat = file.stat()
            except OSError:
                stats.append(None)
                continue
            stats.append((stat.st_size, stat.st_mtime_ns))
        return None if stats[0] is None else tuple(stats)

    def check(self) -> int | None:
        """Validate and write the config when the file changed since the last look: the
        check's status (0: written), None when there was nothing to do."""
        now = time.monotonic()
        if now - self._checked_at < CONFIG_CHECK_SECONDS:
            return None
        self._checked_at = now
        seen = self._signature()
        if seen is None or seen == self._seen:
            return None  # gone (an editor's save in progress): looked at again next time
        if self._seen is None or seen[0] != self._seen[0]:  # the main file: its extra files may differ
            self._files = self._listed()
            seen = self._signature() or seen
        previous, self._seen = self._seen, seen
        env = {key: value for key, value in os.environ.items() if key != "VMPOOL_CONFIG"}
        env["VMPOOL_CONFIG_FILE"] = str(self.path)
        # A fresh interpreter: this process runs the scheduler's threads, which a fork would copy mid-lock.
        try:
            checked = subprocess.run([sys.executable, "-c", CHECK_CONFIG_PROGRAM, str(os.getpid())], env=env, cwd=ROOT,
                                     capture_output=True, text=True, timeout=CONFIG_CHECK_TIMEOUT_SECONDS)
        except subprocess.TimeoutExpired:  # the main loop also answers stop requests: never hang it
            # No verdict on the edit: checked again, but not at every look (each would hold the
            # main loop for the whole timeout).
            self._seen = previous
            self._checked_at = time.monotonic() + CONFIG_CHECK_TIMEOUT_SECONDS
            print(f"vmpool: config {self.path} changed but its check took over "
                  f"{CONFIG_CHECK_TIMEOUT_SECONDS:.0f} s; the running config stays until a check ends",
                  file=sys.stderr, flush=True)
            return 1
        if checked.returncode < 0:  # killed (the OOM killer, a kill -9): no verdict on the edit either
            self._seen = previous
            print(f"vmpool: config {self.path} changed but its check was killed (signal {-checked.returncode}); "
                  f"the running config stays until a check ends", file=sys.stderr, flush=True)
            return 1
        if checked.returncode == 0:
            print(f"vmpool: config {self.path} changed: reloaded", file=sys.stderr, flush=True)
            sys.stderr.write(checked.stderr)
        else:
            print(f"vmpool: config {self.path} changed but refused; the running config stays:\n"
                  f"{checked.stderr.strip()}", file=sys.stderr, flush=True)
        return checked.returncode


class FrontWatch:
    """Whether the HTTP front, when it is found dead, is started again or stops the stack.

    A front that exited on its own before any of its workers served (a worker that cannot boot:
    a broken install, a config it cannot read) would fail the same way again: the stack stops
    and says so instead of restarting it in a loop. One that served, or that was killed by a
    signal (``kill -9``, the OOM killer), is started again. Before, any front that died within
    30 s of its start stopped the whole stack, scheduler and Redis included: a second
    ``kill -9`` of the arbiter within 30 s of the first (or of ``make run``) took the service
    down for good."""

    def __init__(self, ready: Any, served: bool = False) -> None:
        self.ready = ready
        self.served = served

    def started(self, ready: Any) -> None:
        """A new front: its workers release ``ready`` as each serves."""
        self.ready, self.served = ready, False

    def note_workers(self) -> None:
        """Count the workers that reported serving since the last look (without waiting)."""
        while not self.served and self.ready.acquire(block=False):
            self.served = True

    def restartable(self, front: BaseProcess) -> bool:
        self.note_workers()
        killed = front.exitcode is not None and front.exitcode < 0
        return self.served or killed


def _start_front(method: str, port: int, workers: int, threads: int) -> tuple[BaseProcess, Any]:
    """The HTTP front's process (gunicorn's arbiter) started by ``method`` (fork or spawn), and the
    semaphore each of its workers releases once it serves."""
    context: Any = multiprocessing.get_context(method)  # typeshed's BaseContext lacks Process
    ready = context.Semaphore(0)
    front: BaseProcess = context.Process(target=_serve_http, name="vmpool-http",
                                         args=(port, workers, threads, os.getpid(), ready))
    front.start()
    return front, ready


REDIS_RESTART_SECONDS = float(os.environ.get("VMPOOL_REDIS_RESTART_SECONDS", "30"))
"""How long the stack goes on trying to start its redis-server again after it died (a port that
another program took meanwhile is seldom given back, data Redis cannot read stays so) before it
stops, saying why: started again, it picks a free port (unless ``--redis-port`` names one) and
reads the data kept in the state directory."""


class RedisRestarts:
    """Start the stack's redis-server again, on its port and data, if it has died (a crash, a
    ``kill -9``, the OOM killer): its append-only file holds every write it acknowledged, so the
    service resumes where it was instead of answering 503 until someone restarts `make run`.
    The port stays held from the crash to the restart (``RedisServer``'s hold, kept for its life).

    Not on another port: every HTTP worker and the scheduler hold the server's address. When it
    cannot be started for REDIS_RESTART_SECONDS, ``check`` says why, for the stack to stop with
    it; before, it tried the same taken port forever (the service answering 503 throughout), or
    a port held by a program that accepted connections and never answered stopped the stack
    with a traceback."""

    def __init__(self, redis_server: "RedisServer", give_up_seconds: float = REDIS_RESTART_SECONDS) -> None:
        self.redis_server = redis_server
        self.give_up_seconds = give_up_seconds
        self._failing_since: float | None = None

    def check(self) -> str | None:
        """Start the server again if it is gone: None while it serves or may still be started,
        else why the stack must stop."""
        process = self.redis_server.process  # None after a failed start: try again
        if process is not None and process.poll() is None:
            self._failing_since = None
            return None
        if self._failing_since is None:
            code = "?" if process is None else process.returncode
            print(f"vmpool: redis-server exited ({code}); starting it again", file=sys.stderr, flush=True)
            self._failing_since = time.monotonic()
        try:
            self.redis_server.start()
        except RuntimeError as error:  # its port taken meanwhile, its data unreadable
            if time.monotonic() - self._failing_since < self.give_up_seconds:
                print(f"vmpool: {error}; trying again", file=sys.stderr, flush=True)
                return None
            return (f"{error}, for {self.give_up_seconds:.0f} s; stopping. Its data is kept in "
                    f"{self.redis_server.data_dir}: `make run` again starts it on a free port "
                    "(unless --redis-port or VMPOOL_LOCAL_REDIS_PORT names one)")
        self._failing_since = None
        return None


def _mark_started(url: str) -> None:
    """The stack starts now: /status's uptime counts from here in every worker, whenever each
    started, and again from the next start (its Redis keeps what the last stack set)."""
    import redis

    from chalicelib.services import KEY_PREFIX_ENV
    from chalicelib.store import Store
    from chalicelib.store.keys import DEFAULT_PREFIX

    client = redis.Redis.from_url(url)
    try:
        Store(client, prefix=os.environ.get(KEY_PREFIX_ENV, DEFAULT_PREFIX)).restart_service(time.time())
    finally:
        client.close()


def _tcp_port(text: str) -> int:
    """A port to listen on, 1 to 65535. Not 0: each HTTP worker binds the port itself, and each
    would get a different free one (the banner showing port 0)."""
    try:
        port = int(text)
    except ValueError:
        port = -1
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{text} is not a TCP port (1 to 65535)")
    return port


def _tcp_port_or_any(text: str) -> int:
    """A port, or 0 for a free one."""
    return 0 if text.strip() == "0" else _tcp_port(text)


MAX_THREADS = 32
"""Event loops (threads) a worker runs at most: 4 serve the most cycles/s here, 6 or 8 no more
(docs/performance.md, "The local HTTP front"); each holds its own copy of the app and its Redis
connections. Before, any number was started: ``--threads 100000`` made each worker start threads
until the system refused one."""


def _thread_count(text: str) -> int:
    """Event loops per worker, 1 to MAX_THREADS."""
    try:
        count = int(text)
    except ValueError:
        count = 0
    if not 1 <= count <= MAX_THREADS:
        raise argparse.ArgumentTypeError(f"{text} is not a number of threads (1 to {MAX_THREADS})")
    return count


WORKERS_PER_CORE = 4
"""HTTP worker processes per core at most. One per core serves the most cycles/s (more measured
fewer: docs/performance.md, "The local HTTP front"); each is a process of ~40 MB with its own
copy of the app and ``--threads`` Redis connections. Before, any number was started:
``WORKERS=100000`` forked until the system refused one, and 0 or less was taken for 1."""


def most_workers(cores: int | None = None) -> int:
    """The most HTTP workers this machine is given: ``WORKERS_PER_CORE`` a core."""
    return WORKERS_PER_CORE * max(cores if cores is not None else os.cpu_count() or 1, 1)


def _worker_count(text: str) -> int:
    """HTTP worker processes, 1 to ``most_workers()``; 0: none, the HTTP front in the stack's own
    process (one process for a small installation, docs/performance.md "Memory (item 6)")."""
    try:
        count = int(text)
    except ValueError:
        count = -1
    most = most_workers()
    if not 0 <= count <= most:
        raise argparse.ArgumentTypeError(
            f"{text} is not a number of workers (0 to {most}: {WORKERS_PER_CORE} a core; "
            "0 serves HTTP in the stack's own process)")
    return count


def _positive_seconds(text: str) -> float:
    """Seconds between ticks: 0 or less would tick in a busy loop."""
    try:
        seconds = float(text)
    except ValueError:
        seconds = 0.0
    if not seconds > 0:  # NaN too
        raise argparse.ArgumentTypeError(f"{text} is not a positive number of seconds")
    return seconds


def feed_paths() -> list[str]:
    """The paths of the feeds (``/status``, ``/summary``, the dashboard's stats...: every route
    reading every pool), which the front runs off its event loops (``AsgiApp.offloaded``)."""
    from chalicelib.api.routes import ROUTES, versioned_paths

    return [path for route in ROUTES if route.feed for path, _ in versioned_paths(route)]


BANNER_POOLS = 10
"""How many pool names the start-up banner shows; the rest are counted. Every name was listed:
12 KB on one line at 1,000 pools (``GET /api/v3/config`` lists them all)."""


def pool_list(names: Sequence[str], shown_at_most: int = BANNER_POOLS) -> str:
    """The banner's pools: the first ``shown_at_most`` names, then how many more there are."""
    if len(names) <= shown_at_most:
        return ", ".join(names)
    return f"{', '.join(names[:shown_at_most])} and {len(names) - shown_at_most:,} more ({len(names):,} in all)"


_stop_asked_while_stopping = False
"""Ctrl-C or SIGTERM came while ``main`` was stopping what it started: not to be started again."""


def _note_stop_asked(signum: int, frame: object) -> None:
    """While ``main`` stops what it started: a Ctrl-C or SIGTERM does not interrupt that (a second
    Ctrl-C would end the clean-up with a traceback, leaving what it had not stopped yet to the
    parent-death signals), and is remembered: ``restart_after_a_stuck_loop`` then does not start
    the stack again (before, such a stop was ignored and a stuck loop's restart went ahead)."""
    global _stop_asked_while_stopping
    _stop_asked_while_stopping = True


class _StopWhileStarting:
    """SIGTERM while the stack starts (its config checked, redis-server started, the HTTP workers
    forked) stops it as Ctrl-C does: what was started is stopped, "vmpool: stopped", exit 0.
    Before, a SIGTERM until redis-server answered ended the process at once (status -15, no line,
    the config's check left running orphaned), and one later went unheeded until the workers
    served: the stack printed its "serving" banner, then stopped. Raises once; a second SIGTERM
    (make's group and its parent-death signal arrive together) does not interrupt the clean-up."""

    def __init__(self) -> None:
        self.raised = False
        signal.signal(signal.SIGTERM, self._stop)

    def _stop(self, signum: int, frame: object) -> None:
        if not self.raised:
            self.raised = True
            raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=_tcp_port, default=os.environ.get("PORT", "8000"))
    # One worker per core, each running 4 event loops on their own threads (their Redis waits
    # overlap): more workers measured fewer cycles/s here, 2 loops fewer, 6 or 8 no more
    # (docs/performance.md, "The local HTTP front").
    parser.add_argument("--workers", type=_worker_count, default=os.environ.get("WORKERS", str(os.cpu_count() or 1)),
                        help=f"HTTP worker processes (1 to {WORKERS_PER_CORE} a core), or 0: HTTP served by "
                             "this process, beside the scheduler (one process in all)")
    parser.add_argument("--threads", type=_thread_count, default=os.environ.get("THREADS", "4"),
                        help=f"event loops (threads) per worker, each serving one request at a time "
                             f"(1 to {MAX_THREADS})")
    parser.add_argument("--config", default=os.environ.get("VMPOOL_CONFIG_FILE"))
    parser.add_argument("--redis-port", type=_tcp_port_or_any, default=os.environ.get("VMPOOL_LOCAL_REDIS_PORT", "0"),
                        help="0 (the default): a free one")
    parser.add_argument("--interval", type=_positive_seconds, default=None,
                        help="seconds between the scheduler's ticks (default 60, as in AWS; each tick after the "
                             "first spreads the pools over 5/6 of it: local/scheduler.py)")
    parser.add_argument("--provider", choices=("dummy", "vcsim"), default=os.environ.get("PROVIDER", "dummy"))
    args = parser.parse_args(argv)
    if args.workers == 0 and args.threads < 2:
        # One loop, nothing to take over from it (ACCEPT_TAKEOVER_SECONDS): a request its backend
        # holds (a stopped directory: up to 25 s) held every other caller as long, a GET /status
        # 23 s (measured, chaos21); two loops cost no measurable memory (48.1 MB RSS either way).
        parser.error(f"--threads {args.threads} with --workers 0: one event loop held by a slow request "
                     "(a stopped LDAP directory, up to 25 s) would hold every caller; use --threads 2 or more")

    # Python leaves SIGINT ignored when it starts with it ignored (a background job of a script,
    # `nohup`): Ctrl-C or `kill -INT` would then stop only gunicorn, and this process would report
    # its HTTP server lost (exit 1) instead of stopping cleanly. Set before anything starts: a
    # Ctrl-C while the stack starts stops what it started, as later.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    _StopWhileStarting()
    vcsim_process: subprocess.Popen[bytes] | None = None
    redis_server: RedisServer | None = None
    front: BaseProcess | None = None
    front_here: InProcessFront | None = None  # --workers 0
    port_claim: socket.socket | None = None
    http_port_hold: PortHold | None = None
    scheduler = None
    # "vmpool: stopped" once the stack served, or when Ctrl-C stopped it: not after a refusal
    # (a port or state directory in use, a bad config), for a stack that never started.
    say_stopped = False
    try:
        from local.processes import PortHold, StopRequests, die_with_parent, release_free_memory
        from local.redis_server import RedisServer

        if os.environ.get("MAKELEVEL"):
            # Started by `make run`: a SIGKILLed make (an IDE's stop button, a CI job's timeout)
            # cannot pass anything on, and the stack went on serving, orphaned, with nobody left to
            # stop it. SIGTERM when make dies: the stack stops as on Ctrl-C. Not when started
            # another way: `nohup python -m local.run &` outlives its shell on purpose.
            die_with_parent(os.getppid())
        lock = _lock_state_dir()  # before anything starts; held (open) until this process exits
        if args.provider == "vcsim":
            vcsim_process, config_file = _start_vcsim()
            os.environ["VMPOOL_CONFIG_FILE"] = str(config_file)
        elif args.config:
            os.environ["VMPOOL_CONFIG_FILE"] = str(Path(args.config).resolve())
        from chalicelib.config import DEFAULT_CONFIG_FILE

        watch = None if os.environ.get("VMPOOL_CONFIG") else ConfigWatch(
            Path(os.environ.get("VMPOOL_CONFIG_FILE") or DEFAULT_CONFIG_FILE))
        status = _check_config()  # before anything starts
        os.environ["VMPOOL_CONFIG_WATCH"] = "1" if watch else ""  # the processes re-read the checked file
        if status:
            return status
        redis_server = RedisServer(
            port=args.redis_port or None, data_dir=STATE_DIR / f"redis-{args.provider}", persist=True,
            die_with_parent=True, pass_fds=(lock,),  # the lock held until it has stopped writing too
            log_file=STATE_DIR / f"redis-{args.provider}.log",
        )
        try:
            redis_server.start()
        except RuntimeError as error:  # its port taken by another server, its data unreadable
            print(f"vmpool: {error}", file=sys.stderr)
            return 1
        os.environ["VMPOOL_REDIS_URL"] = redis_server.url
        _mark_started(redis_server.url)
        os.environ.setdefault("POWERTOOLS_METRICS_DISABLED", "true")
        os.environ.setdefault("POWERTOOLS_LOG_LEVEL", "INFO")

        http_port_hold = PortHold()
        workers: int = args.workers
        from chalicelib.config import ConfigError

        try:
            import app as chalice_app  # the checked config (``_check_config``)
        except ConfigError as error:
            print(error, file=sys.stderr)
            return 2
        port_claim = _require_free_port(args.port)  # held (open) until this process exits
        # The TCP port too, beside the workers' listeners (SO_REUSEADDR): no other program takes
        # it before the workers bind it, nor while a killed front's replacement is starting.
        http_port_hold.hold(args.port)
        # Forked before the scheduler's threads exist: the front's processes inherit none.
        # What this process holds now (the app, its modules) is left out of garbage collection:
        # a collection in the arbiter or a worker then no longer writes to (and so copies) every
        # page they share with this process; 5-6 MB less PSS, docs/performance.md "Memory (item
        # 6)". The cost is bounded: what exists now and later becomes cyclic garbage (the first
        # config's objects after a reload) is kept, once.
        release_free_memory()  # and what importing the app freed: else every forked process maps it
        gc.freeze()
        front_watch: FrontWatch | None = None
        if workers == 0:  # one process: the HTTP loops on threads here, beside the scheduler's
            front_here = _serve_http_here(args.port, args.threads)
            if front_here is None:
                return 1
        else:
            front, ready = _start_front("fork", args.port, workers, args.threads)
            for _ in range(workers):
                if not ready.acquire(timeout=30):
                    print(f"the HTTP workers did not start on port {args.port}", file=sys.stderr)
                    return 1
            front_watch = FrontWatch(ready, served=True)

        from local.scheduler import LocalScheduler

        redis_restarts = RedisRestarts(redis_server)

        scheduler = (LocalScheduler(chalice_app.services()) if args.interval is None
                     else LocalScheduler(chalice_app.services(), interval_seconds=args.interval))
        scheduler.start()
        stop = StopRequests(signal.SIGTERM)  # served from here: the main loop looks for it
        pools = pool_list(chalice_app.CONFIG.pool_names)
        plural = "" if workers == 1 else "s"
        serving = (f"in this process ({args.threads} event loops beside the scheduler)" if workers == 0
                   else f"with {workers} worker{plural}")
        print(f"vmpool: serving http://127.0.0.1:{args.port}/api/v3 {serving}; "
              f"redis on port {redis_server.port}; pools: {pools}. Ctrl-C stops.", flush=True)
        say_stopped = True
        while not stop.wait(0.5):
            if front_here is not None and not front_here.is_alive():
                # A loop ended (a bug of ours escaping it): the others with it. Started again
                # here, on the same port (held meanwhile); the scheduler's threads run on.
                print("vmpool: the HTTP server stopped; starting it again", file=sys.stderr, flush=True)
                front_here.stop(timeout=5)
                front_here = _serve_http_here(args.port, args.threads)
                if front_here is None:
                    return 1
            stuck = front_here.stuck_loop() if front_here is not None else None
            if stuck is not None:
                # Said (a JSON line) by stuck_loop. A thread cannot be killed and every connection
                # on that loop waits: as the default's arbiter ends a silent worker, the stack
                # stops, and ``restart_after_a_stuck_loop`` starts it again in this process (or,
                # with VMPOOL_EXIT_WHEN_STUCK=1, its supervisor does); the pools' state is in
                # Redis (docs/reliability.md).
                print(f"vmpool: the HTTP loop {stuck.loop} has not turned for {stuck.silent_seconds:.0f} s; "
                      "stopping (exit 3) to be started again", file=sys.stderr, flush=True)
                return STUCK_LOOP_EXIT
            if front is not None and front_watch is not None:
                front_watch.note_workers()
                if not front.is_alive():
                    if not front_watch.restartable(front):
                        print(f"the HTTP server stopped ({front.exitcode}) before it served; stopping", file=sys.stderr)
                        return 1
                    print(f"vmpool: the HTTP server stopped ({front.exitcode}); starting it again",
                          file=sys.stderr, flush=True)
                    # A fresh interpreter, not a fork: this process runs the scheduler's threads now,
                    # and a fork would copy whatever locks they hold.
                    front, ready = _start_front("spawn", args.port, workers, args.threads)
                    front_watch.started(ready)
            if watch is not None:
                watch.check()
            chalice_app.services()  # the scheduler's: re-reads the checked config when it changed
            redis_lost = redis_restarts.check()
            if redis_lost is not None:
                print(f"vmpool: {redis_lost}", file=sys.stderr, flush=True)
                return 1
        return 0
    except KeyboardInterrupt:
        say_stopped = True
        return 0
    finally:
        # A second Ctrl-C while stopping (bounded: 10 s a process at most) would end the clean-up
        # with a traceback, leaving what it had not stopped yet to the parent-death signals.
        signal.signal(signal.SIGINT, _note_stop_asked)
        signal.signal(signal.SIGTERM, _note_stop_asked)
        if scheduler:
            scheduler.stop()
        if front_here is not None:
            front_here.stop()  # its requests in the app get 5 s, as gunicorn's workers do
        if front is not None:
            front.terminate()  # SIGTERM: gunicorn stops its workers (5 s grace for requests)
            front.join(timeout=10)
            if front.is_alive():
                front.kill()
                front.join()
        if redis_server is not None:
            redis_server.stop()
        if http_port_hold is not None:
            http_port_hold.release()
        if port_claim is not None:
            port_claim.close()
        if vcsim_process is not None:
            from tools.vcsim.launcher import stop_vcsim

            stop_vcsim(vcsim_process)
        if say_stopped:
            print("vmpool: stopped", flush=True)


STUCK_LOOP_EXIT = 3
"""``main``'s status when an HTTP loop of ``--workers 0`` was stuck (``InProcessFront.stuck_loop``)."""
RESTART_DELAYS_SECONDS = (1, 2, 4, 8, 16, 32, 60)
"""The wait before each restart after a stuck loop (``restart_after_a_stuck_loop``), one after
the other, then the last for every further one: bounded, so a stack whose loops keep getting
stuck serves between its restarts and never waits more than a minute to serve again."""
RESTARTS_FORGOTTEN_SECONDS = 600
"""A stack that ran this long since its last restart starts the back-off over."""
RESTARTS_ENV = "VMPOOL_LOCAL_RESTARTS"
"""Carried across ``restart_after_a_stuck_loop``'s exec: how many restarts in a row, and when
the last was (``time.monotonic``, the machine's clock since boot: the same in the new program)."""
EXIT_WHEN_STUCK_ENV = "VMPOOL_EXIT_WHEN_STUCK"
"""Set to 1: a stuck loop ends the stack with status 3, for a supervisor to start it again."""


def restart_delay(previous: str, now: float) -> tuple[int, float]:
    """(this restart's number in a row, the seconds to wait before it), from ``previous`` (the
    RESTARTS_ENV value the stack was started with: "" for none, else "count:monotonic")."""
    count, last = 0, 0.0
    try:
        count_text, last_text = previous.split(":", 1)
        count, last = int(count_text), float(last_text)
    except ValueError:
        pass
    if now - last > RESTARTS_FORGOTTEN_SECONDS or count < 0:
        count = 0
    return count + 1, float(RESTART_DELAYS_SECONDS[min(count, len(RESTART_DELAYS_SECONDS) - 1)])


def restart_after_a_stuck_loop(environment: dict[str, str]) -> int:
    """After ``main`` stopped the stack for a stuck HTTP loop (everything it started stopped, its
    lock and ports released): wait the back-off (RESTART_DELAYS_SECONDS), then start the stack
    again by exec-ing this program anew in this process, with ``environment`` (the one it was
    started with) and the same arguments. Before, the stack exited 3 and `make run` restarted
    nothing: the service stayed down until someone noticed. An exec, not a child process to
    supervise: the stuck thread goes with the old program (a thread cannot be killed), the pid
    stays the one `make`, a terminal or a test knows (Ctrl-C and SIGTERM reach the stack as
    before, a SIGKILL ends it and its children die with it), and there is no second Python
    process to keep (the one-process layout is for small machines). Returns 0 when Ctrl-C or
    SIGTERM stopped the wait (nothing runs by then: "vmpool: stopped" was said);
    STUCK_LOOP_EXIT with VMPOOL_EXIT_WHEN_STUCK=1 (a supervisor's to restart, as before)."""
    if environment.get(EXIT_WHEN_STUCK_ENV) == "1":
        return STUCK_LOOP_EXIT
    now = time.monotonic()
    count, delay = restart_delay(environment.get(RESTARTS_ENV, ""), now)

    def stopped(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, stopped)
    signal.signal(signal.SIGTERM, stopped)  # a supervisor's stop, make's parent-death signal
    if _stop_asked_while_stopping:
        return 0
    try:
        print(f"vmpool: starting the stack again in {delay:.0f} s (restart {count} in a row; "
              f"{EXIT_WHEN_STUCK_ENV}=1 exits instead)", file=sys.stderr, flush=True)
        time.sleep(delay)
        sys.stdout.flush()
        sys.stderr.flush()
        os.execve(sys.executable, [sys.executable, "-m", "local.run", *sys.argv[1:]],
                  {**environment, RESTARTS_ENV: f"{count}:{time.monotonic()!r}"})
    except KeyboardInterrupt:
        return 0
    except OSError as error:  # the interpreter gone (a venv removed under the stack)
        print(f"vmpool: cannot start the stack again: {error}", file=sys.stderr, flush=True)
        return STUCK_LOOP_EXIT
    return STUCK_LOOP_EXIT  # not reached: execve returns only by raising


if __name__ == "__main__":
    status = main()
    if status == STUCK_LOOP_EXIT:
        status = restart_after_a_stuck_loop(ENVIRONMENT_AT_START)
    sys.exit(status)
