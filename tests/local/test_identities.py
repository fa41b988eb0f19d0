"""Many distinct identities at once against the running stack (`python -m local.run`, LDAP auth on
the real slapd, rate limits on), while an HTTP worker is SIGKILLed, redis-server, the scheduler and
slapd are SIGSTOPped and the scheduler is SIGKILLed with its children (docs/reliability.md, "Many
identities at once").

The callers: LDAP users, most of them on two tokens of their own (two callers each), which now and
then make a new token and delete the old one; anonymous callers, each from a loopback address of
its own and each sending forwarding headers naming other addresses (the local front trusts none);
callers with a deleted token or a made-up one. They check out single and multi-pool bodies and
aliases, tag and read their VMs, change lifetimes, return them, list and read their tokens, open
and cancel on-demand requests, read what vmpooler makes public (/status, /summary, another
caller's VM by name), and try the same on what is not theirs: another caller's VM, token or
on-demand request.

Checked on every answer: JSON with an expected status; no other identity's token in it, nor
another user's on-demand request id unless the request named it; an answer names what its own request asked
for (the pools of the checkout, the VM or token read); no VM handed to a second caller while its
first holds it; no user (across its tokens) or address past ``max_running_vms_per_user`` by the
VMs they were handed; a token's status names its own user and only VMs handed to that user;
``GET /token`` lists only tokens its user made; nothing of another user's changed or returned
with a 200, and a deleted or made-up token never a 200 where a token is needed. Once the callers
stopped, each caller's view against Redis (``views_match_redis``). Once they gave back what they
hold: the pools at their size, the provider holding exactly their VMs, every pass's invariants
(tests/harness.py ``assert_consistent``), and no VM left running that a caller was handed and
gave back.

A minute or two of wall time, so not in `make test` (marker ``audit``):
`.venv/bin/pytest -m audit -s tests/local/test_identities.py` (``VMPOOL_IDENTITIES_SECONDS``,
default 60; ``VMPOOL_IDENTITIES_SEED``)."""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import os
import random
import threading
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
import redis
import yaml

from chalicelib.clock import FakeClock
from chalicelib.config import parse
from chalicelib.store.keys import Keys
from tests.auth.slapd import SlapdServer
from tests.harness import Harness, assert_consistent
from tests.local.stack import wait_for
from tests.local.stack_audit import STATUSES, Faults, Record, Stack, converged, dummy_inventory, pause

KEYS = Keys()
SECONDS = float(os.environ.get("VMPOOL_IDENTITIES_SECONDS", "60"))
POOLS = {"alpha": 5, "beta": 4, "gamma": 3}
TARGETS = ["alpha", "beta", "gamma", "linux", "alpha+beta", "linux+gamma", "beta+beta", "windows+alpha",
           "linux+linux"]
MAX_VMS = 3
MAX_TOKENS = 3
USERS = 10
TWO_TOKEN_USERS = 6
ANONYMOUS = 8
ANYONE = ""
"""``Ledger.lost``'s owner of the anonymous callers' VMs (a VM records no address)."""
NO_ANSWER = -1
"""``Caller.send``'s status for a request that got no answer (its worker killed, say)."""


def stack_config(slapd: SlapdServer) -> str:
    ldap = slapd.ldap_config()
    ldap["service_account_hash"] = {"user_dn": slapd.service_dn, "password": slapd.service_password}
    return yaml.safe_dump({
        "config": {"domain": "example.com", "check_loop_delay_min": 0.5, "vm_lifetime": 1, "vm_lifetime_auth": 1,
                   "max_lifetime_upper_limit": 4, "max_running_vms_per_user": MAX_VMS,
                   "max_tokens_per_user": MAX_TOKENS, "max_ondemand_requests_per_user": 2,
                   "max_ondemand_requests": 20, "ondemand_request_ttl": 1, "rate_limiting_enabled": True},
        "rate_limits": {"global_per_ip": {"limit": 600, "period": 60}, "authenticated": {"limit": 1200, "period": 60},
                        "vm_creation": {"limit": 120, "period": 60}, "vm_deletion": {"limit": 240, "period": 60}},
        "auth": {"provider": "ldap", "ldap": ldap},
        "providers": {"dummy": {"provider_class": "dummy", "createvm_max_time": 0.5, "boot_time": 0.3,
                                "destroyvm_max_time": 0.3}},
        "pools": [{"name": name, "size": size, "provider": "dummy",
                   "alias": ["linux"] if name != "gamma" else ["windows"]} for name, size in POOLS.items()],
    })


