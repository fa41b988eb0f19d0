"""The service's app (request-local) is served by several event loops per worker, each calling
it on its own thread: requests of different connections overlap (one waiting on Redis does not
hold up the others), and each request still reads only its own data.

A probe app's view holds each request at a two-party barrier before it reads
``app.current_request``: two requests that run at once both pass it (overlapped), and each must
still answer with its own marker. Eight clients on four loops: the kernel spreads their
connections over the loops' sockets, so some pair shares no loop (all eight on one loop: about
one run in 16,000).
"""

from __future__ import annotations

import json
import threading
import urllib.request
from typing import Any

from chalicelib.api.chalice_app import RequestLocalChalice
from local.gateway import AsgiApp
from tests.local.stack import http_front

probe = RequestLocalChalice(app_name="probe")
_together = threading.Barrier(2)
CLIENTS = 8


@probe.route("/echo")
def echo() -> dict[str, Any]:
    try:
        _together.wait(timeout=2.0)
        overlapped = True
    except threading.BrokenBarrierError:
        _together.reset()
        overlapped = False
    request = probe.current_request
    assert request is not None
    return {"marker": (request.query_params or {}).get("marker"), "overlapped": overlapped}


def test_a_request_local_app_serves_connections_at_once_each_with_its_own_request() -> None:
    answers: dict[str, Any] = {}
    with http_front(lambda: AsgiApp(probe, threads=4)) as port:

        def ask(marker: str) -> None:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/echo?marker={marker}", timeout=60) as response:
                answers[marker] = json.loads(response.read())

        clients = [threading.Thread(target=ask, args=(f"client-{number}",)) for number in range(CLIENTS)]
        for client in clients:
            client.start()
        for client in clients:
            client.join(timeout=90)
    assert {marker: answer["marker"] for marker, answer in answers.items()} == {
        f"client-{number}": f"client-{number}" for number in range(CLIENTS)}
    assert any(answer["overlapped"] for answer in answers.values()), answers
