"""A primary cut off from everyone (SIGSTOP: a frozen node, a partition of its zone) for longer
than ``redis.replica_loss_grace`` before its replica is promoted: the mark that holds writes for
a lost replica (``replicas:seen``) lapses on the node while it is stopped, so once resumed, and
until it is demoted, it looks like a primary left alone, which answers without waiting. The
task's "partition of 70 s past the 60 s grace", with the grace configured to 1 s and a real
pause of 1.5 s (Redis itself must be paused past the mark's expiry; the process's own 5 s are
given by setting its look-up due). What must hold: no checkout answered 200 is handed to a
second caller by the new primary, and no VM in use is destroyed by the passes after the old
primary is demoted."""

from __future__ import annotations

import signal
import time
from typing import Iterator

import pytest
import redis

from chalicelib.clock import FakeClock
from chalicelib.config import parse
from chalicelib.manager.reconcile import reconcile_pool
from chalicelib.providers.dummy import DummyProvider
from chalicelib.services import Services
from chalicelib.store import ReplicaAcks, connect
from tests.chaos.lambda_api import call, serving
from tests.chaos.test_failover_resumed_primary import hold_connections
from tests.redis_pair import RedisPair
from tests.support import eventually

POOL = "part"
GRACE = 1
CONFIG = f"""
:redis: {{socket_timeout: 5.0, replica_ack_timeout: 300, replica_loss_grace: {GRACE}}}
:providers:
  :dummy: {{createvm_max_time: 0, boot_time: 0, destroyvm_max_time: 0}}
:pools:
  - {{name: {POOL}, size: 4, provider: dummy}}
"""


@pytest.fixture
def api(redis_pair: RedisPair, monkeypatch: pytest.MonkeyPatch) -> Iterator[Services]:
    """The API function on the pair's endpoint, waiting for a replica as in AWS Lambda."""
    services = serving(redis_pair, monkeypatch, CONFIG)
    yield services
    services.client.close()


def check_out() -> tuple[int, dict]:
    return call("POST", "/api/v3/vm/{name}", f"/api/v3/vm/{POOL}", params={"name": POOL})


def hostname(answer: dict) -> str:
    return str(answer[POOL]["hostname"]).split(".")[0]


def test_a_pause_past_the_grace_before_the_promotion_hands_no_vm_out_twice_and_destroys_none_in_use(
        redis_pair: RedisPair, redis_client: redis.Redis, api: Services, monkeypatch: pytest.MonkeyPatch) -> None:
    config, clock = parse(CONFIG), FakeClock(time.time())
    monkeypatch.setattr(api, "clock", clock)  # one clock for the API and the passes (lifetimes)
    manager = Services(config, connect(config.redis, url=redis_pair.endpoint.url), clock=clock)
    manager.store.replica_acks = ReplicaAcks(1, 300, GRACE)
    provider = DummyProvider(config.providers["dummy"], redis_client, clock, prefix="hypervisor:")
    api._providers["dummy"] = manager._providers["dummy"] = provider
    pool = manager.pool(POOL)
    assert pool is not None

    def run_passes(rounds: int) -> None:
        for _ in range(rounds):
            reconcile_pool(manager.store, provider, pool, clock, manager.config.service)
            clock.advance(1)

    run_passes(4)
    status, answer = check_out()
    assert status == 200, answer
    held = [hostname(answer)]
    redis_pair.wait_synced()
    hold_connections(api, 8)  # the process's idle connections reach the old primary

    old = redis_pair.primary
    assert old.process is not None
    old.process.send_signal(signal.SIGSTOP)
    try:
        promoted = RedisPair.client(redis_pair.replica)
        promoted.execute_command("REPLICAOF", "NO", "ONE")
        redis_pair.endpoint.point_at(redis_pair.replica.port)
        time.sleep(GRACE + 0.5)  # Redis paused past its mark's expiry: the partition outlasts the grace
    finally:
        old.process.send_signal(signal.SIGCONT)
    resumed = RedisPair.client(old)
    eventually(lambda: resumed.info("replication").get("connected_slaves") == 0, 10,
               "the resumed primary to count its replica gone")
    assert resumed.get(api.store.keys.replicas_seen) is None, "the premise: the mark lapsed on the stopped node"

    monkeypatch.setattr(api.store, "_replicas_known_until", 0.0)  # the process's 5 s are up
    answers = [check_out() for _ in range(4)]
    assert all(status in (200, 503) for status, _ in answers), answers
    held += [hostname(answer) for status, answer in answers if status == 200]
    assert len(held) == len(set(held)), f"one VM answered to two callers: {held}"
    for name in held:
        state = promoted.hget(f"vmpool:vm:{name}", "state")
        assert state == "running", f"{name} was answered 200; the new primary has it {state}: the next caller's"

    # The old primary demoted (ElastiCache makes it the new one's replica): what it took alone is gone.
    redis_pair._relink(resumed)
    redis_pair.primary, redis_pair.replica = redis_pair.replica, redis_pair.primary
    resumed.close()
    run_passes(6)
    in_hypervisor = {vm.name for vm in provider.list_vms(pool)}
    for name in held:
        assert promoted.hget(f"vmpool:vm:{name}", "state") == "running", f"{name}, in use, no longer running"
        assert name in in_hypervisor, f"{name}, in use, was destroyed"
    promoted.close()
    manager.client.close()
