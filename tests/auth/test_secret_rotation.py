"""A secret rotated in Secrets Manager reaches a warm function's vSphere provider and DNS plugin
once the secrets' cache lets it through, without a cold start or a deploy (docs/deploy.md,
"Secret rotation").

Both resolve their secret when they are built, and a warm function kept them built: a rotated
vSphere password was used only after the next cold start (hours), so each vCenter re-login of
the passes in between was refused."""

from __future__ import annotations

import base64
import json
from typing import Any, Iterator

import boto3
import pytest
import redis
from moto import mock_aws

from chalicelib.auth.secrets import SecretResolver
from chalicelib.clock import FakeClock
from chalicelib.config import parse
from chalicelib.services import Services

CONFIG = """
:providers:
  :vsphere:
    server: vcenter.example.com
    username: vmpool@vsphere.local
    password: {secret: vmpool/dev/vsphere, key: password}
:dns_configs:
  rfc2136:
    dns_class: dynamic-dns
    domain: vms.example.com
    server: 10.0.0.53
    tsig_key_name: vmpool-key
    tsig_secret: {secret: vmpool/dev/vsphere, key: tsig}
:pools:
  - name: debian
    size: 1
    provider: vsphere
    template: templates/debian-12
    dns_plugin: rfc2136
"""
OLD_TSIG, NEW_TSIG = (base64.b64encode(word * 8).decode() for word in (b"old-", b"new-"))


@pytest.fixture
def secrets(aws_env: None) -> Iterator[Any]:
    with mock_aws():
        client = boto3.client("secretsmanager", region_name="us-east-1")
        client.create_secret(Name="vmpool/dev/vsphere",
                             SecretString=json.dumps({"password": "old-Pa55", "tsig": OLD_TSIG}))
        yield client


def _warm_function(max_age: int) -> Services:
    """A function's Services as a warm Lambda keeps them (Redis is never reached here)."""
    return Services(parse(CONFIG), redis.Redis(port=1), clock=FakeClock(), prefix="vmpool:",
                    secrets=SecretResolver(max_age=max_age))


def _tsig(services: Services) -> bytes:
    plugin: Any = services.dns_plugin_named("rfc2136")
    (key,) = plugin._keyring.values()
    return bytes(getattr(key, "secret", key))  # dnspython: the key, or its secret alone


def test_a_rotated_vsphere_password_and_tsig_secret_are_used_once_the_cache_lets_them_through(secrets: Any) -> None:
    services = _warm_function(max_age=0)  # the 5-minute cache, run out
    provider: Any = services.provider("vsphere")
    assert provider.endpoint.password == "old-Pa55"
    assert _tsig(services) == base64.b64decode(OLD_TSIG)
    assert services.provider("vsphere") is provider  # kept while the secret holds: the session too

    secrets.put_secret_value(SecretId="vmpool/dev/vsphere",
                             SecretString=json.dumps({"password": "new-Pa55", "tsig": NEW_TSIG}))
    rotated: Any = services.provider("vsphere")
    assert rotated.endpoint.password == "new-Pa55"
    assert _tsig(services) == base64.b64decode(NEW_TSIG)
    assert services.provider("vsphere") is rotated


def test_within_the_cache_and_while_aws_is_away_the_built_provider_is_kept(secrets: Any) -> None:
    services = _warm_function(max_age=300)
    provider: Any = services.provider("vsphere")
    secrets.put_secret_value(SecretId="vmpool/dev/vsphere", SecretString=json.dumps({"password": "new-Pa55"}))
    assert services.provider("vsphere") is provider  # cached: AWS not asked

    services = _warm_function(max_age=0)
    provider = services.provider("vsphere")
    secrets.delete_secret(SecretId="vmpool/dev/vsphere", ForceDeleteWithoutRecovery=True)  # no answer now
    assert services.provider("vsphere") is provider  # the password in hand may still log in
    assert provider.endpoint.password == "new-Pa55"
