"""Fixtures of the deployment tests: the dev stage packaged once per session."""

from __future__ import annotations

from typing import Iterator

import pytest
from packaged import Package, build_package


@pytest.fixture(scope="session")
def package() -> Iterator[Package]:
    yield from build_package()
