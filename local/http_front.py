"""The local stack's HTTP front: gunicorn serving the Chalice app through ``local.gateway``.

Chalice keeps the request being served on the app object (``app.current_request``), so one app
must never serve two requests at once. Each gunicorn worker here is a process with its own app
and one asyncio event loop: connections, request lines, headers and bodies are read without
blocking anyone (a slow client costs a coroutine, not a worker), and the app is then called
synchronously on the loop, so a worker runs one request at a time. gunicorn's arbiter shares the
port among the workers, restarts one that dies, and stops them on SIGTERM or Ctrl-C.

Why this worker (gunicorn's ``asgi`` worker) and not the sync or gthread ones: the sync worker
closes the connection after every answer and lingers until the client has closed its side, so
each worker waits on its client between requests (a third of today's throughput at 8 clients on
2 cores); gthread with one thread keeps connections alive but hands every request between two
threads (more CPU per request than the old server). Measured A/B in docs/performance.md.

What we add to gunicorn:

- its own error answers (bad Content-Length, request line or headers too long, bad chunking)
  are JSON like the app's instead of text;
- workers and the arbiter die with their parent (PR_SET_PDEATHSIG), so a SIGKILLed
  ``python -m local.run`` leaves nothing serving the port.
"""

from __future__ import annotations

import asyncio
import http
import json
import os
from typing import Any, Callable, Iterable

from gunicorn.app.base import BaseApplication
from gunicorn.asgi.protocol import ASGIProtocol
from gunicorn.workers import gasgi

from local.processes import die_with_parent

CLIENT_TIMEOUT_SECONDS = float(os.environ.get("VMPOOL_HTTP_CLIENT_TIMEOUT", "10"))
"""How long a new connection's first request line and headers, and any request's body, may take
to arrive; then 408 and close."""


class JsonErrorProtocol(ASGIProtocol):
    """gunicorn's HTTP/1.1 protocol, answering what it cannot parse in JSON, and closing a new
    connection whose first request line and headers take longer than CLIENT_TIMEOUT_SECONDS
    (later requests on a kept-alive connection are bounded by gunicorn's keep-alive timer)."""

    _first_request_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        self._first_request_timer = self.worker.loop.call_later(CLIENT_TIMEOUT_SECONDS, self._first_request_too_slow)

    def _on_headers_complete(self) -> Any:
        self._cancel_first_request_timer()
        return super()._on_headers_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_first_request_timer()
        super().connection_lost(exc)

    def _cancel_first_request_timer(self) -> None:
        if self._first_request_timer is not None:
            self._first_request_timer.cancel()
            self._first_request_timer = None

    def _first_request_too_slow(self) -> None:
        self._first_request_timer = None
        self._send_error_response(408, "the request did not arrive in time")
        self._close_transport()

    def _send_error_response(self, status: int, message: str, extra_headers: Iterable[tuple[str, str]] = ()) -> None:
        try:
            reason = http.HTTPStatus(status).phrase
        except ValueError:
            reason = "Error"
        body = json.dumps({"ok": False, "error": f"{reason}: {message[:200]}" if message else reason}).encode()
        extra = "".join(f"{name}: {value}\r\n" for name, value in extra_headers)
        head = (f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n"
                f"{extra}Connection: close\r\n\r\n")
        self._safe_write(head.encode("latin-1") + body)


class OneRequestWorker(gasgi.ASGIWorker):
    """gunicorn's asyncio worker: one event loop, one app, one request at a time (the app is
    synchronous); JSON parse errors; dies with the arbiter."""

    def init_process(self) -> None:
        die_with_parent(self.ppid)
        gasgi.ASGIProtocol = JsonErrorProtocol  # the name the worker builds its protocol from
        super().init_process()


class HttpFront(BaseApplication):
    """gunicorn, configured in code, serving the ASGI app that ``load_app`` builds in each worker."""

    def __init__(self, load_app: Callable[[], Callable[..., Any]], host: str, port: int, workers: int,
                 on_worker_ready: Callable[[], None] = lambda: None) -> None:
        self._load_app = load_app
        self._options: dict[str, Any] = {
            "bind": f"{host}:{port}",
            "workers": max(workers, 1),
            "worker_class": f"{__name__}.{OneRequestWorker.__name__}",
            "asgi_loop": "asyncio",  # uvloop measured no faster here
            "http_parser": "python",  # whatever else is installed (gunicorn_h1c 0.6.10 hangs with 27.0)
            "asgi_lifespan": "off",
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
