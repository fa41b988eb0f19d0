"""A worker that is busy is not a worker that is stuck: gunicorn's arbiter kills a worker that has
not said it is alive for its ``timeout``, and a worker says so while its event loops turn, however
much work each turn does.

Before: the worker said so only from uvicorn's tick callback, which asks every tenth turn of the
loop (and then only once ``timeout / 2`` has passed since the last time). A loop whose turns each
ran many requests inline (200 kept-alive clients of the local stack on a loaded 2-core machine:
about 1.5 s a turn) went 30 s without saying so, and the arbiter killed it: every connection of
that worker reset, every request in flight on it lost, every 30 s.

Here each request holds its loop for a good part of a second (the view sleeps on the loop's own
thread, as a turn full of requests would), and one client keeps the loop busy for more than the
arbiter's timeout (4 s in this test). A loop that is stuck (one request holding it for longer
than the timeout) still gets its worker replaced.
"""

from __future__ import annotations

import json
import os
import socket
import time
from typing import Any

import pytest
from chalice import Chalice

from chalicelib.api.chalice_app import RequestLocalChalice
from local.gateway import AsgiApp
from tests.local.stack import http_front, read_answer, wait_for

app = Chalice(app_name="busy")
TURN_SECONDS = 0.6
"""How long each request holds the worker's one event loop."""
WORKER_TIMEOUT = 4
"""The arbiter's timeout in this test: a worker silent this long is killed."""


@app.route("/busy")
def busy() -> dict[str, Any]:
    time.sleep(TURN_SECONDS)  # on the event loop's thread: the loop does nothing else meanwhile
    return {"worker": os.getpid()}


@pytest.mark.slow
def test_a_worker_kept_busy_longer_than_the_arbiters_timeout_is_not_killed() -> None:
    workers: list[int] = []
    with http_front(lambda: AsgiApp(app), worker_timeout=WORKER_TIMEOUT) as port:
        with socket.create_connection(("127.0.0.1", port), timeout=30) as connection:
            for _ in range(round(2 * WORKER_TIMEOUT / TURN_SECONDS)):
                connection.sendall(b"GET /busy HTTP/1.1\r\nHost: x\r\n\r\n")
                try:
                    answer = read_answer(connection)
                except (ConnectionResetError, AssertionError) as lost:
                    raise AssertionError(f"the worker was killed after {len(workers)} answers: {lost!r}") from None
                workers.append(json.loads(answer.partition(b"\r\n\r\n")[2])["worker"])
    assert len(set(workers)) == 1, workers


looped = RequestLocalChalice(app_name="stuck")


@looped.route("/worker")
def worker() -> dict[str, Any]:
    return {"worker": os.getpid()}


@looped.route("/stuck")
def stuck() -> dict[str, Any]:
    time.sleep(10 * WORKER_TIMEOUT)  # one of the worker's loops stops turning
    return {}


ANSWER_SECONDS = 20
"""How long a request to a worker may take: only a safety net. It was 5 s, and the first request
(outside the retrying wait) failed the test with a bare TimeoutError when a loaded machine took
longer to have the fresh worker answer; the retried ones each gave up as early."""


def ask_worker(port: int) -> int:
    """The pid of the worker that answers; a connection the killed worker closed without an
    answer (a close, not only a reset) is a ConnectionError, which the test's wait asks again."""
    with socket.create_connection(("127.0.0.1", port), timeout=ANSWER_SECONDS) as connection:
        connection.sendall(b"GET /worker HTTP/1.1\r\nHost: x\r\n\r\n")
        try:
            answer = read_answer(connection)
        except AssertionError as closed:  # read_answer's "closed before a whole answer"
            raise ConnectionAbortedError(str(closed)) from None
        return int(json.loads(answer.partition(b"\r\n\r\n")[2])["worker"])


@pytest.mark.slow
def test_a_worker_with_a_stuck_loop_is_replaced() -> None:
    with http_front(lambda: AsgiApp(looped, threads=2), worker_timeout=WORKER_TIMEOUT) as port:
        first = ask_worker(port)
        with socket.create_connection(("127.0.0.1", port), timeout=5) as held:
            held.sendall(b"GET /stuck HTTP/1.1\r\nHost: x\r\n\r\n")
            # A request may reach the stuck loop, or the killed worker, and time out: asked again.
            wait_for(lambda: ask_worker(port) != first, 10 * WORKER_TIMEOUT + 2 * ANSWER_SECONDS,
                     "a new worker to serve")
