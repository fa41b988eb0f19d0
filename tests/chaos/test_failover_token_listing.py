"""``GET /token/<t>`` lists the running VMs checked out with the token, on-demand ones included.

A checkout is answered only once a replica has it, and an on-demand request is answered ready
(``GET /ondemandvm/<id>``) only once a replica has its delivery (tests/chaos/
test_failover_ondemand_delivery.py); but the token's listing showed VMs a pass had just
delivered on the primary alone. With the replication link down and the primary lost, a client
that listed its token's VMs and then acted on one (``PUT /vm/<host>``, ``DELETE``) was told the
VM it had just seen did not exist. Now the listing shows a delivered VM once a replica has it.
"""

from __future__ import annotations

import base64
from typing import Any

import pytest
import redis

from chalicelib.clock import FakeClock
from chalicelib.manager.reconcile import reconcile_pool
from chalicelib.services import Services
from chalicelib.store.ondemand import OnDemandStore
from tests.chaos.lambda_api import (
    HELD_ACK_WAIT_MS,
    SYNCED_ACK_WAIT_MS,
    call,
    serve,
    service_on,
    waiting_for_a_replica,
)
from tests.redis_pair import RedisPair

POOL = "ha"
CONFIG = f"""
:config: {{task_limit: 10}}
:redis: {{socket_timeout: 10.0, replica_ack_timeout: {SYNCED_ACK_WAIT_MS}}}
:auth: {{provider: dummy}}
:providers:
  :dummy: {{createvm_max_time: 0, boot_time: 0, destroyvm_max_time: 0}}
:pools:
  - {{name: {POOL}, size: 1, provider: dummy}}
"""
BASIC = {"Authorization": "Basic " + base64.b64encode(b"alice:right password").decode()}


def serving_on(pair: RedisPair, hypervisor: redis.Redis, clock: FakeClock, monkeypatch: pytest.MonkeyPatch) -> Services:
    """The API function and the passes on the pair's endpoint, waiting for a replica as in AWS
    (``SYNCED_ACK_WAIT_MS``: at 100 ms a late ack through the link answered POST /token 503 at
    load ~20); the dummy hypervisor on a Redis no failover touches, as vCenter."""
    return serve(service_on(pair, CONFIG, hypervisor, clock), monkeypatch)


def reconcile(services: Services, clock: FakeClock) -> None:
    pool = services.pool(POOL)
    assert pool is not None
    reconcile_pool(services.store, services.provider("dummy"), pool, services.clock, services.config.service)
    clock.advance(1)


def listed(token: str) -> list[str]:
    status, answer = call("GET", "/api/v3/token/{token}", f"/api/v3/token/{token}", params={"token": token})
    assert status == 200, answer
    return list(answer[token]["vms"]["running"])


def vm_state(host: str) -> tuple[int, Any]:
    status, answer = call("GET", "/api/v3/vm/{name}", f"/api/v3/vm/{host}", params={"name": host})
    return status, answer.get(host, {}).get("state") if status == 200 else answer


def test_the_vms_a_token_lists_are_there_after_a_failover_that_lost_their_delivery(
        redis_pair: RedisPair, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch) -> None:
    clock = FakeClock(1_700_000_000.0)
    services = serving_on(redis_pair, redis_client, clock, monkeypatch)
    status, answer = call("POST", "/api/v3/token", "/api/v3/token", headers=BASIC)
    assert status == 200, answer
    token = answer["token"]
    status, answer = call("POST", "/api/v3/ondemandvm", "/api/v3/ondemandvm", body={POOL: 2},
                          headers={"X-AUTH-TOKEN": token})
    assert status == 201, answer
    request_id = answer["request_id"]
    redis_pair.wait_synced()

    redis_pair.link.hold()  # the replica stops receiving: the deliveries below are on the primary only
    waiting_for_a_replica(services, HELD_ACK_WAIT_MS)
    for _ in range(4):
        reconcile(services, clock)
    assert OnDemandStore(services.store).get(request_id).state == "ready"  # type: ignore[union-attr]
    seen = listed(token)  # the client lists its token's VMs...
    redis_pair.kill_primary_and_promote()

    after = serving_on(redis_pair, redis_client, clock, monkeypatch)
    waiting_for_a_replica(after, HELD_ACK_WAIT_MS)  # the promoted node has no replica to acknowledge
    # ...and acts on them: each one it was shown is there.
    assert {host: vm_state(host) for host in seen if vm_state(host) != (200, "running")} == {}, \
        f"listed under the token, then unknown after the failover: {seen}"
    # The request is built again on the new primary (no replica to wait for): listed once delivered.
    for _ in range(6):
        reconcile(after, clock)
    status, answer = call("GET", "/api/v3/ondemandvm/{name}", f"/api/v3/ondemandvm/{request_id}",
                          params={"name": request_id})
    assert status == 200, answer
    delivered = answer[POOL]["hostname"]
    assert sorted([delivered] if isinstance(delivered, str) else delivered) == sorted(listed(token))


def test_a_delivered_vm_is_listed_under_its_token_once_a_replica_has_it(
        redis_pair: RedisPair, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch) -> None:
    clock = FakeClock(1_700_000_000.0)
    services = serving_on(redis_pair, redis_client, clock, monkeypatch)
    token = call("POST", "/api/v3/token", "/api/v3/token", headers=BASIC)[1]["token"]
    status, answer = call("POST", "/api/v3/ondemandvm", "/api/v3/ondemandvm", body={POOL: 1},
                          headers={"X-AUTH-TOKEN": token})
    assert status == 201, answer
    redis_pair.link.hold()
    waiting_for_a_replica(services, HELD_ACK_WAIT_MS)
    for _ in range(4):
        reconcile(services, clock)
    assert listed(token) == []  # delivered on the primary only
    redis_pair.link.release()
    redis_pair.wait_synced()
    waiting_for_a_replica(services, SYNCED_ACK_WAIT_MS)
    (host,) = listed(token)
    assert vm_state(host) == (200, "running")
