"""Runtime pool changes and VM tasks while the running stack is killed and paused
(docs/reliability.md, "Pool changes and VM tasks under process faults").

The stack (`python -m local.run`, dummy auth, dummy pools, ``experimental_features``) and ten
users, each with a token and a loopback address of its own, plus two administrators. Each user,
in a loop: checks a VM out, tags it, queues a snapshot and a disk (``POST /vm/<h>/snapshot``,
``/disk/1``), has another user try to snapshot and return it, reads it back, reverts to its
snapshot and gives it back. The first administrator changes the pools' templates (and clears
them), the second their sizes and clone targets, and both reset pools (``POST /poolreset``),
each change a random pool or both. Meanwhile one fault at a time: SIGKILL and SIGSTOP of an HTTP
worker, of redis-server, of the gunicorn arbiter, SIGSTOP of the scheduler, ``kill -9`` of the
whole stack (started again on its data) and the whole stack stopped and resumed.

Checked on every answer, and once the callers stopped:
- every answer JSON with an API status within 20 s, no VM handed to two users at once;
- a VM a user holds reads back ``running`` with that user's tag, whatever the resets and
  template changes (a reset drains ready and pending VMs, never one in use);
- another user's snapshot or return of it is refused (403), never queued or done;
- a snapshot answered 202 is one its VM can be reverted to (never a 404 for it);
- a VM handed out after a template change was answered, and before the next one was sent, is
  of that template (the change fences the pool's ready VMs of the old one as it is made);
- once the administrators cleared their overrides, the pools converge to their configured
  sizes and the provider holds exactly what Redis says.

Minutes long, so marker ``audit``: `.venv/bin/pytest -m audit -s
tests/local/test_admin_changes_and_vm_tasks_under_faults.py` (``VMPOOL_ADMIN_SECONDS``, default
60; ``VMPOOL_ADMIN_SEED``)."""

from __future__ import annotations

import os
import random
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

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

POOLS = {"alpha": 5, "beta": 4}
TEMPLATES = {"alpha": "templates/alpha", "beta": "templates/beta"}
USERS = 10
ADMINS = (100, 101)
SECONDS = float(os.environ.get("VMPOOL_ADMIN_SECONDS", "60"))
REQUEST_TIMEOUT = 20.0


def stack_config() -> str:
    """The audited stack's config: its pools with templates of their own, the runtime changes on,
    and the two administrators."""
    document = yaml.safe_load(dummy_pools_config(
        POOLS, createvm_max_time=0.4, boot_time=0.2, destroyvm_max_time=0.2, experimental_features=True,
        vm_lifetime_auth=2, ready_ttl=60))
    document["auth"]["admins"] = [f"user{number}" for number in ADMINS]
    for pool in document["pools"]:
        pool["template"] = TEMPLATES[pool["name"]]
    return yaml.safe_dump(document)


@dataclass
class Checkout:
    pool: str
    host: str
    sent: float
    template: str | None = None
    """The template GET /vm read while the user held it (None: not read)."""


@dataclass
class TemplateChange:
    pool: str
    template: str
    """What the pool's template is once the change is made (the configured one for a clear)."""
    sent: float
    answered: float | None = None
    """When a 200 or 201 came back (None: refused, unanswered or a 503: made or not)."""


