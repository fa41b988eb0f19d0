"""Migration at checkout (``migration_limit``) with the dummy provider's ``migratevm_*`` keys,
through the API (POST and GET /vm) and reconcile passes on a fake clock."""

from __future__ import annotations

import json
from typing import Any

import pytest
import redis

import app
from chalicelib.clock import FakeClock
from chalicelib.config import parse
from chalicelib.manager.reconcile import PassReport, reconcile_pool
from chalicelib.services import Services
from local.gateway import Gateway

CONFIG = """\
config: {{migration_limit: {limit}, vm_lifetime: 2}}
providers:
  dummy: {{provider_class: dummy, seed: 11{dummy}}}
pools:
  - {{name: mig, size: 3, provider: dummy}}
"""


class Stack:
    def __init__(self, client: redis.Redis, monkeypatch: pytest.MonkeyPatch, limit: int, dummy: str) -> None:
        self.clock = FakeClock()
        self.services = Services(parse(CONFIG.format(limit=limit, dummy=dummy)), client, clock=self.clock,
                                 prefix="migtest:")
        monkeypatch.setattr(app, "_services", self.services)
        self.gateway = Gateway(app.app)
        self.pool = self.services.config.pool("mig")
        self.provider = self.services.provider("dummy")

    def reconcile(self) -> PassReport:
        assert self.pool is not None
        return reconcile_pool(self.services.store, self.provider, self.pool, self.clock, self.services.config.service)

    def fill(self) -> None:
        for _ in range(3):
            self.reconcile()
        assert self.services.store.counts(["mig"])["mig"]["ready"] == 3

    def check_out(self, count: int) -> list[str]:
        status, _, body = self.gateway("POST", "/api/v3/vm", {}, json.dumps({"mig": count}).encode(), "127.0.0.1")
        assert status == 200, body
        names = json.loads(body)["mig"]["hostname"]
        return [name.split(".")[0] for name in ([names] if isinstance(names, str) else names)]

    def describe(self, hostname: str) -> dict[str, Any]:
        status, _, body = self.gateway("GET", f"/api/v3/vm/{hostname}", {}, b"", "127.0.0.1")
        assert status == 200, body
        return dict(json.loads(body)[hostname])

    def actual_host(self, hostname: str) -> str | None:
        assert self.pool is not None
        return next(vm.host for vm in self.provider.list_vms(self.pool) if vm.name == hostname)

    def in_flight(self) -> int:
        return int(self.services.client.zcard(self.services.store.keys.migrating))

    def migration(self, hostname: str) -> str | None:
        record = self.services.store.get_vm(hostname)
        assert record is not None
        return record.raw.get("migration")


def stack(redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch, limit: int = 1, dummy: str = "") -> Stack:
    return Stack(redis_client, monkeypatch, limit, dummy)


def test_checked_out_vms_move_one_at_a_time_and_get_tells_the_truth(
        redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch) -> None:
    world = stack(redis_client, monkeypatch, limit=1,
                  dummy=", migratevm_couldmove_percent: 100, migratevm_max_time: 60")
    world.fill()
    taken = world.check_out(3)
    for host in taken:
        assert world.describe(host)["migrated"] is False and world.describe(host)["host"] == "dummy-host"

    world.reconcile()
    assert [world.migration(host) for host in taken].count("started") == 1
    assert world.in_flight() == 1
    passes = 0
    while any(world.migration(host) for host in taken):
        world.clock.advance(61)
        report = world.reconcile()
        assert world.in_flight() <= 1
        assert report.work_in_flight or not any(world.migration(host) for host in taken)
        passes += 1
        assert passes < 10
    assert passes >= 3  # one after the other, never more than the limit at once

    for host in taken:
        shown = world.describe(host)
        assert shown["migrated"] is True
        assert shown["host"] == world.actual_host(host) != "dummy-host"
    assert world.in_flight() == 0


def test_a_failed_migration_leaves_the_vm_where_it_is(redis_client: redis.Redis,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    world = stack(redis_client, monkeypatch, limit=5,
                  dummy=", migratevm_couldmove_percent: 100, migratevm_fail_percent: 100")
    world.fill()
    [host] = world.check_out(1)
    report = world.reconcile()
    report = world.reconcile()
    assert any("migration failed: dummy: migrate failed" in error for error in report.errors)
    shown = world.describe(host)
    assert (shown["migrated"], shown["host"]) == (False, "dummy-host") and world.actual_host(host) == "dummy-host"
    record = world.services.store.get_vm(host)
    assert record is not None and record.raw["migration_error"].startswith("migration failed")
    assert world.in_flight() == 0 and world.migration(host) is None


def test_a_vm_on_the_least_used_host_stays(redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch) -> None:
    world = stack(redis_client, monkeypatch, limit=1)  # no migratevm_couldmove_percent: never busier
    world.fill()
    [host] = world.check_out(1)
    assert world.migration(host) == "queued"
    world.reconcile()
    assert world.migration(host) is None and world.in_flight() == 0
    assert world.describe(host)["migrated"] is False


def test_without_migration_limit_checkouts_are_not_queued(redis_client: redis.Redis,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    world = stack(redis_client, monkeypatch, limit=0, dummy=", migratevm_couldmove_percent: 100")
    world.fill()
    [host] = world.check_out(1)
    world.reconcile()
    assert world.migration(host) is None and world.describe(host)["migrated"] is False


def test_a_vm_returned_while_migrating_frees_its_slot(redis_client: redis.Redis,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    world = stack(redis_client, monkeypatch, limit=1,
                  dummy=", migratevm_couldmove_percent: 100, migratevm_max_time: 600")
    world.fill()
    first, second = world.check_out(2)
    world.reconcile()
    moving = first if world.migration(first) == "started" else second
    assert world.in_flight() == 1
    status, _, _ = world.gateway("DELETE", f"/api/v3/vm/{moving}", {}, b"", "127.0.0.1")
    assert status == 200
    world.reconcile()
    other = second if moving == first else first
    assert world.migration(other) == "started"  # the freed slot went to the other VM
    assert world.in_flight() == 1


def test_a_pass_killed_after_taking_a_slot_frees_it_after_the_grace(
        redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch) -> None:
    from chalicelib.manager.migrations import MIGRATION_START_GRACE_SECONDS
    from tests.harness import Killed

    world = stack(redis_client, monkeypatch, limit=1, dummy=", migratevm_couldmove_percent: 100")
    world.fill()
    [host] = world.check_out(1)

    def die_after_the_slot(step: str) -> None:
        if step == "migration_slot":
            raise Killed(step)

    assert world.pool is not None
    with pytest.raises(Killed):
        reconcile_pool(world.services.store, world.provider, world.pool, world.clock,
                       world.services.config.service, die_after_the_slot)
    assert world.in_flight() == 1 and world.migration(host) == "started"
    world.reconcile()  # within the grace: the killed pass might still be starting it
    assert world.in_flight() == 1
    world.clock.advance(MIGRATION_START_GRACE_SECONDS + 1)
    report = world.reconcile()
    assert any("never started" in error for error in report.errors)
    assert world.in_flight() == 0 and world.migration(host) is None
    assert world.describe(host)["migrated"] is False
