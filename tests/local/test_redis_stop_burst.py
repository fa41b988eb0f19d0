"""Twenty users at their limits while the running stack's redis-server is stopped (SIGSTOP) past
every client timeout, again and again (docs/reliability.md, "Redis stopped under a burst of users
at their limits").

The stack (`python -m local.run`, dummy auth, dummy pools) with ``max_running_vms_per_user: 1``
and ``max_ondemand_requests_per_user: 1``, and 20 callers, each its own user with its own token and
loopback address: each holds at most one thing at a time (a checked-out VM or an on-demand
request), reads it back, tags it, and gives it back; every answer it gets says what it holds. A
request answered 503 or not at all may have run in Redis anyway (its script queued behind the
stop): the API gave up on it, so it can never be confirmed to the caller. Meanwhile redis-server
is stopped for 5 to 8 s at a time, longer than the API's 2 s socket timeout.

Checked, beyond what tests/local/test_crash_handout.py checks (no VM handed to two callers, every
answer JSON with an API status within 20 s, the pools converge): no caller that holds nothing is
refused for its limit ("you may hold at most 1 VMs", "you may have at most 1 on-demand requests")
later than ``LIMIT_GRACE_SECONDS`` after its last lost answer; ``/status`` counts what Redis holds;
a token's status lists none of another user's VMs.

It found a checkout confirmed to a user who was answered 503 (3 runs in 14, more often with 6
stops on a loaded machine), its VM left running and its user refused for its limit for the VM's
lifetime: Redis ran the confirmation just before a stop and the release sent after the timeout
could not reach it. Fixed: the release is written behind the confirmation on its own connection
(docs/reliability.md, "A confirmation whose answer is lost after Redis ran it is undone";
tests/chaos/test_slow_redis.py reproduces it deterministically).

Over a minute, so marker ``audit``: `.venv/bin/pytest -m audit -s tests/local/test_redis_stop_burst.py`
(``VMPOOL_BURST_STOPS``, default 4; ``VMPOOL_BURST_SEED``)."""

from __future__ import annotations

import http.client
import json
import os
import random
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from chalicelib.store.keys import Keys
from tests.local.stack import wait_for
from tests.local.stack_audit import (
    Faults,
    Holding,
    Record,
    Stack,
    TokenCaller,
    dummy_inventory,
    dummy_pools_config,
    run_callers,
)

KEYS = Keys()
POOLS = {"alpha": 6, "beta": 5}
CONFIG = dummy_pools_config(POOLS, createvm_max_time=0.4, boot_time=0.2, destroyvm_max_time=0.2,
                            vm_lifetime_auth=1, max_lifetime_upper_limit=4, ready_ttl=60,
                            max_running_vms_per_user=1, max_ondemand_requests_per_user=1)
USERS = 20
STOPS = int(os.environ.get("VMPOOL_BURST_STOPS", "4"))
REQUEST_TIMEOUT = 20.0
LIMIT_GRACE_SECONDS = 6.0
"""How long after its last lost answer, or after redis-server resumed if later (a script queued
behind the stop runs then), a caller holding nothing may still be refused for its limit: the
API's socket timeout (2 s, the lost request's confirmation window, which starts when Redis runs
it) plus the time a loaded machine takes to run what queued behind the stop. Before the fix it was
a minute (until a pass gave the lost VM back or failed the lost request)."""


class Resumed:
    """When redis-server last resumed (time.monotonic())."""

    def __init__(self) -> None:
        self.at = 0.0
LIMIT_WORDS = ("you may hold at most", "you may have at most")


