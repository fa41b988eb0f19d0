"""The running stack (`python -m local.run`, dummy pools, dummy auth) under many callers while its
parts are killed and paused one at a time: outsiders checking out, tagging, extending, holding
and returning VMs and opening on-demand requests, each with a token and a client address of its
own, and an observer of our own reading Redis and the dummy provider's folders. Checked: no VM
handed to two callers, none of them destroyed or missing while its caller held it, every answer
JSON and never a 500 or a hang, and after the faults every pool back at its size with the
provider holding exactly what Redis says (docs/reliability.md, "The running stack under process
faults").

A minute or more on the shared 2-core machine while other tests run (44 to 56 s alone, 62 to
100 s beside other loads, ten runs), so not in `make test` (marker ``audit``):
`.venv/bin/pytest -m audit tests/local/test_crash_handout.py`."""

from __future__ import annotations

import base64
import http.client
import json
import os
import random
import threading
import time
from pathlib import Path
from typing import Any, Iterable

import pytest
import redis
import yaml

from chalicelib.store.keys import Keys
from tests.local.stack import wait_for
from tests.local.stack_audit import (
    STATUSES,
    Faults,
    Holding,
    Record,
    Stack,
    converged,
    dummy_inventory,
    left_running,
    nothing_left_of,
)
from tests.vsphere.vcsim import VcsimServer, vms_in_folders
from tools.vcsim import launcher

KEYS = Keys()
POOLS = {"alpha": 5, "beta": 4}
SERVICE = {"domain": "example.com", "check_loop_delay_min": 0.2, "vm_lifetime": 1, "vm_lifetime_auth": 1,
           "max_lifetime_upper_limit": 4, "ready_ttl": 60}
"""Lifetimes of an hour or more: no VM's lifetime ends during a run, so none in use may leave."""
DUMMY_CONFIG = yaml.safe_dump({
    "config": SERVICE, "auth": {"provider": "dummy"},
    "providers": {"dummy": {"provider_class": "dummy", "createvm_max_time": 0.5, "boot_time": 0.3,
                            "destroyvm_max_time": 0.3}},
    "pools": [{"name": name, "size": size, "provider": "dummy"} for name, size in POOLS.items()],
})


CLIENTS = 16
ONDEMAND_CLIENTS = 4
"""Of the clients, how many open on-demand requests instead of checking out."""
REQUEST_TIMEOUT = 20.0
"""Longer than any answer may take: the slowest documented is a 503 after ~8 s (Redis stopped,
callers queued on the event loops' socket timeouts); a request still unanswered after this is a hang."""


