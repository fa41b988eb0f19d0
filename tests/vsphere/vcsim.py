"""Our simulator (tools/vcsim) over HTTPS with its self-signed certificate, for tests.

The fixtures ``vcsim`` (one simulator for the session, boot delay 1 s) and ``private_vcsim`` are
in tests/conftest.py. ``vcsim_config(server, ...)`` builds a validated Config pointing at a running
simulator, so service-level tests can reuse it:

    config = vcsim_config(vcsim, pools=[{"name": "p", "size": 2, "folder": "vmpool/p"}])
    provider_config = config.providers["vsphere"]; service = config.service
"""

from __future__ import annotations

import secrets
import signal
import socket
import ssl
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence, TypeVar
from urllib.parse import urlparse

import pytest
from pyVim.connect import Disconnect, SmartConnect
from pyVmomi import SoapStubAdapter, vim, vmodl

from chalicelib.clock import SystemClock
from chalicelib.config import Config, PoolConfig, ProviderConfig, ServiceConfig, build
from chalicelib.providers.vsphere import connection as vsphere_connection
from chalicelib.providers.vsphere.provider import VSphereProvider
from local.processes import PortHold
from tests.support import stop_process
from tools.vcsim import launcher

TEMPLATE = launcher.TEMPLATE
DATACENTER = "DC0"


@dataclass
class VcsimServer:
    """A running vcsim; ``stop()`` and ``start()`` keep the same port and certificate path."""

    boot_delay: float
    cert_path: Path
    port: int = 0
    host_load_per_vm: float = 0.0
    """> 0: hosts report CPU and memory use growing with their powered-on VMs (percent per VM)."""
    datacenters: int = 1
    clone_delay: float = 0.0
    """Seconds each clone task runs before it ends (0: at once)."""
    method_delays: dict[str, float] = field(default_factory=dict)
    """SOAP methods slowed down, by name: seconds."""
    session_idle: float = 0.0
    """> 0: sessions idle this many seconds expire."""
    guest_addresses: tuple[str, ...] = ()
    """What a booted VM's first interface reports besides its IP (``guest.net``: launcher.start_vcsim)."""
    template_snapshot: str = ""
    """Non-empty: the template has a current snapshot of this name (linked clones link to it)."""
    page_size: int = 0
    """> 0: RetrievePropertiesEx answers hold at most this many objects, the rest by token."""
    log_path: Path | None = None
    """Where its output goes (default: ``cert_path`` with ``.log`` for a suffix), across restarts."""
    url: str = ""
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    _port_hold: PortHold = field(default_factory=PortHold, repr=False)

    def start(self) -> None:
        fresh_port = self.port == 0
        self.log_path = self.log_path or self.cert_path.with_suffix(".log")
        try:
            self.process, self.url = launcher.start_vcsim(
                self.port, self.boot_delay, self.cert_path, datacenters=self.datacenters,
                host_load_per_vm=self.host_load_per_vm, log_path=self.log_path,
                clone_delay=self.clone_delay, method_delays=self.method_delays, session_idle=self.session_idle,
                guest_addresses=self.guest_addresses, template_snapshot=self.template_snapshot,
                page_size=self.page_size)
        finally:
            self._port_hold.release()  # it listens on its port again (or did not start)
        self.port = urlparse(self.url).port or 0
        if fresh_port:
            # The system may hand out the port of an earlier test's simulator, whose connection
            # this process still caches: reused, its dead socket fails the first call (SSLEOFError).
            vsphere_connection.forget_server("127.0.0.1", self.port)

    def trouble(self) -> str | None:
        """Why a test may have failed here: the simulator, meant to be running, exited or refuses
        connections (with its log's tail); None when it is stopped on purpose or accepts them."""
        if self.process is None or self.log_path is None:
            return None
        if self.process.poll() is not None:
            problem = f"vcsim exited by itself (status {self.process.returncode})"
        else:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return None
            except ConnectionRefusedError:
                problem = "vcsim is running but refuses connections"
            except OSError:
                return None  # paused (a test's hung vCenter), or slow: not what this looks for
        return f"{problem} on port {self.port}; {self.log_path} ends:\n{launcher.log_tail(self.log_path)}"

    def stop(self) -> None:
        """Stop the simulator; its port stays held (``PortHold``) until it starts again on it or
        the ``with`` block ends."""
        if self.process is not None:
            launcher.stop_vcsim(self.process)
            self.process = None
            self._port_hold.hold(self.port)

    def pause(self) -> None:
        """SIGSTOP the simulator (a hung vCenter: connections are accepted, nothing answers), once
        it is stopped: a call sent after this gets no answer."""
        assert self.process is not None
        stop_process(self.process.pid)

    def resume(self) -> None:
        """SIGCONT the simulator after ``pause``."""
        if self.process is not None:
            self.process.send_signal(signal.SIGCONT)

    def __enter__(self) -> "VcsimServer":
        """Started for a ``with`` block (a fixture's ``yield``), stopped when it ends."""
        self.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()
        self._port_hold.release()

    @property
    def server(self) -> str:
        return f"127.0.0.1:{self.port}"




