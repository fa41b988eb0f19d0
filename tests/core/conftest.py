"""Fixtures for manager and store tests: ``make_world(yaml)``, a Harness (tests/harness.py) of a
config, the store, a seeded dummy provider and a fake clock, on the session's real redis-server."""

from __future__ import annotations

import io
import logging
from typing import Iterator

import pytest

from chalicelib.config import parse
from chalicelib.observability import logger
from tests.harness import Harness, HarnessFactory


@pytest.fixture
def make_world(make_harness: HarnessFactory) -> HarnessFactory:
    def make(yaml_text: str) -> Harness:
        return make_harness(parse(yaml_text))

    return make


@pytest.fixture
def log_output() -> Iterator[io.StringIO]:
    """What the service logs, formatted as in Lambda (Powertools' JSON formatter)."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logger.registered_formatter)
    logger.addHandler(handler)
    yield stream
    logger.removeHandler(handler)
