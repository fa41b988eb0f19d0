"""A warm API process with a single pooled connection (a Lambda's first requests) on a slow link
to Redis (each chunk 100 ms on its way, either way: a round trip of 200 ms), checkouts waiting for
a replica (AWS's default). A checkout is the caller's once confirmed within ``socket_timeout`` of
its script (``confirm_window``, Redis's clock); past it the API answers 503. The confirmation
needed a second connection (the first held aside for the release written should the wait be cut
short), and opened it inside that window: 5 handshake round trips, 1 s more here, so the process's
first checkout was refused though Redis and its replica were well (found by running
test_failover_stale_endpoint.py through a 150 ms/chunk delay: its first checkout got that 503).
That connection is now taken before the script. No timed assert: the 503 is the product's answer
to the chunks it sent inside the window (12 of 100 ms before the confirmation ran, 2 now, against 1 s)."""

from __future__ import annotations

from chalicelib.services import Services
from tests.chaos.lambda_api import check_out, dummy_config, fill, hostname, serving_fixture
from tests.redis_pair import RedisPair

POOL = "slow"
api = serving_fixture(dummy_config("socket_timeout: 1.0, replica_ack_timeout: 500", [POOL], 2))


def test_the_first_checkout_of_a_process_on_a_slow_link_is_confirmed(redis_pair: RedisPair, api: Services) -> None:
    fill(api, POOL)
    redis_pair.wait_synced()
    api.store.scripts.confirm.load_into(api.client)  # a script Redis already has: no NOSCRIPT round trips
    assert api.client.connection_pool._created_connections == 1  # a process that served one request at a time
    redis_pair.endpoint.delay = 0.1
    status, answer = check_out(POOL)
    assert status == 200, answer  # before: 503 "the state store is unavailable, try again shortly"
    redis_pair.endpoint.delay = 0.0
    primary = RedisPair.client(redis_pair.primary)
    try:
        record = primary.hgetall(f"vmpool:vm:{hostname(answer, POOL)}")
    finally:
        primary.close()
    assert record["state"] == "running" and "confirm_by" not in record, record  # confirmed: the caller's


def test_the_first_checkout_after_a_failover_on_a_slow_link_is_confirmed(redis_pair: RedisPair, api: Services) -> None:
    """After a failover the new primary lacks the scripts (loaded scripts are not replicated): its
    first ``EVALSHA`` of the confirmation answers ``NOSCRIPT`` inside the confirm window. Loading
    it then running it again cost 2 round trips there (7 chunks of 170 ms before the confirmation
    ran, past the 1 s window: a 503 "try again" with Redis and its replica well); the script's
    text sent once by ``EVAL`` costs 1 (5 chunks)."""
    fill(api, POOL)
    redis_pair.wait_synced()
    api.store.scripts.confirm.load_into(api.client)
    redis_pair.swap_with_replicaof()
    redis_pair.wait_synced()
    primary = RedisPair.client(redis_pair.primary)
    try:
        assert primary.script_exists(api.store.scripts.confirm.sha) == [False]  # as ElastiCache's new primary
        redis_pair.endpoint.delay = 0.17
        status, answer = check_out(POOL)
        redis_pair.endpoint.delay = 0.0
        assert status == 200, answer  # before: 503 "the state store is unavailable, try again shortly"
        record = primary.hgetall(f"vmpool:vm:{hostname(answer, POOL)}")
    finally:
        primary.close()
    assert record["state"] == "running" and "confirm_by" not in record, record
