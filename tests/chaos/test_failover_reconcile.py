"""The reconcile side across a failover that loses writes.

Replication is asynchronous: a primary that dies with its replica behind takes its last writes
with it. A checkout is protected by ``WAIT`` (tests/chaos/test_redis_durability.py); these tests
are about what a reconcile pass does to the hypervisor on the strength of a write the promoted
replica may never have received. The hypervisor keeps its state on another Redis here (as
vCenter keeps its own), so it survives the failover as a real one would.
"""

from __future__ import annotations

import json

import pytest
import redis

from chalicelib.clock import FakeClock
from chalicelib.config import build
from chalicelib.manager.dispatch import look_at
from chalicelib.manager.pool_queue import TICK, PoolMessage
from chalicelib.manager.reconcile import PassReport, reconcile_pool
from chalicelib.services import Services
from chalicelib.store import CheckoutRequest, ReplicaAcks, connect
from chalicelib.store.keys import template_lease_name
from chalicelib.store.vm_tasks import EnqueueResult, VMTaskStore, new_task
from tests.chaos import lambda_api
from tests.chaos.lambda_api import HELD_ACK_WAIT_MS, SYNCED_ACK_WAIT_MS, waiting_for_a_replica
from tests.redis_pair import RedisPair
from tests.support import RecordingQueue
from tests.vsphere.vcsim import VcsimServer, vcsim_document

POOL = "ha"
# socket_timeout: what is held here is the replicas' acknowledgement (replica_ack_timeout), never
# Redis's answer; at 1 s, Redis or the endpoint's threads not run for a second on a loaded machine
# failed a pass with StoreUnavailable (seen at load 18 on 2 cores). replica_ack_timeout: a synced
# replica's wait (SYNCED_ACK_WAIT_MS; at 100 ms a late ack through the link failed a checkout
# or held a pass's destroys); HELD_ACK_WAIT_MS while the link is held or no replica is attached.
CONFIG = f"""
:config: {{task_limit: 10, ready_ttl: 1}}
:redis: {{socket_timeout: 10.0, replica_ack_timeout: {SYNCED_ACK_WAIT_MS}}}
:providers:
  :dummy: {{createvm_max_time: 0, boot_time: 0, destroyvm_max_time: 0}}
:pools:
  - {{name: {POOL}, size: 2, provider: dummy}}
"""


def service_on(pair: RedisPair, hypervisor: redis.Redis, clock: FakeClock) -> Services:
    """One function of the service on the pair's endpoint, waiting for a replica as in AWS
    (``SYNCED_ACK_WAIT_MS``); its dummy hypervisor on ``hypervisor`` (neither replicated nor
    failed over)."""
    return lambda_api.service_on(pair, CONFIG, hypervisor, clock)


def promoted_service_on(pair: RedisPair, hypervisor: redis.Redis, clock: FakeClock) -> Services:
    """``service_on`` after ``kill_primary_and_promote``: the promoted node has no replica to
    acknowledge, so its writes wait ``HELD_ACK_WAIT_MS``."""
    services = service_on(pair, hypervisor, clock)
    waiting_for_a_replica(services, HELD_ACK_WAIT_MS)
    return services


def reconcile(services: Services) -> PassReport:
    pool = services.pool(POOL)
    assert pool is not None
    return reconcile_pool(services.store, services.provider("dummy"), pool, services.clock, services.config.service)


def in_hypervisor(services: Services) -> set[str]:
    pool = services.pool(POOL)
    assert pool is not None
    return {vm.name for vm in services.provider("dummy").list_vms(pool)}


def filled(pair: RedisPair, hypervisor: redis.Redis) -> Services:
    """The pool full, every write on the replica, then the replication link cut (a partition,
    a replica far behind); its writes wait ``HELD_ACK_WAIT_MS`` (``released`` undoes both)."""
    services = service_on(pair, hypervisor, FakeClock())
    for _ in range(3):
        reconcile(services)
    assert services.store.counts([POOL])[POOL]["ready"] == 2
    pair.wait_synced()
    pair.link.hold()
    waiting_for_a_replica(services, HELD_ACK_WAIT_MS)
    return services


def released(pair: RedisPair, services: Services) -> None:
    """The replication link passes writes on again: ``services``' writes wait for the replica
    ``SYNCED_ACK_WAIT_MS``."""
    pair.link.release()
    waiting_for_a_replica(services, SYNCED_ACK_WAIT_MS)


