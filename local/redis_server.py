"""Start a private redis-server for the local stack and the tests.

It listens on loopback on a port of its own (a free one when none is asked for), keeps its data in
a directory of its own, and stops with the process that started it.

With ``persist`` it keeps an append-only file, written (into the kernel's page cache) before Redis
answers each write, so a ``kill -9`` of Redis loses nothing it acknowledged: ``appendfsync no``
(``APPEND_FSYNC``), not ``everysec``. In ``everysec`` mode Redis postpones the write itself, for
up to two seconds, while its background fsync of the last second is still running, and answers
meanwhile: a ``kill -9`` then lost writes it had acknowledged (measured: within a second of
writing 20 KB values, with no other load on the disk). ``always`` closes that too, and a machine
crash's window, but cost from +2.6 ms per checkout to 30 times fewer checkouts/s on a busy disk
(docs/reliability.md). The 60-second snapshots used before lost every checkout of the last
minute on a crash, and the same VMs were handed out again.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import redis

from local.processes import PortHold, die_with_parent, stop_process

APPEND_FSYNC = "no"
"""Redis's ``appendfsync`` for a persistent server: the kernel writes the file to disk on its own
(within about 30 s), Redis never holds a write back (see the module's docstring)."""


LOG_BYTES = 1_000_000
"""A redis-server log larger than this when the server starts is moved to ``<name>.1`` (replacing
the one before): Redis never rotates its log itself, and a stack runs for months."""


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def listened_on(port: int) -> bool:
    """Whether another socket listens on ``port`` on loopback: a bind that a port left in
    TIME_WAIT would allow fails. (Not a connection: a program that never accepts them, its queue
    full, looked like no program at all.)"""
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


class RedisServer:
    """A redis-server child process. Use as a context manager or call start()/stop()."""

    def __init__(self, port: int | None = None, data_dir: Path | None = None, persist: bool = False,
                 replica_of: int | None = None, appendfsync: str = APPEND_FSYNC, die_with_parent: bool = False,
                 pass_fds: tuple[int, ...] = (), log_file: Path | None = None) -> None:
        self.port = port or free_port()
        self._port_asked = port is not None
        """The caller named the port: never move to another one. Else a first start that finds
        the free port taken meanwhile (another process bound it first) tries a fresh one."""
        self._own_dir = data_dir is None
        self.data_dir = Path(data_dir or tempfile.mkdtemp(prefix="vmpool-redis-"))
        self.persist = persist
        self.replica_of = replica_of
        """A port on loopback to replicate from (a primary, or a proxy standing for the network)."""
        self.appendfsync = appendfsync
        self.stop_with_parent = die_with_parent
        """SIGTERM the server when the process that started it dies (the local stack's Redis)."""
        self.pass_fds = pass_fds
        """Descriptors the server keeps open for as long as it runs (the local stack's lock on its
        state directory: no second stack starts on the data while this server still writes it)."""
        self.log_file = log_file
        """Where the server logs at notice level (its starts, loads, AOF rewrites, warnings, a
        crash's report); None: nowhere, warnings only."""
        self.process: subprocess.Popen[bytes] | None = None
        self._started = False
        self._port_hold = PortHold()
        """Holds the port from its choice until stop(): redis-server binds it beside the hold
        (SO_REUSEADDR), so no other process takes it between free_port() and redis-server's bind,
        nor once the server died, before anyone noticed (a crash under `make run`, whose
        ``RedisRestarts`` looks twice a second, and starts it again on this port only)."""
        self._port_hold.hold(self.port)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> "RedisServer":
        """Start redis-server and wait until it answers. It must be ours that answers: whatever
        else listens on the port (another stack's Redis, a system one) is never taken for it.
        Raises RuntimeError when it does not start (its port taken, its data unreadable)."""
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed (apt-get install redis-server)")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        first_start = self.process is None and not self._started
        self._port_hold.hold(self.port)  # again after a stop()
        for _ in range(3):
            if self._start_once(binary, timeout):
                self._started = True
                return self
            if self._port_asked or not first_start:
                break
            # Another server took it before the hold (both chose it at once): a fresh one.
            self._port_hold.release()
            self.port = free_port()
            self._port_hold.hold(self.port)
        why = ("something else listens on it" if listened_on(self.port)
               else f"it exited or did not answer within {timeout:.0f} s; its data: {self.data_dir}")
        if not self._started:
            self.stop()  # a directory of its own goes too
        raise RuntimeError(f"redis-server did not start on port {self.port}: {why}")

    @staticmethod
    def _rotate_log(log_file: Path) -> None:
        """Keep the log bounded (two files of about LOG_BYTES) across starts."""
        with contextlib.suppress(FileNotFoundError):
            if log_file.stat().st_size > LOG_BYTES:
                log_file.replace(log_file.with_name(log_file.name + ".1"))

    def _start_once(self, binary: str, timeout: float) -> bool:
        """One redis-server process; whether it serves (else it is stopped)."""
        # A data directory kept by an older version has a snapshot but no append-only file:
        # Redis started with appendonly would ignore the snapshot. Load it, then switch on.
        migrate = (self.persist and (self.data_dir / "dump.rdb").exists()
                   and not (self.data_dir / "appendonlydir").exists())
        args = [
            binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.data_dir),
            "--save", "", "--appendonly", "yes" if self.persist and not migrate else "no",
            "--appendfsync", self.appendfsync,
            "--protected-mode", "yes", "--daemonize", "no",
        ]
        if self.log_file is not None:
            self._rotate_log(self.log_file)
            # Absolute: redis-server resolves it after changing to its --dir.
            args += ["--loglevel", "notice", "--logfile", str(self.log_file.resolve())]
        else:
            args += ["--loglevel", "warning"]
        if self.replica_of is not None:
            args += ["--replicaof", "127.0.0.1", str(self.replica_of)]
        parent = os.getpid()
        process = self.process = subprocess.Popen(
            args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, pass_fds=self.pass_fds,
            preexec_fn=(lambda: die_with_parent(parent)) if self.stop_with_parent else None,
        )
        # Timeouts for both: a program that took the port may accept and never answer.
        client = redis.Redis(port=self.port, socket_connect_timeout=0.2, socket_timeout=0.5)
        deadline = time.monotonic() + timeout
        try:
            while True:
                try:
                    # Its own pid in INFO: a Redis already on the port answers PING too.
                    if client.ping() and client.info("server").get("process_id") == process.pid \
                            and (not migrate or self._switch_to_append_only(client, deadline)):
                        return True
                except redis.RedisError:
                    pass  # not answering yet, or not a Redis that answers: ours until it exits
                if process.poll() is not None or time.monotonic() > deadline:
                    stop_process(process)
                    self.process = None
                    return False
                time.sleep(0.02)
        finally:
            client.close()

    @staticmethod
    def _switch_to_append_only(client: redis.Redis, deadline: float) -> bool:
        """Turn the append-only file on (Redis writes it from the data loaded) and wait for it."""
        client.config_set("appendonly", "yes")
        while time.monotonic() < deadline:
            info = client.info("persistence")
            if info.get("aof_enabled") == 1 and not info.get("aof_rewrite_in_progress") \
                    and not info.get("aof_rewrite_scheduled"):
                return True
            time.sleep(0.02)
        return False

    def kill(self) -> None:
        """SIGKILL, as a crash: nothing is flushed on the way out. ``start()`` brings it back, on
        the same port, which stays held meanwhile (``PortHold``), as after any crash."""
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None

    def stop(self, restart: bool = False) -> None:
        """SIGTERM (Redis saves on the way out) and wait. ``restart``: ``start()`` follows, on the
        same port, held meanwhile; else a data directory of its own is removed."""
        stop_process(self.process)
        self.process = None
        if restart:
            return  # the port stays held
        self._port_hold.release()
        if self._own_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def __enter__(self) -> "RedisServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
