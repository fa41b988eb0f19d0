"""A Redis restarted with an empty dataset (no persistence, a node replaced) forgets every token:
hashed in Redis only. Its holders are told so, 401 with the reason, as for any unknown token;
never a 500. While Redis is away every request is a JSON 503 that says when to try again. A new
login makes a new token that works at once (docs/reliability.md, "Redis without persistence")."""

from __future__ import annotations

from typing import Any, Callable, Iterator

import pytest
import redis

from chalicelib.config import parse
from chalicelib.store import connect
from local.redis_server import RedisServer
from tests.auth.slapd import SlapdServer
from tests.auth_api.documents import POOL, document
from tests.harness import Harness, HarnessFactory, Reply, basic
from tests.support import eventually

FORGOTTEN = {"ok": False, "error": "invalid or expired token"}


@pytest.fixture
def restartable() -> Iterator[RedisServer]:
    """A redis-server of the test's own, without persistence, to kill and start again empty."""
    server = RedisServer().start()
    yield server
    server.stop()


def answered(send: Callable[[], Reply]) -> Reply:
    """The first answer of ``send`` that is not the 503 Redis's absence gets (this process's
    breaker closes once its probe reaches the restarted Redis, on its own thread)."""
    replies: list[Reply] = []

    def served() -> Reply | None:
        replies.append(send())
        return replies[-1] if replies[-1].status != 503 else None

    return eventually(served, 20, f"an answer other than 503 (the last: {replies[-1:]})", interval=0.1)


def test_tokens_forgotten_by_an_empty_restart_are_401_with_the_reason(
        restartable: RedisServer, make_api: HarnessFactory, ldap_auth: Callable[..., dict[str, Any]],
        slapd: SlapdServer) -> None:
    client: redis.Redis = connect(parse(":redis: {socket_timeout: 1.0}").redis, url=restartable.url)
    try:
        api: Harness = make_api(document(ldap_auth()), client=client)
        api.fill(POOL)
        alice = basic("alice", slapd.password("alice"))
        token = api.call("POST", "/api/v3/token", headers=alice).body["token"]
        held = api.call("POST", f"/api/v3/vm/{POOL}", headers={"X-AUTH-TOKEN": token})
        assert held.status == 200, held.body
        host = held.body[POOL]["hostname"].split(".")[0]

        restartable.kill()
        away = api.call("POST", f"/api/v3/vm/{POOL}", headers={"X-AUTH-TOKEN": token})
        assert away.status == 503 and away.body["ok"] is False, (away.status, away.body)
        assert int(away.headers["Retry-After"]) >= 1
        restartable.start()  # no persistence: empty

        for method, path in (("POST", f"/api/v3/vm/{POOL}"), ("PUT", f"/api/v3/vm/{host}"),
                             ("DELETE", f"/api/v3/vm/{host}"), ("GET", f"/api/v3/token/{token}")):
            body = {"tags": {"a": "b"}} if method == "PUT" else None
            reply = answered(lambda method=method, path=path, body=body: api.call(
                method, path, headers={"X-AUTH-TOKEN": token}, body=body))
            assert (reply.status, reply.body) == (401, FORGOTTEN), (method, path)

        renewed = api.call("POST", "/api/v3/token", headers=alice)
        assert renewed.status == 200, renewed.body
        api.fill(POOL)
        again = api.call("POST", f"/api/v3/vm/{POOL}", headers={"X-AUTH-TOKEN": renewed.body["token"]})
        assert again.status == 200, again.body
    finally:
        client.close()