class Client:
    """One outsider: its own user, token and loopback address (127.0.1.<n>: the front keys
    anonymous owners and rate limits on the peer address)."""

    def __init__(self, number: int, stack: Stack, record: Record, stopping: threading.Event, seed: float) -> None:
        self.number = number
        self.stack = stack
        self.record = record
        self.stopping = stopping
        self.address = f"127.0.1.{number + 1}"
        self.random = random.Random(seed)
        self.token: str | None = None
        self.unanswered = 0
        self._stopping_seen: float | None = None
        """Checkouts and on-demand requests sent whose answer never came."""

    def send(self, method: str, path: str, body: Any = None) -> tuple[int, Any] | None:
        """One request on a fresh connection; (status, JSON) or None when the connection failed
        (refused or reset: a part of the stack being restarted)."""
        headers = {"Content-Type": "application/json"}
        if self.token:
            headers["X-AUTH-TOKEN"] = self.token
        if path == "/token":
            headers["Authorization"] = "Basic " + base64.b64encode(f"user{self.number}:pw".encode()).decode()
        connection = http.client.HTTPConnection("127.0.0.1", self.stack.port, timeout=REQUEST_TIMEOUT,
                                                source_address=(self.address, 0))
        started = time.monotonic()
        try:
            connection.request(method, f"/api/v3{path}", json.dumps(body) if body is not None else None, headers)
            response = connection.getresponse()
            raw = response.read()
        except TimeoutError:
            self.record.event(f"client {self.number}: {method} {path}: timeout")
            self.record.problem(f"client {self.number}: {method} {path} unanswered after {REQUEST_TIMEOUT} s")
            self.unanswered += method == "POST" and path != "/token"
            return None
        except (ConnectionError, http.client.RemoteDisconnected, http.client.IncompleteRead, OSError) as error:
            self.record.event(f"client {self.number}: {method} {path}: {type(error).__name__}")
            with self.record.lock:
                self.record.connection_errors += 1
            self.unanswered += method == "POST" and path != "/token"
            return None
        finally:
            connection.close()
        seconds = time.monotonic() - started
        with self.record.lock:
            self.record.answers[response.status] = self.record.answers.get(response.status, 0) + 1
            self.record.slowest = max(self.record.slowest, seconds)
        try:
            answer = json.loads(raw)
        except ValueError:
            self.record.problem(f"client {self.number}: {method} {path} answered {response.status}, "
                                f"not JSON: {raw[:200]!r}")
            return None
        self.record.event(f"client {self.number}: {method} {path}: {response.status} {raw[:300]!r}")
        if response.status not in STATUSES:
            self.record.problem(f"client {self.number}: {method} {path} answered {response.status}: {answer}")
        return response.status, answer

    def run(self) -> None:
        try:
            while not self.stopping.is_set() and self.token is None:
                answer = self.send("POST", "/token")
                if answer and answer[0] == 200:
                    self.token = answer[1]["token"]
                else:
                    time.sleep(0.2)
            while not self.stopping.is_set():
                if self.number < ONDEMAND_CLIENTS:
                    self.ondemand_cycle()
                else:
                    self.checkout_cycle()
        except Exception as error:  # noqa: BLE001 - reported as a failure of the test
            self.record.problem(f"client {self.number} crashed: {type(error).__name__}: {error}")

    def got(self, pool: str, host: str) -> Holding:
        holding = Holding(self.number, host.split(".")[0], pool, time.monotonic())
        with self.record.lock:
            self.record.holdings.append(holding)
        return holding

    def checkout_cycle(self) -> None:
        pool = self.random.choice(sorted(self.stack.pools))
        answer = self.send("POST", f"/vm/{pool}")
        if not answer or answer[0] != 200:
            time.sleep(0.1)
            return
        holding = self.got(pool, answer[1][pool]["hostname"])
        tags = {"owner": f"client{self.number}"}
        lifetime = self.random.choice((1, 2, 3))
        changed = self.send("PUT", f"/vm/{holding.host}", {"lifetime": lifetime, "tags": tags})
        seen = self.send("GET", f"/vm/{holding.host}")
        if changed and changed[0] == 200 and seen and seen[0] == 200:
            vm = seen[1][holding.host]
            if vm.get("tags", {}).get("owner") != tags["owner"] or vm.get("state") != "running":
                self.record.problem(f"client {self.number}: {holding.host} reads back {vm}")
        time.sleep(self.random.uniform(0, 1.5))
        self.give_back(holding, f"/vm/{holding.host}")

    def ondemand_cycle(self) -> None:
        pool = self.random.choice(sorted(self.stack.pools))
        opened = self.send("POST", "/ondemandvm", {pool: 1})
        if not opened or opened[0] != 201:
            time.sleep(0.2)
            return
        request_id = opened[1]["request_id"]
        deadline = time.monotonic() + 30
        holding = None
        while time.monotonic() < deadline and not self.stopping.is_set():
            status = self.send("GET", f"/ondemandvm/{request_id}")
            if status and status[0] == 200:
                hosts = status[1].get(pool, {}).get("hostname", [])
                if hosts:
                    holding = self.got(pool, hosts[0])
                break
            time.sleep(0.2)
        if holding is not None:
            time.sleep(self.random.uniform(0, 1.5))
        self.give_back(holding, f"/ondemandvm/{request_id}")

    def give_back(self, holding: Holding | None, path: str) -> None:
        """DELETE until answered 200 (or 404: gone already); the holding ends when first sent.
        Given up 100 tries on, or 20 s after the test stopped (the stack serves by then)."""
        if holding is not None:
            holding.returned = time.monotonic()
        for _ in range(100):
            answer = self.send("DELETE", path)
            if answer and answer[0] in (200, 404):
                return
            if self.stopping.is_set() and time.monotonic() - self.stopping_seen() > 20:
                break
            time.sleep(0.3)
        self.record.problem(f"client {self.number}: DELETE {path} never answered 200")

    def stopping_seen(self) -> float:
        if self._stopping_seen is None:
            self._stopping_seen = time.monotonic()
        return self._stopping_seen


class Observer:
    """Reads, every 0.3 s, which VMs Redis says are running and which the dummy provider's
    folders hold; a VM a client held through the whole read must be in both."""

    def __init__(self, stack: Stack, record: Record, stopping: threading.Event) -> None:
        self.stack, self.record, self.stopping = stack, record, stopping
        self.reads = 0

    def snapshot(self) -> tuple[dict[str, set[str]], dict[str, set[str]]] | None:
        client = self.stack.redis
        if client is None:
            return None
        pools = list(self.stack.pools)
        try:
            with client.pipeline(transaction=True) as pipe:
                for pool in pools:
                    pipe.zrange(KEYS.pool_state(pool, "running"), 0, -1)
                running = {pool: set(found) for pool, found in zip(pools, pipe.execute(), strict=True)}
            return running, self.stack.inventory(client, pools)
        except (redis.RedisError, OSError):  # Redis or the simulator away for a moment
            return None

    def run(self) -> None:
        while not self.stopping.wait(0.3):
            before = time.monotonic()
            found = self.snapshot()
            after = time.monotonic()
            if found is None:
                continue
            self.reads += 1
            running, folders = found
            held = {h.host: h for h in self.record.held_at(before) if h in self.record.held_at(after)}
            for host, holding in held.items():
                if host not in running[holding.pool] or host not in folders[holding.pool]:
                    self.record.problem(
                        f"{host} held by client {holding.client} since {after - holding.got:.1f} s: "
                        f"running {host in running[holding.pool]}, in the provider {host in folders[holding.pool]}")


