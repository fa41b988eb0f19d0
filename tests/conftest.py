"""Fixtures shared by every test: a real redis-server, a fake clock."""

from __future__ import annotations

from typing import Iterator

import pytest
import redis

from chalicelib.clock import FakeClock
from local.redis_server import RedisServer
from tests.redis_pair import RedisPair
from tests.redis_pair import redis_pair as redis_pair_of_servers


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """One real redis-server for the whole test session, on a free port."""
    with RedisServer() as server:
        yield server


@pytest.fixture
def redis_client(redis_server: RedisServer) -> Iterator[redis.Redis]:
    """A client on an empty database."""
    client = redis.Redis(port=redis_server.port, decode_responses=True)
    client.flushall()
    yield client
    client.close()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def redis_pair() -> Iterator[RedisPair]:
    """A real primary + replica of redis-server behind an endpoint clients connect to (a new
    pair per test: failover tests leave it swapped or killed). See tests/redis_pair.py."""
    yield from redis_pair_of_servers()
