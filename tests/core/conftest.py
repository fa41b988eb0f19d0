"""Fixtures for manager and store tests: ``make_world(yaml)``, a Harness (tests/harness.py) of a
config, the store, a seeded dummy provider and a fake clock, on the session's real redis-server."""

from __future__ import annotations

import pytest

from chalicelib.config import parse
from tests.harness import Harness, HarnessFactory


@pytest.fixture
def make_world(make_harness: HarnessFactory) -> HarnessFactory:
    def make(yaml_text: str) -> Harness:
        return make_harness(parse(yaml_text))

    return make
