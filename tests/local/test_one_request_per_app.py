"""The local HTTP front never lets a plain Chalice app serve two requests at once: Chalice keeps
the request being served on the app object, so two requests inside one app answer with one
request's data. (The service's own app keeps it per thread and is served on several threads:
tests/api/test_chalice_app.py.)

The probe's first request, once inside the app, is held there until the test has sent the second
request whole (so both are at the front at once, whatever the load), then waits up to
``HOLD_SECONDS`` more at a two-party barrier for the second to come in, before it reads
``app.current_request``. If the second ever runs inside the app meanwhile, both pass the barrier
and the first answers with the second's marker. With one request at a time per app the barrier
never fills (the second, let in only once the first has answered, does not wait at it) and each
request reads its own. The hold counts from when the second is already at the front, so a slow
machine cannot make the two miss each other: before, the first was held 1 s from when it came
in, and a second request sent more than 1 s later overlapped nothing (the test passed with the
guard gone).
"""

from __future__ import annotations

import json
import multiprocessing
import socket
import threading
from typing import Any

from chalice import Chalice

from local.gateway import AsgiApp
from tests.in_process_http import make_server
from tests.local.echo_probe import echo_answer, met_at
from tests.local.stack import http_front, read_answer

HOLD_SECONDS = 5.0
"""How long the first request waits in the app for the second once the second is at the front:
the second's way from there into the app is a few milliseconds of work, loaded machine or not."""

probe = Chalice(app_name="probe")
# Events of the fork context: the HTTP front serves the probe in a forked process, and these
# are shared with it (the barrier is only ever used inside the serving process).
_fork = multiprocessing.get_context("fork")
first_inside = _fork.Event()
second_at_front = _fork.Event()
together = threading.Barrier(2)


@probe.route("/held")
def held() -> dict[str, Any]:
    request = probe.current_request
    assert request is not None
    if (request.query_params or {}).get("marker") == "first":
        first_inside.set()
        assert second_at_front.wait(timeout=120), "the test never sent the second request"
        timeout = HOLD_SECONDS
    else:
        timeout = 0.0  # passes the barrier only if the first waits at it: it never waits itself
    return echo_answer(probe, met_at(together, timeout))


def ask(connection: socket.socket, marker: str) -> None:
    connection.sendall(f"GET /held?marker={marker} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())


def answer(connection: socket.socket) -> Any:
    head, _, body = read_answer(connection).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 "), head
    return json.loads(body)


def ask_the_second_while_the_first_is_inside(port: int) -> dict[str, Any]:
    """marker -> the probe's answer: the first request sent, the second sent whole only once the
    first is inside the app, and the first let go on only then."""
    first_inside.clear()
    second_at_front.clear()
    with socket.create_connection(("127.0.0.1", port), timeout=120) as first, \
            socket.create_connection(("127.0.0.1", port), timeout=120) as second:
        ask(first, "first")
        assert first_inside.wait(timeout=60), "the first request never reached the app"
        ask(second, "second")
        second_at_front.set()
        return {"first": answer(first), "second": answer(second)}



def test_two_concurrent_requests_never_share_an_app() -> None:
    with http_front(lambda: AsgiApp(probe)) as port:
        answers = ask_the_second_while_the_first_is_inside(port)
    assert answers == {"first": {"marker": "first", "overlapped": False},
                       "second": {"marker": "second", "overlapped": False}}


def test_the_in_process_server_never_lets_a_plain_app_serve_two_requests_at_once() -> None:
    """tests/in_process_http.make_server runs a thread per connection, each calling its Gateway:
    handed a plain Chalice app, both requests ran inside it at once (``overlapped``), and each
    could answer with the other's request. The Gateway now lets one request at a time into an
    app that keeps its request on the app object."""
    server = make_server(probe, "127.0.0.1", 0)
    serving = threading.Thread(target=server.serve_forever, daemon=True)
    serving.start()
    try:
        answers = ask_the_second_while_the_first_is_inside(server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()
        serving.join(10)
    assert answers == {"first": {"marker": "first", "overlapped": False},
                       "second": {"marker": "second", "overlapped": False}}
