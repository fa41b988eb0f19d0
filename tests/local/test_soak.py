"""The running stack (`python -m local.run`, dummy pools, dummy auth, rate limits on) for minutes
under 20 callers of their own and two hostile ones, while a worker, the scheduler and
redis-server are killed or paused now and then; Redis, the processes' memory and the provider's
inventory are sampled as it runs (docs/reliability.md, "The running stack over time").

Each caller is a user with a token and an address of its own: checkouts of 1-3 VMs across pools
and aliases, lifetimes and tags changed, VMs returned, on-demand requests opened, polled and
cancelled, tokens made and deleted, feeds read, and now and then a 404, bad JSON, a quota's 403
or a burst into the rate limit. The hostile ones fail logins with a new user name each time and
ask for random hostnames, each from a new loopback address. Checked at the end, once the callers
stopped and the passes settled: every answer JSON with an expected status, the pools at their
size with the provider holding exactly their VMs (tests/harness.py ``assert_consistent``), no VM
left running for nobody, no key a caller can create without an expiry unless the config bounds
it, and no key family past its documented bound.

Minutes of wall time, so not in `make test` (marker ``audit``):
`VMPOOL_SOAK_SECONDS=720 .venv/bin/pytest -m audit -s tests/local/test_soak.py` (the default, 90 s,
checks the driver; the samples go to the report printed and to $VMPOOL_SOAK_REPORT if set)."""

from __future__ import annotations

import base64
import http.client
import json
import os
import random
import re
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml

from chalicelib.clock import FakeClock
from chalicelib.config import parse
from chalicelib.store.keys import STATES, Keys, rate_limit_client
from tests.harness import Harness, assert_consistent
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

KEYS = Keys()
SECONDS = float(os.environ.get("VMPOOL_SOAK_SECONDS", "90"))
SAMPLE_EVERY = max(10.0, min(60.0, SECONDS / 6))
FAULT_EVERY = max(30.0, min(150.0, SECONDS / 4))
CALLERS = 20
POOLS = {"alpha": 4, "beta": 3, "gamma": 2}
TARGETS = ["alpha", "beta", "gamma", "linux", "alpha+beta", "linux+gamma", "beta+beta", "alpha+alpha+gamma"]
MAX_LOGIN_COUNTERS = 2000
MAX_RATE_LIMITED_CLIENTS = 2000
SHARED_COUNTERS = 16384
CONFIG = yaml.safe_dump({
    "config": {"domain": "example.com", "check_loop_delay_min": 0.5, "vm_lifetime": 1, "vm_lifetime_auth": 1,
               "max_lifetime_upper_limit": 4, "max_running_vms_per_user": 4, "max_tokens_per_user": 5,
               "max_ondemand_requests_per_user": 2, "max_ondemand_requests": 20, "ondemand_request_ttl": 1,
               "rate_limiting_enabled": True, "max_rate_limited_clients": MAX_RATE_LIMITED_CLIENTS},
    "rate_limits": {"global_per_ip": {"limit": 100, "period": 60}, "authenticated": {"limit": 600, "period": 60},
                    "vm_creation": {"limit": 40, "period": 60}, "vm_deletion": {"limit": 80, "period": 60}},
    "auth": {"provider": "dummy", "login_window_seconds": 60, "max_login_counters": MAX_LOGIN_COUNTERS},
    "providers": {"dummy": {"provider_class": "dummy", "createvm_max_time": 0.5, "boot_time": 0.3,
                            "destroyvm_max_time": 0.3}},
    "pools": [{"name": name, "size": size, "provider": "dummy",
               "alias": ["linux"] if name != "gamma" else ["windows"]} for name, size in POOLS.items()],
})
WORDS = {"vm", "pool", "cloning", "pools", "counted", "running", "rebuild", "changes", "clone_demand", "wanted",
         "renewed", "clone_backoff", "ready_checked", "running_due", "dns_left", "inventory_checked", "lease",
         "wake", "followup", "nudged", "known", "config", "config_generation", "lastboot", "daily", "tags",
         "ondemand", "vms", "open", "requests", "kept", "poolsize", "pooltemplate", "poolreset", "clonetarget",
         "vmtasks", "holdings", "holders", "ratelimit", "clients", "shared", "token", "tokens", "ttl", "user",
         "dircheck", "login", "addr", "in_flight", "migrating", "templates", "prepared", "preparing", "history",
         "demand", "sizing", "state", "dummy", "folder", "task", "purge", "template", "global_per_ip",
         "authenticated", "vm_creation", "vm_deletion", *("pending", "ready", "completed", "discovered"),
         "attempt", "destroyed", "feed_cache", "held", "names", "pair", "reading", "ready_fence", "settled",
         "started", "token_times", "waiting"}
