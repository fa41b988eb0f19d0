"""Many honest users behind one NAT address (a CI farm), and the guessers the limits must still stop.

Failed logins count per (address, user) under ``login_attempts_per_user`` (10), per user name
from all addresses under ``login_attempts_per_user_all_addresses`` (100), and per address under
``login_attempts_per_address`` (500): the defaults, through the API, with a real redis-server.
Before, 60 logins sent together from one address got 429 "busy" past 50 (10 for one user), and
50 failures from any users at one address locked out everyone behind it for the window.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from chalicelib.auth import ratelimit
from chalicelib.auth.ratelimit import LoginLimiter, new_attempt
from tests.auth_api.documents import document
from tests.harness import basic

NAT = "203.0.113.77"
DUMMY = {"provider": "dummy"}  # the dummy refuses a password equal to the name, takes any other


class _HeldDirectory:
    """The dummy directory, holding each login until ``callers`` have reached it (or 20 s
    passed): every login is in flight at once, for certain."""

    def __init__(self, inner, callers: int) -> None:
        self.inner, self.callers = inner, callers
        self.lock = threading.Lock()
        self.reached = 0
        self.all_in = threading.Event()

    def authenticate(self, username: str, password: str) -> bool:
        with self.lock:
            self.reached += 1
            if self.reached == self.callers:
                self.all_in.set()
        self.all_in.wait(20)  # a refused caller never comes: the test then fails, 20 s later
        return self.inner.authenticate(username, password)


@pytest.mark.parametrize("names", ["one service account", "60 users"])
def test_60_correct_logins_at_once_from_one_address_all_succeed(make_api, names):
    callers = 60
    api = make_api(document(DUMMY, config={"max_tokens_per_user": callers}))
    held = _HeldDirectory(api.services.logins.authenticator, callers)
    api.services.logins.authenticator = held
    users = ["ci"] * callers if names == "one service account" else [f"job{index}" for index in range(callers)]

    def login(user: str) -> int:
        return api.call("POST", "/api/v3/token", headers=basic(user, "right"), client_ip=NAT).status

    with ThreadPoolExecutor(callers) as pool:
        statuses = list(pool.map(login, users))
    assert statuses == [200] * callers
    assert held.reached == callers
    # Nothing is left counted against the address, the users or the pairs: successes cost nothing.
    assert all(int(api.services.client.get(key) or 0) == 0
               for key in api.services.client.scan_iter("vmpool:login:*")
               if not key.endswith(":counted") and ":attempt:" not in key)


def test_one_users_wrong_passwords_do_not_lock_out_others_behind_the_same_address(make_api):
    api = make_api(document(DUMMY))
    statuses = [api.call("POST", "/api/v3/token", headers=basic("alice", "alice"), client_ip=NAT).status
                for _ in range(50)]
    assert statuses == [401] * 10 + [429] * 40  # alice from the NAT: her pair's limit
    assert api.call("POST", "/api/v3/token", headers=basic("bob", "right"), client_ip=NAT).status == 200
    # alice's own right password from the NAT waits for the window; from elsewhere it works.
    assert api.call("POST", "/api/v3/token", headers=basic("alice", "right"), client_ip=NAT).status == 429
    assert api.call("POST", "/api/v3/token", headers=basic("alice", "right"), client_ip="198.51.100.3").status == 200


def test_one_guess_at_each_of_1000_users_from_one_address_meets_the_address_ceiling(make_api):
    api = make_api(document(DUMMY))
    statuses = [api.call("POST", "/api/v3/token", headers=basic(f"user{index}", f"user{index}"),
                         client_ip=NAT).status for index in range(1000)]
    assert statuses == [401] * 500 + [429] * 500
    refused = api.call("POST", "/api/v3/token", headers=basic("carol", "right"), client_ip=NAT)
    assert refused.status == 429 and 1 <= int(refused.headers["Retry-After"]) <= 300
    assert api.call("POST", "/api/v3/token", headers=basic("carol", "right"), client_ip="198.51.100.4").status == 200


def test_guessing_one_user_from_100_addresses_meets_the_user_ceiling(make_api):
    api = make_api(document(DUMMY))
    statuses = [api.call("POST", "/api/v3/token", headers=basic("dave", "dave"), client_ip=f"192.0.2.{index}").status
                for index in range(100)]
    assert statuses == [401] * 100
    for address in ("192.0.2.200", "198.51.100.5"):  # the 101st guess, and dave himself from a new address
        refused = api.call("POST", "/api/v3/token", headers=basic("dave", "right"), client_ip=address)
        assert refused.status == 429 and int(refused.headers["Retry-After"]) >= 1
    assert api.call("POST", "/api/v3/token", headers=basic("erin", "right"), client_ip="192.0.2.7").status == 200


def test_what_many_user_names_keep_in_redis_is_bounded(redis_client, monkeypatch):
    """10,000 failing names (100 times the bound), each from a new IPv6 /48: every kind of
    counter (pair, user, address) keeps at most max_login_counters of its own plus its shared
    counters. The limiter's own scripts and keys, 2,000 attempts a pipeline. (Run once with
    100,000 names: the same bound held; it took minutes on a loaded machine.)"""
    monkeypatch.setattr(ratelimit, "SHARED_LOGIN_COUNTERS", 64)
    limiter = LoginLimiter(redis_client, window_seconds=86400, max_counters=100)
    for batch in range(0, 10_000, 2000):
        attempts = []
        for index in range(batch, batch + 2000):
            limits = limiter._limits(f"n{index}", f"2001:db8:{index >> 16:x}:{index & 0xffff:x}::1")
            attempts.append((limits, limiter._script_keys(limits, new_attempt())))
        for script, args_of in ((limiter._reserve, limiter._reserve_args),
                                (limiter._settle, lambda limits: limiter._settle_args(limits, "failed", "answer"))):
            pipe = redis_client.pipeline(transaction=False)
            for limits, keys in attempts:
                script(keys=keys, args=args_of(limits), client=pipe)
            pipe.execute()
    keys = list(redis_client.scan_iter("vmpool:login:*", count=1000))
    assert len(keys) <= 3 * (100 + 64 + 1)
    assert sum(redis_client.memory_usage(key) or 0 for key in keys) < 500_000
    assert all(redis_client.ttl(key) > 0 for key in keys)
