"""A small world for manager and store tests: a config, the store, a seeded dummy provider and a
fake clock, all on the session's real redis-server."""

from __future__ import annotations

import io
import logging
import threading
from dataclasses import dataclass
from typing import Callable, Iterator

import pytest
import redis

from chalicelib.clock import FakeClock
from chalicelib.config import Config, PoolConfig, parse
from chalicelib.manager.context import Checkpoint, PassReport, no_checkpoint
from chalicelib.manager.reconcile import reconcile_pool
from chalicelib.observability import logger
from chalicelib.providers.dummy import DummyProvider
from chalicelib.store import STATES, Store

PREFIX = "vmpool:"


@dataclass
class World:
    config: Config
    client: redis.Redis
    clock: FakeClock
    store: Store
    provider: DummyProvider

    def pool(self, name: str) -> PoolConfig:
        pool = self.config.pool(name)
        assert pool is not None, name
        return pool

    def reconcile(self, name: str, checkpoint: Checkpoint = no_checkpoint) -> PassReport:
        return reconcile_pool(self.store, self.provider, self.pool(name), self.clock,
                              self.config.service, checkpoint)

    def hosts(self, name: str, state: str) -> set[str]:
        return set(self.store.hostnames(name, state))

    def count(self, name: str, state: str) -> int:
        return len(self.hosts(name, state))

    def provider_vms(self, name: str) -> set[str]:
        """Every VM in the pool's folder, including clones not yet visible in the inventory."""
        return set(self.client.hkeys(self.provider._folder_key(self.pool(name))))

    def state_of(self, hostname: str) -> str | None:
        record = self.store.get_vm(hostname)
        return record.state if record else None

    def settle(self, name: str, seconds: float = 30.0, passes: int = 40) -> None:
        """Advance the clock and reconcile until a pass finds nothing left to do."""
        for _ in range(passes):
            self.clock.advance(seconds)
            report = self.reconcile(name)
            assert_consistent(self, name)
            if not report.work_in_flight:
                return
        raise AssertionError(f"pool {name} did not settle in {passes} passes")

    def check_out(self, name: str, count: int = 1, lifetime_hours: int = 2) -> list[str]:
        from chalicelib.store import CheckoutRequest

        result = self.store.checkout([CheckoutRequest(name, [name], count)], self.clock.now(),
                                     {"lifetime": str(lifetime_hours)})
        assert result.ok, result
        return [vm.hostname for vm in result.vms]


def assert_consistent(world: World, name: str, pass_completed: bool = True) -> None:
    """The invariants every pass must leave behind, whatever happened before: every VM in one
    state with a matching record; the pool's own VMs (on-demand ones are built beyond its size)
    pending + ready within the size; every clone counted in flight pending. A killed pass may
    leave a VM made by hand undiscovered; after a whole pass no VM in the provider is unknown."""
    pool = world.pool(name)
    seen: dict[str, str] = {}
    on_demand: set[str] = set()
    for state in STATES:
        for host in world.hosts(name, state):
            assert host not in seen, f"{host} is both {seen[host]} and {state}"
            seen[host] = state
            record = world.store.get_vm(host)
            assert record is not None, f"{host} is {state} without a record"
            assert (record.state, record.pool) == (state, name), f"{host}: record says {record.state}"
            if record.raw.get("request"):
                on_demand.add(host)
    pool_vms = (world.hosts(name, "pending") | world.hosts(name, "ready")) - on_demand
    assert len(pool_vms) <= pool.size, f"{name}: {len(pool_vms)} pending+ready > size {pool.size}"
    for host in world.client.zrange(world.store.keys.cloning, 0, -1):
        record = world.store.get_vm(host)
        assert record is not None and record.state == "pending", f"{host} cloning but {record and record.state}"
    if pass_completed:
        untracked = world.provider_vms(name) - set(seen)
        assert not untracked, f"VMs in the provider that no state knows: {untracked}"


class Killed(Exception):
    """Raised at a checkpoint to stand for a pass killed there (a Lambda timing out, a crash)."""


def kill_at_step(step: int) -> tuple[Callable[[str], None], list[str]]:
    """A reconcile checkpoint that kills the pass when it reaches its ``step``-th checkpoint
    (0-based), and the list of the checkpoints it reached."""
    reached: list[str] = []

    def checkpoint(name: str) -> None:
        reached.append(name)
        if len(reached) == step + 1:
            raise Killed(name)

    return checkpoint, reached


def run_at_once(action: Callable[[], object], threads: int) -> None:
    """Run ``action`` in ``threads`` threads released together; re-raise what any of them raised."""
    errors: list[BaseException] = []
    barrier = threading.Barrier(threads)

    def run() -> None:
        try:
            barrier.wait()
            action()
        except BaseException as error:  # noqa: BLE001 - reported below
            errors.append(error)

    workers = [threading.Thread(target=run) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert errors == [], errors


WorldFactory = Callable[..., World]


@pytest.fixture
def make_world(redis_client: redis.Redis, clock: FakeClock) -> Iterator[WorldFactory]:
    def make(yaml_text: str) -> World:
        config = parse(yaml_text)
        store = Store(redis_client, prefix=PREFIX, data_ttl_hours=config.redis.data_ttl_hours)
        provider = DummyProvider(config.providers["dummy"], redis_client, clock, prefix=PREFIX)
        return World(config, redis_client, clock, store, provider)

    yield make


@pytest.fixture
def log_output() -> Iterator[io.StringIO]:
    """What the service logs, formatted as in Lambda (Powertools' JSON formatter)."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logger.registered_formatter)
    logger.addHandler(handler)
    yield stream
    logger.removeHandler(handler)
