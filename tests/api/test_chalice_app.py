"""Two threads calling one app each get an answer built from their own request (the local
front serves several requests of a worker on threads)."""

from __future__ import annotations

import contextlib
import threading
from concurrent.futures import ThreadPoolExecutor

from chalice import Chalice

from chalicelib.api.chalice_app import RequestLocalChalice
from local.gateway import Gateway


def echo_app(app: Chalice, inside: threading.Barrier) -> Chalice:
    @app.route("/echo")
    def echo() -> dict[str, str]:
        first = app.current_request.query_params["who"]  # type: ignore[union-attr]
        inside.wait(timeout=5)  # both requests are now inside the view at once
        return {"who": app.current_request.query_params["who"], "first": first}  # type: ignore[union-attr]

    return app


def answers_of_two_concurrent_callers(app: Chalice, unguarded: bool = False) -> list[bytes]:
    gateway = Gateway(app)
    if unguarded:  # as Lambda would call it, were it to call one app from two threads
        gateway._one_at_a_time = contextlib.nullcontext()
    with ThreadPoolExecutor(max_workers=2) as threads:
        calls = [threads.submit(gateway, "GET", f"/echo?who={who}", {}, b"", "127.0.0.1") for who in ("alice", "bob")]
        return [call.result()[2] for call in calls]


def test_each_thread_sees_its_own_request() -> None:
    app = echo_app(RequestLocalChalice(app_name="t", configure_logs=False), threading.Barrier(2))
    assert sorted(answers_of_two_concurrent_callers(app)) == [
        b'{"who":"alice","first":"alice"}', b'{"who":"bob","first":"bob"}']


def test_plain_chalice_mixes_them_up_which_is_why_the_front_needs_the_subclass() -> None:
    """The hazard the subclass removes (and why the Gateway lets a plain Chalice app serve one
    request at a time: tests/local/test_one_request_per_app.py)."""
    app = echo_app(Chalice(app_name="t", configure_logs=False), threading.Barrier(2))
    answers = answers_of_two_concurrent_callers(app, unguarded=True)
    assert any(b'"who":"alice","first":"bob"' in a or b'"who":"bob","first":"alice"' in a for a in answers)


def test_the_lambda_context_is_per_thread_too() -> None:
    app = RequestLocalChalice(app_name="t", configure_logs=False)
    app.lambda_context = "main"
    seen: list[object] = []
    worker = threading.Thread(target=lambda: seen.append(app.lambda_context))
    worker.start()
    worker.join()
    assert seen == [None] and app.lambda_context == "main"
