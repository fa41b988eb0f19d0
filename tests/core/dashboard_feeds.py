"""The API as the dashboard page sees it, for the browser tests: the page as the API serves it,
and feed answers the test sets (and may change while the page runs), each 200 with an ETag as
the API sends it (a 304 for a request that names it)."""

from __future__ import annotations

import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Mapping

from chalicelib.api import dashboard


class FeedServer:
    """A loopback server of the dashboard page and ``answers`` (path -> JSON-able body, or bytes
    sent as they are); a context manager that serves while it is entered."""

    def __init__(self, answers: Mapping[str, Any], site_name: str = "vmpool") -> None:
        self.site_name = site_name  # the page's title, as the config gives it
        self.answers: dict[str, tuple[int, bytes]] = {}
        self.held: dict[str, int] = {}  # path -> requests for it held so far (``hold``)
        self._holding: set[str] = set()
        self._released = threading.Event()
        for path, body in answers.items():
            self.answer(path, body)
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _FeedHandler)
        self._server.feeds = self  # type: ignore[attr-defined]
        self._serving = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def page_url(self) -> str:
        """The dashboard page's address."""
        return f"http://127.0.0.1:{self._server.server_address[1]}/dashboard/"

    def answer(self, path: str, body: Any, status: int = 200) -> None:
        """Answer ``path`` with ``body`` (bytes as they are, anything else as JSON) from now on."""
        self.answers[path] = (status, body if isinstance(body, bytes) else json.dumps(body).encode())

    def hold(self, path: str) -> None:
        """Answer no request for ``path`` until ``release`` (a connection gone dead: the request
        sent, no answer, no error); each counted in ``held``."""
        self._released.clear()
        self._holding.add(path)

    def release(self) -> None:
        """Answer every request for a held path, those waiting too, from now on."""
        self._holding.clear()
        self._released.set()

    def wait_if_held(self, path: str) -> None:
        """Return once a request for ``path`` may be answered (at once unless it is held)."""
        if path in self._holding:
            self.held[path] = self.held.get(path, 0) + 1
            self._released.wait(60)

    def __enter__(self) -> FeedServer:
        self._serving.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self.release()
        self._server.shutdown()
        self._server.server_close()
        self._serving.join()


class _FeedHandler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        feeds: FeedServer = self.server.feeds  # type: ignore[attr-defined]
        path = self.path.split("?")[0]
        headers = {"Content-Type": "application/json", "Cache-Control": "no-store"}
        if path == "/dashboard/":
            text, policy = dashboard.page_html(feeds.site_name)
            status, body = 200, text.encode()
            headers = {"Content-Type": "text/html; charset=utf-8", "Content-Security-Policy": policy}
        elif path in feeds.answers:
            feeds.wait_if_held(path)
            status, body = feeds.answers[path]
        else:
            self.send_error(404)
            return
        if status == 200 and path != "/dashboard/":
            etag = '"' + hashlib.sha256(body).hexdigest()[:16] + '"'
            headers["ETag"] = etag
            if self.headers.get("If-None-Match") == etag:
                status, body = 304, b""
        try:
            self.send_response(status)
            for name, value in {**headers, "Content-Length": str(len(body))}.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):  # a held request the page gave up on
            self.close_connection = True

    def log_message(self, format: str, *args: Any) -> None:
        pass
