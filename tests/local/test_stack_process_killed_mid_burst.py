"""The stack's own process (`python -m local.run`: the scheduler, and with ``WORKERS=0`` the HTTP
front too) SIGKILLed alone, as the OOM killer or a `kill -9 <pid>` does, in the middle of a
checkout burst from 8 callers (each its own user, token and loopback address) and in the middle
of a refill, in each layout (``WORKERS=0``, 1 and 2), and started again at once on its state
directory, as a supervisor (or the developer pressing up and Enter) does. What it started stops
with it (its redis-server on SIGTERM, its HTTP arbiter and workers on SIGKILL).

Checked: the restart serves; no VM handed to two callers at once; every VM a caller was answered
200 for stays running for that caller (in Redis, in the dummy provider, and to the caller: it can
change its lifetime, which only its owner may) until it gives it back; every answer JSON with an
API status; afterwards the pools converge to full with the provider holding exactly their VMs, and
nothing runs for a caller beyond what its unanswered checkouts may have got.

Over a minute a layout, so marker ``audit``:
`.venv/bin/pytest -m audit -s tests/local/test_stack_process_killed_mid_burst.py`
(``VMPOOL_KILLED_MID_BURST_SEED``, ``VMPOOL_KILLED_MID_BURST_KILLS``, default 3)."""

from __future__ import annotations

import os
import random
import signal
import threading
import time
from pathlib import Path

import pytest
import redis

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
    serving,
)

KEYS = Keys()
POOLS = {"alpha": 5, "beta": 4}
CONFIG = dummy_pools_config(POOLS, createvm_max_time=0.6, boot_time=0.3, destroyvm_max_time=0.3,
                            vm_lifetime_auth=1, max_lifetime_upper_limit=4, ready_ttl=60)
CALLERS = 8
KILLS = int(os.environ.get("VMPOOL_KILLED_MID_BURST_KILLS", "3"))
REQUEST_TIMEOUT = 20.0


class Caller(TokenCaller):
    """user<n> from 127.0.3.<n+1>: checks a VM out, holds it a moment (across a kill, often),
    changes its lifetime (only its owner may), gives it back."""

    def __init__(self, number: int, stack: Stack, record: Record, stopping: threading.Event, seed: float) -> None:
        super().__init__(number, f"127.0.3.{number + 1}", stack, record, REQUEST_TIMEOUT)
        self.stopping = stopping
        self.random = random.Random(seed)

    def run(self) -> None:
        try:
            self.log_in(self.stopping)
            while not self.stopping.is_set():
                self.checkout()
        except Exception as error:  # noqa: BLE001 - reported as a failure of the test
            self.record.problem(f"user{self.number} crashed: {type(error).__name__}: {error}")

    def checkout(self) -> None:
        pool = self.random.choice(sorted(POOLS))
        answer = self.send("POST", f"/vm/{pool}")
        if not answer or answer[0] != 200:
            time.sleep(0.1)
            return
        holding = Holding(self.number, answer[1][pool]["hostname"].split(".")[0], pool, time.monotonic())
        with self.record.lock:
            self.record.holdings.append(holding)
        time.sleep(self.random.uniform(0.5, 3.0))
        self.still_mine(holding.host)
        holding.returned = time.monotonic()
        self.give_back(f"/vm/{holding.host}")

    def still_mine(self, host: str) -> None:
        """Its lifetime changed (owner only): 200 unless the stack is down (no answer, 503)."""
        for _ in range(60):
            changed = self.send("PUT", f"/vm/{host}", {"lifetime": self.random.choice((2, 3))})
            if changed and changed[0] == 200:
                return
            if changed and changed[0] != 503:
                self.record.problem(f"user{self.number}: its {host} can no longer be changed: {changed}")
                return
            time.sleep(0.5)
        self.record.problem(f"user{self.number}: its {host} never answered a change")


