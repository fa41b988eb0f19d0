"""An HTTP server in the test's own process, for tests that drive the API and reach into its
Redis or its services at the same time (the local stack's front runs in other processes)."""

from __future__ import annotations

import socket
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from chalice import Chalice

from local.gateway import Gateway


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: clients reuse their connection
    disable_nagle_algorithm = True  # small JSON answers go out at once
    gateway: Gateway

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        headers = {name: value for name, value in self.headers.items()}
        status, out_headers, data = self.gateway(self.command, self.path, headers, body, self.client_address[0])
        self.send_response(status)
        for name, value in out_headers.items():
            self.send_header(name, value)
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
