"""The clones in flight that task_limit counts are kept in their own set (keys.pool_clones), so a
reservation does not read every pool's clones (lua/reserve_clones.lua). A count that went wrong
(the set lost, an update some path missed) holds or frees slots only until the next reservation,
which repairs it: these tests break the set by hand the ways it could break and check the slots
a reservation then gives."""

from __future__ import annotations

import redis

from chalicelib.store import Store

TEMPLATE, DOMAIN = "tmpl", "example.com"


def reserve(store: Store, pool: str, size: int, task_limit: int, count: int, now: float) -> list[str]:
    """Reserve up to ``count`` new clones of ``pool`` (named <pool>-<time>-<n>)."""
    candidates = [f"{pool}-{int(now)}-{n}" for n in range(count)]
    return store.reserve_clones(pool, size, task_limit, TEMPLATE, DOMAIN, candidates, now)


def test_the_count_lost_with_its_mark_is_rebuilt_from_the_cloning_set(redis_client: redis.Redis) -> None:
    """A new deployment, or the key lost: the other pool's clones still hold their slots."""
    store = Store(redis_client)
    assert len(reserve(store, "beta", 3, 10, 3, 100.0)) == 3
    redis_client.delete(store.keys.pool_clones, store.keys.pool_clones_counted)

    # task_limit 4 less beta's 3 clones in flight: 1 (alpha's fair share, 2, if they were forgotten)
    assert len(reserve(store, "alpha", 10, 4, 10, 110.0)) == 1
    assert redis_client.zcard(store.keys.pool_clones) == 4 and redis_client.exists(store.keys.pool_clones_counted)


def test_a_clone_some_path_missed_is_counted_again_by_its_pools_next_reservation(redis_client: redis.Redis) -> None:
    """A pool clone still cloning but missing from the count: the pool's own reservation finds it
    among its pending VMs, so it cannot take more than its slots."""
    store = Store(redis_client)
    assert len(reserve(store, "alpha", 10, 4, 10, 100.0)) == 4
    redis_client.zrem(store.keys.pool_clones, "alpha-100-0", "alpha-100-1")

    assert reserve(store, "alpha", 10, 5, 10, 110.0) == ["alpha-110-0"]  # 5 less the 4 cloning
    assert redis_client.zcard(store.keys.pool_clones) == 5


def test_a_slot_held_after_its_clone_left_is_given_back_by_the_next_reservation(redis_client: redis.Redis) -> None:
    """A clone that left the cloning set by a path that missed the count: whichever pool reserves
    next drops it (the oldest end of the set), so its slot is not held for ever."""
    store = Store(redis_client)
    assert len(reserve(store, "beta", 2, 10, 2, 100.0)) == 2
    redis_client.zrem(store.keys.cloning, "beta-100-0", "beta-100-1")  # done, the count not told
    store.withdraw_clone_demand("beta")  # full: it claims no share

    assert len(reserve(store, "alpha", 10, 3, 10, 110.0)) == 3  # the whole limit: beta clones nothing
    assert set(redis_client.zrange(store.keys.pool_clones, 0, -1)) == {f"alpha-110-{n}" for n in range(3)}


def test_a_stale_slot_behind_a_live_clone_is_given_back_by_its_pools_next_reservation(
        redis_client: redis.Redis) -> None:
    """A stale entry behind an older clone still running is not at the oldest end; its own pool's
    next reservation finds it among its pending VMs."""
    store = Store(redis_client)
    assert len(reserve(store, "alpha", 1, 10, 1, 50.0)) == 1  # the oldest clone, still running
    assert len(reserve(store, "beta", 3, 10, 1, 100.0)) == 1
    redis_client.zrem(store.keys.cloning, "beta-100-0")  # done, the count not told

    assert len(reserve(store, "beta", 3, 2, 10, 110.0)) == 1  # task_limit 2 less alpha's 1 cloning
    assert set(redis_client.zrange(store.keys.pool_clones, 0, -1)) == {"alpha-50-0", "beta-110-0"}


def test_finishing_moving_and_ending_clones_free_their_slots_at_once(redis_client: redis.Redis) -> None:
    """The count follows the cloning set through every script that takes a VM out of it."""
    store = Store(redis_client)
    hosts = reserve(store, "alpha", 4, 10, 4, 100.0)
    store.finish_clones(hosts[:1], 110.0)
    assert store.move(hosts[1], "alpha", "pending", "completed", 111.0)  # a clone failed, say
    assert store.move_many("alpha", "pending", "ready", 112.0, {hosts[2]: {"ip": "10.0.0.2"}}) == [hosts[2]]

    assert redis_client.zrange(store.keys.pool_clones, 0, -1) == [hosts[3]]
    assert redis_client.zrange(store.keys.cloning, 0, -1) == [hosts[3]]


def test_a_pools_clones_held_in_completed_count_in_its_fair_share(redis_client: redis.Redis) -> None:
    """alpha's 6 clones drained mid-clone (held in completed) and beta both short under
    task_limit 10: the 4 free slots go to beta (5 each, alpha already using 6), not to alpha
    because it asked first (before, its share ignored the held ones: it took all 4)."""
    store = Store(redis_client)
    alpha = reserve(store, "alpha", 6, 10, 6, 100.0)
    beta = reserve(store, "beta", 10, 10, 10, 100.0)
    assert (len(alpha), len(beta)) == (6, 4)
    assert store.mark_clones_asked("alpha", alpha, 101.0) == alpha  # their clones asked of vCenter
    for hostname in alpha:  # a template change drains them while vCenter still clones them
        assert store.move(hostname, "alpha", "pending", "completed", 110.0, hold_clone=True)
    store.finish_clones(beta, 110.0)
    assert store.move_many("beta", "pending", "ready", 110.0, {host: {} for host in beta}) == beta
    assert reserve(store, "alpha", 6, 10, 6, 120.0) == []
    assert len(reserve(store, "beta", 10, 10, 10, 120.0)) == 4
    assert store.cloning_count() == 10
