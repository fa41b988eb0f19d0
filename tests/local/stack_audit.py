"""The running stack (`python -m local.run`) as the process-fault audits drive it: the stack
itself (started, killed, stopped; its parts' pids), the faults done to it, what callers held and
the checks made once they are done. Shared by tests/local/test_crash_handout.py and
tests/local/test_soak.py (audit marker: not in `make test`)."""

from __future__ import annotations

import base64
import contextlib
import functools
import http.client
import json
import os
import random
import re
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Protocol, Sequence

import redis
import yaml

from chalicelib.store.keys import Keys
from chalicelib.store.store import UNCONFIRMED_SECONDS
from local.processes import PortHold
from tests.local.stack import (
    REPO_ROOT,
    descendants,
    group_members,
    process_parents,
    stack_command,
    stack_env,
    wait_for,
)
from tests.support import free_port

KEYS = Keys()
AUDIT_WORKERS = int(os.environ.get("VMPOOL_AUDIT_WORKERS", "2"))
"""The stack's HTTP workers (``--workers``): 0 audits the one-process layout (``WORKERS=0``), whose
HTTP loops run in the scheduler's process: there the worker faults find no worker (a no-op, noted)
and the scheduler's SIGSTOP pauses the front too."""


def dummy_pools_config(pools: dict[str, int], createvm_max_time: float, boot_time: float,
                       destroyvm_max_time: float, **config: Any) -> str:
    """The YAML config of an audited stack: dummy auth, every pool (name: size) on the dummy
    provider with these clone/boot/destroy times, short checks (0.2 s) and one-hour default
    lifetimes; ``config`` adds to (or overrides) the ``config`` section."""
    return yaml.safe_dump({
        "config": {"domain": "example.com", "check_loop_delay_min": 0.2, "vm_lifetime": 1, **config},
        "auth": {"provider": "dummy"},
        "providers": {"dummy": {"provider_class": "dummy", "createvm_max_time": createvm_max_time,
                                "boot_time": boot_time, "destroyvm_max_time": destroyvm_max_time}},
        "pools": [{"name": name, "size": size, "provider": "dummy"} for name, size in pools.items()],
    })


def dummy_inventory(client: redis.Redis, pools: Iterable[str]) -> dict[str, set[str]]:
    """Pool -> the VMs in its folder of the dummy provider (which keeps them in Redis)."""
    with client.pipeline(transaction=True) as pipe:
        for pool in pools:
            pipe.hkeys(KEYS.dummy_folder("dummy", pool))
        return {pool: set(names) for pool, names in zip(pools, pipe.execute(), strict=True)}


STATUSES = {200, 201, 202, 400, 401, 403, 404, 409, 429, 503}


@dataclass
class Holding:
    client: int
    host: str
    pool: str
    got: float
    """time.monotonic() when the answer naming it arrived."""
    returned: float | None = None
    """When its return (DELETE) was first sent; None while held."""


@dataclass
class Record:
    holdings: list[Holding] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    answers: dict[int, int] = field(default_factory=dict)
    connection_errors: int = 0
    slowest: float = 0.0
    events: list[str] = field(default_factory=list)
    """Every request: when, by whom, what, and its status (or how it failed), for a failure's report."""
    lock: threading.Lock = field(default_factory=threading.Lock)

    def event(self, text: str) -> None:
        with self.lock:
            self.events.append(f"{time.monotonic():.1f} {text}")

    def events_about(self, words: list[str]) -> list[str]:
        with self.lock:
            return [event for event in self.events if any(word in event for word in words)]

    def problem(self, text: str) -> None:
        with self.lock:
            self.problems.append(text)

    def held_at(self, moment: float) -> list[Holding]:
        with self.lock:
            return [h for h in self.holdings if h.got <= moment and (h.returned is None or h.returned > moment)]

    def held_by_two_at_once(self) -> dict[str, list[int]]:
        """Host -> the callers that held it at overlapping times (none, when handouts are sound)."""
        by_host: dict[str, list[Holding]] = {}
        with self.lock:
            for holding in self.holdings:
                by_host.setdefault(holding.host, []).append(holding)
        return {host: [h.client for h in held] for host, held in by_host.items()
                if any(a.got < (b.returned or 1e18) and b.got < (a.returned or 1e18)
                       for i, a in enumerate(held) for b in held[i + 1:])}


