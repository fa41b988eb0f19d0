"""DNS fixtures: moto's Route 53 (``route53``), a DNS port no server answers on
(``closed_dns_port``), a BIND 9 of the test's own (``policy_bind``); the session's real BIND 9
server (``bind``) is in tests/conftest.py."""

from __future__ import annotations

import socket
from contextlib import ExitStack
from typing import Any, Iterator

import boto3
import pytest
from moto import mock_aws

from tests.dns.bind import BindServer


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


@pytest.fixture
def closed_dns_port() -> Iterator[int]:
    """A loopback port held for the whole test on both DNS transports, where no server answers:
    TCP bound and never listening (connections are refused), UDP bound and never read (queries
    go unanswered). A port of free_port() may be taken by any process of the machine (another
    test's named, say) before the plugin sends, and the test then meets that server instead of
    an outage; the conftest's ``closed_port`` holds TCP only."""
    while True:
        with ExitStack() as held:
            tcp = held.enter_context(socket.socket())
            udp = held.enter_context(socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
            tcp.bind(("127.0.0.1", 0))
            port: int = tcp.getsockname()[1]
            try:
                udp.bind(("127.0.0.1", port))
            except OSError:  # this port's UDP side is someone else's: try another
                continue
            yield port
            return


@pytest.fixture
def policy_bind() -> Iterator[BindServer]:
    """A BIND 9 of its own for the test (``refuse_updates_of`` restarts it with an
    ``update-policy``: the session's ``bind`` keeps its config)."""
    with BindServer() as server:
        yield server
