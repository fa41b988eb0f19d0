"""Many distinct identities at once through the API function itself (the in-process gateway hands
``app.app`` the proxy event API Gateway sends, each caller on its own thread: the service's app
serving several requests at once, as the local front's loops have it, and one after another on a
thread, as a warm Lambda reuses its process for the next caller), while passes refill the pools.

The callers: token users of the ``:auth:`` provider (LDAP on the real slapd, or ``dummy``), some
users as two callers on two tokens of their own and under two spellings of one name, two LDAP
users whose names fold alike only for failed logins (``straße`` and ``strasse``: two users, two
quotas); anonymous callers, each from an address of its own; callers with a made-up token. They
check out, tag, extend and return VMs, read their tokens' status and list them, make a new token
and delete the old one, open, read and cancel on-demand requests, read the shared feeds, and try
the same on what is another's (its VM, its token, its user's token list, its on-demand request).

Checked on every answer: an expected status (never a 500); no other identity's token in it, nor
another user's on-demand request id unless the request named it; a checkout answers for the pools
asked; no VM handed to two callers at once, no owner holding more than ``max_running_vms_per_user``;
a token's status names its own user and only VMs handed to that user; ``GET /token`` lists only
the user's tokens; nothing another's changed, returned or deleted with a 200. Checked on every log
line written while a request runs: the correlation id of that request alone, a ``user`` field
naming its own caller, and no key of a request left on the logger for the next one. Once the
callers stopped: each live token's status and each user's list as Redis has them.

The long run is an audit (``-m audit``: ``VMPOOL_IDENTITY_SWEEP_CALLERS``, default 150, and
``VMPOOL_IDENTITY_SWEEP_STEPS``, default 40); ``make test`` runs a small one with ``dummy`` auth."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import random
import threading
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import pytest
import redis

from chalicelib.auth.base import canonical_user
from chalicelib.observability import logger
from local.redis_server import RedisServer
from tests.auth.slapd import SlapdServer
from tests.auth_api.documents import OTHER_POOL, POOL, document
from tests.harness import Harness, HarnessFactory, basic

MAX_VMS = 3
MAX_TOKENS = 3
TARGETS = [POOL, OTHER_POOL, f"{POOL}+{OTHER_POOL}", f"{POOL}+{POOL}"]
STATUSES = {200, 201, 202, 400, 401, 403, 404, 409, 429, 503}
PROCESS_LINES = ("auth provider 'dummy' is for development only",)
"""Lines about the process, not a request: they carry no request's id (the dummy
authenticator's warning, written when the first request to need it builds it)."""


