"""A vCenter admin changing things behind vmpool's back, with the passes running: VMs renamed,
moved, powered off or deleted, the pool's folder renamed or removed, templates gone.

The invariants: a VM in use is never destroyed or powered off by us, no VM is handed out twice,
a VM we did not create (outside the pool's folder) is never destroyed, clone slots are never
leaked, and the pool converges. Manager time is a FakeClock (tests/vsphere/test_bad_day.py).
"""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Callable

from chalicelib.providers.vsphere import connection as connections
from chalicelib.providers.vsphere import inventory
from tests.harness import Harness, HarnessFactory
from tests.support import eventually
from tests.vsphere import admin
from tests.vsphere.test_bad_day import POOL, converge, in_vcsim, pool_harness
from tests.vsphere.vcsim import DATACENTER, TEMPLATE, VcsimServer, make_setup


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


def test_vms_renamed_moved_or_powered_off_by_an_admin_are_never_destroyed_or_handed_out_again(
        vcsim: VcsimServer, make_harness: HarnessFactory) -> None:
    """Out of the pool's folder (renamed: a new name there is a VM vmpool did not make; moved),
    a VM is not the pool's any more: the ones in use stay with their users, untouched, until
    returned; the ready ones are dropped without being destroyed. A checked-out VM powered off by
    an admin stays checked out and off."""
    harness = pool_harness(make_harness, vcsim, size=4)
    converge(harness, 4)
    folder = folder_of(harness)
    elsewhere = f"{DATACENTER}/vm/vmpool/elsewhere-{secrets.token_hex(3)}"
    moved_in_use, powered_off_in_use = harness.checkout_vms(POOL, 2)
    moved_ready, renamed_ready = sorted(harness.hosts(POOL, "ready"))
    admin.move(harness.provider, f"{folder}/{moved_in_use}", elsewhere)
    admin.power_off(harness.provider, f"{folder}/{powered_off_in_use}")
    admin.move(harness.provider, f"{folder}/{moved_ready}", elsewhere)
    admin.rename(harness.provider, f"{folder}/{renamed_ready}", f"{renamed_ready}-renamed")
    converge(harness, 4, in_use=frozenset({powered_off_in_use}))
    # The renamed one is in the pool's folder under a name vmpool did not give: vmpooler's rule
    # (a VM in a pool's folder that no state knows is destroyed) applies to it, nothing else.
    for name in (moved_in_use, moved_ready):
        assert admin.exists(harness.provider, f"{elsewhere}/{name}"), name
    details = admin.vm_details(harness.provider, f"{folder}/{powered_off_in_use}")
    assert details is not None and details["power_state"] == "poweredOff"
    assert harness.state_of(powered_off_in_use) == "running"
    handed = set(harness.checkout_vms(POOL, 4))
    assert not handed & {moved_in_use, powered_off_in_use, moved_ready, renamed_ready}
    # The moved VM left the pool (GET /vm says destroyed: vmpool will not manage it again), and
    # vmpool destroys nothing outside its folder; the powered-off one is returned and destroyed.
    assert harness.describe(moved_in_use)["state"] == "destroyed"
    assert harness.delete(f"/vm/{moved_in_use}").status == 404
    assert harness.delete(f"/vm/{powered_off_in_use}").status == 200
    converge(harness, 4, in_use=frozenset(handed))
    assert admin.exists(harness.provider, f"{elsewhere}/{moved_in_use}")
    assert not admin.exists(harness.provider, f"{folder}/{powered_off_in_use}")


def test_a_same_named_vm_in_another_folder_is_never_touched(vcsim: VcsimServer, make_harness: HarnessFactory) -> None:
    harness = pool_harness(make_harness, vcsim, size=1)
    converge(harness, 1)
    (name,) = harness.hosts(POOL, "ready")
    twin_folder = f"{folder_of(harness)}-twin"
    admin.create_vm(harness.provider, twin_folder, name)
    harness.checkout(POOL)
    assert harness.delete(f"/vm/{name}").status == 200
    converge(harness, 1)
    assert not admin.exists(harness.provider, f"{folder_of(harness)}/{name}")
    assert admin.exists(harness.provider, f"{twin_folder}/{name}")


