"""An on-demand request answered ready (``GET /ondemandvm/<id>``: 200 with its VMs' hostnames)
while the replica lagged, then a failover that lost the passes that built and delivered them.

The request itself is opened only once a replica has it (tests/chaos/test_failover_lost_writes.py),
but its VMs are reserved, cloned and delivered by passes, whose writes wait for no replica: with
the replication link down, the promoted replica may know nothing of a VM its user was told is
theirs. The hypervisor kept it, so the next passes found it in the pool's folder (discovered) and
destroyed it, in use, while building the request other VMs under other names. Now a ready
request is answered ready only once a replica has its delivery (202 until then).
"""

from __future__ import annotations

from typing import Any

import pytest
import redis

from chalicelib.clock import FakeClock
from chalicelib.services import Services
from chalicelib.store.ondemand import OnDemandStore
from tests.chaos.lambda_api import HELD_ACK_WAIT_MS, SYNCED_ACK_WAIT_MS, call, serve, waiting_for_a_replica
from tests.chaos.test_failover_reconcile import reconcile
from tests.chaos.test_failover_reconcile import service_on as reconcile_service_on
from tests.redis_pair import RedisPair

POOL = "ha"


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(1_700_000_000.0)


def service_on(pair: RedisPair, hypervisor: redis.Redis, clock: FakeClock,
               monkeypatch: pytest.MonkeyPatch) -> Services:
    """A function of the service on the pair's endpoint (tests/chaos/test_failover_reconcile.py's:
    a replica waited for, the dummy hypervisor on a Redis no failover touches), serving the API
    too, its writes waiting ``SYNCED_ACK_WAIT_MS`` for the replica."""
    services = serve(reconcile_service_on(pair, hypervisor, clock), monkeypatch)
    waiting_for_a_replica(services, SYNCED_ACK_WAIT_MS)
    return services


def poll(request_id: str) -> tuple[int, Any]:
    return call("GET", "/api/v3/ondemandvm/{name}", f"/api/v3/ondemandvm/{request_id}",
                params={"name": request_id})


@pytest.fixture
def hypervisor(redis_client: redis.Redis) -> redis.Redis:
    """Where the dummy hypervisor keeps its VMs: a Redis no failover touches, as vCenter."""
    return redis_client


def hostnames(answer: dict[str, Any]) -> set[str]:
    """The VMs a 200 ready answer names (one hostname is a string, several a list)."""
    named = answer[POOL]["hostname"]
    return {named} if isinstance(named, str) else set(named)


def test_vms_answered_ready_to_an_ondemand_request_survive_a_failover_that_lost_their_delivery(
        redis_pair: RedisPair, hypervisor: redis.Redis, clock: FakeClock, monkeypatch: pytest.MonkeyPatch) -> None:
    services = service_on(redis_pair, hypervisor, clock, monkeypatch)
    for _ in range(3):  # the pool full, every write on the replica
        reconcile(services)
        clock.advance(1)
    status, answer = call("POST", "/api/v3/ondemandvm", "/api/v3/ondemandvm", body={POOL: 3})
    assert status == 201, answer
    request_id = answer["request_id"]
    redis_pair.wait_synced()

    redis_pair.link.hold()  # the replica stops receiving: the passes below are on the primary only
    waiting_for_a_replica(services, HELD_ACK_WAIT_MS)
    told: set[str] = set()
    for _ in range(4):
        reconcile(services)
        clock.advance(1)
        status, answer = poll(request_id)
        assert status in (200, 202) and answer["ok"] is True, answer
        if status == 200:
            told |= hostnames(answer)
    assert OnDemandStore(services.store).get(request_id).state == "ready", "delivered on the primary"  # type: ignore[union-attr]
    redis_pair.kill_primary_and_promote()

    after = service_on(redis_pair, hypervisor, clock, monkeypatch)
    for _ in range(6):
        reconcile(after)
        clock.advance(100)
    for host in told:
        record = after.store.get_vm(host)
        assert record is not None and record.state == "running", \
            f"{host} was answered ready to request {request_id}, then was {record and record.state} after the failover"
    status, answer = poll(request_id)  # the request served on the new primary: its VMs are there
    assert status == 200 and answer["ready"] is True, answer
    in_folder = set(hypervisor.hkeys(after.provider("dummy")._folder_key(after.pool(POOL))))  # type: ignore[attr-defined,arg-type]
    assert hostnames(answer) <= in_folder and told <= hostnames(answer), (answer, told, in_folder)
