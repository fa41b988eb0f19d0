"""Each vCenter fault is reported with the kind of failure docs/vsphere.md gives it, its own
kind before its base class's: ``NoPermissionOnHost`` is a ``HostConnectFault`` in pyVmomi, but
a refusal of rights (``permission``, which an operator grants), not a host out of reach
(``connection``, which sends the operator to the network)."""

from __future__ import annotations

from typing import Any

import pytest
from pyVmomi import VmomiSupport, vim, vmodl

from chalicelib.providers.failures import FailureKind
from chalicelib.providers.vsphere.connection import fault_kind
from tests.vsphere import admin
from tests.vsphere.test_bad_day import POOL, pool_harness
from tests.vsphere.test_clone_failure_status_vcsim import failing_passes, pool_status
from tests.vsphere.vcsim import VcsimServer, refuse_on_stub

DOCUMENTED: dict[type[BaseException], FailureKind] = {
    vim.fault.NoPermission: FailureKind.PERMISSION,
    vim.fault.InvalidLogin: FailureKind.PERMISSION,
    vim.fault.InsufficientResourcesFault: FailureKind.CAPACITY,
    vim.fault.NoDiskSpace: FailureKind.CAPACITY,
    vim.fault.Timedout: FailureKind.TIMEOUT,
    vim.fault.HostConnectFault: FailureKind.CONNECTION,
    vmodl.fault.HostCommunication: FailureKind.HOST,  # HostNotConnected, HostNotReachable: were `other`
    vim.fault.DvsNotAuthorized: FailureKind.PERMISSION,  # was `other`
}
"""docs/vsphere.md: each fault type named there and the kind it is, its subclasses with it."""

REFUSALS_OF_RIGHTS: dict[type[BaseException], FailureKind] = {
    vim.fault.NoPermissionOnHost: FailureKind.PERMISSION,  # vCenter's user lacks rights on the host
    vim.fault.GatewayToHostAuthFault: FailureKind.PERMISSION,  # the gateway's credentials refused
}
"""Subclasses of a type above that are of another kind (docs/vsphere.md names them too)."""


def pyvmomi_faults() -> list[type[BaseException]]:
    """Every fault class pyVmomi knows (its types load on first use)."""
    found = []
    for name in list(VmomiSupport._dataDefMap):
        try:
            cls = VmomiSupport.GetVmodlType(name)
        except Exception:  # noqa: BLE001 - a type of a version this pyVmomi cannot build
            continue
        if isinstance(cls, type) and issubclass(cls, vmodl.MethodFault):
            found.append(cls)
    return found


def documented_kind(cls: type[BaseException]) -> FailureKind:
    """The kind docs/vsphere.md gives a fault of type ``cls``."""
    if cls in REFUSALS_OF_RIGHTS:
        return REFUSALS_OF_RIGHTS[cls]
    exceptions = [kind for base, kind in REFUSALS_OF_RIGHTS.items() if issubclass(cls, base)]
    if exceptions:
        return exceptions[0]
    kinds = {kind for base, kind in DOCUMENTED.items() if issubclass(cls, base)}
    assert len(kinds) <= 1, (cls, kinds)
    return kinds.pop() if kinds else FailureKind.OTHER


FAULTS = pyvmomi_faults()


def test_pyvmomi_has_the_fault_types_the_table_names() -> None:
    names = {cls.__name__ for cls in FAULTS}
    assert {cls.__name__ for cls in [*DOCUMENTED, *REFUSALS_OF_RIGHTS]} <= names
    assert len(FAULTS) > 500  # the whole catalogue, not the few already loaded


@pytest.mark.parametrize("cls", [cls for cls in FAULTS if documented_kind(cls) is not FailureKind.OTHER],
                         ids=lambda cls: cls.__name__)
def test_each_fault_of_a_named_type_or_its_subclasses_has_its_documented_kind(cls: type[BaseException]) -> None:
    assert fault_kind(cls()) is documented_kind(cls)


def test_a_refusal_of_rights_on_a_host_is_a_permission_failure_not_a_connection_one() -> None:
    fault = vim.fault.NoPermissionOnHost(msg="vpxuser may not log in to the host")
    assert isinstance(fault, vim.fault.HostConnectFault)  # why it was counted as `connection`
    assert fault_kind(fault) is FailureKind.PERMISSION
    assert fault_kind(vim.fault.NoHost(name="esx-9")) is FailureKind.CONNECTION
    assert fault_kind(vim.fault.InvalidState()) is FailureKind.OTHER


