"""A dual-stack guest in vcsim (its interface reporting IPv4 and IPv6 addresses in guest.net, as
VMware Tools does) through the vSphere provider and a reconcile pass, with a real BIND 9: an A
and an AAAA record, the addresses VMware Tools marks unusable or temporary left out."""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Iterator

import pytest

from chalicelib.config import build
from chalicelib.providers.vsphere.inventory import guest_addresses, primary_address
from tests.dns.bind import BindServer
from tests.harness import HarnessFactory
from tests.support import eventually
from tests.vsphere.vcsim import VcsimServer, vcsim_document

POOL = "dual"
INTERFACE = ("127.0.0.1", "fe80::250:56ff:fe01:1", "2001:db8::5/tentative", "2001:db8::6/deprecated",
             "2001:db8::8/preferred/random", "2001:db8::7/preferred/linklayer")
"""What the guests' interface reports: its IPv4 address, its link-local IPv6 one, an address still
checked unique on the link, one past its preferred lifetime, a temporary (privacy) address, and
its global IPv6 address (SLAAC: origin linklayer)."""


@pytest.fixture
def dual_stack_vcsim(vcsim_dir: Path, tmp_path: Path) -> Iterator[VcsimServer]:
    with VcsimServer(boot_delay=0.2, cert_path=vcsim_dir / f"dual-{secrets.token_hex(3)}.pem",
                     log_path=tmp_path / "vcsim.log", guest_addresses=INTERFACE) as server:
        yield server


def test_a_dual_stack_guest_gets_an_a_and_an_aaaa_record(make_harness: HarnessFactory, bind: BindServer,
                                                        dual_stack_vcsim: VcsimServer) -> None:
    # Before, the provider read guest.ipAddress alone: the guest got its A record only.
    document = vcsim_document(dual_stack_vcsim, [{"name": POOL, "folder": f"vmpool/dual-{secrets.token_hex(4)}",
                                                  "ready_check": "tools", "size": 1, "dns_plugin": "zone"}])
    document["dns_configs"] = {"zone": bind.dns_config()}
    harness = make_harness(build(document))

    def ready_after_a_pass() -> bool:
        harness.reconcile(POOL)
        return harness.count(POOL, "ready") == 1

    eventually(ready_after_a_pass, 10, "the VM ready")
    [host] = harness.hosts(POOL, "ready")
    [vm] = harness.provider.list_vms(harness.pool(POOL))
    assert vm.ip == "127.0.0.1" and vm.addresses == ("127.0.0.1", "fe80::250:56ff:fe01:1", "2001:db8::7")
    assert bind.addresses(f"{host}.{bind.zone}") == ["127.0.0.1"]
    assert bind.addresses(f"{host}.{bind.zone}", "AAAA") == ["2001:db8::7"]
    assert harness.describe(host)["ip"] == "127.0.0.1"


def test_guest_addresses_without_ipconfig_are_the_interfaces_plain_list() -> None:
    from pyVmomi import vim

    older_tools = vim.vm.GuestInfo.NicInfo(ipAddress=["10.0.0.5", "2001:db8::5"])
    nothing = vim.vm.GuestInfo.NicInfo()
    assert guest_addresses([older_tools, nothing]) == ("10.0.0.5", "2001:db8::5")
    assert guest_addresses(None) == ()


def test_a_temporary_primary_address_gives_way_to_the_interfaces_stable_one() -> None:
    """An IPv6-only guest whose Tools name its temporary (privacy) address primary: GET /vm's
    ``ip`` and its records take its stable address (before, the temporary one, gone in hours)."""
    from pyVmomi import vim

    def configured(address: str, origin: str) -> vim.net.IpConfigInfo.IpAddress:
        return vim.net.IpConfigInfo.IpAddress(ipAddress=address, prefixLength=64, origin=origin, state="preferred")

    nic = vim.vm.GuestInfo.NicInfo(ipConfig=vim.net.IpConfigInfo(ipAddress=[
        configured("2001:db8::8", "random"), configured("2001:db8::7", "linklayer")]))
    assert primary_address("2001:db8::8", [nic]) == "2001:db8::7"
    assert primary_address("2001:db8::7", [nic]) == "2001:db8::7"
    assert primary_address("10.0.0.5", [nic]) == "10.0.0.5"
    assert primary_address("2001:db8::8", None) == "2001:db8::8"  # guest.net not read: as reported
    assert primary_address(None, [nic]) is None
