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

import time

import pytest
import redis

from chalicelib.clock import FakeClock
from chalicelib.manager.reconcile import reconcile_pool
from chalicelib.services import Services
from tests.chaos.lambda_api import (
    assert_still_checked_out,
    check_out,
    dummy_config,
    hold_connections,
    hostname,
    service_on,
    serving_fixture,
)
from tests.redis_pair import RedisPair

POOL = "part"
GRACE = 1
CONFIG = dummy_config(f"socket_timeout: 5.0, replica_ack_timeout: 300, replica_loss_grace: {GRACE}", [POOL], 4)

api = serving_fixture(CONFIG)


def test_a_pause_past_the_grace_before_the_promotion_hands_no_vm_out_twice_and_destroys_none_in_use(
        redis_pair: RedisPair, redis_client: redis.Redis, api: Services, monkeypatch: pytest.MonkeyPatch) -> None:
    clock = FakeClock(time.time())
    monkeypatch.setattr(api, "clock", clock)  # one clock for the API and the passes (lifetimes)
    manager = service_on(redis_pair, CONFIG, redis_client, clock)
    provider = api._providers["dummy"] = manager.provider("dummy")
    pool = manager.pool(POOL)
    assert pool is not None

    def run_passes(rounds: int) -> None:
        for _ in range(rounds):
            reconcile_pool(manager.store, provider, pool, clock, manager.config.service)
            clock.advance(1)

    run_passes(4)
    status, answer = check_out(POOL)
    assert status == 200, answer
    held = [hostname(answer, POOL)]
    redis_pair.wait_synced()
    hold_connections(api, 8)  # the process's idle connections reach the old primary

    # Redis paused past its mark's expiry: the partition outlasts the grace.
    redis_pair.stop_primary_and_promote(GRACE + 0.5, demote_after=None)
    resumed, promoted = RedisPair.client(redis_pair.replica), RedisPair.client(redis_pair.primary)
    assert resumed.get(api.store.keys.replicas_seen) is None, "the premise: the mark lapsed on the stopped node"
    resumed.close()

    monkeypatch.setattr(api.store, "_replicas_known_until", 0.0)  # the process's 5 s are up
    answers = [check_out(POOL) for _ in range(4)]
    assert all(status in (200, 503) for status, _ in answers), answers
    held += [hostname(answer, POOL) for status, answer in answers if status == 200]
    assert len(held) == len(set(held)), f"one VM answered to two callers: {held}"
    assert_still_checked_out(promoted, held)

    # The old primary demoted (ElastiCache makes it the new one's replica): what it took alone is gone.
    redis_pair.demote_left_behind()
    run_passes(6)
    in_hypervisor = {vm.name for vm in provider.list_vms(pool)}
    for name in held:
        assert promoted.hget(f"vmpool:vm:{name}", "state") == "running", f"{name}, in use, no longer running"
        assert name in in_hypervisor, f"{name}, in use, was destroyed"
    promoted.close()
    manager.client.close()
