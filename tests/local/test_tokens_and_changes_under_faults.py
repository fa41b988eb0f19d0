"""Tokens made and deleted, and VMs changed, while the running stack is killed and paused
(docs/reliability.md, "Tokens and VM changes under process faults").

The stack (`python -m local.run`, dummy auth, dummy pools) and 12 callers, each its own user and
loopback address. Each, in a loop: makes a new token (``POST /token``), uses it at once, checks a
VM out with it, changes the VM's lifetime and tags together in one ``PUT`` (a sequence number in
a tag and a lifetime derived from it), reads it back, gives it back, and deletes the token
(``DELETE /token/<t>``, sent again until 200 or 404). Meanwhile one fault at a time: SIGSTOP of
redis-server (1 to 8 s, past the API's 2 s socket timeout), its ``kill -9``, SIGKILL and SIGSTOP
of an HTTP worker, SIGKILL of the gunicorn arbiter, SIGSTOP of the scheduler, ``kill -9`` of the
whole stack (started again on its data) and the whole stack stopped and resumed.

Checked on every answer, and against Redis once the callers stopped:
- a token answered 200 works at once (never a 401 where the token is used, never a 404 for its
  own status) and until its deletion is answered;
- a token whose deletion was answered 200 (or 404 to a retry) is refused everywhere after: by
  ``GET /token/<t>``, by a checkout, and its hash is gone from Redis;
- a ``PUT`` answered 200 is what ``GET /vm`` and Redis say afterwards, lifetime and tags both,
  unless a later ``PUT`` of the same caller went unanswered; a ``PUT`` answered otherwise left
  the VM either before or after it, never half (the tag of one ``PUT`` with the lifetime of
  another);
- every answer JSON with an API status within 20 s, no VM handed to two callers, the pools
  converge.

Minutes long, so marker ``audit``: `.venv/bin/pytest -m audit -s
tests/local/test_tokens_and_changes_under_faults.py` (``VMPOOL_TOKENS_SECONDS``, default 60;
``VMPOOL_TOKENS_SEED``)."""

from __future__ import annotations

import hashlib
import os
import random
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from chalicelib.store.keys import Keys
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
                            vm_lifetime_auth=2, max_lifetime_upper_limit=48, ready_ttl=60)
USERS = 12
SECONDS = float(os.environ.get("VMPOOL_TOKENS_SECONDS", "60"))
REQUEST_TIMEOUT = 20.0


def lifetime_of(seq: int) -> int:
    """The lifetime (hours) the PUT numbered ``seq`` sets along with its ``seq`` tag."""
    return 3 + seq % 40


class Churner(TokenCaller):
    """user<n>: tokens made, used and deleted; a VM checked out, changed and read back."""

    def __init__(self, number: int, stack: Stack, record: Record, stopping: threading.Event, seed: float) -> None:
        super().__init__(number, f"127.0.3.{number + 1}", stack, record, REQUEST_TIMEOUT)
        self.stopping = stopping
        self.random = random.Random(seed)
        self.live: list[str] = []
        """Tokens answered 200 and not deleted yet."""
        self.deleted: list[str] = []
        """Tokens whose deletion was answered 200 (or 404 to a retry)."""
        self.seq = 0
        self.changes: list[tuple[str, int, set[int]]] = []
        """(host, last PUT answered 200, PUTs sent after it not answered 200) per VM held."""

    def run(self) -> None:
        try:
            while not self.stopping.is_set():
                self.token = ""
                self.log_in(self.stopping)
                if not self.token:
                    return
                self.live.append(self.token)
                self.token_works(self.token, "just made")
                self.hold_and_change()
                self.delete_token(self.token)
        except Exception as error:  # noqa: BLE001 - reported as a failure of the test
            self.record.problem(f"user{self.number} crashed: {type(error).__name__}: {error}")

    def token_works(self, token: str, when: str) -> None:
        answer = self.send("GET", f"/token/{token}")
        if answer and answer[0] in (401, 404):
            self.record.problem(f"user{self.number}: token {token[:6]}.. ({when}) refused: {answer}")
        elif answer and answer[0] == 200 and answer[1].get(token, {}).get("user") != f"user{self.number}":
            self.record.problem(f"user{self.number}: token {token[:6]}.. names another user: {answer[1]}")

    def hold_and_change(self) -> None:
        pool = self.random.choice(sorted(POOLS))
        answer = self.send("POST", f"/vm/{pool}")
        if answer and answer[0] == 401:
            self.record.problem(f"user{self.number}: checkout with a live token refused: {answer}")
        if not answer or answer[0] != 200:
            time.sleep(0.2)
            return
        holding = Holding(self.number, answer[1][pool]["hostname"].split(".")[0], pool, time.monotonic())
        with self.record.lock:
            self.record.holdings.append(holding)
        done, unsure = 0, set()
        for _ in range(self.random.randint(1, 3)):
            self.seq += 1
            seq = self.seq
            changed = self.send("PUT", f"/vm/{holding.host}",
                                {"lifetime": lifetime_of(seq), "tags": {"seq": str(seq)}})
            if changed and changed[0] == 200:
                done, unsure = seq, set()
            elif changed and changed[0] in (401, 403, 404):
                self.record.problem(f"user{self.number}: PUT of its own {holding.host} refused: {changed}")
            else:
                unsure.add(seq)
            self.check_vm(holding.host, done, unsure)
        self.changes.append((holding.host, done, unsure))
        holding.returned = time.monotonic()
        self.give_back(f"/vm/{holding.host}")

    def check_vm(self, host: str, done: int, unsure: set[int]) -> None:
        seen = self.send("GET", f"/vm/{host}")
        if not seen or seen[0] != 200:
            return
        vm = seen[1].get(host, {})
        seq = int(vm.get("tags", {}).get("seq", "0"))
        lifetime = vm.get("lifetime")
        if seq != done and seq not in unsure:
            self.record.problem(f"user{self.number}: {host} reads seq {seq}, PUT {done} answered 200, "
                                f"unsure {sorted(unsure)}")
        elif seq and lifetime != lifetime_of(seq):
            self.record.problem(f"user{self.number}: {host} half changed: seq {seq} with lifetime {lifetime}")

    def delete_token(self, token: str) -> None:
        given_up = time.monotonic() + 60
        while time.monotonic() < given_up:
            answer = self.send("DELETE", f"/token/{token}", login=True)
            if answer and answer[0] in (200, 404):
                self.live.remove(token)
                self.deleted.append(token)
                refused = self.send("GET", f"/token/{token}")
                if refused and refused[0] == 200:
                    self.record.problem(f"user{self.number}: token {token[:6]}.. deleted ({answer[0]}) still works")
                return
            time.sleep(0.3)
        self.record.problem(f"user{self.number}: DELETE /token never answered 200")


