"""Host selection's rules, one by one, on host properties as vCenter returns them (no simulator
needed): which hosts are never chosen and why, least used first, and the short-lived cache."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from pyVmomi import vim

from chalicelib.providers.vsphere import hosts
from chalicelib.providers.vsphere.hosts import HostSelector, usage

GREEN = vim.ManagedEntity.Status.green
CONNECTED = vim.HostSystem.ConnectionState.connected


def host(name: str, cpu_used_mhz: int = 1000, memory_used_mb: int = 8192, **overrides: Any) -> dict[str, Any]:
    """Properties of a host with 10 x 2,000 MHz cores and 64 GiB (10 % CPU, 12.5 % memory by default)."""
    found = {
        "_obj": SimpleNamespace(_moId=f"host-{name}"),
        "name": name,
        "summary.hardware.cpuMhz": 2000,
        "summary.hardware.numCpuCores": 10,
        "summary.hardware.memorySize": 64 * 1024 * 1024 * 1024,
        "summary.quickStats.overallCpuUsage": cpu_used_mhz,
        "summary.quickStats.overallMemoryUsage": memory_used_mb,
        "runtime.inMaintenanceMode": False,
        "runtime.connectionState": CONNECTED,
        "overallStatus": GREEN,
        "configIssue": [],
    }
    found.update(overrides)
    return found


@pytest.mark.parametrize("overrides, why", [
    ({"runtime.inMaintenanceMode": True}, "in maintenance mode"),
    ({"runtime.connectionState": vim.HostSystem.ConnectionState.disconnected}, "connection state"),
    ({"overallStatus": vim.ManagedEntity.Status.yellow}, "status yellow"),
    ({"configIssue": [vim.event.Event()]}, "configuration issues"),
    ({"summary.quickStats.overallCpuUsage": 18_500}, "CPU 92% >= 90%"),
    ({"summary.quickStats.overallMemoryUsage": 60_000}, "memory 92% >= 90%"),
])
def test_a_host_is_never_chosen_when(overrides: dict[str, Any], why: str) -> None:
    judged = usage(host("esx1", **overrides), limit=90)
    assert not judged.eligible and why in judged.why_not


def test_a_healthy_host_below_the_limit_is_eligible() -> None:
    judged = usage(host("esx1"), limit=90)
    assert judged.eligible and judged.why_not == ""
    assert (round(judged.cpu_percent), judged.memory_percent) == (5, 12.5)


def surveyed(*found: dict[str, Any], limit: float = 90) -> list[hosts.HostUsage]:
    return sorted((usage(item, limit) for item in found), key=lambda h: (h.load, h.name))


def test_least_used_first_and_a_burst_rotates_through_the_eligible_hosts(monkeypatch: pytest.MonkeyPatch) -> None:
    fleet = surveyed(host("busy", cpu_used_mhz=12_000), host("idle", cpu_used_mhz=200),
                     host("mid", cpu_used_mhz=6_000), host("down", **{"runtime.inMaintenanceMode": True}))
    monkeypatch.setattr(hosts, "survey", lambda connection, container, limit: fleet)
    selector = HostSelector(now=lambda: 0.0, cache_seconds=60)
    picks = [selector.pick(None, None, ("dc", "cluster"), 90).name for _ in range(4)]
    assert picks == ["idle", "mid", "busy", "idle"]


def test_no_eligible_host_says_why_for_each(monkeypatch: pytest.MonkeyPatch) -> None:
    fleet = surveyed(
        host("a", **{"runtime.inMaintenanceMode": True}), host("b", overallStatus=vim.ManagedEntity.Status.red)
    )
    monkeypatch.setattr(hosts, "survey", lambda connection, container, limit: fleet)
    selector = HostSelector(now=lambda: 0.0, cache_seconds=60)
    with pytest.raises(LookupError) as refused:
        selector.pick(None, None, ("dc", "cluster"), 90)
    assert "a: in maintenance mode" in str(refused.value) and "b: status red" in str(refused.value)


def test_the_host_list_is_surveyed_again_only_after_the_cache_expires(monkeypatch: pytest.MonkeyPatch) -> None:
    surveys: list[int] = []
    fleet = surveyed(host("esx1"))

    def survey(connection: Any, container: Any, limit: float) -> list[hosts.HostUsage]:
        surveys.append(1)
        return fleet

    monkeypatch.setattr(hosts, "survey", survey)
    now = [0.0]
    selector = HostSelector(now=lambda: now[0], cache_seconds=60)
    for at in (0.0, 30.0, 59.9):
        now[0] = at
        selector.pick(None, None, ("dc", "cluster"), 90)
    assert len(surveys) == 1
    now[0] = 60.0
    selector.pick(None, None, ("dc", "cluster"), 90)
    assert len(surveys) == 2


def test_a_clone_task_failing_later_for_its_host_avoids_it_and_the_tasks_kept_are_bounded(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The host of a clone task that fails later because vCenter cannot reach it is not picked
    again (``clone_failed``); the selector keeps the hosts of its last ``CLONES_KEPT`` clone
    tasks only (a warm container sends clones for days), the oldest forgotten first."""
    fleet = surveyed(host("esx1"), host("esx2", cpu_used_mhz=2000))
    monkeypatch.setattr(hosts, "survey", lambda connection, container, limit: fleet)
    monkeypatch.setattr(hosts, "CLONES_KEPT", 2)
    selector = HostSelector(now=lambda: 0.0, cache_seconds=60)
    picked = [selector.pick(None, None, ("dc", "c"), 90) for _ in range(3)]
    assert [found.name for found in picked] == ["esx1", "esx2", "esx1"]
    for number, found in enumerate(picked):
        selector.clone_sent(SimpleNamespace(_moId=f"task-{number}"), found)
    selector.clone_failed("task-0")  # forgotten: the oldest of three
    assert {selector.pick(None, None, ("dc", "c"), 90).name for _ in range(2)} == {"esx1", "esx2"}
    selector.clone_failed("task-1")
    assert {selector.pick(None, None, ("dc", "c"), 90).name for _ in range(2)} == {"esx1"}
