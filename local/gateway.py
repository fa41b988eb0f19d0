"""Serve the Chalice app over HTTP on this machine, the way API Gateway would.

`chalice local` serves one request at a time through a slow matcher; this gateway matches the
app's routes with precompiled patterns and hands Chalice the same proxy event API Gateway sends.
``AsgiApp`` puts it behind an ASGI server (`make run`: ``local.http_front``), which runs a few
event loops per worker process, each on its own thread, each calling the app inline (the feeds,
reads of every pool, on a few threads of their own off the loops: ``AsgiApp.offloaded``): the
service's app keeps the request being served per thread, and any other Chalice app is served
by one loop, one request at a time (and the Gateway itself lets such an app serve one request
at a time, whoever calls it: tests/in_process_http.py's thread per connection).
"""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import re
import threading
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, Iterable, NamedTuple
from urllib.parse import parse_qs

from chalice import Chalice
from chalice.app import _matches_content_type

from chalicelib.api.chalice_app import RequestLocalChalice
from chalicelib.api.conditional import COMPRESS_FROM_BYTES
from chalicelib.api.http import JSON_HEADERS, json_text, shown
from chalicelib.api.http import MAX_BODY_BYTES as API_MAX_BODY_BYTES
from chalicelib.api.proxy_event import MAX_EVENT_CHARS, MAX_EVENT_FIELDS, oversized

logger = logging.getLogger("vmpool.gateway")

NOT_FOUND = b'{"ok":false}'
MAX_BODY_BYTES = API_MAX_BODY_BYTES
"""Bodies above this, the API's own limit, get a 413 before they are read, or as soon as a
chunked one passes it. It was 1 MiB, which the API then refused anyway: a worker held up to a
MiB per connection of bodies it would refuse (a GiB at its 1,000 connections), and a body sent
in 1-byte chunks up to that cost the front a million parser callbacks (3 s of CPU per request;
4 such clients took a checkout's p50 from 8 to 174 ms)."""


MAX_CONTENT_TYPE_CHARS = 256
"""Of a request's Content-Type, what is matched against the binary media types (a bound on the
match's work; no media type is longer)."""

MALFORMED_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")
"""A ``%`` not followed by two hex digits, in the path or the query: API Gateway answers 400 for
it before it routes the request (a known route or not; ustayready/fireprox#27: "when a percentage
symbol is sent anywhere in the URL, the request is not proxied and 400 response is received")."""

MALFORMED_ESCAPE_ERROR = ("Bad Request: the URL has a % not followed by two hex digits (send a % as %25)")

SLASH_RUNS = re.compile(r"//+")
"""Empty path segments, which vmpooler's Rack::Protection (PathTraversal) dropped before routing:
clients join a base URL ending in ``/`` to a path beginning with one."""


@dataclass(frozen=True)
class _Resource:
    path: str
    pattern: re.Pattern[str]
    params: tuple[str, ...]
    methods: frozenset[str]


def resource_regex(path: str) -> str:
    """The regular expression of the request paths a Chalice resource (``/vm/{name}``) serves,
    with or without a trailing slash."""
    return "^" + re.sub(r"{[^}]+}", "([^/]+)", re.escape(path).replace(r"\{", "{").replace(r"\}", "}")) + "/?$"


def merged_slashes(path: str) -> str:
    """The path with every run of slashes one slash (the path the app is given and routed by)."""
    return SLASH_RUNS.sub("/", path) if "//" in path else path