class User(TokenCaller):
    """user<n>: VMs checked out, tagged, snapshotted, given a disk, reverted and given back."""

    def __init__(self, number: int, stack: Stack, record: Record, stopping: threading.Event, seed: float,
                 everyone: list[User]) -> None:
        super().__init__(number, f"127.0.4.{number + 1}", stack, record, REQUEST_TIMEOUT)
        self.stopping = stopping
        self.random = random.Random(seed)
        self.everyone = everyone
        self.checkouts: list[Checkout] = []

    def run(self) -> None:
        try:
            self.log_in(self.stopping)
            while self.token and not self.stopping.is_set():
                self.cycle()
        except Exception as error:  # noqa: BLE001 - reported as a failure of the test
            self.record.problem(f"user{self.number} crashed: {type(error).__name__}: {error}")

    def cycle(self) -> None:
        pool = self.random.choice(sorted(POOLS))
        sent = time.monotonic()
        answer = self.send("POST", f"/vm/{pool}")
        if not answer or answer[0] != 200:
            time.sleep(0.2)
            return
        host = answer[1][pool]["hostname"].split(".")[0]
        checkout = Checkout(pool, host, sent)
        self.checkouts.append(checkout)
        holding = Holding(self.number, host, pool, time.monotonic())
        with self.record.lock:
            self.record.holdings.append(holding)
        owner = f"user{self.number}"
        self.send("PUT", f"/vm/{host}", {"tags": {"owner": owner}})
        taken = self.send("POST", f"/vm/{host}/snapshot")
        snapshot = taken[1][host]["snapshot"] if taken and taken[0] == 202 else None
        self.send("POST", f"/vm/{host}/disk/1")
        self.stranger_tries(host)
        seen = self.send("GET", f"/vm/{host}")
        if seen and seen[0] == 200:
            vm = seen[1][host]
            checkout.template = vm.get("source_template")
            tag = vm.get("tags", {}).get("owner")
            if vm.get("state") != "running" or tag not in (None, owner):
                self.record.problem(f"{owner}: {host}, held since {time.monotonic() - holding.got:.1f} s, "
                                    f"reads {vm.get('state')} tagged {tag}: {vm}")
        if snapshot:
            reverted = self.send("POST", f"/vm/{host}/snapshot/{snapshot}")
            if reverted and reverted[0] == 404:
                self.record.problem(f"{owner}: snapshot {snapshot} of {host} answered 202, revert 404: {reverted}")
        time.sleep(self.random.uniform(0, 0.8))
        holding.returned = time.monotonic()
        self.give_back(f"/vm/{host}")

    def stranger_tries(self, host: str) -> None:
        """Another user, with its own token, asks for a snapshot of ``host`` and returns it."""
        strangers = [user for user in self.everyone if user is not self and user.token]
        if not strangers:
            return
        stranger = self.random.choice(strangers)
        for method, path in (("POST", f"/vm/{host}/snapshot"), ("DELETE", f"/vm/{host}")):
            answer = stranger.send(method, path)
            if answer and answer[0] not in (403, 429, 503):
                self.record.problem(f"user{stranger.number}: {method} {path} of user{self.number}'s VM "
                                    f"answered {answer}")


class Admin(TokenCaller):
    """user<n>, an administrator: the pools' templates (``templates``) or their sizes and clone
    targets changed, pools reset; every override cleared once the test stops."""

    def __init__(self, number: int, stack: Stack, record: Record, stopping: threading.Event, seed: float,
                 templates: bool) -> None:
        super().__init__(number, f"127.0.4.{number + 1}", stack, record, REQUEST_TIMEOUT)
        self.stopping = stopping
        self.random = random.Random(seed)
        self.templates = templates
        self.changes: list[TemplateChange] = []

    def run(self) -> None:
        try:
            self.log_in(self.stopping)
            while self.token and not self.stopping.is_set():
                self.change()
                time.sleep(self.random.uniform(0.3, 1.5))
            self.log_in(threading.Event())  # a token to clear with even when the test stopped first
            self.clear()
        except Exception as error:  # noqa: BLE001 - reported as a failure of the test
            self.record.problem(f"user{self.number} crashed: {type(error).__name__}: {error}")

    def change(self) -> None:
        pools = self.random.sample(sorted(POOLS), self.random.randint(1, 2))
        kind = self.random.random()
        if kind < 0.25:
            self.expect_2xx("POST", "/poolreset", dict.fromkeys(pools, "1"))
        elif self.templates and kind < 0.65:
            wanted = {pool: f"templates/{self.random.choice('xyz')}" for pool in pools}
            self.template_change("POST", "/config/pooltemplate", wanted, wanted)
        elif self.templates:
            self.template_change("DELETE", f"/config/pooltemplate/{pools[0]}", None, {pools[0]: TEMPLATES[pools[0]]})
        elif kind < 0.65:
            self.expect_2xx("POST", "/config/poolsize", {pool: str(self.random.randint(0, 6)) for pool in pools})
        elif kind < 0.85:
            self.expect_2xx("DELETE", f"/config/poolsize/{pools[0]}")
        else:
            self.expect_2xx("POST", "/config/clonetarget", dict.fromkeys(pools, "cluster1"))

    def template_change(self, method: str, path: str, body: object, templates: dict[str, str]) -> None:
        changes = [TemplateChange(pool, template, time.monotonic()) for pool, template in templates.items()]
        self.changes.extend(changes)
        if self.expect_2xx(method, path, body):
            for change in changes:
                change.answered = time.monotonic()

    def expect_2xx(self, method: str, path: str, body: object = None) -> bool:
        answer = self.send(method, path, body)
        if answer and answer[0] not in (200, 201, 503):
            self.record.problem(f"user{self.number}: {method} {path} {body} answered {answer}")
        return bool(answer and answer[0] in (200, 201))

    def clear(self) -> None:
        """Every override this administrator makes removed (sent until answered 200 or 201)."""
        paths = ["/config/pooltemplate"] if self.templates else ["/config/poolsize", "/config/clonetarget"]
        for path in paths:
            for pool in POOLS:
                given_up = time.monotonic() + 60
                while not self.expect_2xx("DELETE", f"{path}/{pool}") and time.monotonic() < given_up:
                    time.sleep(0.3)