class User(TokenCaller):
    """One caller: user<n>, its token, its address 127.0.2.<n+1>; what it holds, by its answers."""

    def __init__(self, number: int, stack: Stack, record: Record, stopping: threading.Event, seed: float,
                 resumed: Resumed) -> None:
        super().__init__(number, f"127.0.2.{number + 1}", stack, record, REQUEST_TIMEOUT)
        self.stopping, self.resumed = stopping, resumed
        self.random = random.Random(seed)
        self.refusals = 0

    def run(self) -> None:
        try:
            self.log_in(self.stopping)
            while not self.stopping.is_set():
                if self.random.random() < 0.3:
                    self.ondemand()
                else:
                    self.checkout()
        except Exception as error:  # noqa: BLE001 - reported as a failure of the test
            self.record.problem(f"user{self.number} crashed: {type(error).__name__}: {error}")

    def refused_for_limit(self, answer: tuple[int, Any] | None, what: str) -> bool:
        """A 403 for the user's own limit (it holds nothing when it asks); a problem past
        LIMIT_GRACE_SECONDS after its last lost answer and Redis's last resume."""
        if not answer or answer[0] != 403 or not any(word in json.dumps(answer[1]) for word in LIMIT_WORDS):
            return False
        self.refusals += 1
        since = time.monotonic() - max(self.last_lost, self.resumed.at)
        if since > LIMIT_GRACE_SECONDS:
            self.record.problem(f"user{self.number}: {what} refused for its limit holding nothing, "
                                f"{since:.1f} s after its last lost answer or Redis's resume: {answer[1]}")
        time.sleep(0.3)
        return True

    def checkout(self) -> None:
        pool = self.random.choice(sorted(POOLS))
        answer = self.send("POST", f"/vm/{pool}")
        if self.refused_for_limit(answer, f"POST /vm/{pool}") or not answer or answer[0] != 200:
            time.sleep(0.1)
            return
        holding = Holding(self.number, answer[1][pool]["hostname"].split(".")[0], pool, time.monotonic())
        with self.record.lock:
            self.record.holdings.append(holding)
        self.use(holding.host)
        holding.returned = time.monotonic()
        self.give_back(f"/vm/{holding.host}")

    def use(self, host: str) -> None:
        """Tag it, read it back, read the token's status: its own, and nothing of another's."""
        tag = {"owner": f"user{self.number}"}
        changed = self.send("PUT", f"/vm/{host}", {"tags": tag})
        seen = self.send("GET", f"/vm/{host}")
        if changed and changed[0] == 200 and seen and seen[0] == 200 and seen[1][host].get("tags") != tag:
            self.record.problem(f"user{self.number}: {host} reads back {seen[1][host]}")
        status = self.send("GET", f"/token/{self.token}")
        if status and status[0] == 200:
            listed = status[1].get(self.token, {})
            if listed.get("user") != f"user{self.number}":
                self.record.problem(f"user{self.number}: its token's status names {listed.get('user')}")
            running = set(listed.get("vms", {}).get("running", []))
            with self.record.lock:
                others = {h.host for h in self.record.holdings if h.client != self.number and h.returned is None}
            if running & others:
                self.record.problem(f"user{self.number}: its token lists {running & others}, held by others")
        time.sleep(self.random.uniform(0, 0.5))

    def ondemand(self) -> None:
        pool = self.random.choice(sorted(POOLS))
        opened = self.send("POST", "/ondemandvm", {pool: 1})
        if self.refused_for_limit(opened, "POST /ondemandvm") or not opened or opened[0] != 201:
            time.sleep(0.1)
            return
        request_id = opened[1]["request_id"]
        deadline = time.monotonic() + 30
        holding = None
        while time.monotonic() < deadline and not self.stopping.is_set():
            shown = self.send("GET", f"/ondemandvm/{request_id}")
            if shown and shown[0] == 200:
                hosts = shown[1].get(pool, {}).get("hostname", [])
                if hosts:
                    holding = Holding(self.number, hosts[0].split(".")[0], pool, time.monotonic())
                    with self.record.lock:
                        self.record.holdings.append(holding)
                    self.use(holding.host)
                break
            time.sleep(0.2)
        if holding is not None:
            holding.returned = time.monotonic()
        self.give_back(f"/ondemandvm/{request_id}")


def status_matches_redis(stack: Stack) -> str | None:
    """None when /status's ready and running counts are the pools' sets in Redis."""
    connection = http.client.HTTPConnection("127.0.0.1", stack.port, timeout=10)
    connection.request("GET", "/api/v3/status")
    pools = json.loads(connection.getresponse().read())["pools"]
    client = stack.redis
    assert client is not None
    for pool in POOLS:
        counted = {state: client.zcard(KEYS.pool_state(pool, state)) for state in ("ready", "running")}
        shown = {state: pools[pool][state] for state in ("ready", "running")}
        if counted != shown:
            return f"{pool}: /status {shown}, Redis {counted}"
    return None


@pytest.mark.audit
@pytest.mark.slow
def test_users_at_their_limits_through_redis_stops_are_served_again_and_see_only_their_own(tmp_path: Path) -> None:
    stack = Stack(tmp_path, CONFIG, POOLS, dummy_inventory)
    record, stopping, resumed = Record(), threading.Event(), Resumed()
    rng = random.Random(int(os.environ.get("VMPOOL_BURST_SEED", "3")))
    users = [User(n, stack, record, stopping, seed=rng.random(), resumed=resumed) for n in range(USERS)]

    def stops(faults: Faults) -> None:
        for _ in range(STOPS):
            time.sleep(rng.uniform(2.0, 5.0))
            faults.stop_redis(rng, seconds=rng.uniform(5.0, 8.0))
            resumed.at = time.monotonic()
        time.sleep(LIMIT_GRACE_SECONDS + 4)  # every user served again, and checked on it

    def status_settled() -> None:
        wait_for(lambda: status_matches_redis(stack) is None, 30, "/status to match Redis",
                 lambda: str(status_matches_redis(stack)))

    faults, left = run_callers(stack, users, stopping, stops, REQUEST_TIMEOUT * 2 + 60, settled=status_settled)

    summary = (f"faults: {faults.done}\nanswers: {record.answers}, connection errors: {record.connection_errors}, "
               f"slowest: {record.slowest:.1f} s, VMs held: {len(record.holdings)}, "
               f"refused for a limit: {sum(user.refusals for user in users)}")
    print(summary)
    overlapping = record.held_by_two_at_once()
    assert not overlapping, f"VMs held by two users at once: {overlapping}\n{summary}"
    assert not record.problems, "\n".join(record.problems[:30]) + f"\n{summary}"
    assert not left, (f"VMs running for users who never got them or gave them back: {left}\n"
                      + "\n".join(record.events_about([*left, *(v.split(",")[0] + ":" for v in left.values())])[-60:])
                      + f"\n{summary}")
    assert record.answers.get(503, 0) > 20 and len(record.holdings) > 40, summary
