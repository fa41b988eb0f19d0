"""A vCenter admin changing things behind vmpool's back, with the passes running: VMs renamed,
moved, powered off or deleted, the pool's folder renamed or removed, templates gone.

The invariants: a VM in use is never destroyed or powered off by us, no VM is handed out twice,
a VM we did not create (outside the pool's folder) is never destroyed, clone slots are never
leaked, and the pool converges. Manager time is a FakeClock (tests/vsphere/test_bad_day.py).
"""

from __future__ import annotations

import secrets

from tests.harness import Harness, HarnessFactory
from tests.vsphere import admin
from tests.vsphere.test_bad_day import POOL, converge, in_vcsim, pool_harness
from tests.vsphere.vcsim import DATACENTER, VcsimServer


def folder_of(harness: Harness) -> str:
    return f"{DATACENTER}/vm/{harness.pool(POOL).folder}"


def test_the_pool_folder_renamed_by_an_admin_is_left_alone_and_the_pool_refills_its_own(
        vcsim: VcsimServer, make_harness: HarnessFactory) -> None:
    """The admin renames the pool's folder (to keep its VMs, say): those VMs are no longer the
    pool's; the pool makes a new folder and fills it, and never touches the renamed one."""
    harness = pool_harness(make_harness, vcsim, size=2)
    converge(harness, 2)
    taken = harness.checkout(POOL)
    old = set(harness.hosts(POOL, "ready")) | {taken}
    folder = folder_of(harness)
    kept = f"{folder}-kept-{secrets.token_hex(2)}"
    admin.rename(harness.provider, folder, kept.rpartition("/")[2])
    converge(harness, 2)
    assert not in_vcsim(harness) & old
    for name in old:  # all still there, in the renamed folder, none destroyed by us
        assert admin.exists(harness.provider, f"{kept}/{name}"), name
    assert taken not in harness.checkout_vms(POOL, 2)