class RouteMatcher:
    """Finds the app's resource for a request path, as API Gateway does."""

    def __init__(self, app: Chalice) -> None:
        resources = []
        for path, methods in app.routes.items():
            params = tuple(re.findall(r"{([^}]+)}", path))
            resources.append(_Resource(path, re.compile(resource_regex(path)), params, frozenset(methods)))
        # Literal segments win over parameters (/summary/boot vs /summary/{section}).
        resources.sort(key=lambda r: (len(r.params), -len(r.path)))
        self._exact = {r.path: r for r in resources if not r.params}
        self._templates = [r for r in resources if r.params]
        # The templates' patterns as one alternation, in the same order: the first that matches
        # wins, as the loop over them did, in one call of C instead of one per template (27 for
        # POST /api/v3/vm/<pool>). Each alternative is a group whose number says which matched
        # (``lastindex``: the outer group closes last); its parameters are the groups after it.
        alternatives, self._by_group = [], {}
        group = 1
        for resource in self._templates:
            alternatives.append(f"({resource.pattern.pattern[1:-1]})")
            self._by_group[group] = (resource, group + 1, group + 1 + len(resource.params))
            group += 1 + len(resource.params)
        self._any_template = re.compile("^(?:" + "|".join(alternatives) + ")$") if alternatives else None
        served = {method for r in resources for method in r.methods}
        self.allowed = ", ".join(sorted({*served, *(("HEAD",) if "GET" in served else ())}))
        """The methods some route serves (HEAD wherever GET is): a server-wide OPTIONS's Allow."""

    def match(self, path: str) -> tuple[_Resource, dict[str, str]] | None:
        # Slashes in a row are one, wherever they are: ``//vm/`` is ``/vm/``, ``/api/v1/vm//<host>``
        # is ``/api/v1/vm/<host>``. Clients join a base URL ending in ``/`` to a path beginning
        # with one: beaker appends ``/vm/`` to its ``pooling_api`` (beaker-hostgenerator's ends
        # with ``/``; vmpooler 3 users' ``.../api/v3/``), and the BGInfo script of puppetlabs-packer's
        # Windows images asks ``.../api/v1/vm/`` + ``/<hostname>``. vmpooler's Rack::Protection
        # (PathTraversal) dropped the empty segments before routing, and API Gateway routes extra
        # slashes after the stage so (docs/compatibility.md, "Fixed").
        path = merged_slashes(path)
        exact = self._exact.get(path) or self._exact.get(path.rstrip("/") or "/")
        if exact:
            return exact, {}
        found = self._any_template.match(path) if self._any_template is not None else None
        if found is None:
            return None
        resource, first, end = self._by_group[found.lastindex or 0]
        # As sent, percent-escapes and all: API Gateway's REST proxy event holds path
        # parameters undecoded (``/vm/my%2Dhost`` is ``my%2Dhost``), and the app decodes
        # them once (routes.request_from_chalice) wherever it runs.
        return resource, dict(zip(resource.params, found.group(*range(first, end)) if end - first > 1
                                  else (found.group(first),), strict=True))


Response = tuple[int, dict[str, str], bytes]


class Routed(NamedTuple):
    """A request its route takes: the path (slashes merged), the query, the route and its path
    parameters, and the method the route serves it as (GET for HEAD)."""

    path: str
    query_string: str
    resource: _Resource
    params: dict[str, str]
    method: str