def token_id(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()[:16]


@dataclass
class Ledger:
    """What the callers were handed and made, as they know it."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    problems: list[str] = field(default_factory=list)
    held: dict[str, tuple[str, str]] = field(default_factory=dict)
    """Host -> (caller, owner) while its holder holds it."""
    handed: defaultdict[str, set[str]] = field(default_factory=lambda: defaultdict(set))
    """Owner -> every VM it was handed."""
    secrets: dict[str, str] = field(default_factory=dict)
    """Every token made -> its owner (canonical user)."""
    ids: defaultdict[str, set[str]] = field(default_factory=lambda: defaultdict(set))
    """Owner -> the ids of every token made for it."""
    logging_in: defaultdict[str, int] = field(default_factory=lambda: defaultdict(int))
    """Owner -> its callers' logins under way (a token made, not yet recorded above)."""
    requests: dict[str, str] = field(default_factory=dict)
    """On-demand request id -> its owner."""
    answers: defaultdict[int, int] = field(default_factory=lambda: defaultdict(int))

    def problem(self, text: str) -> None:
        with self.lock:
            self.problems.append(text)


class LogWatch(logging.Handler):
    """Every log line of the service, checked against the request running on the thread that
    writes it (the gateway calls the app inline, on the caller's thread)."""

    def __init__(self, ledger: Ledger) -> None:
        super().__init__(logging.DEBUG)
        self.ledger = ledger
        self.running = threading.local()
        self.seen: dict[str, str] = {}
        """Correlation id -> the caller whose request wrote it."""
        self.lines = 0

    def start(self, caller: str, user: str) -> None:
        self.running.request = (caller, user, set())

    def finish(self) -> None:
        caller, _, ids = self.running.request
        self.running.request = None
        left = {key: value for key, value in logger.thread_safe_get_current_keys().items() if value is not None}
        if left:  # the next request on this thread (a warm Lambda's next invocation) would log with them
            self.ledger.problem(f"{caller}: keys left on the logger after its request: {left}")
        if len(ids) > 1:
            self.ledger.problem(f"{caller}: one request logged under correlation ids {ids}")

    def emit(self, record: logging.LogRecord) -> None:
        request = getattr(self.running, "request", None)
        if request is None:  # a pass of the refill thread
            return
        caller, user, ids = request
        line = json.loads(logger.registered_formatter.format(record))
        self.lines += 1
        correlation = line.get("correlation_id")
        if not correlation and str(line.get("message")).startswith(PROCESS_LINES):
            return  # about the process, logged by whichever request built what it is about
        if not correlation:
            self.ledger.problem(f"{caller}: a line without its request's correlation id: {line}")
            return
        ids.add(correlation)
        with self.ledger.lock:
            writer = self.seen.setdefault(correlation, caller)
        if writer != caller:
            self.ledger.problem(f"{caller}: a line under {writer}'s correlation id: {line}")
        named = line.get("user")
        if named is not None and named != user:
            self.ledger.problem(f"{caller} ({user or 'anonymous'}): a line naming user {named}: {line}")


class Caller:
    """One identity: a user's token (``login`` names the user as it types it), an anonymous
    address, or a made-up token."""

    def __init__(self, name: str, api: Harness, ledger: Ledger, watch: LogWatch, seed: int, *, address: str,
                 login: str = "", password: str = "", made_up: str = "") -> None:
        self.name, self.api, self.ledger, self.watch = name, api, ledger, watch
        self.address, self.login, self.password = address, login, password
        self.user = canonical_user(login) if login else ""
        self.random = random.Random(seed)
        self.token = made_up
        self.made_up = bool(made_up)
        self.mine: list[str] = []

    @property
    def owner(self) -> str:
        return self.user or f"addr:{self.address}"

    def send(self, method: str, path: str, body: Any = None, token: str | None = None,
             credentials: bool = False, headers: dict[str, str] | None = None) -> tuple[int, Any]:
        sent = dict(headers or {})
        token = self.token if token is None else token
        if token:
            sent["X-AUTH-TOKEN"] = token
        if credentials:
            sent.update(basic(self.login, self.password))
        self.watch.start(self.name, self.user)
        try:
            reply = self.api.request(method, f"/api/v3{path}", body, sent, client_ip=self.address)
        finally:
            self.watch.finish()
        with self.ledger.lock:
            self.ledger.answers[reply.status] += 1
            foreign = [owner for secret, owner in self.ledger.secrets.items()
                       if owner != self.owner and secret.encode() in reply.raw]
            requests = [owner for request, owner in self.ledger.requests.items()
                        if owner != self.owner and request not in path and request.encode() in reply.raw]
        if foreign or requests:
            self.ledger.problem(f"{self.name}: {method} {path} answered with tokens of {foreign} or requests of "
                                f"{requests}: {reply.raw[:200]!r}")
        if reply.status not in STATUSES:
            self.ledger.problem(f"{self.name}: {method} {path}: {reply.status} {reply.raw[:300]!r}")
        return reply.status, reply.json

    def run(self, steps: int) -> None:
        try:
            # A login is refused (429) while the address's or the name's logins in flight fill its
            # limit (each user's two callers log in at once): asked again, as the answer says.
            if self.login and not any(self.new_token() for _ in range(20)):
                self.ledger.problem(f"{self.name}: could not log in")
                return
            choices: list[tuple[Callable[[], None], int]] = [
                (self.checkout, 30), (self.change_own, 12), (self.give_back, 15), (self.meddle, 15),
                (self.read_feed, 5), (self.read_tokens, 8 if self.login else 0),
                (self.rotate_token, 3 if self.login else 0), (self.ondemand, 6 if self.login else 0)]
            for _ in range(steps):
                self.random.choices([step for step, _ in choices], [weight for _, weight in choices])[0]()
            while self.mine:
                self.give_back()
        except Exception as error:  # noqa: BLE001 - reported as a failure of the test
            self.ledger.problem(f"{self.name} crashed: {type(error).__name__}: {error}")

    def new_token(self) -> bool:
        with self.ledger.lock:
            self.ledger.logging_in[self.owner] += 1
        try:
            status, answer = self.send("POST", "/token", token="", credentials=True)
            with self.ledger.lock:
                if status == 200:
                    self.ledger.secrets[answer["token"]] = self.owner
                    self.ledger.ids[self.owner].add(token_id(answer["token"]))
        finally:
            with self.ledger.lock:
                self.ledger.logging_in[self.owner] -= 1
        if status != 200:
            return False
        self.token = answer["token"]
        return True

    def checkout(self) -> None:
        target = self.random.choice(TARGETS)
        status, answer = self.send("POST", f"/vm/{target}")
        if self.made_up:
            if status not in (401, 429):
                self.ledger.problem(f"{self.name}: a checkout with a made-up token: {status} {answer}")
            return
        if status != 200:
            if status not in (403, 429, 503):
                self.ledger.problem(f"{self.name}: POST /vm/{target}: {status} {answer}")
            return
        if set(answer) - {"ok", "domain"} != set(target.split("+")):
            self.ledger.problem(f"{self.name}: POST /vm/{target} answered for {sorted(answer)}")
        hosts = [str(host).split(".")[0] for got in answer.values() if isinstance(got, dict)
                 for host in (got["hostname"] if isinstance(got["hostname"], list) else [got["hostname"]])]
        with self.ledger.lock:
            for host in hosts:
                if host in self.ledger.held:
                    self.ledger.problems.append(f"{self.name} was handed {host}, held by {self.ledger.held[host]}")
                self.ledger.held[host] = (self.name, self.owner)
                self.ledger.handed[self.owner].add(host)
            holding = sum(1 for _, owner in self.ledger.held.values() if owner == self.owner)
        if holding > MAX_VMS:
            self.ledger.problem(f"{self.owner} holds {holding} VMs (at most {MAX_VMS})")
        self.mine += hosts

    def change_own(self) -> None:
        if not self.mine:
            return
        host = self.random.choice(self.mine)
        # Tag values are ASCII (vmpooler's rule, docs/compatibility.md): straße's caller spells its own.
        change: dict[str, Any] = {"tags": {"holder": self.name.encode("ascii", "replace").decode()}}
        if self.login:
            change["lifetime"] = self.random.choice((1, 2, 3))
        status, answer = self.send("PUT", f"/vm/{host}", change)
        if status not in (200, 429):
            self.ledger.problem(f"{self.name}: PUT of its own {host}: {status} {answer}")
        status, answer = self.send("GET", f"/vm/{host}")
        if status == 200 and (set(answer) != {"ok", host} or answer[host]["state"] != "running"):
            self.ledger.problem(f"{self.name}: GET of its own {host}: {answer}")

    def give_back(self) -> None:
        if not self.mine:
            return
        host = self.mine.pop(self.random.randrange(len(self.mine)))
        with self.ledger.lock:
            self.ledger.held.pop(host, None)
        status, answer = self.send("DELETE", f"/vm/{host}")
        if status == 429:
            self.send("DELETE", f"/vm/{host}")  # the holder's other budget may refuse once; the pass reaps it
        elif status != 200:
            self.ledger.problem(f"{self.name}: DELETE of its own {host}: {status} {answer}")

    def meddle(self) -> None:
        """Another owner's VM, token, token list and on-demand request, with this identity."""
        with self.ledger.lock:
            vms = [(host, owner) for host, (caller, owner) in self.ledger.held.items()
                   if owner != self.owner and not owner.startswith("addr:")]
            tokens = [(token, owner) for token, owner in self.ledger.secrets.items() if owner != self.owner]
            requests = [(request, owner) for request, owner in self.ledger.requests.items() if owner != self.owner]
        if vms:
            host, owner = self.random.choice(vms)
            for method, body in (("PUT", {"lifetime": 3}), ("DELETE", None),
                                 ("POST", None)):
                path = f"/vm/{host}/snapshot" if method == "POST" else f"/vm/{host}"
                status, answer = self.send(method, path, body)
                if status in (200, 202):
                    self.ledger.problem(f"{self.name} ({self.owner}): {method} {path} of {owner}'s VM: {status}")
        if tokens and self.login:
            token, owner = self.random.choice(tokens)
            for method in ("DELETE", "GET"):
                status, answer = self.send(method, f"/token/{token}", token="", credentials=True)
                if status == 200:
                    self.ledger.problem(f"{self.name} ({self.owner}): {method} /token of {owner}'s token: {answer}")
            other = owner if not owner.startswith("addr:") else "alice"
            status, answer = self.send("GET", f"/token?user={other}", token="", credentials=True)
            if status == 200:
                self.ledger.problem(f"{self.name} ({self.owner}): {other}'s tokens listed: {answer}")
        if requests:
            request, owner = self.random.choice(requests)
            # A drawn id is the request's secret: shown to a caller sending no token (vmfloaty
            # polls so), never to another user's token, never deleted but by its owner.
            for method in ("GET", "DELETE") if self.token else ("DELETE",):
                status, answer = self.send(method, f"/ondemandvm/{request}")
                if status in (200, 202):
                    self.ledger.problem(f"{self.name} ({self.owner}): {method} of {owner}'s request: {status}")

    def read_feed(self) -> None:
        path, shaped = self.random.choice([("/status", lambda answer: {"status", "pools"} <= set(answer)),
                                           ("/summary/clone", lambda answer: set(answer) == {"clone", "daily"})])
        status, answer = self.send("GET", path, headers={"Cache-Control": "max-age=5"})
        if status == 200 and not shaped(answer):
            self.ledger.problem(f"{self.name}: GET {path} answered {sorted(answer)[:6]}")

    def read_tokens(self) -> None:
        status, answer = self.send("GET", f"/token/{self.token}", token="")
        if status != 200 or answer[self.token]["user"] != self.user:
            self.ledger.problem(f"{self.name}: its token's status: {status} {answer}")
        else:
            with self.ledger.lock:
                foreign = set(answer[self.token]["vms"]["running"]) - self.ledger.handed[self.owner]
            if foreign:
                self.ledger.problem(f"{self.name}: its token's status lists VMs not {self.user}'s: {foreign}")
        status, answer = self.send("GET", "/token", token="", credentials=True)
        with self.ledger.lock:
            foreign = set(answer) - {"ok"} - self.ledger.ids[self.owner] if status == 200 else set()
            # The user's other caller's login may have made a token it has not been told of yet.
            foreign = foreign if len(foreign) > self.ledger.logging_in[self.owner] else set()
        if status != 200 or foreign or len(answer) - 1 > MAX_TOKENS:
            self.ledger.problem(f"{self.name}: GET /token: {status}, not {self.user}'s: {foreign}")

    def rotate_token(self) -> None:
        old = self.token
        if not self.new_token():  # at the limit: this user's other caller holds the rest
            return
        status, answer = self.send("DELETE", f"/token/{old}", token="", credentials=True)
        if status != 200:
            self.ledger.problem(f"{self.name}: DELETE of its old token: {status} {answer}")

    def ondemand(self) -> None:
        status, answer = self.send("POST", "/ondemandvm", {self.random.choice([POOL, OTHER_POOL]): 1})
        if status != 201:
            if status not in (403, 429, 503):
                self.ledger.problem(f"{self.name}: POST /ondemandvm: {status} {answer}")
            return
        request = answer["request_id"]
        with self.ledger.lock:
            self.ledger.requests[request] = self.owner
        status, shown = self.send("GET", f"/ondemandvm/{request}")
        if status not in (200, 202, 429) or (status != 429 and shown["request_id"] != request):
            self.ledger.problem(f"{self.name}: GET of its request: {status} {shown}")
        status, answer = self.send("DELETE", f"/ondemandvm/{request}")
        if status != 200:
            self.ledger.problem(f"{self.name}: DELETE of its request: {status} {answer}")
        with self.ledger.lock:
            self.ledger.requests.pop(request, None)


@pytest.fixture
def watched() -> Iterator[tuple[Ledger, LogWatch]]:
    ledger = Ledger()
    watch = LogWatch(ledger)
    logger.addHandler(watch)
    yield ledger, watch
    logger.removeHandler(watch)


@contextlib.contextmanager
def directory_users(auth: str, slapd: SlapdServer, count: int) -> Iterator[list[tuple[str, str]]]:
    """(login, password) of ``count`` users: entries added to slapd (removed after) for LDAP,
    made-up names for dummy (every other one a spelling of the one before: one user)."""
    if auth == "dummy":
        yield [(f"User{n // 2:03d}" if n % 2 else f"user{n // 2:03d}", f"pw-{n // 2}") for n in range(count)]
        return
    users = [(f"sweep{n:03d}", f"sweep-{n}-pw") for n in range(count - 2)]
    dns = [slapd.add_user(user, password) for user, password in users]
    try:
        # Two users whose names fold alike for failed logins only: two owners, two quotas.
        yield users + [(name, slapd.password(name)) for name in ("straße", "strasse")]
    finally:
        for dn in dns:
            slapd.remove(dn)


UNLIMITED = {"limit": 10_000, "period": 60}
"""Rates counted per user and address, past which nobody here goes."""


def refill(api: Harness, stopping: threading.Event) -> None:
    """Passes over the pools, a second of the fake clock apart, until ``stopping``."""
    while not stopping.is_set():
        api.clock.advance(1)
        for pool in (POOL, OTHER_POOL):
            api.reconcile(pool)
        stopping.wait(0.05)


def sweep(make_api: HarnessFactory, redis_server: RedisServer, auth_section: dict[str, Any], auth: str,
          slapd: SlapdServer, ledger: Ledger, watch: LogWatch, callers: int, steps: int) -> None:
    # One service for every caller, as one process serves its threads: its pool of Redis
    # connections (redis-py's 100 by default) sized for as many callers at once.
    client = redis.Redis(port=redis_server.port, decode_responses=True, max_connections=callers + 50)
    api = make_api(document(auth_section, config={
        "max_running_vms_per_user": MAX_VMS, "max_tokens_per_user": MAX_TOKENS, "rate_limiting_enabled": True,
        "max_ondemand_requests_per_user": 2}, pools=[
        {"name": POOL, "size": max(20, callers // 3), "provider": "dummy", "template": "t/debian"},
        {"name": OTHER_POOL, "size": max(10, callers // 6), "provider": "dummy", "template": "t/ubuntu"}],
        rate_limits=dict.fromkeys(("global_per_ip", "authenticated", "vm_creation", "vm_deletion"), UNLIMITED)),
        client)
    api.fill()
    rng = random.Random(int(os.environ.get("VMPOOL_IDENTITY_SWEEP_SEED", "7")))
    with directory_users(auth, slapd, callers * 2 // 5) as logins:
        everyone = [Caller(f"{login}/{copy}", api, ledger, watch, rng.getrandbits(32),
                           address=f"10.1.{number // 250}.{number % 250 + 1}", login=login, password=password)
                    for number, (login, password) in enumerate(logins) for copy in range(1 + number % 2)]
        everyone += [Caller(f"anonymous{n}", api, ledger, watch, rng.getrandbits(32), address=f"198.51.100.{n + 1}")
                     for n in range(callers - len(everyone) - 2)]
        everyone += [Caller(f"made-up{n}", api, ledger, watch, rng.getrandbits(32), address="203.0.113.9",
                            made_up=f"{rng.getrandbits(128):032x}") for n in range(2)]
        stopping = threading.Event()
        threads = [threading.Thread(target=caller.run, args=(steps,)) for caller in everyone]
        refiller = threading.Thread(target=refill, args=(api, stopping))
        refiller.start()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(600)
        stopping.set()
        refiller.join(60)
        assert not any(thread.is_alive() for thread in threads), "a caller hung"
        views_match_redis(api, everyone, ledger)
    client.close()
    report = f"answers {dict(sorted(ledger.answers.items()))}, log lines {watch.lines}"
    print(report)
    assert not ledger.problems, "\n".join(ledger.problems[:30]) + f"\n{report}"
    assert ledger.answers[200] > callers * steps // 4, report


def views_match_redis(api: Harness, callers: list[Caller], ledger: Ledger) -> None:
    """The callers gave back what they held: each live token's status lists no VM, each user's
    ``GET /token`` exactly the tokens Redis files under the user."""
    keys = api.store.keys
    for caller in callers:
        if not caller.login:
            continue
        status, described = caller.send("GET", f"/token/{caller.token}", token="")
        if status != 200 or described[caller.token]["vms"]["running"]:
            ledger.problem(f"{caller.name}: its token's status once it gave all back: {status} {described}")
        status, listed = caller.send("GET", "/token", token="", credentials=True)
        filed = {token_hash[:16] for token_hash in api.client.smembers(keys.user_tokens(caller.user))}
        if status != 200 or set(listed) - {"ok"} != filed:
            ledger.problem(f"{caller.name}: GET /token listed {listed}, Redis files {sorted(filed)}")


def test_a_few_identities_at_once_see_only_their_own(make_api: HarnessFactory, redis_server: RedisServer,
                                                     slapd: SlapdServer, watched: tuple[Ledger, LogWatch]) -> None:
    sweep(make_api, redis_server, {"provider": "dummy"}, "dummy", slapd, *watched, callers=24, steps=12)


@pytest.mark.audit
@pytest.mark.parametrize("auth", ["ldap", "dummy"])
def test_many_identities_at_once_see_only_their_own(make_api: HarnessFactory, ldap_auth: Callable[..., Any],
                                                    redis_server: RedisServer, slapd: SlapdServer,
                                                    watched: tuple[Ledger, LogWatch], auth: str) -> None:
    section = ldap_auth() if auth == "ldap" else {"provider": "dummy"}
    sweep(make_api, redis_server, section, auth, slapd, *watched,
          callers=int(os.environ.get("VMPOOL_IDENTITY_SWEEP_CALLERS", "150")),
          steps=int(os.environ.get("VMPOOL_IDENTITY_SWEEP_STEPS", "40")))
