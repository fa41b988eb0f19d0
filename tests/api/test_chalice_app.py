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


# --- the binary-type checks, kept per content type, answer as Chalice's own -------------------

BINARY_CASES = [
    # (answer's headers, request's Accept)
    ({"Content-Type": "application/json"}, None),
    ({"content-type": "text/html; charset=utf-8"}, "text/html"),
    ({"Content-Type": "image/png"}, None),  # binary without an Accept naming it: Chalice's 400
    ({"Content-Type": "image/png"}, "image/png"),
    ({"Content-Type": "IMAGE/PNG"}, "text/html, */*;q=0.1"),
    ({"Content-Type": "application/octet-stream"}, "application/json"),
    ({"Content-Type": "text/plain", "content-type": "image/gif"}, "image/gif"),  # the last one counts
    ({}, None),
    ({"Content-Type": ["image/png"]}, None),  # a multi-value header: not the answer's type
]


def _serve(app_class: type[Chalice], headers: dict, accept: str | None,
           **route_options: object) -> tuple[int, dict, bytes]:
    app = app_class(app_name="binary")

    @app.route("/x", **route_options)
    def x() -> object:
        from chalice import Response
        binary = any(kind in str(headers).lower() for kind in ("image", "octet"))
        return Response(body=b"\x89PNG" if binary else "body", headers=dict(headers))

    request_headers = {} if accept is None else {"accept": accept}
    return Gateway(app)("GET", "/x", request_headers, b"", "127.0.0.1")


ROUTE_OPTIONS = [
    {},  # Chalice's default: JSON bodies only
    {"content_types": ["*/*"]},  # any body, as every route of the service (RequestLocalChalice's lean way)
    {"content_types": ["*/*"], "cors": True},
]


def test_binary_answers_are_chalices_own() -> None:
    for options in ROUTE_OPTIONS:
        for headers, accept in BINARY_CASES:
            assert _serve(RequestLocalChalice, headers, accept, **options) == \
                _serve(Chalice, headers, accept, **options), (headers, accept, options)
