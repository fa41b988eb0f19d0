"""A small world for manager and store tests: a config, the store, a seeded dummy provider and a
fake clock, all on the session's real redis-server."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator

import pytest
import redis

from chalicelib.clock import FakeClock
from chalicelib.config import Config, PoolConfig, parse
from chalicelib.manager.reconcile import Checkpoint, PassReport, _no_checkpoint, reconcile_pool
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

    def reconcile(self, name: str, checkpoint: Checkpoint = _no_checkpoint) -> PassReport:
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
    """The invariants every pass must leave behind, whatever happened before. A killed pass may
    leave a VM made by hand undiscovered; a completed one may not."""
    pool = world.pool(name)
    seen: dict[str, str] = {}
    for state in STATES:
        for host in world.hosts(name, state):
            assert host not in seen, f"{host} is both {seen[host]} and {state}"
            seen[host] = state
            record = world.store.get_vm(host)
            assert record is not None, f"{host} is {state} without a record"
            assert (record.state, record.pool) == (state, name), f"{host}: record says {record.state}"
    pending_or_ready = world.count(name, "pending") + world.count(name, "ready")
    assert pending_or_ready <= pool.size, f"{name}: {pending_or_ready} pending+ready > size {pool.size}"
    cloning = set(world.client.zrange(world.store.keys.cloning, 0, -1))
    for host in cloning:
        record = world.store.get_vm(host)
        assert record is not None and record.state == "pending", f"{host} cloning but {record and record.state}"
    if not pass_completed:
        return
    # After a whole pass, a VM in the provider is always known to some state (no leaked VMs).
    untracked = world.provider_vms(name) - set(seen)
    assert not untracked, f"VMs in the provider that no state knows: {untracked}"


WorldFactory = Callable[..., World]


@pytest.fixture
def make_world(redis_client: redis.Redis, clock: FakeClock) -> Iterator[WorldFactory]:
    def make(yaml_text: str) -> World:
        config = parse(yaml_text)
        store = Store(redis_client, prefix=PREFIX, data_ttl_hours=config.redis.data_ttl_hours)
        provider = DummyProvider(config.providers["dummy"], redis_client, clock, prefix=PREFIX)
        return World(config, redis_client, clock, store, provider)

    yield make
