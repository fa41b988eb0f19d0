"""The replica lost for good (kill -9, never back: ElastiCache replaces it in minutes), no
failover. The primary drops it from its count at once (its link closed), but it had its replica
moments ago (``replicas:seen``), and a primary cut off from its replica looks the same from here:
that replica may be promoted when the failover's detection ends. So writes still wait for it for
``redis.replica_loss_grace`` (60 s by default): every checkout a JSON 503 to try again, its VMs
back in ready; past the grace the primary serves alone, as ElastiCache's primary without
replicas does (``WAIT`` for none). The grace is a setting now (it was a constant nobody could
change for a deployment whose failovers are known to be quicker, or slower), and while the
replica is gone a write no longer waits ``replica_ack_timeout`` before its 503 (no replica online
can acknowledge it): docs/reliability.md, "A replica lost for good"."""

from __future__ import annotations

import json
from typing import Any, Iterator

import pytest
import redis

import app
from chalicelib.api import routes
from chalicelib.manager.reconcile import reconcile_pool
from chalicelib.services import Services
from tests.chaos.lambda_api import dummy_config, serving
from tests.infra.packaged_functions import api_event
from tests.redis_pair import RedisPair
from tests.support import Context

POOL = "lost"


def config(grace: int | None) -> str:
    setting = "" if grace is None else f", replica_loss_grace: {grace}"
    return dummy_config(f"socket_timeout: 5.0, replica_ack_timeout: 300{setting}", [POOL], 3)


@pytest.fixture
def api(redis_pair: RedisPair, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest) -> Iterator[Services]:
    """The API function on the pair's endpoint, waiting for a replica as in AWS Lambda, its
    pool full and one checkout answered (the process has seen the replica and marked it)."""
    services = serving(redis_pair, monkeypatch, config(getattr(request, "param", None)))
    pool = services.pool(POOL)
    assert pool is not None
    for _ in range(3):
        reconcile_pool(services.store, services.provider("dummy"), pool, services.clock, services.config.service)
    status, _, answer = check_out()
    assert status == 200, answer
    redis_pair.wait_synced()
    yield services
    services.client.close()


def check_out() -> tuple[int, dict[str, str], Any]:
    """A checkout through the API function: its status, headers and JSON answer."""
    answer = app.app(api_event("POST", "/api/v3/vm/{name}", f"/api/v3/vm/{POOL}", params={"name": POOL},
                               headers={"Content-Type": "application/json"}), Context())
    return answer["statusCode"], answer.get("headers") or {}, json.loads(answer["body"])


def lose_the_replica(pair: RedisPair, services: Services) -> redis.Redis:
    """kill -9 of the replica; returns a client of the primary once it counts the replica gone."""
    pair.replica.kill()
    pair.wait_alone(pair.primary)
    primary = RedisPair.client(pair.primary)
    services.store._replicas_known_until = 0.0  # its 5 s are up: the next write looks again
    return primary


def ready(primary: redis.Redis) -> int:
    return int(primary.zcard(f"vmpool:pool:{POOL}:ready"))


def test_a_replica_lost_for_good_is_waited_for_during_the_grace_then_the_primary_serves_alone(
        redis_pair: RedisPair, api: Services, monkeypatch: pytest.MonkeyPatch) -> None:
    """During the grace every checkout is a JSON 503 with Retry-After that says to try again, and
    takes no VM; once the grace is over (the mark lapsed), the primary alone serves them. The log
    line of the first 503 says what happened: no replica was waited for (none online), not that
    none acknowledged within ``replica_ack_timeout`` (before: "within 300 ms", after a ``WAIT 0
    0``). The 503s after it are counted for the window's summary, not logged one by one (any
    caller can cause them: chalicelib/refusals.py)."""
    logged: list[str] = []
    monkeypatch.setattr(routes.logger, "warning", lambda message, *args, **kwargs: logged.append(
        str(kwargs.get("extra", {}).get("error"))))
    primary = lose_the_replica(redis_pair, api)
    try:
        before = ready(primary)
        answers = [check_out() for _ in range(3)]
        assert [status for status, _, _ in answers] == [503] * 3, answers
        assert all(answer["ok"] is False and "replicated in time" in answer["error"]
                   and headers.get("Retry-After") for _, headers, answer in answers), answers
        assert ready(primary) == before, "a checkout answered 503 kept its VM"
        assert len(logged) == 1 and all("not waited for: 0 of 1 replicas online" in line
                                        and "within 300 ms" not in line for line in logged), logged

        primary.delete(api.store.keys.replicas_seen)  # the grace over: the mark lapsed
        status, _, answer = check_out()
        assert status == 200, answer
    finally:
        primary.close()


@pytest.mark.parametrize("api", [7], indirect=True)
def test_the_grace_is_the_configured_replica_loss_grace(redis_pair: RedisPair, api: Services) -> None:
    """``redis.replica_loss_grace: 7``: the mark that holds writes after the replica is lost
    lasts 7 s, not the former fixed 60 s."""
    primary = RedisPair.client(redis_pair.primary)
    try:
        left = int(primary.pttl(api.store.keys.replicas_seen))
        assert 0 < left <= 7000, f"the mark lasts {left} ms"
    finally:
        primary.close()


@pytest.mark.parametrize("api", [0], indirect=True)
def test_a_grace_of_0_serves_at_once_once_the_replica_is_lost(redis_pair: RedisPair, api: Services) -> None:
    """``redis.replica_loss_grace: 0`` (writes never held for a replica that is gone): the first
    checkout after the loss may wait for the replica it still counted (a 503), the next is
    served by the primary alone."""
    primary = lose_the_replica(redis_pair, api)
    try:
        assert not primary.exists(api.store.keys.replicas_seen)
        statuses = [check_out()[0] for _ in range(2)]
        assert statuses[-1] == 200 and set(statuses) <= {200, 503}, statuses
    finally:
        primary.close()
