"""Retries of a pool while Redis flaps: a chain of them ends, and the lease they carry is still
released when Redis takes writes again.

Redis refusing writes while it answers reads is real Redis: ``min-replicas-to-write`` with its
replica gone answers every write (scripts' too) ``NOREPLICAS`` at once, and a read-only reply,
an out-of-memory one or a failed save do the same. A config read from a file (the local stack, a
stage without a pushed config) asks Redis only reads before its pass, so each retry of a pool ran
its pass, whose lease the refused release left held: the retry carried it, and a retry carrying a
lease was queued whatever its count. The messages of the chain are driven by hand here (each
taken from the queue and looked at), on a fake clock; Redis is a real redis-server of the test's
own (its CONFIG is changed).
"""

from __future__ import annotations

import io
from typing import Iterator

import pytest
import redis

from chalicelib.clock import FakeClock
from chalicelib.config import parse
from chalicelib.manager.dispatch import LEASE_LEFT, REDIS_KEPT, RELEASE_RETRIES, _look_at_all, handle_batch, look_at
from chalicelib.manager.pool_queue import FOLLOWUP, MAX_RETRIES, RETRY, TICK, PoolMessage
from chalicelib.manager.runner import LEASE_SECONDS
from chalicelib.services import Services
from chalicelib.store import connect
from chalicelib.store.fleet import Fleet
from chalicelib.store.keys import template_lease_name
from local.redis_server import RedisServer
from tests.support import RecordingQueue, json_lines

CONFIG = """\
config: {{task_limit: 10, create_template_delta_disks: true}}
providers:
  dummy: {{provider_class: dummy, seed: 3, createvm_max_time: 30, boot_time: 10}}
pools:
  - {{name: alpha, size: 2, provider: dummy, template: tpl}}
redis: {{server: 127.0.0.1, port: {port}, socket_timeout: 2}}
"""
CHAIN_CAP = 60
"""Messages of a chain driven before the test calls it endless (more than twice what may come)."""


@pytest.fixture
def admin() -> Iterator[redis.Redis]:
    """A client of a redis-server of the test's own (its CONFIG is changed)."""
    with RedisServer() as server, redis.Redis(port=server.port, decode_responses=True) as client:
        yield client


@pytest.fixture
def services(admin: redis.Redis, clock: FakeClock) -> Services:
    config = parse(CONFIG.format(port=admin.connection_pool.connection_kwargs["port"]))
    assert config.generation == 0  # read from a file: no write before a pass
    return Services(config, connect(config.redis), clock=clock)


def refuse_writes(admin: redis.Redis, refused: bool) -> None:
    """Redis answers every write NOREPLICAS (no replica attached) while ``refused``; reads go on."""
    admin.config_set("min-replicas-to-write", 1 if refused else 0)


def refused_from(admin: redis.Redis, step: str) -> object:
    """A checkpoint that makes Redis refuse writes once the pass reaches ``step``: the pass took
    its lease, and its writes and the lease's release are refused."""
    def checkpoint(name: str) -> None:
        if name == step:
            refuse_writes(admin, True)
    return checkpoint


def drive(services: Services, queue: RecordingQueue, clock: FakeClock,
          before_each: object = None) -> list[tuple[PoolMessage, float]]:
    """Look at each message the queue gets, in order, its delay passed on the clock, until none
    comes or ``CHAIN_CAP``; the messages looked at."""
    driven: list[tuple[PoolMessage, float]] = []
    while queue.sent and len(driven) < CHAIN_CAP:
        message, delay = queue.sent.pop(0)
        driven.append((message, delay))
        clock.advance(delay)
        if callable(before_each):
            before_each()
        look_at(services, message, queue)
    return driven


def test_a_chain_of_retries_ends_while_redis_refuses_writes(services: Services, admin: redis.Redis,
                                                            clock: FakeClock, log_output: io.StringIO) -> None:
    """Writes refused from a pass's inventory step on, for good. Before: every retry carried the
    lease its pass could not release and was queued again every 2 s, for as long as Redis
    refused (the test's 60 messages, and on). Now: ``MAX_RETRIES`` retries, then the lease alone is
    retried with delays doubling until Redis has expired it, and one warning says it was left."""
    queue = RecordingQueue()
    report = look_at(services, PoolMessage("alpha", TICK), queue, checkpoint=refused_from(admin, "inventory"))
    assert report is not None and report.unreleased_lease
    lease = report.unreleased_lease
    assert admin.get(services.store.keys.lease("alpha")) == lease  # held: its release was refused

    driven = drive(services, queue, clock)

    assert len(driven) == MAX_RETRIES + RELEASE_RETRIES, [m for m, _ in driven]
    assert all(message.reason == RETRY and message.lease == lease for message, _ in driven)
    tail = [delay for message, delay in driven if message.attempt > MAX_RETRIES]
    assert sum(tail) >= LEASE_SECONDS  # the last try comes once Redis has expired the lease anyway
    assert 0 < admin.pttl(services.store.keys.lease("alpha")) <= LEASE_SECONDS * 1000  # it does expire
    left = [line for line in json_lines(log_output.getvalue()) if line.get("message") == LEASE_LEFT]
    assert [line["names"] for line in left] == [["alpha"]]


