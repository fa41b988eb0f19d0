"""The vSphere provider against vcsim (real SOAP over HTTPS), at the Provider interface."""

from __future__ import annotations

import base64
import dataclasses
import json
import socket
import time
from pathlib import Path

import pytest
from pyVmomi import vim

from chalicelib.clock import FakeClock
from chalicelib.providers.base import ProviderError, TaskState
from chalicelib.providers.failures import FailureKind
from chalicelib.providers.vsphere import connection as connections
from chalicelib.providers.vsphere import inventory
from chalicelib.providers.vsphere.provider import VSphereProvider
from tests.support import connects_recorded, eventually
from tests.vsphere import admin
from tests.vsphere.vcsim import DATACENTER, TEMPLATE, Setup, VcsimServer, make_setup, vcsim_config
from tools.vcsim import launcher


def vm_path(pool_folder: str, name: str) -> str:
    return f"{DATACENTER}/vm/{pool_folder}/{name}"


def clone_and_wait(setup: Setup, pool, name: str) -> str:  # type: ignore[no-untyped-def]
    ref = setup.provider.clone(pool, name)
    admin.wait_task(setup.provider, ref)
    return ref


def test_clone_lands_in_pool_folder_with_annotation_and_extra_config(setup: Setup) -> None:
    pool = setup.pool()
    ref = setup.provider.clone(pool, "vm-annot")
    assert ref.startswith("clone:")
    assert setup.provider.task_status(ref).state is TaskState.SUCCESS

    listed = {vm.name: vm for vm in setup.provider.list_vms(pool)}
    assert list(listed) == ["vm-annot"]
    vm = listed["vm-annot"]
    assert vm.powered_on
    assert vm.host and vm.host.startswith("DC0_C0_H")
    annotation = json.loads(vm.annotation or "")
    assert annotation["pool"] == pool.name
    assert annotation["creator"] == "vmpool"
    assert annotation["template"] == TEMPLATE
    assert annotation["created"].endswith("Z")
    details = admin.vm_details(setup.provider, vm_path(pool.folder, "vm-annot"))
    assert details is not None
    assert details["extra_config"]["guestinfo.hostname"] == "vm-annot"
    # Other pools' folders and the template are not listed.
    assert setup.provider.list_vms(setup.pool()) == []


def test_a_pools_snapshot_main_memory_keys_reach_the_clones_extra_config_as_in_vmpooler(setup: Setup) -> None:
    """vmpooler writes a pool's ``snapshot_mainMem_ioBlockPages`` / ``snapshot_mainMem_iowait``
    into each clone's extraConfig (``mainMem.ioBlockPages`` / ``mainMem.iowait``: how a snapshot
    with memory writes it out); they were accepted and dropped. A pool without them sets neither."""
    tuned, plain = setup.pool(snapshot_mainMem_ioBlockPages="2048", snapshot_mainMem_iowait=0), setup.pool()
    clone_and_wait(setup, tuned, "vm-mainmem")
    clone_and_wait(setup, plain, "vm-no-mainmem")
    tuned_details = admin.vm_details(setup.provider, vm_path(tuned.folder, "vm-mainmem"))
    plain_details = admin.vm_details(setup.provider, vm_path(plain.folder, "vm-no-mainmem"))
    assert tuned_details is not None and plain_details is not None
    assert {key: value for key, value in tuned_details["extra_config"].items() if key.startswith("mainMem.")} == {
        "mainMem.ioBlockPages": "2048", "mainMem.iowait": "0"}
    assert not [key for key in plain_details["extra_config"] if key.startswith("mainMem.")]


def test_missing_folder_lists_nothing(setup: Setup) -> None:
    assert setup.provider.list_vms(setup.pool(folder="vmpool/never-made")) == []


def test_linked_clones_follow_pool_then_global_setting(vcsim: VcsimServer) -> None:
    linked_global = make_setup(vcsim, service={"create_linked_clones": True})
    full_global = make_setup(vcsim, service={"create_linked_clones": False})
    cases = [
        (linked_global, {}, "moveChildMostDiskBacking"),
        (linked_global, {"create_linked_clone": False}, "moveAllDiskBackingsAndConsolidate"),
        (full_global, {}, "moveAllDiskBackingsAndConsolidate"),
        (full_global, {"create_linked_clone": True}, "moveChildMostDiskBacking"),
    ]
    for index, (setup, settings, expected) in enumerate(cases):
        pool = setup.pool(**settings)
        clone_and_wait(setup, pool, f"linked-{index}")
        details = admin.vm_details(setup.provider, vm_path(pool.folder, f"linked-{index}"))
        assert details is not None
        # main.go records the diskMoveType the clone asked for (vcsim itself ignores it).
        assert details["extra_config"]["vcsim.diskMoveType"] == expected, (settings, expected)