T = TypeVar("T")


class InventoryChanging(OSError):
    """vCenter's inventory kept changing under a read (VMs destroyed while listed): an OSError, as
    a vCenter away for a moment is, for callers that read again later."""


def read_again_while_vcenter_changes(read: Callable[[], T], attempts: int = 5) -> T:
    """``read()``, from the start again when an object it listed is gone by the time its
    properties are read (vCenter's ManagedObjectNotFound: a VM destroyed meanwhile);
    InventoryChanging after ``attempts`` such reads."""
    for _ in range(attempts - 1):
        try:
            return read()
        except vmodl.fault.ManagedObjectNotFound:
            continue
    try:
        return read()
    except vmodl.fault.ManagedObjectNotFound as fault:
        raise InventoryChanging(f"vCenter's inventory changed under {attempts} reads: {fault.msg}") from None


def vms_in_folders(server: VcsimServer) -> dict[str, list[str]]:
    """Folder name -> names of the VMs in it (templates aside), as vCenter lists them, read from
    outside the service; read again if a VM is destroyed while listed."""
    context = ssl.create_default_context(cafile=str(server.cert_path))
    instance = SmartConnect(host="127.0.0.1", port=server.port, user=launcher.USERNAME, pwd=launcher.PASSWORD,
                            sslContext=context)

    def listed() -> dict[str, list[str]]:
        content = instance.RetrieveContent()
        view = content.viewManager.CreateContainerView(content.rootFolder, [vim.VirtualMachine], True)
        try:
            found: dict[str, list[str]] = {}
            for machine in view.view:
                if not machine.config.template:
                    found.setdefault(machine.parent.name, []).append(machine.name)
            return {folder: sorted(names) for folder, names in found.items()}
        finally:
            view.DestroyView()

    try:
        return read_again_while_vcenter_changes(listed)
    finally:
        Disconnect(instance)


def delayed_clones(directory: Path, seconds: float, label: str, template_snapshot: str = "") -> Iterator[VcsimServer]:
    """A simulator of its own (its certificate in ``directory``, named after ``label``) whose
    clone tasks run ``seconds`` (the VM is in its folder meanwhile): for a fixture to yield from.
    ``template_snapshot``: the template's current snapshot (VcsimServer.template_snapshot)."""
    with VcsimServer(boot_delay=0.2, cert_path=directory / f"{label}-{secrets.token_hex(3)}.pem",
                     clone_delay=seconds, template_snapshot=template_snapshot) as server:
        yield server


def vcsim_config(
    server: VcsimServer,
    pools: Sequence[dict[str, Any]] = (),
    service: dict[str, Any] | None = None,
    provider: dict[str, Any] | None = None,
) -> Config:
    """A validated Config for ``server``: provider ``vsphere`` (CA bundle = the simulator's
    certificate, tcp readiness), the given pools (template and provider filled in) and
    ``config:`` keys (create_folders on by default)."""
    return build(vcsim_document(server, pools, service, provider))


