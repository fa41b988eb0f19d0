"""Two vmpool deployments sharing vSphere folders never destroy each other's VMs; a pool's folder
written with its datacenter's path (docs/vsphere.md, "Ownership" and "Folders").

Each deployment is a harness of its own (its own Redis key prefix, its own ``deployment``) on
the same simulator, as stages dev and prod of one vCenter are."""

from __future__ import annotations

import json
import secrets
from typing import Any

import pytest

from chalicelib.config import ConfigError, build
from chalicelib.providers.base import TaskState
from tests.harness import Harness, HarnessFactory
from tests.support import eventually
from tests.vsphere import admin
from tests.vsphere.test_provider import _host_ids as host_ids
from tests.vsphere.vcsim import DATACENTER, TEMPLATE, Setup, VcsimServer, make_setup, vcsim_config

POOL = "pool"


def deployment(make_harness: HarnessFactory, server: VcsimServer, name: str, folder: str, size: int = 1,
               **pool: Any) -> Harness:
    """The service of deployment ``name`` with one pool ``POOL`` in ``folder``, on Redis keys of its own."""
    config = vcsim_config(server, [{"name": POOL, "size": size, "folder": folder, "ready_check": "tools", **pool}],
                          service={"deployment": name})
    return make_harness(config, prefix=f"{name}-{secrets.token_hex(3)}:")


def until_ready(harness: Harness, count: int) -> None:
    def reached() -> bool:
        harness.reconcile(POOL)
        return harness.count(POOL, "ready") == count

    eventually(reached, 15, f"{count} VMs ready")


def in_folder(harness: Harness) -> set[str]:
    return {vm.name for vm in harness.provider.list_vms(harness.pool(POOL))}


