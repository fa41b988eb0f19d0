"""A crowd of distinct callers at once against each layout of the local stack, over real HTTP.

64 users (of the dummy authenticator, or of the real slapd), each with a token of its own and 4
threads, each thread on a keep-alive connection of its own, interleave: a checkout
(``X-AUTH-TOKEN``), a read of its own VM, a change of its lifetime and tags, a read of another
user's VM, a change and a return of that VM refused (403), its token's status (at most its quota
of VMs), ``GET /token`` (Basic) listing the user's own token only, an
on-demand request opened, read, refused to another user and deleted, and the return of its
VM, while the scheduler's passes run. The layouts: gunicorn's workers (the default), one
worker (``WORKERS=1``) and one process (``WORKERS=0``, ``InProcessFront``: the HTTP loops on
threads beside the scheduler). Chalice keeps the request being served on the app object: an
app serving two of a process's requests at once would answer one with the other's data.

Checked on every answer: no 500; the answer names what its own request asked for (the pool
checked out, the VM read, the tag written by this thread); no VM handed to two callers, nor
twice; no user past ``max_running_vms_per_user``; no user's token in another's answer; the
token listing has exactly the caller's own token. At the end: no traceback in the stack's log;
the books balance (every pool back at its size with nothing running); in the stack's JSON log
lines, no request id (``correlation_id``) on lines naming two users, one request id per
checkout, and the checkouts logged are those the callers were answered, each for its user.

A second test pipelines each user's requests on one connection, ``GET /status`` of 1,000 pools
among them: each answer is the one to the request at its place in the stream."""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import random
import re
import socket
import threading
from collections import defaultdict
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml

from tests.auth.slapd import SlapdServer
from tests.local.stack import call, local_stack, wait_for

USERS = 64
THREADS_PER_USER = 4
CYCLES = 2
PER_USER = 3
"""``max_running_vms_per_user``: below the user's threads, so its quota is reached."""
POOLS = {"crowd-a": 60, "crowd-b": 60, "crowd-c": 60}
ONDEMAND_POOL = "crowd-od"
CROWD_CONFIG = (
    "config: {domain: example.com, check_loop_delay_min: 0.1, task_limit: 1000,\n"
    f"         max_running_vms_per_user: {PER_USER}, max_ondemand_requests_per_user: 10}}\n"
    "providers:\n  dummy: {provider_class: dummy, createvm_max_time: 0, boot_time: 0, destroyvm_max_time: 0}\n"
    "pools:\n" + "".join(f"  - {{name: {pool}, size: {size}, provider: dummy}}\n" for pool, size in POOLS.items())
    + f"  - {{name: {ONDEMAND_POOL}, size: 0, provider: dummy}}\n"
)


def basic(user: str, password: str | None = None) -> str:
    """Basic credentials of ``user``: the dummy authenticator takes any password but the name."""
    return "Basic " + base64.b64encode(f"{user}:{password or user + '-secret'}".encode()).decode()


@pytest.fixture(params=["dummy", "ldap"])
def directory(request: pytest.FixtureRequest) -> Iterator[tuple[str, dict[str, str]]]:
    """The ``auth:`` block and the crowd's users (name -> password): the dummy authenticator, or
    the session's real slapd with the users added to it (removed after)."""
    users = {f"crowd{index:02d}": f"crowd{index:02d}-Pass-{index}" for index in range(USERS)}
    if request.param == "dummy":
        yield "auth: {provider: dummy}\n", users
        return
    slapd: SlapdServer = request.getfixturevalue("slapd")
    dns = [slapd.add_user(user, password) for user, password in users.items()]
    try:
        yield yaml.safe_dump({"auth": {"provider": "ldap", "ldap": slapd.ldap_config()}}), users
    finally:
        for dn in dns:
            slapd.remove(dn)


