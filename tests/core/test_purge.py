"""purge_unconfigured_resources: run by the pools' reconcile invocations, at most once per
interval per provider, and never when the setting is off."""

from __future__ import annotations

from typing import Callable, Sequence

import redis

from chalicelib.clock import FakeClock
from chalicelib.config import PoolConfig, parse
from chalicelib.manager.runner import run_pool
from chalicelib.providers.base import Tracked, never, nothing_tracked
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
    """The dummy provider, noting each purge it is asked for; ``during`` runs in each."""

    purges: list[tuple[list[str], list[str]]]
    tracked: Tracked
    during: Callable[[], None] = staticmethod(lambda: None)

    def purge_unconfigured(self, pools: Sequence[PoolConfig], allowlist: Sequence[str],
                           tracked: Tracked = nothing_tracked, out_of_time: Callable[[], bool] = never) -> list[str]:
        self.purges.append(([pool.name for pool in pools], list(allowlist)))
        self.tracked = tracked
        self.during()
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


def test_a_purge_its_invocations_time_ran_out_in_is_taken_up_by_the_next_pass(redis_client: redis.Redis) -> None:
    """The reconcile invocation's time runs out while its purge powers off and destroys (the
    provider stops before its next removal): the purge hands its turn back, and the next pass of
    any of the provider's pools goes on with it. Before, the rest waited for the next interval
    (15 minutes); a pass whose invocation has no time left starts no purge."""
    services, provider = services_with(True, redis_client)
    time_out = [False]
    provider.during = lambda: time_out.__setitem__(0, True)

    run_pool(services, "alpha", budget_seconds=0, out_of_time=lambda: time_out[0])
    assert len(provider.purges) == 1
    run_pool(services, "beta", budget_seconds=0, out_of_time=lambda: time_out[0])  # no time: no purge
    assert len(provider.purges) == 1

    provider.during = lambda: None
    run_pool(services, "beta", budget_seconds=0)
    run_pool(services, "alpha", budget_seconds=0)
    assert len(provider.purges) == 2  # then its interval again


VMPOOLER_PROVIDER_KEYS = """
:config:
  purge_unconfigured_resources: {global_purge}
  resources_allowlist: [kept-by-config]
:providers:
  :dummy:
    purge_unconfigured_resources: {provider_purge}
    resources_allowlist: [kept-by-provider]
    folder_whitelist: [kept-by-old-name]
  :other:
    provider_class: dummy
:pools:
  - {{name: alpha, size: 0, provider: dummy, folder: vmpool/alpha}}
  - {{name: beta, size: 0, provider: other, folder: vmpool/beta}}
"""


def services_for(text: str, client: redis.Redis) -> tuple[Services, dict[str, PurgeRecorder]]:
    config = parse(text)
    services = Services(config, client, clock=FakeClock(), prefix="purgetest:")
    recorders = {}
    for name in config.providers:
        provider = PurgeRecorder(config.providers[name], client, services.clock, prefix="purgetest:")
        provider.purges = []
        services._providers[name] = provider
        recorders[name] = provider
    return services, recorders


def test_a_providers_allowlist_is_kept_where_vmpooler_reads_it(redis_client: redis.Redis) -> None:
    """vmpooler reads the allowlist from the provider's block (``resources_allowlist``, or its
    older name ``folder_whitelist``). Those keys were warned about as unknown and dropped: a
    vmpooler config's allowlisted folders and VMs were purged."""
    config = parse(VMPOOLER_PROVIDER_KEYS.format(global_purge="true", provider_purge="false"))
    assert not [warning for warning in config.warnings if "allowlist" in warning or "whitelist" in warning]
    services, recorders = services_for(VMPOOLER_PROVIDER_KEYS.format(global_purge="true", provider_purge="false"),
                                       redis_client)
    run_pool(services, "alpha", budget_seconds=0)
    run_pool(services, "beta", budget_seconds=0)
    [(_, allowlist)] = recorders["dummy"].purges
    assert sorted(allowlist) == ["kept-by-config", "kept-by-old-name", "kept-by-provider"]
    [(_, allowlist)] = recorders["other"].purges
    assert allowlist == ["kept-by-config"]


def test_purging_turned_on_in_one_providers_block_purges_that_provider_only(redis_client: redis.Redis) -> None:
    """vmpooler's per-provider ``purge_unconfigured_resources`` (its example documents it) was
    an unknown key: the purge it asks for never ran."""
    services, recorders = services_for(VMPOOLER_PROVIDER_KEYS.format(global_purge="false", provider_purge="true"),
                                       redis_client)
    run_pool(services, "alpha", budget_seconds=0)
    run_pool(services, "beta", budget_seconds=0)
    assert len(recorders["dummy"].purges) == 1
    assert recorders["other"].purges == []


def test_a_provider_block_without_purge_keys_publishes_what_the_previous_release_reads() -> None:
    """A function of the previous release (a rolling upgrade, a rollback) refuses provider keys it
    does not know in the canonical config config-push publishes: unset, they are left out."""
    from chalicelib.config import canonical

    published = canonical(parse(CONFIG.format(purge="true")))["providers"]["dummy"]
    assert not {"purge_unconfigured_resources", "resources_allowlist", "folder_whitelist"} & set(published)