class Stack:
    """One `python -m local.run` on a port kept across restarts (the clients keep their address),
    with a state directory of its own."""

    def __init__(self, tmp_path: Path, config: str, pools: dict[str, int],
                 inventory: Callable[[redis.Redis, Iterable[str]], dict[str, set[str]]],
                 workers: int = AUDIT_WORKERS) -> None:
        self.pools = pools
        self.workers_asked = workers
        """Its ``--workers`` (0: the one-process layout)."""
        self.inventory = inventory
        """Pool -> the VMs the provider holds for it, read from outside the service."""
        self.config_file = tmp_path / "handout.yaml"
        self.config_file.write_text(config)
        self.state_dir = tmp_path / "handout-state"
        self.log_path = tmp_path / "handout.log"
        self.port = free_port()
        self._port_hold = PortHold()
        """The HTTP port, held from its choice to stop(): the stack binds it beside the hold, and
        no other process takes it while the stack is down between a kill() and the next start()
        (the stack then refused to start: "port N is in use", and the audit failed)."""
        self._port_hold.hold(self.port)
        self.redis_port = 0
        self.process: subprocess.Popen[bytes] | None = None
        self.redis: redis.Redis | None = None

    def start(self) -> None:
        """It stops when this process dies (``stack_env``), so a test run killed on its timeout
        leaves no stack behind."""
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                stack_command(self.port, self.workers_asked, 1.0), cwd=REPO_ROOT,
                env=stack_env(self.config_file, self.state_dir),
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        process, mark = self.process, self.log_path.stat().st_size

        def banner() -> re.Match[str] | None:
            if process.poll() is not None:
                raise AssertionError(f"the stack exited ({process.returncode}):\n{self.log()}")
            return re.search(r"redis on port (\d+)", self.log_path.read_text(errors="replace")[mark:])

        self.redis_port = int(wait_for(banner, 60, "the stack to start", self.log).group(1))
        self.redis = redis.Redis(port=self.redis_port, decode_responses=True, socket_timeout=2)

    def kill(self) -> None:
        """`kill -9` of the whole process group: the scheduler, redis-server and the HTTP front."""
        assert self.process is not None
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()
        pgid = self.process.pid
        wait_for(lambda: not group_members(pgid), 20, "every process of the killed stack to die")

    def stop(self) -> None:
        self._port_hold.release()
        if self.process is None or self.process.poll() is not None:
            return
        for pid in self.parts():  # nothing left stopped: a stopped process ignores SIGINT
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
        os.killpg(self.process.pid, signal.SIGINT)
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def parts(self) -> set[int]:
        assert self.process is not None
        return {self.process.pid, *descendants(self.process.pid)}

    def redis_pid(self) -> int | None:
        return next((pid for pid in self.parts() if b"redis-server" in _cmdline(pid)), None)

    def arbiter(self) -> int | None:
        assert self.process is not None
        if self.workers_asked == 0:  # the one-process layout has no arbiter (a child now is not one)
            return None
        parents = process_parents()
        return next((pid for pid in self.parts() if parents.get(pid) == self.process.pid
                     and not any(other in _cmdline(pid) for other in (b"redis-server", b"resource_tracker"))),
                    None)

    def workers(self) -> list[int]:
        arbiter = self.arbiter()
        return sorted(descendants(arbiter)) if arbiter else []

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-6000:]


