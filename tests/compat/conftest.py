"""Fixtures for the compatibility checks (tests/compat/pooler.py says what they are)."""

from __future__ import annotations

from typing import Any

import pytest

from chalicelib.config import build
from tests.compat.pooler import PoolerFactory
from tests.harness import Harness, HarnessFactory


@pytest.fixture
def make_pooler(make_harness: HarnessFactory) -> PoolerFactory:
    """``make_pooler(document, fill=True)``: the service for a config document
    (``pooler.pooler_document``), requests sent as JSON, each pool filled to its size with ready
    VMs unless ``fill`` is False."""

    def make(document: dict[str, Any], fill: bool = True) -> Harness:
        harness = make_harness(build(document), headers={"Content-Type": "application/json"})
        if fill:
            harness.fill(rounds=20)
        return harness

    return make