"""The fixed parts of keys.py's names: any other part is a name, hash or number (``*``)."""
CONFIG_BOUNDED = {"pools:known", "lastboot", "changes", "config_generation", "pools:known:config", "holders",
                  "running", "running:counted", "cloning", "cloning:pools", "cloning:pools:counted",
                  "clone_demand:wanted", "clone_demand:renewed", "ondemand:requests:kept", "ondemand:requests:open",
                  "tokens:ttl", "templates:prepared", "templates:preparing", "sizing:state", "clone_backoff",
                  "migrating", *(f"pool:*:{state}" for state in STATES), "pool:*:ready_checked",
                  "pool:*:running_due", "pool:*:inventory_checked", "wake:*", "history:*", "ondemand:open:*",
                  "vm:*",  # a live VM's record (stale_entries checks the others)
                  "dummy:dummy:folder:*", "dummy:dummy:folder:*:*", "dummy:dummy:folder:*:changes",
                  "ratelimit:*:clients",
                  "login:user:counted", "login:addr:counted", "vmtasks:pool:*",
                  # bounded per caller by the config (docs/reliability.md, identity audit):
                  "token:*", "user:*:tokens", "user:*:token_times",
                  "started", "names:known:dummy"}  # per provider (this one's name is a fixed word too)
"""Families that may hold keys without an expiry: one per service, per pool or per provider, or (the
tokens: no token_ttl configured) bounded by max_tokens_per_user."""


RATE_CLIENT_KINDS = ("ip", "login", "user")
"""What a rate-limit counter's ``<who>`` starts with (keys.rate_limit_client)."""


def family(key: str) -> str:
    """The key's name with every part that is not a fixed word as ``*``. A rate-limit client's
    counter is ``ratelimit:<class>:<kind>:*`` whatever its ``<who>`` holds after its kind: an
    IPv6 /64's colons and a login's ``<hash>:<address>`` are one family with the addresses."""
    name = key.removeprefix(KEYS.prefix)
    parts = name.split(":", 3)
    if len(parts) > 3 and parts[0] == "ratelimit" and parts[2] in RATE_CLIENT_KINDS:
        return f"ratelimit:{parts[1] if parts[1] in WORDS else '*'}:{parts[2]}:*"
    return ":".join(part if part in WORDS else "*" for part in name.split(":"))


def rate_limited_clients(families: dict[str, int], request_class: str) -> int:
    """The counters of clients a rate-limit class counts on their own, of every kind (the shared
    counters and the class's table aside): at most ``max_rate_limited_clients`` together."""
    return sum(count for name, count in families.items()
               if name in {f"ratelimit:{request_class}:{kind}:*" for kind in RATE_CLIENT_KINDS})


@dataclass
class Sample:
    at: float
    used_memory: int
    dbsize: int
    families: dict[str, int]
    longest: dict[str, int]
    """Family -> the most members one of its keys holds (lists, sets, zsets, hashes)."""
    members: dict[str, int]
    no_ttl: dict[str, int]
    rss_kb: dict[str, int]
    provider_vms: int
    redis_vms: int
    only_in_provider: int