def nothing_left_of(stack: Stack) -> None:
    """Once ``stack.stop()`` returned: no process of its group still runs, within 10 s. Not at
    once: its multiprocessing resource tracker (started with a front restarted after its arbiter
    was killed) ignores Ctrl-C and exits only once the stack's last process has closed its pipe,
    so it may outlive the stack by a moment on a loaded machine (a run at load 11 found a process of
    the group alive right after the stop, gone by the time it was looked at; which one was not
    recorded: the failure now names what is left)."""
    pgid = stack.process.pid if stack.process else 0

    def left() -> dict[int, bytes]:
        return {pid: _cmdline(pid)[:120] for pid in group_members(pgid)}

    wait_for(lambda: not left(), 10, "every process of the stopped stack to exit", lambda: str(left()))


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def pause(pid: int | None, seconds: float) -> None:
    if pid is None:
        return
    os.kill(pid, signal.SIGSTOP)
    try:
        time.sleep(seconds)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)


def kill(pid: int | None) -> None:
    if pid is not None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def serving(stack: Stack) -> bool:
    try:
        connection = http.client.HTTPConnection("127.0.0.1", stack.port, timeout=5)
        connection.request("GET", "/api/v3/status")
        return connection.getresponse().status == 200
    except OSError:
        return False


def converged(stack: Stack) -> str | None:
    """None once every pool is at its size, with nothing pending or completed, and each folder
    holds exactly the pool's ready and running VMs; else what is not so yet."""
    client = stack.redis
    assert client is not None
    inventory = stack.inventory(client, stack.pools)
    for pool, size in stack.pools.items():
        states = {state: set(client.zrange(KEYS.pool_state(pool, state), 0, -1))
                  for state in ("ready", "running", "pending", "completed", "discovered")}
        folder = inventory.get(pool, set())
        if len(states["ready"]) != size:
            return f"{pool}: {len(states['ready'])} ready of {size}"
        if states["pending"] or states["completed"] or states["discovered"]:
            return f"{pool}: {states}"
        if folder != states["ready"] | states["running"]:
            return (f"{pool}: in the provider only {folder - states['ready'] - states['running']}, "
                    f"in Redis only {(states['ready'] | states['running']) - folder}")
    return None


class Caller(Protocol):
    """What ``left_running`` reads of a caller (test_crash_handout.Client, test_soak.Caller)."""

    @property
    def number(self) -> int:
        """It is ``user<number>``."""

    @property
    def unanswered(self) -> int:
        """How many of its checkouts (or on-demand requests) went unanswered."""

    @property
    def record(self) -> Record:
        """Where its holdings are recorded."""


def left_running(stack: Stack, clients: Sequence[Caller]) -> dict[str, str]:
    """The VMs still running once every caller has given back what it got, and whose they are,
    beyond what a caller may have been given without knowing it: one a checkout (or an
    on-demand request) whose answer never reached it. A checkout never confirmed (answered 503)
    is not counted: a pass gives its VM back at its deadline, a minute after (checked in
    tests/chaos/test_slow_redis.py; the run does not wait that long)."""
    client = stack.redis
    assert client is not None
    unexplained: dict[str, str] = {}
    lost = {f"user{c.number}": c.unanswered for c in clients}
    returned = {h.host for c in clients for h in c.record.holdings if h.returned is not None}
    deadline = time.time() + UNCONFIRMED_SECONDS
    for pool in stack.pools:
        for host in sorted(map(str, client.zrange(KEYS.pool_state(pool, "running"), 0, -1))):
            user, request, confirm_by = client.hmget(KEYS.vm(host), "token_user", "request", "confirm_by")
            if confirm_by is not None and float(confirm_by) <= deadline:
                continue
            if host not in returned and lost.get(user, 0) > 0:
                lost[user] -= 1
            else:
                unexplained[host] = f"{user}, request {request}"
    return unexplained