class Books:
    """What the callers were handed, shared by every thread."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.holder: dict[str, str] = {}
        """Hostname -> the user holding it now."""
        self.ever: set[str] = set()
        self.checkouts: dict[str, str] = {}
        """Hostname -> the user it was handed to."""
        self.held: dict[str, int] = defaultdict(int)
        self.ondemand: dict[str, str] = {}
        """On-demand request id -> its user."""
        self.problems: list[str] = []
        self.tokens: dict[str, str] = {}
        """User -> its token."""

    def problem(self, text: str) -> None:
        with self.lock:
            self.problems.append(text)

    def handed(self, user: str, host: str) -> None:
        with self.lock:
            if host in self.ever:
                self.problems.append(f"{host} handed to {user}, handed before (to {self.holder.get(host)})")
            self.ever.add(host)
            self.checkouts[host] = user
            self.holder[host] = user
            self.held[user] += 1
            if self.held[user] > PER_USER:
                self.problems.append(f"{user} holds {self.held[user]} VMs, over its quota of {PER_USER}")

    def returning(self, user: str, host: str) -> None:
        with self.lock:
            self.holder.pop(host, None)
            self.held[user] -= 1

    def someone_elses(self, user: str, rng: random.Random) -> str | None:
        with self.lock:
            others = [host for host, holder in self.holder.items() if holder != user]
        return rng.choice(others) if others else None


class Caller:
    """One thread of one user: its own keep-alive connection."""

    def __init__(self, port: int, user: str, password: str, token: str, number: int, books: Books) -> None:
        self.connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        self.user, self.token, self.number, self.books = user, token, number, books
        self.credentials = basic(user, password)
        self.rng = random.Random(f"{user}-{number}")

    def request(self, method: str, path: str, body: Any = None, token: bool = False,
                auth: str | None = None) -> tuple[int, Any]:
        headers = {"Content-Type": "application/json"}
        if token:
            headers["X-AUTH-TOKEN"] = self.token
        if auth:
            headers["Authorization"] = auth
        data = json.dumps(body).encode() if body is not None else None
        self.connection.request(method, "/api/v3" + path, body=data, headers=headers)
        response = self.connection.getresponse()
        text = response.read()
        try:
            answer = json.loads(text)
        except ValueError:
            answer = text
        if response.status >= 500 and response.status != 503:
            self.books.problem(f"{self.user} {method} {path}: {response.status} {answer!r}")
        shown = text.decode(errors="replace")
        if self.token in shown and not path.startswith("/token/"):
            self.books.problem(f"{self.user} {method} {path}: its token in the answer")
        if any(token in shown for user, token in self.books.tokens.items() if user != self.user):
            self.books.problem(f"{self.user} {method} {path}: another user's token in the answer: {shown[:300]}")
        return response.status, answer

    def cycle(self, cycle: int) -> None:
        user, books = self.user, self.books
        pool = self.rng.choice(list(POOLS))
        status, body = self.request("POST", "/vm", {pool: "1"}, token=True)
        if status in (403, 503):  # over the user's quota (its other threads, its on-demand VMs), or the pool dry
            host = None
        elif status != 200 or set(body) - {"ok", "domain"} != {pool}:
            books.problem(f"{user} checked out {pool}: {status} {body}")
            return
        else:
            host = body[pool]["hostname"].split(".")[0]
            books.handed(user, host)
        marker = f"{user}-{self.number}-{cycle}"
        if host is not None:
            lifetime = self.rng.randint(2, 12)
            status, body = self.request("PUT", f"/vm/{host}", {"lifetime": lifetime, "tags": {"who": marker}},
                                        token=True)
            if status != 200:
                books.problem(f"{user} changed its {host}: {status} {body}")
            status, body = self.request("GET", f"/vm/{host}")
            details = body.get(host) if isinstance(body, dict) else None
            if (status != 200 or set(body) != {"ok", host} or details.get("template") != pool
                    or details.get("tags") != {"who": marker} or details.get("lifetime") != lifetime):
                books.problem(f"{user} read its {host} ({pool}, {marker}, {lifetime} h): {status} {body}")
        other = books.someone_elses(user, self.rng)
        if other is not None:
            status, body = self.request("GET", f"/vm/{other}")
            if status not in (200, 404) or (status == 200 and set(body) != {"ok", other}):
                books.problem(f"{user} read {other}: {status} {body}")
            status, body = self.request("PUT", f"/vm/{other}", {"lifetime": 1}, token=True)
            if status not in (403, 404):
                books.problem(f"{user} changed another's {other}: {status} {body}")
            status, body = self.request("DELETE", f"/vm/{other}", token=True)
            if status not in (403, 404):
                books.problem(f"{user} returned another's {other}: {status} {body}")
        status, body = self.request("GET", f"/token/{self.token}")
        running = body.get(self.token, {}).get("vms", {}).get("running") if isinstance(body, dict) else None
        if status != 200 or body[self.token].get("user") != user or not isinstance(running, list):
            books.problem(f"{user} read its token's status: {status} {body}")
        elif len(running) > PER_USER:  # its checkouts and its on-demand requests' VMs
            books.problem(f"{user}'s token holds {len(running)} VMs, over its quota of {PER_USER}: {running}")
        status, body = self.request("GET", "/token", auth=self.credentials)
        own = hashlib.sha256(self.token.encode()).hexdigest()[:16]
        if status != 200 or set(body) != {"ok", own}:
            books.problem(f"{user} listed its tokens (its own: {own}): {status} {body}")
        status, body = self.request("POST", "/ondemandvm", {ONDEMAND_POOL: "1"}, token=True)
        if status == 201:
            request_id = body["request_id"]
            with books.lock:
                books.ondemand[request_id] = user
                others = [rid for rid, owner in books.ondemand.items() if owner != user]
            status, body = self.request("GET", f"/ondemandvm/{request_id}", token=True)
            if status not in (200, 202) or body.get("request_id") != request_id:
                books.problem(f"{user} read its on-demand {request_id}: {status} {body}")
            if others:
                theirs = self.rng.choice(others)
                status, body = self.request("DELETE", f"/ondemandvm/{theirs}", token=True)
                if status not in (403, 404):
                    books.problem(f"{user} deleted another's on-demand {theirs}: {status} {body}")
            status, body = self.request("DELETE", f"/ondemandvm/{request_id}", token=True)
            if status != 200:
                books.problem(f"{user} deleted its on-demand {request_id}: {status} {body}")
        elif status != 403:  # 403: the user's other threads hold its requests
            books.problem(f"{user} opened an on-demand request: {status} {body}")
        if host is not None:
            books.returning(user, host)
            status, body = self.request("DELETE", f"/vm/{host}", token=True)
            if status != 200:
                books.problem(f"{user} returned its {host}: {status} {body}")

    def run(self) -> None:
        try:
            for cycle in range(CYCLES):
                self.cycle(cycle)
        except Exception as error:  # noqa: BLE001 - reported to the test, which fails on it
            self.books.problem(f"{self.user}/{self.number}: {error!r}")
        finally:
            self.connection.close()


LAYOUTS = [pytest.param(2, id="workers"),
           # The one-worker layout runs the default layout's code with one worker fewer: an audit
           # run covers it, `make test` keeps the two layouts whose request paths differ.
           pytest.param(1, id="one-worker", marks=pytest.mark.audit),
           pytest.param(0, id="one-process")]
"""The local stack's layouts (``WORKERS``) each crowd runs against."""

