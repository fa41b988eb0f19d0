"""The failover fixture itself (tests/redis_pair.py): after each way the roles swap, holding the
replication link still lags the replica. Before, the demoted node replicated straight from the
new primary, so ``link.hold`` after a swap held nothing (the failover audit's ``lagkill`` after a
``swap`` lost no write, and a test of lost writes run after a swap could not fail)."""

from __future__ import annotations

import pytest

from tests.redis_pair import RedisPair
from tests.support import eventually

SWAPS = {
    "swap": lambda pair: pair.swap_with_replicaof(),
    "failover": lambda pair: pair.fail_over(),
    "stoppromote": lambda pair: pair.stop_primary_and_promote(0.4, demote_after=0.2),
}


@pytest.mark.parametrize("swap", list(SWAPS))
def test_holding_the_link_after_a_swap_keeps_writes_from_the_replica(redis_pair: RedisPair, swap: str) -> None:
    SWAPS[swap](redis_pair)
    redis_pair.wait_synced()
    primary, replica = RedisPair.client(redis_pair.primary), RedisPair.client(redis_pair.replica)
    try:
        redis_pair.link.hold()
        primary.set("lagged", "1")
        assert primary.wait(1, 300) == 0, "a replica acknowledged a write while its link was held"
        assert replica.get("lagged") is None, "the replica had a write sent while its link was held"
        redis_pair.link.release()
        eventually(lambda: replica.get("lagged") == "1", 10, "the replica to catch up once released")
    finally:
        primary.close()
        replica.close()