class Faults:
    """Each part of the stack killed or paused, one at a time; each returns once the stack serves
    again (what the stack does not restart itself is restarted here)."""

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.done: list[str] = []

    def note(self, what: str) -> None:
        self.done.append(f"{time.monotonic():.1f} {what}")

    def kill_worker(self, rng: random.Random) -> None:
        self.note("kill -9 of an HTTP worker")
        kill(rng.choice(self.stack.workers() or [None]))

    def stop_worker(self, rng: random.Random, seconds: float | None = None) -> None:
        seconds = seconds if seconds is not None else rng.choice((1.0, 3.0, 7.0))
        self.note(f"SIGSTOP of an HTTP worker for {seconds} s")
        pause(rng.choice(self.stack.workers() or [None]), seconds)

    def kill_redis(self, rng: random.Random) -> None:
        self.note("kill -9 of redis-server")
        kill(self.stack.redis_pid())
        wait_for(lambda: self.stack.redis_pid() is not None and serving(self.stack), 30, "redis-server again",
                 self.stack.log)

    def stop_redis(self, rng: random.Random, seconds: float | None = None) -> None:
        seconds = seconds if seconds is not None else rng.choice((1.0, 4.0, 8.0))
        self.note(f"SIGSTOP of redis-server for {seconds} s")
        pause(self.stack.redis_pid(), seconds)

    def stop_scheduler(self, rng: random.Random, seconds: float | None = None) -> None:
        seconds = seconds if seconds is not None else rng.choice((1.0, 3.0, 10.0))
        self.note(f"SIGSTOP of the scheduler for {seconds} s")
        pause(self.stack.process.pid if self.stack.process else None, seconds)

    def kill_arbiter(self, rng: random.Random) -> None:
        self.note("kill -9 of the HTTP arbiter")
        kill(self.stack.arbiter())
        wait_for(lambda: serving(self.stack), 30, "a new HTTP front", self.stack.log)

    def kill_stack(self, rng: random.Random) -> None:
        self.note("kill -9 of the scheduler with redis-server and the front; started again")
        self.stack.kill()
        self.stack.start()

    def stop_stack(self, rng: random.Random, seconds: float | None = None) -> None:
        seconds = seconds if seconds is not None else rng.choice((2.0, 8.0))
        self.note(f"SIGSTOP of the whole stack for {seconds} s (Ctrl-Z, fg)")
        assert self.stack.process is not None
        os.killpg(self.stack.process.pid, signal.SIGSTOP)
        try:
            time.sleep(seconds)
        finally:
            os.killpg(self.stack.process.pid, signal.SIGCONT)

    def each_once(self) -> list[Callable[[random.Random], None]]:
        """Every fault once, for CI: a stopped worker long enough for the arbiter to replace it
        (5 s), redis-server stopped past the service's socket timeout."""
        return [self.kill_worker, functools.partial(self.stop_worker, seconds=6.0), self.kill_redis,
                functools.partial(self.stop_redis, seconds=4.0), functools.partial(self.stop_scheduler, seconds=2.0),
                self.kill_arbiter, self.kill_stack, functools.partial(self.stop_stack, seconds=2.0)]

    def all(self) -> list[Callable[[random.Random], None]]:
        return [self.kill_worker, self.stop_worker, self.kill_redis, self.stop_redis, self.stop_scheduler,
                self.kill_arbiter, self.kill_stack, self.stop_stack]


