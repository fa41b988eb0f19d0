"""Child processes the local stack and the test fixtures start (redis-server, slapd...)."""

from __future__ import annotations

import ctypes
import gc
import os
import signal
import socket
import subprocess
import sys
import time
import weakref
from typing import Callable, TypeVar


def stop_process(process: subprocess.Popen | None, timeout: float = 10.0) -> None:
    """Ask a child to stop (SIGTERM), and kill it if it has not stopped within ``timeout``."""
    if process is None or process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


class StopRequests:
    """SIGTERM noted for a main loop that looks every few tenths of a second. The handler only
    sets a flag: Python runs a signal's handler in the main thread between two bytecodes, also
    inside the handler of an earlier signal (`kill` of make's process group and the parent-death
    signal as make dies arrive together). A handler that took a lock (``Event.set``) then waited
    for its own thread forever (the stack hung, its children gone), and under a stream of
    signals each blocked handler ran the next one until Python's recursion limit ended the
    process before its clean-up."""

    def __init__(self, signum: int = signal.SIGTERM) -> None:
        self.asked = False
        signal.signal(signum, self._note)

    def _note(self, signum: int, frame: object) -> None:
        self.asked = True

    def wait(self, seconds: float) -> bool:
        """Whether a stop was asked, after waiting ``seconds`` for one when none was yet (a signal
        does not cut the wait short: Python resumes the sleep after the handler)."""
        if not self.asked:
            time.sleep(seconds)
        return self.asked


_PR_SET_PDEATHSIG = 1


def die_with_parent(expected_parent: int, sig: int = signal.SIGTERM) -> None:
    """Ask Linux to send ``sig`` to this process when its parent dies (PR_SET_PDEATHSIG), so a
    SIGKILLed `make run` leaves no orphan serving; if the parent is already gone (it died before
    we asked), send it now. Safe between fork and exec: one system call, no allocation."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, sig)
    if os.getppid() != expected_parent:
        os.kill(os.getpid(), sig)


def release_free_memory() -> None:
    """Collect the garbage cycles left so far and hand the C heap's free pages back to the kernel
    (glibc's ``malloc_trim``; nothing where the C library has none), before this process forks.

    Importing the app leaves megabytes of freed memory in the C heap (compiling modules that
    have no cached bytecode: 2.6 MB when ``PYTHONDONTWRITEBYTECODE`` is set, 0.8 MB with the
    caches written), which glibc keeps for later allocations. A forked child maps every such
    page it inherits, so each process forked after it counted them once more in its RSS: the
    scheduler's process, gunicorn's arbiter and each HTTP worker (docs/performance.md, "Memory
    (item 6)", sixth round)."""
    gc.collect()
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (AttributeError, OSError):  # not glibc (musl, macOS): nothing to hand back this way
        return
    trim(0)


def stops_with_this_process(env: dict[str, str]) -> dict[str, str]:
    """``env`` for a ``python -m local.run`` this process starts that must stop when this process
    dies, SIGKILLed included (a test run killed on its timeout, a benchmark killed): local.run
    then asks for its parent's death signal, as it does under `make run` (MAKELEVEL set)."""
    return {**env, "MAKELEVEL": "1"}


def process_alive(pid: int) -> bool:
    """Whether process ``pid`` runs on this machine. A zombie (dead, not yet reaped by its parent)
    does not, unless other threads of it still run: a process's first thread shows as a zombie
    as soon as it exits, while its other threads may still be exiting (a SIGKILLed worker with
    its event loops) or running on, holding the process's descriptors, its listening socket
    among them."""
    if not os.path.isdir("/proc/self"):  # not Linux: ask the kernel (a zombie counts as alive)
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:  # another user's
            return True
        return True
    try:
        with open(f"/proc/{pid}/stat", "rb") as status:
            stat = status.read()
    except OSError:
        return False
    if stat.rsplit(b")", 1)[-1].split()[:1] != [b"Z"]:
        return True
    try:
        return len(os.listdir(f"/proc/{pid}/task")) > 1
    except OSError:  # reaped meanwhile
        return False

T = TypeVar("T")

PORT_TRIES = 3
"""Starts of a server whose port was taken meanwhile. free_port() finds a port nothing uses,
but any process of the machine may take it before the server binds it (an outgoing connection
gets one of these ports as its own): the server then refuses (the stack: "port N is in use"),
and is started again on another. Tests of that refusal start their server themselves."""


def on_a_free_port(choose_port: Callable[[], int], start: Callable[[int], T],
                   taken: Callable[[int], bool]) -> tuple[int, T]:
    """``start(port)`` on a port ``choose_port()`` finds free: the port and what it returned. The
    port is held (``PortHold``) while ``start`` runs, for a server that binds with SO_REUSEADDR
    (redis-server, gunicorn, werkzeug): a start takes seconds under load (the local stack imports
    the app first), and any process of the machine could take the port meanwhile, the kernel
    handing it to the next free_port() of another test (two gunicorns, SO_REUSEPORT, then share
    it silently). When ``start`` fails (raises, having stopped what it started) and
    ``taken(port)`` says it was refused because another process took the port anyway (it chose
    it before the hold), again on a fresh port (PORT_TRIES in all); any other failure is raised
    at once."""
    for attempt in range(1, PORT_TRIES + 1):
        port = choose_port()
        hold = PortHold()
        hold.hold(port)
        try:
            return port, start(port)
        except Exception:
            hold.release()  # ``taken`` asks whether another process holds it
            if attempt == PORT_TRIES or not taken(port):
                raise
        finally:
            hold.release()  # the server listens on it now
    raise AssertionError("unreachable: the last try returns or raises")


class PortHold:
    """Keeps a loopback TCP port from every other process while the server owning it is down and
    is to start again on it (a test's crash and restart): a socket bound with SO_REUSEADDR that
    never listens refuses connections, as a server that is down does, and makes other binds and
    the kernel's choice of a free port skip the port, while the server, binding with SO_REUSEADDR
    too (redis-server, Go's listeners, named, gunicorn), may take it. Without it, a restart failed
    when any process of the machine took the freed port in between."""

    def __init__(self) -> None:
        self._close: weakref.finalize | None = None

    def hold(self, port: int) -> None:
        """Hold ``port`` (nothing if already held, or if another process has taken it). The hold
        may stay while the server listens: it then keeps the port through a crash, before anyone
        has seen that the server died."""
        if self.held:
            return
        holder = socket.socket()
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            holder.bind(("127.0.0.1", port))
        except OSError:  # taken already: the server's start says so
            holder.close()
            return
        self._close = weakref.finalize(self, holder.close)  # closed with its owner at the latest

    @property
    def held(self) -> bool:
        """Whether a port is held."""
        return self._close is not None and self._close.alive

    def release(self) -> None:
        """Let the port go (the server listens on it again, or is gone for good)."""
        if self._close is not None:
            self._close()