class Gateway:
    """Turns raw HTTP requests into API Gateway proxy events for a Chalice app. Callable from
    several threads at once: a plain Chalice app keeps the request being served on the app
    object, so one such app is let serve one request at a time (two at once answered with one
    request's data); the service's app (RequestLocalChalice) keeps it per thread and serves
    each thread's request at once."""

    def __init__(self, app: Chalice) -> None:
        self.app = app
        self.matcher = RouteMatcher(app)
        binary_types = list(app.api.binary_types)
        self._binary: Callable[[str], bool] = lambda content_type: _matches_content_type(content_type, binary_types)
        self._one_at_a_time: threading.Lock | None = None if isinstance(app, RequestLocalChalice) else threading.Lock()

    def route(self, method: str, target: str) -> Routed | Response:
        """The route a request for ``target`` goes to, or the answer it gets whatever its body
        (no route has its path, its method is not the route's, a malformed escape, ``*``): the
        ASGI app asks before it reads a body its client waits to send (Expect: 100-continue)."""
        # The request target as the HTTP server read it (origin-form), split by hand: urlsplit
        # reads a path beginning with "//" as a host and a path (GET //x/api/v3/config served
        # /api/v3/config, past any proxy rule on the path's prefix) and raises on "//[" (a 500).
        path, _, query_string = target.partition("#")[0].partition("?")
        path = merged_slashes(path)
        if path == "*":
            return asterisk_form(method, self.matcher.allowed)
        if MALFORMED_ESCAPE.search(path) or MALFORMED_ESCAPE.search(query_string):
            # Before routing, as API Gateway refuses it: parse_qs kept "%zz" or a lone "%" as
            # text, and the app answered as if it had been sent so; on a path no route has it
            # was a 404 locally and API Gateway's 400 in AWS.
            return 400, dict(JSON_HEADERS), json_text({"ok": False, "error": MALFORMED_ESCAPE_ERROR}).encode()
        found = self.matcher.match(path)
        if found is None:
            return 404, dict(JSON_HEADERS), NOT_FOUND
        resource, params = found
        if method == "HEAD" and "GET" in resource.methods:
            # HEAD is GET without its body (RFC 9110, 9.3.2), as vmpooler's Sinatra answers it
            # (`curl -I`, monitors): the HTTP server sends the head and drops the body.
            method = "GET"
        if method not in resource.methods:
            allowed = ", ".join(sorted({*resource.methods, *(("HEAD",) if "GET" in resource.methods else ())}))
            # The method cut short: a server that takes any token as a method (http.server's, up
            # to 64 KiB of request line) had it echoed whole.
            body_text = json_text({"ok": False, "error": f"method {shown(method, 20)} not allowed; use {allowed}"})
            return 405, {**JSON_HEADERS, "Allow": allowed}, body_text.encode()
        return Routed(path, query_string, resource, params, method)

    def __call__(
        self, method: str, target: str, headers: dict[str, str], body: bytes, client_ip: str,
        header_values: dict[str, list[str]] | None = None,
    ) -> tuple[int, dict[str, str], bytes]:
        """The answer to one request. ``headers``: each header's values joined with ", " (what the
        front itself reads: ``Accept-Encoding`` for compression); ``header_values``: each value as
        sent, in order, when the caller kept them apart (the HTTP front does). The event has them
        as API Gateway does: ``headers`` the last value of each, ``multiValueHeaders`` every one."""
        routed = self.route(method, target)
        if not isinstance(routed, Routed):
            return routed
        path, query_string, resource, params, method = routed
        if len(query_string) > MAX_EVENT_CHARS or query_string.count("&") >= MAX_EVENT_FIELDS:
            # Refused from its size, as the app would refuse the parameters it makes: parsed
            # first, a 1.4 MB query of 350,000 parameters took 0.9-1.5 s before the app's 414.
            refusal = oversized("multiValueQueryStringParameters")
            return refusal.status, dict(JSON_HEADERS), json_text(refusal.body).encode()
        # Decoded as API Gateway decodes it: "+" is a space, "%2B" a "+", "a" and "a=" are "",
        # a repeated name is every value in the multi-value form and its last in the other, and
        # bytes that are not UTF-8 are U+FFFD.
        query = parse_qs(query_string, keep_blank_values=True) if query_string else {}
        if header_values is None:
            header_values = {name: [value] for name, value in headers.items()}
        event = {
            "resource": resource.path,
            "path": path,
            "httpMethod": method,
            "headers": {name: values[-1] for name, values in header_values.items()},
            "multiValueHeaders": header_values,
            "queryStringParameters": {k: v[-1] for k, v in query.items()} or None,
            "multiValueQueryStringParameters": query or None,
            "pathParameters": params or None,
            "stageVariables": None,
            "requestContext": {
                "resourcePath": resource.path,
                "httpMethod": method,
                "requestId": request_id(),
                "path": path,
                "identity": {"sourceIp": client_ip},
            },
            "body": None,
            "isBase64Encoded": False,
        }
        if body:
            # As API Gateway hands a body over: base64 for the API's binary media types, text for
            # any other (application/json, none, curl -d's form type), its bytes that are not
            # UTF-8 each U+FFFD. Always base64 before, so a Latin-1 body was a 400 "not UTF-8
            # text" locally and read with U+FFFD where its bad bytes were in AWS.
            content_type = next((values[-1] for name, values in header_values.items()
                                 if name.lower() == "content-type"), "")
            if content_type and self._binary(content_type[:MAX_CONTENT_TYPE_CHARS]):
                event["body"], event["isBase64Encoded"] = base64.b64encode(body).decode(), True
            else:
                event["body"] = body.decode("utf-8", "replace")
        if self._one_at_a_time is None:
            response = self.app(event, _LocalContext())
        else:
            with self._one_at_a_time:
                response = self.app(event, _LocalContext())
        payload = response.get("body") or ""
        data = base64.b64decode(payload) if response.get("isBase64Encoded") else payload.encode()
        out_headers = dict(response.get("headers") or {})
        for name, values in (response.get("multiValueHeaders") or {}).items():
            out_headers[name] = ", ".join(values)
        return response["statusCode"], *compressed(headers, out_headers, data)


def request_id() -> str:
    """A random version 4 UUID's text, as API Gateway's request ids are: ``str(uuid.uuid4())``
    without building the UUID object (three calls of Python a request, and its checks)."""
    random = bytearray(os.urandom(16))
    random[6] = (random[6] & 0x0F) | 0x40  # version 4
    random[8] = (random[8] & 0x3F) | 0x80  # the RFC 4122 variant
    text = random.hex()
    return f"{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:]}"


def asterisk_form(method: str, allowed: str) -> tuple[int, dict[str, str], bytes]:
    """The answer to a request for ``*``, the server as a whole (RFC 9112, 3.2.4): only OPTIONS
    may ask for it, and it learns the methods the API serves (RFC 9110, 9.3.7); any other method
    is a 400. It was a 404, as if ``*`` were a path the API lacked."""
    if method == "OPTIONS":
        return 200, {**JSON_HEADERS, "Allow": allowed}, b'{"ok":true}'
    refusal = {"ok": False, "error": f"the target * is for OPTIONS only, not {shown(method, 20)}"}
    return 400, dict(JSON_HEADERS), json_text(refusal).encode()


