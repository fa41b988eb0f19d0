"""The local stack's HTTP front: gunicorn's arbiter and uvicorn workers serving the Chalice app
through ``local.gateway``.

Chalice keeps the request being served on the app object (``app.current_request``); the
service's app keeps it per thread (``chalicelib.api.chalice_app.RequestLocalChalice``). Each
worker here is a process with its own app, its own listening socket on the port (SO_REUSEPORT:
the kernel spreads new connections over the workers) and a few event loops, each on its own
thread (``AsgiApp.threads`` of them; one for an app that is not request-local). The worker's
first loop accepts its connections and gives each to the loop holding the fewest (the other
loops accept for it while it is stuck in a request: ``ACCEPT_TAKEOVER_SECONDS``). Connections,
request heads and bodies are read without blocking anyone (a slow client costs a coroutine, not a
worker), and each loop then calls the app inline, so a worker overlaps its requests' Redis waits
across its loops while each thread sees only its own request; up to as many connections as it
has loops, a worker serves each on a loop of its own, as a thread per connection would.
gunicorn's arbiter restarts a worker that dies or whose loops are stuck, and stops them on
SIGTERM or Ctrl-C.

Why uvicorn's worker (``uvicorn-worker``, on httptools: llhttp, Node's HTTP/1.1 parser, in C)
and not gunicorn's own asyncio worker: gunicorn parses HTTP in Python, which cost about a third
of the checkout throughput of the `http.server` front it replaced; with httptools the server's
CPU per request is that front's or lower. Measured A/B in docs/performance.md.

What we add to uvicorn:

- event loops on several threads of a worker (``OneAppWorker``), instead of one loop handing
  requests to a thread pool, and connections handed to the least-loaded loop;
- one ``send`` per answer (``_CoalescingTransport``), where uvicorn writes head and body apart;
- the bounds llhttp leaves to its user, as gunicorn has them: request target (414), header
  fields and head size (431), chunks in a body (413), open connections per worker (the oldest
  slow or idle connection makes way for a new one; 503 when every one has a request in the
  app), and a deadline for every request head (408), not only for idle kept-alive connections;
- the answers RFC 9112 asks for that llhttp leaves to its user (Host, HTTP version, transfer
  codings, Expect), and an Upgrade request served as the HTTP/1.1 request it also is;
- TCP_NODELAY on every connection (gunicorn's socket hides from asyncio that it is TCP);
- error answers in JSON like the app's, instead of text; log lines in JSON like the app's too,
  and a request that cannot be parsed counted, not logged one line each (``local.front_logs``);
- workers and the arbiter die with their parent (PR_SET_PDEATHSIG, SIGKILL: a stopped process
  acts on no other signal), so a SIGKILLed ``python -m local.run`` or arbiter leaves nothing
  serving the port;
- an arbiter (``_Arbiter``) that kills within seconds a worker whose process does not run
  (SIGSTOP), not after gunicorn's 30 s, and does not count a pause of its own (Ctrl-Z of the
  stack) against its workers;
- the same loops without gunicorn, in the calling process (``InProcessFront``: `make run
  WORKERS=0`, one process for HTTP and the scheduler).

The gunicorn parts (the worker ``OneAppWorker``, the arbiter ``_Arbiter``, ``HttpFront``,
``JsonLogger``) are in ``local.gunicorn_front``: the one-process layout imports this module
only, and so never loads gunicorn (1.9 MB, 32 modules it would not use).
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import errno
import http
import logging
import os
import re
import resource
import socket
import struct
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Protocol

import httptools
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle
from uvicorn.server import Server

from chalicelib.api.http import JSON_HEADERS, json_text, shown
from chalicelib.api.http import MAX_BODY_BYTES as API_MAX_BODY_BYTES
from local.front_logs import BoundedWarning, json_stderr_handler

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
"""Most bytes of one request head, counted while it arrives and once it is whole; more gets 431."""
MAX_CHUNKS = 1024
"""Most chunks in one chunked request body; more gets 413. A chunk costs a parser callback or
two whatever its size: 64 KiB (the API's limit) in 1-byte chunks held a loop for tens of ms a
read, and 4 clients sending such bodies over and over took a checkout's p50 from 15 to 117 ms
(41 ms with this bound). Real clients send a body in a few chunks (64 bytes each at 1,024)."""
MAX_CHUNKED_BODY_WIRE_BYTES = 4 * API_MAX_BODY_BYTES
"""Most bytes a chunked request body may take on the wire, its framing (chunk sizes, chunk
extensions, trailers) included; more gets 413. The body itself is bounded by the app's limit
(64 KiB), but a chunk extension (``2;aaaa...``) is no body and was not bounded at all: a 100 MB
extension was parsed, then its request served, and 10 MB of it took another client's request on
the same worker from 3 to 358 ms. Counted from the read after the one that ended the head (that
one may hold other requests: at most a read, 256 KiB, more); four times the body's limit leaves
room for a body at its limit in 1,024 chunks with their extensions and trailers."""
STARTUP_SECONDS = 30
"""How long a worker's first loop waits for its other loops to start before it accepts anyway."""
WORKER_TIMEOUT_SECONDS = 30
"""The arbiter restarts a worker that has not said it is alive for this long (its loops stuck)."""
HEARTBEAT_SECONDS = 1.0
"""How often, at most, a worker whose loops turn tells the arbiter it is alive."""
PROCESS_TIMEOUT_SECONDS = 5.0
"""The arbiter kills a worker whose process has not run at all for this long (SIGSTOP, a C call
holding the interpreter): unlike a loop waiting for a slow LDAP server, such a worker serves
nobody, and every request on it (its kept-alive connections, and the new connections the kernel
queues on its listening socket) would wait for WORKER_TIMEOUT_SECONDS."""
PROCESS_BEAT_SECONDS = 0.5
"""How often a worker's process says it runs (``ProcessBeat``)."""
ACCEPT_TAKEOVER_SECONDS = 0.5
"""A worker's first loop accepts the connections for all its loops; once it has not turned for
this long (inside a request its backend is slow to answer: a stopped LDAP directory holds a login
for up to ``login_timeout``, a stopped Redis a request for its socket timeouts), the worker's other
loops accept them too, at each of their turns. Before, every new connection waited for that one
request: with `WORKERS=0` (one front) a GET /status waited 4.3 s behind a login held 5 s by a
stopped directory (up to 20 s with the default ``login_timeout``), though three loops were idle."""
ARBITER_PAUSE_SECONDS = 3.0
"""A gap this long between two of the arbiter's checks (normally 1 s apart) means the arbiter
itself did not run meanwhile (Ctrl-Z of the stack, then ``fg``): its workers' silence over that
gap is not theirs."""
LINGER_SECONDS = CLIENT_TIMEOUT_SECONDS
"""How long a connection closed before its request was wholly read (a refusal: 413, 414, 431...)
keeps reading and dropping what the client still sends (``_CoalescingTransport.close``)."""
LINGER_MAX_BYTES = 64 * 1024 * 1024
"""Most bytes dropped so; past them the connection is reset."""
MAX_CONNECTIONS = 1000
"""Open connections per worker (gunicorn's ``worker_connections``); the next gets 503 and is closed."""
DESCRIPTORS_FOR_THE_APP = 100
"""Descriptors a worker keeps for everything but its connections (its listening socket, Redis
connections, the files and logs a request may open); its connections get the rest."""

LINE_END_ERROR = re.compile(r"\bCR\b|\bLF\b|\bCRLF\b")
"""llhttp's reasons for a line not ended by CRLF ("Expected CRLF after version", "Missing expected
CR after header value"). A bare LF (or CR) line end stays refused, though RFC 9112 (2.2) lets a
recipient accept one: no client we serve sends one (curl, Python's requests and http.client,
Ruby's Net::HTTP, Go's net/http all write CRLF), and a proxy in front that reads a bare LF as part
of a header's value while we read it as a line end would pass a header it never saw (a
``Transfer-Encoding`` smuggled after ``X-A: a\n``). The answer says so: a request typed into
``nc`` without ``-C`` was told only that it was malformed."""
LINE_END_REFUSAL = "malformed HTTP request: lines must end in CRLF (a bare LF or CR is refused)"


def bare_line_end(reason: str, data: bytes) -> bool:
    """Whether llhttp refused ``data`` for a line not ended by CRLF. Most such reasons say so
    (``LINE_END_ERROR``); a head whose empty last line is a bare LF (``...\r\n\n``) is read as a
    header field beginning with a LF instead ("Invalid header field char"), which got the generic
    "malformed HTTP request"."""
    if LINE_END_ERROR.search(reason):
        return True
    return reason == "Invalid header field char" and (b"\r\n\n" in data or data.startswith(b"\n"))

HOST_VALUE = re.compile(rb"(\[[0-9A-Za-z:.~!$&'()*+,;=_-]*\]|[0-9A-Za-z.~%!$&'()*+,;=_-]*)(:[0-9]*)?\Z")
"""A Host field value as RFC 9110 (7.2) has it, ``uri-host [":" port]``, empty included (a
request for a URI without an authority); anything else is a 400 (RFC 9112, 3.2)."""

logger = logging.getLogger("vmpool.http_front")

INVALID_REQUEST_LOG_SECONDS = 60.0
"""A worker logs the first request it cannot parse at once (its client and llhttp's reason),
then one line per this many seconds counting the others: uvicorn logged each, in plain text, and
a client sending garbage made 1,800 lines a second."""
INVALID_REQUESTS = BoundedWarning(logger, "invalid HTTP request received", INVALID_REQUEST_LOG_SECONDS)


def connection_bound(wanted: int) -> int:
    """How many connections this process can hold: ``wanted``, or fewer when it may not open that
    many descriptors (`ulimit -n`, often 1,024) and DESCRIPTORS_FOR_THE_APP besides. The soft
    limit is raised first, as far as needed and the hard limit allows. Past its descriptors a
    worker could neither accept a connection (it waited unanswered in the backlog) nor open what
    a request needs (a 500)."""
    needed = wanted + DESCRIPTORS_FOR_THE_APP
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        raised = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (raised, hard))
            soft = raised
        except (ValueError, OSError):  # refused (a container's own ceiling): keep the limit we have
            pass
    if soft == resource.RLIM_INFINITY:
        return wanted
    return max(1, min(wanted, soft - DESCRIPTORS_FOR_THE_APP))


