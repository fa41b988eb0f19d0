"""A stage reaches its vCenters and its LDAP server once deployed, or is refused before anything
is deployed or published.

The functions' security group sends to ``VCenterCidr`` on 443 and to ``LdapCidr`` on one port.
Before, that port was 636 whatever the config said and nothing asked for ``LdapCidr``: a stage
with LDAP's default ``start_tls`` (389, as vmpool.yaml.example writes it), or deployed without
``LdapCidr``, timed out every login (503) while its pools refilled. A vCenter on another port or
outside ``VCenterCidr`` (a second vCenter, pushed with its pools) timed out every pass of its
pools, which stayed empty. vSphere pools check a new VM's readiness over TCP by default, which the
group allows to ``GuestCidr`` on ``GuestReadyPort`` only: deployed without ``GuestCidr`` (nothing
asked for it), every new VM stayed pending until its timeout destroyed it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from packaged import ROOT
from test_config_push import BUCKET, deployed_stack, push_to_stack, s3  # noqa: F401 - s3 is a fixture
from test_dns_network import REQUIRED, lambda_egress, reaches, stage_with

from infra import deploy, template

LDAP = """\
:auth:
  provider: ldap
  :ldap:
    host: %s
    base: ou=users,dc=example,dc=com
    user_object: uid
    encryption: %s
"""
VCENTERS = """\
:providers:
  :east: {provider_class: vsphere, server: 10.20.0.10, username: u, password: {secret: vmpool/dev/vsphere, key: east}}
  :west: {provider_class: vsphere, server: "%s", username: u, password: {secret: vmpool/dev/vsphere, key: west}}
  :dummy: {}
:pools:
  - {name: debian-east, size: 1, provider: east, template: t/debian, ready_check: tools}
  - {name: debian-west, size: 1, provider: west, template: t/debian, ready_check: tools}
  - {name: demo, size: 1, provider: dummy}
