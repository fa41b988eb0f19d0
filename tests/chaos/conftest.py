"""Fixtures of the chaos tests: ``make_fleet()`` (fleet.py)."""

from __future__ import annotations

import pytest

from tests.chaos.fleet import CONFIG, Fleet, FleetFactory, new_fleet
from tests.harness import HarnessFactory


@pytest.fixture
def make_fleet(make_harness: HarnessFactory) -> FleetFactory:
    def make() -> Fleet:
        return new_fleet(make_harness, CONFIG)

    return make

