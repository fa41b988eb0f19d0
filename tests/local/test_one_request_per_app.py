"""The local HTTP front never lets a plain Chalice app serve two requests at once: Chalice keeps
the request being served on the app object, so two requests inside one app answer with one
request's data. (The service's own app keeps it per thread and is served on several threads:
tests/api/test_chalice_app.py.)

A probe app's view holds each request at a two-party barrier before it reads
``app.current_request``: if a second request ever runs inside the same app meanwhile, both pass
the barrier and the first answers with the second's marker. With one request at a time per app
the barrier never fills (it times out) and each request reads its own.
"""

from __future__ import annotations

import json
import threading
import urllib.request
from typing import Any

from chalice import Chalice

from local.gateway import AsgiApp
from tests.local.stack import http_front

probe = Chalice(app_name="probe")
_together = threading.Barrier(2)


@probe.route("/echo")
def echo() -> dict[str, Any]:
    try:
        _together.wait(timeout=1.0)
        overlapped = True
    except threading.BrokenBarrierError:
        _together.reset()
        overlapped = False
    request = probe.current_request
    assert request is not None
    return {"marker": (request.query_params or {}).get("marker"), "overlapped": overlapped}


def test_two_concurrent_requests_never_share_an_app() -> None:
    answers: dict[str, Any] = {}
    with http_front(lambda: AsgiApp(probe)) as port:

        def ask(marker: str) -> None:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/echo?marker={marker}", timeout=30) as response:
                answers[marker] = json.loads(response.read())

        clients = [threading.Thread(target=ask, args=(marker,)) for marker in ("first", "second")]
        for client in clients:
            client.start()
        for client in clients:
            client.join(timeout=60)
    assert answers == {"first": {"marker": "first", "overlapped": False},
                       "second": {"marker": "second", "overlapped": False}}