def read_sample(stack: Stack, started: float) -> Sample | None:
    client = stack.redis
    assert client is not None
    try:
        memory = client.info("memory")
        keys = list(client.scan_iter(count=1000))
        with client.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.type(key)
                pipe.ttl(key)
            described = pipe.execute()
        sizes = {"list": "llen", "zset": "zcard", "hash": "hlen", "set": "scard"}
        with client.pipeline(transaction=False) as pipe:
            for key, kind in zip(keys, described[::2], strict=True):
                if kind in sizes:
                    getattr(pipe, sizes[kind])(key)
            lengths = iter(pipe.execute())
        inventory = dummy_inventory(client, POOLS)
        with client.pipeline(transaction=False) as pipe:
            for pool in POOLS:
                for state in ("pending", "ready", "running", "completed", "discovered"):
                    pipe.zrange(KEYS.pool_state(pool, state), 0, -1)
            in_redis = set().union(*map(set, pipe.execute()))
    except (redis.RedisError, OSError):
        return None
    families, no_ttl, longest, members = Counter[str](), Counter[str](), Counter[str](), Counter[str]()
    for key, kind, ttl in zip(keys, described[::2], described[1::2], strict=True):
        name = family(key)
        families[name] += 1
        no_ttl[name] += ttl == -1
        if kind in sizes:
            length = next(lengths)
            longest[name] = max(longest[name], length)
            members[name] += length
    in_provider = set().union(*inventory.values())
    return Sample(round(time.monotonic() - started), int(memory["used_memory"]), len(keys), dict(families),
                  dict(longest), dict(members), {k: v for k, v in no_ttl.items() if v}, rss(stack),
                  len(in_provider), len(in_redis), len(in_provider - in_redis))


def stale_entries(client: redis.Redis) -> dict[str, int]:
    """What Redis keeps without an expiry for VMs that are in no state (returned, destroyed): VM
    records, and entries of the pools' running_due sets for VMs no longer running."""
    in_states: set[str] = set()
    for pool in POOLS:
        for state in STATES:
            in_states |= set(client.zrange(KEYS.pool_state(pool, state), 0, -1))
    records = [key for key in client.scan_iter(match=KEYS.vm("*"), count=1000) if client.ttl(key) == -1]
    found = {"records": len({key.removeprefix(KEYS.vm("")) for key in records} - in_states)}
    for pool in POOLS:
        running = set(client.zrange(KEYS.pool_state(pool, "running"), 0, -1))
        found[f"{pool} running_due"] = len(set(client.zrange(KEYS.running_due(pool), 0, -1)) - running)
    return {what: count for what, count in found.items() if count}


def rss(stack: Stack) -> dict[str, int]:
    """kB resident per part: the scheduler (local.run itself), redis-server, the HTTP arbiter and
    its workers (summed)."""
    found: Counter[str] = Counter()
    redis_pid, arbiter, workers = stack.redis_pid(), stack.arbiter(), set(stack.workers())
    for pid in stack.parts():
        part = ("scheduler" if stack.process and pid == stack.process.pid else "redis" if pid == redis_pid
                else "arbiter" if pid == arbiter else "workers" if pid in workers else "other")
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        match = re.search(r"VmRSS:\s+(\d+)", status)
        found[part] += int(match.group(1)) if match else 0
    return dict(found)


