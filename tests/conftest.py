"""Fixtures shared by every test: a real redis-server, a fake clock."""

from __future__ import annotations

from typing import Iterator

import pytest
import redis

from chalicelib.clock import FakeClock
from local.redis_server import RedisServer


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
