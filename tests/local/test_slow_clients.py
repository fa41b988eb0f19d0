"""Slow and idle clients against the real local stack (`make run`): one client holding more
connections than every worker together may hold, each sending its request's head a byte at a time
(slowloris), does not keep the other callers out."""

from __future__ import annotations

import contextlib
import json
import resource
import socket
from pathlib import Path
from typing import Any, Iterator

import pytest

from local.http_front import MAX_CONNECTIONS
from tests.local.stack import RunningStack, call, local_stack, wait_for

POOL = "slow-debian"
CHECKOUTS = 10
"""Checkouts made while the attack holds its connections; the pool holds more, so none of them
finds it empty (an answer of 503 from the API) on a machine too busy to refill it meanwhile."""
CONFIG = (
    "config: {domain: example.com, check_loop_delay_min: 0.1}\n"
    "providers:\n  dummy: {provider_class: dummy, createvm_max_time: 0, boot_time: 0, destroyvm_max_time: 0}\n"
    f"pools:\n  - {{name: {POOL}, size: {CHECKOUTS + 1}, provider: dummy}}\n"
)
WORKERS = 2
HALF_HEADS = WORKERS * MAX_CONNECTIONS + 400
"""More connections than the workers hold together, however the kernel spreads them."""
CLIENT_TIMEOUT = 120
"""The stack's deadline for a request head here: longer than the test, so no half-sent head is
dropped for being late while the test runs."""


@contextlib.contextmanager
def open_files(needed: int) -> Iterator[None]:
    """This process may open ``needed`` descriptors for the block's length."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < needed:
        pytest.skip(f"needs {needed} open descriptors; the hard limit is {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, needed), hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def half_a_head(port: int) -> socket.socket:
    """A connection that has sent part of a request head, as slowloris does before its next byte."""
    connection = socket.create_connection(("127.0.0.1", port), timeout=10)
    with contextlib.suppress(OSError):  # turned away already: it still counts as tried
        connection.sendall(b"GET /api/v3/status HTTP/1.1\r\nHost: x\r\nX-Slow: ")
    return connection


def checkout_and_return(stack: RunningStack) -> tuple[int, Any]:
    """A checkout on a new connection and, when it was served, the VM's return; the checkout's
    status and answer."""
    status, body = call("POST", f"{stack.api}/vm/{POOL}")
    if status == 200:
        assert call("DELETE", f"{stack.api}/vm/{body[POOL]['hostname']}") == (200, {"ok": True})
    return status, body


@pytest.mark.slow
def test_a_client_holding_every_place_with_half_sent_heads_does_not_keep_a_checkout_out(tmp_path: Path) -> None:
    """Before, the workers' bound on connections (1,000 each) was theirs to fill: the slowloris
    client's connections took every place for the head deadline, and every checkout meanwhile
    got 503. Now a new connection takes the place of the oldest one without a request in the
    app; the half-sent heads that gave theirs up get a JSON 503."""
    attack: list[socket.socket] = []
    with open_files(HALF_HEADS + 200), local_stack(tmp_path, CONFIG, workers=WORKERS, interval=1,
                                                    env={"VMPOOL_HTTP_CLIENT_TIMEOUT": str(CLIENT_TIMEOUT)}) as stack:
        try:
            wait_for(lambda: call("GET", f"{stack.api}/status?view=pools")[1]["pools"][POOL]["ready"] == CHECKOUTS + 1,
                     30, "the pool to fill")
            attack = [half_a_head(stack.port) for _ in range(HALF_HEADS)]
            # The workers take up the last of those connections on their own time: the first
            # checkout may come before they have.
            wait_for(lambda: checkout_and_return(stack)[0] == 200, 20, "a checkout served during the attack")
            answers = [checkout_and_return(stack) for _ in range(CHECKOUTS)]
            assert [status for status, _ in answers] == [200] * CHECKOUTS, answers

            refusals = []
            for connection in attack:
                connection.setblocking(False)
                with contextlib.suppress(BlockingIOError, ConnectionResetError):
                    if answer := connection.recv(65536):
                        refusals.append(answer)
            assert refusals, "no half-sent head gave its place up"
            for answer in refusals:  # each a JSON 503, never a 5xx of another kind or a traceback
                head, _, body = answer.partition(b"\r\n\r\n")
                assert head.startswith(b"HTTP/1.1 503 ") and b"content-type: application/json" in head.lower()
                assert json.loads(body)["ok"] is False
            assert call("GET", f"{stack.api}/status?view=pools")[1]["pools"][POOL]["running"] == 0
        finally:
            for connection in attack:
                connection.close()
        log = stack.log()
    assert "Traceback" not in log, log[-3000:]
