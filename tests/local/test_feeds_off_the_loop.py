"""A feed (``/status``, ``/summary``...: a read of every pool, ~90 ms of CPU at 1,000 pools, and a
wait for the computation other callers share) runs off the event loop that read it: the loop
serves its other connections meanwhile. Inline, a worker's loops each held by a /status reader
made a GET /vm/<host> wait for one of them (264 ms p50 behind four readers at 1,000 pools, 1 s
behind eight: docs/performance.md)."""

from __future__ import annotations

import json
import multiprocessing
import socket
from typing import Any

from chalice import Response

from chalicelib.api.chalice_app import RequestLocalChalice
from local.gateway import AsgiApp
from tests.local.stack import http_front, read_answer

WAIT = 20.0
"""How long a test waits for an answer that must come (a hang, not a speed, fails it)."""

entered = multiprocessing.get_context("fork").Event()
"""Set by the feed once its request is in the app (inherited by the forked front)."""
released = multiprocessing.get_context("fork").Event()
"""Set by the test: the held feed may answer."""
SMALL_WAIT = 5.0
"""How long the small request may take: well under the feed's hold, so an answer that waited for
the feed is no answer."""

probe = RequestLocalChalice(app_name="feed-probe", configure_logs=False)


@probe.route("/feed")
def feed() -> Response:
    entered.set()
    released.wait(WAIT)
    return Response({"feed": probe.current_request.query_params}, status_code=200,
                    headers={"Content-Type": "application/json"})


@probe.route("/vm/{name}")
def vm(name: str) -> Response:
    return Response({"vm": name}, status_code=200, headers={"Content-Type": "application/json"})


def one_loop_app() -> Any:
    return AsgiApp(probe, threads=1, offloaded=["/feed"])


def ask(connection: socket.socket, target: str) -> None:
    connection.sendall(f"GET {target} HTTP/1.1\r\nHost: x\r\n\r\n".encode())


def test_a_small_request_is_answered_while_a_feed_is_computed_on_the_same_loop() -> None:
    entered.clear()
    released.clear()
    with http_front(one_loop_app) as port:
        with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as held, \
                socket.create_connection(("127.0.0.1", port), timeout=SMALL_WAIT) as small:
            ask(held, "/feed?caller=held")
            assert entered.wait(WAIT), "the feed's request never reached the app"
            ask(small, "/vm/host1")
            try:
                answer = read_answer(small)  # before the feed ends: the loop was not held by it
            finally:
                released.set()
            assert answer.startswith(b"HTTP/1.1 200 ") and json.loads(answer.partition(b"\r\n\r\n")[2]) == {
                "vm": "host1"}, answer
            fed = read_answer(held)
            assert json.loads(fed.partition(b"\r\n\r\n")[2]) == {"feed": {"caller": "held"}}, fed