def test_clone_options_datastore_cluster_network(setup: Setup) -> None:
    pool = setup.pool(datastore="LocalDS_0", clone_target="DC0_C0", network="DC0_DVPG0")
    clone_and_wait(setup, pool, "placed")
    assert [vm.name for vm in setup.provider.list_vms(pool)] == ["placed"]


def test_a_clone_target_or_network_in_a_subfolder_is_found_by_its_name_as_vmpooler_does(
        private_vcsim: VcsimServer) -> None:
    """vmpooler finds ``clone_target`` among every cluster under the datacenter's host folder and
    ``network`` among every network of the datacenter, by name: clusters in host folders
    (``DC0/host/Prod/Nested``) and port groups in network folders are usual. vmpool looked only at
    ``DC0/host/<name>`` and ``DC0/network/<name>``, and every clone failed as "not found". A name
    two clusters share is refused, asking for the path (as is one nothing has)."""
    setup = make_setup(private_vcsim)

    def nest(connection: connections.Connection) -> None:
        for folder in ("Prod", "Test"):
            parent = inventory.find(connection, f"{DATACENTER}/host").CreateFolder(folder)
            parent.CreateClusterEx(name="Nested", spec=vim.cluster.ConfigSpecEx())
        parent.CreateClusterEx(name="Only-in-test", spec=vim.cluster.ConfigSpecEx())
        ci = inventory.find(connection, f"{DATACENTER}/network").CreateFolder("ci")
        switch = admin._finish(connection, ci.CreateDVS_Task(vim.DistributedVirtualSwitch.CreateSpec(
            configSpec=vim.dvs.VmwareDistributedVirtualSwitch.ConfigSpec(name="ci-switch"))))
        admin._finish(connection, switch.AddDVPortgroup_Task(
            [vim.dvs.DistributedVirtualPortgroup.ConfigSpec(name="ci-portgroup", type="earlyBinding")]))

    setup.provider._run("nest clusters and networks in folders", nest)
    for index, settings in enumerate([{"clone_target": "Only-in-test"}, {"clone_target": "Test/Nested"},
                                      {"network": "ci-portgroup"}]):
        pool = setup.pool(**settings)
        clone_and_wait(setup, pool, f"nested-{index}")
        assert [vm.name for vm in setup.provider.list_vms(pool)] == [f"nested-{index}"], settings
    ambiguous = setup.provider.task_status(setup.provider.clone(setup.pool(clone_target="Nested"), "ambiguous"))
    assert ambiguous.state is TaskState.ERROR and ambiguous.kind is FailureKind.PLACEMENT
    assert "clone_target Nested names 2 objects under DC0/host: give its path there" in (ambiguous.error or "")


def test_missing_template_is_a_task_error_with_the_reason(setup: Setup) -> None:
    pool = setup.pool(template="templates/no-such-template")
    ref = setup.provider.clone(pool, "orphan")
    status = setup.provider.task_status(ref)
    assert status.state is TaskState.ERROR
    assert "templates/no-such-template" in (status.error or "")
    assert status.kind is FailureKind.TEMPLATE
    assert setup.provider.list_vms(pool) == []


