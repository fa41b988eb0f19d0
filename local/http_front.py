"""The local stack's HTTP front: gunicorn's arbiter and uvicorn workers serving the Chalice app
through ``local.gateway``.

Chalice keeps the request being served on the app object (``app.current_request``); the
service's app keeps it per thread (``chalicelib.api.chalice_app.RequestLocalChalice``). Each
worker here is a process with its own app and one event loop: connections, request heads and
bodies are read without blocking anyone (a slow client costs a coroutine, not a worker), and the
app is then called on a few threads (``AsgiApp``), so a worker overlaps its requests' Redis
waits while each thread sees only its own request. gunicorn's arbiter shares the port among the workers,
restarts one that dies or whose loop is stuck, and stops them on SIGTERM or Ctrl-C.

Why uvicorn's worker (``uvicorn-worker``, on httptools: llhttp, Node's HTTP/1.1 parser, in C)
and not gunicorn's own asyncio worker: gunicorn parses HTTP in Python, which cost about a third
of the checkout throughput of the `http.server` front it replaced; with httptools the server's
CPU per request is that front's or lower. Measured A/B in docs/performance.md.

What we add to uvicorn:

- the bounds llhttp leaves to its user, as gunicorn has them: request target (414), header
  fields and head size (431), open connections per worker (503), and a deadline for every
  request head (408), not only for idle kept-alive connections;
- TCP_NODELAY on every connection (gunicorn's socket hides from asyncio that it is TCP);
- error answers in JSON like the app's, instead of text;
- workers and the arbiter die with their parent (PR_SET_PDEATHSIG), so a SIGKILLed
  ``python -m local.run`` leaves nothing serving the port.
"""

from __future__ import annotations

import asyncio
import http
import json
import os
import socket
from typing import Any, Callable, ClassVar

from gunicorn.app.base import BaseApplication
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn_worker import UvicornWorker

from local.processes import die_with_parent

CLIENT_TIMEOUT_SECONDS = float(os.environ.get("VMPOOL_HTTP_CLIENT_TIMEOUT", "10"))
"""How long a request's line and headers, and then its body, may take to arrive; then 408 and
close."""
MAX_TARGET_BYTES = 8190
"""Longest request target (path and query); longer gets 414."""
MAX_HEADER_FIELDS = 100
"""Most header fields in one request; more gets 431."""
MAX_HEADER_FIELD_BYTES = 8190
"""Longest header field (name and value); longer gets 431."""
MAX_HEAD_BYTES = 32 * 1024
"""Most bytes held for one request head while it arrives; more gets 431."""
MAX_CONNECTIONS = 1000
"""Open connections per worker (gunicorn's ``worker_connections``); the next gets 503 and is closed."""


class Refused(Exception):
    """A request refused before it reaches the app, with the status to answer."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class BoundedHttpProtocol(HttpToolsProtocol):
    """uvicorn's HTTP/1.1 protocol on httptools, bounded and answering in JSON (see the module's
    docstring)."""

    _head_timer: asyncio.TimerHandle | None = None
    _in_head = True  # waiting for the first request, or inside a request's line and headers
    _head_bytes = 0
    _header_fields = 0
    _refusal: Refused | None = None

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            # gunicorn makes its listening socket with protocol 0, so asyncio does not know it is
            # TCP and leaves Nagle on: a body written after its head would wait for an ACK.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self.limit_concurrency is not None and len(self.connections) >= self.limit_concurrency:
            # limit_concurrency is worker_connections + 1: uvicorn's own check (connections >=
            # limit, at each request) would answer in text; this one refuses the connection first.
            self.connections.discard(self)  # counted no more, though closed only on the next turn
            self._refuse(Refused(503, "too many open connections; try again"))
            return
        self._arm_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self._in_head and not self.transport.is_closing():
            # Counted after parsing, so a body that arrives with its head is not counted as head
            # (a pipelined request's head that arrives with the previous body counts them both).
            self._head_bytes += len(data)
            if self._head_bytes > MAX_HEAD_BYTES:
                self._refuse(Refused(431, f"request head larger than {MAX_HEAD_BYTES} bytes"))
            elif self._head_timer is None:  # a kept-alive connection's next request has begun
                self._arm_head_timer()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_head = True
        self._header_fields = 0

    def on_url(self, url: bytes) -> None:
        super().on_url(url)
        if len(self.url) > MAX_TARGET_BYTES:
            self._stop_parsing(Refused(414, f"request target longer than {MAX_TARGET_BYTES} bytes"))

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_fields += 1
        if self._header_fields > MAX_HEADER_FIELDS:
            self._stop_parsing(Refused(431, f"more than {MAX_HEADER_FIELDS} header fields"))
        if len(name) + len(value) > MAX_HEADER_FIELD_BYTES:
            self._stop_parsing(Refused(431, f"a header field longer than {MAX_HEADER_FIELD_BYTES} bytes"))
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._head_bytes = 0
        self._cancel_head_timer()
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._in_head = False  # until the next request's first byte; idle, uvicorn's keep-alive applies

    def send_400_response(self, msg: str) -> None:
        """uvicorn's answer to whatever httptools refuses, our Refused raised in a callback included."""
        self._refuse(self._refusal or Refused(400, "malformed HTTP request"))

    def _stop_parsing(self, refusal: Refused) -> None:
        # Raised inside a parser callback: httptools stops and raises HttpParserError, which
        # uvicorn answers through send_400_response.
        self._refusal = refusal
        raise refusal

    def _refuse(self, refusal: Refused) -> None:
        self._cancel_head_timer()
        if self.transport.is_closing():
            return
        if self.cycle is None or self.cycle.response_complete:  # not in the middle of an answer
            self.transport.write(json_error_response(refusal.status, str(refusal)))
        self.transport.close()

    def _arm_head_timer(self) -> None:
        self._head_timer = self.loop.call_later(CLIENT_TIMEOUT_SECONDS, self._head_too_slow)

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_too_slow(self) -> None:
        self._head_timer = None
        if self._in_head:
            self._refuse(Refused(408, "the request did not arrive in time"))


