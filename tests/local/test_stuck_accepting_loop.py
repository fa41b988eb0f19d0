"""A worker's first loop accepts the connections for all its loops and serves requests too. Stuck
in one (a login while the LDAP directory is stopped, a request while Redis is), it accepted
nothing more: every new connection waited for that request, though the other loops were idle.
With `WORKERS=0` that is the whole front (a GET /status waited 4.3 s behind a login held 5 s by
a stopped directory, up to ``login_timeout``, 20 s, by default); in the default layout, the
connections the kernel gives that worker. Now the other loops accept for it once it has not
turned for ``ACCEPT_TAKEOVER_SECONDS`` (a fake clock stands in for them here)."""

from __future__ import annotations

import socket
import threading
from typing import Any

from local.http_front import ACCEPT_TAKEOVER_SECONDS, InProcessFront
from tests.local.stack import read_answer
from tests.local.test_one_process_watchdog import FakeClock, HangingApp
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


def test_new_connections_are_served_while_the_accepting_loop_is_stuck_in_a_request() -> None:
    app = WhereItHangs(threads=2)
    clock = FakeClock()
    port = free_port()
    front = InProcessFront(lambda: app, "127.0.0.1", port, clock=clock)
    opened: list[socket.socket] = []

    def connect() -> socket.socket:
        opened.append(socket.create_connection(("127.0.0.1", port), timeout=20))
        return opened[-1]

    try:
        assert front.start(timeout=30)
        # A kept-alive client on the other loop (the accepting loop takes a connection last)...
        kept = connect()
        kept.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert read_answer(kept).startswith(b"HTTP/1.1 200")
        # ...so the next connection is the accepting loop's own, and its request hangs there.
        connect().sendall(b"GET /hang HTTP/1.1\r\nHost: x\r\n\r\n")
        assert app.entered.wait(20)
        assert app.hung_on == "vmpool-http-loop-0", app.hung_on

        clock.now += ACCEPT_TAKEOVER_SECONDS + 0.5  # the accepting loop has not turned since
        fresh = connect()
        fresh.sendall(b"GET /api/v3/status HTTP/1.1\r\nHost: x\r\n\r\n")
        assert read_answer(fresh).startswith(b"HTTP/1.1 200")  # before: unaccepted until the hang ended
        kept.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert read_answer(kept).startswith(b"HTTP/1.1 200")
    finally:
        app.release.set()
        for connection in opened:
            connection.close()
        front.stop(timeout=10)
