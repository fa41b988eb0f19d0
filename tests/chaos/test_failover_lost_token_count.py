"""A token answered 200 whose count a failover lost is its user's like any other once used.

``POST /token`` makes the token pending (lua/token_create.lua), waits for a replica to have it,
then counts it (lua/token_confirm.lua) and answers 200 without waiting again. Should the primary
die within the replication lag after the count, the new primary has the token pending: it works,
but was listed nowhere, so its user did not see it under ``GET /token`` (vmfloaty's ``token
list``) and ``DELETE /token/<id>`` answered 404; only its value revoked it. Now its first use
counts it (nobody else can hold a pending token's value: an orphan of a failed login is never
counted): listed and revoked by id like any other.
"""

from __future__ import annotations

import base64
from typing import Any

import pytest

from chalicelib.auth.tokens import hash_token
from tests.chaos.lambda_api import call, dummy_config, serving
from tests.redis_pair import RedisPair

CONFIG = (dummy_config("socket_timeout: 5.0, replica_ack_timeout: 1000", ["pool1"], 0)
          + ":auth: {provider: dummy}\n")
ALICE = {"Authorization": "Basic " + base64.b64encode(b"alice:alice-secret").decode()}


def listed_ids() -> tuple[int, Any]:
    status, answer = call("GET", "/api/v3/token", "/api/v3/token", headers=ALICE)
    return status, sorted(key for key in answer if key != "ok") if status == 200 else answer


def test_a_token_whose_count_a_failover_lost_is_listed_and_revoked_by_id_once_used(
        redis_pair: RedisPair, monkeypatch: pytest.MonkeyPatch) -> None:
    services = serving(redis_pair, monkeypatch, CONFIG)
    count = services.tokens._confirm

    def counted_on_the_primary_only(keys: list[str], args: list[Any]) -> Any:
        redis_pair.link.hold()  # the replica had the token; it stops receiving before the count
        return count(keys=keys, args=args)

    monkeypatch.setattr(services.tokens, "_confirm", counted_on_the_primary_only)
    status, answer = call("POST", "/api/v3/token", "/api/v3/token", headers=ALICE)
    assert status == 200, answer
    token = answer["token"]
    redis_pair.kill_primary_and_promote()

    serving(redis_pair, monkeypatch, CONFIG)  # a function started on the new primary
    status, answer = call("GET", "/api/v3/token/{token}", f"/api/v3/token/{token}", params={"token": token})
    assert status == 200 and answer[token]["user"] == "alice", answer  # vmfloaty's `token status`
    token_id = hash_token(token)[:16]
    assert listed_ids() == (200, [token_id]), "her token, used, is not listed"
    status, answer = call("DELETE", "/api/v3/token/{token}", f"/api/v3/token/{token_id}",
                          params={"token": token_id}, headers=ALICE)
    assert status == 200, f"her token, listed by its id, is not deleted by it: {status} {answer}"
    status, answer = call("GET", "/api/v3/token/{token}", f"/api/v3/token/{token}", params={"token": token})
    assert status == 404, answer