@pytest.mark.slow
@pytest.mark.parametrize("workers", LAYOUTS)
def test_a_crowd_of_users_each_get_their_own_answers(
        tmp_path: Path, workers: int, directory: tuple[str, dict[str, str]]) -> None:
    auth, passwords = directory
    with local_stack(tmp_path, CROWD_CONFIG + auth, workers=workers, interval=1,
                     env={"POWERTOOLS_LOG_LEVEL": "INFO"}) as stack:
        def full() -> bool:
            pools = call("GET", f"{stack.api}/status?view=pools")[1]["pools"]
            return all(pools[pool]["ready"] == size and pools[pool]["running"] == 0 for pool, size in POOLS.items())

        wait_for(full, 60, "the pools to fill", stack.log)
        tokens = {}
        for user, password in passwords.items():
            status, body = call("POST", f"{stack.api}/token", headers={"Authorization": basic(user, password)})
            assert status == 200, body
            tokens[user] = body["token"]
        books = Books()
        books.tokens = tokens
        callers = [Caller(stack.port, user, password, tokens[user], number, books)
                   for user, password in passwords.items() for number in range(THREADS_PER_USER)]
        threads = [threading.Thread(target=caller.run, daemon=True) for caller in callers]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(300)
        assert not any(thread.is_alive() for thread in threads), "callers still running after 300 s"
        assert books.problems == [], books.problems[:8]
        wait_for(full, 60, "every pool back at its size, nothing running", stack.log)
        log = stack.log()
    assert "Traceback" not in log, log[-3000:]
    assert log_problems(log, books) == [], log_problems(log, books)[:8]


