"""Logins while Redis stalls (a SIGSTOP, a slow fork, a failover): the login counters keep only
what the directory answered.

A login's attempt is counted before the directory is asked (auth/ratelimit.py). When that
count's reply times out, the caller gets a 503 without the directory being asked, but Redis runs
the count once it resumes: before, it stayed counted as a failed login, so a user with the right
password who met a few stalls (one per stall, on a warm connection) was refused for the whole
login window (429 "too many failed logins") once Redis was back. The stall is another client's
busy script, as in test_slow_redis.py.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

import redis

from chalicelib.auth.basic import LoginOutcome, LoginService
from chalicelib.auth.dummy import DummyAuthenticator
from chalicelib.auth.ratelimit import LoginLimiter
from chalicelib.config import parse
from chalicelib.store import connect
from local.redis_server import RedisServer
from tests.chaos.test_slow_redis import BUSY_SCRIPT, BUSY_SECONDS, SOCKET_TIMEOUT, _redis_is_busy
from tests.support import eventually

USER, PASSWORD, ADDRESS = "alice", "right password", "198.51.100.7"
LIMIT = 3


def _counted(redis_client: redis.Redis) -> dict[str, str]:
    """The login counters and counts in flight Redis holds, by key."""
    return {key: redis_client.get(key) for key in redis_client.scan_iter("vmpool:login:*")
            if redis_client.type(key) == "string" and ":attempt:" not in key}


@contextmanager
def _stalled(redis_server: RedisServer, redis_client: redis.Redis) -> Iterator[None]:
    """Redis held by another client's busy script for ``BUSY_SECONDS`` while the block runs;
    after it, Redis answers again (and has run what was written to it meanwhile)."""
    busy = threading.Thread(target=lambda: redis.Redis(port=redis_server.port).eval(
        BUSY_SCRIPT, 0, int(BUSY_SECONDS * 1_000_000)))
    busy.start()
    eventually(lambda: _redis_is_busy(redis_server.port), 10, "the busy script to hold Redis")
    try:
        yield
    finally:
        busy.join()
        eventually(lambda: redis_client.ping(), 10, "Redis to answer again")


def test_a_login_whose_count_timed_out_in_a_stall_is_not_a_failed_login(
        redis_server: RedisServer, redis_client: redis.Redis) -> None:
    config = parse(f":redis: {{server: 127.0.0.1, port: {redis_server.port}, socket_timeout: {SOCKET_TIMEOUT}}}\n")
    logins = LoginService(DummyAuthenticator(), LoginLimiter(connect(config.redis), max_per_user=LIMIT,
                                                                     max_per_user_all_addresses=LIMIT))
    answers = []
    for _ in range(LIMIT):
        # The user logs in (the connection is open, as in a warm Lambda or a local worker)...
        answers.append(logins.check(USER, PASSWORD, ADDRESS).outcome)
        # ... and again while Redis stalls: the count is sent, its reply times out (a 503).
        # What was written on the connection runs once Redis resumes.
        with _stalled(redis_server, redis_client):
            try:
                logins.check(USER, PASSWORD, ADDRESS)
                answers.append(LoginOutcome.OK)
            except redis.TimeoutError:
                answers.append(LoginOutcome.UNAVAILABLE)

    assert answers == [LoginOutcome.OK, LoginOutcome.UNAVAILABLE] * LIMIT
    assert _counted(redis_client) == {}, "a login that met a stall stayed counted"
    assert logins.check(USER, PASSWORD, ADDRESS).outcome is LoginOutcome.OK
    assert logins.check(USER, USER, ADDRESS).outcome is LoginOutcome.INVALID  # dummy auth: a wrong one
    assert list(_counted(redis_client).values()) == ["1"] * 3  # a wrong password still counts (pair, user, address)


def test_a_refused_login_whose_answer_timed_out_gives_back_no_failure(
        redis_server: RedisServer, redis_client: redis.Redis) -> None:
    """The undo written behind a count whose reply was lost undoes what that count did: nothing
    when it refused the attempt (the user name locked out). A refund there would forgive one of
    the failures per stall: more guesses at the password than the limit allows."""
    config = parse(f":redis: {{server: 127.0.0.1, port: {redis_server.port}, socket_timeout: {SOCKET_TIMEOUT}}}\n")
    logins = LoginService(DummyAuthenticator(), LoginLimiter(connect(config.redis), max_per_user=LIMIT,
                                                                     max_per_user_all_addresses=LIMIT))
    for _ in range(LIMIT):
        assert logins.check(USER, USER, ADDRESS).outcome is LoginOutcome.INVALID  # dummy auth: a wrong one
    locked = _counted(redis_client)
    with _stalled(redis_server, redis_client):
        try:
            logins.check(USER, USER, ADDRESS)
            raise AssertionError("the login was answered while Redis stalled")
        except redis.TimeoutError:
            pass

    assert _counted(redis_client) == locked
    assert logins.check(USER, PASSWORD, ADDRESS).outcome is LoginOutcome.RATE_LIMITED