class Caller:
    """One user with its own token and loopback address (127.0.1.<n>), as crash_handout's
    clients, with left_running's attributes (``number``, ``unanswered``, ``record``)."""

    def __init__(self, number: int, stack: Stack, record: Record, stopping: threading.Event, seed: float) -> None:
        self.number, self.stack, self.record, self.stopping = number, stack, record, stopping
        self.address = f"127.0.1.{number + 1}"
        self.random = random.Random(seed)
        self.token: str | None = None
        self.unanswered = 0

    def send(self, method: str, path: str, body: Any = None, *, raw: bytes | None = None,
             login: tuple[str, str] | None = None, token: bool = True, address: str | None = None
             ) -> tuple[int, Any] | None:
        headers = {"Content-Type": "application/json"}
        if token and self.token:
            headers["X-AUTH-TOKEN"] = self.token
        if login:
            headers["Authorization"] = "Basic " + base64.b64encode(":".join(login).encode()).decode()
        data = raw if raw is not None else json.dumps(body).encode() if body is not None else None
        connection = http.client.HTTPConnection("127.0.0.1", self.stack.port, timeout=20,
                                                source_address=(address or self.address, 0))
        started = time.monotonic()
        try:
            connection.request(method, f"/api/v3{path}", data, headers)
            response = connection.getresponse()
            answer_bytes = response.read()
        except TimeoutError:
            self.record.problem(f"caller {self.number}: {method} {path} unanswered after 20 s")
            self.unanswered += method == "POST" and path.startswith(("/vm", "/ondemandvm"))
            return None
        except (ConnectionError, http.client.HTTPException, OSError):
            with self.record.lock:
                self.record.connection_errors += 1
            self.unanswered += method == "POST" and path.startswith(("/vm", "/ondemandvm"))
            return None
        finally:
            connection.close()
        with self.record.lock:
            self.record.answers[response.status] = self.record.answers.get(response.status, 0) + 1
            self.record.slowest = max(self.record.slowest, time.monotonic() - started)
        try:
            answer = json.loads(answer_bytes)
        except ValueError:
            self.record.problem(f"{method} {path}: {response.status}, not JSON: {answer_bytes[:200]!r}")
            return None
        if response.status not in STATUSES:
            self.record.problem(f"{method} {path}: {response.status}: {str(answer)[:300]}")
        return response.status, answer

    def run(self) -> None:
        cycles = [(self.checkout, 40), (self.ondemand, 15), (self.token_churn, 10), (self.read_feeds, 15),
                  (self.hostile, 20)]
        try:
            while not self.stopping.is_set():
                if self.token is None:
                    made = self.send("POST", "/token", login=(f"user{self.number}", "pw"), token=False)
                    self.token = made[1]["token"] if made and made[0] == 200 else None
                    time.sleep(0.2)
                    continue
                self.random.choices([c for c, _ in cycles], [w for _, w in cycles])[0]()
                time.sleep(self.random.uniform(0.1, 0.6))
        except Exception as error:  # noqa: BLE001 - reported as a failure of the test
            self.record.problem(f"caller {self.number} crashed: {type(error).__name__}: {error}")

    def checkout(self) -> None:
        target = self.random.choice(TARGETS)
        answer = self.send("POST", f"/vm/{target}")
        if not answer or answer[0] != 200:
            return
        held = []
        for name, got in answer[1].items():
            if isinstance(got, dict):
                hosts = got["hostname"] if isinstance(got["hostname"], list) else [got["hostname"]]
                held += [Holding(self.number, host.split(".")[0], name, time.monotonic()) for host in hosts]
        with self.record.lock:
            self.record.holdings.extend(held)
        for holding in held:
            tags = {"owner": f"user{self.number}", "build": str(self.random.randrange(1000))}
            if self.random.random() < 0.2:
                tags[f"t{uuid.uuid4().hex[:8]}"] = uuid.uuid4().hex
            self.send("PUT", f"/vm/{holding.host}", {"lifetime": self.random.choice((1, 2, 3)), "tags": tags})
            self.send("GET", f"/vm/{holding.host}")
        time.sleep(self.random.uniform(0, 2))
        for holding in held:
            self.give_back(holding, f"/vm/{holding.host}")

    def ondemand(self) -> None:
        pool = self.random.choice(sorted(POOLS))
        opened = self.send("POST", "/ondemandvm", {pool: self.random.choice((1, 2))})
        if not opened or opened[0] != 201:
            return
        request_id, held = opened[1]["request_id"], []
        deadline = time.monotonic() + self.random.choice((0.5, 15))  # some are cancelled while building
        while time.monotonic() < deadline and not self.stopping.is_set():
            status = self.send("GET", f"/ondemandvm/{request_id}")
            if status and status[0] == 200:
                hosts = status[1].get(pool, {}).get("hostname", [])
                held = [Holding(self.number, h.split(".")[0], pool, time.monotonic()) for h in hosts]
                with self.record.lock:
                    self.record.holdings.extend(held)
                break
            time.sleep(0.5)
        time.sleep(self.random.uniform(0, 1))
        self.give_back(held[0] if held else None, f"/ondemandvm/{request_id}", also=held[1:])

    def token_churn(self) -> None:
        login = (f"user{self.number}", "pw")
        made = self.send("POST", "/token", login=login, token=False)
        if made and made[0] == 200:
            self.send("GET", f"/token/{made[1]['token']}", login=login, token=False)
            self.send("DELETE", f"/token/{made[1]['token']}", login=login, token=False)
        self.send("GET", "/token", login=login, token=False)

    def read_feeds(self) -> None:
        self.send("GET", self.random.choice(("/status", "/summary", "/vm", "/poolstat", "/totalrunning",
                                             "/summary/boot", "/config")))

    def hostile(self) -> None:
        host = uuid.uuid4().hex[:15]
        choice = self.random.randrange(8)
        if choice == 0:
            self.send("GET", f"/vm/{host}")
        elif choice == 1:
            self.send("DELETE", f"/vm/{host}")
        elif choice == 2:
            self.send("PUT", f"/vm/{host}", {"lifetime": 2})
        elif choice == 3:
            self.send("GET", f"/ondemandvm/{uuid.uuid4()}")
        elif choice == 4:
            self.send("POST", "/vm", raw=b'{"alpha": 1,')
        elif choice == 5:
            self.send("POST", "/ondemandvm", raw=b'{"alpha": "x", "beta": [[[[]]]]}')
        elif choice == 6:  # past max_running_vms_per_user: 403
            self.send("POST", "/vm", {"alpha": 3, "beta": 2})
        else:  # into the vm_creation rate limit: 429s
            for _ in range(45):
                self.send("POST", "/vm/nosuchpool")

    def give_back(self, holding: Holding | None, path: str, also: list[Holding] | None = None) -> None:
        for returned in [holding, *(also or [])]:
            if returned is not None:
                returned.returned = time.monotonic()
        for _ in range(100):
            answer = self.send("DELETE", path)
            if answer and answer[0] in (200, 404):
                return
            time.sleep(0.5)
        self.record.problem(f"caller {self.number}: DELETE {path} never answered 200")


