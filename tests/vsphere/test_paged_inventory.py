"""Inventory answers vCenter pages (RetrievePropertiesEx with a token, ContinueRetrievePropertiesEx).

vCenter answers a big retrieval in pages; govmomi 0.24's simulator answered whole, so no test
read a second page. tools/vcsim's ``-page-size`` pages as vCenter does: every retrieval of the
provider must follow the tokens to the end (a pool's folder, the names read after a Redis loss,
host surveys, task reads) and a pool converge as on an unpaged vCenter.
"""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Iterator

import pytest

from chalicelib.providers.base import ProviderError
from tests.harness import HarnessFactory
from tests.vsphere.test_bad_day import POOL, converge, pool_harness
from tests.vsphere.vcsim import VcsimServer, make_setup, record_soap_calls

PAGE = 7


@pytest.fixture
def paged(vcsim_dir: Path) -> Iterator[VcsimServer]:
    """A simulator of its own answering at most PAGE objects a RetrievePropertiesEx."""
    with VcsimServer(boot_delay=0.2, cert_path=vcsim_dir / f"paged-{secrets.token_hex(3)}.pem",
                     page_size=PAGE) as server:
        yield server


@pytest.fixture
def sent(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The SOAP methods sent by connections made from now on."""
    methods: list[str] = []

    record_soap_calls(monkeypatch, lambda method, args: methods.append(method))
    return methods


def test_a_folder_listed_over_several_pages_lists_every_vm(paged: VcsimServer, sent: list[str]) -> None:
    setup = make_setup(paged)
    pool = setup.pool(manage_host_selection=True)
    names = {f"paged-{index:02}" for index in range(3 * PAGE)}
    for name in sorted(names):
        setup.provider.clone(pool, name)  # vcsim ends clone tasks at once
    assert {vm.name for vm in setup.provider.list_vms(pool)} == names
    del sent[:]
    assert {vm.name for vm in setup.provider.list_vms(pool)} == names  # a steady pass's read
    # 21 VMs and the folder's ancestors (folder, vmpool, vm, DC0, root): 4 pages.
    assert sent == ["RetrievePropertiesEx", *["ContinueRetrievePropertiesEx"] * 3]
    assert names <= setup.provider.vm_names([pool])


def test_a_pool_converges_on_a_vcenter_answering_in_small_pages(
        paged: VcsimServer, make_harness: HarnessFactory, sent: list[str]) -> None:
    harness = pool_harness(make_harness, paged, service={"manage_host_selection": True}, size=PAGE + 2)
    assert converge(harness, PAGE + 2) == []
    assert "ContinueRetrievePropertiesEx" in sent
    assert len(harness.hosts(POOL, "ready")) == PAGE + 2


def test_a_names_read_out_of_time_between_pages_is_cancelled_and_returns_nothing_partial(
        paged: VcsimServer, sent: list[str]) -> None:
    setup = make_setup(paged)
    pool = setup.pool()
    for index in range(2 * PAGE):
        setup.provider.clone(pool, f"late-{index:02}")
    del sent[:]
    with pytest.raises(ProviderError, match="not read in time"):
        setup.provider.vm_names([pool], out_of_time=lambda: True)
    assert sent.count("CancelRetrievePropertiesEx") == 1 and "ContinueRetrievePropertiesEx" not in sent
    assert sent[-1] == "DestroyView"  # the view made for the read is not left to the session
    assert {f"late-{index:02}" for index in range(2 * PAGE)} <= setup.provider.vm_names([pool])
