"""Fixtures of the vSphere provider tests (the simulator itself: tests/conftest.py)."""

from __future__ import annotations

import pytest

from tests.vsphere.vcsim import Setup, VcsimServer, make_setup


@pytest.fixture
def setup(vcsim: VcsimServer) -> Setup:
    """A provider on the session simulator with create_folders on."""
    return make_setup(vcsim)


@pytest.fixture
def folder_destroying_setup(private_vcsim: VcsimServer) -> Setup:
    """A provider on a simulator of its own, for tests whose purge destroys a folder holding VMs.
    vCenter destroys a folder's VMs with it; the simulator (Debian's govmomi) leaves them behind
    with no parent, and on the session's simulator every later read of the whole inventory then
    met a VM whose every property answers ManagedObjectNotFound."""
    return make_setup(private_vcsim)