class Refused(Exception):
    """A request refused before it reaches the app, with the status to answer."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class _CoalescingTransport:
    """A connection's transport that sends what one step of the event loop writes in one
    ``send``: uvicorn writes an answer's head and body separately, which made two TCP segments
    and often two wake-ups of the client (a keep-alive client reads the head, then waits for the
    body). Held writes go out when the answer is complete, when the connection closes, or at the
    loop's next turn, whichever comes first."""

    __slots__ = ("_dropped", "_held", "_loop", "_transport", "_unread", "lingering")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop,
                 unread: Callable[[], bool] = lambda: False) -> None:
        self._transport = transport
        self._loop = loop
        self._held: list[bytes] = []
        self._unread = unread
        self.lingering = False
        """Closed by us with the client maybe still sending: what arrives is dropped (``drop``)."""
        self._dropped = 0

    def write(self, data: bytes) -> None:
        if not self._held:
            self._loop.call_soon(self.flush)
        self._held.append(data)

    def flush(self) -> None:
        """Send whatever is held."""
        if self._held:
            data = self._held[0] if len(self._held) == 1 else b"".join(self._held)
            self._held = []
            self._transport.write(data)

    def close(self) -> None:
        """Close once what is held is sent. While the client may still be sending the request
        being answered (``unread``: a refusal before its head or body was wholly read), a
        lingering close (RFC 9112, 9.6): our side is shut (the client reads the answer, then the
        end), and what it still sends is read and dropped until it closes its side, for at most
        LINGER_SECONDS and LINGER_MAX_BYTES. Closed at once, the unread bytes made the kernel
        reset the connection: a client that writes its whole request before reading (http.client,
        Net::HTTP) failed on its write or lost the answer already sent, and saw no 413."""
        self.flush()
        if self.lingering or self._transport.is_closing():
            return
        if not (self._unread() and self._transport.can_write_eof()):
            self._transport.close()
            return
        try:
            self._transport.write_eof()  # sent after what is buffered; asyncio then closes when the client does
        except OSError:
            # The client reset the connection since the answer left (it read it and closed,
            # the refused bytes unread): nobody is left to linger for. The OSError (ENOTCONN)
            # went out of the app's send, a traceback in the log, the connection left marked
            # lingering.
            self._transport.abort()
            return
        self.lingering = True
        self._transport.resume_reading()  # paused by uvicorn while a body it was not asked for piled up
        self._loop.call_later(LINGER_SECONDS, self._transport.close)

    def drop(self, data: bytes) -> None:
        """What arrived after a lingering close: dropped, up to LINGER_MAX_BYTES."""
        self._dropped += len(data)
        if self._dropped > LINGER_MAX_BYTES:
            self._transport.abort()

    def is_closing(self) -> bool:
        return self.lingering or self._transport.is_closing()

    def __getattr__(self, name: str) -> Any:  # anything else: the transport's own
        return getattr(self._transport, name)


