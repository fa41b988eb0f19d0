"""Fixtures of the vSphere provider tests (the simulator itself: tests/conftest.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest

from tests.vsphere.vcsim import Setup, VcsimServer, delayed_clones, make_setup

SLOW_CLONE_SECONDS = 4.0
"""How long ``slow_vcsim``'s clone tasks run."""


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


@pytest.fixture
def slow_vcsim(vcsim_dir: Path) -> Iterator[VcsimServer]:
    """A simulator of its own whose clone tasks run SLOW_CLONE_SECONDS (the VM is in its folder
    meanwhile): slots held while vCenter still clones."""
    yield from delayed_clones(vcsim_dir, SLOW_CLONE_SECONDS, "slow-clones")