MAX_CODINGS = 32
"""The most codings of an ``Accept-Encoding`` read; the rest are ignored."""


def preferred_coding(accept_encoding: str) -> str | None:
    """The coding an ``Accept-Encoding`` prefers (the highest ``q``, the first of equals), lower-
    cased; None when it names none above ``q=0``."""
    best, best_q = None, 0.0
    for item in accept_encoding.split(",", MAX_CODINGS)[:MAX_CODINGS]:
        coding, *params = (part.strip() for part in item.split(";"))
        quality = 1.0
        for param in params:
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    quality = float(value.strip()[:6])
                except ValueError:
                    quality = 0.0
        if coding and quality > best_q:
            best, best_q = coding.lower(), quality
    return best


def compressed(request_headers: dict[str, str], headers: dict[str, str], data: bytes) -> tuple[dict[str, str], bytes]:
    """The answer as API Gateway sends it with ``minimumCompressionSize`` set (infra/sync_config.py):
    compressed when it is at least COMPRESS_FROM_BYTES, has no Content-Encoding of its own, and
    the caller's preferred coding is gzip or deflate (the two API Gateway makes; a caller that
    prefers br, identity, or names no coding gets it as it is). Ruby's Net::HTTP (vmfloaty,
    beaker) asks for gzip first and decodes it; curl without ``--compressed`` asks for nothing."""
    if len(data) < COMPRESS_FROM_BYTES:  # first: most answers are short, and their headers need no look
        return headers, data
    accept = next((value for name, value in request_headers.items() if name.lower() == "accept-encoding"), "")
    if not accept or any(name.lower() == "content-encoding" for name in headers):
        return headers, data
    coding = preferred_coding(accept)
    if coding in ("gzip", "x-gzip"):
        packer = zlib.compressobj(6, zlib.DEFLATED, 16 + zlib.MAX_WBITS)  # the gzip container
    elif coding == "deflate":
        packer = zlib.compressobj(6, zlib.DEFLATED, zlib.MAX_WBITS)  # HTTP's deflate is zlib's format
    else:
        return headers, data
    return {**headers, "Content-Encoding": "gzip" if coding != "deflate" else "deflate"}, \
        packer.compress(data) + packer.flush()


class _LocalContext:
    function_name = "vmpool-local-api"
    memory_limit_in_mb = 512
    aws_request_id = "local"
    invoked_function_arn = "arn:aws:lambda:local:000000000000:function:vmpool-local-api"

    @staticmethod
    def get_remaining_time_in_millis() -> int:
        return 30_000


def json_error(status: int, message: str) -> Response:
    """A JSON error that also closes the connection: the request's body may be unread (413) or
    half there (408), so nothing after it on the connection can be read as a request."""
    return (status, {**JSON_HEADERS, "Connection": "close"},
            json_text({"ok": False, "error": message}).encode())


