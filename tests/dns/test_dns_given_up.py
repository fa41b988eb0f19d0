"""The DNS records of VMs given up (a removed pool whose provider is gone too, past the grace:
manager/providerless.py) are deleted as a drain deletes them, against a real BIND."""

from __future__ import annotations

import dataclasses
import logging
from types import MappingProxyType, SimpleNamespace

import pytest

from chalicelib.manager.dispatch import Ticker, look_at
from chalicelib.manager.pool_queue import DRAIN, PoolMessage
from chalicelib.manager.providerless import PROVIDERLESS_GRACE_SECONDS
from chalicelib.store.fleet import Fleet
from tests.dns.bind import BindServer
from tests.dns.test_dns_records import left_by_a_refused_entry, make_dns_world
from tests.harness import Harness, HarnessFactory


def _given_up(make_harness: HarnessFactory, bind: BindServer, keep_dns_entry: bool = True) -> tuple[Harness, list[str]]:
    """The pool filled (its records published), known to the fleet, then removed with its
    provider (and its DNS entry unless ``keep_dns_entry``) past the grace."""
    world = make_dns_world(make_harness, bind.dns_config())
    world.passes("dns", 3)
    ready = sorted(world.hosts("dns", "ready"))
    assert len(ready) == 2
    for host in ready:
        assert bind.addresses(f"{host}.{bind.zone}") != []
    queue = SimpleNamespace(send=lambda messages: None)
    Ticker().tick(world.services, queue)  # the pool is known
    config = world.services.config
    world.services.use_config(dataclasses.replace(
        config, pools=(), providers=MappingProxyType({}),
        dns_configs=config.dns_configs if keep_dns_entry else MappingProxyType({})))
    past_the_grace(world)
    return world, ready


def past_the_grace(world: Harness) -> None:
    """The removed pool's first drain message (the grace begins), then the clock past the grace."""
    assert look_at(world.services, PoolMessage("dns", DRAIN), SimpleNamespace(send=lambda messages: None)) is None
    world.clock.advance(PROVIDERLESS_GRACE_SECONDS + 1)


def test_the_records_of_vms_given_up_are_deleted(make_harness: HarnessFactory, bind: BindServer) -> None:
    """Before, given up VMs kept their A records in the zone for good (the pool forgotten, its
    note of records to delete with it): names pointing at addresses DHCP hands to others."""
    world, given_up = _given_up(make_harness, bind)
    look_at(world.services, PoolMessage("dns", DRAIN), SimpleNamespace(send=lambda messages: None))
    for host in given_up:
        assert world.state_of(host) == "destroyed"
        assert bind.addresses(f"{host}.{bind.zone}") == []
    assert "dns" not in Fleet(world.store).names()


def test_records_the_dns_server_failed_to_delete_are_deleted_once_it_answers(
        make_harness: HarnessFactory, bind: BindServer) -> None:
    world, given_up = _given_up(make_harness, bind)
    queue = SimpleNamespace(send=lambda messages: None)
    bind.kill()
    look_at(world.services, PoolMessage("dns", DRAIN), queue)
    assert {world.state_of(host) for host in given_up} == {"destroyed"}
    assert "dns" in Fleet(world.store).names()  # its records are still to delete
    bind.start()
    look_at(world.services, PoolMessage("dns", DRAIN), queue)  # the next tick's
    for host in given_up:
        assert bind.addresses(f"{host}.{bind.zone}") == []
    assert "dns" not in Fleet(world.store).names()


def test_records_whose_dns_entry_is_gone_are_named_once(make_harness: HarnessFactory, bind: BindServer,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    world, given_up = _given_up(make_harness, bind, keep_dns_entry=False)
    with caplog.at_level(logging.WARNING, logger="vmpool"):
        look_at(world.services, PoolMessage("dns", DRAIN), SimpleNamespace(send=lambda messages: None))
    (warned,) = [record for record in caplog.records if record.getMessage().startswith("DNS records of VMs given up")]
    assert sorted(warned.__dict__["fqdns"]) == [f"{host}.{bind.zone}" for host in given_up]
    assert "dns" not in Fleet(world.store).names()
    for host in given_up:  # nothing could delete them: still there, as the warning says
        assert bind.addresses(f"{host}.{bind.zone}") != []


def test_records_of_an_entry_refused_as_a_whole_do_not_keep_the_others_in_the_zone(
        make_harness: HarnessFactory, bind: BindServer) -> None:
    # The pool moved to entry "other"; the records "zone" published (whose key the server no
    # longer takes) are left to delete. Before, the look at the pool given up sent them first,
    # met the refused key and sent nothing more: the records "other" published for the VMs given
    # up stayed in the zone for another look, or for good while "zone"'s names sorted first.
    world, published, given_up = left_by_a_refused_entry(make_harness, bind)
    queue = SimpleNamespace(send=lambda messages: None)
    Ticker().tick(world.services, queue)  # the pool is known
    world.services.use_config(dataclasses.replace(world.services.config, pools=(), providers=MappingProxyType({})))
    past_the_grace(world)
    look_at(world.services, PoolMessage("dns", DRAIN), queue)
    for host in given_up:
        assert world.state_of(host) == "destroyed"
        assert bind.addresses(f"{host}.{bind.zone}") == []
    for host, ip in published.items():  # still there until the server takes "zone"'s key again
        assert bind.addresses(f"{host}.{bind.zone}") == [ip]
    assert "dns" in Fleet(world.store).names()  # kept until they are deleted
