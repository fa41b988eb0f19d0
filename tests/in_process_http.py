"""An HTTP server in the test's own process, for tests that drive the API and reach into its
Redis or its services at the same time (the local stack's front runs in other processes)."""

from __future__ import annotations

import socket
import threading
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Iterator, TypeVar

from chalice import Chalice

from chalicelib.api.http import whole_number
from local.gateway import MAX_BODY_BYTES, Gateway, json_error


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: clients reuse their connection
    disable_nagle_algorithm = True  # small JSON answers go out at once
    gateway: Gateway

    def _serve(self) -> None:
        # As the local front reads a request: a length that is not digits, or given twice, is a
        # 400 and one over the API's limit a 413, before any body is read (int() read "-5" and
        # waited for the client to close; 99999999999 was a MemoryError: no answer, a
        # traceback). A header sent twice reaches the app as each of its values (the event's
        # headers its last, multiValueHeaders each, as API Gateway's): a token sent twice is then
        # no token, as there; a dict of the headers had kept only the last.
        if self.headers.get("Transfer-Encoding") is not None:
            # http.server reads no chunked body: it would be read as the next request.
            return self._answer(*json_error(501, "Transfer-Encoding is not supported here; send Content-Length"))
        lengths = self.headers.get_all("Content-Length") or ["0"]
        length = whole_number(lengths[0].strip()) if len(lengths) == 1 else None
        if length is None:
            return self._answer(*json_error(400, "Content-Length must be one whole number"))
        if length > MAX_BODY_BYTES:
            return self._answer(*json_error(413, f"Request body too large (at most {MAX_BODY_BYTES} bytes)"))
        body = self.rfile.read(length) if length else b""
        headers: dict[str, str] = {}
        header_values: dict[str, list[str]] = {}  # each value apart, as the local front hands them over
        for name, value in self.headers.items():
            headers[name] = f"{headers[name]}, {value}" if name in headers else value
            header_values.setdefault(name, []).append(value)
        self._answer(*self.gateway(self.command, self.path, headers, body, self.client_address[0], header_values))

    def _answer(self, status: int, out_headers: dict[str, str], data: bytes) -> None:
        if out_headers.get("Connection") == "close":
            self.close_connection = True
        self.send_response(status)
        for name, value in out_headers.items():
            self.send_header(name, value)
        if status != 304:  # a 304's length would have to be the 200's (RFC 9110, 8.6)
            self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = _serve

    def __getattr__(self, name: str) -> Any:
        # Any other method (TRACE, QUERY, ...) reaches the gateway too and gets a JSON 405,
        # not http.server's HTML 501.
        if name.startswith("do_"):
            return self._serve
        raise AttributeError(name)

    def log_message(self, format: str, *args: Any) -> None:
        return None  # the app logs what matters, as JSON


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 512

    def server_bind(self) -> None:
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if hasattr(socket, "SO_REUSEPORT"):
            self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        super().server_bind()


def make_server(app: Chalice, host: str, port: int) -> ThreadingHTTPServer:
    """A threaded in-process HTTP server for ``app``, for tests that drive the API and their own
    Redis from one process: a RequestLocalChalice (the service's app) serves each thread's
    request at once, any other Chalice app one request at a time (``Gateway``: it keeps the
    request on the app object). `make run` serves through ``local.http_front``."""
    handler = type("Handler", (_Handler,), {"gateway": Gateway(app)})
    return _Server((host, port), handler)


W = TypeVar("W")


@contextmanager
def serving(app: Chalice, wrap: Callable[[Gateway], W]) -> Iterator[tuple[str, W]]:
    """``app`` served in-process on a port the kernel picks, its gateway replaced by
    ``wrap(gateway)`` (a test's recorder or fault): the base URL and the wrapper."""
    server = make_server(app, "127.0.0.1", 0)
    handler = server.RequestHandlerClass
    wrapper = wrap(handler.gateway)  # type: ignore[attr-defined]
    handler.gateway = wrapper  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}", wrapper
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