def test_the_pool_folder_or_the_template_deleted_by_an_admin(private_vcsim: VcsimServer,
                                                             make_harness: HarnessFactory) -> None:
    """The pool's folder destroyed with its VMs: the records of the VMs in use say destroyed and
    the pool makes a new folder and refills. Then the template deleted: clones fail as
    ``template`` and back off; the VMs in use are untouched; clone slots all freed."""
    harness = pool_harness(make_harness, private_vcsim, size=2, service={"task_limit": 2})
    converge(harness, 2)
    taken = harness.checkout(POOL)
    admin.destroy(harness.provider, folder_of(harness))
    converge(harness, 2)
    assert harness.describe(taken)["state"] == "destroyed"
    in_use = harness.checkout(POOL)
    admin.destroy(harness.provider, f"{DATACENTER}/vm/{TEMPLATE}")
    reports = []
    for _ in range(30):
        harness.clock.advance(10)
        reports.append(harness.reconcile(POOL))
    kinds = {failure.kind.value for report in reports for failure in report.clone_failures.values()}
    assert kinds == {"template"}, kinds
    assert sum(len(report.clones_started) for report in reports) <= 6
    assert harness.state_of(in_use) == "running" and admin.exists(harness.provider, f"{folder_of(harness)}/{in_use}")
    assert harness.store.cloning_count() == 0


def test_a_destroy_read_after_vcenter_reused_the_vm_id_never_destroys_the_vm_now_holding_it(
        private_vcsim: VcsimServer) -> None:
    """A destroy recorded on a VM (power off started), then vCenter restarted empty: vcsim, as a
    vCenter restored from a backup, gives the same VM id to the next VM made, here an admin's
    powered-off VM in another folder. Reading the old destroy must not destroy that VM."""
    setup = make_setup(private_vcsim)
    provider = setup.provider
    pool = setup.pool(folder="vmpool/reuse-a")
    admin.create_vm(provider, f"{DATACENTER}/vm/vmpool/reuse-a", "ours")
    ref = provider.destroy(pool, "ours")
    assert ref is not None and ref.startswith("destroy:"), ref
    private_vcsim.stop()
    private_vcsim.start()
    connections.drop(provider.endpoint)
    admin.create_vm(provider, f"{DATACENTER}/vm/vmpool/reuse-b", "admins-vm", power_on=False)
    moid = provider._run("id", lambda connection: inventory.find(
        connection, f"{DATACENTER}/vm/vmpool/reuse-b/admins-vm")._moId)
    assert ref.split(":")[1] == moid  # the premise: the id was reused
    for _ in range(3):
        provider.task_status(ref)
    assert admin.exists(provider, f"{DATACENTER}/vm/vmpool/reuse-b/admins-vm")


def test_clones_vcenter_finishes_after_the_pool_gave_up_on_them_leave_nothing_behind(
        vcsim_dir: Path, make_harness: HarnessFactory) -> None:
    """Clone tasks running longer than the pool's timeout (1 minute on the fake clock; 3 s in
    vcsim): given up, their slots held until vcsim ends them (cancelled, or ended on its own),
    then freed and their VMs destroyed; no stray VM is left, and the pool fills with clones
    vcsim ends before their timeout."""
    server = VcsimServer(boot_delay=0.2, cert_path=vcsim_dir / f"late-{secrets.token_hex(3)}.pem", clone_delay=3.0)
    server.start()
    try:
        harness = pool_harness(make_harness, server, size=2, service={"task_limit": 2}, timeout=1)
        first = set(harness.reconcile(POOL).clones_started)
        assert len(first) == 2
        harness.clock.advance(120)
        harness.reconcile(POOL)  # still running after the pool's timeout: given up
        assert all(harness.state_of(name) in ("completed", "destroyed") for name in first)
        assert harness.store.cloning_count() == 2  # vcsim still runs them: their slots are held
        # vcsim ends the given-up tasks on its own clock (3 s after their start, later on a busy
        # machine): passes at the same fake time until one finds them ended (slept for before,
        # 3.5 s, as if vcsim kept time under any load).
        def passed(done: Callable[[], bool]) -> bool:
            harness.reconcile(POOL)
            return done()

        eventually(lambda: passed(lambda: harness.count(POOL, "pending") == 2), 30,
                   "the given-up tasks ended: their slots freed, the VMs destroyed, two clones started")
        assert harness.store.cloning_count() == 2
        # The new clones end on vcsim's clock, before their timeout on the pass's.
        eventually(lambda: passed(lambda: harness.store.cloning_count() == 0), 30, "the new clones ended")
        converge(harness, 2, timeout=40)
        assert not first & in_vcsim(harness)
    finally:
        server.stop()
