"""DNS records that follow a VM's address (dummy provider, fake clock, real BIND 9 or moto):
a ready or running VM whose address changed is published again, an IPv6 address is an AAAA
record, a stale pass never sends an older address after a newer one, and the record withdrawn
is the one last published."""

from __future__ import annotations

from typing import Any, Callable

import pytest

from chalicelib.clock import FakeClock
from chalicelib.dns.base import DnsPlugin
from chalicelib.manager import dns_records
from chalicelib.manager.reconcile import reconcile_pool
from tests.dns.bind import BindServer
from tests.dns.test_dns_records import dns_of, first_vm_reports, make_dns_world, ready_vms
from tests.harness import Harness, HarnessFactory


@pytest.fixture
def world(make_harness: HarnessFactory, bind: BindServer) -> Harness:
    return make_dns_world(make_harness, bind.dns_config())


def readdress(world: Harness, hostname: str, ip: str) -> None:
    """The VM now reports ``ip`` (a reboot onto another DHCP lease, a migration), as the
    provider's inventory shows it (and its change log says it changed)."""
    provider, pool = world.provider, world.pool("dns")
    vm = provider._vms(pool)[hostname]
    vm["ip"] = ip
    provider._save_vm(provider._folder_key(pool), vm)


def overtaken_pass(world: Harness, clock: FakeClock, overtake: Callable[[], None],
                   dns: DnsPlugin | None = None) -> None:
    """A pass over the pool ``dns`` overtaken once it read its snapshot: ``overtake`` runs (the VM
    changes, and a later pass sees it), then the pass goes on with what it read."""
    paused: list[str] = []

    def overtaken(step: str) -> None:
        if step == "snapshot" and not paused:
            paused.append(step)
            overtake()

    reconcile_pool(world.store, world.provider, world.pool("dns"), clock, world.config.service, overtaken, dns=dns)
    assert paused


def readdressed_in_service(world: Harness, running_ip: str, ready_ip: str) -> tuple[str, str]:
    """The pool ``dns`` filled, one VM checked out, then the running one reporting ``running_ip``
    and the ready one ``ready_ip``, and a pass: (the running VM, the ready one)."""
    world.passes("dns", 3)
    [running] = world.check_out("dns")
    [ready] = world.hosts("dns", "ready")
    readdress(world, running, running_ip)
    readdress(world, ready, ready_ip)
    world.passes("dns", 1)
    return running, ready


def fqdn(bind: BindServer, hostname: str) -> str:
    return f"{hostname}.{bind.zone}"


def test_a_ready_or_running_vm_whose_address_changed_is_published_again(world: Harness, bind: BindServer) -> None:
    # Before, a VM's record was published once, while pending: a VM rebooted onto another lease
    # kept a name leading to its former address, soon another user's VM.
    running, ready = readdressed_in_service(world, "10.200.0.1", "10.200.0.2")
    assert bind.addresses(fqdn(bind, running)) == ["10.200.0.1"]
    assert bind.addresses(fqdn(bind, ready)) == ["10.200.0.2"]
    assert world.describe(running)["ip"] == "10.200.0.1"  # what GET /vm tells its user follows too
    assert world.state_of(running) == "running" and world.state_of(ready) == "ready"

    # The record withdrawn is the one published last.
    world.store.move(running, "dns", "running", "completed", world.clock.now(), reason="returned by its user")
    world.passes("dns", 3)
    assert world.state_of(running) == "destroyed" and bind.addresses(fqdn(bind, running)) == []


def test_a_steady_pass_sends_dns_nothing_and_a_changed_vm_costs_one_update(
        make_harness: HarnessFactory, bind: BindServer, monkeypatch: pytest.MonkeyPatch) -> None:
    world = make_dns_world(make_harness, bind.dns_config(), size=6)
    world.passes("dns", 3)
    assert len(ready_vms(world)) == 6
    world.check_out("dns", 2)
    world.passes("dns", 3)  # their replacements cloned and published
    assert len(ready_vms(world)) == 6
    plugin = dns_of(world)
    calls: list[str] = []
    for name in ("create_many", "delete_many", "addresses"):
        method = getattr(plugin, name)
        monkeypatch.setattr(plugin, name, lambda *args, _m=method, _n=name: (calls.append(_n), _m(*args))[1])
    world.passes("dns", 3, seconds=120)  # whole comparisons (vm_checktime: 1 minute) and partial ones
    assert calls == []
    [moved, *_] = sorted(world.hosts("dns", "running"))
    readdress(world, moved, "10.200.0.3")
    world.passes("dns", 2, seconds=120)
    assert calls == ["create_many"]
    assert bind.addresses(fqdn(bind, moved)) == ["10.200.0.3"]