@pytest.mark.parametrize(("settings", "named", "kind"), [
    ({"template": "templates/no-such-template"}, "templates/no-such-template", FailureKind.TEMPLATE),
    ({"network": "NoSuchNetwork"}, "network DC0/network/NoSuchNetwork not found", FailureKind.NETWORK),
    ({"datastore": "NoSuchDS"}, "datastore DC0/datastore/NoSuchDS not found", FailureKind.PLACEMENT),
    ({"clone_target": "NoSuchCluster"}, "clone_target DC0/host/NoSuchCluster not found", FailureKind.PLACEMENT),
    # vcsim refuses clones into this folder with NoPermission, as vCenter refuses a user
    # without the clone privilege there.
    ({"folder": f"vmpool/{launcher.NO_CLONE_FOLDER}"}, "NoPermission", FailureKind.PERMISSION),
])
def test_a_refused_clone_reads_as_an_error_of_its_kind(setup: Setup, settings: dict[str, str], named: str,
                                                      kind: FailureKind) -> None:
    """The kind is decided where the refusal is found and survives the task reference (stored in
    Redis, read by a later pass): a missing network is a network failure, not a template one."""
    pool = setup.pool(**settings)
    ref = setup.provider.clone(pool, f"refused-{kind.value}")
    status = setup.provider.task_status(ref)
    assert status.state is TaskState.ERROR and named in (status.error or "")
    assert status.kind is kind
    assert setup.provider.list_vms(pool) == []


def test_a_failed_reference_from_before_kinds_reads_as_other(setup: Setup) -> None:
    """A clone refused by the previous version left ``failed:<message>`` on its VM."""
    status = setup.provider.task_status("failed:" + base64.urlsafe_b64encode(b"template x not found").decode())
    assert (status.state, status.error, status.kind) == (TaskState.ERROR, "template x not found", FailureKind.OTHER)


def test_unknown_task_reads_as_error(setup: Setup) -> None:
    status = setup.provider.task_status("task:task-999999")
    assert status.state is TaskState.ERROR
    assert "task-999999" in (status.error or "")


def test_destroy_powered_on_vm_chains_power_off_and_destroy(setup: Setup) -> None:
    pool = setup.pool()
    clone_and_wait(setup, pool, "doomed")
    ref = setup.provider.destroy(pool, "doomed")
    assert ref is not None and ref.startswith("destroy:")
    admin.wait_task(setup.provider, ref)
    assert setup.provider.list_vms(pool) == []
    assert setup.provider.destroy(pool, "doomed") is None


def test_destroy_powered_off_vm_destroys_directly(setup: Setup) -> None:
    pool = setup.pool()
    admin.create_vm(setup.provider, f"{DATACENTER}/vm/{pool.folder}", "cold", power_on=False)
    ref = setup.provider.destroy(pool, "cold")
    assert ref is not None and ref.startswith("task:")
    admin.wait_task(setup.provider, ref)
    assert setup.provider.list_vms(pool) == []


def test_hand_made_vm_in_pool_folder_is_listed_and_hand_deleted_vm_disappears(setup: Setup) -> None:
    pool = setup.pool()
    admin.create_vm(setup.provider, f"{DATACENTER}/vm/{pool.folder}", "by-hand")
    assert [vm.name for vm in setup.provider.list_vms(pool)] == ["by-hand"]
    admin.delete_vm(setup.provider, vm_path(pool.folder, "by-hand"))
    assert setup.provider.list_vms(pool) == []


def test_readiness_tools_and_hostname_follow_boot_delay(setup: Setup) -> None:
    pool = setup.pool(ready_check="tools", check_hostname=True)
    clone_and_wait(setup, pool, "booting")
    started = time.monotonic()
    vm = setup.provider.list_vms(pool)[0]
    readiness = setup.provider.check_ready(pool, vm)
    if time.monotonic() - started < vcsim_boot_delay(setup):
        assert not readiness.ready
        assert readiness.reason
    eventually(lambda: setup.provider.check_ready(pool, setup.provider.list_vms(pool)[0]).ready, 10,
               "the guest to boot")
    vm = setup.provider.list_vms(pool)[0]
    assert vm.tools_running and vm.ip == "127.0.0.1" and vm.guest_hostname == "booting"


def vcsim_boot_delay(setup: Setup) -> float:
    return setup.server.boot_delay


def test_readiness_tcp_uses_guest_ip_and_port(setup: Setup) -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]
    try:
        pool = setup.pool(ready_check="tcp", ready_port=port)
        clone_and_wait(setup, pool, "tcpvm")
        first = setup.provider.check_ready(pool, setup.provider.list_vms(pool)[0])
        assert not first.ready and "IP" in first.reason  # no guest IP before the boot delay
        eventually(lambda: setup.provider.check_ready(pool, setup.provider.list_vms(pool)[0]).ready, 10,
               "the guest to boot")
    finally:
        listener.close()
    closed = setup.provider.check_ready(pool, setup.provider.list_vms(pool)[0])
    assert not closed.ready and f"port {port}" in closed.reason


