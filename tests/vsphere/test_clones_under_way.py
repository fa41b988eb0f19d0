"""vCenter says which clones asked for without a noted task it still makes
(``VSphereProvider.clones_under_way``: the template's queued and running clone tasks, named by
their ``VmBeingClonedEvent``), in a bounded number of calls, and answers None (cannot tell)
rather than "not under way" on any doubt. Before, the vSphere provider always answered None: a
clone whose answer was lost held its task_limit slot up to the pool's timeout (15 minutes by
default) even when vCenter had no such clone. Also: a clone refused with ManagedObjectNotFound
and tried again is a lost answer only if its second ``CloneVM_Task`` was sent."""

from __future__ import annotations

import secrets
import socket
from datetime import datetime, timezone
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Iterator

import pytest
from pyVmomi import vim, vmodl

from chalicelib.providers.base import AnswerLost, ProviderError, TaskState
from chalicelib.providers.vsphere import clone as vsphere_clone
from chalicelib.providers.vsphere import inventory, under_way
from chalicelib.providers.vsphere.connection import Connection
from tests.support import eventually
from tests.vsphere import admin
from tests.vsphere.vcsim import DATACENTER, TEMPLATE, Setup, VcsimServer, delayed_clones, make_setup

CLONE_SECONDS = 10.0


@pytest.fixture
def cloning(vcsim_dir: Path) -> Iterator[VcsimServer]:
    """A simulator of its own whose clone tasks run CLONE_SECONDS."""
    yield from delayed_clones(vcsim_dir, CLONE_SECONDS, "under-way")


@pytest.fixture
def long_cloning(vcsim_dir: Path) -> Iterator[VcsimServer]:
    """A simulator of its own whose clone tasks run longer than any test of them."""
    yield from delayed_clones(vcsim_dir, 600, "under-way-long")


def names(count: int) -> list[str]:
    label = secrets.token_hex(3)
    return [f"uw-{label}-{index}" for index in range(count)]


def test_vcenter_names_the_clones_it_still_makes_and_none_once_they_end(cloning: VcsimServer) -> None:
    setup = make_setup(cloning)
    pool = setup.pool(size=2)
    first, second, never = names(3)
    refs = [setup.provider.clone(pool, first), setup.provider.clone(pool, second)]
    # Each with the reference its clone call gave: noted on the VM, it is followed as that clone.
    assert setup.provider.clones_under_way(pool, [first, second, never]) == {first: refs[0], second: refs[1]}
    assert setup.provider.clones_under_way(pool, [never]) == {}
    eventually(lambda: all(status.state is TaskState.SUCCESS
                           for status in setup.provider.task_statuses(refs).values()),
               CLONE_SECONDS * 5, "the clones to end", interval=0.2)
    assert setup.provider.clones_under_way(pool, [first, second, never]) == {}


def test_a_cancelled_clone_is_not_under_way(long_cloning: VcsimServer) -> None:
    setup = make_setup(long_cloning)
    pool = setup.pool(size=1)
    (name,) = names(1)
    ref = setup.provider.clone(pool, name)
    assert set(setup.provider.clones_under_way(pool, [name]) or ()) == {name}
    assert setup.provider.cancel_task(ref)
    assert setup.provider.clones_under_way(pool, [name]) == {}


def test_a_clone_never_asked_of_vcenter_is_not_under_way(setup: Setup) -> None:
    """No clone task on the template at all (the request never reached vCenter): not under way,
    for any number of names, in two calls (the template, its tasks)."""
    pool = setup.pool(size=1)
    setup.provider.list_vms(pool)  # connected, the datacenter known
    calls = setup.provider.call_count()
    assert setup.provider.clones_under_way(pool, names(50)) == {}
    assert setup.provider.call_count() - calls <= 2


def test_the_calls_do_not_grow_with_the_names_asked(long_cloning: VcsimServer) -> None:
    """Twelve clones running (two tasks each on the template: more than the 20 recent tasks a
    template lists besides its unfinished ones), each named; the same three calls for one name
    asked or 203."""
    setup = make_setup(long_cloning)
    pool = setup.pool(size=12)
    started = names(12)
    for name in started:
        setup.provider.clone(pool, name)
    costs = []
    for asked in (started[:1], started + names(200)):
        calls = setup.provider.call_count()
        assert set(setup.provider.clones_under_way(pool, asked) or ()) == set(asked) & set(started)
        costs.append(setup.provider.call_count() - calls)
    assert costs[0] == costs[1] <= 3  # the template, its tasks, their events