class Observer:
    """Every 0.3 s: a VM held through the whole read is running for its caller in Redis and is in
    the dummy provider's folder."""

    def __init__(self, stack: Stack, record: Record, stopping: threading.Event) -> None:
        self.stack, self.record, self.stopping = stack, record, stopping
        self.reads = 0

    def run(self) -> None:
        while not self.stopping.wait(0.3):
            client = self.stack.redis
            if client is None:
                continue
            before = time.monotonic()
            try:
                with client.pipeline(transaction=True) as pipe:
                    for pool in POOLS:
                        pipe.zrange(KEYS.pool_state(pool, "running"), 0, -1)
                    running = dict(zip(POOLS, map(set, pipe.execute()), strict=True))
                held = self.record.held_at(before)
                owners = {h.host: client.hget(KEYS.vm(h.host), "token_user") for h in held}
                folders = dummy_inventory(client, POOLS)
            except (redis.RedisError, OSError):  # the stack restarting
                continue
            after = time.monotonic()
            self.reads += 1
            for holding in held:
                if holding not in self.record.held_at(after):
                    continue
                if (holding.host not in running[holding.pool] or holding.host not in folders[holding.pool]
                        or owners[holding.host] != f"user{holding.client}"):
                    self.record.problem(
                        f"{holding.host} held by user{holding.client} for {after - holding.got:.1f} s: running "
                        f"{holding.host in running[holding.pool]}, in the provider "
                        f"{holding.host in folders[holding.pool]}, owner {owners[holding.host]}")


def kill_the_stacks_process(stack: Stack, faults: Faults, when: str) -> None:
    """`kill -9` of the stack's own process only; started again at once, as a supervisor does."""
    assert stack.process is not None
    faults.note(f"kill -9 of the stack's process ({when})")
    os.kill(stack.process.pid, signal.SIGKILL)
    stack.process.wait()
    stack.redis = None
    stack.start()
    wait_for(lambda: serving(stack), 30, "the restarted stack to serve", stack.log)


def refilling(stack: Stack) -> bool:
    client = stack.redis
    assert client is not None
    return any(client.zcard(KEYS.pool_state(pool, "pending")) for pool in POOLS)


@pytest.mark.audit
@pytest.mark.slow
@pytest.mark.parametrize("workers", [0, 1, 2])
def test_the_stacks_process_killed_mid_burst_and_mid_refill_hands_no_vm_twice_and_keeps_every_vm_held(
        tmp_path: Path, workers: int) -> None:
    stack = Stack(tmp_path, CONFIG, POOLS, dummy_inventory, workers=workers)
    record, stopping = Record(), threading.Event()
    rng = random.Random(int(os.environ.get("VMPOOL_KILLED_MID_BURST_SEED", "18")) + workers)
    callers = [Caller(n, stack, record, stopping, seed=rng.random()) for n in range(CALLERS)]
    observer = Observer(stack, record, stopping)
    watching = threading.Thread(target=observer.run, daemon=True)

    def kills(faults: Faults) -> None:
        watching.start()
        for number in range(KILLS):
            if number % 2:
                wait_for(lambda: refilling(stack), 30, "a refill under way", stack.log)
                kill_the_stacks_process(stack, faults, "mid-refill")
            else:
                time.sleep(rng.uniform(1.0, 3.0))
                kill_the_stacks_process(stack, faults, "mid-burst")
        time.sleep(4)  # every caller served again, holding across the restart

    try:
        faults, left = run_callers(stack, callers, stopping, kills, REQUEST_TIMEOUT * 2 + 70)
    finally:
        stopping.set()
        watching.join(10)

    summary = (f"faults: {faults.done}\nanswers: {record.answers}, connection errors: {record.connection_errors}, "
               f"slowest: {record.slowest:.1f} s, VMs held: {len(record.holdings)}, observer reads: {observer.reads}")
    print(summary)
    overlapping = record.held_by_two_at_once()
    assert not overlapping, f"VMs held by two callers at once: {overlapping}\n{summary}"
    assert not record.problems, "\n".join(record.problems[:30]) + f"\n{summary}"
    assert not left, (f"VMs running for callers who never got them or gave them back: {left}\n"
                      + "\n".join(record.events_about([*left, *(v.split(",")[0] + ":" for v in left.values())])[-60:])
                      + f"\n{summary}")
    assert len(record.holdings) > 20 and observer.reads > 10, summary