def test_readiness_tcp_with_domain_needs_dns(setup: Setup) -> None:
    pool = setup.pool(ready_check="tcp", domain="invalid")
    clone_and_wait(setup, pool, "dnsvm")
    readiness = setup.provider.check_ready(pool, setup.provider.list_vms(pool)[0])
    assert not readiness.ready and "dnsvm.invalid" in readiness.reason


def test_purge_removes_unconfigured_under_parents_only(folder_destroying_setup: Setup) -> None:
    setup = folder_destroying_setup
    pool = setup.pool(name="purge-keep", folder="purgeparent/purge-keep")
    provider = setup.provider
    admin.create_vm(provider, f"{DATACENTER}/vm/purgeparent/purge-keep", "kept")
    admin.create_vm(provider, f"{DATACENTER}/vm/purgeparent/stale", "stale-vm")
    admin.create_vm(provider, f"{DATACENTER}/vm/purgeparent/allowed", "allowed-vm")
    admin.create_vm(provider, f"{DATACENTER}/vm/purgeparent", "loose-vm", power_on=False)
    admin.create_vm(provider, f"{DATACENTER}/vm/outside", "outsider")
    admin.create_vm(provider, f"{DATACENTER}/vm", "rootvm")

    removed = provider.purge_unconfigured([pool], allowlist=["allowed"])

    assert sorted(removed) == ["purgeparent/loose-vm", "purgeparent/stale"]
    assert not admin.exists(provider, f"{DATACENTER}/vm/purgeparent/stale")
    assert not admin.exists(provider, f"{DATACENTER}/vm/purgeparent/loose-vm")
    for kept in ("purgeparent/purge-keep/kept", "purgeparent/allowed/allowed-vm", "outside/outsider", "rootvm"):
        assert admin.exists(provider, f"{DATACENTER}/vm/{kept}"), kept
    assert admin.exists(provider, f"{DATACENTER}/vm/{TEMPLATE}")


def test_a_purge_stops_before_its_next_removal_once_its_invocations_time_is_out(setup: Setup) -> None:
    """Stray VMs under a pool's parent, the reconcile invocation's time running out after the
    first is gone (``out_of_time`` is asked before and after each VM's power-off): the purge
    stops there and says what went; the next purge removes the rest. Before, it went on to the
    end whatever the time (powering off and destroying one VM after another), and Lambda killed
    it mid-way."""
    pool = setup.pool(name="short-keep", folder="shortparent/short-keep")
    provider = setup.provider
    strays = [f"shortparent/stray-{n}" for n in range(3)]
    for path in strays:
        admin.create_vm(provider, f"{DATACENTER}/vm/shortparent", path.rpartition("/")[2], power_on=False)
    asked = []

    def out_of_time() -> bool:
        asked.append(True)
        return len(asked) > 2  # from the question before the second VM on

    removed = provider.purge_unconfigured([pool], allowlist=[], out_of_time=out_of_time)

    assert len(removed) == 1 and removed[0] in strays
    eventually(lambda: not admin.exists(provider, f"{DATACENTER}/vm/{removed[0]}"), 10, "vcsim to destroy it")
    left = [path for path in strays if path not in removed]
    assert all(admin.exists(provider, f"{DATACENTER}/vm/{path}") for path in left)
    assert sorted(provider.purge_unconfigured([pool], allowlist=[])) == left


def test_purge_never_purges_the_vm_root(setup: Setup) -> None:
    pool = setup.pool(name="rootpool", folder="rootpool")
    assert setup.provider.purge_unconfigured([pool], allowlist=[]) == []
    assert admin.exists(setup.provider, f"{DATACENTER}/vm/{TEMPLATE}")


def test_disk_and_snapshot_round_trip(setup: Setup) -> None:
    pool = setup.pool()
    clone_and_wait(setup, pool, "storage")
    path = vm_path(pool.folder, "storage")
    before = admin.vm_details(setup.provider, path)
    assert before is not None
    admin.wait_task(setup.provider, setup.provider.add_disk(pool, "storage", 8))
    after = admin.vm_details(setup.provider, path)
    assert after is not None and after["disks_gb"].count(8) == before["disks_gb"].count(8) + 1

    admin.wait_task(setup.provider, setup.provider.create_snapshot(pool, "storage", "a" * 32))
    assert admin.vm_details(setup.provider, path)["snapshots"] == ["a" * 32]  # type: ignore[index]
    admin.wait_task(setup.provider, setup.provider.revert_snapshot(pool, "storage", "a" * 32))
    with pytest.raises(ProviderError, match="snapshot nope not found"):
        setup.provider.revert_snapshot(pool, "storage", "nope")
    with pytest.raises(ProviderError, match="not found"):
        setup.provider.add_disk(pool, "no-such-vm", 8)