class BoundedHttpProtocol(HttpToolsProtocol):
    """uvicorn's HTTP/1.1 protocol on httptools, bounded and answering in JSON (see the module's
    docstring)."""

    _head_timer: asyncio.TimerHandle | None = None
    _write_timer: asyncio.TimerHandle | None = None
    _in_head = True  # waiting for the first request, or inside a request's line and headers
    _head_bytes = 0
    _chunks = 0
    _chunked = False
    _body_wire_bytes = 0
    _header_fields = 0
    _refusal: Refused | None = None
    _deferred: Refused | None = None
    """A refusal that waits for the answers owed to the requests before it on the connection."""
    _owed = 0
    on_lost: Callable[[], None] | None = None
    """Called once when the connection is gone (its loop counts it no more)."""
    made = False
    idle: dict["BoundedHttpProtocol", None] | None = None
    """Its loop's connections that have no whole request in the app (``_LoopServer.idle``),
    oldest first: this one is in it from its start, and again after each answer, until the next
    request is wholly read."""

    def connection_made(self, transport: Any) -> None:
        self.made = True
        super().connection_made(transport)
        self.transport = _CoalescingTransport(transport, self.loop, self._request_unread)  # type: ignore[assignment]
        self._now_idle()
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            # gunicorn makes its listening socket with protocol 0, so asyncio does not know it is
            # TCP and leaves Nagle on: a body written after its head would wait for an ACK.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._arm_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._now_busy()
        self._cancel_head_timer()
        if self._write_timer is not None:
            self._write_timer.cancel()
            self._write_timer = None
        super().connection_lost(exc)
        if self.on_lost is not None:
            on_lost, self.on_lost = self.on_lost, None
            on_lost()

    def pause_writing(self) -> None:
        """The client reads slower than we write (asyncio's buffer is past its high mark): it has
        CLIENT_TIMEOUT_SECONDS to make room, then the connection is dropped. A client that never
        read held its connection for good: a close waits for the buffer to drain."""
        super().pause_writing()
        if self._write_timer is None:
            self._write_timer = self.loop.call_later(CLIENT_TIMEOUT_SECONDS, self._not_reading)

    def resume_writing(self) -> None:
        super().resume_writing()
        if self._write_timer is not None:
            self._write_timer.cancel()
            self._write_timer = None

    def _not_reading(self) -> None:
        self._write_timer = None
        sock = self.transport.get_extra_info("socket")
        if sock is not None:  # a reset: the kernel drops the megabytes it still holds for the client
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.transport.abort()  # what it has not read is lost: it was not reading

    def _request_unread(self) -> bool:
        """Whether the client may still be sending the request being closed on: a refusal while
        its head arrives, or an answer given before its body was wholly read. Not for one evicted
        (``evict``): its place is a new connection's now."""
        return not self._evicted and (self._refusing or (self.cycle is not None and self.cycle.more_body))

    _refusing = False
    _evicted = False

    def data_received(self, data: bytes) -> None:
        if self.transport.lingering:  # type: ignore[attr-defined]
            self.transport.drop(data)  # type: ignore[attr-defined]
            return
        if self._deferred is not None:
            return  # refused: nothing after the refused request is read, the connection ends
        self._unset_keepalive_if_required()
        self._read_known, self._head_began = 0, -1
        self._parse(data)
        if (not self._in_head and self._head_began < 0 and self._read_known == 0 and not self.pipeline
                and (self.cycle is None or self.cycle.response_complete)):
            # Between two requests, bytes that began none: empty lines, which llhttp skips before
            # a request line (RFC 9112, 2.2). They are the next head's start, under its deadline
            # and bound: uvicorn cancels its keep-alive timeout at every byte that arrives, so a
            # CRLF every few seconds held a kept-alive connection open for good.
            self._in_head = True
        if self._in_head and self._deferred is None and not self.transport.is_closing():
            # Counted after parsing, so a body that arrives with its head is not counted as head,
            # nor are the requests before it in this read (pipelined): the head's bytes are those
            # from where it began at the earliest (_head_began). Counting the whole read, a read
            # of more than 32 KiB of small pipelined requests ending inside the next one's head
            # refused that 38-byte request with a 431 "head larger than 32768 bytes".
            if self._head_began >= 0:
                self._head_bytes = len(data) - self._head_began
            else:  # begun in an earlier read
                self._head_bytes += len(data)
            if self._head_bytes > MAX_HEAD_BYTES:
                self._refuse(Refused(431, f"request head larger than {MAX_HEAD_BYTES} bytes"))
            elif self._head_timer is None:  # a kept-alive connection's next request has begun
                self._arm_head_timer()
        elif self._in_chunked_body() and self._deferred is None and not self.transport.is_closing():
            # Counted per read that begins and ends inside the body (framing included, which
            # llhttp parses without telling us: no callback for chunk extensions), from the read
            # after the one that ended its head: that one may also hold requests before it
            # (pipelined), which are not this body's, and is at most a read (256 KiB).
            if self._body_wire_bytes < 0:
                self._body_wire_bytes = 0
                return
            self._body_wire_bytes += len(data)
            if self._body_wire_bytes > MAX_CHUNKED_BODY_WIRE_BYTES:
                self._refuse(Refused(413, f"chunked request body larger than {MAX_CHUNKED_BODY_WIRE_BYTES} "
                                          "bytes on the wire"))

    def _in_chunked_body(self) -> bool:
        """Whether the request being read has a chunked body not wholly read yet."""
        cycle: RequestResponseCycle | None = self.cycle
        return self._chunked and cycle is not None and cycle.more_body

    def _parse(self, data: bytes) -> None:
        """uvicorn's parsing of what arrived, but for a request asking for an Upgrade (h2c,
        websocket; CONNECT too): llhttp stops at its end and hands the rest over as the new
        protocol's, which uvicorn dropped; a request pipelined after it was never answered (and
        what came in a later read was parsed as HTTP again). We upgrade to nothing: the request
        is served as the HTTP/1.1 request it also is, and what follows is the next request."""
        while True:
            try:
                self.parser.feed_data(data)
            except httptools.HttpParserUpgrade as upgrade:
                rest = data[upgrade.args[0]:]
                if 0 < len(rest) < len(data) and not self.transport.is_closing():  # shorter each time
                    data = rest
                    continue
            except httptools.HttpParserError as error:
                client = self.client[0] if self.client else None
                INVALID_REQUESTS.note(self.loop.call_later, client=client, reason=str(error))
                if self._refusal is None and bare_line_end(str(error), data):
                    self._refusal = Refused(400, LINE_END_REFUSAL)
                self.send_400_response("Invalid HTTP request received.")
            return

    _read_known = 0
    """Of the read being parsed, how many bytes at least came before where parsing is: the heads
    (in their shortest form) and the body bytes of the requests parsed from it so far."""
    _head_began = -1
    """Where in the read being parsed the head being read began, at the earliest (``_read_known``
    then); -1 when it began in an earlier read."""

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_head = True
        self._header_fields = 0
        self._head_began = self._read_known

    def on_body(self, body: bytes) -> None:
        self._read_known += len(body)
        super().on_body(body)

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
        if not self._in_head:
            # A trailer field (after a chunked body's last chunk), bounded above as a header is
            # but never merged into the header section (RFC 9110, 6.5.1): uvicorn appended it to
            # the request's headers, so a token sent only there was the request's credential
            # (unseen by a proxy checking the head, and by API Gateway, which passes no trailers)
            # when the trailers came in the read that held the head, and not otherwise.
            return
        super().on_header(name, value)

    def on_chunk_header(self) -> None:
        self._chunks += 1
        if self._chunks > MAX_CHUNKS:
            self._stop_parsing(Refused(413, f"request body in more than {MAX_CHUNKS} chunks"))

    def on_headers_complete(self) -> None:
        self._chunks = 0
        self._body_wire_bytes = -1  # its head ended in the read being parsed (data_received)
        self._chunked = any(name == b"transfer-encoding" for name, _ in self.headers)
        head_bytes = self._whole_head_bytes()
        # The head's bytes in this read: all of it when it began here, else at least what the
        # earlier reads did not hold (they held at most _head_bytes of it).
        self._read_known = (self._head_began + head_bytes if self._head_began >= 0
                            else max(head_bytes - self._head_bytes, 0))
        refusal = self._head_refusal(head_bytes)
        if refusal is not None:
            self._stop_parsing(refusal)
        self._in_head = False
        self._head_bytes = 0
        self._cancel_head_timer()
        # Whether to send "100 Continue" before reading the body, decided here rather than by
        # uvicorn (any Expect field whose value is exactly "100-continue"): an HTTP/1.0 client's
        # expectation is ignored (RFC 9110, 10.1.1: it takes a 1xx for the final answer, and a
        # checkout it sent read "100 Continue" while a VM was taken for it), and one written
        # with spaces around (which llhttp leaves in the value) is honoured as _head_refusal
        # accepts it, not left waiting for a 100 that never came.
        self.expect_100_continue = self.parser.get_http_version() == "1.1" and any(
            name == b"expect" and value.strip().lower() == b"100-continue" for name, value in self.headers)
        self.url = origin_form(self.url)
        super().on_headers_complete()

    def _head_refusal(self, head_bytes: int) -> Refused | None:
        """What to answer a whole head that llhttp lets through, if anything: one over
        ``MAX_HEAD_BYTES`` (431); as RFC 9112 and 9110 say, a version other than HTTP/1.0 or 1.1
        (505; llhttp reads a line without one as 0.9 and takes 2.0), an HTTP/1.1 request without
        one Host or any with two (400), a transfer coding other than chunked (501: ``gzip,
        chunked`` was read as chunked and the gzip dropped), an expectation other than
        100-continue (417), a body with a request asking for an Upgrade (400), a Host that is no
        ``host[:port]`` (400), a Transfer-Encoding in an HTTP/1.0 request (400)."""
        if head_bytes > MAX_HEAD_BYTES:
            # A head that arrived in one read is whole before data_received counts it.
            return Refused(431, f"request head larger than {MAX_HEAD_BYTES} bytes")
        version = self.parser.get_http_version()
        has_body = any(name == b"transfer-encoding" or (name == b"content-length" and int(value))
                       for name, value in self.headers)
        if has_body and self.parser.should_upgrade():
            # llhttp would hand the body over as the upgraded protocol's: unread, it was parsed as
            # the next request (a request smuggled in the body of an h2c upgrade)
            return Refused(400, "a request asking for an Upgrade may not have a body here")
        if version not in ("1.0", "1.1"):
            return Refused(505, f"HTTP/{version} is not served; use HTTP/1.1")
        hosts = [value for name, value in self.headers if name == b"host"]
        if len(hosts) > 1 or (not hosts and version == "1.1"):
            return Refused(400, "an HTTP/1.1 request needs exactly one Host header")
        if hosts and not HOST_VALUE.match(hosts[0].strip(b" \t")):  # llhttp keeps the spaces after a value
            return Refused(400, "the Host header is not a host and port")
        for name, value in self.headers:
            if name == b"transfer-encoding" and version == "1.0":
                # HTTP/1.0 has no transfer codings: a proxy in front reading it as 1.0 takes the
                # chunks for the next request (RFC 9112, 6.1: the framing is faulty).
                return Refused(400, "Transfer-Encoding is not HTTP/1.0; send HTTP/1.1 or a Content-Length")
            if name == b"transfer-encoding":
                codings = {coding.strip().lower() for coding in value.split(b",")} - {b"chunked"}
                if codings:
                    # Named as the app names a client's value (``shown``): a value's bytes over
                    # 0x7F are Latin-1 here, and a C1 control (\x9b, CSI) came back as such.
                    listed = shown(b", ".join(sorted(codings)).decode("latin-1"))
                    return Refused(501, f"transfer coding {listed} is not supported; only chunked")
            elif name == b"expect" and value.strip().lower() != b"100-continue":
                return Refused(417, "only Expect: 100-continue is supported")
        return None

    def _whole_head_bytes(self) -> int:
        """The size of the head just parsed, as sent in its shortest form (no head sent is
        shorter): request line, each field as ``name:value`` and a line break, the blank line."""
        line = len(self.parser.get_method()) + len(self.url) + len(b" HTTP/1.1\r\n") + 1
        return line + sum(len(name) + len(value) + 3 for name, value in self.headers) + 2

    def on_response_complete(self) -> None:
        super().on_response_complete()  # starts the next pipelined request, if one waits
        if not self.pipeline and (self.cycle is None or self.cycle.response_complete):
            self._now_idle()
        # Sent only now that the connection is idle: the send releases the GIL, and this loop's
        # thread may wait for it long after the client has its answer. A client that then opened
        # another connection at the worker's bound found every place held by a request (this
        # one still counted in the app) and was refused, where it should take this one's place.
        self.transport.flush()  # type: ignore[attr-defined]
        if self._deferred is not None:
            self._owed -= 1
            if self._owed <= 0:
                self._answer(self._deferred)

    def on_message_complete(self) -> None:
        self._now_busy()  # the whole request is read: the app runs it
        super().on_message_complete()
        self._in_head = False  # until the next request's first byte; idle, uvicorn's keep-alive applies

    def _now_idle(self) -> None:
        if self.idle is not None:
            self.idle.pop(self, None)
            self.idle[self] = None  # last: the newest

    def _now_busy(self) -> None:
        if self.idle is not None:
            self.idle.pop(self, None)

    def evict(self) -> None:
        """Give this connection's place to a new one (its worker is at its bound of connections):
        called only while no whole request of it is in the app. A request half read (its head or
        its body) is refused with a 503; a kept-alive connection between requests is closed as
        its keep-alive timeout would; one whose client does not read what it was sent, or one
        answered and lingering (``_CoalescingTransport.close``), is reset."""
        self._now_busy()
        self._evicted = True
        if self.transport.lingering:  # type: ignore[attr-defined]
            self.transport.abort()  # answered; only what its client still sends is being dropped
            return
        if self.transport.is_closing():
            return
        if self.transport.get_write_buffer_size():
            self._not_reading()
        elif self._in_head or (self.cycle is not None and not self.cycle.response_complete):
            self._refuse(Refused(503, "too many open connections; try again"))
        else:
            self.transport.close()

    def send_400_response(self, msg: str) -> None:
        """uvicorn's answer to whatever httptools refuses, our Refused raised in a callback included."""
        self._refuse(self._refusal or Refused(400, "malformed HTTP request"))

    def _stop_parsing(self, refusal: Refused) -> None:
        # Raised inside a parser callback: httptools stops and raises HttpParserError, which
        # uvicorn answers through send_400_response.
        self._refusal = refusal
        raise refusal

    def _refuse(self, refusal: Refused) -> None:
        """Refuse the request being read, once the requests before it on the connection (whole,
        pipelined) have their answers: a refusal that closed the connection at once lost those
        answers while their apps still ran (a checkout took a VM nobody was told of)."""
        self._cancel_head_timer()
        if self.transport.is_closing() or self._deferred is not None:
            return
        cycle: RequestResponseCycle | None = self.cycle
        if cycle is not None and cycle.more_body and not cycle.response_complete:
            # The refused request is this cycle's own (its body is bad): it is not served.
            if self.pipeline and self.pipeline[0][0] is cycle:
                self.pipeline.popleft()  # waiting its turn: never started
            elif cycle.response_started:  # answered already, or half: nothing more can be said
                self.transport.close()
                return
            else:  # its app waits for the body: it hears the client is gone, and nothing it sends goes out
                cycle.disconnected = True
                cycle.message_event.set()
                cycle = None
        running = bool(self.pipeline) or (cycle is not None and not cycle.response_complete)
        self._owed = len(self.pipeline) + running
        if self._owed:
            self._deferred = refusal  # answered by on_response_complete after the last one owed
        else:
            self._answer(refusal)

    def _answer(self, refusal: Refused) -> None:
        """Write ``refusal`` as the connection's last answer, and close it."""
        if not self.transport.is_closing():
            self.transport.write(json_error_response(refusal.status, str(refusal)))
            self._refusing = True  # the refused request may still be arriving: a lingering close
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


