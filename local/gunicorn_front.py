"""The local stack's default HTTP front (`make run`, WORKERS of 1 or more): gunicorn's arbiter
forking worker processes, each serving the loops of ``local.http_front`` (its docstring says what
they add to uvicorn). Apart from that module because only this layout needs gunicorn: imported
there, gunicorn (about 1.9 MB and 32 modules) was loaded by the one-process layout (`make run
WORKERS=0`, ``http_front.InProcessFront``) too, which never uses it (docs/performance.md,
"Memory (item 6)")."""

from __future__ import annotations

import logging
import mmap
import signal
import struct
import sys
import threading
import time
from typing import Any, Callable, ClassVar

from gunicorn.app.base import BaseApplication
from gunicorn.arbiter import Arbiter
from gunicorn.glogging import Logger as GunicornLogger
from uvicorn.server import Server
from uvicorn_worker import UvicornWorker

from local.front_logs import LoggerName, from_caller, json_formatter
from local.http_front import (
    ARBITER_PAUSE_SECONDS,
    HEARTBEAT_SECONDS,
    MAX_CONNECTIONS,
    PROCESS_BEAT_SECONDS,
    PROCESS_TIMEOUT_SECONDS,
    UVICORN_CONFIG,
    WORKER_TIMEOUT_SECONDS,
    _LoopServer,
    _LoopThread,
    connection_bound,
)
from local.processes import die_with_parent


def _error_log_method(level: str) -> Callable[..., None]:
    """A method of ``JsonLogger`` passing a line on to its error log's method ``level``
    (``warning``, ``exception``...), located at the method's caller (``from_caller``)."""

    def method(self: GunicornLogger, msg: object, *args: Any, **kwargs: Any) -> None:
        getattr(self.error_log, level)(msg, *args, **from_caller(kwargs))

    method.__name__, method.__qualname__ = level, f"JsonLogger.{level}"
    return method


class JsonLogger(GunicornLogger):
    """gunicorn's logger, its error log written as JSON lines (``json_formatter``) instead of
    ``[<time>] [<pid>] [LEVEL] message``. Set as gunicorn's ``logger_class``.

    Its ``location`` is the caller's (``reap_workers:672``, where the arbiter said a worker
    died): gunicorn's methods pass each line on to ``logging`` from a method of their own, and
    every line of the arbiter was located at that method (``warning:286``, ``critical:280``)."""

    critical = _error_log_method("critical")
    error = _error_log_method("error")
    warning = _error_log_method("warning")
    info = _error_log_method("info")
    debug = _error_log_method("debug")
    exception = _error_log_method("exception")

    def log(self, lvl: int | str, msg: object, *args: Any, **kwargs: Any) -> None:
        if isinstance(lvl, str):
            lvl = self.LOG_LEVELS.get(lvl.lower(), logging.INFO)
        self.error_log.log(lvl, msg, *args, **from_caller(kwargs))

    def setup(self, cfg: Any) -> None:
        super().setup(cfg)
        for handler in self.error_log.handlers:
            if getattr(handler, "_gunicorn", False):
                handler.setFormatter(json_formatter())
                if not any(isinstance(existing, LoggerName) for existing in handler.filters):
                    handler.addFilter(LoggerName())