def test_an_ipv6_address_is_published_as_an_aaaa_record_and_back(world: Harness, bind: BindServer,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    # Before, an IPv6 address was refused ("not an IPv4 address"): an IPv6-only VM never became
    # ready. vmpooler's DNS plugins publish A records only (an IPv6 one fails there too).
    made = first_vm_reports(world, monkeypatch, "2001:db8::5")
    world.passes("dns", 3)
    six = made[0]
    assert set(ready_vms(world)) == set(made)
    assert bind.addresses(fqdn(bind, six), "AAAA") == ["2001:db8::5"] and bind.addresses(fqdn(bind, six)) == []

    readdress(world, six, "10.200.0.4")  # its IPv4 lease came: the AAAA record goes with the change
    world.passes("dns", 1)
    assert bind.addresses(fqdn(bind, six)) == ["10.200.0.4"] and bind.addresses(fqdn(bind, six), "AAAA") == []
    readdress(world, six, "2001:db8::6")
    world.passes("dns", 1)
    assert bind.addresses(fqdn(bind, six), "AAAA") == ["2001:db8::6"] and bind.addresses(fqdn(bind, six)) == []
    world.store.move(six, "dns", "ready", "completed", world.clock.now(), reason="returned")
    world.passes("dns", 3)
    assert bind.addresses(fqdn(bind, six), "AAAA") == []


def test_an_address_that_cannot_be_published_leaves_the_record_as_it_was(world: Harness, bind: BindServer) -> None:
    world.passes("dns", 3)
    [host, _] = sorted(world.hosts("dns", "ready"))
    ip = ready_vms(world)[host]
    for hostile in ("fe80::1", "169.254.1.1", "not an address", "10.0.0.1%eth0"):
        readdress(world, host, hostile)
        reports = world.passes("dns", 1)
        assert reports[0].errors == [] and world.state_of(host) == "ready"
        assert bind.addresses(fqdn(bind, host)) == [ip] and world.store.get_vm(host).ip == ip  # type: ignore[union-attr]


def test_a_ready_vm_whose_new_address_cannot_be_published_leaves_service_and_a_running_one_waits(
        world: Harness, bind: BindServer) -> None:
    world.passes("dns", 3)
    [running] = world.check_out("dns")
    [ready] = world.hosts("dns", "ready")
    bind.stop()
    readdress(world, running, "10.200.0.5")
    readdress(world, ready, "10.200.0.6")
    [report] = world.passes("dns", 1)
    # Handed out, its name would lead to its former address: it goes, and is replaced.
    assert world.state_of(ready) == "completed"
    assert report.completed[ready].startswith("its address changed to 10.200.0.6: DNS record not created: ")
    assert world.state_of(running) == "running"
    assert any(error.startswith(f"DNS record of {running} not published again: ") for error in report.errors)
    bind.start()
    world.passes("dns", 3, seconds=61)  # the next whole comparison sees it again
    assert bind.addresses(fqdn(bind, running)) == ["10.200.0.5"]
    assert bind.addresses(fqdn(bind, ready)) == []


def test_a_stale_pass_never_publishes_an_older_address_than_a_later_pass_did(
        make_harness: HarnessFactory, clock: FakeClock, bind: BindServer) -> None:
    # A pass that read the inventory (the VM at its second address) resumes after another pass
    # saw the third one and published it. Before, the stale pass sent the second address last:
    # the name led to an address the VM no longer had, and no later pass saw anything to do.
    world = make_dns_world(make_harness, bind.dns_config(), size=1)
    world.passes("dns", 3)
    [host] = ready_vms(world)
    readdress(world, host, "10.200.0.7")

    def another_pass_sees_the_next_address() -> None:
        readdress(world, host, "10.200.0.8")
        clock.advance(30)
        world.reconcile("dns")
        assert bind.addresses(fqdn(bind, host)) == ["10.200.0.8"]

    overtaken_pass(world, clock, another_pass_sees_the_next_address, dns_of(world))
    assert bind.addresses(fqdn(bind, host)) == ["10.200.0.8"]
    assert world.store.get_vm(host).raw["dns_published"] == "10.200.0.8"  # type: ignore[union-attr]


def test_passes_whose_claims_crossed_leave_the_record_to_the_next_pass(world: Harness, bind: BindServer) -> None:
    # Two passes claim the VM's publication (the first saw 10.200.0.9, the later one 10.200.0.10)
    # and send their records in an order nobody knows: the first's note must not stand for
    # what DNS holds, nor the later's. Before (no claim), the later pass's note could stand over
    # the first's record, sent last: the name led to the former address for good.
    world.passes("dns", 3)
    [host, _] = sorted(world.hosts("dns", "ready"))
    plugin = dns_of(world)
    name = fqdn(bind, host)
    now = world.clock.now()
    first = world.store.claim_dns(now, plugin.name, {host: (name, "10.200.0.9")})[host]
    later = world.store.claim_dns(now + 1, plugin.name, {host: (name, "10.200.0.10")})[host]
    assert first.version > 0 and later.version > first.version
    stale = world.store.claim_dns(now, plugin.name, {host: (name, "10.200.0.9")})[host]
    assert stale.version == -1  # seen before the later claim's look
    plugin.create_or_replace(host, "10.200.0.10")
    plugin.create_or_replace(host, "10.200.0.9")  # the first pass's update arrives last
    assert world.store.confirm_dns({host: (later.version, "10.200.0.10")}) == [host]
    assert world.store.confirm_dns({host: (first.version, "10.200.0.9")}) == []
    assert world.store.get_vm(host).raw["dns_published"] == "?"  # type: ignore[union-attr]
    readdress(world, host, "10.200.0.10")
    world.passes("dns", 1)
    assert bind.addresses(name) == ["10.200.0.10"]
    assert world.store.get_vm(host).raw["dns_published"] == "10.200.0.10"  # type: ignore[union-attr]


def test_route53_records_follow_a_changed_address_across_families(
        make_harness: HarnessFactory, route53: tuple[Any, str]) -> None:
    client, zone = route53
    world = make_dns_world(make_harness, {"dns_class": "route53", "domain": "vms.example.test",
                                          "hosted_zone_id": zone}, size=1)

    def records() -> dict[tuple[str, str], list[str]]:
        found = client.list_resource_record_sets(HostedZoneId=zone)["ResourceRecordSets"]
        return {(r["Name"].rstrip("."), r["Type"]): [v["Value"] for v in r["ResourceRecords"]]
                for r in found if r["Type"] in ("A", "AAAA")}

    world.passes("dns", 3)
    [(host, ip)] = ready_vms(world).items()
    name = f"{host}.vms.example.test"
    assert records() == {(name, "A"): [ip]}
    readdress(world, host, "10.200.0.11")
    world.passes("dns", 1)
    assert records() == {(name, "A"): ["10.200.0.11"]}
    readdress(world, host, "2001:db8::11")
    world.passes("dns", 1)
    assert records() == {(name, "AAAA"): ["2001:db8::11"]}
    world.check_out("dns")
    world.store.move(host, "dns", "running", "completed", world.clock.now(), reason="returned by its user")
    world.passes("dns", 4)
    assert (name, "AAAA") not in records() and (name, "A") not in records()


def destroyed_with_their_records(world: Harness, bind: BindServer) -> tuple[str, str, str]:
    """Two ready VMs destroyed while the DNS server is down (it is left stopped), their records
    noted to be deleted later, the first noted first; and the second's address."""
    world.passes("dns", 3)
    first, second = sorted(world.hosts("dns", "ready"))
    address = ready_vms(world)[second]
    bind.stop()
    for host in (first, second):
        world.store.move(host, "dns", "ready", "completed", world.clock.now(), reason="returned")
        world.passes("dns", 1, seconds=1)
    world.passes("dns", 2)
    assert {world.state_of(first), world.state_of(second)} == {"destroyed"}
    return first, second, address


def test_a_pass_stops_deleting_left_records_after_a_few_refusals(
        world: Harness, bind: BindServer, monkeypatch: pytest.MonkeyPatch) -> None:
    # Route 53 allows 5 calls a second for the whole account: a pass sending 50 deletes it
    # refuses every pass throttles every pool's publications.
    hosts = destroyed_with_their_records(world, bind)[:2]
    for host in hosts:
        world.store.update_vm(host, dns_name=f"{host}.retired.example")
    bind.start()
    monkeypatch.setattr(dns_records, "LEFT_FAILURES_PER_PASS", 1)
    plugin = dns_of(world)
    deletes: list[str] = []  # the names whose deletes were sent
    delete_many = plugin.delete_many
    monkeypatch.setattr(plugin, "delete_many", lambda *args: (lambda sent: (deletes.extend(sent), sent)[1])(
        delete_many(*args)))
    world.passes("dns", 1)
    assert len(deletes) == 1
    world.passes("dns", 1)
    assert sorted(deletes) == sorted(hosts)  # the other one's turn


def test_a_left_record_dns_keeps_refusing_to_delete_does_not_hold_the_ones_behind_it(
        world: Harness, bind: BindServer, monkeypatch: pytest.MonkeyPatch) -> None:
    # Records of VMs destroyed while DNS was down are deleted later, the oldest first, 50 a pass.
    # Before, one whose delete the server kept refusing (here: published under a zone the server
    # no longer serves) stayed first in line every pass until its VM's record expired (data_ttl,
    # a week): the records behind it kept leading to addresses of destroyed VMs.
    first, second, kept = destroyed_with_their_records(world, bind)
    world.store.update_vm(first, dns_name=f"{first}.retired.example")  # NOTAUTH from now on
    bind.start()
    monkeypatch.setattr(dns_records, "LEFT_RECORDS_PER_PASS", 1)
    assert bind.addresses(fqdn(bind, second)) == [kept]
    world.passes("dns", 3)
    assert bind.addresses(fqdn(bind, second)) == []
    assert world.client.zrange(world.store.keys.dns_left("dns"), 0, -1) == [first]


def test_records_an_earlier_release_published_are_kept_followed_and_withdrawn(
        world: Harness, bind: BindServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """Records as releases up to 60eceaa left them (``dns_name``, ``dns_plugin``,
    ``dns_published``; no ``dns_version`` nor ``dns_seen``: docs/reliability.md, "Upgrades and
    rollbacks"): after the upgrade they are the published ones (DNS is sent nothing), a changed
    address is published again, and a returned VM's record is withdrawn."""
    world.passes("dns", 3)
    [running] = world.check_out("dns")
    world.passes("dns", 3)  # its replacement published and ready
    hosts = world.hosts("dns", "ready") | {running}
    assert len(hosts) == 3 and not world.hosts("dns", "pending")
    for hostname in hosts:
        world.client.hdel(world.store.keys.vm(hostname), "dns_version", "dns_seen")
        assert world.store.get_vm(hostname).raw["dns_published"]  # type: ignore[union-attr]
    published = {hostname: bind.addresses(fqdn(bind, hostname)) for hostname in hosts}
    plugin = dns_of(world)
    calls: list[str] = []
    for name in ("create_many", "delete_many"):
        method = getattr(plugin, name)
        monkeypatch.setattr(plugin, name, lambda *args, _m=method, _n=name: (calls.append(_n), _m(*args))[1])
    world.passes("dns", 3, seconds=120)  # whole comparisons
    assert calls == [] and {hostname: bind.addresses(fqdn(bind, hostname)) for hostname in hosts} == published

    readdress(world, running, "10.200.0.8")
    world.passes("dns", 1)
    assert calls == ["create_many"] and bind.addresses(fqdn(bind, running)) == ["10.200.0.8"]
    world.store.move(running, "dns", "running", "completed", world.clock.now(), reason="returned by its user")
    world.passes("dns", 3)
    assert world.state_of(running) == "destroyed" and bind.addresses(fqdn(bind, running)) == []
