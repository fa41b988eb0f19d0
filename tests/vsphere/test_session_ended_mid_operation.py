"""vCenter ending our session between a task's start and the read that follows it (an admin
terminating the service account's sessions, vCenter's session limit) never starts the task twice.

NotAuthenticated says the call it answers did nothing, not the calls before it: the connection
logs in again and repeats an operation only when nothing before changed vCenter. Against vcsim
(tools/vcsim): the session is logged out right after the task's start, as an admin would, and
the read that follows answered as vCenter answers it (``session_ends_before``).
"""

from __future__ import annotations

from typing import Any, Callable, Iterator

import pytest
from pyVmomi import vim

from chalicelib.providers.base import AnswerLost
from chalicelib.providers.vsphere import connection as connections
from chalicelib.providers.vsphere import tasks
from chalicelib.providers.vsphere.connection import Connection
from tests.harness import HarnessFactory
from tests.vsphere import admin
from tests.vsphere.test_bad_day import POOL, converge, pool_harness
from tests.vsphere.vcsim import DATACENTER, Setup, VcsimServer, make_setup, record_soap_calls


@pytest.fixture
def sent(vcsim: VcsimServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """The SOAP methods sent to the simulator by a fresh connection (as ``localhost``: a
    connection-cache key of its own)."""
    methods: list[str] = []

    record_soap_calls(monkeypatch, lambda method, args: methods.append(method))
    connections.forget_server("localhost", vcsim.port)
    yield methods
    connections.forget_server("localhost", vcsim.port)


def session_ends_before(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    """The first call of ``tasks.<name>`` (the read of a started task's queue time) finds the
    session ended: logged out, and answered NotAuthenticated as vCenter answers a read without
    a session (vcsim, govmomi 0.24, serves RetrievePropertiesEx without one, and the read then
    finds no task). Later calls are left alone."""
    original: Callable[..., str] = getattr(tasks, name)
    ended: list[bool] = []

    def ending(connection: Connection, *args: Any) -> str:
        if not ended:
            ended.append(True)
            connection.logout()
            raise vim.fault.NotAuthenticated(msg="The session is not authenticated.")
        return original(connection, *args)

    monkeypatch.setattr(tasks, name, ending)


@pytest.fixture
def local(vcsim: VcsimServer, sent: list[str]) -> Setup:
    return make_setup(vcsim, server=f"localhost:{vcsim.port}")


def test_a_clone_sent_before_the_session_ended_is_not_sent_again(
        local: Setup, sent: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    # Before: CloneVM_Task sent twice: vcsim made two VMs of the name in the folder (vCenter fails
    # the second task with DuplicateName, and the pool took its clone for failed). Then: sent once,
    # and failed as a lost answer. Now the queue time is read on its own, after the clone was sent:
    # that read is made again after the new login, and the clone has its reference.
    pool = local.pool()
    session_ends_before(monkeypatch, "read_tasks")
    ref = local.provider.clone(pool, "cloned-once")
    assert ref.startswith("clone:") and ":q" in ref and not ref.endswith(":q"), ref
    assert sent.count("CloneVM_Task") == 1
    assert sent.count("Login") == 2
    assert [vm.name for vm in local.provider.list_vms(pool)] == ["cloned-once"]


def test_a_disk_added_before_the_session_ended_is_not_added_again(
        local: Setup, sent: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    # Before: ReconfigVM_Task sent twice: the user's VM got two new disks (0, 3, 3 GB) for one.
    pool = local.pool()
    admin.wait_task(local.provider, local.provider.clone(pool, "one-disk"))
    path = f"{DATACENTER}/vm/{pool.folder}/one-disk"
    disks = admin.vm_details(local.provider, path)["disks_gb"]  # type: ignore[index]
    session_ends_before(monkeypatch, "recorded")
    with pytest.raises(AnswerLost):
        local.provider.add_disk(pool, "one-disk", 3)
    assert sent.count("ReconfigVM_Task") == 1
    assert admin.vm_details(local.provider, path)["disks_gb"] == [*disks, 3]  # type: ignore[index]


def test_a_read_the_session_ended_under_is_made_again_after_a_new_login(
        local: Setup, sent: list[str]) -> None:
    pool = local.pool()
    local.provider.list_vms(pool)
    admin.end_session(local.provider)
    assert local.provider.list_vms(pool) == []
    assert sent.count("Login") == 2


def test_a_users_disk_whose_session_ended_after_its_reconfigure_is_added_once_and_shown_done(
        vcsim: VcsimServer, make_harness: HarnessFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    # Before: the pass's re-login sent ReconfigVM_Task again: two disks in vCenter for the user's one.
    harness = pool_harness(make_harness, vcsim, size=1)
    converge(harness, 1)
    host = harness.checkout(POOL)
    path = f"{DATACENTER}/vm/{harness.pool(POOL).folder}/{host}"
    disks = admin.vm_details(harness.provider, path)["disks_gb"]  # type: ignore[index]
    assert harness.put(f"/api/v3/vm/{host}", {"disk": 8}).status == 200, harness.replies[-1].body
    session_ends_before(monkeypatch, "recorded")
    harness.reconcile(POOL)  # ReconfigVM_Task sent, then the session ended
    for _ in range(2):  # the next passes find the disk added (Provider.applied) and start nothing
        harness.clock.advance(15)
        harness.reconcile(POOL)
    told = harness.describe(host)
    assert (told["disk"], told.get("task_errors")) == (["+8gb"], None)
    assert admin.vm_details(harness.provider, path)["disks_gb"] == [*disks, 8]  # type: ignore[index]
