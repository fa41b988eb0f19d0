"""A zone with a wildcard record (``*.<domain>``, an operator's catch-all; Route 53 lists it as
``\\052.<domain>``) makes the server answer every name that holds no record of its own. Such a
name is free for a new VM: only a record of the name's own makes it taken (real BIND 9; with
Route 53 the listing names the wildcard apart, and it was never taken for a name's record)."""

from __future__ import annotations

from tests.dns.bind import BindServer
from tests.dns.test_dns_batches import plugin_for
from tests.dns.test_dns_records import make_dns_world, ready_vms
from tests.harness import HarnessFactory


def test_a_name_only_the_wildcard_answers_for_is_free_and_a_record_of_its_own_is_not(bind: BindServer) -> None:
    bind.add_record(f"*.{bind.zone}", "A", "10.9.9.9")
    bind.add_record(f"stale.{bind.zone}", "A", "10.1.1.1")
    bind.add_record(f"alias.{bind.zone}", "CNAME", "elsewhere.example.org.")
    plugin = plugin_for(bind)
    assert plugin.addresses_many(["fresh", "stale", "alias"]) == {
        "fresh": [], "stale": ["10.1.1.1"], "alias": ["elsewhere.example.org (CNAME)"]}
    assert plugin.addresses("fresh") == [] and plugin.addresses("stale") == ["10.1.1.1"]


def test_a_pool_whose_zone_has_a_wildcard_record_fills_and_publishes_its_vms(
        make_harness: HarnessFactory, bind: BindServer) -> None:
    """Before, every new name was refused as "already resolves to 10.9.9.9 (stale DNS record)":
    the pool cloned nothing, pass after pass."""
    bind.add_record(f"*.{bind.zone}", "A", "10.9.9.9")
    world = make_dns_world(make_harness, bind.dns_config(), size=2)
    world.passes("dns", 4)
    ready = ready_vms(world)
    assert len(ready) == 2, world.store.counts(["dns"])
    for host, ip in ready.items():
        assert bind.addresses(f"{host}.{bind.zone}") == [ip]
