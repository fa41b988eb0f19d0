"""What the Windows VMs of puppetlabs-packer's vmpooler templates ask of the pool they came from.

At each login their ``scripts/windows/init/Set-Bginfo.ps1`` (unchanged since vmpooler 0.x: it
asks ``/api/v1``) shows the VM's lifetime, expiry and template on the desktop. It joins
``$PoolerApiURL = "http://<pooler>/api/v1/vm/"`` and ``/$VMHostname`` (Windows' ``hostname``,
which the image's post-clone script renamed to the VM's name from ``guestinfo.hostname``) and
sends ``GET /api/v1/vm//<name>`` through .NET's ``WebRequest`` (PowerShell 2), then reads
``$PoolerData.<name>.lifetime``, ``.running`` and ``.template``. vmpooler routed the empty segment
away (Rack::Protection's PathTraversal); the local stack answered ``404 {"ok": false}`` and the
script stopped at its first line (``GetResponse`` throws), so the desktop showed none of it.
"""

from __future__ import annotations

from typing import Callable

from tests.api.test_clients import DEMO_CONFIG
from tests.harness import Harness

DOTNET_WEBREQUEST_HEADERS = {"Content-Type": "application/json", "Connection": "Keep-Alive"}
"""What Set-Bginfo.ps1's ``[System.Net.WebRequest]`` sends: the type it sets, no body."""


def test_a_windows_vms_bginfo_script_reads_its_lifetime_and_template(make_stack: Callable[[str], Harness]) -> None:
    stack = make_stack(DEMO_CONFIG)
    stack.fill("win-2022-x86_64")
    fqdn = stack.post("/api/v3/vm/windows").json["windows"]["hostname"]
    vm_hostname = fqdn.split(".")[0]  # what Windows' `hostname` prints on the VM
    stack.clock.advance(1800)

    reply = stack.request("GET", f"/api/v1/vm//{vm_hostname}", headers=DOTNET_WEBREQUEST_HEADERS)

    assert reply.status == 200, reply.raw[:300]
    pooler_data = reply.json[vm_hostname]
    assert pooler_data["template"] == "win-2022-x86_64"
    assert pooler_data["lifetime"] == stack.config.service.vm_lifetime
    # $RemainingTime = [Math]::Floor(($Lifetime - running) * 3600): the desktop's expiry.
    assert pooler_data["running"] == 0.5


def test_empty_segments_anywhere_in_a_path_are_routed_as_vmpooler_routed_them(
        make_stack: Callable[[str], Harness]) -> None:
    """Every route: a base URL ending in ``/`` joined to a path beginning with one (``/api/v3/``
    + ``/status``) is served as the path without the empty segment."""
    stack = make_stack(DEMO_CONFIG)
    stack.fill("debian-12-x86_64")
    assert stack.get("/api/v3//totalrunning").json == {"running": 0}
    fqdn = stack.post("/api/v3//vm//debian").json["debian"]["hostname"]
    short = fqdn.split(".")[0]
    assert stack.put(f"/api/v3//vm//{short}", {"tags": {"project": "a"}}).json == {"ok": True}
    assert stack.get(f"/api/v2/vm/{short}").json[short]["tags"] == {"project": "a"}
    assert stack.delete(f"/api/v3///vm/{fqdn}").json == {"ok": True}
    assert stack.state_of(short) == "completed"
