"""A login (``POST /token``) whose process dies before it answers leaves no token counted against
its user's ``max_tokens_per_user``.

The API function can be SIGKILLed at any line (a Lambda's timeout, OOM; a local worker killed).
Before, the token was written and counted by one script, then waited for a replica (``WAIT``, as
in AWS) before it was handed out: killed in between, the token nobody ever saw counted against
the user until ``token_ttl``, so a user one short of ``max_tokens_per_user`` who met one such
crash was refused (403 "you have 2 tokens already") at the login the client sent again. Now the
token is counted only by the script whose answer is the only way to a 200
(lua/token_confirm.lua): the crash leaves at most a token that counts for nothing.
"""

from __future__ import annotations

import base64
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import redis

from chalicelib.auth.tokens import TokenStore, TooManyTokens, hash_token
from chalicelib.config import parse
from chalicelib.services import Services
from chalicelib.store import connect
from local.redis_server import RedisServer
from tests.chaos.lambda_api import call, dummy_config, serving_fixture
from tests.chaos.test_api_crash_points import Died, redis_operations
from tests.redis_pair import RedisPair

CONFIG = (dummy_config("socket_timeout: 5.0, replica_ack_timeout: 2000", ["pool1"], 0)
          + ":auth: {provider: dummy}\n:config: {max_tokens_per_user: 2}\n")
api = serving_fixture(CONFIG)
ROOT = Path(__file__).resolve().parents[2]


def login(user: str) -> tuple[int, Any]:
    """``POST /api/v3/token`` with ``user``'s Basic credentials (dummy auth: any other password)."""
    headers = {"Authorization": "Basic " + base64.b64encode(f"{user}:{user}-pw".encode()).decode()}
    return call("POST", "/api/v3/token", "/api/v3/token", headers=headers)


def test_a_login_killed_before_it_answered_counts_no_token(redis_pair: RedisPair, api: Services) -> None:
    assert login("warm")[0] == 200  # the scripts loaded, the replica count known, as in a warm Lambda
    with redis_operations() as sent:
        assert login("counted")[0] == 200
    total = sent[0]
    primary = redis.Redis(port=redis_pair.primary.port, decode_responses=True)
    left_made = 0  # crashes after the token's record was written: the case the test is for
    for die_after in range(total):
        where = f"POST /token killed after Redis operation {die_after} of {total}"
        user = f"user{die_after}"
        assert login(user)[0] == 200, where  # one of her two
        with redis_operations(die_after):
            try:
                answer = login(user)
            except Died:
                answer = None
        if answer is not None:  # one round trip fewer this time (the replica count still known)
            continue
        left_made += any(primary.hmget(key, "user", "pending") == [user, "1"]
                         for key in primary.scan_iter(api.store.keys.token("*")))
        retry = login(user)  # the client sends the login again
        assert retry[0] == 200, f"{where}: the login sent again answered {retry}"
        assert primary.scard(api.store.keys.user_tokens(user)) == 2, where
        # Her limit still holds.
        status, answer = login(user)
        assert status == 403 and "2 tokens" in answer["error"], f"{where}: {status} {answer}"
    primary.close()
    assert left_made, "no crash came after the token was made"


KILLED_LOGIN = """
import os, signal, sys
from chalicelib.auth.tokens import TokenStore
from chalicelib.config import parse
from chalicelib.store import connect

config = parse(":redis: {server: 127.0.0.1, port: %s, socket_timeout: 5.0}\\n")
store = TokenStore(connect(config.redis), max_per_user=1)
# The token's script has answered; the process is killed before it answers its caller.
store.replicated = lambda: os.kill(os.getpid(), signal.SIGKILL)
store.create("alice")
sys.exit("not killed")
"""


def test_a_login_process_sigkilled_after_the_token_was_written_counts_no_token(
        redis_server: RedisServer, redis_client: redis.Redis) -> None:
    """A real process, SIGKILLed between the token's write and its answer (where the API waits for
    a replica): alice (``max_tokens_per_user: 1``) still gets her token from the next process."""
    killed = subprocess.run([sys.executable, "-c", KILLED_LOGIN % redis_server.port], cwd=ROOT,
                            capture_output=True, text=True, timeout=60, check=False)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert any(redis_client.hget(key, "user") == "alice" for key in redis_client.scan_iter("vmpool:token:*"))
    store = TokenStore(connect(parse(f":redis: {{server: 127.0.0.1, port: {redis_server.port}}}\n").redis),
                       max_per_user=1)
    token = store.create("alice")  # before: TooManyTokens, for a token nobody ever saw
    assert [record.token_hash for record in store.list_for_user("alice")] == [hash_token(token)]
    with pytest.raises(TooManyTokens):
        store.create("alice")