def vcsim_document(
    server: VcsimServer,
    pools: Sequence[dict[str, Any]] = (),
    service: dict[str, Any] | None = None,
    provider: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The config document ``vcsim_config`` validates (to write as a file for another process)."""
    return {
        "config": {"create_folders": True, **(service or {})},
        "providers": {
            "vsphere": {
                "provider_class": "vsphere",
                "server": server.server,
                "username": launcher.USERNAME,
                "password": launcher.PASSWORD,
                "ca_bundle": str(server.cert_path),
                "connect_timeout": 2,
                "call_timeout": 10,
                **(provider or {}),
            }
        },
        "pools": [{"template": TEMPLATE, "provider": "vsphere", **pool} for pool in pools],
    }



@dataclass
class Setup:
    """A provider on a simulator and helpers to make uniquely named pools."""

    server: VcsimServer
    config: Config
    provider: VSphereProvider
    service_doc: dict[str, Any] = field(default_factory=dict)
    provider_doc: dict[str, Any] = field(default_factory=dict)

    def pool(self, **settings: Any) -> PoolConfig:
        """A pool in its own folder ``vmpool/<name>`` (unique per call), with the given keys."""
        name = settings.pop("name", f"pool-{secrets.token_hex(4)}")
        config = vcsim_config(
            self.server,
            [{"name": name, "size": 1, "folder": f"vmpool/{name}", **settings}],
            self.service_doc,
            self.provider_doc,
        )
        return config.pools[0]

    @property
    def service(self) -> ServiceConfig:
        return self.config.service

    @property
    def provider_config(self) -> ProviderConfig:
        return self.config.providers["vsphere"]


def make_setup(vcsim_server: VcsimServer, service: dict[str, Any] | None = None, **provider: Any) -> Setup:
    """A provider on ``vcsim_server``; keyword arguments override provider keys."""
    config = vcsim_config(vcsim_server, service=service, provider=provider)
    provider_config = config.providers["vsphere"]
    provider_object = VSphereProvider(provider_config, config.service, SystemClock())
    return Setup(vcsim_server, config, provider_object, dict(service or {}), dict(provider))


def record_soap_calls(monkeypatch: pytest.MonkeyPatch, record: Callable[[str, Any], None]) -> None:
    """Connections made from now on call ``record(method, args)`` for each SOAP method they send
    (vcsim counts nothing: what a test counts is counted at the stub)."""

    class RecordingStub(SoapStubAdapter):  # type: ignore[misc]  # pyVmomi is untyped
        def InvokeMethod(self, mo: Any, info: Any, args: Any, *rest: Any, **named: Any) -> Any:
            record(info.wsdlName, args)
            return super().InvokeMethod(mo, info, args, *rest, **named)

    monkeypatch.setattr(vsphere_connection, "SoapStubAdapter", RecordingStub)


def refuse_on_stub(provider: VSphereProvider, monkeypatch: pytest.MonkeyPatch,
                   refused: Callable[[str, Any], BaseException | None]) -> None:
    """From now on, the provider's connection fails each SOAP call ``refused(method, args)``
    gives an exception for with that exception (a vCenter fault: as vCenter refusing it; an
    OSError: as the network failing it), before sending it; the others are sent as ever."""
    stub = provider.connection().stub
    invoke = stub.InvokeMethod

    def refusing(mo: Any, info: Any, args: Any, *rest: Any, **named: Any) -> Any:
        fault = refused(info.wsdlName, args)
        if fault is not None:
            raise fault
        return invoke(mo, info, args, *rest, **named)

    monkeypatch.setattr(stub, "InvokeMethod", refusing)


def objects_read(method: str, args: Any) -> set[str]:
    """The ids of the objects a RetrievePropertiesEx call names (none for another method)."""
    if method != "RetrievePropertiesEx":
        return set()
    return {spec.obj._moId for spec_set in args[0] for spec in spec_set.objectSet or ()}

