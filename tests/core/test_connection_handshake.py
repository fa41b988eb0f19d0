"""A new connection of the service's Redis client costs as few round trips as it can: no CLIENT
SETINFO (two round trips, each refused by Redis before 7.2, counted in its error statistics) and
no CLIENT MAINT_NOTIFICATIONS (Redis Enterprise's maintenance pushes, refused elsewhere). Where a
handshake counts most: a Lambda's cold start, the reconnect after a failover, the spare
connection a checkout holds for its confirmation (docs/reliability.md)."""

from __future__ import annotations

import redis

from chalicelib.config import RedisConfig
from local.redis_server import RedisServer
from tests.support import RedisRoundTrips, production_client


def test_a_new_connection_sends_no_command_redis_refuses_and_no_client_metadata(
        redis_server: RedisServer, redis_client: redis.Redis) -> None:
    redis_client.config_resetstat()
    client = production_client(RedisConfig(), redis_server.port)
    with RedisRoundTrips() as round_trips:
        assert client.ping()
    client.close()
    errors = redis_client.info("errorstats")
    assert errors == {}, errors  # before: ERR unknown subcommand 'SETINFO', 'MAINT_NOTIFICATIONS'
    # Connect, the protocol's HELLO, the PING itself: before, 3 more (SETINFO x2, MAINT_NOTIFICATIONS).
    assert round_trips.count <= 3, round_trips.count