def test_two_deployments_sharing_a_folder_keep_each_others_vms(make_harness: HarnessFactory, vcsim: VcsimServer,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    folder = f"vmpool/shared-{secrets.token_hex(4)}"
    dev = deployment(make_harness, vcsim, "dev", folder)
    prod = deployment(make_harness, vcsim, "prod", folder)
    until_ready(dev, 1)
    until_ready(prod, 1)
    (dev_vm,) = dev.hosts(POOL, "ready")
    (prod_vm,) = prod.hosts(POOL, "ready")
    for _ in range(3):  # a VM found is judged on the pass after: three passes each
        dev.clock.advance(30)
        dev_report, prod_report = dev.reconcile(POOL), prod.reconcile(POOL)
        assert dev_report.foreign == [prod_vm] and prod_report.foreign == [dev_vm]
        assert not dev_report.completed and not prod_report.completed
    assert dev.hosts(POOL, "ready") == {dev_vm} and prod.hosts(POOL, "ready") == {prod_vm}
    assert not dev.hosts(POOL, "discovered") and not prod.hosts(POOL, "discovered")
    told = [record.getMessage() for record in caplog.records if "another vmpool deployment" in record.getMessage()]
    assert len(told) == 2, told  # once for each VM, not once a pass
    assert in_folder(dev) == {dev_vm, prod_vm}
    assert json.loads(admin.vm_details(dev.provider, f"{DATACENTER}/vm/{folder}/{dev_vm}")["annotation"]
                      )["deployment"] == "dev"


def test_a_vm_of_this_deployment_redis_lost_is_still_discovered_and_destroyed(
        make_harness: HarnessFactory, vcsim: VcsimServer) -> None:
    folder = f"vmpool/lost-{secrets.token_hex(4)}"
    before = deployment(make_harness, vcsim, "dev", folder)
    until_ready(before, 1)
    (lost,) = before.hosts(POOL, "ready")
    after = deployment(make_harness, vcsim, "dev", folder)  # the same deployment, its Redis empty
    assert lost in after.reconcile(POOL).discovered
    after.clock.advance(30)
    assert lost in after.reconcile(POOL).completed
    eventually(lambda: (after.reconcile(POOL), lost not in in_folder(after))[1], 15, "the lost VM destroyed")


def test_another_deployments_vm_recorded_as_discovered_before_is_forgotten_not_destroyed(
        make_harness: HarnessFactory, vcsim: VcsimServer) -> None:
    """A VM an older version recorded as discovered (it did not read annotations) is dropped from
    discovered, left in vCenter."""
    folder = f"vmpool/recorded-{secrets.token_hex(4)}"
    dev = deployment(make_harness, vcsim, "dev", folder, size=0)
    made_by_prod = json.dumps({"pool": POOL, "creator": "vmpool", "deployment": "prod"})
    admin.create_vm(dev.provider, f"{DATACENTER}/vm/{folder}", "prod-vm", annotation=made_by_prod)
    admin.create_vm(dev.provider, f"{DATACENTER}/vm/{folder}", "hand-made", annotation="made by hand")
    for hostname in ("prod-vm", "hand-made"):
        assert dev.store.add_discovered(hostname, POOL, dev.clock.now())
    report = dev.reconcile(POOL)
    assert report.foreign == ["prod-vm"] and list(report.completed) == ["hand-made"]
    assert not dev.hosts(POOL, "discovered")
    for _ in range(3):
        dev.clock.advance(30)
        dev.reconcile(POOL)
    assert in_folder(dev) == {"prod-vm"}


def test_purge_keeps_what_another_deployment_made_under_a_shared_parent(private_vcsim: VcsimServer) -> None:
    setup = make_setup(private_vcsim, service={"deployment": "dev"})
    provider = setup.provider
    pool = setup.pool(name="dev-pool", folder="shared/dev-pool")
    made_by = {name: json.dumps({"pool": "p", "creator": "vmpool", "deployment": name}) for name in ("dev", "prod")}
    admin.create_vm(provider, f"{DATACENTER}/vm/shared/prod-pool", "prod-vm", annotation=made_by["prod"])
    admin.create_vm(provider, f"{DATACENTER}/vm/shared", "prod-loose", power_on=False, annotation=made_by["prod"])
    admin.create_vm(provider, f"{DATACENTER}/vm/shared", "dev-loose", power_on=False, annotation=made_by["dev"])
    admin.create_vm(provider, f"{DATACENTER}/vm/shared", "older-vmpool", power_on=False,
                    annotation=json.dumps({"pool": "p", "creator": "vmpool"}))
    admin.create_vm(provider, f"{DATACENTER}/vm/shared/stale", "stale-vm")

    removed = provider.purge_unconfigured([pool], allowlist=[])

    assert sorted(removed) == ["shared/dev-loose", "shared/older-vmpool", "shared/stale"]
    assert admin.exists(provider, f"{DATACENTER}/vm/shared/prod-pool/prod-vm")
    assert admin.exists(provider, f"{DATACENTER}/vm/shared/prod-loose")


def test_a_folder_written_with_its_datacenter_path_is_the_pools_folder(setup: Setup) -> None:
    name = f"dcpath-{secrets.token_hex(4)}"
    pool = setup.pool(name=name, folder=f"{DATACENTER}/vm/vmpool/{name}")
    ref = setup.provider.clone(pool, "dcpath-vm")
    admin.wait_task(setup.provider, ref)
    assert setup.provider.task_status(ref).state is TaskState.SUCCESS
    assert admin.exists(setup.provider, f"{DATACENTER}/vm/vmpool/{name}/dcpath-vm")
    assert [vm.name for vm in setup.provider.list_vms(pool)] == ["dcpath-vm"]
    assert setup.provider.destroy(pool, "dcpath-vm") is not None


def test_a_folder_naming_another_datacenter_is_refused_saying_so(vcsim_dir: Any) -> None:
    with VcsimServer(boot_delay=0.2, cert_path=vcsim_dir / f"two-dc-{secrets.token_hex(3)}.pem",
                     datacenters=2) as server:
        setup = make_setup(server)
        pool = setup.pool(name="elsewhere", folder="DC1/vm/vmpool/elsewhere", datacenter=DATACENTER)
        status = setup.provider.task_status(setup.provider.clone(pool, "nowhere"))
        assert status.state is TaskState.ERROR
        assert "folder DC1/vm/vmpool/elsewhere is in datacenter DC1, not in the pool's datacenter DC0" in (
            status.error or "")
        assert not admin.exists(setup.provider, f"{DATACENTER}/vm/DC1")
        assert admin.exists(setup.provider, f"{DATACENTER}/vm/{TEMPLATE}")


def test_hosts_are_surveyed_again_on_a_new_session(private_vcsim: VcsimServer) -> None:
    """Host selection's cache is the session's: after a new login (vCenter restarted, the session
    expired) clones are placed on what vCenter says now, not on hosts read before (for up to a
    minute, before: two of three hosts put in maintenance meanwhile still got clones)."""
    setup = make_setup(private_vcsim, service={"manage_host_selection": True})
    provider = setup.provider
    pool = setup.pool()
    admin.wait_task(provider, provider.clone(pool, "before"))  # the hosts surveyed, cached for 60 s
    names = host_ids(setup)
    for name in ("DC0_C0_H0", "DC0_C0_H2"):
        admin.set_maintenance(provider, name, True)
    admin.end_session(provider)
    chosen = set()
    for index in range(3):
        admin.wait_task(provider, provider.clone(pool, f"after-{index}"))
        details = admin.vm_details(provider, f"{DATACENTER}/vm/{pool.folder}/after-{index}")
        assert details is not None
        chosen.add(names[details["extra_config"]["vcsim.host"]])
    assert chosen == {"DC0_C0_H1"}


@pytest.mark.parametrize("name", ["x" * 1_000_000, "a b", "", "-dev", "dev\n"])
def test_a_deployment_name_that_cannot_be_an_identity_is_refused_at_load(name: str) -> None:
    with pytest.raises(ConfigError) as refused:
        build({"config": {"deployment": name}, "providers": {"dummy": {}}, "pools": []})
    assert "config.deployment: must be 1 to 64 letters" in str(refused.value) and len(str(refused.value)) < 400