class TokenCaller:
    """One caller of the dummy-auth stack: ``user<number>`` with a token of its own, from a
    loopback address of its own (the front keys anonymous owners and rate limits on it), recording
    every answer in ``record``. Shared by tests/local/test_redis_stop_burst.py and
    tests/local/test_ondemand_under_kills.py."""

    def __init__(self, number: int, address: str, stack: Stack, record: Record, timeout: float) -> None:
        self.number, self.address, self.stack, self.record, self.timeout = number, address, stack, record, timeout
        self.token = ""
        self.unanswered = 0
        """Creates (checkouts, on-demand requests) that got no answer at all: what it may hold unknowingly."""
        self.last_lost = 0.0
        """time.monotonic() of its last create answered not at all or 503 with an error (Redis
        failing: its script may have run)."""

    def log_in(self, stopping: threading.Event) -> None:
        """A token, asked for until one is given (or the test stops)."""
        while not stopping.is_set() and not self.token:
            answer = self.send("POST", "/token", login=True)
            if answer and answer[0] == 200:
                self.token = answer[1]["token"]
            else:
                time.sleep(0.3)

    def send(self, method: str, path: str, body: object = None, login: bool = False) -> tuple[int, Any] | None:
        """One request on a connection of its own: (status, JSON), or None when it got no answer
        (refused or reset: a part of the stack restarting; a timeout is a problem: a hang)."""
        headers = {"Content-Type": "application/json"}
        if login:
            headers["Authorization"] = "Basic " + base64.b64encode(f"user{self.number}:pw".encode()).decode()
        elif self.token:
            headers["X-AUTH-TOKEN"] = self.token
        creates = method == "POST" and not login
        connection = http.client.HTTPConnection("127.0.0.1", self.stack.port, timeout=self.timeout,
                                                source_address=(self.address, 0))
        started = time.monotonic()
        try:
            connection.request(method, f"/api/v3{path}", json.dumps(body) if body is not None else None, headers)
            response = connection.getresponse()
            raw = response.read()
        except (ConnectionError, http.client.HTTPException, OSError) as error:
            if isinstance(error, TimeoutError):
                self.record.problem(f"user{self.number}: {method} {path} unanswered after {self.timeout} s")
            else:
                self.record.event(f"user{self.number}: {method} {path}: {type(error).__name__}")
                with self.record.lock:
                    self.record.connection_errors += 1
            if creates:
                self.unanswered += 1
                self.last_lost = time.monotonic()
            return None
        finally:
            connection.close()
        with self.record.lock:
            self.record.answers[response.status] = self.record.answers.get(response.status, 0) + 1
            self.record.slowest = max(self.record.slowest, time.monotonic() - started)
        self.record.event(f"user{self.number}: {method} {path}: {response.status} {raw[:200]!r}")
        try:
            answer = json.loads(raw)
        except ValueError:
            self.record.problem(f"user{self.number}: {method} {path}: {response.status}, not JSON: {raw[:200]!r}")
            return None
        if response.status not in STATUSES:
            self.record.problem(f"user{self.number}: {method} {path}: {response.status} {answer}")
        if creates and response.status == 503 and isinstance(answer, dict) and "error" in answer:
            self.last_lost = time.monotonic()  # not vmpooler's bare 503 of an empty pool: nothing ran
        return response.status, answer

    def give_back(self, path: str) -> None:
        """DELETE until 200 (or 404: gone already), trying a minute: only then does it hold nothing
        (a problem recorded otherwise)."""
        given_up = time.monotonic() + 60
        while time.monotonic() < given_up:
            answer = self.send("DELETE", path)
            if answer and answer[0] in (200, 404):
                return
            time.sleep(0.3)
        self.record.problem(f"user{self.number}: DELETE {path} never answered 200")


class Runner(Caller, Protocol):
    def run(self) -> None:
        """Call the stack until the test stops it."""


def run_callers(stack: Stack, callers: Sequence[Runner], stopping: threading.Event,
                faults: Callable[[Faults], None], join_seconds: float,
                settled: Callable[[], None] = lambda: None) -> tuple[Faults, dict[str, str]]:
    """Start ``stack`` and let its pools fill, run each caller in a thread while ``faults`` does
    its faults, then stop the callers (each ends what it holds), call ``settled()`` (checks once
    they are done), wait for the pools to converge (lost checkouts and requests go back or fail
    at their 60 s deadline) and stop the stack. The faults done and ``left_running``."""
    done = Faults(stack)
    try:
        stack.start()
        wait_for(lambda: converged(stack) is None, 60, "the pools to fill", stack.log)
        threads = [threading.Thread(target=caller.run, daemon=True) for caller in callers]
        for thread in threads:
            thread.start()
        try:
            faults(done)
        finally:
            stopping.set()
            for thread in threads:
                thread.join(join_seconds)
        settled()
        wait_for(lambda: converged(stack) is None, 120, "the pools to converge",
                 lambda: f"{converged(stack)}\n{stack.log()}")
        return done, left_running(stack, callers)
    finally:
        stack.stop()