class AsgiApp:
    """The gateway as an ASGI application. The body is received without blocking anyone (a slow
    client costs a coroutine, bounded by ``body_timeout``); the Chalice app is then called on the
    event loop's own thread, the answer written as soon as it returns: no hand-off to another
    thread and back. ``threads`` says how many threads may call the app at once: the front
    (``local.http_front``) runs that many event loops per worker, each on its own thread and
    listening socket, so a worker overlaps its requests' Redis waits. Each thread sees only its
    own request: the app keeps its per-request state per thread (RequestLocalChalice); an app
    that does not is called from one thread, one request at a time. ``offloaded``: the resource
    paths whose requests (the feeds) run on as many threads of their own as there are loops, so a
    loop is not held by them (the service's app only). As many: callers asking one feed at once
    share its computation (chalicelib/api/shared_reads.py) only while they wait together, and
    with 2 threads four /status readers of a 4-loop worker got 51-95 answers in 8 s instead of
    142; further requests queue without holding a loop."""

    def __init__(self, app: Chalice, max_body: int = MAX_BODY_BYTES, body_timeout: float = 10.0,
                 threads: int = 2, offloaded: Iterable[str] = ()) -> None:
        self.gateway = Gateway(app)
        self.max_body = max_body
        self.body_timeout = body_timeout
        # Chalice's current_request is one attribute of a plain Chalice app.
        self.threads = max(threads, 1) if isinstance(app, RequestLocalChalice) else 1
        paths = sorted(set(offloaded))
        self._offloaded = (re.compile("|".join(f"(?:{resource_regex(path)})" for path in paths))
                           if paths and isinstance(app, RequestLocalChalice) else None)
        """The paths of the resources whose requests run on ``_feed_threads``, off the event loop."""
        # Made here, not at the first feed (two loops could each make one): its threads start
        # with the first requests given to them.
        self._feed_threads = ThreadPoolExecutor(self.threads, thread_name_prefix="vmpool-feed")

    async def __call__(self, scope: dict[str, Any], receive: Callable[[], Any], send: Callable[[Any], Any]) -> None:
        if scope["type"] != "http":
            return
        try:
            status, headers, data = await self._respond(scope, receive)
        except Exception:  # a bug of ours: the client gets JSON (not uvicorn's text), the log the traceback
            logger.exception("the local gateway failed a request")
            status, headers, data = json_error(500, "internal error")
        # No length on a 304: it would have to be the 200's (RFC 9110, 8.6), and a cache taking
        # the 304's headers for its stored answer's would read that one as empty.
        length = [] if status == 304 else [(b"content-length", str(len(data)).encode())]
        await send({"type": "http.response.start", "status": status,
                    "headers": [(name.encode("latin-1"), value.encode("latin-1")) for name, value in headers.items()]
                    + length})
        await send({"type": "http.response.body", "body": data})

    async def _respond(self, scope: dict[str, Any], receive: Callable[[], Any]) -> Response:
        headers: dict[str, str] = {}
        header_values: dict[str, list[str]] = {}
        for raw_name, raw_value in scope["headers"]:
            name, value = raw_name.decode("latin-1"), raw_value.decode("latin-1")
            headers[name] = f"{headers[name]}, {value}" if name in headers else value
            header_values.setdefault(name, []).append(value)
        length = int(headers.get("content-length") or 0)
        if length > self.max_body:
            return json_error(413, f"Request body too large (at most {self.max_body} bytes)")
        body = b""
        if (length or "transfer-encoding" in headers) and scope.get("http_version") == "1.1" \
                and headers.get("expect", "").strip().lower() == "100-continue":
            # Its client sends the body only once told to (the front's "100 Continue" goes out at
            # the first receive): a request no route takes is answered now, its body never sent.
            # Before, a PUT of 64 KB to a mistyped path was sent whole, then answered 404.
            routed = self.gateway.route(scope["method"], self._target(scope).decode("latin-1"))
            if not isinstance(routed, Routed):
                return routed[0], {**routed[1], "Connection": "close"}, routed[2]  # the body may follow: unread
        if length or "transfer-encoding" in headers:  # else no body (RFC 9112, 6.3): no deadline to set
            received = await self._receive_body(receive)
            if isinstance(received, tuple):
                return received
            body = received
        client = scope.get("client") or ("", 0)
        request = (scope["method"], self._target(scope).decode("latin-1"), headers, body, client[0], header_values)
        if self._offloaded is not None and self._offloaded.match(merged_slashes(scope["path"])):
            # A feed (/status at 1,000 pools: ~90 ms of CPU, and a wait for the computation other
            # callers share) runs on a thread of its own: this loop serves its other connections
            # meanwhile. Inline, four /status readers held a worker's four loops, and a GET
            # /vm/<host> waited 264 ms (p50) behind them, 1 s behind eight.
            return await asyncio.get_running_loop().run_in_executor(self._feed_threads, self.gateway, *request)
        # On this loop's thread: its other connections wait meanwhile (the worker's other loops
        # do not), and the app sees one request at a time on it.
        return self.gateway(*request)

    @staticmethod
    def _target(scope: dict[str, Any]) -> bytes:
        """The request target as the front read it: its path as sent, and its query."""
        target: bytes = scope.get("raw_path") or scope["path"].encode()
        if scope.get("query_string"):
            target += b"?" + scope["query_string"]
        return target

    async def _receive_body(self, receive: Callable[[], Any]) -> bytes | Response:
        """The request's body, or the error to answer instead."""
        body = bytearray()
        try:
            async with asyncio.timeout(self.body_timeout):  # the whole body, however it is chunked
                more = True
                while more:
                    message = await receive()
                    if message["type"] != "http.request":
                        return json_error(400, "the client went away before sending its body")
                    body += message.get("body", b"")
                    if len(body) > self.max_body:
                        return json_error(413, f"Request body too large (at most {self.max_body} bytes)")
                    more = message.get("more_body", False)
        except TimeoutError:
            return json_error(408, "the request body did not arrive in time")
        return bytes(body)
