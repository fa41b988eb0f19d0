"""Serve the Chalice app over HTTP on this machine, the way API Gateway would.

`chalice local` serves one request at a time through a slow matcher; this gateway matches the
app's routes with precompiled patterns, hands Chalice the same proxy event API Gateway sends,
and runs in several processes sharing the port (SO_REUSEPORT) with a thread per connection, so
it holds up under concurrent load on every core.
"""

from __future__ import annotations

import base64
import json
import re
import socket
import uuid
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from chalice import Chalice

NOT_FOUND = b'{"ok":false}'


@dataclass(frozen=True)
class _Resource:
    path: str
    pattern: re.Pattern[str]
    params: tuple[str, ...]
    methods: frozenset[str]


class RouteMatcher:
    """Finds the app's resource for a request path, as API Gateway does."""

    def __init__(self, app: Chalice) -> None:
        resources = []
        for path, methods in app.routes.items():
            params = tuple(re.findall(r"{([^}]+)}", path))
            regex = "^" + re.sub(r"{[^}]+}", "([^/]+)", re.escape(path).replace(r"\{", "{").replace(r"\}", "}")) + "/?$"
            resources.append(_Resource(path, re.compile(regex), params, frozenset(methods)))
        # Literal segments win over parameters (/summary/boot vs /summary/{section}).
        resources.sort(key=lambda r: (len(r.params), -len(r.path)))
        self._exact = {r.path: r for r in resources if not r.params}
        self._templates = [r for r in resources if r.params]

    def match(self, path: str) -> tuple[_Resource, dict[str, str]] | None:
        exact = self._exact.get(path) or self._exact.get(path.rstrip("/") or "/")
        if exact:
            return exact, {}
        for resource in self._templates:
            found = resource.pattern.match(path)
            if found:
                values = zip(resource.params, found.groups(), strict=True)
                return resource, {name: unquote(value) for name, value in values}
        return None


class Gateway:
    """Turns raw HTTP requests into API Gateway proxy events for a Chalice app."""

    def __init__(self, app: Chalice) -> None:
        self.app = app
        self.matcher = RouteMatcher(app)

    def __call__(
        self, method: str, target: str, headers: dict[str, str], body: bytes, client_ip: str
    ) -> tuple[int, dict[str, str], bytes]:
        parts = urlsplit(target)
        found = self.matcher.match(parts.path)
        if found is None:
            return 404, {"Content-Type": "application/json"}, NOT_FOUND
        resource, params = found
        if method not in resource.methods:
            allowed = ", ".join(sorted(resource.methods))
            body_text = json.dumps({"ok": False, "error": f"method {method} not allowed; use {allowed}"})
            return 405, {"Content-Type": "application/json", "Allow": allowed}, body_text.encode()
        query = parse_qs(parts.query, keep_blank_values=True)
        event = {
            "resource": resource.path,
            "path": parts.path,
            "httpMethod": method,
            "headers": headers,
            "multiValueHeaders": {name: [value] for name, value in headers.items()},
            "queryStringParameters": {k: v[-1] for k, v in query.items()} or None,
            "multiValueQueryStringParameters": query or None,
            "pathParameters": params or None,
            "stageVariables": None,
            "requestContext": {
                "resourcePath": resource.path,
                "httpMethod": method,
                "requestId": str(uuid.uuid4()),
                "path": parts.path,
                "identity": {"sourceIp": client_ip},
            },
            "body": base64.b64encode(body).decode() if body else None,
            "isBase64Encoded": bool(body),
        }
        response = self.app(event, _LocalContext())
        payload = response.get("body") or ""
        data = base64.b64decode(payload) if response.get("isBase64Encoded") else payload.encode()
        out_headers = {k: v for k, v in (response.get("headers") or {}).items()}
        for name, values in (response.get("multiValueHeaders") or {}).items():
            out_headers[name] = ", ".join(values)
        return response["statusCode"], out_headers, data


class _LocalContext:
    function_name = "vmpool-local-api"
    memory_limit_in_mb = 512
    aws_request_id = "local"
    invoked_function_arn = "arn:aws:lambda:local:000000000000:function:vmpool-local-api"

    @staticmethod
    def get_remaining_time_in_millis() -> int:
        return 30_000


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
    """A threaded HTTP server for ``app``; several may share the port in separate processes."""
    handler = type("Handler", (_Handler,), {"gateway": Gateway(app)})
    return _Server((host, port), handler)
