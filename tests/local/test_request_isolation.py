"""No request is served with another request's data: many concurrent clients of the real local
stack, each with its own token, query, path and JSON body, each get their own answer.

Each client loops on: check out a VM of its own pool (JSON body, its token), ask /status for its
own view, tag the VM with a marker of its own, read the VM back, try to return it with no token
(must be 401), return it with its token (must be 200: the VM is the user's). Anything answered
from another request's headers, query, path or body shows as a wrong pool, a wrong /status
shape, a foreign tag, a VM owned by someone else, or a token-less DELETE that succeeds.
"""

from __future__ import annotations

import base64
import http.client
import json
import multiprocessing
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.local.stack import call, local_stack, wait_for

POOLS = [f"iso-{index}" for index in range(4)]
VIEWS = ["capacity", "queue", "clone", "boot", "pools"]
CONFIG = (
    "config: {domain: example.com, check_loop_delay_min: 0.1, task_limit: 1000}\n"
    "auth: {provider: dummy}\n"
    "providers:\n  dummy: {provider_class: dummy, createvm_max_time: 0, boot_time: 0, destroyvm_max_time: 0}\n"
    "pools:\n" + "".join(f"  - {{name: {pool}, size: 40, provider: dummy}}\n" for pool in POOLS)
)
CLIENTS = 8
CYCLES_PER_CLIENT = 100
"""12 x 60 cycles of 6 requests: 4,320 requests, about a minute on a busy 2-core machine."""
DRY_POOL_SECONDS = 30.0
"""How long a client waits for its pool, run dry, to have a ready VM again."""


class Client:
    """One keep-alive connection, as a CI job's HTTP library would hold."""

    def __init__(self, port: int) -> None:
        self.connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)

    def request(self, method: str, path: str, body: Any = None, token: str | None = None) -> tuple[int, Any]:
        headers = {"Content-Type": "application/json"}
        if token:
            headers["X-AUTH-TOKEN"] = token
        data = json.dumps(body).encode() if body is not None else None
        self.connection.request(method, "/api/v3" + path, body=data, headers=headers)
        response = self.connection.getresponse()
        return response.status, json.loads(response.read())


def login(api: str, user: str) -> str:
    secret = base64.b64encode(f"{user}:{user}-secret".encode()).decode()
    status, body = call("POST", f"{api}/token", headers={"Authorization": f"Basic {secret}"})
    assert status == 200, body
    return str(body["token"])


def client_process(port: int, index: int, token: str, user: str, out: "multiprocessing.Queue[list[str]]") -> None:
    problems: list[str] = []
    try:
        client_loop(port, index, token, user, problems)
    except Exception as error:  # noqa: BLE001 - reported to the test, which fails on it
        problems.append(f"{user}: {error!r}")
    out.put(problems)


def client_loop(port: int, index: int, token: str, user: str, problems: list[str]) -> None:
    pool = POOLS[index % len(POOLS)]
    view = VIEWS[index % len(VIEWS)]
    client = Client(port)
    for cycle in range(CYCLES_PER_CLIENT):
        marker = f"{user}-{cycle}-{uuid.uuid4().hex[:8]}"
        status, body = client.request("POST", "/vm", {pool: "1"}, token)
        # The pool ran dry: the refill catches up, within a second on an idle machine. The
        # deadline is a safety net (100 tries 0.05 s apart were 5 s: short on a loaded one).
        dry_until = time.monotonic() + DRY_POOL_SECONDS
        while status == 503 and time.monotonic() < dry_until:
            time.sleep(0.05)
            status, body = client.request("POST", "/vm", {pool: "1"}, token)
        if status != 200 or set(body) != {"ok", pool}:
            problems.append(f"{user} checked out {pool}, got {status} {body}")
            return
        host = body[pool]["hostname"]
        status, body = client.request("GET", f"/status?view={view}")
        if status != 200 or set(body) != {"status", view}:
            problems.append(f"{user} asked /status?view={view}, got keys {sorted(body)}")
        status, body = client.request("PUT", f"/vm/{host}", {"tags": {"marker": marker}}, token)
        if status != 200:
            problems.append(f"{user} tagged its {host}, got {status} {body}")
        status, body = client.request("GET", f"/vm/{host}")
        details = body.get(host.split(".")[0]) or {}
        if status != 200 or details.get("tags") != {"marker": marker} or details.get("template") != pool:
            problems.append(f"{user} read its {host} tagged {marker}, got {status} {body}")
        status, body = client.request("DELETE", f"/vm/{host}")
        if status != 401:
            problems.append(f"DELETE {host} with no token answered {status} {body}")
        status, body = client.request("DELETE", f"/vm/{host}", token=token)
        if status != 200:
            problems.append(f"{user} returned its {host}, got {status} {body}")


@pytest.mark.slow
@pytest.mark.parametrize("workers", [1, 0], ids=["one-worker", "one-process"])
def test_concurrent_clients_each_get_their_own_answer(tmp_path: Path, workers: int) -> None:
    """``workers`` 0: the HTTP loops share their process (and its one app) with the scheduler's
    threads (`make run WORKERS=0`)."""
    with local_stack(tmp_path, CONFIG, workers=workers, interval=1) as stack:
        def full() -> bool:
            pools = call("GET", f"{stack.api}/status?view=pools")[1]["pools"]
            return all(p["ready"] == p["max"] for p in pools.values())

        wait_for(full, 30, "the pools to fill")
        users = [f"user{index}" for index in range(CLIENTS)]
        tokens = [login(stack.api, user) for user in users]
        context = multiprocessing.get_context("fork")
        out: "multiprocessing.Queue[list[str]]" = context.Queue()
        clients = [context.Process(target=client_process, args=(stack.port, index, tokens[index], users[index], out),
                                   daemon=True) for index in range(CLIENTS)]
        for client in clients:
            client.start()
        try:
            problems = [problem for _ in clients for problem in out.get(timeout=300)]
        finally:
            for client in clients:
                client.kill()
                client.join()
        log = stack.log()
    assert problems == [], problems[:5]
    assert "Traceback" not in log, log[-3000:]