def test_a_vm_destroyed_on_a_write_the_promoted_replica_lost_is_never_handed_out(
        redis_pair: RedisPair, redis_client: redis.Redis) -> None:
    services = filled(redis_pair, redis_client)
    services.clock.advance(120)  # past ready_ttl: the ready VMs leave service, to be destroyed
    for _ in range(3):
        reconcile(services)
    redis_pair.kill_primary_and_promote()  # the replica never received those moves

    api = promoted_service_on(redis_pair, redis_client, services.clock)  # an API function after the failover
    result = api.store.checkout([CheckoutRequest(POOL, [POOL], 1)], services.clock.now(), {"lifetime": "2"})

    assert result.ok
    for vm in result.vms:
        assert vm.hostname in in_hypervisor(services), f"{vm.hostname} was handed out, but a pass had destroyed it"


def test_destroys_held_while_no_replica_acknowledges_go_ahead_once_one_does(
        redis_pair: RedisPair, redis_client: redis.Redis) -> None:
    services = filled(redis_pair, redis_client)
    leaving = set(services.store.pool_snapshot(POOL).hostnames("ready"))
    services.clock.advance(120)
    reconcile(services)  # ready -> completed
    held = reconcile(services)
    assert leaving <= in_hypervisor(services), "destroyed while no replica had the move"
    assert held.errors and held.work_in_flight

    released(redis_pair, services)
    for _ in range(3):
        reconcile(services)

    assert not leaving & in_hypervisor(services)
    assert services.store.counts([POOL])[POOL]["completed"] == 0


def test_a_disk_task_taken_before_a_failover_that_lost_the_take_is_added_once(
        redis_pair: RedisPair, redis_client: redis.Redis) -> None:
    services = filled(redis_pair, redis_client)
    released(redis_pair, services)
    clock, store = services.clock, services.store
    hostname = store.checkout([CheckoutRequest(POOL, [POOL], 1)], clock.now(), {"lifetime": "2"}).vms[0].hostname
    record = store.get_vm(hostname)
    assert record is not None
    queued = VMTaskStore(store).enqueue(record, new_task("disk", clock.now(), size_gb=10), clock.now())
    assert queued is EnqueueResult.QUEUED, queued
    redis_pair.wait_synced()
    redis_pair.link.hold()  # the user's request is on the replica; what the pass does next is not
    waiting_for_a_replica(services, HELD_ACK_WAIT_MS)
    reconcile(services)
    redis_pair.kill_primary_and_promote()

    after = promoted_service_on(redis_pair, redis_client, clock)  # the next reconcile function, on the new primary
    for _ in range(3):
        clock.advance(30)
        reconcile(after)

    pool = after.pool(POOL)
    assert pool is not None
    in_hypervisor = json.loads(redis_client.hget(after.provider("dummy")._folder_key(pool), hostname) or "{}")
    disks = in_hypervisor.get("disks")
    assert disks is not None and len(disks) == 1, f"{hostname} has disks {disks}"


def test_a_lease_released_while_the_replica_lagged_does_not_hold_the_pool_after_the_failover(
        redis_pair: RedisPair, redis_client: redis.Redis) -> None:
    """The pass's lease is on the replica; its release, made while the replica lagged, is not.
    Promoted, the replica holds the pool's lease for a run long over: the next runs must not
    wait for it to expire (a minute with no refill while callers are answered 503)."""
    services = filled(redis_pair, redis_client)
    released(redis_pair, services)
    services.clock.advance(120)  # the ready VMs are due to leave: the pass has work to do

    held: list[str] = []

    def replica_stops_receiving(step: str) -> None:
        if not held:
            redis_pair.wait_synced()  # the replica has the lease...
            redis_pair.link.hold()  # ...and nothing after: the pass's release is on the primary only
            waiting_for_a_replica(services, HELD_ACK_WAIT_MS)
            held.append(step)

    queue = RecordingQueue()
    look_at(services, PoolMessage(POOL, TICK), queue, checkpoint=replica_stops_receiving)
    redis_pair.kill_primary_and_promote()

    after = promoted_service_on(redis_pair, redis_client, services.clock)  # the next function, on the new primary
    messages = [message for message, _ in queue.sent] or [PoolMessage(POOL, TICK)]
    report = look_at(after, messages[0], RecordingQueue())
    assert report is not None and report.leased, f"{messages[0]}: the pool's lease outlived its run"


