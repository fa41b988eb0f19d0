"""A probe of whether requests run inside one app at the same time, and with whose data.

``add_echo_probe`` gives an app ``/echo?marker=...``: each request waits at a two-party barrier
(the app's own) before it reads ``app.current_request``, so two requests in the app at once
both pass it (``overlapped``), and each answers the marker it read. ``ask_at_once`` sends one
request per marker, each from its own client thread, all at once.
"""

from __future__ import annotations

import json
import threading
import urllib.request
from typing import Any, Sequence

from chalice import Chalice


def add_echo_probe(app: Chalice, hold_seconds: float) -> None:
    """Route ``/echo`` on ``app``: held up to ``hold_seconds`` for a second request, then
    answers ``{"marker": <its query's marker>, "overlapped": <whether one came>}``."""
    together = threading.Barrier(2)

    @app.route("/echo")
    def echo() -> dict[str, Any]:
        return echo_answer(app, met_at(together, hold_seconds))


def met_at(together: threading.Barrier, timeout: float) -> bool:
    """Whether another request met this one at the two-party ``together`` within ``timeout`` s."""
    try:
        together.wait(timeout=timeout)
        return True
    except threading.BrokenBarrierError:
        together.reset()
        return False


def echo_answer(app: Chalice, overlapped: bool) -> dict[str, Any]:
    """The probe's answer: the marker of the request ``app`` holds now (the other's, if one came
    in meanwhile) and whether one overlapped."""
    request = app.current_request
    assert request is not None
    return {"marker": (request.query_params or {}).get("marker"), "overlapped": overlapped}


def ask_at_once(port: int, markers: Sequence[str], timeout: float) -> dict[str, Any]:
    """marker -> the probe's answer, each asked by its own client thread, all started together."""
    answers: dict[str, Any] = {}

    def ask(marker: str) -> None:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/echo?marker={marker}", timeout=timeout) as response:
            answers[marker] = json.loads(response.read())

    clients = [threading.Thread(target=ask, args=(marker,)) for marker in markers]
    for client in clients:
        client.start()
    for client in clients:
        client.join(timeout=timeout * 1.5)
    return answers