def test_a_running_clone_whose_name_vcenter_does_not_give_is_a_doubt(long_cloning: VcsimServer,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """A clone task running whose VmBeingClonedEvent is not among those read (not posted yet,
    events purged, a page too short): it may be any of the names asked, so vCenter cannot tell.
    The same when vCenter refuses to show its events (NoPermission)."""
    setup = make_setup(long_cloning)
    pool = setup.pool(size=1)
    (running,) = names(1)
    setup.provider.clone(pool, running)
    other = names(1)
    monkeypatch.setattr(under_way, "_being_cloned", lambda *args: [])
    assert setup.provider.clones_under_way(pool, other) is None

    def refused(*args: Any) -> list[Any]:
        raise vim.fault.NoPermission(privilegeId="System.View")

    monkeypatch.setattr(under_way, "_being_cloned", refused)
    assert setup.provider.clones_under_way(pool, other) is None


def test_a_clone_refused_then_failing_before_its_second_call_was_not_sent(setup: Setup,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """The first CloneVM_Task was refused with ManagedObjectNotFound (a host of the cached survey
    gone): vCenter started nothing, and the clone is placed again; the second try failing before
    its own CloneVM_Task (a lookup timing out) sent no clone: a plain failure, whose place is
    given back at once. Before, the first try's "sent" mark made it a lost answer, and the VM
    held its slot as a clone vCenter might be making (up to the pool's timeout)."""
    setup = make_setup(setup.server, service={"manage_host_selection": True})
    pool = setup.pool(size=1)
    tries: list[int] = []

    def start(*args: Any) -> str:
        tries.append(1)
        if len(tries) == 1:
            args[7](True)  # (its ``sending``) CloneVM_Task sent: vCenter answers with a fault
            raise vmodl.fault.ManagedObjectNotFound(msg="The object has already been deleted")
        raise socket.timeout("timed out")  # the second try's first lookup

    monkeypatch.setattr(vsphere_clone, "_send", start)
    with pytest.raises(ProviderError) as raised:
        setup.provider.clone(pool, names(1)[0])
    assert len(tries) == 2 and not isinstance(raised.value, AnswerLost)


def test_a_running_task_of_the_template_that_is_not_a_clone_leaves_no_doubt(
        setup: Setup, monkeypatch: pytest.MonkeyPatch) -> None:
    """A task on the template whose id mentions a clone but is no CloneVM_Task (the clone
    wizard's compatibility check) posts no VmBeingClonedEvent: it is not taken for a clone, and
    vCenter can still say no clone of the names runs. Before, any id containing "clone" counted:
    one such task running made every answer a doubt, each unnoted clone held to the pool's
    timeout."""
    pool = setup.pool(size=1)
    checking = {"info.descriptionId": "vm.check.ProvisioningChecker.checkClone",
                "info.state": vim.TaskInfo.State.running, "info.eventChainId": 7,
                "info.queueTime": datetime.now(timezone.utc), "_obj": vim.Task("task-check", None)}
    read = under_way.template_tasks
    monkeypatch.setattr(under_way, "template_tasks", lambda *args: [*read(*args), checking])
    assert setup.provider.clones_under_way(pool, names(2)) == {}
    assert [under_way.is_clone({"info.descriptionId": id}) for id in
            ("VirtualMachine.clone", "VirtualMachine.cloneVm", "VirtualMachine.instantClone", "VirtualApp.clone",
             "vm.Snapshot.createLinkedClone", "vm.check.ProvisioningChecker.checkClone")] == [
        True, True, False, False, False, False]


def test_a_clone_whose_event_does_not_say_where_it_lands_is_under_way_without_a_task(
        long_cloning: VcsimServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """A VmBeingClonedEvent without ``destFolder``: the clone is still under way (its slot kept),
    with no task reference to note (a reference without its folder could not tell, once vCenter
    forgets the task, whether the clone landed)."""
    setup = make_setup(long_cloning)
    pool = setup.pool(size=1)
    (name,) = names(1)
    setup.provider.clone(pool, name)
    read = under_way._being_cloned

    def folderless(*args: Any) -> list[Any]:  # as an event read without it (pyVmomi sets none)
        return [SimpleNamespace(chainId=event.chainId, destName=event.destName, destFolder=None)
                for event in read(*args)]

    monkeypatch.setattr(under_way, "_being_cloned", folderless)
    assert setup.provider.clones_under_way(pool, [name, *names(1)]) == {name: ""}


@pytest.mark.parametrize("mode", ["full", "linked", "linked from the template's snapshot", "linked, delta disks"])
def test_a_clone_is_found_whatever_the_clone_mode(vcsim_dir: Path, mode: str) -> None:
    """Full clones, linked ones (from the template's current snapshot when it has one) and linked
    ones from a template given delta disks (create_template_delta_disks): each is one
    CloneVM_Task on the template itself, whose task's entity is the template (no snapshot, no
    copy of it), so the template's tasks and events name the clone in every mode."""
    snapshot = "base" if "snapshot" in mode else ""
    server_of = delayed_clones(vcsim_dir, 600, "under-way-mode", template_snapshot=snapshot)
    server = next(server_of)
    try:
        setup = make_setup(server, service={"create_template_delta_disks": "delta" in mode})
        pool = setup.pool(size=1, create_linked_clone=mode != "full")
        preparation = setup.provider.prepare_template(pool)
        assert (preparation is not None) == ("delta" in mode)
        if preparation is not None:
            eventually(lambda: setup.provider.task_status(preparation).state is TaskState.SUCCESS, 30,
                       "the template's delta disks")
        (name,) = names(1)
        ref = setup.provider.clone(pool, name)
        assert setup.provider.clones_under_way(pool, [name, *names(1)]) == {name: ref}

        def clone_task_entity(connection: Connection) -> tuple[str, str]:
            template = inventory.find(connection, f"{DATACENTER}/vm/{TEMPLATE}")
            task = inventory.one(connection, vim.Task(ref.split(":")[1], connection.stub), ["info.entity"]) or {}
            return task["info.entity"]._moId, template._moId

        entity, template_id = setup.provider._run("read the clone task", clone_task_entity)
        assert entity == template_id
        placement = dict(admin.vm_details(setup.provider, f"{DATACENTER}/vm/{pool.folder}/{name}")["extra_config"])
        assert (placement["vcsim.diskMoveType"], placement["vcsim.fromSnapshot"]) == (
            vsphere_clone.LINKED if mode != "full" else vsphere_clone.FULL, str(bool(snapshot)).lower())
    finally:
        server_of.close()
