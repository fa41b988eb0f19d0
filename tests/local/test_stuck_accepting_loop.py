"""A worker's first loop accepts the connections for all its loops and serves requests too. Stuck
in one (a login while the LDAP directory is stopped, a request while Redis is), it accepted
nothing more: every new connection waited for that request, though the other loops were idle.
With `WORKERS=0` that is the whole front (a GET /status waited 4.3 s behind a login held 5 s by
a stopped directory, up to ``login_timeout``, 20 s, by default); in the default layout, the
connections the kernel gives that worker. Now the other loops accept for it once it has not
turned for ``ACCEPT_TAKEOVER_SECONDS`` (a fake clock stands in for them here).

Once the watchdog has said that loop is stuck (`WORKERS=0`: local.run then exits 3), stopping
the front no longer waits for it: local.run exited 10.7 s after the watchdog's line (0.7 s now),
its listening socket open meanwhile, new connections queued there and then reset."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from typing import Any, Callable, Iterator

import pytest

from chalicelib.clock import FakeClock
from local.http_front import ACCEPT_TAKEOVER_SECONDS, WORKER_TIMEOUT_SECONDS, InProcessFront
from tests.local.stack import http_front, read_answer
from tests.local.test_one_process_watchdog import HangingApp
from tests.support import free_port


class WhereItHangs(HangingApp):
    """``HangingApp``, noting the thread (the loop) its ``/hang`` request holds."""

    def __init__(self, threads: int = 2) -> None:
        super().__init__(threads)
        self.hung_on = ""

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["path"].startswith("/hang"):
            self.hung_on = threading.current_thread().name
        await super().__call__(scope, receive, send)


class Connections:
    """The test's client connections to ``port``, closed at the end."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.opened: list[socket.socket] = []

    def connect(self) -> socket.socket:
        self.opened.append(socket.create_connection(("127.0.0.1", self.port), timeout=20))
        return self.opened[-1]

    def close(self) -> None:
        for connection in self.opened:
            connection.close()


def hang_on_the_accepting_loop(app: WhereItHangs, connections: Connections) -> socket.socket:
    """A kept-alive client on the other loop (the accepting loop takes a connection last), so that
    the next connection is the accepting loop's own; its request hangs there. The kept one."""
    kept = connections.connect()
    kept.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert read_answer(kept).startswith(b"HTTP/1.1 200")
    connections.connect().sendall(b"GET /hang HTTP/1.1\r\nHost: x\r\n\r\n")
    assert app.entered.wait(20)
    assert app.hung_on == "vmpool-http-loop-0", app.hung_on
    return kept


@contextlib.contextmanager
def hanging_front() -> Iterator[tuple[WhereItHangs, FakeClock, int, InProcessFront, Connections]]:
    """A started in-process front of two loops over a ``WhereItHangs`` app on a fake clock, with
    the test's connections; on leaving, the hang is released, the connections closed and the
    front stopped."""
    app = WhereItHangs(threads=2)
    clock = FakeClock(1000.0)
    port = free_port()
    front = InProcessFront(lambda: app, "127.0.0.1", port, clock=clock.now)
    connections = Connections(port)
    try:
        assert front.start(timeout=30)
        yield app, clock, port, front, connections
    finally:
        app.release.set()
        connections.close()
        front.stop(timeout=10)


def test_new_connections_are_served_while_the_accepting_loop_is_stuck_in_a_request() -> None:
    with hanging_front() as (app, clock, _port, _front, connections):
        connect = connections.connect
        kept = hang_on_the_accepting_loop(app, connections)

        clock.advance(ACCEPT_TAKEOVER_SECONDS + 0.5)  # the accepting loop has not turned since
        fresh = connect()
        fresh.sendall(b"GET /api/v3/status HTTP/1.1\r\nHost: x\r\n\r\n")
        assert read_answer(fresh).startswith(b"HTTP/1.1 200")  # before: unaccepted until the hang ended
        kept.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert read_answer(kept).startswith(b"HTTP/1.1 200")


