"""The service's app (request-local) is served by several event loops per worker, each calling
it on its own thread: requests of different connections overlap (one waiting on Redis does not
hold up the others), and each request still reads only its own data.

A probe app's view holds each request at a two-party barrier before it reads
``app.current_request``: two requests that run at once both pass it (overlapped), and each must
still answer with its own marker.

A worker gives each new connection to the loop holding the fewest: as many connections as it
has loops are each served at once, a request held in the app on one connection holding up no
other connection's request. (With a listening socket per loop the kernel hashed connections over
the loops, and some loops served two or three connections one request after another while
others idled.)
"""

from __future__ import annotations

import json
import socket
import threading
from typing import Any

from chalicelib.api.chalice_app import RequestLocalChalice
from local.gateway import AsgiApp
from tests.local.echo_probe import add_echo_probe, ask_at_once
from tests.local.stack import http_front, read_answer

probe = RequestLocalChalice(app_name="probe")
# Long enough for a second request to arrive on a machine under heavy load (8 clients pair up
# at the barrier: the hold is spent only when no other request is in the app).
add_echo_probe(probe, hold_seconds=10.0)
CLIENTS = 8
LOOPS = 8
_every_loop = threading.Barrier(LOOPS)


def test_a_request_local_app_serves_connections_at_once_each_with_its_own_request() -> None:
    markers = [f"client-{number}" for number in range(CLIENTS)]
    with http_front(lambda: AsgiApp(probe, threads=4)) as port:
        answers = ask_at_once(port, markers, timeout=90)
    assert {marker: answer["marker"] for marker, answer in answers.items()} == {marker: marker for marker in markers}
    assert any(answer["overlapped"] for answer in answers.values()), answers


@probe.route("/every-loop")
def every_loop() -> dict[str, Any]:
    """Answers once as many requests as the worker has loops are in the app at the same time
    (``together``), or after 10 s without them (not together: some request waited for another)."""
    try:
        _every_loop.wait(timeout=10.0)
    except threading.BrokenBarrierError:
        return {"together": False}
    return {"together": True}


def test_as_many_connections_as_loops_are_each_served_at_once() -> None:
    connections: list[socket.socket] = []
    with http_front(lambda: AsgiApp(probe, threads=LOOPS)) as port:
        try:
            for _ in range(LOOPS):  # every request is sent before any is answered
                connection = socket.create_connection(("127.0.0.1", port), timeout=60)
                connections.append(connection)
                connection.sendall(b"GET /every-loop HTTP/1.1\r\nHost: x\r\n\r\n")
            answers = [read_answer(connection) for connection in connections]
        finally:
            for connection in connections:
                connection.close()
    assert [json.loads(answer.partition(b"\r\n\r\n")[2]) for answer in answers] == [{"together": True}] * LOOPS