def test_a_pool_whose_clones_vcenter_refuses_on_the_host_is_told_permission(
        vcsim: VcsimServer, make_harness: Any) -> None:
    """vCenter refuses each clone with NoPermissionOnHost (at the SOAP stub of a real vcsim):
    /status says `permission` (before: `connection`, as if vCenter or the host were unreachable)."""
    harness = pool_harness(make_harness, vcsim, size=2)
    harness.provider.list_vms(harness.pool(POOL))  # logged in: the stub exists

    def refused(method: str, args: Any) -> BaseException | None:
        if method == "CloneVM_Task":
            return vim.fault.NoPermissionOnHost(msg="Permission to perform this operation was denied.")
        return None

    with pytest.MonkeyPatch.context() as patch:
        refuse_on_stub(harness.provider, patch, refused)
        failing_passes(harness)
        assert pool_status(harness)["clone_failure"] == "permission"


@pytest.mark.parametrize(("fault", "kind"), [
    (vmodl.fault.HostNotConnected(msg="The host is not connected."), "host"),
    (vmodl.fault.HostNotReachable(msg="Cannot contact the specified host."), "host"),
    (vim.fault.DvsNotAuthorized(sessionExtensionKey="", dvsExtensionKey="com.vmware.nsx"), "permission"),
], ids=lambda value: type(value).__name__ if isinstance(value, BaseException) else value)
def test_a_pool_whose_clones_vcenter_refuses_for_its_host_or_switch_is_told_why(
        vcsim: VcsimServer, make_harness: Any, fault: BaseException, kind: str) -> None:
    """vCenter refuses each clone (no host selection: vCenter places it) because the host it
    needs is not connected, or the port group's switch belongs to an extension: /status says
    `host` or `permission` (before: `other` for each, nothing to tell the operator where to look;
    and an on-demand request spent every attempt on a switch only an operator can fix)."""
    harness = pool_harness(make_harness, vcsim, size=2)
    harness.provider.list_vms(harness.pool(POOL))  # logged in: the stub exists

    def refused(method: str, args: Any) -> BaseException | None:
        return fault if method == "CloneVM_Task" else None

    with pytest.MonkeyPatch.context() as patch:
        refuse_on_stub(harness.provider, patch, refused)
        failing_passes(harness)
        assert pool_status(harness)["clone_failure"] == kind


def test_a_host_vcenter_cannot_reach_is_not_picked_again_for_a_clone(
        vcsim: VcsimServer, make_harness: Any) -> None:
    """Host selection on; vCenter refuses clones onto DC0_C0_H1 with HostNotConnected while its
    survey still shows the host connected (vCenter notices a host not responding after a while).
    The clone sent there goes to another host in the same pass, and the host gets none for the
    selection's cache time: the pool fills, no clone fails. Before, one clone in three failed
    (kind `other`; its VM taken out of service, a clone more to make) at each turn of the
    rotation until the survey's cache expired."""
    harness = pool_harness(make_harness, vcsim, size=3, service={"manage_host_selection": True})
    provider = harness.provider
    unreachable = provider._run("find DC0_C0_H1", lambda connection: admin._host_named(connection, "DC0_C0_H1"))._moId
    aimed: list[str] = []

    def refused(method: str, args: Any) -> BaseException | None:
        if method != "CloneVM_Task":
            return None
        host = args[2].location.host
        aimed.append(host._moId)
        return vmodl.fault.HostNotConnected(msg="The host is not connected.") if host._moId == unreachable else None

    with pytest.MonkeyPatch.context() as patch:
        refuse_on_stub(harness.provider, patch, refused)
        for _ in range(2):  # within the selection's 60 s cache
            harness.reconcile(POOL)
            harness.clock.advance(20)
        counts = harness.store.counts([POOL])[POOL]
        assert (counts["pending"] + counts["ready"], counts["completed"]) == (3, 0), counts  # no clone failed
        assert aimed.count(unreachable) == 1, aimed  # tried once, then avoided
        placed = {(admin.vm_details(provider, f"DC0/vm/{harness.pool(POOL).folder}/{vm.name}") or {})
                  .get("extra_config", {}).get("vcsim.host") for vm in provider.list_vms(harness.pool(POOL))}
        assert placed and unreachable not in placed, placed


