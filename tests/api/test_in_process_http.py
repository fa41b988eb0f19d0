"""The in-process HTTP server the tests drive the API through (tests/in_process_http.py) under
hostile framing, as the local front answers it (tests/local/test_malformed_http.py): a
Content-Length that is not one whole number, one too large, a chunked body, a token sent twice.
Each is a JSON 4xx (or 501) that changes nothing; before, a length of ``abc`` or ``99999999999``
killed the connection with a traceback (ValueError, MemoryError), ``-5`` read until the client
closed, and of a header sent twice only the last was seen."""

from __future__ import annotations

import json
import socket
import threading
from typing import Callable, Iterator

import pytest

import app
from tests.api.test_hostile_admin_routes import AUTH_CONFIG
from tests.harness import Harness
from tests.in_process_http import make_server


@pytest.fixture
def served(make_stack: Callable[[str], Harness]) -> Iterator[tuple[Harness, int]]:
    stack = make_stack(AUTH_CONFIG)
    stack.fill("pool1")
    server = make_server(app.app, "127.0.0.1", 0)
    serving = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    serving.start()
    yield stack, server.server_port
    server.shutdown()
    server.server_close()


def exchange(port: int, raw: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send ``raw``, read until the server closes; the first answer's status, headers and body."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as connection:
        connection.sendall(raw)
        received = b""
        while chunk := connection.recv(65536):
            received += chunk
    head, _, body = received.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {name.lower(): value.strip() for name, _, value in (line.partition(":") for line in lines[1:])}
    return int(lines[0].split()[1]), headers, body[:int(headers.get("content-length", len(body)))]


CHECKOUT = b"POST /api/v3/vm HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
BODY = b'{"pool1": 1}'


@pytest.mark.parametrize("framing, status", [
    (b"Content-Length: abc\r\n", 400),
    (b"Content-Length: -5\r\n", 400),
    (b"Content-Length: 12\r\nContent-Length: 12\r\n", 400),
    (b"Content-Length: 99999999999\r\n", 413),
    (b"Content-Length: " + b"9" * 5000 + b"\r\n", 413),
    (b"Content-Length: 70000\r\n", 413),
    (b"Transfer-Encoding: chunked\r\n", 501),
], ids=["letters", "negative", "twice", "99999999999", "5000-digits", "over-64-KiB", "chunked"])
def test_a_body_framed_so_is_a_json_refusal_and_takes_no_vm(served: tuple[Harness, int], framing: bytes,
                                                             status: int) -> None:
    stack, port = served
    before = stack.redis_state()
    body = b"%x\r\n%s\r\n0\r\n\r\n" % (len(BODY), BODY) if b"chunked" in framing else BODY
    answer_status, headers, answer = exchange(port, CHECKOUT + framing + b"\r\n" + body)
    assert answer_status == status and headers["content-type"] == "application/json", answer[:300]
    assert json.loads(answer)["ok"] is False
    assert stack.redis_state() == before, "the request took a VM"


def test_a_token_sent_twice_is_no_token(served: tuple[Harness, int]) -> None:
    """A proxy or WAF that checked the first token would let through the request of the second
    (the local front and the API function join them, and no token matches the join)."""
    stack, port = served
    token = stack.new_token("alice", "alice-pw")
    before = stack.redis_state()
    raw = (CHECKOUT + b"X-AUTH-TOKEN: not-a-token\r\nX-AUTH-TOKEN: " + token.encode()
           + b"\r\nConnection: close\r\nContent-Length: %d\r\n\r\n" % len(BODY) + BODY)
    status, _, answer = exchange(port, raw)
    assert status == 401 and json.loads(answer)["error"] == "invalid or expired token", answer
    assert stack.redis_state() == before, "the request took a VM"