class Intruder(Caller):
    """Failed logins (a new user name each time, password = name) or random hostnames, each from a
    new loopback address; ``per_second`` of them."""

    def __init__(self, number: int, stack: Stack, record: Record, stopping: threading.Event, seed: float,
                 logins: bool, per_second: float) -> None:
        super().__init__(number, stack, record, stopping, seed)
        self.logins, self.per_second, self.sent = logins, per_second, 0

    def run(self) -> None:
        started = time.monotonic()
        while not self.stopping.is_set():
            address = ".".join(map(str, (127, self.random.randrange(2, 255), self.random.randrange(256),
                                         self.random.randrange(1, 255))))
            name = uuid.uuid4().hex
            if self.logins:
                self.send("POST", "/token", login=(name, name), token=False, address=address)
            else:
                self.send("GET", f"/vm/{name[:15]}", address=address)
            self.sent += 1
            time.sleep(max(0.0, started + self.sent / self.per_second - time.monotonic()))


def describe(samples: list[Sample]) -> str:
    """The curves: every sample's totals, then each family's key count and longest member list."""
    lines = ["  t(s)  keys  used_memory  rss_kB(sched/redis/arbiter/workers)  provider/redis VMs"]
    for s in samples:
        lines.append(f"  {s.at:5} {s.dbsize:5} {s.used_memory:11} "
                     f"{s.rss_kb.get('scheduler', 0)}/{s.rss_kb.get('redis', 0)}/{s.rss_kb.get('arbiter', 0)}/"
                     f"{s.rss_kb.get('workers', 0)}  {s.provider_vms}/{s.redis_vms} (+{s.only_in_provider})")
    for name in sorted(set().union(*(s.families for s in samples))):
        curve = " ".join(f"{s.families.get(name, 0)}/{s.longest.get(name, 0)}" for s in samples)
        lines.append(f"  {name}: {curve}  (no TTL at the end: {samples[-1].no_ttl.get(name, 0)})")
    return "\n".join(lines)


