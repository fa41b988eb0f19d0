"""Fixtures of the deployment tests: the dev stage packaged once per session."""

from __future__ import annotations

from typing import Iterator

import boto3
import pytest
from moto_endpoint import moto_endpoint
from packaged import Package, build_package


@pytest.fixture(scope="session")
def package() -> Iterator[Package]:
    yield from build_package()


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch) -> Iterator[boto3.Session]:
    """A moto server as this process's AWS (endpoint, made-up credentials, a region), for tools
    that make their own clients (deploy.py, config-push)."""
    with moto_endpoint() as url:
        for name, value in {"AWS_ENDPOINT_URL": url, "AWS_ACCESS_KEY_ID": "test",
                            "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1"}.items():
            monkeypatch.setenv(name, value)
        monkeypatch.delenv("AWS_PROFILE", raising=False)
        yield boto3.Session()
