"""`make run WORKERS=0`: a loop of the in-process HTTP front stuck in a request is seen. The
default layout's arbiter ends a worker silent for 30 s; here a thread cannot be ended, so the
front says which loop and which request (once, as a JSON line, no token in it) and ``local.run``
exits for its supervisor to start it again. A fake clock stands in for the 30 s."""

from __future__ import annotations

import json
import socket
import threading
from typing import Any

import pytest

from chalicelib.clock import FakeClock
from local.http_front import WORKER_TIMEOUT_SECONDS, InProcessFront
from tests.local.stack import read_answer, wait_for
from tests.support import free_port

SECRET = "s3cr3t-t0ken-in-the-path"


class HangingApp:
    """Two loops; ``/hang...`` holds its loop's thread until released, as a handler stuck in a
    blocking call does (the app is called inline on its loop)."""

    def __init__(self, threads: int = 2) -> None:
        self.threads = threads
        self.entered = threading.Event()
        self.release = threading.Event()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        while (await receive()).get("more_body"):  # the whole body first, as the gateway reads it
            pass
        if scope["path"].startswith("/hang"):
            self.entered.set()
            self.release.wait(60)
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
        await send({"type": "http.response.body", "body": b"ok"})


@pytest.mark.parametrize(("path", "said_path"), [
    (f"/hang/api/v3/token/{SECRET}", "/hang/api/v3/token/<token>"),
    # Slashes in a row are one to the routes (local/gateway.py): this is GET /token/<t> too, a
    # client's base URL ending in "/" joined to "/token/<t>". Its token was logged.
    (f"/hang/api/v3/token//{SECRET}", "/hang/api/v3/token//<token>"),
], ids=["one slash", "two slashes"])
def test_a_loop_stuck_in_a_request_is_said_once_with_its_request_and_no_token(
        capfd: pytest.CaptureFixture[str], path: str, said_path: str) -> None:
    app = HangingApp()
    clock = FakeClock(1000.0)
    port = free_port()
    front = InProcessFront(lambda: app, "127.0.0.1", port, clock=clock.now)
    servers = [front._server, *(loop.server for loop in front._loops)]
    hung: socket.socket | None = None

    def advance(seconds: float) -> None:
        """The clock moves on, and the loop that still turns notices (ticks at the new time)."""
        clock.advance(seconds)
        wait_for(lambda: sum(server.ticked >= clock.now() for server in servers) == 1, 20, "the free loop to turn")

    try:
        assert front.start(timeout=30)
        with socket.create_connection(("127.0.0.1", port), timeout=10) as connection:
            connection.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            assert read_answer(connection).startswith(b"HTTP/1.1 200")
        hung = socket.create_connection(("127.0.0.1", port), timeout=10)
        hung.sendall(f"DELETE {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        assert app.entered.wait(20)

        assert front.stuck_loop() is None
        # The whole process stopped for a minute (Ctrl-Z, then fg): not the loop's silence.
        advance(60)
        assert front.stuck_loop() is None
        for _ in range(int(WORKER_TIMEOUT_SECONDS)):
            advance(1)
            assert front.stuck_loop() is None  # silent for up to the timeout: not yet
        advance(1)
        stuck = front.stuck_loop()
        assert stuck is not None
        assert (stuck.method, stuck.path) == ("DELETE", said_path)
        assert stuck.silent_seconds > WORKER_TIMEOUT_SECONDS
        advance(1)
        assert front.stuck_loop() is None  # said once

        lines = [json.loads(line) for line in capfd.readouterr().err.splitlines() if line.startswith("{")]
        said = [line for line in lines if line.get("logger") == "vmpool.http_front.watchdog"]
        assert len(said) == 1, lines
        assert said[0]["level"] == "CRITICAL" and said[0]["loop"] == stuck.loop, said
        assert said[0]["method"] == "DELETE" and said[0]["path"] == said_path, said
        assert SECRET not in json.dumps(lines)
    finally:
        app.release.set()
        if hung is not None:
            hung.close()
        front.stop(timeout=10)


def test_the_request_said_is_the_one_stuck_when_another_ran_on_its_loop_while_it_waited_for_its_body() -> None:
    """One loop, two connections: the request that hangs waited for its body while another
    request was served on the same loop; the one named is the one stuck, not none."""
    app = HangingApp(threads=1)
    clock = FakeClock(1000.0)
    port = free_port()
    front = InProcessFront(lambda: app, "127.0.0.1", port, clock=clock.now)
    slow: socket.socket | None = None
    try:
        assert front.start(timeout=30)
        slow = socket.create_connection(("127.0.0.1", port), timeout=10)
        slow.sendall(b"POST /hang/vm HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\r\nab")
        with socket.create_connection(("127.0.0.1", port), timeout=10) as other:
            other.sendall(b"GET /api/v3/status HTTP/1.1\r\nHost: x\r\n\r\n")
            assert read_answer(other).startswith(b"HTTP/1.1 200")
        slow.sendall(b"cd")
        assert app.entered.wait(20)
        stuck = None
        for _ in range(int(WORKER_TIMEOUT_SECONDS) + 1):
            clock.advance(1)
            stuck = front.stuck_loop() or stuck
        assert stuck is not None
        assert (stuck.method, stuck.path) == ("POST", "/hang/vm")
    finally:
        app.release.set()
        if slow is not None:
            slow.close()
        front.stop(timeout=10)