@pytest.mark.audit
@pytest.mark.slow
def test_what_the_stack_keeps_stays_bounded_and_converges_over_minutes_of_callers_and_faults(tmp_path: Path) -> None:
    stack = Stack(tmp_path, CONFIG, POOLS, dummy_inventory)
    record, stopping = Record(), threading.Event()
    rng = random.Random(int(os.environ.get("VMPOOL_SOAK_SEED", "11")))
    samples: list[Sample] = []
    try:
        stack.start()
        faults = Faults(stack)
        wait_for(lambda: converged(stack) is None, 60, "the pools to fill", stack.log)
        started = time.monotonic()
        callers = [Caller(n, stack, record, stopping, rng.random()) for n in range(CALLERS)]
        intruders = [Intruder(100 + n, stack, record, stopping, rng.random(), logins=n == 0, per_second=40)
                     for n in range(2)]
        threads = [threading.Thread(target=c.run, daemon=True) for c in [*callers, *intruders]]
        for thread in threads:
            thread.start()
        next_sample, next_fault, round_number = started, started + FAULT_EVERY, 0
        while time.monotonic() < started + SECONDS:
            if time.monotonic() >= next_sample:
                sample = read_sample(stack, started)
                if sample is not None:
                    samples.append(sample)
                    print(f"sample at {sample.at} s: {sample.dbsize} keys, {sample.used_memory} B, {sample.rss_kb}",
                          flush=True)
                    next_sample += SAMPLE_EVERY
            if time.monotonic() >= next_fault:
                faults.kill_worker(rng)
                time.sleep(5)
                faults.stop_redis(rng, seconds=rng.uniform(2, 5))
                if round_number % 2:
                    faults.kill_stack(rng)  # the scheduler SIGKILLed (its children die with it), started again
                round_number += 1
                next_fault += FAULT_EVERY
            time.sleep(1)
        stopping.set()
        for thread in threads:
            thread.join(90)
        wait_for(lambda: converged(stack) is None, 120, "the pools to converge",
                 lambda: f"{converged(stack)}\n{stack.log()}")
        time.sleep(5)
        final = read_sample(stack, started)
        assert final is not None
        samples.append(final)
        left = left_running(stack, callers)
        assert stack.redis is not None
        harness = Harness(parse(CONFIG), redis.Redis(port=stack.redis_port, decode_responses=True), FakeClock(),
                          prefix=KEYS.prefix)
        for pool in POOLS:
            assert_consistent(harness, pool)
        clones = {name: stack.redis.zcard(name) for name in (KEYS.cloning, KEYS.pool_clones)}
        stale = stale_entries(stack.redis)
    finally:
        stopping.set()
        stack.stop()
    report = (f"faults: {faults.done}\nanswers: {dict(sorted(record.answers.items()))}, connection errors: "
              f"{record.connection_errors}, slowest: {record.slowest:.1f} s, VMs held: {len(record.holdings)}, "
              f"failed logins: {intruders[0].sent}, random hostnames: {intruders[1].sent}\n{describe(samples)}")
    print(report)
    if os.environ.get("VMPOOL_SOAK_REPORT"):
        Path(os.environ["VMPOOL_SOAK_REPORT"]).write_text(
            json.dumps([s.__dict__ for s in samples], indent=1) + "\n" + report)
    assert not record.problems, "\n".join(record.problems[:30]) + f"\n{report}"
    assert not left, f"VMs running for callers who never got them or gave them back: {left}\n{report}"
    assert not any(clones.values()), f"clone slots held with nothing cloning: {clones}"
    assert not stale, f"kept for VMs no longer there: {stale}\n{report}"
    unbounded = {name: count for name, count in final.no_ttl.items() if name not in CONFIG_BOUNDED}
    assert not unbounded, f"keys a caller can create that never expire: {unbounded}\n{report}"
    families = final.families
    assert families.get("login:user:*", 0) <= MAX_LOGIN_COUNTERS + SHARED_COUNTERS, report
    for request_class in ("global_per_ip", "authenticated", "vm_creation", "vm_deletion"):
        assert rate_limited_clients(families, request_class) <= MAX_RATE_LIMITED_CLIENTS, report
        assert families.get(f"ratelimit:{request_class}:shared:*", 0) <= SHARED_COUNTERS, report
    assert record.answers.get(200, 0) > 100, report
    nothing_left_of(stack)


def test_every_kind_of_rate_limited_client_counts_toward_its_class_bound() -> None:
    """The bound above counted ``ratelimit:<class>:*:*`` only: a login's counter
    (``login:<hash>:<address>``) and an IPv6 client's (``ip:2001:db8::/64``) fell in families of
    their own that no bound checked, so the soak passed whatever number of them Redis kept."""
    keys = [KEYS.rate_limit("global_per_ip", rate_limit_client(None, "127.0.0.9")),
            KEYS.rate_limit("global_per_ip", rate_limit_client(None, "2001:db8::/64")),
            KEYS.rate_limit("global_per_ip", rate_limit_client(None, "127.0.0.9", login="intruder")),
            KEYS.rate_limit("global_per_ip", rate_limit_client(None, "2001:db8::/64", login="intruder")),
            KEYS.rate_limit("authenticated", rate_limit_client("user1", "127.0.0.9")),
            KEYS.rate_limit_shared("global_per_ip", 3), KEYS.rate_limit_clients("global_per_ip")]
    families = Counter(family(key) for key in keys)
    assert rate_limited_clients(families, "global_per_ip") == 4
    assert rate_limited_clients(families, "authenticated") == 1
    assert families["ratelimit:global_per_ip:shared:*"] == 1
