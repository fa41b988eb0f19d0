"""Connections a process opens while the endpoint's name still leads to the demoted node after a
failover (DNS not yet updated). Every write there is refused with ``READONLY``, and each refusal
made the client reconnect: the refused command's retry on a fresh connection (which reached the
same node), then every pooled connection again at its next command. Measured with one API
process answering 503s in a loop: 2 connections per checkout, 14,600 a minute, each a TLS
handshake on ElastiCache. Now the client reconnects at most once per
``FAILOVER_RECONNECT_SECONDS`` while the node it reaches still refuses."""

from __future__ import annotations

from chalicelib.services import Services
from chalicelib.store.connection import FAILOVER_RECONNECT_SECONDS
from tests.chaos.lambda_api import check_out, dummy_config, fill, serving_fixture
from tests.redis_pair import RedisPair

POOL = "rc"
CONFIG = dummy_config("socket_timeout: 5.0, replica_ack_timeout: 300", [POOL], 3)

api = serving_fixture(CONFIG)


def test_a_process_behind_a_stale_endpoint_reconnects_once_per_interval_not_per_request(
        redis_pair: RedisPair, api: Services) -> None:
    """40 checkouts refused by the demoted node within one interval open at most 2 connections
    (the first refusal's reconnection and its retry), each interval after at most 2 more; every
    answer a JSON 503 to try again. Before: 2 connections per checkout (80 here)."""
    fill(api, POOL)
    assert check_out(POOL)[0] == 200
    redis_pair.wait_synced()
    epoch, now = api.client.connection_pool.connection_kwargs["failover_epoch"], [100.0]
    epoch.monotonic = lambda: now[0]
    demoted_node = redis_pair.primary
    redis_pair.swap_with_replicaof(move_endpoint=False)  # the name still leads to the demoted node
    demoted = RedisPair.client(demoted_node)
    try:
        def connections_opened() -> int:
            return int(demoted.info("stats")["total_connections_received"])

        opened = []
        for _ in range(3):  # three intervals of the failover
            before = connections_opened()
            answers = [check_out(POOL) for _ in range(40)]
            opened.append(connections_opened() - before)
            assert {status for status, _ in answers} == {503}, answers
            assert all(answer["ok"] is False and "again" in answer["error"] for _, answer in answers), answers
            now[0] += FAILOVER_RECONNECT_SECONDS
        assert max(opened) <= 2, f"connections opened at the demoted node per interval of 40 checkouts: {opened}"
    finally:
        demoted.close()

    redis_pair.endpoint.point_at(redis_pair.primary.port)  # the name updated
    assert check_out(POOL)[0] == 200  # the interval is over: the first refusal reconnects, the retry served
