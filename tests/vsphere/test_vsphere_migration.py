"""Migration at checkout against vcsim with three hosts whose load follows their VMs (every
clone lands on the template's host): checked-out VMs leave a busy or ineligible host for the
least used one, one at a time (migration_limit 1), a small difference is not worth a vMotion,
and GET /vm shows where each VM really is."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
from pyVmomi import vim, vmodl

from chalicelib.manager.migrations import MIGRATION_START_GRACE_SECONDS
from chalicelib.providers.vsphere import inventory
from tests.harness import Harness, HarnessFactory, Killed
from tests.support import eventually
from tests.vsphere import admin
from tests.vsphere.test_bad_day import paused_after_inventory
from tests.vsphere.vcsim import VcsimServer, refuse_on_stub, vcsim_config


def loaded_vcsim(directory: Path, percent: float) -> Iterator[VcsimServer]:
    with VcsimServer(boot_delay=0.2, cert_path=directory / f"loaded-{percent}.pem", host_load_per_vm=percent) as server:
        yield server


@pytest.fixture
def busy_vcsim(vcsim_dir: Path) -> Iterator[VcsimServer]:
    """Each powered-on VM uses 15 % of its host."""
    yield from loaded_vcsim(vcsim_dir, 15)


@pytest.fixture
def light_vcsim(vcsim_dir: Path) -> Iterator[VcsimServer]:
    """Each powered-on VM uses 1 % of its host."""
    yield from loaded_vcsim(vcsim_dir, 1)


def stack_on(server: VcsimServer, make_harness: HarnessFactory, size: int) -> Harness:
    """The API and a pool ``mig`` of ``size`` on the simulator, with migration_limit 1."""
    config = vcsim_config(server, service={"migration_limit": 1},
                          pools=[{"name": "mig", "size": size, "folder": "vmpool/mig", "ready_check": "tools"}])
    return make_harness(config, prefix="vmig:")


def fill(stack: Harness, server: VcsimServer) -> dict[str, str | None]:
    """Reconcile until the pool is full (its guests boot on the simulator's wall clock); where
    its VMs are once the simulator's host stats follow them (it updates them every 0.1 s, on its
    own clock: a loaded machine can take longer)."""
    def full_after_a_pass() -> bool:
        stack.reconcile("mig")
        return stack.count("mig", "ready") == stack.pool("mig").size

    eventually(full_after_a_pass, 10, "the pool to fill")
    placed = where(stack)

    def stats_follow_the_vms() -> bool:
        cpu = admin.host_cpu_percent(stack.provider)
        idle = min(cpu.values())  # a host none of the pool's VMs is on: the simulator's static figure
        # 0.1: the simulator rounds its figures down to whole MHz
        return all(cpu[host] >= idle + server.host_load_per_vm * list(placed.values()).count(host) - 0.1
                   for host in set(placed.values()) if host is not None)

    eventually(stats_follow_the_vms, 10, "the simulator's host stats to follow the VMs")
    return placed


def where(stack: Harness) -> dict[str, str | None]:
    return {vm.name: vm.host for vm in stack.provider.list_vms(stack.pool("mig"))}


def test_checked_out_vms_move_off_the_busy_host(busy_vcsim: VcsimServer, make_harness: HarnessFactory) -> None:
    stack = stack_on(busy_vcsim, make_harness, size=3)
    first_three = fill(stack, busy_vcsim)
    busy = set(first_three.values())
    assert len(busy) == 1  # vcsim puts every clone on the template's host
    busy_host = busy.pop()

    taken = stack.checkout_vms("mig", 2)
    assert all((stack.describe(host).get("migrated"), stack.describe(host)["host"]) == (None, busy_host)
               for host in taken)
    in_flight = []
    for _ in range(6):
        stack.reconcile("mig")
        in_flight.append(stack.migrations_in_flight())
        if all(stack.describe(host).get("migrated") == "true" for host in taken):
            break
    assert max(in_flight) == 1  # migration_limit
    actual = where(stack)
    for host in taken:
        answer = stack.describe(host)
        assert answer["migrated"] == "true"
        assert answer["host"] == actual[host] != busy_host
    # The VM nobody checked out stays where it was.
    [left] = set(first_three) - set(taken)
    assert actual[left] == busy_host and "migrated" not in stack.describe(left)


def test_a_small_difference_is_not_worth_a_vmotion_but_an_ineligible_host_is_left(
        light_vcsim: VcsimServer, make_harness: HarnessFactory) -> None:
    stack = stack_on(light_vcsim, make_harness, size=2)
    placed = fill(stack, light_vcsim)
    [host_name] = set(placed.values())
    [first] = stack.checkout_vms("mig", 1)
    for _ in range(3):
        stack.reconcile("mig")
    assert "migrated" not in stack.describe(first) and where(stack)[first] == host_name  # 2 points busier: stays

    # The host goes into maintenance: a VM checked out there now moves, whatever the loads.
    admin.set_maintenance(stack.provider, host_name, True)
    try:
        stack.clock.advance(61)  # past the host survey's cache
        [second] = stack.checkout_vms("mig", 1)
        for _ in range(3):
            stack.reconcile("mig")
        assert stack.describe(second)["migrated"] == "true"
        assert stack.describe(second)["host"] == where(stack)[second] != host_name
        assert where(stack)[first] == host_name  # checked out earlier: not migrated again
    finally:
        admin.set_maintenance(stack.provider, host_name, False)


def test_vcenter_hung_mid_pass_costs_the_migrations_one_timeout_and_fails_no_other(
        busy_vcsim: VcsimServer, make_harness: HarnessFactory) -> None:
    """vCenter hangs once the pass has read its inventory, with three checked-out VMs queued for a
    move (migration_limit 3): the first start times out (that migration fails, visibly); the pass
    starts no other, they stay queued and move once vCenter is back. Before, each start waited its
    timeout (60 s by default, the reconcile function's whole time) and failed."""
    config = vcsim_config(busy_vcsim, service={"migration_limit": 3},
                          provider={"call_timeout": 1, "connect_timeout": 1},
                          pools=[{"name": "mig", "size": 3, "folder": "vmpool/mig", "ready_check": "tools"}])
    stack = make_harness(config, prefix="vmig:")
    fill(stack, busy_vcsim)
    taken = stack.checkout_vms("mig", 3)
    try:
        stack.reconcile("mig", paused_after_inventory(busy_vcsim))
    finally:
        busy_vcsim.resume()

    def errors() -> list[str]:
        records = stack.store.records(taken)
        return [record.raw["migration_error"] for record in records.values() if record.raw.get("migration_error")]

    assert len(errors()) == 1 and "timed out" in errors()[0], errors()

    def all_ended() -> bool:
        stack.clock.advance(60)
        stack.reconcile("mig")
        return not any(record.raw.get("migration") for record in stack.store.records(taken).values())

    eventually(all_ended, 30, "the migrations left queued to end once vCenter is back", interval=0.2)
    assert len(errors()) == 1
    assert sum(stack.describe(host).get("migrated") == "true" for host in taken) >= 1


def killed_at(step: str) -> Callable[[str], None]:
    def checkpoint(reached: str) -> None:
        if reached == step:
            raise Killed(step)

    return checkpoint


def test_a_vmotion_someone_else_made_during_the_grace_is_not_read_as_ours(
        busy_vcsim: VcsimServer, make_harness: HarnessFactory) -> None:
    """The pass dies once it chose the target, before sending the vMotion; someone else (DRS, an
    operator) moves the VM to another host meanwhile. Before, the VM off its host read as
    migrated, to that host; now vCenter's relocations of the VM (its recent tasks) and where it is
    say the move was never ours: never started, and ``host`` follows the VM."""
    stack = stack_on(busy_vcsim, make_harness, size=2)
    fill(stack, busy_vcsim)
    [vm] = stack.checkout_vms("mig", 1)
    with pytest.raises(Killed):
        stack.reconcile("mig", killed_at("migration_target"))
    target = stack.store.get_vm(vm).raw["migration_to"]
    placed = where(stack)[vm]
    other = next(name for name in admin.host_names(stack.provider)
                 if name not in (target, placed) and name.startswith("DC0_C0_"))
    admin.relocate(stack.provider, f"DC0/vm/vmpool/mig/{vm}", other)
    stack.clock.advance(MIGRATION_START_GRACE_SECONDS + 1)
    report = stack.reconcile("mig")
    assert any("never started" in error for error in report.errors), report.errors
    stack.reconcile("mig")
    shown = stack.describe(vm)
    assert (shown.get("migrated"), shown["host"]) == (None, other)


def test_a_vmotion_sent_by_a_pass_killed_before_noting_it_ends_migrated(
        busy_vcsim: VcsimServer, make_harness: HarnessFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    stack = stack_on(busy_vcsim, make_harness, size=2)
    fill(stack, busy_vcsim)
    [vm] = stack.checkout_vms("mig", 1)
    original = stack.provider.start_migration

    def sent_then_killed(*args: Any) -> None:
        original(*args)
        raise Killed("after start_migration")

    monkeypatch.setattr(stack.provider, "start_migration", sent_then_killed)
    with pytest.raises(Killed):
        stack.reconcile("mig")
    monkeypatch.undo()
    target = stack.store.get_vm(vm).raw["migration_to"]
    assert len(stack.provider.recent_migrations(stack.pool("mig"), vm, 600)) == 1
    stack.clock.advance(MIGRATION_START_GRACE_SECONDS + 1)
    report = stack.reconcile("mig")
    assert report.errors == []
    shown = stack.describe(vm)
    assert (shown.get("migrated"), shown["host"]) == ("true", target) and where(stack)[vm] == target


def test_moves_are_looked_for_in_the_vms_own_tasks_not_vcenters_whole_list(
        busy_vcsim: VcsimServer, make_harness: HarnessFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """A VM's moves are read from its own recent tasks: after 250 other tasks on another VM (a
    busy vCenter), the move is still found, and the look reads its own few tasks. Before, it read
    the task manager's list of every recent task whole (hundreds on a busy vCenter, each task's
    info in one answer) on each look; vcsim's list of 200 had dropped the move by then."""
    stack = stack_on(busy_vcsim, make_harness, size=2)
    placed = fill(stack, busy_vcsim)
    vm, other_vm = sorted(placed)
    other = next(name for name in admin.host_names(stack.provider)
                 if name != placed[vm] and name.startswith("DC0_C0_"))
    admin.relocate(stack.provider, f"DC0/vm/vmpool/mig/{vm}", other)
    admin.busy_work(stack.provider, f"DC0/vm/vmpool/mig/{other_vm}", 250)
    read: list[int] = []
    properties = inventory.properties

    def counted(connection: Any, objects: list[Any], paths: Any) -> Any:
        read.append(len(objects))
        return properties(connection, objects, paths)

    monkeypatch.setattr(inventory, "properties", counted)
    assert len(stack.provider.recent_migrations(stack.pool("mig"), vm, 600) or []) == 1
    assert sum(read) <= 20, read


def test_a_vmotion_vcenter_cannot_reach_the_target_of_goes_to_another_host(
        busy_vcsim: VcsimServer, make_harness: HarnessFactory) -> None:
    """vCenter refuses the move to the least used host with HostNotConnected (at the SOAP stub of
    the real vcsim; its survey still shows the host connected): the VM moves to the next host in
    the same pass, and that host is avoided. Before, the migration failed to start (`other`) and
    each checkout of that minute was aimed at the same host and failed alike."""
    stack = stack_on(busy_vcsim, make_harness, size=3)
    [busy_host] = set(fill(stack, busy_vcsim).values())
    aimed: list[str] = []

    def refused(method: str, args: Any) -> BaseException | None:
        if method != "RelocateVM_Task":
            return None
        aimed.append(args[0].host._moId)
        return vmodl.fault.HostNotConnected(msg="The host is not connected.") if len(set(aimed)) == 1 else None

    with pytest.MonkeyPatch.context() as patch:
        refuse_on_stub(stack.provider, patch, refused)
        taken = stack.checkout_vms("mig", 2)
        for _ in range(6):
            stack.reconcile("mig")
            if all(stack.describe(host).get("migrated") == "true" for host in taken):
                break
    unreachable = aimed[0]
    hosts = {ref: name for name, ref in _host_refs(stack).items()}
    actual = where(stack)
    for host in taken:
        assert stack.describe(host).get("migrated") == "true", stack.describe(host)
        assert actual[host] not in (busy_host, hosts[unreachable])
    assert aimed.count(unreachable) == 1, aimed  # tried once, then avoided


def _host_refs(stack: Harness) -> dict[str, str]:
    """Each host's name and id."""

    def read(connection: Any) -> dict[str, str]:
        view = inventory.container_view(connection, connection.content.rootFolder, vim.HostSystem, True)
        try:
            return {item["name"]: item["_obj"]._moId
                    for item in inventory.view_contents(connection, view, vim.HostSystem, ["name"])}
        finally:
            inventory.destroy_view(view)

    return stack.provider._run("host ids", read)


def test_a_host_whose_vmotion_task_fails_later_for_it_is_not_the_next_moves_target(
        busy_vcsim: VcsimServer, make_harness: HarnessFactory) -> None:
    """vCenter accepts the move to the least used host, but its task ends in HostNotConnected
    when read on the next pass (faked at the SOAP stub of the real vcsim): the next checkout's
    move goes to another host, as when vCenter refuses the move at once. Before, the failure
    was told `host` but the host stayed the least used one of the cached survey: every move of
    that minute was aimed at it."""
    stack = stack_on(busy_vcsim, make_harness, size=3)
    fill(stack, busy_vcsim)
    stub = stack.provider.connection().stub
    invoke = stub.InvokeMethod
    aimed: list[str] = []
    failing: set[str] = set()  # the first move's task

    def failing_later(mo: Any, info: Any, args: Any, *rest: Any, **named: Any) -> Any:
        result = invoke(mo, info, args, *rest, **named)
        if info.wsdlName == "RelocateVM_Task":
            aimed.append(args[0].host._moId)
            if len(aimed) == 1:
                failing.add(result._moId)
        elif info.wsdlName in ("RetrievePropertiesEx", "ContinueRetrievePropertiesEx") and result is not None:
            for found in result.objects or ():
                if found.obj._moId in failing:
                    props = [prop for prop in found.propSet or () if prop.name not in ("info.state", "info.error")]
                    found.propSet = [*props, vmodl.DynamicProperty(name="info.state", val=vim.TaskInfo.State.error),
                                     vmodl.DynamicProperty(name="info.error", val=vmodl.fault.HostNotConnected(
                                         msg="The host is not connected."))]
        return result

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(stub, "InvokeMethod", failing_later)
        stack.checkout_vms("mig", 2)
        for _ in range(4):  # within the selection's 60 s cache: the clock does not move
            stack.reconcile("mig")
            if len(aimed) >= 2:
                break
    assert len(aimed) >= 2, aimed  # the second checkout's move started
    assert aimed.count(aimed[0]) == 1, aimed  # the unreachable target was avoided after
