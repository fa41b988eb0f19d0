"""One request at a time inside one Chalice app, several at once across the front.

Chalice keeps the request being served on the app object, so two requests inside one plain app
would answer with one request's data: the local HTTP front never lets a plain Chalice app serve
two at once. The service's app (``RequestLocalChalice``) keeps the request per thread and is
served by several event loops per worker, each calling it on its own thread: requests of
different connections overlap (one waiting on Redis does not hold up the others), and each still
reads only its own data (also tests/api/test_chalice_app.py).

A probe app's view holds each request at a two-party barrier before it reads
``app.current_request``: two requests that run at once both pass it (overlapped); with one
request at a time the barrier never fills (it times out). Either way each request must answer
with its own marker. Eight clients on four loops: the kernel spreads their connections over the
loops' sockets, so some pair shares no loop (all eight on one loop: about one run in 16,000).
"""

from __future__ import annotations

import json
import threading
import urllib.request
from typing import Any, Callable

from chalice import Chalice

from chalicelib.api.chalice_app import RequestLocalChalice
from local.gateway import AsgiApp
from tests.local.stack import http_front


def echo_probe(app: Chalice, barrier_timeout: float) -> Chalice:
    """``app`` with a ``/echo`` view answering its request's ``marker`` and whether another
    request ran at the same time."""
    together = threading.Barrier(2)

    @app.route("/echo")
    def echo() -> dict[str, Any]:
        try:
            together.wait(timeout=barrier_timeout)
            overlapped = True
        except threading.BrokenBarrierError:
            together.reset()
            overlapped = False
        request = app.current_request
        assert request is not None
        return {"marker": (request.query_params or {}).get("marker"), "overlapped": overlapped}

    return app


plain_probe = echo_probe(Chalice(app_name="probe"), barrier_timeout=1.0)
request_local_probe = echo_probe(RequestLocalChalice(app_name="probe"), barrier_timeout=2.0)


def ask_at_once(make_app: Callable[[], AsgiApp], markers: list[str]) -> dict[str, Any]:
    """Each marker's answer, every marker asked by its own client at the same time."""
    answers: dict[str, Any] = {}
    with http_front(make_app) as port:

        def ask(marker: str) -> None:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/echo?marker={marker}", timeout=60) as response:
                answers[marker] = json.loads(response.read())

        clients = [threading.Thread(target=ask, args=(marker,)) for marker in markers]
        for client in clients:
            client.start()
        for client in clients:
            client.join(timeout=90)
    return answers


def test_two_concurrent_requests_never_share_an_app() -> None:
    answers = ask_at_once(lambda: AsgiApp(plain_probe), ["first", "second"])
    assert answers == {"first": {"marker": "first", "overlapped": False},
                       "second": {"marker": "second", "overlapped": False}}


def test_a_request_local_app_serves_connections_at_once_each_with_its_own_request() -> None:
    markers = [f"client-{number}" for number in range(8)]
    answers = ask_at_once(lambda: AsgiApp(request_local_probe, threads=4), markers)
    assert {marker: answer["marker"] for marker, answer in answers.items()} == {marker: marker for marker in markers}
    assert any(answer["overlapped"] for answer in answers.values()), answers
