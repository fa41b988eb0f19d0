"""Each Lambda entry point, warm (its cached client's connections open to the primary), invoked
for the first time after the primary and the replica swapped roles by REPLICAOF: its first
invocation reaches the new primary (the demoted node refuses the first write with READONLY; the
client reconnects through the endpoint and runs it again), answers as usual, and its writes
are on the new primary: the API's checkout, the consumer's clones, the tick's record of the
pools it fans out to (its first write in a process). The Store-level retry is tests/chaos/test_redis_durability.py's."""

from __future__ import annotations

import base64
import json
from typing import Any, Callable

import pytest

import app
from chalicelib.store import Store
from chalicelib.store.fleet import Fleet
from tests.chaos.lambda_api import call, check_out, lambda_services, serve
from tests.redis_pair import RedisPair
from tests.support import TICK_EVENT, Context, sqs_event

POOL = "ha"
SIZE = 4
CONFIG = f"""
:redis: {{socket_timeout: 1.0}}
:auth: {{provider: dummy}}
:providers:
  :dummy: {{createvm_max_time: 0, boot_time: 0}}
:pools:
  - {{name: {POOL}, size: {SIZE}, provider: dummy}}
"""


def checkout() -> Any:
    return check_out(POOL)


def token() -> Any:
    """POST /token: the login's attempt counted and settled (lua/login_reserve.lua, login_settle.lua)."""
    basic = "Basic " + base64.b64encode(b"alice:right password").decode()
    return call("POST", "/api/v3/token", "/api/v3/token", headers={"Authorization": basic})


def shared_status() -> Any:
    """GET /status as the dashboard asks it: the answer kept for the next pages (api/feed_cache.py)."""
    return call("GET", "/api/v3/status", "/api/v3/status", headers={"Cache-Control": "max-age=4"})


def reconcile() -> Any:
    return app.reconcile(sqs_event(json.dumps({"pool": POOL})), Context())


def tick() -> Any:
    return app.tick(TICK_EVENT, Context())


def new_primary_store(pair: RedisPair) -> Store:
    return Store(RedisPair.client(pair.primary))


@pytest.mark.parametrize("first, answered, on_new_primary", [
    (checkout, lambda answer: answer[0] == 200 and answer[1][POOL]["hostname"],
     lambda store, answer: answer[1][POOL]["hostname"].split(".")[0] in store.hostnames(POOL, "running")),
    (reconcile, lambda answer: answer == {"batchItemFailures": []},
     lambda store, answer: sum(store.counts([POOL])[POOL][state] for state in ("ready", "pending")) == SIZE),
    (tick, lambda answer: answer["messages"] == 1, lambda store, answer: Fleet(store).names() == {POOL}),
    (token, lambda answer: answer[0] == 200 and answer[1]["token"],
     lambda store, answer: bool(store.client.keys(store.keys.login_attempt("*")) == []
                                and store.client.keys(store.keys.token("*")))),
    (shared_status, lambda answer: answer[0] == 200 and POOL in answer[1]["pools"],
     lambda store, answer: bool(store.client.keys(store.keys.feed_cache("status", "3")))),
], ids=["api", "consumer", "tick", "login", "shared_feed"])
def test_a_warm_function_reaches_the_new_primary_on_its_first_invocation_after_a_swap(
        redis_pair: RedisPair, monkeypatch: pytest.MonkeyPatch, first: Callable[[], Any],
        answered: Callable[[Any], bool], on_new_primary: Callable[[Store, Any], bool]) -> None:
    serve(lambda_services(redis_pair, CONFIG, replica_acks=0), monkeypatch)
    monkeypatch.setattr(app, "_ticker", None)
    for _ in range(2):  # the pool fills; the consumer's connections are open to the primary
        assert reconcile() == {"batchItemFailures": []}
    assert checkout()[0] == 200  # and the API's (one client for all here; one per function in AWS)
    redis_pair.wait_synced()

    redis_pair.swap_with_replicaof()
    answer = first()

    assert answered(answer), answer
    assert on_new_primary(new_primary_store(redis_pair), answer)
