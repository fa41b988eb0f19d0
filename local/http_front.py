"""The local stack's HTTP front: gunicorn serving the Chalice app through ``local.gateway``.

Chalice keeps the request being served on the app object (``app.current_request``), so one app
must never serve two requests at once. gunicorn's sync workers give exactly that: each worker is
a process with its own app, serving one request at a time; the arbiter shares the port among
them, restarts a worker that dies, and stops them all on SIGTERM or Ctrl-C. What we add:

- every connection gets a read timeout, so a client that stops sending (a body shorter than its
  Content-Length, half a request line) is answered 408 or closed instead of holding a worker;
- gunicorn's own error answers (bad Content-Length, request line or headers too long, bad
  chunking) are JSON like the app's instead of an HTML page;
- workers and the arbiter die with their parent (PR_SET_PDEATHSIG), so a SIGKILLed
  ``python -m local.run`` leaves nothing serving the port.
"""

from __future__ import annotations

import json
import sys
from typing import Any, Callable

from gunicorn import util as gunicorn_util
from gunicorn.app.base import BaseApplication
from gunicorn.glogging import Logger
from gunicorn.workers.sync import SyncWorker

from local.processes import die_with_parent

CLIENT_TIMEOUT_SECONDS = 10.0
"""How long a worker waits for a client's next bytes (request line, headers, body)."""

def _json_error(sock: Any, status: int, reason: str, message: str) -> None:
    """gunicorn's answer to a request it cannot parse, as JSON (it writes an HTML page)."""
    body = json.dumps({"ok": False, "error": f"{reason}: {message[:200]}" if message else reason}).encode()
    head = (f"HTTP/1.1 {status} {reason}\r\nConnection: close\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode("latin-1")
    gunicorn_util.write_nonblock(sock, head + body)


class OneRequestWorker(SyncWorker):
    """A sync worker (one request at a time in this process) with a read timeout per connection
    and JSON error answers, that dies with the arbiter."""

    def init_process(self) -> None:
        die_with_parent(self.ppid)
        # gunicorn's workers write every parse error through this module function.
        gunicorn_util.write_error = _json_error  # type: ignore[attr-defined]
        super().init_process()

    def handle(self, listener: Any, client: Any, addr: Any) -> None:
        client.settimeout(CLIENT_TIMEOUT_SECONDS)
        super().handle(listener, client, addr)


class QuietLogger(Logger):
    """gunicorn's logger, minus the traceback it logs when a client is too slow: that is the
    client's doing, worth one line."""

    def exception(self, msg: str, *args: Any, **kwargs: Any) -> None:
        error = sys.exc_info()[1]
        if isinstance(error, TimeoutError):
            self.warning("closed a connection: no data from the client for %.0f s", CLIENT_TIMEOUT_SECONDS)
            return
        super().exception(msg, *args, **kwargs)


class HttpFront(BaseApplication):  # type: ignore[misc]
    """gunicorn, configured in code, serving the WSGI app that ``load_app`` builds in each worker."""

    def __init__(self, load_app: Callable[[], Callable[..., Any]], host: str, port: int, workers: int,
                 on_worker_ready: Callable[[], None] = lambda: None) -> None:
        self._load_app = load_app
        self._options: dict[str, Any] = {
            "bind": f"{host}:{port}",
            "workers": max(workers, 1),
            "worker_class": f"{__name__}.{OneRequestWorker.__name__}",
            "logger_class": f"{__name__}.{QuietLogger.__name__}",
            "timeout": 30,  # the arbiter restarts a worker stuck this long
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