def test_host_selection_skips_maintenance(vcsim: VcsimServer) -> None:
    setup = make_setup(vcsim, service={"manage_host_selection": True})
    hosts = admin.host_names(setup.provider)
    assert hosts == ["DC0_C0_H0", "DC0_C0_H1", "DC0_C0_H2"]
    pool = setup.pool()
    admin.set_maintenance(setup.provider, "DC0_C0_H1", True)
    try:
        chosen = set()
        for index in range(6):
            clone_and_wait(setup, pool, f"placed-{index}")
            details = admin.vm_details(setup.provider, vm_path(pool.folder, f"placed-{index}"))
            assert details is not None
            chosen.add(details["extra_config"]["vcsim.host"])
        names = {h: n for h, n in _host_ids(setup).items()}
        assert {names[ref] for ref in chosen} == {"DC0_C0_H0", "DC0_C0_H2"}
    finally:
        admin.set_maintenance(setup.provider, "DC0_C0_H1", False)


@pytest.mark.parametrize("max_age", [None, 0])
def test_vmpoolers_host_selection_max_age_says_how_long_host_usage_is_reused(vcsim: VcsimServer,
                                                                              max_age: int | None) -> None:
    """``:config: host_selection_max_age`` (vmpooler's, in seconds) was accepted and ignored: host
    usage was reused for 60 s whatever it said. With 0, hosts put in maintenance just now are
    never chosen; with the default 60 s, the clones of that minute go on rotating through the
    hosts surveyed before (as vmpooler's, and as host_selection_cache_seconds says)."""
    service = {"manage_host_selection": True, **({"host_selection_max_age": max_age} if max_age is not None else {})}
    pool_document = {"name": f"age-{max_age}", "size": 1, "folder": f"vmpool/age-{max_age}"}
    config = vcsim_config(vcsim, [pool_document], service)
    assert config.warnings == ()
    provider = VSphereProvider(config.providers["vsphere"], config.service, FakeClock())
    pool = config.pools[0]
    admin.wait_task(provider, provider.clone(pool, f"age-{max_age}-first"))  # surveys the hosts
    names = _host_ids(make_setup(vcsim))
    for host in ("DC0_C0_H0", "DC0_C0_H2"):
        admin.set_maintenance(provider, host, True)
    try:
        chosen = set()
        for index in range(3):
            admin.wait_task(provider, provider.clone(pool, f"age-{max_age}-{index}"))
            details = admin.vm_details(provider, vm_path(pool.folder, f"age-{max_age}-{index}"))
            assert details is not None
            chosen.add(names[details["extra_config"]["vcsim.host"]])
    finally:
        for host in ("DC0_C0_H0", "DC0_C0_H2"):
            admin.set_maintenance(provider, host, False)
    if max_age == 0:
        assert chosen == {"DC0_C0_H1"}
    else:
        assert chosen != {"DC0_C0_H1"}  # the survey of a minute ago, as documented


@pytest.mark.parametrize(("service", "provider", "seconds"), [
    ({}, {}, 60.0),
    ({"vsphere_timeout": 7}, {}, 7.0),
    ({"vsphere_timeout": 7}, {"vsphere_timeout": 9}, 9.0),
    ({"vsphere_timeout": 7}, {"vsphere_timeout": 9, "call_timeout": 11}, 11.0),
])
def test_vmpoolers_vsphere_timeout_is_the_call_timeout_of_blocks_without_one(
        vcsim: VcsimServer, service: dict[str, float], provider: dict[str, float], seconds: float) -> None:
    """vmpooler reads ``vsphere_timeout`` in the provider block, else in ``:config:``, for its
    vCenter calls; it was refused as an unknown key (a warning) and calls waited 60 s."""
    config = vcsim_config(vcsim, [], service, {"call_timeout": None, **provider})
    assert config.warnings == ()
    built = VSphereProvider(config.providers["vsphere"], config.service, FakeClock())
    assert built.endpoint.call_timeout == seconds