LOGGED_USER = re.compile(r"LDAP login accepted for '([^']*)'")


def log_problems(log: str, books: Books) -> list[str]:
    """What the stack's JSON lines say that no request's own lines may: a correlation id (the
    request's id) on lines naming two users, a checkout logged under a request id another
    checkout's line has, or checkouts logged other than those the callers were answered."""
    users: dict[str, set[str]] = defaultdict(set)
    checkout_ids: list[str] = []
    logged: dict[str, str] = {}
    for line in log.splitlines():
        if not line.startswith("{"):
            continue
        record = json.loads(line)
        request_id = record.get("correlation_id")
        named = record.get("user") or next(iter(LOGGED_USER.findall(str(record.get("message")))), None)
        if request_id and named:
            users[request_id].add(named)
        if record.get("message") == "VM checked out":
            checkout_ids.append(str(request_id))
            logged[str(record.get("hostname")).split(".")[0]] = str(record.get("user"))
    problems = [f"request {request_id} logged as {sorted(names)}" for request_id, names in users.items()
                if len(names) > 1]
    if len(set(checkout_ids)) != len(checkout_ids) or "None" in checkout_ids:
        problems.append(f"{len(checkout_ids)} checkouts logged under {len(set(checkout_ids))} request ids")
    if logged != books.checkouts:
        wrong = {host: (user, books.checkouts.get(host)) for host, user in logged.items()
                 if books.checkouts.get(host) != user}
        problems.append(f"checkouts logged {len(logged)}, answered {len(books.checkouts)}; differing: {wrong}")
    return problems


MANY_POOLS = 1000
PIPELINE_USERS = 12
ROUNDS = 3
BIG_CONFIG = (
    "config: {domain: example.com, check_loop_delay_min: 0.1, task_limit: 1000}\n"
    "auth: {provider: dummy}\n"
    "providers:\n  dummy: {provider_class: dummy, createvm_max_time: 0, boot_time: 0, destroyvm_max_time: 0}\n"
    "pools:\n  - {name: piped, size: 40, provider: dummy}\n"
    + "".join(f"  - {{name: quiet-{index:04d}, size: 0, provider: dummy}}\n" for index in range(MANY_POOLS - 1))
)


