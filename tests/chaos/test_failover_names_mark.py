"""The names mark (manager/names.py, ``Keys.names_known``) across a failover that loses only the
latest writes: the mark, set long before, survives on the promoted replica while the records of
the clones the lost passes started are gone, their VMs still in their pools' folders.

What must hold: no clone takes the name of a VM the provider has in another pool's folder, and
no pool is stuck (each fills again; the VMs nobody knows are destroyed). The dummy hypervisor
keeps its VMs on another Redis, as vCenter keeps its own, so they survive the failover.
"""

from __future__ import annotations

import pytest
import redis

from chalicelib.clock import FakeClock
from chalicelib.manager import clones
from chalicelib.manager.hostnames import random_name
from chalicelib.manager.reconcile import PassReport, reconcile_pool
from chalicelib.services import Services
from chalicelib.store import CheckoutRequest
from tests.chaos import lambda_api
from tests.chaos.lambda_api import HELD_ACK_WAIT_MS, SYNCED_ACK_WAIT_MS, waiting_for_a_replica
from tests.redis_pair import RedisPair

CONFIG = f"""
:config: {{task_limit: 10, vm_lifetime: 1}}
:redis: {{socket_timeout: 10.0, replica_ack_timeout: {SYNCED_ACK_WAIT_MS}}}
:providers:
  :dummy: {{createvm_max_time: 0, boot_time: 0, destroyvm_max_time: 0}}
:pools:
  - {{name: a, size: 1, provider: dummy, folder: f/a}}
  - {{name: b, size: 1, provider: dummy, folder: f/b}}
"""
WORD = "bold-comet"


def service_on(pair: RedisPair, hypervisor: redis.Redis, clock: FakeClock) -> Services:
    return lambda_api.service_on(pair, CONFIG, hypervisor, clock)


def reconcile(services: Services, pool_name: str) -> PassReport:
    pool = services.pool(pool_name)
    assert pool is not None
    return reconcile_pool(services.store, services.provider("dummy"), pool, services.clock, services.config.service,
                          fleet=lambda: services.config.pools)  # as the runner passes it


def folders_holding(services: Services, name: str) -> list[str]:
    folders = []
    for pool_name in ("a", "b"):
        pool = services.pool(pool_name)
        assert pool is not None
        if name in {vm.name for vm in services.provider("dummy").list_vms(pool)}:
            folders.append(pool_name)
    return folders


def check_out(services: Services, pool: str) -> str:
    result = services.store.checkout([CheckoutRequest(pool, [pool], 1)], services.clock.now(), {"lifetime": "1"})
    assert result.ok, result
    return result.vms[0].hostname


def test_a_word_name_whose_clone_record_a_failover_lost_is_not_cloned_again_in_another_pool(
        redis_pair: RedisPair, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch) -> None:
    """Pool a's pass clones WORD while the replica is cut off; the primary dies; the promoted
    replica has the names mark (set at the first pass) but not WORD's record. Pool b's pass, run
    first, must not clone a second WORD while a's is still in its folder."""
    services = service_on(redis_pair, redis_client, FakeClock())
    for _ in range(3):
        for pool in ("a", "b"):
            reconcile(services, pool)
    in_use = {check_out(services, "a"), check_out(services, "b")}  # both pools need a clone
    redis_pair.wait_synced()
    redis_pair.link.hold()
    waiting_for_a_replica(services, HELD_ACK_WAIT_MS)  # no acknowledgement can come

    def word_first(count: int, prefix: str = "") -> list[str]:
        return [WORD, *(random_name(prefix) for _ in range(2 * count))]

    monkeypatch.setattr(clones, "candidate_names", word_first)
    services.clock.advance(5)
    reconcile(services, "a")
    assert folders_holding(services, WORD) == ["a"]
    redis_pair.kill_primary_and_promote()  # the replica never received a's clone of WORD

    after = service_on(redis_pair, redis_client, services.clock)
    waiting_for_a_replica(after, HELD_ACK_WAIT_MS)  # the promoted node has no replica to acknowledge
    for _ in range(4):
        services.clock.advance(5)
        for pool in ("b", "a"):
            reconcile(after, pool)
            assert len(folders_holding(after, WORD)) <= 1, f"two VMs named {WORD}: {folders_holding(after, WORD)}"
    counts = after.store.counts(["a", "b"])
    assert counts["a"]["ready"] == 1 and counts["b"]["ready"] == 1, counts  # neither pool stuck
    assert {host for pool in ("a", "b") for host in after.store.hostnames(pool, "running")} == in_use
