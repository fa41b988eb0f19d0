"""The benchmark's HTTP client (bench/http_client.py) reads what any HTTP/1.1 server may answer:
a body framed by Content-Length or chunked, answers split over many reads, a server closing the
connection after an answer or while it is idle. A client that misread an answer would make
the throughput figures count cycles that did not happen."""

from __future__ import annotations

import socket
import threading
from typing import Callable, Iterator

import pytest

from bench.http_client import HttpError, KeepAliveClient

Answer = Callable[[bytes], list[bytes]]


@pytest.fixture
def server() -> Iterator[Callable[[Answer], int]]:
    """A server on a free port answering each request with the pieces ``answer`` returns (each
    sent on its own), closing the connection when a piece is ``b"CLOSE"``."""
    listeners: list[socket.socket] = []

    def start(answer: Answer) -> int:
        listener = socket.create_server(("127.0.0.1", 0))
        listeners.append(listener)

        def serve(connection: socket.socket) -> None:
            with connection:
                buffer = b""
                while True:
                    while b"\r\n\r\n" not in buffer:
                        data = connection.recv(65536)
                        if not data:
                            return
                        buffer += data
                    head, _, buffer = buffer.partition(b"\r\n\r\n")
                    for piece in answer(head):
                        if piece == b"CLOSE":
                            return
                        connection.sendall(piece)

        def accept() -> None:
            while True:
                try:
                    connection, _ = listener.accept()
                except OSError:
                    return
                threading.Thread(target=serve, args=(connection,), daemon=True).start()

        threading.Thread(target=accept, daemon=True).start()
        return int(listener.getsockname()[1])

    yield start
    for listener in listeners:
        listener.close()


def test_content_length_answers_on_one_kept_alive_connection(server: Callable[[Answer], int]) -> None:
    connections = []

    def answer(head: bytes) -> list[bytes]:
        connections.append(head)
        path = head.split(b" ")[1]
        body = b'{"path": "%s"}' % path
        return [b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body)
                + body]

    client = KeepAliveClient("127.0.0.1", server(answer))
    assert client.request("POST", "/api/v3/vm/a") == (200, b'{"path": "/api/v3/vm/a"}')
    assert client.request("DELETE", "/api/v3/vm/b") == (200, b'{"path": "/api/v3/vm/b"}')
    first = connections[0].decode()
    assert first.startswith("POST /api/v3/vm/a HTTP/1.1\r\n")
    assert "\r\nContent-Length: 0" in first and "\r\nHost: 127.0.0.1:" in first


def test_a_chunked_body_split_over_reads_with_a_trailer(server: Callable[[Answer], int]) -> None:
    def answer(head: bytes) -> list[bytes]:
        return [b"HTTP/1.1 503 Service Unavailable\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n{\"ok", b"\"\r\n",
                b"7;ext=1\r\n:false}\r\n0\r\nX-Trailer: 1\r\n\r\n"]

    client = KeepAliveClient("127.0.0.1", server(answer))
    assert client.request("POST", "/x") == (503, b'{"ok":false}')
    assert client.request("POST", "/x") == (503, b'{"ok":false}')  # the same connection, read to its end


def test_a_connection_the_server_closes_is_opened_again(server: Callable[[Answer], int]) -> None:
    answers = iter([
        [b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"],  # then it closes
        [b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\none", b"CLOSE"],  # closed while idle, unannounced
        [b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\ntwo"],
    ])
    client = KeepAliveClient("127.0.0.1", server(lambda head: next(answers)))
    assert client.request("GET", "/") == (200, b"ok")
    assert client.request("GET", "/") == (200, b"one")
    assert client.request("GET", "/") == (200, b"two")


def test_an_answer_cut_short_is_an_error_not_a_cycle(server: Callable[[Answer], int]) -> None:
    client = KeepAliveClient("127.0.0.1", server(lambda head: [b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc",
                                                               b"CLOSE"]))
    with pytest.raises(HttpError):
        client.request("GET", "/")
