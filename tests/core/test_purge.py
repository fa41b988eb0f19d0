"""purge_unconfigured_resources: run by the pools' reconcile invocations, at most once per
interval per provider, and never when the setting is off."""

from __future__ import annotations

from typing import Sequence

import redis

from chalicelib.clock import FakeClock
from chalicelib.config import PoolConfig, parse
from chalicelib.manager.runner import run_pool
from chalicelib.providers.base import Tracked, nothing_tracked
from chalicelib.providers.dummy import DummyProvider
from chalicelib.services import Services

CONFIG = """
:config:
  purge_unconfigured_resources: {purge}
  resources_allowlist: [keep-me]
:providers:
  :dummy: {{}}
:pools:
  - {{name: alpha, size: 0, provider: dummy, folder: vmpool/alpha}}
  - {{name: beta, size: 0, provider: dummy, folder: vmpool/beta}}
"""


class PurgeRecorder(DummyProvider):
    """The dummy provider, noting each purge it is asked for."""

    purges: list[tuple[list[str], list[str]]]
    tracked: Tracked

    def purge_unconfigured(self, pools: Sequence[PoolConfig], allowlist: Sequence[str],
                           tracked: Tracked = nothing_tracked) -> list[str]:
        self.purges.append(([pool.name for pool in pools], list(allowlist)))
        self.tracked = tracked
        return ["vmpool/stale-folder"]


def services_with(purge: bool, client: redis.Redis) -> tuple[Services, PurgeRecorder]:
    config = parse(CONFIG.format(purge=str(purge).lower()))
    services = Services(config, client, clock=FakeClock(), prefix="purgetest:")
    provider = PurgeRecorder(config.providers["dummy"], client, services.clock, prefix="purgetest:")
    provider.purges = []
    services._providers["dummy"] = provider
    return services, provider


def test_the_first_invocation_purges_for_all_the_providers_pools_then_not_again(redis_client: redis.Redis) -> None:
    services, provider = services_with(True, redis_client)
    for pool in ("alpha", "beta", "alpha"):
        run_pool(services, pool, budget_seconds=0)
    assert provider.purges == [(["alpha", "beta"], ["keep-me"])]


def test_no_purge_when_it_is_off(redis_client: redis.Redis) -> None:
    services, provider = services_with(False, redis_client)
    run_pool(services, "alpha", budget_seconds=0)
    assert provider.purges == []


def test_the_purge_leaves_alone_the_vms_vmpool_tracks(redis_client: redis.Redis) -> None:
    """A removed pool still draining, or a pool moved to another folder, leaves its folder
    unconfigured while a VM there may be checked out: the purge is told which VMs are vmpool's
    (before, it was given the configured pools only, and destroyed those folders whole)."""
    services, provider = services_with(True, redis_client)
    store, now = services.store, services.clock.now()
    store.add_discovered("in-use", "gone-pool", now)
    assert store.move("in-use", "gone-pool", "discovered", "running", now)
    store.add_discovered("went", "gone-pool", now)
    assert store.move("went", "gone-pool", "discovered", "destroyed", now)
    run_pool(services, "alpha", budget_seconds=0)
    assert set(provider.tracked(["in-use", "went", "never-known"])) == {"in-use"}
