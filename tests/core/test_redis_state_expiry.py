"""tests/harness.py's redis_state, which tests compare before and after a refused request."""

from __future__ import annotations

import redis

from tests.harness import redis_state


def test_a_key_in_its_last_half_second_still_counts_as_expiring(redis_client: redis.Redis) -> None:
    # TTL answers 0 for a key with under 500 ms left (this one, 499 ms): redis_state read it as a key that never
    # expires, so a long test saw a key "lose" its expiry that had only come close to it.
    redis_client.set("bounds20:soon", "1", px=499)
    redis_client.set("bounds20:later", "1", ex=60)
    redis_client.set("bounds20:never", "1")
    state = redis_state(redis_client)
    assert [state[key][2] for key in ("bounds20:soon", "bounds20:later", "bounds20:never")] == [True, True, False]
