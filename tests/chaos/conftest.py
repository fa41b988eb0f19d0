"""Fixtures of the chaos tests: ``make_fleet()`` (fleet.py)."""

from __future__ import annotations

import pytest

from chalicelib.config import parse
from tests.chaos.fleet import CONFIG, Fleet, FleetFactory
from tests.harness import HarnessFactory


@pytest.fixture
def make_fleet(make_harness: HarnessFactory) -> FleetFactory:
    def make() -> Fleet:
        world = make_harness(parse(CONFIG))
        return Fleet(world.services, world)

    return make

