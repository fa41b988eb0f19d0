"""Fixtures of the vSphere provider tests (the simulator itself: tests/conftest.py)."""

from __future__ import annotations

import pytest

from tests.vsphere.vcsim import Setup, VcsimServer, make_setup


@pytest.fixture
def setup(vcsim: VcsimServer) -> Setup:
    """A provider on the session simulator with create_folders on."""
    return make_setup(vcsim)