"""


@pytest.mark.parametrize(("encryption", "port"), [("start_tls", 389), ("simple_tls", 636)])
def test_the_functions_reach_the_ldap_server_on_its_port_with_the_parameters_the_rule_asks_for(
        tmp_path: Path, encryption: str, port: int) -> None:
    built = template.build(stage_with(tmp_path, LDAP % ("10.30.0.5", encryption) + VCENTERS % "10.20.0.11"))
    broken = deploy.broken_rules(built, REQUIRED, None)
    assert len(broken) == 1 and f"LDAP at 10.30.0.5 port {port}" in broken[0] and "LdapCidr" in broken[0]
    given = {**REQUIRED, "VCenterCidr": "10.20.0.0/24", "LdapCidr": "10.30.0.0/24", "LdapPort": str(port)}
    assert deploy.broken_rules(built, given, None) == []
    assert reaches(lambda_egress(built, given), "10.30.0.5", port)
    assert reaches(lambda_egress(built, given), "10.20.0.11", 443)  # both vCenters
    if port != 636:  # the port a stack deployed before LdapPort opened: refused now, not deployed deaf
        assert len(deploy.broken_rules(built, {**REQUIRED, "LdapCidr": "10.30.0.0/24"}, None)) == 1


def test_a_stage_without_ldap_or_tcp_readiness_asks_for_no_parameter(tmp_path: Path) -> None:
    assert "Rules" not in template.build(stage_with(tmp_path, VCENTERS % "10.20.0.11"))


TCP_READY = VCENTERS.replace("ready_check: tools}", "ready_check: tcp, ready_port: %d}", 1) % ("10.20.0.11", 2222)


def test_the_functions_reach_new_vms_that_pools_check_over_tcp_with_the_parameters_the_rule_asks_for(
        tmp_path: Path) -> None:
    built = template.build(stage_with(tmp_path, TCP_READY))
    given = {**REQUIRED, "VCenterCidr": "10.20.0.0/24"}
    (broken,) = deploy.broken_rules(built, given, None)
    assert "vSphere pools (debian-east)" in broken and "GuestCidr" in broken and "GuestReadyPort=2222" in broken
    assert len(deploy.broken_rules(built, {**given, "GuestCidr": "10.50.0.0/16"}, None)) == 1  # port 22
    given = {**given, "GuestCidr": "10.50.0.0/16", "GuestReadyPort": "2222"}
    assert deploy.broken_rules(built, given, None) == []
    assert reaches(lambda_egress(built, given), "10.50.3.4", 2222)
    # The default (no ready_check) is tcp on 22, as vmpooler's.
    default = VCENTERS.replace(", ready_check: tools}", "}") % "10.20.0.11"
    (broken,) = deploy.broken_rules(template.build(stage_with(tmp_path, default)), REQUIRED, None)
    assert "(debian-east, debian-west)" in broken and "GuestReadyPort=22" in broken


def test_packaging_refuses_a_vcenter_on_a_port_the_stack_never_opens(tmp_path: Path) -> None:
    config = tmp_path / "vmpool.yaml"
    config.write_text(VCENTERS % "vc-west.example.com:8443")
    done = subprocess.run([sys.executable, "-m", "infra.sync_config", "--granted", "dev", str(config)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 1, done.stderr
    assert "providers.west: vCenter vc-west.example.com port 8443" in done.stderr and "Traceback" not in done.stderr
    config.write_text(VCENTERS % "vc-west.example.com")
    done = subprocess.run([sys.executable, "-m", "infra.sync_config", "--granted", "dev", str(config)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


STACK = {"VCenterCidr": "10.20.0.0/24", "LdapCidr": "10.30.0.0/24", "LdapPort": "636", "GuestCidr": "",
         "DnsServerCidr": "", "DnsServerPort": "53", "CreateVpcEndpoints": "true"}


@pytest.mark.parametrize(("config", "stack", "problem"), [
    (VCENTERS % "10.40.0.10", STACK, "providers.west: vCenter 10.40.0.10 is outside the stack's VCenterCidr"),
    (VCENTERS % "vc-west.example.com:8443", STACK, "providers.west: vCenter vc-west.example.com port 8443: the stack"),
    (LDAP % ("10.30.0.5", "start_tls") + VCENTERS % "10.20.0.11", STACK,
     "auth.ldap: server 10.30.0.5 port 389: the stack's LdapPort is 636"),
    (LDAP % ("10.31.0.5", "simple_tls") + VCENTERS % "10.20.0.11", STACK,
     "auth.ldap: server 10.31.0.5 is outside the stack's LdapCidr 10.30.0.0/24"),
    (LDAP % ("ldap.example.com", "simple_tls") + VCENTERS % "10.20.0.11", {**STACK, "LdapCidr": ""},
     "auth.ldap: server ldap.example.com port 636: the stack has no LdapCidr"),
    # A stack deployed before LdapPort: its group opened 636.
    (LDAP % ("10.30.0.5", "start_tls") + VCENTERS % "10.20.0.11",
     {k: v for k, v in STACK.items() if k != "LdapPort"}, "auth.ldap: server 10.30.0.5 port 389: the stack's LdapPort"),
    (TCP_READY, STACK, "pools debian-east: readiness checked over TCP port 2222: the stack has no GuestCidr"),
    (TCP_READY, {**STACK, "GuestCidr": "10.50.0.0/16", "GuestReadyPort": "22"},
     "pools debian-east: readiness checked over TCP port 2222: the stack's GuestReadyPort is 22"),
], ids=["vcenter-outside", "vcenter-port", "ldap-port", "ldap-outside", "ldap-no-cidr", "ldap-older-stack",
        "guests-no-cidr", "guests-port"])
def test_config_push_refuses_servers_the_deployed_network_does_not_reach(
        s3: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str], config: str, stack: dict[str, str],  # noqa: F811
        problem: str) -> None:
    deployed_stack(stack)
    code, output = push_to_stack(tmp_path, config, capsys)
    assert code == 1 and "nothing published" in output and "Traceback" not in output
    assert problem in output and "make deploy STAGE=dev" in output
    assert "Contents" not in s3.list_objects_v2(Bucket=BUCKET)


def test_config_push_publishes_servers_the_deployed_network_reaches(
        s3: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:  # noqa: F811
    deployed_stack({**STACK, "LdapPort": "389", "GuestCidr": "10.50.0.0/16", "GuestReadyPort": "2222"})
    config = LDAP % ("ldap.example.com", "start_tls") + TCP_READY.replace("10.20.0.11", "vc.example.com")
    code, output = push_to_stack(tmp_path, config, capsys)
    assert code == 0, output