def json_error_response(status: int, message: str) -> bytes:
    """A whole HTTP/1.1 answer with a JSON error body, closing the connection."""
    try:
        reason = http.HTTPStatus(status).phrase
    except ValueError:
        reason = "Error"
    body = json.dumps({"ok": False, "error": f"{reason}: {message[:200]}" if message else reason}).encode()
    head = (f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n"
            "Connection: close\r\n\r\n")
    return head.encode("latin-1") + body


class OneAppWorker(UvicornWorker):
    """A gunicorn worker running uvicorn: one event loop (uvloop), one app, one request at a time
    (the app is synchronous); bounded as ``BoundedHttpProtocol`` says; dies with the arbiter."""

    CONFIG_KWARGS: ClassVar[dict[str, Any]] = {
        "loop": "asyncio",  # uvloop measured no faster here once TCP_NODELAY is set
        "http": BoundedHttpProtocol,
        "lifespan": "off",
        "proxy_headers": False,  # the client's address is the socket's: no X-Forwarded-For
        "server_header": False,
        "timeout_graceful_shutdown": 5,
    }

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.config.limit_concurrency = self.cfg.worker_connections + 1  # see connection_made

    def init_process(self) -> None:
        die_with_parent(self.ppid)
        super().init_process()


class HttpFront(BaseApplication):
    """gunicorn, configured in code, serving the ASGI app that ``load_app`` builds in each worker."""

    def __init__(self, load_app: Callable[[], Callable[..., Any]], host: str, port: int, workers: int,
                 on_worker_ready: Callable[[], None] = lambda: None, max_connections: int = MAX_CONNECTIONS) -> None:
        self._load_app = load_app
        self._options: dict[str, Any] = {
            "bind": f"{host}:{port}",
            # A listening socket per worker (SO_REUSEPORT): the kernel spreads new connections
            # over the workers. One shared socket lets whichever worker wakes first accept every
            # connection waiting, and a few long kept-alive clients then load one worker (one core).
            "reuse_port": True,
            "workers": max(workers, 1),
            "worker_class": f"{__name__}.{OneAppWorker.__name__}",
            "worker_connections": max_connections,
            "keepalive": 5,
            "timeout": 30,  # the arbiter restarts a worker whose loop is stuck this long
            "graceful_timeout": 5,  # Ctrl-C / SIGTERM: in-flight requests get this long
            "backlog": 512,
            "loglevel": "warning",  # the app logs what matters, as JSON
            "accesslog": None,
            "errorlog": "-",
            "control_socket_disable": True,  # no $HOME/.gunicorn/gunicorn.ctl shared between stacks
            "post_worker_init": lambda worker: on_worker_ready(),
            "proc_name": "vmpool-http",
        }
        super().__init__()

    def load_config(self) -> None:
        for name, value in self._options.items():
            self.cfg.set(name, value)

    def load(self) -> Callable[..., Any]:
        return self._load_app()
