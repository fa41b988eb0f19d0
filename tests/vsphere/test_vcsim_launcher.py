"""The simulator's harness: vcsim's output goes to a log file (not /dev/null, not a pipe nobody reads
after startup), so a simulator that cannot start or that exits during a test says why; listing its
VMs from outside survives a VM destroyed while it is listed."""

from __future__ import annotations

import secrets
import signal
import socket
import ssl
from pathlib import Path

import pytest
from pyVim.connect import Disconnect, SmartConnect
from pyVmomi import vim, vmodl

from tests.vsphere import admin
from tests.vsphere.vcsim import (
    DATACENTER,
    InventoryChanging,
    VcsimServer,
    make_setup,
    read_again_while_vcenter_changes,
    vms_in_folders,
)
from tools.vcsim import launcher


def test_a_simulator_that_cannot_start_says_why(tmp_path: Path, vcsim_dir: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        log_path = tmp_path / "vcsim.log"
        with pytest.raises(RuntimeError) as refused:
            launcher.start_vcsim(port, 0.2, tmp_path / "vcsim.pem", log_path=log_path, timeout=20)
    assert "address already in use" in str(refused.value)
    assert "address already in use" in log_path.read_text()


def test_a_simulator_that_exits_during_a_test_is_reported_with_its_log(tmp_path: Path, vcsim_dir: Path) -> None:
    """What a failed test's report gets (tests/conftest.py): nothing while it runs or once stopped
    on purpose; once it has died, that it did and its output."""
    log_path = tmp_path / "vcsim.log"
    with VcsimServer(boot_delay=0.2, cert_path=tmp_path / "vcsim.pem", log_path=log_path) as server:
        assert server.trouble() is None
        assert server.process is not None
        server.process.send_signal(signal.SIGKILL)
        server.process.wait()
        trouble = server.trouble()
        assert trouble is not None
        assert f"exited by itself (status {-signal.SIGKILL})" in trouble and "VCSIM_URL=" in trouble
    assert server.trouble() is None  # stopped by the fixture: nothing to report


def test_a_vm_destroyed_while_listed_makes_the_listing_read_again_not_fail(private_vcsim: VcsimServer) -> None:
    """vCenter answers ManagedObjectNotFound when a VM listed a moment ago is read after it was
    destroyed (seen in the restart and crash audits); the listing reads again instead. A vcsim of
    its own: on the session's, other tests' VMs answer the same fault while they are made."""
    setup = make_setup(private_vcsim)
    folder = f"listed-{secrets.token_hex(4)}"
    for name in ("kept", "destroyed"):
        admin.create_vm(setup.provider, f"{DATACENTER}/vm/vmpool/{folder}", name)
    server = setup.server
    instance = SmartConnect(host="127.0.0.1", port=server.port, user=launcher.USERNAME, pwd=launcher.PASSWORD,
                            sslContext=ssl.create_default_context(cafile=str(server.cert_path)))
    reads = 0

    def listed() -> list[str]:
        nonlocal reads
        reads += 1
        content = instance.RetrieveContent()
        view = content.viewManager.CreateContainerView(content.rootFolder, [vim.VirtualMachine], True)
        machines = list(view.view)
        if reads == 1:  # destroyed between the listing and the reads of its properties
            admin.delete_vm(setup.provider, f"{DATACENTER}/vm/vmpool/{folder}/destroyed")
        return sorted(machine.name for machine in machines if machine.parent.name == folder)

    try:
        assert read_again_while_vcenter_changes(listed) == ["kept"]
    finally:
        Disconnect(instance)
    assert reads == 2
    assert vms_in_folders(server)[folder] == ["kept"]


def test_an_inventory_that_keeps_changing_is_reported_as_a_vcenter_away_for_a_moment() -> None:
    def changing() -> None:
        raise vmodl.fault.ManagedObjectNotFound(msg="The object has already been deleted")

    with pytest.raises(InventoryChanging, match="already been deleted") as error:
        read_again_while_vcenter_changes(changing, attempts=3)
    assert isinstance(error.value, OSError)  # what the audits' observers read again later