def stale_handouts(users: list[User], admin: Admin) -> tuple[list[str], int]:
    """Checkouts sent after a template change was answered and before the pool's next change was
    sent, whose VM was of another template; and how many such checkouts were read."""
    found, checked = [], 0
    for pool in POOLS:
        changes = [change for change in admin.changes if change.pool == pool]
        for index, change in enumerate(changes):
            if change.answered is None:
                continue
            until = changes[index + 1].sent if index + 1 < len(changes) else float("inf")
            for user in users:
                for checkout in user.checkouts:
                    if (checkout.pool == pool and checkout.template is not None
                            and change.answered < checkout.sent < until):
                        checked += 1
                        if checkout.template == change.template:
                            continue
                        found.append(f"user{user.number}: {checkout.host} of {pool}, checked out "
                                     f"{checkout.sent - change.answered:.1f} s after its template became "
                                     f"{change.template}, is of {checkout.template}")
    return found, checked


@pytest.mark.audit
@pytest.mark.slow
def test_pool_changes_and_vm_tasks_hold_through_kills_and_pauses(tmp_path: Path) -> None:
    stack = Stack(tmp_path, stack_config(), POOLS, dummy_inventory)
    record, stopping = Record(), threading.Event()
    rng = random.Random(int(os.environ.get("VMPOOL_ADMIN_SEED", "3")))
    users: list[User] = []
    users.extend(User(n, stack, record, stopping, rng.random(), users) for n in range(USERS))
    admins = [Admin(number, stack, record, stopping, rng.random(), templates=number == ADMINS[0])
              for number in ADMINS]

    def faults(done: Faults) -> None:
        time.sleep(2)
        deadline = time.monotonic() + SECONDS
        while time.monotonic() < deadline:
            rng.choice(done.all())(rng)
            time.sleep(rng.uniform(0.2, 3.0))
        time.sleep(2)

    done, left = run_callers(stack, [*users, *admins], stopping, faults, REQUEST_TIMEOUT * 4 + 60)
    summary = (f"faults: {done.done}\nanswers: {record.answers}, connection errors: {record.connection_errors}, "
               f"slowest: {record.slowest:.1f} s, VMs held: {len(record.holdings)}, "
               f"template changes: {len(admins[0].changes)}")
    stale, checked = stale_handouts(users, admins[0])
    summary += f", handouts after a template change: {checked}"
    print(summary)
    overlapping = record.held_by_two_at_once()
    assert not overlapping, f"VMs held by two users at once: {overlapping}\n{summary}"
    assert not record.problems, "\n".join(record.problems[:30]) + f"\n{summary}"
    assert not stale, "\n".join(stale[:30]) + f"\n{summary}"
    assert not left, f"VMs running for users who never got them or gave them back: {left}\n{summary}"
    assert record.answers.get(202, 0) > 50 and checked > 20, summary