class OneAppWorker(UvicornWorker):
    """A gunicorn worker running uvicorn: as many event loops as the app allows threads
    (``AsgiApp.threads``), each on its own thread, each calling the app inline, one request at a
    time per loop, the first one accepting the worker's connections for all (``_LoopServer``);
    bounded as ``BoundedHttpProtocol`` says; dies with the arbiter.

    Why loops and not one loop handing requests to a pool of threads: a hand-off costs two
    thread wake-ups per request (the pool thread, then the loop for the answer), each a wait in
    the run queue of a busy machine; a loop per thread wakes once per request, as a thread per
    connection does, while a slow client still costs only a coroutine."""

    CONFIG_KWARGS: ClassVar[dict[str, Any]] = UVICORN_CONFIG

    _loops: list[_LoopThread]
    _server: Server | None = None
    _last_heartbeat = 0.0
    process_beat: "ProcessBeat"
    """When this worker's process last ran, shared with the arbiter (``_Arbiter``)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)  # in the arbiter, before the fork
        # The accepting loop bounds the worker's connections (_LoopServer._hand); uvicorn's own
        # check, per loop at each request, stays above it.
        self.config.limit_concurrency = self.cfg.worker_connections + 1
        self._loops = []
        self.process_beat = ProcessBeat()

    def init_signals(self) -> None:
        super().init_signals()
        # Ctrl-C reaches every process of the terminal's group, the workers too: a stop asked of
        # them, ended with exit 0 as gunicorn's own workers do. uvicorn-worker leaves SIGINT at
        # its default, and uvicorn, once it has stopped gracefully, raises the signal again for
        # the old handler: the worker died of SIGINT, and the arbiter logged a warning per worker
        # ("Worker (pid:...) was sent SIGINT!") on every clean Ctrl-C of `make run`. With this
        # handler as the old one, that second SIGINT (or one during start-up) exits 0.
        signal.signal(signal.SIGINT, self._interrupted)

    def _interrupted(self, signum: int, frame: Any) -> None:
        self.alive = False
        sys.exit(0)

    def init_process(self) -> None:
        # SIGKILL, not SIGTERM: a worker stopped (SIGSTOP) when its arbiter dies acts on no other
        # signal, and stayed stopped for good, re-parented, holding its listening socket on the
        # port: a share of the next front's new connections queued on it, unanswered forever.
        die_with_parent(self.ppid, signal.SIGKILL)
        threading.Thread(target=self._beat_while_running, name="vmpool-process-beat", daemon=True).start()
        super().init_process()

    def _beat_while_running(self) -> None:
        """Say that this process runs, for as long as it does (a thread of its own: its event
        loops may each be busy with one request for many seconds)."""
        while True:
            self.process_beat.beat()
            time.sleep(PROCESS_BEAT_SECONDS)

    async def _serve(self) -> None:
        self.config.app = self.wsgi
        self.config.load()
        loops = max(int(getattr(self.wsgi, "threads", 1)), 1)
        self.config.callback_notify = None  # the first loop's heartbeat instead, at every turn
        self._server = _LoopServer(config=self.config)
        self._server.heartbeat = self._heartbeat
        self._server.max_connections = connection_bound(self.cfg.worker_connections)
        self._loops = [_LoopThread(self, number) for number in range(1, loops)]
        self._server.followers = tuple(loop.server for loop in self._loops)
        for loop in self._loops:
            loop.server.accepting = self._server
        for loop in self._loops:
            loop.start()
        self._install_sigquit_handler()
        try:
            await self._server.serve(sockets=self.sockets)
        finally:
            for loop in self._loops:
                loop.server.should_exit = True
            for loop in self._loops:
                loop.join(timeout=self.config.timeout_graceful_shutdown or 5)
        if not self._server.started:
            raise SystemExit(Arbiter.WORKER_BOOT_ERROR)

    def stop_serving(self) -> None:
        """Ask every loop of this worker to finish (the arbiter then starts a new worker)."""
        if self._server is not None:
            self._server.should_exit = True

    def _heartbeat(self) -> None:
        """Tell the arbiter this worker is alive (at most once a second), while every loop turns:
        the arbiter restarts a worker that stops telling it."""
        now = time.monotonic()
        if now - self._last_heartbeat < HEARTBEAT_SECONDS:
            return
        stalled = now - self.timeout
        if all(loop.server.ticked > stalled for loop in self._loops):
            self._last_heartbeat = now
            self.notify()


class ProcessBeat:
    """When a worker's process last ran (``time.monotonic()``, which every process of the
    machine shares), in memory the arbiter makes before it forks the worker and reads after:
    an anonymous shared mapping, so no descriptor to close or to leak into later workers."""

    def __init__(self) -> None:
        self._memory = mmap.mmap(-1, 8)  # MAP_SHARED | MAP_ANONYMOUS: the fork shares it
        self.beat()  # a worker stopped before its first beat is not spared

    def beat(self) -> None:
        """Record that the process runs now."""
        self._memory[:8] = struct.pack("d", time.monotonic())

    def last(self) -> float:
        """When the process last said it runs."""
        return float(struct.unpack("d", self._memory[:8])[0])


class _Arbiter(Arbiter):
    """gunicorn's arbiter, which also kills a worker whose process has not run for
    ``HttpFront.process_timeout`` (SIGKILL at once: a process that does not run acts on no other
    signal), and counts no worker's silence over a pause of its own.

    gunicorn alone waits for its ``timeout`` (30 s) whatever the reason a worker is silent: a
    SIGSTOPped worker held every request on it, and the new connections the kernel kept giving
    its listening socket (one in as many as there are workers), for 31 s, then reset them. The
    timeout cannot be shorter for every silence: a worker whose loops each wait for a slow LDAP
    server is serving. And after the whole stack was stopped (Ctrl-Z) for longer than the timeout,
    the arbiter, resuming with its workers, found them all silent and killed them, resetting
    every connection in the moment the stack came back."""

    def __init__(self, app: BaseApplication) -> None:
        super().__init__(app)
        # From its start: a pause before its first check (a second after it forks the workers,
        # which may be serving by then) counts too.
        self._checked = time.monotonic()

    def murder_workers(self) -> None:
        now = time.monotonic()
        if now - self._checked > ARBITER_PAUSE_SECONDS:
            for worker in self.WORKERS.values():  # each gets its whole timeout again from now
                worker.tmp.notify()
                if isinstance(worker, OneAppWorker):
                    worker.process_beat.beat()
        self._checked = now
        process_timeout = getattr(self.app, "process_timeout", None)
        for pid, worker in list(self.WORKERS.items()):
            if not isinstance(worker, OneAppWorker) or process_timeout is None or worker.aborted:
                continue
            silent = now - worker.process_beat.last()
            if silent > process_timeout:
                self.log.critical("WORKER NOT RUNNING for %.0f s (pid:%s): killed", silent, pid)
                worker.aborted = True
                self.kill_worker(pid, signal.SIGKILL)
        super().murder_workers()


class HttpFront(BaseApplication):
    """gunicorn, configured in code, serving the ASGI app that ``load_app`` builds in each worker."""

    def __init__(self, load_app: Callable[[], Callable[..., Any]], host: str, port: int, workers: int,
                 on_worker_ready: Callable[[], None] = lambda: None, max_connections: int = MAX_CONNECTIONS,
                 worker_timeout: float = WORKER_TIMEOUT_SECONDS,
                 process_timeout: float = PROCESS_TIMEOUT_SECONDS) -> None:
        self._load_app = load_app
        self.process_timeout = process_timeout
        self._options: dict[str, Any] = {
            "bind": f"{host}:{port}",
            # A listening socket per worker (SO_REUSEPORT): the kernel spreads new connections
            # over the workers. One shared socket lets whichever worker wakes first accept every
            # connection waiting, and a few long kept-alive clients then load one worker (one core).
            "reuse_port": True,
            "workers": max(workers, 1),
            "worker_class": f"{__name__}.{OneAppWorker.__name__}",
            "worker_connections": max_connections,
            "keepalive": 5,
            "timeout": worker_timeout,
            "graceful_timeout": 5,  # Ctrl-C / SIGTERM: in-flight requests get this long
            "backlog": 512,
            "loglevel": "warning",  # the app logs what matters, as JSON
            "accesslog": None,
            "errorlog": "-",
            "logger_class": JsonLogger,  # JSON lines, as the app's
            "control_socket_disable": True,  # no $HOME/.gunicorn/gunicorn.ctl shared between stacks
            "post_worker_init": lambda worker: on_worker_ready(),
            "proc_name": "vmpool-http",
        }
        super().__init__()

    def load_config(self) -> None:
        for name, value in self._options.items():
            self.cfg.set(name, value)

    def load(self) -> Callable[..., Any]:
        return self._load_app()

    def run(self) -> None:
        """gunicorn's ``BaseApplication.run``, with ``_Arbiter``."""
        try:
            _Arbiter(self).run()
        except RuntimeError as error:
            print(f"\nError: {error}\n", file=sys.stderr, flush=True)
            sys.exit(1)
