"""Fixtures for the API tests: the harness (tests/harness.py) with the API tests' config, its
requests sent as JSON."""

from __future__ import annotations

from typing import Any, Callable

import pytest

from chalicelib.config import parse
from tests.api.configs import CONFIG_YAML
from tests.harness import Harness, HarnessFactory, SpecOperations, load_spec


@pytest.fixture(scope="session")
def spec() -> dict[str, Any]:
    return load_spec()


@pytest.fixture(scope="session")
def operations(spec: dict[str, Any]) -> SpecOperations:
    return SpecOperations(spec)


@pytest.fixture
def make_stack(make_harness: HarnessFactory) -> Callable[..., Harness]:
    """A harness of config YAML (the API tests' by default), installed as the app's services."""

    def make(config_yaml: str = CONFIG_YAML) -> Harness:
        return make_harness(parse(config_yaml), headers={"Content-Type": "application/json"})

    return make


@pytest.fixture
def stack(make_stack: Callable[..., Harness]) -> Harness:
    """The default config, pools empty."""
    return make_stack(CONFIG_YAML)


@pytest.fixture
def full(stack: Harness) -> Harness:
    """The default config with every pool full of ready VMs."""
    stack.fill()
    return stack


@pytest.fixture
def api(stack: Harness) -> Harness:
    return stack
