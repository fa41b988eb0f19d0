"""A failure inside the local gateway (a bug of ours) is answered like the app's own: a JSON 500
that says nothing of the server's inside, never uvicorn's text/plain "Internal Server Error"."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from chalice import Chalice

from local.gateway import AsgiApp


def test_an_exception_in_the_gateway_is_a_json_500(monkeypatch: pytest.MonkeyPatch,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    asgi = AsgiApp(Chalice(app_name="failing"))

    def failing(*args: Any) -> Any:
        raise ValueError("secret inside")

    monkeypatch.setattr(asgi, "gateway", failing)
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "GET", "path": "/x", "raw_path": b"/x", "query_string": b"", "headers": [],
             "client": ("127.0.0.1", 1)}
    asyncio.run(asgi(scope, receive, send))
    start, body = sent
    assert start["status"] == 500
    assert (b"content-type", b"application/json") in [(name.lower(), value) for name, value in start["headers"]]
    assert json.loads(body["body"]) == {"ok": False, "error": "internal error"}
    assert "secret inside" in caplog.text  # the log has what went wrong; the answer does not


def test_a_304_goes_out_without_a_content_length(monkeypatch: pytest.MonkeyPatch) -> None:
    """A 304 answers a conditional GET (the dashboard's If-None-Match): a Content-Length there must
    be the 200's (RFC 9110, 8.6); the front sent ``content-length: 0``, which a cache updating its
    stored answer's headers from the 304 reads as an empty answer."""
    asgi = AsgiApp(Chalice(app_name="revalidated"))
    monkeypatch.setattr(asgi, "gateway", lambda *args: (304, {"ETag": '"t"'}, b""))
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "GET", "path": "/x", "raw_path": b"/x", "query_string": b"",
             "headers": [(b"if-none-match", b'"t"')], "client": ("127.0.0.1", 1)}
    asyncio.run(asgi(scope, receive, send))
    start, body = sent
    assert start["status"] == 304 and body["body"] == b""
    assert [name for name, _ in start["headers"]] == [b"ETag"]
