"""The local scheduler (local/scheduler.py: the tick, the nudge listener, the reconcile workers)
as an entry point across a failover (tests/chaos/test_failover_entry_points.py has the Lambdas'):
its connections still reach the demoted node, and its nudge listener was blocked in ``BLPOP``
there, which the demotion answers ``UNBLOCKED`` (not ``READONLY``, so no failover is noticed by
it) before closing the connection. Checkouts on the new primary after the swap are refilled by
the nudges they push, without a restart and long before the next tick. Nothing found: fails when
the listener gives up on an error instead of listening again."""

from __future__ import annotations

import pytest

from chalicelib.store import Store
from local.scheduler import LocalScheduler
from tests.chaos.lambda_api import check_out, lambda_services, serve
from tests.redis_pair import RedisPair
from tests.support import eventually

POOL = "ha"
SIZE = 3
CONFIG = f"""
:redis: {{socket_timeout: 1.0}}
:providers:
  :dummy: {{createvm_max_time: 0, boot_time: 0}}
:pools:
  - {{name: {POOL}, size: {SIZE}, provider: dummy}}
"""


def ready_on_primary(pair: RedisPair) -> int:
    store = Store(RedisPair.client(pair.primary))
    try:
        return int(store.counts([POOL])[POOL]["ready"])
    finally:
        store.client.close()


def blocked_on_primary(pair: RedisPair) -> int:
    primary = RedisPair.client(pair.primary)
    try:
        return int(primary.info("clients")["blocked_clients"])
    finally:
        primary.close()


def test_the_local_scheduler_refills_after_a_swap_without_a_restart(
        redis_pair: RedisPair, monkeypatch: pytest.MonkeyPatch) -> None:
    # One tick: nudges after.
    scheduler = LocalScheduler(lambda_services(redis_pair, CONFIG, replica_acks=0), interval_seconds=600)
    serve(lambda_services(redis_pair, CONFIG, replica_acks=0), monkeypatch)
    scheduler.start()
    try:
        eventually(lambda: ready_on_primary(redis_pair) == SIZE, 20, "the pool full")
        # The nudge listener blocked in BLPOP on the primary (its thread's own doing: waited for,
        # not slept for).
        eventually(lambda: blocked_on_primary(redis_pair) >= 1, 20, "the nudge listener blocked in BLPOP",
                   interval=0.01)
        redis_pair.wait_synced()
        redis_pair.swap_with_replicaof()
        for _ in range(2):
            assert check_out(POOL)[0] == 200
        eventually(lambda: ready_on_primary(redis_pair) == SIZE, 10, "the pool refilled on the new primary")
    finally:
        scheduler.stop(timeout=30)