def test_a_cluster_whose_every_host_vcenter_cannot_reach_is_told_host_not_capacity(
        vcsim: VcsimServer, make_harness: Any) -> None:
    """Host selection on; vCenter refuses clones onto each of the cluster's hosts with
    HostNotConnected: each host is tried once, then avoided, and /status says `host` (before this
    was told apart, the clones after the first found every host avoided and said `capacity`,
    sending the operator to look for room)."""
    harness = pool_harness(make_harness, vcsim, size=3, service={"manage_host_selection": True})
    harness.provider.list_vms(harness.pool(POOL))  # logged in: the stub exists
    aimed: list[str] = []

    def refused(method: str, args: Any) -> BaseException | None:
        if method != "CloneVM_Task":
            return None
        aimed.append(args[2].location.host._moId)
        return vmodl.fault.HostNotConnected(msg="The host is not connected.")

    kinds: list[str] = []
    with pytest.MonkeyPatch.context() as patch:
        refuse_on_stub(harness.provider, patch, refused)
        for _ in range(2):  # the clones, then their failures read (within the selection's cache)
            report = harness.reconcile(POOL)
            kinds.extend(failure.kind.value for failure in report.clone_failures.values())
            harness.clock.advance(20)
    assert kinds == ["host"] * 3, kinds  # the metric's reasons, each clone's failure
    assert pool_status(harness)["clone_failure"] == "host"
    assert len(aimed) == len(set(aimed)) == 3, aimed  # each host once


def test_a_host_whose_clone_task_fails_later_for_it_is_not_picked_again(
        vcsim: VcsimServer, make_harness: Any) -> None:
    """Host selection on; vCenter accepts each clone, but the task of the one placed on
    DC0_C0_H1 ends in HostNotConnected when read on the next pass (faked at the SOAP stub: vcsim
    clones at once). The failure is `host`, and that host gets no clone for the selection's cache
    time, as when vCenter refuses the clone at once. Before, it was reported `host` but the host
    was picked again at the next turn of the rotation, and that clone failed too (four clones on
    three hosts: the replacement's turn is the unreachable host's again)."""
    harness = pool_harness(make_harness, vcsim, size=4, service={"manage_host_selection": True})
    provider = harness.provider
    unreachable = provider._run("find DC0_C0_H1", lambda connection: admin._host_named(connection, "DC0_C0_H1"))._moId
    aimed: list[str] = []
    failing: set[str] = set()  # the clone tasks placed on the unreachable host
    stub = provider.connection().stub
    invoke = stub.InvokeMethod

    def failing_later(mo: Any, info: Any, args: Any, *rest: Any, **named: Any) -> Any:
        result = invoke(mo, info, args, *rest, **named)
        if info.wsdlName == "CloneVM_Task":
            aimed.append(args[2].location.host._moId)
            if aimed[-1] == unreachable:
                failing.add(result._moId)
        elif info.wsdlName in ("RetrievePropertiesEx", "ContinueRetrievePropertiesEx") and result is not None:
            for found in result.objects or ():
                if found.obj._moId not in failing:
                    continue
                # A successful task's read holds no info.error (unset): given one.
                props = [prop for prop in found.propSet or () if prop.name not in ("info.state", "info.error")]
                found.propSet = [*props, vmodl.DynamicProperty(name="info.state", val=vim.TaskInfo.State.error),
                                 vmodl.DynamicProperty(name="info.error", val=vmodl.fault.HostNotConnected(
                                     msg="The host is not connected."))]
        return result

    kinds: list[str] = []
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(stub, "InvokeMethod", failing_later)
        for _ in range(3):  # within the selection's 60 s cache
            report = harness.reconcile(POOL)
            kinds.extend(failure.kind.value for failure in report.clone_failures.values())
            harness.clock.advance(20)
    assert kinds == ["host"], kinds  # the one clone placed there failed, as `host`
    assert aimed.count(unreachable) == 1, aimed  # then avoided