def test_a_vm_checked_out_after_a_failover_is_not_dropped_by_a_pass_whose_mark_the_failover_lost(
        redis_pair: RedisPair, redis_client: redis.Redis) -> None:
    """A pass believes "gone from the provider" only of a VM not changed since its inventory
    read began (the changes counter's mark). Its mark taken on a primary whose replica lagged,
    the promoted replica's counter is behind it: a VM cloned, made ready and checked out there
    after the failover is stamped below the mark, missing from the pass's older inventory, and
    looked "gone" to it, in use as it is."""
    services = filled(redis_pair, redis_client)
    for _ in range(50):  # other pools' passes and the API during the lag: the counter runs ahead
        services.store.mark_changes()
    clock = services.clock
    clock.advance(61)  # past vm_checktime: the pass compares the whole inventory, as with vSphere
    after = promoted_service_on(redis_pair, redis_client, clock)  # used after the failover below
    checked_out: list[str] = []

    def failover_after_the_inventory(step: str) -> None:
        if step != "inventory" or checked_out:
            return
        redis_pair.kill_primary_and_promote()
        services.store.client.connection_pool.disconnect()  # the pass's next command: the new primary
        # On the new primary: a ready VM checked out, the pool refilled, the new VM checked out too.
        first = after.store.checkout([CheckoutRequest(POOL, [POOL], 2)], clock.now(), {"lifetime": "2"})
        assert first.ok, first
        for _ in range(3):
            reconcile(after)
        second = after.store.checkout([CheckoutRequest(POOL, [POOL], 1)], clock.now(), {"lifetime": "2"})
        assert second.ok, second
        checked_out.extend(vm.hostname for vm in second.vms)

    pool = services.pool(POOL)
    assert pool is not None
    reconcile_pool(services.store, services.provider("dummy"), pool, clock, services.config.service,
                   failover_after_the_inventory)

    assert checked_out
    for hostname in checked_out:
        record = after.store.get_vm(hostname)
        assert record is not None and record.state == "running", \
            f"{hostname}, checked out after the failover, was dropped by a pass that read no inventory with it"


def test_a_template_lease_released_while_the_replica_lagged_does_not_hold_the_preparation_after_the_failover(
        redis_pair: RedisPair, private_vcsim: VcsimServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """A pass takes its template's lease, reads the preparation on and releases it, within its
    template step; the replica has the take, not the release. Promoted, it holds the lease of a
    pass long over, and every pool on the template holds its clones until the lease expires
    (up to a minute), unless the retry that releases the run's pool lease releases it too."""
    document = vcsim_document(private_vcsim, [{"name": POOL, "folder": "vmpool/failover", "size": 1}],
                              service={"create_template_delta_disks": True})
    config = build({**document, "redis": {"socket_timeout": 10.0}})  # outlasting SYNCED_ACK_WAIT_MS, as CONFIG
    clock = FakeClock()

    def function(wait_ms: int) -> Services:
        """One reconcile function on the pair's endpoint, waiting ``wait_ms`` for a replica as in AWS."""
        services = Services(config, connect(config.redis, url=redis_pair.endpoint.url), clock=clock)
        services.store.replica_acks = ReplicaAcks(1, wait_ms)
        return services

    services = function(SYNCED_ACK_WAIT_MS)
    pool = services.pool(POOL)
    assert pool is not None
    lease = template_lease_name(pool.provider, pool.template)
    release = services.store.release_lease
    held: list[str] = []

    def replica_stops_receiving_before(name: str, token: str) -> None:
        if name == lease and not held:
            redis_pair.wait_synced()  # the replica has the template's lease and the preparation...
            redis_pair.link.hold()  # ...and nothing after: the lease's release is on the primary only
            waiting_for_a_replica(services, HELD_ACK_WAIT_MS)
            held.append(token)
        release(name, token)

    monkeypatch.setattr(services.store, "release_lease", replica_stops_receiving_before)
    queue = RecordingQueue()
    look_at(services, PoolMessage(POOL, TICK), queue)
    assert held, "the premise: the pass prepared the template under its lease"
    redis_pair.kill_primary_and_promote()

    after = function(HELD_ACK_WAIT_MS)  # the next function, on the new primary: no replica
    retries = [message for message, _ in queue.sent if message.lease]
    assert retries, "the run's release was not replicated either: its retry releases it"
    look_at(after, retries[0], RecordingQueue())
    assert after.store.lease_tokens([lease]) == {}, \
        "the template's lease outlived its pass: the pools on the template hold their clones until it expires"
