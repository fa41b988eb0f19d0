"""A VM's records for every address it has, and after a config change (dummy provider, fake clock,
real BIND 9 or moto): a dual-stack guest gets an A and an AAAA record, each sent only when its
family's address changed; a pool whose DNS entry or domain changed has its VMs in service
published under the new name and withdrawn from the old; GET /vm's ``ip`` follows a changed
address without managed DNS too."""

from __future__ import annotations

from typing import Any, Iterator

import pytest
import yaml

from chalicelib.clock import FakeClock
from chalicelib.config import parse
from chalicelib.manager import dns_records
from chalicelib.manager.reconcile import reconcile_pool
from tests.dns.bind import BindServer
from tests.dns.test_dns_records import (
    dns_document,
    dns_of,
    make_dns_world,
    published_then_reconfigured,
    ready_vms,
)
from tests.dns.test_dns_republish import overtaken_pass, readdressed_in_service
from tests.harness import Harness, HarnessFactory, Killed


def readdress(world: Harness, hostname: str, ip: str, *addresses: str) -> None:
    """The VM's guest now reports ``ip`` as its address and ``addresses`` on its interfaces."""
    world.provider.readdress_by_hand(world.pool("dns"), hostname, ip, addresses)


def dual_stack(world: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every VM the dummy clones from now on is dual-stack, as VMware Tools reports such a guest:
    its IPv4 address first (``guest.ipAddress``), then on its interface its IPv4 address, an IPv6
    link-local one, one with a zone index, a multicast one and its global IPv6 address."""
    provider_class = type(world.provider)
    new_vm = provider_class._new_vm

    def with_ipv6(self: Any, pool: Any, hostname: str, available_at: float) -> dict[str, Any]:
        vm = new_vm(self, pool, hostname, available_at)
        vm["addresses"] = [vm["ip"], "fe80::250:56ff:fe00:1", "fe80::1%ens192", "ff02::1", six(vm["ip"]),
                           "2001:db8::ffff"]
        return vm

    monkeypatch.setattr(provider_class, "_new_vm", with_ipv6)


def link_local_first(world: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every VM the dummy clones from now on reports an IPv6 link-local address as its primary
    one (as VMware Tools may), and 10.200.0.31 and 2001:db8::31 on its interface besides."""
    provider_class = type(world.provider)
    new_vm = provider_class._new_vm

    def cloned(self: Any, pool: Any, hostname: str, available_at: float) -> dict[str, Any]:
        vm = new_vm(self, pool, hostname, available_at)
        vm["ip"], vm["addresses"] = "fe80::250:56ff:fe00:2", ["fe80::250:56ff:fe00:2", "10.200.0.31", "2001:db8::31"]
        return vm

    monkeypatch.setattr(provider_class, "_new_vm", cloned)


def six(ip: str) -> str:
    """The global IPv6 address ``dual_stack`` gives the VM at ``ip``."""
    return "2001:db8::" + ip.split(".")[-1]


def updates_sent(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """Per DNS update sent from now on, the record types it changes (its update section)."""
    import dns.query
    import dns.rdatatype
    import dns.update

    sent: list[list[str]] = []
    tcp = dns.query.tcp

    def recorded(message: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(message, dns.update.UpdateMessage):
            sent.append(sorted({dns.rdatatype.to_text(rrset.rdtype) for rrset in message.update}))
        return tcp(message, *args, **kwargs)

    monkeypatch.setattr(dns.query, "tcp", recorded)
    return sent


def test_a_dual_stack_vm_has_an_a_and_an_aaaa_record_each_sent_when_its_address_changes(
        make_harness: HarnessFactory, bind: BindServer, monkeypatch: pytest.MonkeyPatch) -> None:
    # Before, a VM's one address (guest.ipAddress) made its one record: a dual-stack guest was
    # reachable by name over IPv4 only (or IPv6 only), whatever else it had.
    world = make_dns_world(make_harness, bind.dns_config(), size=1)
    dual_stack(world, monkeypatch)
    world.passes("dns", 3)
    [(host, ip)] = ready_vms(world).items()
    name = f"{host}.{bind.zone}"
    assert bind.addresses(name) == [ip] and bind.addresses(name, "AAAA") == [six(ip)]
    assert world.describe(host)["ip"] == ip  # vmpooler clients read one address: the primary

    sent = updates_sent(monkeypatch)
    world.passes("dns", 3, seconds=120)  # whole comparisons and partial ones: nothing changed
    assert sent == []
    readdress(world, host, ip, ip, "2001:db8::77")  # a new IPv6 prefix: the A record is not sent
    world.passes("dns", 1)
    assert sent == [["AAAA"]]
    assert bind.addresses(name) == [ip] and bind.addresses(name, "AAAA") == ["2001:db8::77"]
    readdress(world, host, "10.200.0.21", "10.200.0.21", "2001:db8::77")  # another DHCP lease
    world.passes("dns", 1)
    assert sent == [["AAAA"], ["A"]]
    assert bind.addresses(name) == ["10.200.0.21"] and bind.addresses(name, "AAAA") == ["2001:db8::77"]
    assert world.describe(host)["ip"] == "10.200.0.21"
    readdress(world, host, "10.200.0.21", "10.200.0.21", "fe80::9")  # its global IPv6 address gone
    world.passes("dns", 1)
    assert sent == [["AAAA"], ["A"], ["AAAA"]]
    assert bind.addresses(name) == ["10.200.0.21"] and bind.addresses(name, "AAAA") == []
    readdress(world, host, "2001:db8::78", "10.200.0.21", "2001:db8::78")  # IPv6 as primary
    world.passes("dns", 1)
    assert bind.addresses(name) == ["10.200.0.21"] and bind.addresses(name, "AAAA") == ["2001:db8::78"]
    assert world.describe(host)["ip"] == "2001:db8::78"

    world.store.move(host, "dns", "ready", "completed", world.clock.now(), reason="returned")
    world.passes("dns", 3)
    assert bind.addresses(name) == [] and bind.addresses(name, "AAAA") == []


def test_a_dual_stack_vm_whose_primary_address_is_link_local_is_published_by_its_other_addresses(
        make_harness: HarnessFactory, bind: BindServer, monkeypatch: pytest.MonkeyPatch) -> None:
    # VMware Tools may report an IPv6 link-local address as guest.ipAddress: before, the VM
    # waited for another one until its timeout, though its interface had two usable addresses.
    world = make_dns_world(make_harness, bind.dns_config(), size=1)
    link_local_first(world, monkeypatch)
    for _ in range(3):  # from the pass that makes it ready on: before, fe80::... until a later pass
        world.passes("dns", 1)
        assert [world.describe(host)["ip"] for host in world.hosts("dns", "ready")] in ([], ["10.200.0.31"])
    [host] = world.hosts("dns", "ready")
    assert bind.addresses(f"{host}.{bind.zone}") == ["10.200.0.31"]
    assert bind.addresses(f"{host}.{bind.zone}", "AAAA") == ["2001:db8::31"]
    world.passes("dns", 1, seconds=61)  # a whole comparison: GET /vm gives an address users can reach
    assert world.describe(host)["ip"] == "10.200.0.31"


def test_a_discovered_vm_whose_primary_address_is_link_local_shows_the_one_users_can_reach(
        make_harness: HarnessFactory, bind: BindServer) -> None:
    # A VM someone made in the pool's folder is discovered with the address readiness and
    # ready VMs use (``reachable_ip``); before, GET /vm showed its raw fe80:: primary.
    world = make_dns_world(make_harness, bind.dns_config(), size=0)
    world.provider.create_by_hand(world.pool("dns"), "by-hand")
    readdress(world, "by-hand", "fe80::250:56ff:fe00:3", "fe80::250:56ff:fe00:3", "10.200.0.41")
    world.passes("dns", 1)
    assert world.store.get_vm("by-hand") is not None
    assert world.describe("by-hand")["ip"] == "10.200.0.41"


def test_route53_holds_both_families_and_is_sent_only_the_changed_one(
        make_harness: HarnessFactory, route53: tuple[Any, str], monkeypatch: pytest.MonkeyPatch) -> None:
    client, zone = route53
    world = make_dns_world(make_harness, {"dns_class": "route53", "domain": "vms.example.test",
                                          "hosted_zone_id": zone}, size=1)
    dual_stack(world, monkeypatch)

    def records() -> dict[str, list[str]]:
        found = client.list_resource_record_sets(HostedZoneId=zone)["ResourceRecordSets"]
        return {r["Type"]: [v["Value"] for v in r["ResourceRecords"]] for r in found
                if r["Type"] in ("A", "AAAA") and r["Name"].startswith(host)}

    world.passes("dns", 3)
    [(host, ip)] = ready_vms(world).items()
    assert records() == {"A": [ip], "AAAA": [six(ip)]}
    plugin = dns_of(world)
    changes: list[list[tuple[str, str]]] = []
    change = plugin._change  # type: ignore[attr-defined]
    monkeypatch.setattr(plugin, "_change", lambda what, batch: (
        changes.append([(action, record["Type"]) for action, record in batch]), change(what, batch))[1])
    readdress(world, host, ip, ip, "2001:db8::88")
    world.passes("dns", 1)
    assert changes == [[("UPSERT", "AAAA")]]
    readdress(world, host, ip)  # its IPv6 address gone: deleted as Route 53 holds it
    world.passes("dns", 1)
    assert changes[1:] == [[("DELETE", "AAAA")]]
    assert records() == {"A": [ip]}


# --- a pool's DNS entry or domain changed while its VMs are in service ----------------------------


@pytest.fixture
def moved_domain(make_harness: HarnessFactory, bind: BindServer) -> Iterator[tuple[Harness, dict[str, str], str]]:
    """Two VMs published under ``<host>.<zone>``, then the entry's domain changed to ``lab.<zone>``
    (same zone): (the service with the new config, the VMs' hostname -> IP, the new domain)."""
    lab = f"lab.{bind.zone}"
    world, published = published_then_reconfigured(
        make_harness, bind, dns_document({"zone": bind.dns_config(domain=lab, zone=bind.zone)}, "zone"))
    yield world, published, lab


def test_vms_in_service_move_to_their_pools_new_domain(moved_domain: tuple[Harness, dict[str, str], str],
                                                       bind: BindServer) -> None:
    # Before, a ready or running VM kept its record under the former domain until it left, and
    # was never published under the new one: GET /vm gave the former name, and the ready ones
    # were handed out under it after the operator had moved the pool's names.
    world, published, lab = moved_domain
    [running] = world.check_out("dns")
    world.passes("dns", 1, seconds=61)  # a whole comparison (the dummy says what changed: vm_checktime)
    for host, ip in published.items():
        assert bind.addresses(f"{host}.{lab}") == [ip]
        assert bind.addresses(f"{host}.{bind.zone}") == []
        assert world.describe(host)["fqdn"] == f"{host}.{lab}"
    assert world.state_of(running) == "running" and len(world.hosts("dns", "ready")) == 1
    world.store.move(running, "dns", "running", "completed", world.clock.now(), reason="returned by its user")
    world.passes("dns", 3)
    assert bind.addresses(f"{running}.{lab}") == []


@pytest.mark.parametrize("domain", ["kept", "changed"])
def test_vms_in_service_move_to_their_pools_new_entry(make_harness: HarnessFactory, bind: BindServer,
                                                      domain: str) -> None:
    other = bind.dns_config(domain=f"lab.{bind.zone}", zone=bind.zone) if domain == "changed" else bind.dns_config()
    world, published = published_then_reconfigured(make_harness, bind, dns_document(
        {"zone": bind.dns_config(), "other": other}, "other"))
    world.passes("dns", 1, seconds=61)
    new_domain = other["domain"]
    for host, ip in published.items():
        assert bind.addresses(f"{host}.{new_domain}") == [ip]
        record = world.store.get_vm(host)
        assert record is not None and record.raw["dns_plugin"] == "other"
        if domain == "changed":
            assert bind.addresses(f"{host}.{bind.zone}") == []
    world.store.move(sorted(published)[0], "dns", "ready", "completed", world.clock.now(), reason="returned")
    world.passes("dns", 3)
    assert bind.addresses(f"{sorted(published)[0]}.{new_domain}") == []


def test_moves_are_bounded_per_pass_and_a_pass_killed_between_delete_and_publish_is_finished_by_the_next(
        moved_domain: tuple[Harness, dict[str, str], str], bind: BindServer, clock: FakeClock,
        monkeypatch: pytest.MonkeyPatch) -> None:
    world, published, lab = moved_domain
    monkeypatch.setattr(dns_records, "MOVED_RECORDS_PER_PASS", 1)

    def killed_after_the_first_delete(step: str) -> None:
        if step == "dns_withdrawn":
            raise Killed(step)

    def moved() -> list[str]:
        return [host for host, ip in published.items()
                if bind.addresses(f"{host}.{lab}") == [ip] and bind.addresses(f"{host}.{bind.zone}") == []]

    world.passes("dns", 1, seconds=61)
    [first] = moved()  # one move a pass
    [second] = set(published) - {first}
    assert bind.addresses(f"{second}.{bind.zone}") == [published[second]]
    clock.advance(61)
    with pytest.raises(Killed):
        reconcile_pool(world.store, world.provider, world.pool("dns"), clock, world.config.service,
                       killed_after_the_first_delete, dns=dns_of(world), dns_plugins=world.services.dns_lookup)
    assert bind.addresses(f"{second}.{bind.zone}") == [] and bind.addresses(f"{second}.{lab}") == []
    world.passes("dns", 1, seconds=61)
    assert sorted(moved()) == sorted(published)


# --- GET /vm's ip without managed DNS -------------------------------------------------------------


@pytest.fixture
def plain(make_harness: HarnessFactory) -> Harness:
    """A pool of two VMs without ``dns_plugin``."""
    return make_harness(parse(yaml.safe_dump(dns_document({}, None))))


def test_the_ip_get_vm_gives_follows_a_changed_address_without_managed_dns(plain: Harness) -> None:
    # Before, only a pool whose records vmpool publishes had its VMs' ip follow: elsewhere
    # GET /vm gave a VM rebooted onto another DHCP lease its former address for good.
    running, ready = readdressed_in_service(plain, "10.200.0.41", "10.200.0.42")
    assert plain.describe(running)["ip"] == "10.200.0.41" and plain.describe(ready)["ip"] == "10.200.0.42"
    for unusable in ("fe80::1", "169.254.1.1", "not an address"):
        readdress(plain, running, unusable)
        plain.passes("dns", 1)
        assert plain.describe(running)["ip"] == "10.200.0.41"
    readdress(plain, running, "2001:db8::41")
    plain.passes("dns", 1)
    assert plain.describe(running)["ip"] == "2001:db8::41"


def test_a_stale_pass_never_gives_get_vm_an_older_address(plain: Harness, clock: FakeClock) -> None:
    plain.passes("dns", 3)
    host = sorted(plain.hosts("dns", "ready"))[0]
    readdress(plain, host, "10.200.0.43")

    def another_pass_sees_the_next_address() -> None:
        readdress(plain, host, "10.200.0.44")
        clock.advance(30)
        plain.reconcile("dns")
        assert plain.describe(host)["ip"] == "10.200.0.44"

    overtaken_pass(plain, clock, another_pass_sees_the_next_address)
    assert plain.describe(host)["ip"] == "10.200.0.44"


def test_without_managed_dns_get_vm_names_a_vm_under_its_pools_domain_now(make_harness: HarnessFactory) -> None:
    """Without managed DNS, ``domain`` only names the domain: vmpooler's GET /vm/<hostname> gives
    ``<name>.<its pool's domain>`` from the config in effect. Before, a VM kept the domain of its
    reservation: after ``config.domain`` changed, GET /vm gave the old name, new VMs the new one."""
    def document(domain: str) -> dict[str, Any]:
        return {"config": {"timeout": 10, "domain": domain},
                "providers": {"dummy": {"provider_class": "dummy", "seed": 5, "boot_time": 20}},
                "pools": [{"name": "plain", "size": 1, "provider": "dummy"}]}

    before = make_harness(parse(yaml.safe_dump(document("old.example.test"))))
    before.passes("plain", 3)
    [host] = before.hosts("plain", "ready")
    assert before.describe(host)["fqdn"] == f"{host}.old.example.test"
    after = make_harness(parse(yaml.safe_dump(document("new.example.test"))))
    assert after.describe(host)["fqdn"] == f"{host}.new.example.test"
    v1 = after.request("GET", f"/api/v1/vm/{host}")
    assert v1.json[host]["domain"] == "new.example.test"
