"""A pool's DNS entry or domain changed while its VMs are in service (their records move: the old
one deleted, the new one published, ``MOVED_RECORDS_PER_PASS`` a pass; manager/dns_records.py),
against a real BIND: the run killed after each Redis round trip and each call to the provider,
the DNS server or a step; a pass paused at each of them while another run moves the records; a
pass of the old config paused while the config changes and a run of the new one acts.

What must hold once ordinary runs went on: the pools whole (tests/chaos/test_crash_every_write.py)
and the zone holds exactly one A record per VM in service, under the pool's new name, with its
address: no record left under the former name, none for a destroyed VM, none missing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import pytest
import yaml

from chalicelib.config import Config, parse
from chalicelib.manager.reconcile import reconcile_pool
from chalicelib.manager.runner import run_pool
from chalicelib.services import Services
from tests.chaos.fleet import Fleet, fleet_fixture
from tests.chaos.test_crash_every_write import (
    CONFIG,
    POOL,
    Start,
    assert_whole,
    check_out,
    give_back,
    zone_records,
)
from tests.dns.bind import BindServer
from tests.harness import Died, Fuse, fused_services

SUB = "lab"
"""The new domain is ``lab.<zone>`` (same zone, so one BIND serves both names)."""


fleet = fleet_fixture(CONFIG)


def dns_config(bind: BindServer, change: str | None) -> Config:
    """CONFIG with alpha's records in BIND: under the zone (``change`` None), then under
    ``lab.<zone>`` by the same entry (``domain``) or by another entry (``entry``)."""
    document = yaml.safe_load(CONFIG)
    lab = bind.dns_config(domain=f"{SUB}.{bind.zone}", zone=bind.zone)
    document["dns_configs"] = {"zone": lab if change == "domain" else bind.dns_config()}
    if change == "entry":
        document["dns_configs"]["lab"] = lab
    document["pools"][0]["dns_plugin"] = "lab" if change == "entry" else "zone"
    return parse(yaml.safe_dump(document))


@dataclass
class Moving:
    """A fleet whose alpha VMs are published under the zone, the config then changed."""

    start: Start
    fleet: Fleet
    records: dict[str, list[str]]
    bind: BindServer

    def again(self) -> Fleet:
        """Redis, the clock and the zone back as they were at the change."""
        self.bind.clear_records()
        for name, addresses in self.records.items():
            for address in addresses:
                self.bind.add_record(f"{name}.{self.bind.zone}", "A", address)
        return self.start.again(self.fleet)

    def assert_records_moved(self, where: str) -> None:
        """One A record per VM in service, under the new name; nothing else in the zone."""
        world = self.fleet.world
        expected = {f"{host}.{SUB}": [world.store.get_vm(host).ip]
                    for host in world.hosts(POOL, "ready") | world.hosts(POOL, "running")}
        assert zone_records(self.bind) == expected, where


def published_then_changed(fleet: Fleet, bind: BindServer, change: str) -> Moving:
    """Alpha full under the zone's names, one VM in use, one given back (its destroy and record
    withdrawal to start), a refill to make: then the config changes."""
    bind.clear_records()
    world = fleet.world
    world.services.use_config(dns_config(bind, None))
    fleet.converge()
    check_out(fleet)
    give_back(fleet, check_out(fleet))
    world.services.use_config(dns_config(bind, change))
    records = zone_records(bind)
    assert len(records) == 3, records
    return Moving(Start.of(fleet), fleet, records, bind)


def run_through(fleet: Fleet, fuse: Fuse) -> int:
    """Alpha's run in a process of its own whose Redis round trips and provider, DNS and step
    calls all go through ``fuse``. Returns the calls it made."""
    services = fused_services(fleet.world, fuse, backend_fuse=fuse)
    try:
        run_pool(services, POOL, 0.0, fuse.step)
    except Died:
        assert fuse.die_after is not None and fuse.sent == fuse.die_after
    else:
        assert fuse.die_after is None, f"the run made {fuse.sent} calls and lived"
    finally:
        services.client.close()
    return fuse.sent


@pytest.mark.audit
@pytest.mark.parametrize("change", ["domain", "entry"])
def test_a_run_moving_records_killed_after_any_call_converges(fleet: Fleet, bind: BindServer,
                                                              change: str) -> None:
    moving = published_then_changed(fleet, bind, change)
    run_through(moving.again(), Fuse())  # loads the Lua scripts the session's Redis lacks
    total = run_through(moving.again(), Fuse())
    assert total > 10, total
    assert any(name.endswith(f".{SUB}") for name in zone_records(bind)), "the run moved no record"
    for die_after in range(1, total):
        where = f"{change}: killed after call {die_after} of {total}"
        current = moving.again()
        run_through(current, Fuse(die_after=die_after))
        assert_whole(current, where)
        moving.assert_records_moved(where)


def stale_pass(fleet: Fleet, services_config: Config, pause_after: int, meanwhile: Callable[[], None]) -> None:
    """A bare pass of alpha (no lease) with the config ``services_config``, paused after
    ``pause_after`` Redis round trips, provider, DNS or step calls while ``meanwhile`` runs."""
    fuse = Fuse(pause_after=pause_after, meanwhile=meanwhile)
    services = fused_services(fleet.world, fuse, backend_fuse=fuse)
    services.use_config(services_config)
    pool = services.config.pool(POOL)
    assert pool is not None
    try:
        reconcile_pool(services.store, services.provider(pool.provider), pool, services.clock,
                       services.config.service, fuse.step, dns=services.dns_plugin(pool),
                       providers=services.configured_provider, dns_plugins=services.dns_lookup)
    finally:
        services.client.close()
    assert fuse.meanwhile is None, "the pass ended before its pause"


def pass_calls(fleet: Fleet, config: Config) -> int:
    """How many calls a whole bare pass of alpha makes (with a pause point past its end)."""
    fuse = Fuse()
    services: Services = fused_services(fleet.world, fuse, backend_fuse=fuse)
    services.use_config(config)
    pool = services.config.pool(POOL)
    assert pool is not None
    reconcile_pool(services.store, services.provider(pool.provider), pool, services.clock, services.config.service,
                   fuse.step, dns=services.dns_plugin(pool), providers=services.configured_provider,
                   dns_plugins=services.dns_lookup)
    services.client.close()
    return fuse.sent


@pytest.mark.audit
@pytest.mark.parametrize(("change", "stale"), [("domain", False), ("entry", False), ("domain", True),
                                               ("entry", True)])
def test_a_pass_paused_while_records_move_converges(fleet: Fleet, bind: BindServer, change: str,
                                                    stale: bool) -> None:
    """``stale``: the paused pass runs with the config before the change (it started before the
    edit reached its process) and another run of the new config moves the records meanwhile;
    else both have the new config."""
    moving = published_then_changed(fleet, bind, change)
    config = dns_config(bind, None) if stale else fleet.world.services.config
    pass_calls(moving.again(), config)  # loads the Lua scripts the session's Redis lacks
    total = pass_calls(moving.again(), config)

    def another_run(current: Fleet) -> None:
        current.world.clock.advance(61)  # a whole comparison: every VM's records compared
        assert current.run(POOL).leased

    for pause_after in range(total):
        where = f"{change}{' (stale config)' if stale else ''}: paused after call {pause_after} of {total}"
        current = moving.again()
        current.world.clock.advance(61)
        stale_pass(current, config, pause_after, lambda current=current: another_run(current))  # type: ignore[misc]
        assert_whole(current, where)
        moving.assert_records_moved(where)