def test_a_front_whose_accepting_loop_was_said_stuck_stops_without_waiting_for_it() -> None:
    with hanging_front() as (app, clock, port, front, connections):
        hang_on_the_accepting_loop(app, connections)
        stuck = None
        for _ in range(int(WORKER_TIMEOUT_SECONDS) + 1):
            clock.advance(1)
            stuck = front.stuck_loop() or stuck
        assert stuck is not None and stuck.loop == "vmpool-http-loop-0", stuck

        front.stop(timeout=5)  # the hang still held: it ends only with the process
        assert not app.release.is_set()
        try:
            refused = socket.create_connection(("127.0.0.1", port), timeout=5)
        except ConnectionRefusedError:
            pass
        else:  # before: stop() waited for the stuck loop, which alone closes the listening socket
            refused.close()
            raise AssertionError("the front still listens once stopped")
        assert not any(loop.is_alive() for loop in front._loops)  # the other loop stopped


def test_a_new_connection_is_not_given_to_a_loop_held_by_a_request() -> None:
    """The accepting loop gives a connection to the loop holding the fewest. With the other loop
    held by a request and the two holding as many, the new connection went to the held loop (the
    accepting one comes last among equals) and waited for that request: a GET /status behind a
    login to a stopped directory, on a stack whose accepting loop was free."""
    with hanging_front() as (app, clock, _port, front, connections):
        accepting, other = front._server, front._loops[0].server
        first = connections.connect()  # the other loop's (the accepting loop last among equals)
        first.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert read_answer(first).startswith(b"HTTP/1.1 200")
        kept = connections.connect()  # the accepting loop's: it holds fewer
        kept.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert read_answer(kept).startswith(b"HTTP/1.1 200")
        first.close()
        wait_until(lambda: other.held() == 0, "the other loop to let its connection go")
        connections.connect().sendall(b"GET /hang HTTP/1.1\r\nHost: x\r\n\r\n")  # the other loop's
        assert app.entered.wait(20)
        assert app.hung_on != "vmpool-http-loop-0" and (accepting.held(), other.held()) == (1, 1)

        clock.advance(ACCEPT_TAKEOVER_SECONDS + 0.5)  # the held loop has not turned since
        wait_until(lambda: accepting.ticked >= clock.now(), "the accepting loop to turn")
        fresh = connections.connect()
        fresh.sendall(b"GET /api/v3/status HTTP/1.1\r\nHost: x\r\n\r\n")
        assert read_answer(fresh).startswith(b"HTTP/1.1 200")  # before: no answer until the hang ended


def wait_until(condition: Callable[[], bool], what: str) -> None:
    """Poll ``condition`` (the front's loops run on their own threads) for up to 20 s."""
    deadline = time.monotonic() + 20
    while not condition():
        assert time.monotonic() < deadline, f"waited 20 s for {what}"
        time.sleep(0.01)


class BlockedOnASocket:
    """For the default layout's worker (a forked process): ``/hang/<port>`` connects to ``port``
    on loopback, says which loop (thread) it is on, and blocks reading until the test closes
    that connection: a real blocking call, released from outside the worker."""

    threads = 2

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        while (await receive()).get("more_body"):
            pass
        if scope["path"].startswith("/hang/"):
            with socket.create_connection(("127.0.0.1", int(scope["path"].rsplit("/", 1)[1])), timeout=60) as held:
                held.sendall(threading.current_thread().name.encode() + b"\n")
                held.recv(1)
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
        await send({"type": "http.response.body", "body": b"ok"})


@pytest.mark.slow
def test_a_default_layout_worker_accepts_on_its_other_loop_while_its_first_is_blocked() -> None:
    with http_front(BlockedOnASocket) as port, socket.create_server(("127.0.0.1", 0)) as release:
        connections = Connections(port)
        try:
            kept = connections.connect()  # on the other loop: the next connection is the first loop's own
            kept.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            assert read_answer(kept).startswith(b"HTTP/1.1 200")
            connections.connect().sendall(f"GET /hang/{release.getsockname()[1]} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            release.settimeout(20)
            blocked, _ = release.accept()
            with blocked:
                assert blocked.makefile().readline().strip() == "MainThread"  # the worker's first loop
                fresh = connections.connect()
                fresh.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
                # Before: unaccepted until the blocked request ended (here, never: the read times out).
                assert read_answer(fresh).startswith(b"HTTP/1.1 200")
        finally:
            connections.close()
