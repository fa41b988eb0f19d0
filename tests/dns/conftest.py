"""DNS fixtures: moto's Route 53 (``route53``); the real BIND 9 server (``bind``) is in tests/conftest.py."""

from __future__ import annotations

from typing import Any, Iterator

import boto3
import pytest
from moto import mock_aws


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
