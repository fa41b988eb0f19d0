"""The load clients' HTTP/1.1: one keep-alive connection, requests written in one ``send``, answers
read with ``Content-Length`` or chunked bodies, the connection opened again when the server
closes it.

Why not ``http.client``: at 8 clients it cost 0.6 to 0.75 ms of CPU per checkout + delete cycle
(building an ``HTTPResponse``, parsing headers with ``email.parser``, a buffered reader per
answer), on the same 2 cores as the stack it measures, about a fifth of the machine. This client
does what a real one must and no more: it sends a complete request (Host, Content-Length), reads
the status and the whole body as the answer's framing says, and keeps the connection unless the
server closes it. It speaks plain HTTP/1.1 to any server, so a comparison with another service
(vmpooler's Puma) uses it the same way.
"""

from __future__ import annotations

import socket

MAX_HEAD_BYTES = 64 * 1024


class HttpError(Exception):
    """An answer this client could not read as HTTP/1.1."""


class KeepAliveClient:
    """One connection to ``host``:``port``, one request at a time."""

    def __init__(self, host: str, port: int, timeout: float = 30.0) -> None:
        self.host, self.port, self.timeout = host, port, timeout
        self._sock: socket.socket | None = None
        self._buffer = b""
        self._host_header = f"{host}:{port}".encode()

    def _connect(self) -> socket.socket:
        sock = socket.create_connection((self.host, self.port), timeout=self.timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._sock, self._buffer = sock, b""
        return sock

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def request(self, method: str, path: str, body: bytes = b"") -> tuple[int, bytes]:
        """Send one request; its status and body. A connection the server closed while idle is
        opened again once (as ``http.client`` does); one closed mid-answer raises."""
        head = b"%s %s HTTP/1.1\r\nHost: %s\r\nContent-Length: %d\r\n\r\n" % (
            method.encode(), path.encode(), self._host_header, len(body))
        fresh = self._sock is None
        sock = self._sock or self._connect()
        try:
            sock.sendall(head + body)
            return self._answer(sock, method)
        except (ConnectionResetError, BrokenPipeError, _ClosedBeforeAnswer):
            self.close()
            if fresh:
                raise
            sock = self._connect()
            sock.sendall(head + body)
            return self._answer(sock, method)

    def _fill(self, sock: socket.socket, started: bool) -> None:
        data = sock.recv(65536)
        if not data:
            self.close()
            raise HttpError("connection closed mid-answer") if started else _ClosedBeforeAnswer()
        self._buffer += data

    def _answer(self, sock: socket.socket, method: str) -> tuple[int, bytes]:
        end = self._buffer.find(b"\r\n\r\n")
        while end < 0:
            if len(self._buffer) > MAX_HEAD_BYTES:
                raise HttpError("answer head too long")
            self._fill(sock, started=bool(self._buffer))
            end = self._buffer.find(b"\r\n\r\n")
        head, self._buffer = self._buffer[:end].decode("latin-1"), self._buffer[end + 4:]
        status_line, *fields = head.split("\r\n")
        version, _, rest = status_line.partition(" ")
        if not version.startswith("HTTP/1.") or not rest[:3].isdigit():
            raise HttpError(f"not an HTTP/1.x status line: {status_line[:80]!r}")
        status = int(rest[:3])
        length: int | None = None
        chunked = close = False
        for field in fields:
            name, _, value = field.partition(":")
            name, value = name.strip().lower(), value.strip().lower()
            if name == "content-length":
                length = int(value)
            elif name == "transfer-encoding":
                chunked = value.endswith("chunked")
            elif name == "connection":
                close = "close" in value
        if method == "HEAD" or status in (204, 304) or 100 <= status < 200:
            body = b""
        elif chunked:
            body = self._chunked(sock)
        elif length is not None:
            while len(self._buffer) < length:
                self._fill(sock, started=True)
            body, self._buffer = self._buffer[:length], self._buffer[length:]
        else:  # no framing: the body ends with the connection
            close = True
            while True:
                data = sock.recv(65536)
                if not data:
                    break
                self._buffer += data
            body, self._buffer = self._buffer, b""
        if close or version == "HTTP/1.0":
            self.close()
        return status, body

    def _chunked(self, sock: socket.socket) -> bytes:
        body = bytearray()
        while True:
            end = self._buffer.find(b"\r\n")
            while end < 0:
                self._fill(sock, started=True)
                end = self._buffer.find(b"\r\n")
            size = int(self._buffer[:end].split(b";")[0], 16)
            self._buffer = self._buffer[end + 2:]
            if size == 0:  # trailers, then the empty line
                while (end := self._buffer.find(b"\r\n")) != 0:
                    if end < 0:
                        self._fill(sock, started=True)
                    else:
                        self._buffer = self._buffer[end + 2:]
                self._buffer = self._buffer[2:]
                return bytes(body)
            while len(self._buffer) < size + 2:
                self._fill(sock, started=True)
            body += self._buffer[:size]
            self._buffer = self._buffer[size + 2:]


class _ClosedBeforeAnswer(Exception):
    """The server had closed the kept-alive connection before this request reached it."""
