"""While no replica acknowledges lease releases (the replica lagging, cut off, or lost within
the grace), every pool's retry skips its pass every ``RETRY_SECONDS`` and said so: one warning
per pool every 2 s ("reconcile skipped: no replica acknowledged the release of a lease"), 30,000
lines a minute at 1,000 pools, hiding everything else. Now one line when the episode begins, a
count at most every ``UNACKNOWLEDGED_RELEASES_LOG_SECONDS``, and one when it ends, with the
count of runs skipped."""

from __future__ import annotations

from typing import Any

import pytest
import redis

from chalicelib.clock import FakeClock
from chalicelib.manager import runner
from tests.chaos.lambda_api import HELD_ACK_WAIT_MS, SYNCED_ACK_WAIT_MS, dummy_config, service_on, waiting_for_a_replica
from tests.redis_pair import RedisPair

POOLS = [f"w{index}" for index in range(5)]
CONFIG = dummy_config(f"socket_timeout: 10.0, replica_ack_timeout: {SYNCED_ACK_WAIT_MS}", POOLS, 2)


def test_runs_skipped_for_unacknowledged_releases_are_logged_once_per_episode_with_their_count(
        redis_pair: RedisPair, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch) -> None:
    """Five pools' retries skipped four rounds, 2 s apart, the replica not receiving: one
    warning, not twenty; the link back, the first run that has its release acknowledged logs
    the episode's end with the 20 runs skipped and the 5 pools."""
    clock = FakeClock()
    services = service_on(redis_pair, CONFIG, redis_client, clock)
    monkeypatch.setattr(runner, "RELEASE_WAITS", runner.ReleaseWaits())
    lines: list[tuple[str, dict[str, Any]]] = []
    warning = runner.logger.warning
    monkeypatch.setattr(runner.logger, "warning", lambda message, *args, **kwargs: (
        lines.append((message, kwargs.get("extra", {}))), warning(message, *args, **kwargs)))
    for pool in POOLS:
        runner.run_pool(services, pool)
    redis_pair.wait_synced()
    redis_pair.link.hold()  # the replica stops receiving: no release is acknowledged
    waiting_for_a_replica(services, HELD_ACK_WAIT_MS)
    carried = {pool: runner.run_pool(services, pool).unreleased_lease for pool in POOLS}
    assert all(carried.values()), carried
    for _ in range(4):
        clock.advance(runner.RETRY_SECONDS)
        for pool in POOLS:
            report = runner.run_pool(services, pool, stale_lease=carried[pool])
            assert not report.leased, "the premise: no pass while no replica acknowledges the release"
    skipped = [extra for message, extra in lines if message == runner.RELEASE_NOT_ACKNOWLEDGED]
    assert len(skipped) == 1, f"{len(skipped)} warnings for 20 skipped runs in 8 s: {skipped}"

    redis_pair.link.release()
    redis_pair.wait_synced()
    waiting_for_a_replica(services, SYNCED_ACK_WAIT_MS)
    clock.advance(runner.RETRY_SECONDS)
    lines.clear()
    for pool in POOLS:
        assert runner.run_pool(services, pool, stale_lease=carried[pool]).leased
    ended = [extra for message, extra in lines if message.startswith("reconcile resumed")]
    assert len(ended) == 1, lines
    assert (ended[0]["runs_skipped"], ended[0]["pools"]) == (20, len(POOLS)), ended
    assert not [message for message, _ in lines if message == runner.RELEASE_NOT_ACKNOWLEDGED]


def test_a_long_episode_logs_its_count_at_most_once_a_minute(monkeypatch: pytest.MonkeyPatch) -> None:
    """Skips for five minutes, one every 2 s per pool of 10: five lines while it lasts (the
    first, then the count so far each minute), and one with the total at its end."""
    lines: list[dict[str, Any]] = []
    monkeypatch.setattr(runner.logger, "warning", lambda message, *args, **kwargs: lines.append(kwargs["extra"]))
    waits, now = runner.ReleaseWaits(), 0.0
    while now < 300.0:
        for pool in range(10):
            waits.skipped(f"p{pool}", now)
        now += runner.RETRY_SECONDS
    assert len(lines) == 5, lines
    assert [line.get("runs_skipped") for line in lines[1:]] == [301, 601, 901, 1201], lines
    waits.acknowledged(now)
    assert (lines[-1]["runs_skipped"], lines[-1]["pools"], lines[-1]["seconds"]) == (1500, 10, 300.0)