def _host_ids(setup: Setup) -> dict[str, str]:
    from chalicelib.providers.vsphere import hosts as host_selection

    def survey(connection):  # type: ignore[no-untyped-def]
        root = connection.content.rootFolder
        return {h.ref._moId: h.name for h in host_selection.survey(connection, root, 90)}

    return setup.provider._run("survey", survey)


def test_host_selection_with_no_eligible_host_fails_the_clone(vcsim: VcsimServer) -> None:
    setup = make_setup(vcsim, service={"manage_host_selection": True, "utilization_limit": 10})
    status = setup.provider.task_status(setup.provider.clone(setup.pool(), "nohost"))
    assert status.state is TaskState.ERROR
    assert "no host is eligible" in (status.error or "") and "memory" in (status.error or "")
    assert status.kind is FailureKind.CAPACITY


def test_soap_calls_per_list_do_not_grow_with_vm_count(setup: Setup) -> None:
    small, large = setup.pool(), setup.pool()
    for index in range(5):
        admin.create_vm(setup.provider, f"{DATACENTER}/vm/{small.folder}", f"s{index}", power_on=False)
    for index in range(50):
        admin.create_vm(setup.provider, f"{DATACENTER}/vm/{large.folder}", f"l{index}", power_on=False)
    costs = []
    for pool, count in ((small, 5), (large, 50)):
        setup.provider.list_vms(pool)  # first list of a folder creates its view
        before = setup.provider.call_count()
        assert len(setup.provider.list_vms(pool)) == count
        costs.append(setup.provider.call_count() - before)
    assert costs[0] == costs[1] == 1


def test_connection_is_shared_and_survives_session_end(setup: Setup) -> None:
    setup.provider.list_vms(setup.pool())
    shared = connections.cached(setup.provider.endpoint)
    other = make_setup(setup.server).provider
    other.list_vms(setup.pool())
    assert connections.cached(other.endpoint) is shared
    admin.end_session(setup.provider)
    assert setup.provider.list_vms(setup.pool()) == []  # logged in again transparently
    assert connections.cached(setup.provider.endpoint) is shared


def test_vcsim_stopped_fails_fast_then_recovers(private_vcsim: VcsimServer, monkeypatch: pytest.MonkeyPatch) -> None:
    setup = make_setup(private_vcsim, connect_timeout=30)
    pool = setup.pool()
    clone_and_wait(setup, pool, "survivor")
    private_vcsim.stop()
    tried = connects_recorded(monkeypatch)
    started = time.monotonic()
    with pytest.raises(ProviderError, match="cannot"):
        setup.provider.list_vms(pool)
    with pytest.raises(ProviderError, match="cannot reach vCenter"):
        setup.provider.list_vms(pool)
    took = time.monotonic() - started
    # Each call tries vCenter once (the first on a fresh connection after the kept one's EOF, the
    # second its probe), retrying nothing. The bound guards against waiting, not for speed: a
    # refused connection ends at once (milliseconds), the connect timeout is 30 s here, so a
    # loaded machine has seconds to spare while a call that waited it out fails.
    assert tried == ["127.0.0.1", "127.0.0.1"], tried
    assert took < 15, f"the failed calls took {took:.1f} s"
    private_vcsim.start()  # same port; a fresh inventory and certificate
    assert setup.provider.list_vms(pool) == []
    clone_and_wait(setup, pool, "again")
    assert [vm.name for vm in setup.provider.list_vms(pool)] == ["again"]


def test_bad_password_and_certificate_errors_never_show_the_password(vcsim: VcsimServer) -> None:
    # "localhost" makes a connection-cache key of its own (host, port, user).
    secret = "hunter2-very-secret"
    local = f"localhost:{vcsim.port}"
    bad = make_setup(vcsim, server=local, password=secret)
    connections.drop(bad.provider.endpoint)  # no session left from another test: it would not log in
    with pytest.raises(ProviderError) as refused:
        bad.provider.list_vms(bad.pool())
    assert "refused the login" in str(refused.value) and secret not in str(refused.value)
    assert secret not in repr(bad.provider.endpoint)
    untrusted = make_setup(vcsim, server=local, ca_bundle=None)
    with pytest.raises(ProviderError, match=r"SSL|certificate"):
        untrusted.provider.list_vms(untrusted.pool())
    insecure = make_setup(vcsim, server=local, ca_bundle=None, insecure=True)
    assert insecure.provider.list_vms(insecure.pool()) == []


