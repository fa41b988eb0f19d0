"""Fixtures for the API tests: the app wired to a real Redis and a fake clock (see client.py)."""

from __future__ import annotations

from typing import Any, Callable, Iterator

import pytest
import redis

import app
from chalicelib.clock import FakeClock
from chalicelib.config import parse
from tests.api.client import CONFIG_YAML, ApiClient, SpecOperations, Stack, load_spec


@pytest.fixture(scope="session")
def spec() -> dict[str, Any]:
    return load_spec()


@pytest.fixture(scope="session")
def operations(spec: dict[str, Any]) -> SpecOperations:
    return SpecOperations(spec)


@pytest.fixture
def make_stack(
    redis_client: redis.Redis, clock: FakeClock, operations: SpecOperations
) -> Iterator[Callable[[str], Stack]]:
    """Build a Stack from config YAML and install it as the app's services (restored after)."""
    saved = app._services

    def make(config_yaml: str = CONFIG_YAML) -> Stack:
        stack = Stack(parse(config_yaml), redis_client, clock, ApiClient(operations))
        app._services = stack.services
        return stack

    yield make
    app._services = saved


@pytest.fixture
def stack(make_stack: Callable[[str], Stack]) -> Stack:
    """The default config, pools empty."""
    return make_stack(CONFIG_YAML)


@pytest.fixture
def full(stack: Stack) -> Stack:
    """The default config with every pool full of ready VMs."""
    stack.fill()
    return stack


@pytest.fixture
def api(stack: Stack) -> ApiClient:
    return stack.api
