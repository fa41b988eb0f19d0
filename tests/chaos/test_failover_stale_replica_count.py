"""Right after the primary is killed and its replica promoted, a process still counts the replica
it looked up before (it looks again every ``REPLICAS_RECHECK_SECONDS``, 5 s). The promoted node
has none yet, so every write of those seconds waited ``replica_ack_timeout`` for a replica that
was not there: every checkout answered 503, and every pool whose lease release the lag kept
from the replica skipped its pass again ("reconcile skipped: no replica acknowledged the
release of a lease", once per pool every 2 s). Now an unacknowledged wait has the next write
look the count up again: the new primary, left alone, waits for no one."""

from __future__ import annotations

import pytest
import redis

from chalicelib.clock import FakeClock
from chalicelib.manager import runner
from chalicelib.services import Services
from tests.chaos.lambda_api import (
    HELD_ACK_WAIT_MS,
    SYNCED_ACK_WAIT_MS,
    check_out,
    dummy_config,
    fill,
    service_on,
    serving_fixture,
    waiting_for_a_replica,
)
from tests.redis_pair import RedisPair

POOLS = [f"p{index}" for index in range(6)]
CONFIG = dummy_config(f"socket_timeout: 10.0, replica_ack_timeout: {SYNCED_ACK_WAIT_MS}", POOLS, 4)


def test_the_pools_whose_lease_releases_the_failover_lost_run_their_passes_right_after_it(
        redis_pair: RedisPair, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch) -> None:
    """Runs release their leases while the replica lags (not acknowledged: carried to the retry);
    the primary killed, the replica promoted. The retries right after run their passes, but for
    the one that finds the primary changed (the release may be on the node left behind). Before:
    every retry of the next 5 s was skipped."""
    services = service_on(redis_pair, CONFIG, redis_client, FakeClock())
    skipped: list[str] = []
    warning = runner.logger.warning
    monkeypatch.setattr(runner.logger, "warning",
                        lambda message, *args, **kwargs: (skipped.append(message), warning(message, *args, **kwargs)))
    for pool in POOLS:
        runner.run_pool(services, pool)
    redis_pair.wait_synced()
    redis_pair.link.hold()  # the replica stops receiving: the runs' releases are on the primary only
    waiting_for_a_replica(services, HELD_ACK_WAIT_MS)
    carried = {pool: runner.run_pool(services, pool).unreleased_lease for pool in POOLS}
    assert all(carried.values()), f"the premise: every release unacknowledged, carried to the retry: {carried}"

    redis_pair.kill_primary_and_promote()
    skipped.clear()
    retries = {pool: runner.run_pool(services, pool, stale_lease=carried[pool]) for pool in POOLS}
    without_a_pass = [pool for pool, report in retries.items() if not report.leased]
    warned = skipped.count("reconcile skipped: no replica acknowledged the release of a lease")
    assert len(without_a_pass) <= 1, (f"{without_a_pass} ran no pass right after the promotion: "
                                      f"{warned} warnings that no replica acknowledged their releases")


api = serving_fixture(CONFIG)


def test_checkouts_right_after_the_promotion_are_served_by_the_new_primary(
        redis_pair: RedisPair, api: Services) -> None:
    """The first checkout after the kill may be a 503 (its wait found no replica); the next is
    served. Before: 503 for every checkout until the process looked its replicas up again."""
    fill(api, POOLS[0], passes=2)
    assert check_out(POOLS[0])[0] == 200  # the process counts the replica
    redis_pair.wait_synced()

    redis_pair.kill_primary_and_promote()
    waiting_for_a_replica(api, HELD_ACK_WAIT_MS)  # the promoted node has no replica to acknowledge
    answers = [check_out(POOLS[0]) for _ in range(3)]
    assert all(status in (200, 503) for status, _ in answers), answers
    assert [status for status, _ in answers][1:] == [200, 200], answers