def test_server_with_port_and_port_key(vcsim: VcsimServer) -> None:
    from chalicelib.providers.vsphere.connection import split_host_port

    assert split_host_port("vc.example.com") == ("vc.example.com", 443)
    assert split_host_port("vc.example.com:8443") == ("vc.example.com", 8443)
    assert split_host_port("[::1]:444") == ("::1", 444)
    assert split_host_port("vc.example.com:8443", 9443) == ("vc.example.com", 9443)
    setup = make_setup(vcsim, server="localhost", port=vcsim.port)
    assert setup.provider.list_vms(setup.pool()) == []


def test_purge_never_destroys_the_vms_of_a_pool_whose_folder_holds_another_pools_folder(
        folder_destroying_setup: Setup) -> None:
    """Pool A in ``nest``, pool B in ``nest/b``: ``nest`` is B's parent, so purge looks in it, but
    the VMs there are A's (ready or checked out): never destroyed. Pool C in ``nest/c`` uses
    another provider block on the same vCenter: its folder is kept too. An unconfigured folder
    there goes."""
    setup = folder_destroying_setup
    outer = setup.pool(name="nest-a", folder="nest")
    inner = setup.pool(name="nest-b", folder="nest/b")
    other_block = dataclasses.replace(setup.pool(name="nest-c", folder="nest/c"), provider="same-vcenter")
    provider = setup.provider
    admin.create_vm(provider, f"{DATACENTER}/vm/nest", "a-in-use")
    admin.create_vm(provider, f"{DATACENTER}/vm/nest/b", "b-ready")
    admin.create_vm(provider, f"{DATACENTER}/vm/nest/c", "c-in-use")
    admin.create_vm(provider, f"{DATACENTER}/vm/nest/stale", "stale-vm")

    removed = provider.purge_unconfigured([outer, inner, other_block], allowlist=[])

    assert removed == ["nest/stale"]
    for kept in ("nest/a-in-use", "nest/b/b-ready", "nest/c/c-in-use"):
        assert admin.exists(provider, f"{DATACENTER}/vm/{kept}"), kept


def test_purge_never_destroys_a_vm_vmpool_tracks_nor_the_folder_holding_it(
        folder_destroying_setup: Setup) -> None:
    """A removed pool's folder while it drains, or the folder a pool moved from, is no longer
    configured, but a VM its user has checked out may be there: it and its folder stay (before,
    the folder was destroyed whole, the VM in use with it). What vmpool does not track goes."""
    setup = folder_destroying_setup
    kept = setup.pool(name="left-keep", folder="left/keep")
    provider = setup.provider
    admin.create_vm(provider, f"{DATACENTER}/vm/left/removed", "in-use")
    admin.create_vm(provider, f"{DATACENTER}/vm/left/removed", "stranger")
    admin.create_vm(provider, f"{DATACENTER}/vm/left", "loose-in-use")
    admin.create_vm(provider, f"{DATACENTER}/vm/left/stale", "stale-vm")

    removed = provider.purge_unconfigured([kept], allowlist=[],
                                          tracked=lambda names: {name for name in names if "in-use" in name})

    assert removed == ["left/stale"]
    for still in ("left/removed/in-use", "left/removed/stranger", "left/loose-in-use"):
        assert admin.exists(provider, f"{DATACENTER}/vm/{still}"), still


@pytest.mark.parametrize(("contents", "says"), [(None, "No such file or directory"), ("not a certificate", "")])
def test_a_ca_bundle_that_cannot_be_used_is_named_in_the_error(vcsim: VcsimServer, tmp_path: Path,
                                                               contents: str | None, says: str) -> None:
    bundle = tmp_path / "ca.pem"
    if contents is not None:
        bundle.write_text(contents)
    setup = make_setup(vcsim, ca_bundle=str(bundle))
    connections.drop(setup.provider.endpoint)  # a fresh container: no connection made by another test
    with pytest.raises(ProviderError) as refused:
        setup.provider.list_vms(setup.pool())
    assert f"cannot use ca_bundle {bundle}: {says}" in str(refused.value), refused.value
    assert refused.value.kind is FailureKind.CONNECTION