def origin_form(target: bytes) -> bytes:
    """The request target with an absolute-form one's empty path read as ``/`` (RFC 9112, 3.2.2:
    ``GET http://host`` and ``GET http://host?q`` ask for ``/``), which uvicorn found no path in
    (a 400); any other target as it is."""
    if target.startswith(b"/"):
        return target
    try:
        parsed = httptools.parse_url(target)
    except httptools.HttpParserInvalidURLError:
        return target  # uvicorn refuses it as it did
    if parsed.schema and parsed.host and not parsed.path:
        return b"/" + (b"?" + parsed.query if parsed.query else b"")
    return target


_JSON_HEAD_LINES = "".join(f"{name}: {value}\r\n" for name, value in JSON_HEADERS.items())
"""The headers of every JSON answer (``chalicelib.api.http.JSON_HEADERS``) as lines of a head."""


def json_error_response(status: int, message: str) -> bytes:
    """A whole HTTP/1.1 answer with a JSON error body, closing the connection."""
    try:
        reason = http.HTTPStatus(status).phrase
    except ValueError:
        reason = "Error"
    body = json_text({"ok": False, "error": f"{reason}: {message[:200]}" if message else reason}).encode()
    head = (f"HTTP/1.1 {status} {reason}\r\n{_JSON_HEAD_LINES}"
            f"Content-Length: {len(body)}\r\n"
            "Connection: close\r\n\r\n")
    return head.encode("latin-1") + body


