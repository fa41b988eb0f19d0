"""``timeout_notification``: one warning line per pending VM that is slower than it, whether it is
still cloning or booting, before ``timeout`` takes it out of service."""

from __future__ import annotations

import io

from tests.harness import HarnessFactory
from tests.support import json_lines

CONFIG = """\
config: {timeout: 30, timeout_notification: 5, task_limit: 10}
providers:
  dummy: {provider_class: dummy, seed: 3}
pools:
  - {name: booting, size: 1, provider: dummy, boot_time: 1200}
  - {name: cloning, size: 1, provider: dummy, createvm_max_time: 100000}
"""


def slow_lines(output: io.StringIO) -> list[dict]:
    return [line for line in json_lines(output.getvalue()) if line["message"] == "VM is slow to become ready"]


def test_one_line_per_slow_vm_once_it_passes_timeout_notification(
        make_world: HarnessFactory, log_output: io.StringIO) -> None:
    world = make_world(CONFIG)
    started = {pool: world.reconcile(pool).clones_started[0] for pool in ("booting", "cloning")}

    for _ in range(4):  # 4 minutes: below timeout_notification
        world.clock.advance(60)
        for pool in started:
            world.reconcile(pool)
    assert slow_lines(log_output) == []

    for _ in range(5):  # 9 minutes: past it, several passes
        world.clock.advance(60)
        for pool in started:
            world.reconcile(pool)
    lines = slow_lines(log_output)
    assert sorted((line["pool"], line["hostname"]) for line in lines) == sorted(started.items())
    by_pool = {line["pool"]: line for line in lines}
    assert by_pool["cloning"]["reason"] == "cloning"
    assert by_pool["booting"]["reason"] == "booting: no IP address yet"
    assert all(line["level"] == "WARNING" and line["minutes"] == 6.0 for line in lines)  # the first pass past 5
    # Still pending: a warning, not a failure.
    assert {world.state_of(host) for host in started.values()} == {"pending"}


def test_a_pools_own_timeout_notification_wins_over_the_services(
        make_world: HarnessFactory, log_output: io.StringIO) -> None:
    """vmpooler reads the pool key too (its example config sets it per pool); vmpool warned
    "unknown key, ignored" and used the service's."""
    world = make_world(CONFIG.replace("createvm_max_time: 100000}",
                                      "createvm_max_time: 100000, timeout_notification: 1}"))
    started = {pool: world.reconcile(pool).clones_started[0] for pool in ("booting", "cloning")}
    assert not any("timeout_notification" in warning for warning in world.services.config.warnings)
    for _ in range(2):
        world.clock.advance(60)
        for pool in started:
            world.reconcile(pool)
    assert [(line["pool"], line["timeout_notification"]) for line in slow_lines(log_output)] == [("cloning", 1)]
