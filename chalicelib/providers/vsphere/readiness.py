"""Is a cloned VM usable yet? Decided from the inventory the pass already read, plus at most one
TCP connection: readiness never costs a vCenter call.

Rules, per pool (falling back to the provider block):

* ``ready_check: tcp`` (vmpooler's behaviour, the default): connect to ``ready_port`` (22) at
  ``<name>.<domain>`` when the pool has a domain (clients will use that name, so DNS must work),
  else at the IP VMware Tools reports.
* ``ready_check: tools``: VMware Tools running and an IP reported; no DNS or network path needed.
* ``ready_check: none``: powered on is enough.
* ``check_hostname: true`` additionally requires the guest's hostname (from Tools) to be the VM
  name, as vmpooler's optional check does.

The reason given when not ready is what an operator needs to fix it (DNS, Tools, firewall).
"""

from __future__ import annotations

import socket

from chalicelib.config import PoolConfig, ProviderConfig
from chalicelib.providers.base import Readiness, VMInfo
from chalicelib.providers.vsphere.config import vsphere_settings

TCP_TIMEOUT_SECONDS = 3.0
"""vmpooler waits 5 s; a pass checks many VMs, and a booted VM answers far faster than this."""


def check(config: ProviderConfig, pool: PoolConfig, vm: VMInfo) -> Readiness:
    """Apply the pool's readiness rules to one VM."""
    if not vm.powered_on:
        return Readiness(False, "powered off")
    settings = vsphere_settings(config.settings).for_pool(pool.settings)
    mode = settings.ready_check or "tcp"
    if settings.check_hostname:
        short = (vm.guest_hostname or "").split(".")[0]
        if not vm.guest_hostname:
            return Readiness(False, "guest hostname not reported yet (VMware Tools not running?)")
        if short != vm.name:
            return Readiness(False, f"guest hostname is {vm.guest_hostname!r}, not {vm.name!r}")
    if mode == "none":
        return Readiness(True)
    if mode == "tools":
        if not vm.tools_running:
            return Readiness(False, "VMware Tools not running yet")
        if not vm.ip:
            return Readiness(False, "VMware Tools running but no IP address reported yet")
        return Readiness(True)
    port = settings.ready_port or 22
    if pool.domain:
        target = f"{vm.name}.{pool.domain}"
        try:
            socket.getaddrinfo(target, port, type=socket.SOCK_STREAM)
        except socket.gaierror as error:
            seen = f"; VMware Tools reports IP {vm.ip}" if vm.ip else ""
            return Readiness(False, f"{target} does not resolve ({error.strerror}){seen}: check DNS")
    elif vm.ip:
        target = vm.ip
    else:
        return Readiness(False, "no IP address reported by VMware Tools yet and the pool has no domain")
    try:
        socket.create_connection((target, port), timeout=TCP_TIMEOUT_SECONDS).close()
    except OSError as error:
        reason = error.strerror or type(error).__name__
        return Readiness(False, f"cannot connect to {target} port {port}: {reason}")
    return Readiness(True)