TOO_MANY_CONNECTIONS = json_error_response(503, "too many open connections; try again")


def _turn_away(connection: socket.socket) -> None:
    """Answer a connection past the worker's bound with a JSON 503 and close it, before this call
    returns: it holds no descriptor after (a burst of such connections, each refused on a later
    turn of the loop, took the descriptors the app needed). uvicorn's own check, at each
    request, would answer in text."""
    with contextlib.suppress(OSError):  # the client is gone already: nothing to tell it
        connection.send(TOO_MANY_CONNECTIONS)
    connection.close()


class _LoopServer(Server):
    """uvicorn's server on one event loop of a worker, remembering when its loop last ticked (every
    0.1 s while it turns) and asking its ``followers`` (the worker's other loops) to finish when
    it is asked to.

    It opens no asyncio server: the worker's first loop accepts the connections of the worker's
    listening socket itself and gives each to the loop that holds the fewest (``_hand``), this
    one included. A loop calls the app inline, so the connections of one loop are served one
    request after another: spread by the kernel (a socket per loop), 8 connections landed on
    about 5 of 8 loops, some loops holding 3 while others held none."""

    ticked = 0.0
    clock: Callable[[], float] = time.monotonic
    """What ``ticked`` is read from (``InProcessFront``'s clock: a test's fake one)."""
    heartbeat: Callable[[], None] | None = None
    """On the worker's first loop: called at every turn of it, to tell the arbiter the worker is
    alive. (uvicorn's own ``callback_notify`` is asked every tenth turn only: a loop whose turns
    each run many requests went past the arbiter's timeout and was killed while it served.)"""
    followers: tuple["_LoopServer", ...] = ()
    accepting: "_LoopServer | None" = None
    """On the worker's other loops: its first loop, the one accepting for all."""
    max_connections: int | None = None
    """The worker's bound on open connections, over all its loops (on the accepting loop)."""
    loop: asyncio.AbstractEventLoop | None = None
    # Connections the accepting loop has given this loop, and how many of those are gone (closed,
    # or never served): each written by one thread only, so their difference needs no lock. A
    # connection counts from its hand-off to its loss, once: counting the loop's open connections
    # beside those on their way counted one being taken up twice for a moment, and a burst of
    # connections below the bound was refused.
    handed = 0
    released = 0
    # Of the idle connections (``idle``), how many the accepting loop has asked this loop to
    # close for a new one, and how many it has closed: one writer each, as above.
    evictions_asked = 0
    evictions_done = 0
    idle: dict[BoundedHttpProtocol, None]
    """This loop's connections with no whole request in the app, oldest first (each connection
    keeps itself in it, on this loop's thread)."""
    _listeners: tuple[socket.socket, ...] = ()
    listening = False
    """On the accepting loop: its listening sockets are non-blocking and watched (``startup``
    done); the other loops may then accept from them for it (``ACCEPT_TAKEOVER_SECONDS``)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.idle = {}
        self._handing = threading.Lock()
        """On the accepting loop: held while a connection is given a loop (``_hand``), by it or by
        another loop accepting for it, so the two never count one place twice."""

    def held(self) -> int:
        """Connections this loop serves or is about to."""
        return self.handed - self.released

    def turning(self) -> bool:
        """Whether this loop has turned within ``ACCEPT_TAKEOVER_SECONDS``: not held by a request."""
        return self.clock() - self.ticked <= ACCEPT_TAKEOVER_SECONDS

    def over_the_bound(self) -> bool:
        """Whether the worker holds more connections than its bound (read from any of its loops)."""
        first = self.accepting or self
        return (first.max_connections is not None
                and sum(loop.held() for loop in (*first.followers, first)) > first.max_connections)

    def spare(self) -> int:
        """Idle connections this loop could still close for a new one."""
        return len(self.idle) - (self.evictions_asked - self.evictions_done)

    async def on_tick(self, counter: int) -> bool:
        self.ticked = self.clock()
        if self.heartbeat is not None:
            self.heartbeat()
        first = self.accepting
        if first is not None and first.listening and not first.should_exit and not self.should_exit \
                and self.ticked - first.ticked > ACCEPT_TAKEOVER_SECONDS:
            for listener in first._listeners:  # it is stuck: its connections would wait with it
                first._accept(listener, taker=self)
        if self.should_exit:  # SIGTERM / SIGINT reach the main thread's server only
            for follower in self.followers:
                follower.should_exit = True
        return await super().on_tick(counter)

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        self.loop = asyncio.get_running_loop()
        await super().startup(sockets=[])  # no asyncio server: connections come through _hand
        self._listeners = tuple(sockets or ())
        # Accept once every loop can take connections, so the first ones are spread too (until
        # then they wait in the listening socket's backlog).
        deadline = time.monotonic() + STARTUP_SECONDS
        while self._listeners and not self.should_exit and time.monotonic() < deadline:
            if all(follower.started for follower in self.followers):
                break
            await asyncio.sleep(0.005)
        for listener in self._listeners:
            listener.setblocking(False)
            self._listen(listener)
        self.listening = bool(self._listeners)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        assert self.loop is not None
        for listener in self._listeners:
            self.loop.remove_reader(listener)
        await super().shutdown(sockets=sockets)
        # The count not said yet, before the worker goes: here, as uvicorn's serve re-raises the
        # signal that stopped it once it returns, and the process dies of it.
        INVALID_REQUESTS.flush()

    def _listen(self, listener: socket.socket) -> None:
        assert self.loop is not None
        if not self.should_exit:
            self.loop.add_reader(listener, self._accept, listener)

    def _accept(self, listener: socket.socket, taker: "_LoopServer | None" = None) -> None:
        """Every connection waiting on ``listener`` (as asyncio's own accept does), each handed on;
        on ``taker``'s thread when another loop accepts for this one, which is stuck."""
        assert self.loop is not None
        for _ in range(self.config.backlog):
            try:
                connection, _ = listener.accept()
            except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                return
            except OSError as error:
                if taker is not None:  # out of descriptors: the accepting loop deals with it when it turns
                    return
                if error.errno not in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    raise
                # Out of descriptors or memory: the socket stays readable, so stop watching it
                # for a second instead of spinning (asyncio does the same).
                logger.warning("accept failed (%s); accepting again in 1 s", error)
                self.loop.remove_reader(listener)
                self.loop.call_later(1.0, self._listen, listener)
                return
            connection.setblocking(False)
            self._hand(connection, taker or self)

    def _hand(self, connection: socket.socket, taker: "_LoopServer") -> None:
        """Give ``connection`` to the loop holding the fewest (this one, the accepting loop, last
        among equals; not this one when ``taker``, another loop, accepted it because this one is
        stuck), of those turning (``turning``) if any is. At the worker's bound, to the loop with
        the most idle connections, which closes its oldest idle one for it; with none idle
        anywhere, the new one is turned away.

        Why a bound per worker and not per client is enough: a place is held for good only by a
        request in the app. Connections that send nothing, or a head or a body a byte a second
        (slowloris), or sit kept alive between requests, hold one only until a new connection
        needs it, so a client opening thousands of them no longer turns every other caller away
        with 503 (behind one address, 127.0.0.1, a bound per client would have counted everyone
        as that client)."""
        loops = (*(follower for follower in self.followers if follower.started), self)
        candidates = loops if taker is self else loops[:-1]
        # A loop that has not turned lately is held by a request (a login to a stopped directory):
        # a connection given it would wait for that request while another loop is free.
        candidates = tuple(loop for loop in candidates if loop.turning()) or candidates
        with self._handing:
            evict = self.max_connections is not None and sum(loop.held() for loop in loops) >= self.max_connections
            if evict:
                target = max(candidates, key=_LoopServer.spare)
                if target.spare() <= 0:
                    _turn_away(connection)
                    return
                target.evictions_asked += 1
            else:
                target = min(candidates, key=_LoopServer.held)
            target.handed += 1
        if target is taker:
            taker._adopt(connection, evict)
            return
        assert target.loop is not None
        try:
            target.loop.call_soon_threadsafe(target._adopt, connection, evict)
        except RuntimeError:  # that loop has closed (its worker is stopping)
            target.released += 1
            connection.close()

    def _adopt(self, connection: socket.socket, evict: bool = False) -> None:
        """Serve ``connection`` on this loop (called on this loop's thread); ``evict``: in place
        of this loop's oldest idle connection."""
        assert self.loop is not None
        if evict:
            self.evictions_done += 1
            oldest = next(iter(self.idle), None)
            if oldest is not None:
                oldest.evict()
            elif self.over_the_bound():  # busy since it was asked: the new connection is the one refused
                self.released += 1
                _turn_away(connection)
                return
            # Else the idle one is gone since it was asked (its keep-alive ran out, its client
            # hung up): its place is free, and the new connection takes it. It was refused.
        if self.should_exit:
            self.released += 1
            connection.close()
            return
        made: list[BoundedHttpProtocol] = []

        def protocol() -> asyncio.Protocol:
            made.append(self._protocol())
            made[0].on_lost = self._release
            made[0].idle = self.idle
            return made[0]

        def adopted(task: "asyncio.Task[Any]") -> None:
            failed = task.cancelled() or task.exception() is not None
            if failed and not (made and made[0].made):  # else its connection_lost releases it
                self._release()
            if not task.cancelled() and task.exception() is not None:
                logger.warning("a connection could not be served: %s", task.exception())

        task = self.loop.create_task(self.loop.connect_accepted_socket(protocol, sock=connection))
        task.add_done_callback(adopted)

    def _release(self) -> None:
        self.released += 1

    def _protocol(self) -> Any:
        protocol_class: Any = self.config.http_protocol_class
        return protocol_class(config=self.config, server_state=self.server_state, app_state=self.lifespan.state)


class LoopOwner(Protocol):
    """What a loop thread needs of the front it serves for: a worker of gunicorn's layout
    (``gunicorn_front.OneAppWorker``, which imports this module) or ``InProcessFront``."""

    config: Any

    def stop_serving(self) -> None:
        """Stop the front's serving (a loop of it died)."""


class _LoopThread(threading.Thread):
    """One more event loop of a worker: its own thread and uvicorn server calling the app inline,
    serving the connections the worker's first loop hands it."""

    def __init__(self, worker: LoopOwner, number: int) -> None:
        super().__init__(name=f"vmpool-http-loop-{number}", daemon=True)
        config = copy.copy(worker.config)
        config.callback_notify = None  # the worker's first loop tells the arbiter it is alive
        self.server = _LoopServer(config=config)
        self.server.clock = getattr(worker, "clock", time.monotonic)
        self.server.ticked = self.server.clock()
        self.worker = worker

    def run(self) -> None:
        try:
            with asyncio.Runner(loop_factory=self.server.config.get_loop_factory()) as runner:
                runner.run(self.server.serve(sockets=[]))
        finally:  # a loop that died takes its worker down: the arbiter starts a new one
            self.worker.stop_serving()


TOKEN_IN_PATH = re.compile(r"(/token/+)[^/]+")
"""A token's place in a path, after however many slashes: the routes read slashes in a row as one
(``local.gateway.merged_slashes``), so ``/api/v3/token//<t>`` is ``GET /token/<t>`` too, and
its token was logged whole."""


def shown_path(path: str) -> str:
    """``path`` as it may be logged: a token in it (``/api/v3/token/<t>``, ``/token//<t>``) left out."""
    return TOKEN_IN_PATH.sub(r"\1<token>", path)


@dataclass(frozen=True)
class StuckLoop:
    """A loop of ``InProcessFront`` that has not turned for its timeout, and the request it is in
    (empty when in none)."""

    loop: str
    silent_seconds: float
    method: str
    path: str


watchdog_logger = logging.getLogger("vmpool.http_front.watchdog")


UVICORN_CONFIG: dict[str, Any] = {
    # uvloop measured no better (docs/performance.md, "Then: connections spread over loops").
    "loop": "asyncio",
    "http": BoundedHttpProtocol,
    "lifespan": "off",
    "ws": "none",  # no WebSocket upgrade, whatever is installed: the app serves HTTP only
    "proxy_headers": False,  # the client's address is the socket's: no X-Forwarded-For
    "server_header": False,
    "timeout_graceful_shutdown": 5,
}
"""uvicorn's settings for every loop, a worker's (``gunicorn_front.OneAppWorker``) or ``InProcessFront``'s."""


class InProcessFront:
    """The HTTP front inside the calling process (``python -m local.run --workers 0``): the same
    protocol (``BoundedHttpProtocol``: its bounds, header rules and JSON errors), the same ASGI
    app and gateway, the same event loops each on its own thread (``AsgiApp.threads``, the first
    accepting for all and bounding the connections, ``_LoopServer``), without gunicorn's arbiter
    or a worker process: the threads run beside whatever else the process runs (``local.run``'s
    scheduler). One app serves every loop: the service's app keeps the request being served per
    thread (``RequestLocalChalice``), and ``AsgiApp`` gives any other app one loop.

    What the arbiter did and nothing here does as it did: restart a worker that died or whose
    loops are stuck (a loop that ends ends this front: ``is_alive``; ``local.run`` starts another;
    a loop that has not turned for ``loop_timeout``, stuck in a request, is said once by
    ``stuck_loop``: a thread cannot be killed, so ``local.run`` then stops the stack and execs
    itself anew, ``restart_after_a_stuck_loop``), and spread requests over the cores (one interpreter, one lock: HTTP
    and the scheduler share a core's worth of Python). It answers to no signal itself: ``stop``
    from the thread that got one."""

    def __init__(self, load_app: Callable[[], Callable[..., Any]], host: str, port: int,
                 max_connections: int = MAX_CONNECTIONS, loop_timeout: float = WORKER_TIMEOUT_SECONDS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        from uvicorn.config import Config

        app = load_app()
        self.clock = clock
        self.loop_timeout = loop_timeout
        self._requests: dict[int, tuple[str, str]] = {}
        """The request each loop's thread is serving (method, path with no token), by thread."""
        self._checked = self._grace_from = clock()
        self._reported = False
        self._stuck: threading.Thread | None = None
        """The loop's thread ``stuck_loop`` said is stuck: never waited for again (it may never end)."""
        self.config = Config(app=self._tracked(app), log_config=None, access_log=False, timeout_keep_alive=5,
                             backlog=512,
                             **UVICORN_CONFIG)
        self.config.limit_concurrency = max_connections + 1  # as OneAppWorker: _LoopServer bounds below it
        error_log = logging.getLogger("uvicorn.error")
        if not error_log.handlers:
            error_log.addHandler(json_stderr_handler())
        error_log.setLevel(logging.WARNING)  # as the workers' ("loglevel": "warning")
        error_log.propagate = False
        if not watchdog_logger.handlers:  # JSON on stderr, as uvicorn's lines here
            watchdog_logger.addHandler(json_stderr_handler())
            watchdog_logger.propagate = False
        self.config.load()
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gunicorn's: TIME_WAIT, the stack's hold
        try:
            listener.bind((host, port))
            listener.listen(self.config.backlog)
        except OSError:
            listener.close()
            raise
        self._listener = listener
        self._server = _LoopServer(config=self.config)
        self._server.clock = clock
        self._server.ticked = clock()
        self._server.max_connections = connection_bound(max_connections)
        self._asked_to_stop = False
        loops = max(int(getattr(app, "threads", 1)), 1)
        self._loops = [_LoopThread(self, number) for number in range(1, loops)]
        self._server.followers = tuple(loop.server for loop in self._loops)
        for loop in self._loops:
            loop.server.accepting = self._server
        self._thread = threading.Thread(target=self._run, name="vmpool-http-loop-0", daemon=True)

    def _tracked(self, app: Callable[..., Any]) -> Callable[..., Any]:
        """``app``, noting which request each loop's thread is in (for ``stuck_loop``)."""
        requests = self._requests

        async def tracked(scope: dict[str, Any], receive: Any, send: Any) -> None:
            thread = threading.get_ident()
            request = (str(scope.get("method", "")), shown_path(str(scope.get("path", ""))))
            requests[thread] = request

            async def received() -> Any:
                # Another request of this loop may have run while this one waited for its body:
                # this one is the loop's again (the app's blocking work comes after its body).
                message = await receive()
                requests[thread] = request
                return message

            try:
                await app(scope, received, send)
            finally:
                if requests.get(thread) is request:
                    del requests[thread]

        return tracked

    def stuck_loop(self) -> StuckLoop | None:
        """The first loop that has not turned for ``loop_timeout`` seconds (stuck in a request:
        while it is, every connection on it waits), said once as a CRITICAL JSON log line with
        the request's method and path (a token in the path left out); then None for good. Called
        often (``local.run``'s main loop, every 0.5 s): a gap of more than PAUSE_SECONDS between
        two calls means this process did not run (Ctrl-Z of the stack, then ``fg``), and the
        loops' silence over it is not theirs, as the default's arbiter counts it
        (``ARBITER_PAUSE_SECONDS``)."""
        now = self.clock()
        if now - self._checked > ARBITER_PAUSE_SECONDS:
            self._grace_from = now
        self._checked = now
        if self._reported:
            return None
        for thread, server in ((self._thread, self._server), *((loop, loop.server) for loop in self._loops)):
            silent = now - max(server.ticked, self._grace_from)
            if silent <= self.loop_timeout or not thread.is_alive():
                continue
            self._reported = True
            self._stuck = thread
            method, path = self._requests.get(thread.ident or 0, ("", ""))
            stuck = StuckLoop(thread.name, round(silent, 1), method, path)
            watchdog_logger.critical(
                "HTTP loop %s stuck for %.0f s%s", stuck.loop, stuck.silent_seconds,
                f" in {method} {path}" if method else "",
                extra={"loop": stuck.loop, "silent_seconds": stuck.silent_seconds, "method": method, "path": path})
            return stuck
        return None

    def start(self, timeout: float = STARTUP_SECONDS) -> bool:
        """Start the loops; whether they serve within ``timeout`` seconds."""
        for loop in self._loops:
            loop.start()
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started and self._thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.01)
        return self._server.started

    def _run(self) -> None:
        try:
            with asyncio.Runner(loop_factory=self.config.get_loop_factory()) as runner:
                runner.run(self._server.serve(sockets=[self._listener]))
        except Exception:  # said, and the front ends: local.run starts another
            logger.exception("the HTTP front's accepting loop failed")
        finally:
            for loop in self._loops:
                loop.server.should_exit = True
            for loop in self._loops:
                if loop is not self._stuck:
                    loop.join(timeout=self.config.timeout_graceful_shutdown or 5)
            self._listener.close()

    def stop_serving(self) -> None:
        """Ask every loop to finish (a loop that ends asks this: the front ends with it)."""
        self._server.should_exit = True

    def is_alive(self) -> bool:
        """Whether it serves: every loop still runs (one that ended ends the others)."""
        return self._thread.is_alive() and all(loop.is_alive() for loop in self._loops)

    @property
    def asked_to_stop(self) -> bool:
        """Whether ``stop`` ended it (else, once not ``is_alive``, a loop ended on its own)."""
        return self._asked_to_stop

    def stop(self, timeout: float = 10.0) -> None:
        """Finish the requests in the app (``timeout_graceful_shutdown``), close every connection
        and the listening socket; back within ``timeout`` seconds (a loop stuck in a request is
        left to end with the process: its thread is a daemon)."""
        self._asked_to_stop = True
        self.stop_serving()
        for loop in self._loops:
            loop.server.should_exit = True
        if self._thread.ident is not None and self._thread is not self._stuck:
            self._thread.join(timeout)  # its end stops and joins the other loops, closes the listener
            return
        # Stopped while starting (Ctrl-C), before the accepting loop's thread, or that loop stuck
        # in a request (``stuck_loop``: local.run exits 3): nothing else will. Waiting for a
        # stuck accepting loop kept local.run's exit 10 s (this timeout) after the watchdog's
        # line, its listening socket open: new connections queued, then were reset.
        deadline = time.monotonic() + timeout
        for loop in self._loops:
            if loop.ident is not None:
                loop.join(max(deadline - time.monotonic(), 0))
        self._listener.close()