def test_a_flap_in_every_pass_ends_with_the_lease_released(services: Services, admin: redis.Redis,
                                                           clock: FakeClock) -> None:
    """Redis takes writes again as each retry arrives and refuses them again once its pass is at
    its inventory: each pass's own lease is left held. Before: a chain without end, each retry's
    pass leaving a new lease. Now: past ``MAX_RETRIES`` a retry releases the lease and runs no
    pass; nothing holds the pool, and the next tick refills it."""
    queue = RecordingQueue()
    flapping = refused_from(admin, "inventory")
    look_at(services, PoolMessage("alpha", TICK), queue, checkpoint=flapping)

    def writes_back() -> None:
        refuse_writes(admin, False)

    driven: list[tuple[PoolMessage, float]] = []
    while queue.sent and len(driven) < CHAIN_CAP:
        message, delay = queue.sent.pop(0)
        driven.append((message, delay))
        clock.advance(delay)
        writes_back()
        look_at(services, message, queue, checkpoint=flapping)

    assert len(driven) == MAX_RETRIES + 1, [m for m, _ in driven]
    refuse_writes(admin, False)
    assert not admin.exists(services.store.keys.lease("alpha"))  # released, not left for a minute
    tick = look_at(services, PoolMessage("alpha", TICK), queue)
    assert tick is not None and tick.leased and not tick.failures
    assert services.store.counts(["alpha"])["alpha"]["pending"] == 2


def test_a_batch_releases_the_template_leases_of_a_lease_another_message_carries(
        services: Services, admin: redis.Redis) -> None:
    """A follow-up and a retry carrying a stalled run's lease in one batch: the follow-up's run is
    the batch's. The stalled run's template lease (taken with its token) held the pool's clones
    until it expired: the retry's lease was released, not the template leases taken with it."""
    stalled = "host:1@x:abcdef"
    admin.set(services.store.keys.lease("alpha"), stalled, px=int(LEASE_SECONDS * 1000))
    template_lease = services.store.keys.lease(template_lease_name("dummy", "tpl"))
    admin.set(template_lease, stalled, px=int(LEASE_SECONDS * 1000))
    mark = "m1"
    assert Fleet(services.store).claim_followup("alpha", 60, mark)
    queue = RecordingQueue()

    _look_at_all(services, [PoolMessage("alpha", FOLLOWUP, mark=mark), PoolMessage("alpha", RETRY, stalled, 1)],
                 queue, budget=0.0, out_of_time=lambda: False)

    assert not admin.exists(template_lease)
    assert not admin.exists(services.store.keys.lease("alpha"))
    assert services.store.counts(["alpha"])["alpha"]["pending"] == 2  # the pool cloned in that run


def test_a_batch_of_lease_releases_redis_failed_is_one_warning(closed_port: int, log_output: io.StringIO) -> None:
    """Ten pools' retries carrying a lease, on their first delivery, with Redis refusing
    connections: each goes back to the queue (to release its lease once Redis is back). Before,
    one warning a pool: every pool whose pass an outage caught, a line each at once. Now the
    first is said and the rest counted in the window's summary."""
    pools = "".join(f"  - {{name: p{n}, size: 1, provider: dummy}}\n" for n in range(10))
    config = parse("providers:\n  dummy: {provider_class: dummy}\npools:\n" + pools
                   + f"redis: {{server: 127.0.0.1, port: {closed_port}, socket_timeout: 0.2}}\n")
    services = Services(config, connect(config.redis), clock=FakeClock())
    records = [(f"m{n}", PoolMessage(f"p{n}", RETRY, "host:1@x:ab", 1).body()) for n in range(10)]

    failed = handle_batch(services, records, RecordingQueue(), lambda: 60.0, {f"m{n}": 1 for n in range(10)})

    assert sorted(failed) == sorted(f"m{n}" for n in range(10))  # every lease comes back to be released
    problems = [line for line in json_lines(log_output.getvalue()) if line["level"] == "WARNING"]
    assert [line["message"] for line in problems] == [REDIS_KEPT]
