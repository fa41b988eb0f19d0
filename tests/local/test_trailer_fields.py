"""Trailer fields (the field lines after a chunked body's last chunk) against the real local stack
with ``:auth:``: the front never merges them into the request's header section (RFC 9110, 6.5.1),
so a credential or a request modifier sent there counts for nothing, as behind API Gateway, and
what a request means does not depend on whether its trailers arrived in the read that held its
head."""

from __future__ import annotations

import base64
import json
import socket
from typing import Iterator

import pytest

from tests.local.stack import RunningStack, call, local_stack, wait_for

POOL = "trailer-debian"
CONFIG = (
    "config: {domain: example.com, check_loop_delay_min: 0.1, task_limit: 100}\n"
    "providers:\n  dummy: {provider_class: dummy, createvm_max_time: 0, boot_time: 0, destroyvm_max_time: 0}\n"
    f"pools:\n  - {{name: {POOL}, size: 3, provider: dummy}}\n"
    "auth: {provider: dummy}\n"
)
WAIT = 20.0


@pytest.fixture(scope="module", params=[1, 0], ids=["one-worker", "one-process"])
def stack(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Iterator[RunningStack]:
    """The stack with one HTTP worker, and in one process (`make run WORKERS=0`): the same front."""
    with local_stack(tmp_path_factory.mktemp("trailers"), CONFIG, workers=request.param, interval=1) as running:
        wait_for(lambda: call("GET", f"{running.api}/status?view=pools")[1]["pools"][POOL]["ready"] == 3,
                 30, "the pool to fill")
        yield running
        log = running.log()
    assert "Traceback" not in log, log[-3000:]


def token(stack: RunningStack, user: str) -> str:
    basic = "Basic " + base64.b64encode(f"{user}:{user}-password".encode()).decode()
    status, answer = call("POST", f"{stack.api}/token", headers={"Authorization": basic})
    assert status == 200, answer
    return str(answer["token"])


def in_one_write(port: int, raw: bytes) -> tuple[int, dict]:
    """Send ``raw`` in one write (the head, the chunks and the trailers parsed from one read);
    the answer's status and JSON."""
    with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as connection:
        connection.sendall(raw)
        received = b""
        while chunk := connection.recv(65536):
            received += chunk
    head, _, body = received.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)


def chunked(method: str, path: str, body: bytes, trailers: dict[str, str],
            headers: dict[str, str] | None = None) -> bytes:
    """A request of ``body`` in one chunk (none when empty), then ``trailers``."""
    head = f"{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n"
    head += "".join(f"{name}: {value}\r\n" for name, value in (headers or {}).items())
    chunks = (b"%x\r\n%s\r\n" % (len(body), body) if body else b"") + b"0\r\n"
    return head.encode() + b"\r\n" + chunks + "".join(f"{k}: {v}\r\n" for k, v in trailers.items()).encode() + b"\r\n"


def test_a_token_sent_only_as_a_trailer_is_no_token(stack: RunningStack) -> None:
    """A VM's return with its owner's token only in the trailers was served (200, the VM
    returned): a proxy or WAF in front, which checks credentials in the header section (and API
    Gateway, which passes no trailers), never saw the token that returned it. It is a request
    without a token now: 401, and the VM stays checked out."""
    owner = token(stack, "alice")
    status, answer = call("POST", f"{stack.api}/vm/{POOL}", headers={"X-AUTH-TOKEN": owner})
    assert status == 200, answer
    host = answer[POOL]["hostname"].split(".")[0]
    status, answer = in_one_write(stack.port, chunked("DELETE", f"/api/v3/vm/{host}", b"", {"X-AUTH-TOKEN": owner}))
    assert (status, answer) == (401, {"ok": False, "error": "a token is required (X-AUTH-TOKEN)"})
    status, answer = call("GET", f"{stack.api}/vm/{host}")
    assert status == 200 and answer[host]["state"] == "running", answer
    assert call("DELETE", f"{stack.api}/vm/{host}", headers={"X-AUTH-TOKEN": owner}) == (200, {"ok": True})


def test_a_trailer_changes_nothing_of_the_request_its_head_describes(stack: RunningStack) -> None:
    """A checkout with its token in the header section and another user's token, or a content
    coding, in the trailers is the checkout its head describes (before: two tokens, a 401; or
    a 415 for a body sent as it is)."""
    owner, other = token(stack, "bob"), token(stack, "carol")
    body = json.dumps({POOL: "1"}).encode()
    for trailer in ({"X-AUTH-TOKEN": other}, {"Content-Encoding": "gzip"}):
        status, answer = in_one_write(stack.port, chunked("POST", "/api/v3/vm", body, trailer, {"X-AUTH-TOKEN": owner}))
        assert status == 200, (trailer, answer)
        host = answer[POOL]["hostname"].split(".")[0]
        assert call("DELETE", f"{stack.api}/vm/{host}", headers={"X-AUTH-TOKEN": owner}) == (200, {"ok": True})