def http_request(method: str, path: str, headers: dict[str, str], body: bytes = b"") -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", f"Content-Length: {len(body)}",
             *(f"{name}: {value}" for name, value in headers.items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def read_answers(connection: socket.socket, count: int) -> list[tuple[int, Any]]:
    """``count`` answers read in order from one connection (each framed by its Content-Length)."""
    reader = connection.makefile("rb")
    answers = []
    for _ in range(count):
        status_line = reader.readline()
        assert status_line.startswith(b"HTTP/1.1 "), status_line
        length = 0
        while (line := reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        body = reader.read(length)
        answers.append((int(status_line.split()[1]), json.loads(body)))
    return answers


class PipelinedUser:
    """One user pipelining its requests, large answers among small ones, on one connection."""

    def __init__(self, port: int, user: str, token: str) -> None:
        self.connection = socket.create_connection(("127.0.0.1", port), timeout=120)
        self.user, self.token = user, token
        self.hosts: list[str] = []

    def round(self, number: int, problems: list[str]) -> None:
        user, token = self.user, self.token
        own = hashlib.sha256(token.encode()).hexdigest()[:16]
        marker = f"{user}-{number}"
        expected: list[Any] = []
        stream = b""

        def ask(method: str, path: str, check: Any, headers: dict[str, str] | None = None, body: Any = None) -> None:
            nonlocal stream
            data = json.dumps(body).encode() if body is not None else b""
            stream += http_request(method, path, headers or {}, data)
            expected.append((f"{method} {path}", check))

        ask("GET", "/api/v3/status", lambda s, b: s == 200 and set(b) >= {"status", "pools"}
            and len(b["pools"]) == MANY_POOLS)
        ask("POST", "/api/v3/vm/piped",
            lambda s, b: s == 503 or (s == 200 and set(b) - {"domain"} == {"ok", "piped"}), {"X-AUTH-TOKEN": token})
        ask("GET", "/api/v3/token", lambda s, b: s == 200 and set(b) == {"ok", own}, {"Authorization": basic(user)})
        ask("GET", f"/api/v3/token/{token}", lambda s, b: s == 200 and b[token]["user"] == user
            and set(b[token]["vms"]["running"]) == set(self.hosts))
        for host in self.hosts:
            ask("PUT", f"/api/v3/vm/{host}", lambda s, b: s == 200, {"X-AUTH-TOKEN": token}, {"tags": {"who": marker}})
            ask("GET", f"/api/v3/vm/{host}", lambda s, b, host=host: s == 200 and set(b) == {"ok", host}
                and b[host]["tags"] == {"who": marker})
            ask("GET", "/api/v3/summary", lambda s, b: s == 200 and "daily" in b)
        ask("GET", "/api/v3/status?view=pools", lambda s, b: s == 200 and set(b) == {"status", "pools"})
        self.connection.sendall(stream)
        for (what, check), (status, body) in zip(expected, read_answers(self.connection, len(expected)), strict=True):
            if not check(status, body):
                shown = json.dumps(body)[:300]
                problems.append(f"{user} round {number}: {what} answered {status} {shown}")
            elif what == "POST /api/v3/vm/piped" and status == 200:
                self.hosts.append(body["piped"]["hostname"].split(".")[0])


@pytest.mark.slow
@pytest.mark.parametrize("workers", LAYOUTS)
def test_pipelined_requests_of_many_users_among_large_answers_are_answered_in_order(
        tmp_path: Path, workers: int) -> None:
    """Each user pipelines on one connection, in one write: ``GET /status`` of 1,000 pools, a
    checkout, its token listing (Basic) and status, a change and a read of each VM it holds, and
    more feeds, while the other users do the same. Each answer is the one to the request at its
    place in the stream, for its user."""
    with local_stack(tmp_path, BIG_CONFIG, workers=workers, interval=5) as stack:
        wait_for(lambda: call("GET", f"{stack.api}/status?view=pools")[1]["pools"]["piped"]["ready"] == 40,
                 90, "the pool to fill", stack.log)
        users = [f"piper{index}" for index in range(PIPELINE_USERS)]
        tokens = {}
        for user in users:
            status, body = call("POST", f"{stack.api}/token", headers={"Authorization": basic(user)})
            assert status == 200, body
            tokens[user] = body["token"]
        pipers = [PipelinedUser(stack.port, user, tokens[user]) for user in users]
        problems: list[str] = []

        def run(piper: PipelinedUser) -> None:
            try:
                for number in range(ROUNDS):
                    piper.round(number, problems)
            except Exception as error:  # noqa: BLE001 - reported to the test, which fails on it
                problems.append(f"{piper.user}: {error!r}")

        threads = [threading.Thread(target=run, args=(piper,), daemon=True) for piper in pipers]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(300)
        assert not any(thread.is_alive() for thread in threads), "pipelining users still waiting after 300 s"
        for piper in pipers:
            piper.connection.close()
        assert problems == [], problems[:8]
        held = [host for piper in pipers for host in piper.hosts]
        assert len(held) == len(set(held)), "a VM handed to two users"
        log = stack.log()
    assert "Traceback" not in log, log[-3000:]