def against_redis(stack: Stack, users: list[Churner]) -> list[str]:
    """What Redis holds against what each caller was told."""
    client = stack.redis
    assert client is not None
    problems: list[str] = []
    for user in users:
        for token in user.deleted:
            if client.exists(KEYS.token(hashlib.sha256(token.encode()).hexdigest())):
                problems.append(f"user{user.number}: token {token[:6]}.. deleted (200/404) is in Redis")
        for token in user.live:
            if not client.exists(KEYS.token(hashlib.sha256(token.encode()).hexdigest())):
                problems.append(f"user{user.number}: token {token[:6]}.. answered 200 is not in Redis")
        for host, done, unsure in user.changes:
            fields: dict[str, Any] = client.hgetall(KEYS.vm(host))
            seq = int(fields.get("tag:seq", "0"))
            if seq != done and seq not in unsure:
                problems.append(f"user{user.number}: {host} has seq {seq} in Redis, PUT {done} answered 200")
            elif seq and fields.get("lifetime") != str(lifetime_of(seq)):
                problems.append(f"user{user.number}: {host} half changed in Redis: {fields}")
    return problems


@pytest.mark.audit
@pytest.mark.slow
def test_tokens_and_vm_changes_answered_hold_through_kills_and_pauses(tmp_path: Path) -> None:
    stack = Stack(tmp_path, CONFIG, POOLS, dummy_inventory)
    record, stopping = Record(), threading.Event()
    rng = random.Random(int(os.environ.get("VMPOOL_TOKENS_SEED", "5")))
    users = [Churner(n, stack, record, stopping, seed=rng.random()) for n in range(USERS)]

    def faults(done: Faults) -> None:
        time.sleep(2)
        deadline = time.monotonic() + SECONDS
        while time.monotonic() < deadline:
            rng.choice(done.all())(rng)
            time.sleep(rng.uniform(0.2, 3.0))
        time.sleep(2)

    problems: list[str] = []
    done, left = run_callers(stack, users, stopping, faults, REQUEST_TIMEOUT * 4 + 60,
                             settled=lambda: problems.extend(against_redis(stack, users)))
    summary = (f"faults: {done.done}\nanswers: {record.answers}, connection errors: {record.connection_errors}, "
               f"slowest: {record.slowest:.1f} s, VMs held: {len(record.holdings)}, "
               f"tokens deleted: {sum(len(u.deleted) for u in users)}")
    print(summary)
    overlapping = record.held_by_two_at_once()
    assert not overlapping, f"VMs held by two users at once: {overlapping}\n{summary}"
    assert not record.problems, "\n".join(record.problems[:30]) + f"\n{summary}"
    assert not problems, "\n".join(problems[:30]) + f"\n{summary}"
    assert not left, f"VMs running for users who never got them or gave them back: {left}\n{summary}"
