"""On-demand requests being filled while the running stack is SIGKILLed (`kill -9` of its process
group: scheduler, redis-server and HTTP front together) at random moments and started again on its
state directory, as a developer's `make run` dies and is run again (docs/reliability.md, "On-demand
requests through repeated kills of the stack").

Six users, each with its own token and loopback address, open requests for one to three VMs over
two pools, poll them, check what they got, and delete them, without pause. The dummy provider's
clones take up to 1.5 s, so kills land mid-clone, mid-boot and mid-delivery. Checked: every
request answered 201 is ready within ``READY_SECONDS`` of the last restart with exactly the VMs it
asked for, each running for its user; no VM delivered to two requests; every answer JSON with an
API status; afterwards the pools converge with the provider holding exactly their VMs, and no VM
runs for a user beyond the requests whose answers it never received.

Over a minute, so marker ``audit``: `.venv/bin/pytest -m audit -s tests/local/test_ondemand_under_kills.py`
(``VMPOOL_ONDEMAND_KILLS``, default 4; ``VMPOOL_ONDEMAND_SEED``)."""

from __future__ import annotations

import os
import random
import threading
import time
from pathlib import Path
from typing import Any

import pytest

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
    serving,
)

POOLS = {"alpha": 2, "beta": 1}
CONFIG = dummy_pools_config(POOLS, createvm_max_time=1.5, boot_time=0.5, destroyvm_max_time=0.3,
                            vm_lifetime_auth=1, ondemand_request_ttl=5, max_ondemand_instances_per_request=3)
USERS = 6
KILLS = int(os.environ.get("VMPOOL_ONDEMAND_KILLS", "4"))
READY_SECONDS = 60.0
"""A request opened before or between the kills is ready this long after the last restart at the
latest: clones take 2 s; a clone the killed stack reserved is replaced at the restart."""
REQUEST_TIMEOUT = 20.0


class StartedStack(Stack):
    """The audit's Stack, knowing when it last started serving (time.monotonic())."""

    started = 0.0

    def start(self) -> None:
        super().start()
        wait_for(lambda: serving(self), 60, "the stack to serve", self.log)
        self.started = time.monotonic()


class User(TokenCaller):
    """user<n> on 127.0.3.<n+1>: opens, polls, checks and deletes on-demand requests."""

    def __init__(self, number: int, stack: StartedStack, record: Record, stopping: threading.Event, seed: float,
                 delivered: dict[str, str]) -> None:
        super().__init__(number, f"127.0.3.{number + 1}", stack, record, REQUEST_TIMEOUT)
        self.started_stack, self.stopping = stack, stopping
        self.random = random.Random(seed)
        self.delivered = delivered
        """Hostname -> the request it was delivered to, across users."""
        self.opened = 0
        self.slowest = 0.0
        """The longest a request took from its 201 to its ready answer."""

    def run(self) -> None:
        try:
            self.log_in(self.stopping)
            while not self.stopping.is_set():
                self.cycle()
        except Exception as error:  # noqa: BLE001 - reported as a failure of the test
            self.record.problem(f"user{self.number} crashed: {type(error).__name__}: {error}")

    def cycle(self) -> None:
        wanted = {"alpha": self.random.randint(0, 2)}
        wanted["beta"] = self.random.randint(0 if wanted["alpha"] else 1, 3 - wanted["alpha"])
        wanted = {pool: count for pool, count in wanted.items() if count}
        opened = self.send("POST", "/ondemandvm", wanted)
        if not opened or opened[0] != 201:
            time.sleep(0.3)
            return
        self.opened += 1
        request_id = opened[1]["request_id"]
        started = time.monotonic()
        shown = self.until_ready(request_id)
        if shown is not None:
            self.slowest = max(self.slowest, time.monotonic() - started)
            self.check(request_id, wanted, shown)
            time.sleep(self.random.uniform(0, 0.5))
        for _ in range(200):
            answer = self.send("DELETE", f"/ondemandvm/{request_id}")
            if answer and answer[0] in (200, 404):
                return
            time.sleep(0.3)
        self.record.problem(f"user{self.number}: DELETE of request {request_id} never answered 200")

    def until_ready(self, request_id: str) -> dict[str, Any] | None:
        """Its GET answer once ready; a problem when it fails or is not ready READY_SECONDS after
        the stack last started (the stack's restarts are what it waits through)."""
        while True:
            shown = self.send("GET", f"/ondemandvm/{request_id}")
            if shown and shown[0] == 200:
                if shown[1].get("ready"):
                    return dict(shown[1])
                self.record.problem(f"user{self.number}: request {request_id} ended: {shown[1]}")
                return None
            if time.monotonic() - self.started_stack.started > READY_SECONDS:
                self.record.problem(f"user{self.number}: request {request_id} not ready {READY_SECONDS} s "
                                    f"after the last start: {shown}")
                return None
            time.sleep(0.3)

    def check(self, request_id: str, wanted: dict[str, int], shown: dict[str, Any]) -> None:
        for pool, count in wanted.items():
            hosts = [host.split(".")[0] for host in shown.get(pool, {}).get("hostname", [])]
            if len(hosts) != count:
                self.record.problem(f"user{self.number}: request {request_id} asked {count} {pool}, got {hosts}")
            for host in hosts:
                with self.record.lock:
                    other = self.delivered.setdefault(host, request_id)
                    self.record.holdings.append(Holding(self.number, host, pool, time.monotonic(), time.monotonic()))
                if other != request_id:
                    self.record.problem(f"{host} delivered to request {request_id} and to {other}")
                seen = self.send("GET", f"/vm/{host}")
                if seen and seen[0] == 200 and seen[1][host].get("state") != "running":
                    self.record.problem(f"user{self.number}: {host} of ready request {request_id}: {seen[1][host]}")


@pytest.mark.audit
@pytest.mark.slow
def test_ondemand_requests_are_filled_exactly_through_repeated_kills_of_the_stack(tmp_path: Path) -> None:
    stack = StartedStack(tmp_path, CONFIG, POOLS, dummy_inventory)
    record, stopping = Record(), threading.Event()
    rng = random.Random(int(os.environ.get("VMPOOL_ONDEMAND_SEED", "5")))
    delivered: dict[str, str] = {}
    users = [User(n, stack, record, stopping, rng.random(), delivered) for n in range(USERS)]

    def kills(faults: Faults) -> None:
        for _ in range(KILLS):
            time.sleep(rng.uniform(0.5, 4.0))
            faults.kill_stack(rng)
        time.sleep(10)  # requests opened after the last restart, served undisturbed

    faults, left = run_callers(stack, users, stopping, kills, READY_SECONDS + 90)

    summary = (f"faults: {faults.done}\nanswers: {record.answers}, connection errors: {record.connection_errors}, "
               f"requests opened: {sum(user.opened for user in users)}, VMs delivered: {len(delivered)}, "
               f"slowest to be ready: {max(user.slowest for user in users):.1f} s")
    print(summary)
    assert not record.problems, "\n".join(record.problems[:30]) + f"\n{summary}"
    assert not left, (f"VMs running for users who never got them or gave them back: {left}\n"
                      + "\n".join(record.events_about([*left, *(v.split(",")[0] + ":" for v in left.values())])[-60:])
                      + f"\n{summary}")
    assert sum(user.opened for user in users) > 3 * USERS and not record.answers.get(403), summary
