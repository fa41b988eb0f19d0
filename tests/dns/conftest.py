"""DNS fixtures: a real BIND 9 server (``bind``) and moto's Route 53 (``route53``)."""

from __future__ import annotations

from typing import Any, Iterator

import boto3
import pytest
from moto import mock_aws

from tests.dns.bind import BindServer


@pytest.fixture(scope="session")
def bind_session() -> Iterator[BindServer]:
    with BindServer() as server:
        yield server


@pytest.fixture
def bind(bind_session: BindServer) -> Iterator[BindServer]:
    """The session's named, started again if a test stopped it, its zone without the records
    earlier tests left."""
    if bind_session.process is None or bind_session.process.poll() is not None:
        bind_session.start()
    bind_session.clear_records()
    yield bind_session
    if bind_session.process is None:
        bind_session.start()


@pytest.fixture
def route53(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Any, str]]:
    """moto's Route 53 with a private hosted zone ``vms.example.test`` attached to a VPC:
    (the boto3 client, the zone id)."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    with mock_aws():
        vpc = boto3.client("ec2").create_vpc(CidrBlock="10.0.0.0/16")["Vpc"]["VpcId"]
        client = boto3.client("route53")
        zone = client.create_hosted_zone(
            Name="vms.example.test", CallerReference="vmpool-tests",
            HostedZoneConfig={"Comment": "vmpool tests", "PrivateZone": True},
            VPC={"VPCRegion": "us-east-1", "VPCId": vpc},
        )["HostedZone"]["Id"]
        yield client, zone