def token_id(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()[:16]


@dataclass
class Holder:
    caller: str
    owner: str
    """The user, or for a VM checked out without a token the caller's address."""
    anonymous: bool
    returning: bool = False
    """Another caller's DELETE of it is under way, went unanswered or answered 503: it may be
    returned. Not counted against the owner's limit meanwhile; its holder still gives it back."""


class Ledger:
    """What each caller was handed and made, as the callers know it."""

    def __init__(self, record: Record) -> None:
        self.record = record
        self.lock = threading.Lock()
        self.held: dict[str, Holder] = {}
        """Host -> who was handed it, until its return is sent (or another may return it)."""
        self.handed: defaultdict[str, set[str]] = defaultdict(set)
        """Owner -> every VM it was ever handed."""
        self.tokens: defaultdict[str, set[str]] = defaultdict(set)
        """User -> the ids of every token a login answered for it."""
        self.secrets: dict[bytes, str] = {}
        """Every token a login answered -> its user: no answer to another identity may carry it."""
        self.unanswered_logins: defaultdict[str, int] = defaultdict(int)
        """User -> logins that got no answer or a 503: each may have made a token nobody was told of."""
        self.deleted: list[str] = []
        """Tokens deleted with a 200."""
        self.requests: dict[str, str] = {}
        """On-demand request id -> its user."""
        self.lost: defaultdict[str, int] = defaultdict(int)
        """User (or ``ANYONE`` for the anonymous callers) -> checkouts and on-demand requests whose
        answer never came: what they may run without knowing."""

    def hand(self, holder: Holder, hosts: list[str]) -> None:
        with self.lock:
            for host in hosts:
                if host in self.held:
                    self.record.problem(f"{holder.caller} was handed {host}, which {self.held[host].caller} holds")
                self.held[host] = holder
                self.handed[holder.owner].add(host)
            owned = [host for host, other in self.held.items() if other.owner == holder.owner and not other.returning]
        if len(owned) > MAX_VMS:
            story = "\n    ".join(self.record.events_about(owned)[-40:])
            self.record.problem(f"{holder.owner} holds {len(owned)} VMs (at most {MAX_VMS}): {holder.caller} got "
                                f"{hosts}:\n    {story}")

    def release(self, host: str) -> None:
        with self.lock:
            self.held.pop(host, None)

    def returning(self, host: str, maybe: bool) -> None:
        with self.lock:
            if host in self.held:
                self.held[host].returning = maybe

    def others(self, caller: str) -> list[tuple[str, Holder]]:
        with self.lock:
            return [(host, holder) for host, holder in self.held.items() if holder.caller != caller]


class Caller:
    """One identity: a user's token (``user``), an anonymous address, or a bad token."""

    def __init__(self, name: str, stack: Stack, ledger: Ledger, stopping: threading.Event, seed: float, *,
                 address: str, user: str | None = None, password: str | None = None, bad_token: str | None = None
                 ) -> None:
        self.name, self.stack, self.ledger, self.stopping = name, stack, ledger, stopping
        self.record = ledger.record
        self.address, self.user, self.password = address, user, password
        self.random = random.Random(seed)
        self.token = bad_token or ""
        self.mine: list[str] = []
        self.requests: list[str] = []
        self.age: str | None = None
        """The last answer's Age header (a shared dashboard feed's)."""

    @property
    def owner(self) -> str:
        return self.user or self.address

    def send(self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None,
             token: str | None = None, login: bool = False) -> tuple[int, Any]:
        sent = {"Content-Type": "application/json", **(headers or {})}
        token = self.token if token is None else token
        if token:
            sent["X-AUTH-TOKEN"] = token
        if login:
            sent["Authorization"] = "Basic " + base64.b64encode(f"{self.user}:{self.password}".encode()).decode()
        data = json.dumps(body).encode() if body is not None else b"" if method in ("POST", "PUT") else None
        connection = http.client.HTTPConnection("127.0.0.1", self.stack.port, timeout=20,
                                                source_address=(self.address, 0))
        try:
            connection.request(method, f"/api/v3{path}", data, sent)
            response = connection.getresponse()
            raw = response.read()
        except TimeoutError:
            self.record.problem(f"{self.name}: {method} {path} unanswered after 20 s")
            return NO_ANSWER, None
        except (ConnectionError, http.client.HTTPException, OSError):
            with self.record.lock:
                self.record.connection_errors += 1
            return NO_ANSWER, None
        finally:
            connection.close()
        self.age = response.getheader("Age")
        with self.record.lock:
            self.record.answers[response.status] = self.record.answers.get(response.status, 0) + 1
        self.record.event(f"{self.name} ({self.owner}) {method} {path} {response.status}")
        self.carries_nothing_of_others(method, path, raw)
        try:
            answer = json.loads(raw)
        except ValueError:
            self.record.problem(f"{self.name}: {method} {path}: {response.status}, not JSON: {raw[:200]!r}")
            return response.status, None
        if response.status not in STATUSES:
            self.record.problem(f"{self.name}: {method} {path}: {response.status} {str(answer)[:300]}")
        return response.status, answer

    def carries_nothing_of_others(self, method: str, path: str, raw: bytes) -> None:
        """No answer carries another identity's token, nor another user's on-demand request id
        unless the request named it (a GET or DELETE of it, refused)."""
        with self.ledger.lock:
            tokens = [owner for token, owner in self.ledger.secrets.items() if owner != self.owner and token in raw]
            requests = [(request, owner) for request, owner in self.ledger.requests.items()
                        if owner != self.owner and request not in path and request.encode() in raw]
        if tokens or requests:
            self.record.problem(f"{self.name} ({self.owner}): {method} {path} answered with a token of {tokens} "
                                f"or requests {requests}: {raw[:300]!r}")

    def look_around(self) -> None:
        """What vmpooler makes public: /status, /summary, another caller's VM by its name (its
        tags included); each answer about what was asked, with no one's token (``send``)."""
        for path in ("/status", "/summary"):
            status, answer = self.send("GET", path)
            if status == 200 and not (isinstance(answer, dict) and answer.get("ok", True) is not False):
                self.record.problem(f"{self.name}: GET {path} answered {str(answer)[:200]}")
        self.read_shared_feed()
        others = self.ledger.others(self.name)
        if others:
            host = self.random.choice(others)[0]
            status, answer = self.send("GET", f"/vm/{host}")
            if status == 200 and set(answer) != {"ok", host}:
                self.record.problem(f"{self.name}: GET /vm/{host} answered {sorted(answer)[:4]}")

    def read_shared_feed(self) -> None:
        """A dashboard's feed as the page asks it, accepting an answer up to a few seconds old
        (api/feed_cache.py): the feed asked for (a /status answer to /status, the clone
        summary to /summary/clone), never older than accepted (``Age``), workers killed and
        Redis stopped meanwhile."""
        path, max_age, shaped = self.random.choice([
            ("/status", 4, lambda answer: {"status", "pools", "queue"} <= set(answer)),
            ("/summary/clone", 30, lambda answer: set(answer) == {"clone", "daily"})])
        status, answer = self.send("GET", path, headers={"Cache-Control": f"max-age={max_age}"})
        if status != 200:
            return
        if not (isinstance(answer, dict) and shaped(answer)):
            self.record.problem(f"{self.name}: GET {path} (max-age={max_age}) answered another feed: "
                                f"{sorted(answer)[:6] if isinstance(answer, dict) else str(answer)[:100]}")
        if self.age is None or not self.age.isdigit() or int(self.age) > max_age:
            self.record.problem(f"{self.name}: GET {path} (max-age={max_age}) answered with Age {self.age}")

    def run(self) -> None:
        try:
            if self.user:
                while not self.stopping.is_set() and not self.log_in():
                    time.sleep(0.5)
            steps: list[tuple[Callable[[], None], int]] = [
                (self.checkout, 35), (self.change_own, 15), (self.give_back, 20), (self.meddle, 12),
                (self.read_tokens, 8 if self.user else 0), (self.new_token, 4 if self.user else 0),
                (self.ondemand, 6 if self.user else 0), (self.look_around, 5)]
            while not self.stopping.is_set():
                self.random.choices([step for step, _ in steps], [weight for _, weight in steps])[0]()
                time.sleep(self.random.uniform(0, 0.2))
        except Exception as error:  # noqa: BLE001 - reported as a failure of the test
            self.record.problem(f"{self.name} crashed: {type(error).__name__}: {error}")

    def log_in(self, revoke_unknown: bool = True) -> bool:
        """A new token. At max_tokens_per_user, ``revoke_unknown`` revokes a token whose login
        went unanswered (not while the user's other caller may be making one: not known yet)."""
        status, answer = self.send("POST", "/token", token="", login=True)
        if status == 200:
            with self.ledger.lock:
                self.ledger.tokens[self.owner].add(token_id(answer["token"]))
                self.ledger.secrets[answer["token"].encode()] = self.owner
            self.token = answer["token"]
            return True
        if status in (503, NO_ANSWER):
            with self.ledger.lock:
                self.ledger.unanswered_logins[self.owner] += 1
        if status == 429 and isinstance(answer, dict) and "failed" in str(answer.get("error")):
            # Every caller here sends its right password: only stalls and kills stand between.
            self.record.problem(f"{self.name} ({self.owner}): the right password refused as failed logins: {answer}")
        if status == 403 and revoke_unknown:  # a token whose login went unanswered, revoked by its id
            _, listed = self.send("GET", "/token", token="", login=True)
            with self.ledger.lock:
                unknown = [key for key in (listed or {}) if key != "ok" and key not in self.ledger.tokens[self.owner]]
            for tid in unknown[:1]:
                self.send("DELETE", f"/token/{tid}", token="", login=True)
        return False

    def checkout(self) -> None:
        target = self.random.choice(TARGETS)
        # The local front takes the socket's peer: forwarding headers buy no other address.
        forged = {} if self.user else {"X-Forwarded-For": f"10.{self.random.randrange(256)}.0.1",
                                       "X-Real-IP": "10.0.0.9", "Forwarded": "for=10.0.0.8"}
        status, answer = self.send("POST", f"/vm/{target}", headers=forged)
        if status == NO_ANSWER:
            self.answer_lost()
        if status != 200:
            return
        if set(answer) - {"ok", "domain"} != set(target.split("+")):
            self.record.problem(f"{self.name}: POST /vm/{target} answered for {sorted(answer)}")
        hosts = [host.split(".")[0] for name, got in answer.items() if isinstance(got, dict)
                 for host in (got["hostname"] if isinstance(got["hostname"], list) else [got["hostname"]])]
        self.record.event(f"{self.name} ({self.owner}) was handed {' '.join(hosts)}")
        self.ledger.hand(Holder(self.name, self.owner, not self.token), hosts)
        self.mine += hosts

    def answer_lost(self) -> None:
        with self.ledger.lock:
            self.ledger.lost[self.user if self.token else ANYONE] += 1

    def still_mine(self) -> list[str]:
        with self.ledger.lock:
            self.mine = [host for host in self.mine if getattr(self.ledger.held.get(host), "caller", "") == self.name]
        return self.mine

    def change_own(self) -> None:
        if not self.still_mine():
            return
        host = self.random.choice(self.mine)
        change: dict[str, Any] = {"tags": {"owner": self.name}}
        if self.token:
            change["lifetime"] = self.random.choice((1, 2, 3))
        status, answer = self.send("PUT", f"/vm/{host}", change)
        # 404: another caller who may (anyone for an anonymous VM, the user's other caller) returned it
        if status not in (200, 404, 429, 503, NO_ANSWER):
            self.record.problem(f"{self.name}: PUT of its own {host}: {status} {answer}")
        status, answer = self.send("GET", f"/vm/{host}")
        if status == 200:
            if set(answer) != {"ok", host}:
                self.record.problem(f"{self.name}: GET /vm/{host} answered {sorted(answer)[:4]}")
            elif host in self.still_mine() and answer[host]["tags"].get("owner") not in (None, self.name):
                # Tags need no token (vmpooler's contract), but only the meddlers' PUTs below tag
                # another's VM, and they say who they are.
                tagger = answer[host]["tags"]["owner"]
                if not tagger.startswith("meddler:"):
                    self.record.problem(f"{self.name}: its {host} tagged by {tagger}")

    def give_back(self) -> None:
        if not self.still_mine():
            return
        host = self.mine.pop(self.random.randrange(len(self.mine)))
        self.ledger.release(host)
        for _ in range(40):
            status, answer = self.send("DELETE", f"/vm/{host}")
            if status in (200, 404):
                return
            if status in (401, 403):
                self.record.problem(f"{self.name}: DELETE of its own {host}: {status} {answer}")
                return
            time.sleep(0.5)
        self.record.problem(f"{self.name}: DELETE of its own {host} never answered 200 or 404")

    def meddle(self) -> None:
        """Another caller's VM: returned or changed with this caller's identity."""
        others = self.ledger.others(self.name)
        if not others:
            return
        host, holder = self.random.choice(others)
        may = holder.anonymous or (bool(self.token) and holder.owner == self.user and self.token_is_live())
        if may:
            # Marked before it is sent: its holder may check out more the moment it lands, before
            # this caller has its answer.
            self.ledger.returning(host, True)
        status, _ = self.send("DELETE", f"/vm/{host}")
        if status == 200 and not may:
            self.record.problem(f"{self.name} ({self.owner}) returned {host} of {holder.caller} ({holder.owner})")
        if status in (200, 404) and may:
            self.ledger.release(host)
        elif status not in (503, NO_ANSWER) and may:  # refused (429, say): still its holder's
            self.ledger.returning(host, False)
        status, _ = self.send("PUT", f"/vm/{host}", {"lifetime": 3, "tags": {"owner": f"meddler:{self.name}"}})
        if status == 200 and not (self.token and self.token_is_live() and (holder.owner == self.user
                                                                            or holder.anonymous)):
            self.record.problem(f"{self.name} ({self.owner}) changed {host} of {holder.caller} ({holder.owner})")
        with self.ledger.lock:
            requests = [(request, user) for request, user in self.ledger.requests.items() if user != self.user]
        if requests and self.token:
            request, user = self.random.choice(requests)
            for method in ("GET", "DELETE"):
                status, _ = self.send(method, f"/ondemandvm/{request}")
                if status in (200, 202):
                    self.record.problem(f"{self.name} ({self.owner}): {method} of {user}'s request: {status}")

    def token_is_live(self) -> bool:
        return bool(self.user) and self.token not in self.ledger.deleted

    def read_tokens(self) -> None:
        status, answer = self.send("GET", f"/token/{self.token}", token="")
        if status == 200:
            if set(answer) != {"ok", self.token}:
                self.record.problem(f"{self.name}: GET /token/<its token> answered {len(answer)} keys")
            else:
                described = answer[self.token]
                with self.ledger.lock:
                    foreign = set(described["vms"]["running"]) - self.ledger.handed[self.owner]
                    unknown = self.ledger.lost[self.owner]  # VMs of checkouts whose answer was lost
                if described["user"] != self.user or len(foreign) > unknown:
                    self.record.problem(f"{self.name}: its token's status names {described['user']}, {foreign}")
        status, answer = self.send("GET", "/token", token="", login=True)
        if status == 200:
            listed = {key for key in answer if key != "ok"}
            with self.ledger.lock:
                foreign = listed - self.ledger.tokens[self.owner]
                unanswered = self.ledger.unanswered_logins[self.owner]
            if len(foreign) > unanswered or len(listed) > MAX_TOKENS:
                self.record.problem(f"{self.name}: GET /token listed {len(listed)}, not {self.user}'s: {foreign}")
        status, answer = self.send("GET", "/token?user=" + self.random.choice(["alice", "bob"]), token="", login=True)
        if status == 200:
            self.record.problem(f"{self.name}: another user's tokens listed: {answer}")

    def new_token(self) -> None:
        old = self.token
        if not self.log_in(revoke_unknown=False):
            return
        status, _ = self.send("DELETE", f"/token/{old}", token="", login=True)
        if status == 200:
            with self.ledger.lock:
                self.ledger.deleted.append(old)

    def ondemand(self) -> None:
        status, answer = self.send("POST", "/ondemandvm", {self.random.choice(sorted(POOLS)): 1})
        if status == NO_ANSWER:
            self.answer_lost()
        if status != 201:
            return
        with self.ledger.lock:
            self.ledger.requests[answer["request_id"]] = self.owner
        status, shown = self.send("GET", f"/ondemandvm/{answer['request_id']}")
        if status in (200, 202) and shown.get("request_id") != answer["request_id"]:
            self.record.problem(f"{self.name}: GET of its request answered {shown}")
        for _ in range(40):
            status, _ = self.send("DELETE", f"/ondemandvm/{answer['request_id']}")
            if status in (200, 404):
                break
            time.sleep(0.5)
        with self.ledger.lock:
            self.ledger.requests.pop(answer["request_id"], None)


class BadToken(Caller):
    """A caller whose token is deleted (its user's, deleted before it starts) or made up: every
    request that needs a token is refused and changes nothing."""

    def run(self) -> None:
        try:
            if self.user:
                while not self.stopping.is_set() and not self.log_in():
                    time.sleep(0.5)
                status, _ = self.send("DELETE", f"/token/{self.token}", token="", login=True)
                if status != 200:
                    self.record.problem(f"{self.name}: its token's DELETE answered {status}")
            while not self.stopping.is_set():
                self.refused()
                time.sleep(self.random.uniform(0.05, 0.3))
        except Exception as error:  # noqa: BLE001 - reported as a failure of the test
            self.record.problem(f"{self.name} crashed: {type(error).__name__}: {error}")

    def refused(self) -> None:
        others = self.ledger.others(self.name)
        host = self.random.choice(others)[0] if others else "nosuchvm"
        with self.ledger.lock:
            deleted = list(self.ledger.deleted)
        token = self.random.choice([self.token, *deleted[-20:]])
        for method, path, body in (("POST", f"/vm/{self.random.choice(TARGETS)}", None),
                                   ("PUT", f"/vm/{host}", {"tags": {"owner": f"meddler:{self.name}"}}),
                                   ("DELETE", f"/vm/{host}", None), ("POST", "/ondemandvm", {"alpha": 1})):
            status, answer = self.send(method, path, body, token=token)
            # 404: the VM named is no longer running (checked before the token; nothing changed)
            if status not in (401, 429, 503, NO_ANSWER) and not (status == 404 and method != "POST"):
                self.record.problem(f"{self.name}: {method} {path} with a dead token: {status} {answer}")
        status, answer = self.send("GET", f"/token/{token}", token="")
        if status not in (404, 429, 503, NO_ANSWER):
            self.record.problem(f"{self.name}: GET of a dead token: {status} {answer}")


@pytest.fixture
def directory(slapd: SlapdServer) -> Iterator[dict[str, str]]:
    """The callers' users, added to the session's slapd (user -> password) and removed after."""
    users = {f"ident{n:02d}": f"ident{n:02d}-Pass-{n}" for n in range(USERS + 2)}
    dns = [slapd.add_user(user, password) for user, password in users.items()]
    yield users
    for dn in dns:
        slapd.remove(dn)


@pytest.mark.audit
def test_many_identities_at_once_see_only_their_own_while_processes_die(
        tmp_path: Path, slapd: SlapdServer, directory: dict[str, str]) -> None:
    config = stack_config(slapd)
    stack = Stack(tmp_path, config, POOLS, dummy_inventory)
    record, stopping = Record(), threading.Event()
    ledger = Ledger(record)
    rng = random.Random(int(os.environ.get("VMPOOL_IDENTITIES_SEED", "5")))
    names = sorted(directory)
    callers: list[Caller] = []
    for number, user in enumerate(names[:USERS]):
        for copy in range(2 if number < TWO_TOKEN_USERS else 1):
            callers.append(Caller(f"{user}/{copy}", stack, ledger, stopping, rng.random(), address="127.0.0.1",
                                  user=user, password=directory[user]))
    callers += [Caller(f"anonymous{n}", stack, ledger, stopping, rng.random(), address=f"127.0.2.{n + 1}")
                for n in range(ANONYMOUS)]
    callers += [BadToken(f"deleted:{user}", stack, ledger, stopping, rng.random(), address="127.0.3.1", user=user,
                         password=directory[user]) for user in names[USERS:]]
    callers += [BadToken(f"made-up{n}", stack, ledger, stopping, rng.random(), address=f"127.0.3.{n + 2}",
                         bad_token=f"{rng.getrandbits(160):040x}"[:32]) for n in range(2)]
    try:
        stack.start()
        faults = Faults(stack)
        wait_for_converged(stack, 60, "the pools to fill")
        threads = [threading.Thread(target=caller.run, daemon=True) for caller in callers]
        for thread in threads:
            thread.start()
        plan = [lambda: faults.kill_worker(rng), lambda: faults.stop_redis(rng, seconds=rng.uniform(2, 5)),
                lambda: faults.stop_scheduler(rng, seconds=3.0), lambda: stop_directory(slapd, faults, 3.0),
                lambda: faults.kill_worker(rng), lambda: faults.kill_stack(rng)]
        for fault in plan:
            time.sleep(SECONDS / (len(plan) + 1))
            fault()
        time.sleep(SECONDS / (len(plan) + 1))
        stopping.set()
        for thread in threads:
            thread.join(60)
        assert not any(thread.is_alive() for thread in threads), "a caller hung"
        views_match_redis(stack, callers, ledger)
        for caller in callers:  # what each still holds, given back
            while caller.still_mine() and not isinstance(caller, BadToken):
                caller.give_back()
        wait_for_converged(stack, 120, "the pools to converge")
        assert stack.redis is not None
        harness = Harness(parse(config), redis.Redis(port=stack.redis_port, decode_responses=True), FakeClock(),
                          prefix=KEYS.prefix)
        for pool in POOLS:
            assert_consistent(harness, pool)
        left = left_running(stack, ledger)
    finally:
        stopping.set()
        stack.stop()
    report = (f"faults: {faults.done}\nanswers: {dict(sorted(record.answers.items()))}, "
              f"connection errors: {record.connection_errors}")
    print(report)
    assert not record.problems, "\n".join(record.problems[:30]) + f"\n{report}"
    assert not left, f"VMs running that their callers gave back: {left}\n{report}"
    assert record.answers.get(200, 0) > 100, report


def views_match_redis(stack: Stack, callers: list[Caller], ledger: Ledger) -> None:
    """The callers stopped: what each holds is running in Redis for its user; each user's
    ``GET /token`` lists exactly the tokens Redis files under the user, and each live token's
    status exactly the running VMs Redis records as checked out with it."""
    assert stack.redis is not None  # the last fault's restart waited for the stack to start
    client = stack.redis
    running = {host for pool in POOLS for host in client.zrange(KEYS.pool_state(pool, "running"), 0, -1)}
    with ledger.lock:
        held = {host: holder for host, holder in ledger.held.items() if not holder.returning}
    for host, holder in held.items():
        user = client.hget(KEYS.vm(host), "token_user") or ""
        if host not in running or user != ("" if holder.anonymous else holder.owner):
            ledger.record.problem(f"{holder.caller} holds {host}: running {host in running}, user {user!r}")
    for caller in callers:
        if isinstance(caller, BadToken) or not caller.user or not caller.token_is_live():
            continue
        listing, listed = caller.send("GET", "/token", token="", login=True)
        filed = {token_hash[:16] for token_hash in client.smembers(KEYS.user_tokens(caller.user))}
        if listing == 200 and set(listed) - {"ok"} != filed:
            ledger.record.problem(f"{caller.name}: GET /token listed {sorted(listed)}, Redis files {sorted(filed)}")
        status, described = caller.send("GET", f"/token/{caller.token}", token="")
        checked_out = {host for host in running if client.hget(KEYS.vm(host), "token_id") == token_id(caller.token)}
        if status == 200 and set(described[caller.token]["vms"]["running"]) != checked_out:
            ledger.record.problem(f"{caller.name}: its token's status lists {described[caller.token]['vms']}, "
                                  f"Redis {sorted(checked_out)}")
        if (listing, status) != (200, 200):
            ledger.record.problem(f"{caller.name}: its tokens unreadable once the callers stopped: {listing}, {status}")


def stop_directory(slapd: SlapdServer, faults: Faults, seconds: float) -> None:
    faults.note(f"SIGSTOP of slapd for {seconds} s")
    assert slapd.process is not None
    pause(slapd.process.pid, seconds)


def wait_for_converged(stack: Stack, timeout: float, what: str) -> None:
    wait_for(lambda: converged(stack) is None, timeout, what, lambda: f"{converged(stack)}\n{stack.log()}")


def left_running(stack: Stack, ledger: Ledger) -> dict[str, str]:
    """The VMs still running once every caller gave back what it held, beyond what an owner may
    have been given without knowing it (a checkout or on-demand request whose answer never came).
    A checkout never confirmed is not counted: a pass gives its VM back at its deadline."""
    client = stack.redis
    assert client is not None
    lost = dict(ledger.lost)
    unexplained: dict[str, str] = {}
    for pool in POOLS:
        for host in sorted(map(str, client.zrange(KEYS.pool_state(pool, "running"), 0, -1))):
            user, confirm_by = client.hmget(KEYS.vm(host), "token_user", "confirm_by")
            if confirm_by is not None:
                continue
            owner = user or ANYONE
            if lost.get(owner, 0) > 0 and not any(host in hosts for hosts in ledger.handed.values()):
                lost[owner] -= 1
            else:
                unexplained[host] = owner or "anonymous"
    return unexplained