HUNT_SECONDS = float(os.environ.get("VMPOOL_HANDOUT_SECONDS", "0"))
"""0 (CI): each fault once, in a fixed order. N: faults drawn at random for N seconds (an audit run)."""


@pytest.mark.audit
@pytest.mark.slow
def test_no_vm_is_handed_to_two_callers_lost_or_destroyed_in_use_while_the_stack_is_killed_and_paused(
        tmp_path: Path) -> None:
    audit(Stack(tmp_path, DUMMY_CONFIG, POOLS, dummy_inventory))


@pytest.mark.audit
@pytest.mark.slow
def test_vsphere_vms_are_never_handed_to_two_callers_lost_or_destroyed_in_use_under_the_same_faults(
        tmp_path: Path, private_vcsim: VcsimServer) -> None:
    """The same callers and faults on vSphere pools of the simulator (which outlives the stack's
    kills, as a real vCenter does): clones, boots and destroys take real calls there."""
    pools = {"alpha": 3, "beta": 2}
    config = yaml.safe_dump({
        "config": {**SERVICE, "create_folders": True, "check_loop_delay_min": 0.5},
        "auth": {"provider": "dummy"},
        "providers": {"vsphere": {"provider_class": "vsphere", "server": private_vcsim.server,
                                  "username": launcher.USERNAME, "password": launcher.PASSWORD,
                                  "ca_bundle": str(private_vcsim.cert_path), "ready_check": "tools"}},
        "pools": [{"name": name, "template": launcher.TEMPLATE, "folder": f"vmpool/{name}", "size": size,
                   "provider": "vsphere"} for name, size in pools.items()],
    })

    def inventory(client: redis.Redis, names: Iterable[str]) -> dict[str, set[str]]:
        found = vms_in_folders(private_vcsim)  # InventoryChanging (OSError): the observer reads again later
        return {name: set(found.get(name, ())) for name in names}

    audit(Stack(tmp_path, config, pools, inventory))


def audit(stack: Stack) -> None:
    """Start ``stack``, run the callers and the observer while the faults run, then check."""
    record, stopping = Record(), threading.Event()
    rng = random.Random(int(os.environ.get("VMPOOL_HANDOUT_SEED", "7")))
    try:
        stack.start()
        faults = Faults(stack)
        wait_for(lambda: converged(stack) is None, 60, "the pools to fill", stack.log)
        clients = [Client(n, stack, record, stopping, seed=rng.random()) for n in range(CLIENTS)]
        observer = Observer(stack, record, stopping)
        threads = [threading.Thread(target=c.run, daemon=True) for c in clients]
        threads.append(threading.Thread(target=observer.run, daemon=True))
        for thread in threads:
            thread.start()
        try:
            time.sleep(2)
            if HUNT_SECONDS:
                deadline = time.monotonic() + HUNT_SECONDS
                while time.monotonic() < deadline:
                    rng.choice(faults.all())(rng)
                    time.sleep(rng.uniform(0.2, 3.0))
            else:
                for step in faults.each_once():
                    step(rng)
                    time.sleep(1.0)
            time.sleep(2)
        finally:
            stopping.set()
            for thread in threads:
                thread.join(REQUEST_TIMEOUT * 2 + 25)
        wait_for(lambda: converged(stack) is None, 60, "the pools to converge",
                 lambda: f"{converged(stack)}\n{stack.log()}")
        left = left_running(stack, clients)
    finally:
        stack.stop()

    summary = (f"faults: {faults.done}\nanswers: {record.answers}, connection errors: {record.connection_errors}, "
               f"slowest: {record.slowest:.1f} s, VMs held: {len(record.holdings)}, observer reads: {observer.reads}")
    print(summary)
    by_host: dict[str, list[Holding]] = {}
    for holding in record.holdings:
        by_host.setdefault(holding.host, []).append(holding)
    twice = {host: [h.client for h in held] for host, held in by_host.items() if len(held) > 1}
    assert not twice, f"VMs handed out twice: {twice}\n{summary}"
    assert not record.problems, "\n".join(record.problems[:30]) + f"\n{summary}"
    assert not left, (f"VMs running for callers who never got them or gave them back: {left}\n"
                      + "\n".join(record.events_about([*left, *(v.split()[-1] for v in left.values())]))
                      + f"\n{summary}")
    assert record.answers.get(200, 0) > 50 and observer.reads > 20, summary
    nothing_left_of(stack)
