"""DNS records through reconcile passes (dummy provider, fake clock, real BIND 9 or moto):
a VM is ready only with its A record, loses it when it leaves, never takes a name that already
resolves, and a DNS outage keeps VMs pending with the reason instead of failing the pass."""

from __future__ import annotations

import base64
import dataclasses
import io
import itertools
import json
import os
import secrets
import signal
from types import SimpleNamespace
from typing import Any, Iterable, Iterator

import pytest
import yaml

from chalicelib.clock import FakeClock
from chalicelib.config import parse
from chalicelib.dns.base import DnsPlugin
from chalicelib.dns.registry import build_dns_plugin
from chalicelib.dns.route53 import THROTTLED_RETRIES
from chalicelib.manager import clones, dns_records
from chalicelib.manager.dispatch import Ticker, look_at
from chalicelib.manager.pool_queue import DRAIN, PoolMessage
from chalicelib.manager.reconcile import reconcile_pool
from chalicelib.store.fleet import Fleet
from tests.dns.bind import BindServer
from tests.harness import Harness, HarnessFactory
from tests.support import emf_documents, stop_process


def make_dns_world(make_harness: HarnessFactory, entry: dict[str, Any], size: int = 2, **dummy: Any) -> Harness:
    document = {
        "config": {"timeout": 10, "task_limit": 10},
        "providers": {"dummy": {"provider_class": "dummy", "seed": 5, "boot_time": 20, **dummy}},
        "dns_configs": {"zone": entry},
        "pools": [{"name": "dns", "size": size, "provider": "dummy", "dns_plugin": "zone"}],
    }
    return make_harness(parse(yaml.safe_dump(document)))


def dns_of(world: Harness) -> DnsPlugin:
    """The pool's DNS plugin, the one its passes use."""
    plugin = world.services.dns_plugin(world.pool("dns"))
    assert plugin is not None
    return plugin


def names_sent(world: Harness, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The host names the pool's DNS plugin is asked to publish from now on (``create_many``),
    in order, each time it is asked."""
    sent: list[str] = []
    plugin: Any = dns_of(world)
    create_many = plugin.create_many

    def counted(records: Any, *args: Any) -> Any:
        sent.extend(hostname for hostname, _, _ in records)
        return create_many(records, *args)

    monkeypatch.setattr(plugin, "create_many", counted)
    return sent


@pytest.fixture
def world(make_harness: HarnessFactory, bind: BindServer) -> Harness:
    return make_dns_world(make_harness, bind.dns_config())


def ready_vms(world: Harness) -> dict[str, str]:
    """hostname -> IP of the pool's ready VMs."""
    return {host: world.store.get_vm(host).ip for host in world.hosts("dns", "ready")}  # type: ignore[union-attr]


def test_ready_vms_have_their_record_and_lose_it_when_they_leave(world: Harness, bind: BindServer) -> None:
    world.passes("dns", 3)
    ready = ready_vms(world)
    assert len(ready) == 2
    for host, ip in ready.items():
        assert bind.addresses(f"{host}.{bind.zone}") == [ip]
        assert world.store.get_vm(host).fqdn() == f"{host}.{bind.zone}"  # type: ignore[union-attr]

    [taken] = world.check_out("dns")
    world.store.move(taken, "dns", "running", "completed", world.clock.now(), reason="returned by its user")
    world.passes("dns", 4)
    assert bind.addresses(f"{taken}.{bind.zone}") == []
    assert world.state_of(taken) == "destroyed"
    # Its replacement got a record of its own; the other VM kept its own.
    assert len(ready_vms(world)) == 2
    for host, ip in ready_vms(world).items():
        assert bind.addresses(f"{host}.{bind.zone}") == [ip]


def test_the_record_exists_before_the_readiness_check_that_may_need_it(
        make_harness: HarnessFactory, clock: FakeClock, bind: BindServer) -> None:
    # Readiness by TCP to <name>.<domain> needs the name: it is published once the VM has an address.
    world = make_dns_world(make_harness, bind.dns_config(), vmready_fail_percent=100)
    world.passes("dns", 3)
    pending = world.hosts("dns", "pending")
    assert len(pending) == 2 and world.count("dns", "ready") == 0
    for host in pending:
        record = world.store.get_vm(host)
        assert record is not None and record.not_ready_reason.startswith("dummy: readiness check failed")
        assert bind.addresses(f"{host}.{bind.zone}") == [record.raw["dns_published"]]


def test_a_new_name_that_already_resolves_is_refused_and_another_is_used(
        world: Harness, bind: BindServer, monkeypatch: pytest.MonkeyPatch) -> None:
    stale = "stale-name"
    dns_of(world).create_or_replace(stale, "10.99.99.99")  # left behind by someone else
    names: Iterator[str] = itertools.chain([stale], (f"fresh-{n}" for n in itertools.count()))
    monkeypatch.setattr(clones, "candidate_names", lambda count, prefix="": [next(names) for _ in range(count * 2)])
    first = world.passes("dns", 1)[0]
    assert stale in first.completed and "already resolves to 10.99.99.99" in first.completed[stale]
    assert stale not in world.provider_vms("dns")  # never cloned
    world.passes("dns", 4)
    assert len(ready_vms(world)) == 2 and all(host.startswith("fresh-") for host in ready_vms(world))
    # Not our record: left alone.
    assert bind.addresses(f"{stale}.{bind.zone}") == ["10.99.99.99"]
    dns_of(world).delete(stale)


@pytest.mark.parametrize(("rdtype", "value", "shown"), [
    ("CNAME", "ns.vms.example.test.", "ns.vms.example.test (CNAME)"),  # an operator's alias
    ("AAAA", "2001:db8::7", "2001:db8::7"),  # a dual-stack guest of old registered it itself
])
def test_a_new_name_held_by_a_cname_or_aaaa_record_is_refused_and_another_is_used(
        world: Harness, bind: BindServer, monkeypatch: pytest.MonkeyPatch, rdtype: str, value: str,
        shown: str) -> None:
    # Before, only A records counted: the name was taken as free, the VM's A record was "created"
    # (BIND ignores an A record at a CNAME's name, and answers NOERROR) or added beside the
    # AAAA record, and users of the name reached another machine.
    held = "held-name"
    bind.add_record(f"{held}.{bind.zone}", rdtype, value)
    names: Iterator[str] = itertools.chain([held], (f"fresh-{n}" for n in itertools.count()))
    monkeypatch.setattr(clones, "candidate_names", lambda count, prefix="": [next(names) for _ in range(count * 2)])
    first = world.passes("dns", 1)[0]
    assert held in first.completed and f"already resolves to {shown}" in first.completed[held]
    assert held not in world.provider_vms("dns")  # never cloned
    world.passes("dns", 4)
    assert len(ready_vms(world)) == 2 and all(host.startswith("fresh-") for host in ready_vms(world))


def test_a_dns_outage_keeps_vms_pending_with_the_reason_and_never_fails_the_pass(
        world: Harness, bind: BindServer) -> None:
    bind.stop()
    reports = world.passes("dns", 3)  # clone, boot, ready by the provider: DNS is down
    assert all(report.became_ready == [] for report in reports)
    pending = world.hosts("dns", "pending")
    assert len(pending) == 2
    for host in pending:
        reason = world.store.get_vm(host).not_ready_reason  # type: ignore[union-attr]
        # The first create of a pass names its own VM; the pass sends nothing after that failure.
        assert reason.startswith("DNS record not created: ") and f"127.0.0.1:{bind.port}" in reason

    bind.start()
    world.passes("dns", 1)
    ready = ready_vms(world)
    assert set(ready) == pending
    for host, ip in ready.items():
        assert bind.addresses(f"{host}.{bind.zone}") == [ip]


def test_an_outage_longer_than_the_timeout_takes_the_vm_out_with_the_reason(world: Harness, bind: BindServer) -> None:
    bind.stop()
    world.passes("dns", 2)
    pending = world.hosts("dns", "pending")
    world.passes("dns", 1, seconds=11 * 60)
    for host in pending:
        record = world.store.get_vm(host)
        assert record.state == "completed"  # type: ignore[union-attr]
        assert "not ready after 10 minutes: DNS record not created" in record.reason  # type: ignore[union-attr]


def test_a_failed_delete_does_not_hold_the_destroy(world: Harness, bind: BindServer) -> None:
    world.passes("dns", 3)
    [taken] = world.check_out("dns")
    bind.stop()
    world.store.move(taken, "dns", "running", "completed", world.clock.now(), reason="returned by its user")
    world.passes("dns", 3)
    record = world.store.get_vm(taken)
    assert record.state == "destroyed"  # type: ignore[union-attr]
    assert record.raw["dns_error"].startswith("DNS record not deleted: ")  # type: ignore[union-attr]
    assert f"delete {taken}.{bind.zone}" in record.raw["dns_error"]  # type: ignore[union-attr]


def test_route53_records_follow_the_vms(make_harness: HarnessFactory, route53: tuple[Any, str]) -> None:
    client, zone = route53
    world = make_dns_world(make_harness, {"dns_class": "route53", "domain": "vms.example.test",
                                                 "hosted_zone_id": zone}, size=1)

    def records() -> dict[str, list[str]]:
        found = client.list_resource_record_sets(HostedZoneId=zone)["ResourceRecordSets"]
        return {r["Name"].rstrip("."): [v["Value"] for v in r["ResourceRecords"]] for r in found if r["Type"] == "A"}

    world.passes("dns", 3)
    [(host, ip)] = ready_vms(world).items()
    assert records() == {f"{host}.vms.example.test": [ip]}
    world.check_out("dns")
    world.store.move(host, "dns", "running", "completed", world.clock.now(), reason="returned by its user")
    world.passes("dns", 4)
    [(new_host, new_ip)] = ready_vms(world).items()
    assert records() == {f"{new_host}.vms.example.test": [new_ip]}


def test_records_left_to_dhcp_can_still_have_new_names_checked(
        make_harness: HarnessFactory, clock: FakeClock, bind: BindServer, monkeypatch: pytest.MonkeyPatch) -> None:
    # dynamic-dns without a server (vmpooler's meaning: the VMs register themselves) with
    # check_names: new names are looked up with the system's resolver, here pointed at BIND.
    import dns.resolver

    resolver = dns.resolver.Resolver(configure=False)
    resolver.nameservers, resolver.port = ["127.0.0.1"], bind.port
    monkeypatch.setattr(dns.resolver, "default_resolver", resolver)
    updater = build_dns_plugin(parse(yaml.safe_dump({"dns_configs": {"z": bind.dns_config()}})).dns_configs["z"])
    updater.create_or_replace("dhcp-left", "10.88.0.1")
    world = make_dns_world(make_harness, {"dns_class": "dynamic-dns", "domain": bind.zone, "check_names": True},
                           size=1)
    assert not dns_of(world).manages_records
    names = itertools.chain(["dhcp-left"], (f"fresh-{n}" for n in itertools.count()))
    monkeypatch.setattr(clones, "candidate_names", lambda count, prefix="": [next(names) for _ in range(count * 2)])
    first = world.passes("dns", 1)[0]
    assert "already resolves to 10.88.0.1" in first.completed["dhcp-left"]
    world.passes("dns", 3)
    [ready] = ready_vms(world)
    assert ready.startswith("fresh-") and bind.addresses(f"{ready}.{bind.zone}") == []  # not ours to publish
    updater.delete("dhcp-left")


def test_a_stale_pass_keeps_the_record_of_a_vm_checked_out_after_its_inventory_read(
        make_harness: HarnessFactory, clock: FakeClock, bind: BindServer) -> None:
    """Issue 10 defect 2 with DNS: the pass that read the inventory while the VM was cloning
    neither drops the VM a user took meanwhile nor withdraws its A record."""
    world = make_dns_world(make_harness, bind.dns_config(), size=1, createvm_max_time=60)
    (host,) = world.reconcile("dns").clones_started
    taken: list[str] = []

    def another_pass_readies_it_and_a_user_takes_it(step: str) -> None:
        if step == "inventory" and not taken:
            for _ in range(4):
                clock.advance(30)
                world.reconcile("dns")
            taken.extend(world.check_out("dns"))

    reconcile_pool(world.store, world.provider, world.pool("dns"), clock, world.config.service,
                   another_pass_readies_it_and_a_user_takes_it, dns=dns_of(world))

    assert taken == [host] and world.state_of(host) == "running"
    ip = world.store.get_vm(host).ip  # type: ignore[union-attr]
    assert bind.addresses(f"{host}.{bind.zone}") == [ip]


def test_a_stale_pass_leaves_no_record_for_a_vm_destroyed_after_its_read(
        make_harness: HarnessFactory, clock: FakeClock, bind: BindServer) -> None:
    # A pass that read the VM as pending (a Lambda frozen past its lease) resumes after other
    # passes made it ready, its user gave it back and it was destroyed, its record deleted.
    # Before, the stale pass published the record again and nothing ever deleted it: the name
    # of a VM that no longer exists led to its address, soon another machine's.
    world = make_dns_world(make_harness, bind.dns_config(), size=1, createvm_max_time=60)
    (host,) = world.reconcile("dns").clones_started
    clock.advance(200)  # cloned and booted: the next pass publishes it and makes it ready
    fqdn = f"{host}.{bind.zone}"
    paused: list[str] = []

    def others_run_while_paused(step: str) -> None:
        if step == "snapshot" and not paused:
            paused.append(step)
            world.reconcile("dns")
            assert world.check_out("dns") == [host]
            world.store.move(host, "dns", "running", "completed", clock.now(), reason="returned by its user")
            for _ in range(3):
                clock.advance(30)
                world.reconcile("dns")
            assert world.state_of(host) == "destroyed" and bind.addresses(fqdn) == []

    reconcile_pool(world.store, world.provider, world.pool("dns"), clock, world.config.service,
                   others_run_while_paused, dns=dns_of(world))
    assert paused and world.state_of(host) == "destroyed"
    assert bind.addresses(fqdn) == []
    world.passes("dns", 3)
    assert bind.addresses(fqdn) == []
    [(new_host, ip)] = ready_vms(world).items()
    assert bind.addresses(f"{new_host}.{bind.zone}") == [ip]


def first_vm_reports(world: Harness, monkeypatch: pytest.MonkeyPatch, address: str) -> list[str]:
    """The first VM the dummy clones from now on reports ``address``: the names of the VMs it
    clones, in order (the first is that VM)."""
    provider_class = type(world.provider)
    new_vm = provider_class._new_vm
    made: list[str] = []

    def first_vm_reports_address(self: Any, pool: Any, hostname: str, available_at: float) -> dict[str, Any]:
        vm = new_vm(self, pool, hostname, available_at)
        if not made:
            vm["ip"] = address
        made.append(hostname)
        return vm

    monkeypatch.setattr(provider_class, "_new_vm", first_vm_reports_address)
    return made


def test_a_vm_reporting_an_address_dns_cannot_hold_stays_pending_and_the_others_become_ready(
        world: Harness, bind: BindServer, monkeypatch: pytest.MonkeyPatch) -> None:
    # VMware Tools reports what the guest says: a user inside it may give anything. Before,
    # dnspython's SyntaxError (at an IPv6 address sent as an A record) ended every pass of the
    # pool at that VM: no VM of the pool became ready again.
    made = first_vm_reports(world, monkeypatch, "10.0.0.1; DROP")
    world.passes("dns", 3)
    odd = made[0]
    assert set(ready_vms(world)) == set(made[1:]) and len(made) == 2
    assert world.hosts("dns", "pending") == {odd}
    reason = world.store.get_vm(odd).not_ready_reason  # type: ignore[union-attr]
    assert reason == f"DNS record not created: dns create {odd}.{bind.zone}: 10.0.0.1; DROP is not an IP address"


def test_a_link_local_address_is_not_published_and_the_vm_waits_for_its_real_one(
        world: Harness, bind: BindServer, monkeypatch: pytest.MonkeyPatch) -> None:
    # A guest waiting for DHCP picks itself a link-local 169.254.x.x address (Windows does), and
    # VMware Tools reports it. Before, it was published and the VM made ready at once; a ready
    # VM's record is never published again, so its name led to 169.254.x.x for good.
    provider_class = type(world.provider)
    visible = provider_class._visible
    dhcp_answered: list[bool] = []
    waiting: list[str] = []

    def first_vm_waits_for_dhcp(self: Any, pool: Any, vms: Any) -> list[Any]:
        shown = visible(self, pool, vms)
        if not waiting and shown and shown[0].ip:
            waiting.append(shown[0].name)
        return [dataclasses.replace(vm, ip="169.254.7.7") if vm.name in waiting and not dhcp_answered else vm
                for vm in shown]

    monkeypatch.setattr(provider_class, "_visible", first_vm_waits_for_dhcp)
    world.passes("dns", 3)
    [host] = waiting
    assert world.hosts("dns", "pending") == {host} and len(ready_vms(world)) == 1
    reason = world.store.get_vm(host).not_ready_reason  # type: ignore[union-attr]
    assert reason == (f"DNS record not created: dns create {host}.{bind.zone}: 169.254.7.7 is a link-local "
                      "address (the guest has no address from DHCP yet)")
    assert bind.addresses(f"{host}.{bind.zone}") == []
    dhcp_answered.append(True)
    world.passes("dns", 1)
    ip = ready_vms(world)[host]
    assert bind.addresses(f"{host}.{bind.zone}") == [ip] and not ip.startswith("169.254.")


def test_a_paused_dns_server_costs_a_pass_one_timeout_and_records_converge_when_it_is_back(
        make_harness: HarnessFactory, bind: BindServer, monkeypatch: pytest.MonkeyPatch) -> None:
    # SIGSTOP: the server accepts connections and never answers, so each exchange waits its
    # whole timeout. Before, a pass waited once per VM (deletes, lookups of new names, creates):
    # 3 VMs leaving and 3 replacements were 6 timeouts, 30 s at the default 5 s.
    import dns.query

    # The healthy passes keep the usual timeout (a loaded machine may answer in more than 0.5 s);
    # only the paused ones use a short one, so that their timeouts are quick to wait out.
    world = make_dns_world(make_harness, bind.dns_config(), size=4)
    world.passes("dns", 3)
    assert len(ready_vms(world)) == 4
    leaving = sorted(world.hosts("dns", "ready"))[:3]
    exchanges: list[str] = []
    tcp = dns.query.tcp

    def counted(message: Any, *args: Any, **kwargs: Any) -> Any:
        exchanges.append(str(message.question[0].name) if message.question else "update")
        return tcp(message, *args, **kwargs)

    monkeypatch.setattr(dns.query, "tcp", counted)
    assert bind.process is not None
    stop_process(bind.process.pid)  # stopped for good before the passes: not answering their first call
    try:
        with monkeypatch.context() as paused:
            paused.setattr(dns_of(world), "timeout", 0.5)
            for host in leaving:
                world.store.move(host, "dns", "ready", "completed", world.clock.now(), reason="returned by its user")
            for _ in range(2):
                exchanges.clear()
                [report] = world.passes("dns", 1)
                assert len(exchanges) == 1, exchanges  # the first call timed out; the pass sent nothing more
                assert report.became_ready == []
    finally:
        os.kill(bind.process.pid, signal.SIGCONT)
    for host in world.hosts("dns", "pending"):
        assert "DNS record not created" in world.store.get_vm(host).not_ready_reason  # type: ignore[union-attr]
    world.passes("dns", 3)
    ready = ready_vms(world)
    assert len(ready) == 4 and not set(ready) & set(leaving)
    for host, ip in ready.items():
        assert bind.addresses(f"{host}.{bind.zone}") == [ip]
    for host in leaving:  # destroyed while DNS was paused: their records go once it answers
        assert world.state_of(host) == "destroyed"
        assert bind.addresses(f"{host}.{bind.zone}") == []


def test_records_of_vms_destroyed_while_the_dns_server_was_killed_are_deleted_when_it_is_back(
        world: Harness, bind: BindServer) -> None:
    # Before, a VM destroyed during the outage kept its A record for good ("a record left
    # behind is refused as a stale name later"): its address, soon another machine's, kept
    # answering to its name.
    world.passes("dns", 3)
    gone = sorted(world.hosts("dns", "ready"))
    old_ips = ready_vms(world)
    bind.kill()
    for host in gone:
        world.store.move(host, "dns", "ready", "completed", world.clock.now(), reason="returned by its user")
    world.passes("dns", 3)
    assert {world.state_of(host) for host in gone} == {"destroyed"}  # DNS down never holds a destroy
    bind.start()
    for host in gone:
        assert bind.addresses(f"{host}.{bind.zone}") == [old_ips[host]]  # still there, as the outage left it
    world.passes("dns", 3)
    for host in gone:
        assert bind.addresses(f"{host}.{bind.zone}") == []
        assert "dns_error" not in world.store.get_vm(host).raw  # type: ignore[union-attr]
    ready = ready_vms(world)
    assert len(ready) == 2
    for host, ip in ready.items():
        assert bind.addresses(f"{host}.{bind.zone}") == [ip]
    world.passes("dns", 1)
    assert world.client.exists(world.store.keys.dns_left("dns")) == 0


def test_tsig_secrets_are_never_in_logs_records_or_answers(
        make_harness: HarnessFactory, bind: BindServer, log_output: io.StringIO) -> None:
    wrong_secret = "c2VjcmV0LWJ1dC13cm9uZy1rZXk="
    world = make_dns_world(make_harness, bind.dns_config(), size=2)
    world.passes("dns", 3)
    refused = make_dns_world(make_harness, bind.dns_config(tsig_secret=wrong_secret), size=1)
    refused.passes("dns", 3)  # every update refused: BADSIG
    bind.stop()
    [taken] = world.check_out("dns")
    world.store.move(taken, "dns", "running", "completed", world.clock.now(), reason="returned by its user")
    world.passes("dns", 3)  # deletes and creates fail: no server
    logs = log_output.getvalue()
    assert "rejected the TSIG key" in logs and "ConnectionRefusedError" in logs  # the failures were logged
    seen = [logs, json.dumps(world.redis_state()), json.dumps(refused.redis_state())]
    for host in world.hosts("dns", "pending") | refused.hosts("dns", "pending") | {taken}:
        seen.append(json.dumps(world.answer("GET", f"/api/v3/vm/{host}")))
    seen.append(json.dumps(world.answer("GET", "/api/v3/config")))
    seen.append(json.dumps(world.answer("GET", "/api/v3/status")))
    for text in seen:
        assert bind.key_secret not in text and wrong_secret not in text
        assert bind.key_secret[:12] not in text and wrong_secret[:12] not in text


def test_route53_throttling_costs_a_pass_one_call_and_records_converge(
        make_harness: HarnessFactory, route53: tuple[Any, str], monkeypatch: pytest.MonkeyPatch) -> None:
    from botocore.exceptions import ClientError

    client, zone = route53
    world = make_dns_world(make_harness, {"dns_class": "route53", "domain": "vms.example.test",
                                          "hosted_zone_id": zone}, size=3)
    plugin = dns_of(world)
    world.passes("dns", 3)
    leaving = sorted(world.hosts("dns", "ready"))[:2]
    calls: list[str] = []
    real = plugin.client._make_api_call  # type: ignore[attr-defined]

    def throttled(operation: str, params: Any) -> Any:
        calls.append(operation)
        raise ClientError({"Error": {"Code": "Throttling", "Message": "Rate exceeded"}}, operation)

    monkeypatch.setattr(plugin.client, "_make_api_call", throttled)  # type: ignore[attr-defined]
    monkeypatch.setattr(plugin, "_sleep", lambda seconds: None)  # the plugin's backoff between retries
    for host in leaving:
        world.store.move(host, "dns", "ready", "completed", world.clock.now(), reason="returned by its user")
    for _ in range(2):
        calls.clear()
        world.passes("dns", 1)
        assert len(calls) == 1 + THROTTLED_RETRIES, calls  # one call (and its retries), then nothing more
    assert {world.state_of(host) for host in leaving} == {"destroyed"}
    record = world.store.get_vm(leaving[0])
    assert "Throttling: Rate exceeded" in record.raw["dns_error"]  # type: ignore[union-attr]
    assert os.environ["AWS_SECRET_ACCESS_KEY"] not in record.raw["dns_error"]  # type: ignore[union-attr]

    monkeypatch.setattr(plugin.client, "_make_api_call", real)  # type: ignore[attr-defined]
    world.passes("dns", 3)
    found = client.list_resource_record_sets(HostedZoneId=zone)["ResourceRecordSets"]
    records = {r["Name"].rstrip("."): [v["Value"] for v in r["ResourceRecords"]] for r in found if r["Type"] == "A"}
    assert records == {f"{host}.vms.example.test": [ip] for host, ip in ready_vms(world).items()}
    assert len(records) == 3 and not {f"{host}.vms.example.test" for host in leaving} & set(records)


def test_a_slow_dns_server_holds_a_pass_for_its_budget_and_the_next_passes_go_on(
        make_harness: HarnessFactory, clock: FakeClock, bind: BindServer, monkeypatch: pytest.MonkeyPatch) -> None:
    # Each answer comes 4 s after the question, within the 5 s timeout: before, a pass waited 4 s
    # per VM (8 VMs: 32 s of a 60 s function, and more VMs ran past it).
    # One VM a call (50 a call publish 8 in one): the budget is about calls, not VMs.
    monkeypatch.setattr(dns_records, "RECORDS_PER_CALL", 1)
    world = make_dns_world(make_harness, bind.dns_config(timeout=5), size=8, createvm_max_time=0)
    plugin = dns_of(world)
    create_many = plugin.create_many
    sent: list[str] = []

    def slow_create(records: Any, *args: Any) -> Any:
        clock.advance(4)  # the fake clock is the pass's monotonic clock too
        sent.extend(hostname for hostname, _, _ in records)
        return create_many(records, *args)

    monkeypatch.setattr(plugin, "create_many", slow_create)
    for _ in range(3):  # cloned, booted: the first pass that sees the 8 addresses publishes them
        [report] = world.passes("dns", 1)
        if sent:
            break
    assert len(sent) == 4 and len(report.became_ready) == 4  # 16 s >= the 15 s budget: the rest wait
    waiting = world.hosts("dns", "pending")
    assert len(waiting) == 4
    for host in waiting:
        reason = world.store.get_vm(host).not_ready_reason  # type: ignore[union-attr]
        assert reason.endswith("not sent, the DNS service took 16 s of this pass (at most 15 s a pass)")
    world.passes("dns", 1, seconds=0)
    assert len(ready_vms(world)) == 8
    for host, ip in ready_vms(world).items():
        assert bind.addresses(f"{host}.{bind.zone}") == [ip]


def test_a_removed_pool_is_forgotten_only_once_its_left_records_are_deleted(
        world: Harness, bind: BindServer) -> None:
    # Before, a pool removed from the config while its DNS server was down drained, was
    # forgotten as soon as it had no VM, and the records of its VMs stayed in the zone for good.
    world.passes("dns", 3)
    gone = sorted(world.hosts("dns", "ready"))
    assert len(gone) == 2
    queue = SimpleNamespace(send=lambda messages: None)
    Ticker().tick(world.services, queue)  # the pool is known, so it can be drained
    bind.kill()
    config = world.services.config
    world.services.use_config(dataclasses.replace(config, pools=()))

    def drain(passes: int) -> None:
        for _ in range(passes):
            look_at(world.services, PoolMessage("dns", DRAIN), queue)
            world.clock.advance(31)

    drain(4)
    assert {world.state_of(host) for host in gone} == {"destroyed"}
    assert "dns" in Fleet(world.store).names()  # its records are still to delete
    bind.start()
    drain(2)
    for host in gone:
        assert bind.addresses(f"{host}.{bind.zone}") == []
    assert "dns" not in Fleet(world.store).names()


# --- a pool's DNS entry changed while its VMs are out ---------------------------------------------


def dns_document(entries: dict[str, Any], dns_plugin: str | None) -> dict[str, Any]:
    """make_dns_world's config with these ``:dns_configs:`` entries, the pool naming ``dns_plugin``."""
    pool: dict[str, Any] = {"name": "dns", "size": 2, "provider": "dummy"}
    if dns_plugin is not None:
        pool["dns_plugin"] = dns_plugin
    return {
        "config": {"timeout": 10, "task_limit": 10},
        "providers": {"dummy": {"provider_class": "dummy", "seed": 5, "boot_time": 20}},
        "dns_configs": entries,
        "pools": [pool],
    }


def published_then_reconfigured(make_harness: HarnessFactory, bind: BindServer,
                                after: dict[str, Any]) -> tuple[Harness, dict[str, str]]:
    """Two VMs made ready and published under ``<host>.<zone>`` by the entry ``zone``, then the
    service as a Lambda started after the config ``after`` was pushed sees it (the plugins built
    from it): (that service, the published hostname -> IP)."""
    before = make_harness(parse(yaml.safe_dump(dns_document({"zone": bind.dns_config()}, "zone"))))
    before.passes("dns", 3)
    published = ready_vms(before)
    assert len(published) == 2
    for host, ip in published.items():
        assert bind.addresses(f"{host}.{bind.zone}") == [ip]
    return make_harness(parse(yaml.safe_dump(after))), published


def return_all(world: Harness, hosts: Iterable[str]) -> None:
    """Check out and give back every one of ``hosts``, the pool's ready VMs (each then leaves
    service and is destroyed)."""
    taken = world.check_out("dns", len(set(hosts)))
    assert set(taken) == set(hosts)
    for host in taken:
        world.store.move(host, "dns", "running", "completed", world.clock.now(), reason="returned by its user")


def left_by_a_refused_entry(make_harness: HarnessFactory,
                            bind: BindServer) -> tuple[Harness, dict[str, str], list[str]]:
    """Two VMs published by the entry ``zone``, then the pool moved to the entry ``other`` while
    the server stopped taking ``zone``'s key (a rotation on the server alone), the two VMs
    returned and destroyed, their records left to delete, and their two replacements made ready
    and published by ``other``: (the service, the VMs destroyed -> their IPs, the replacements)."""
    wrong = base64.b64encode(secrets.token_bytes(32)).decode()
    world, published = published_then_reconfigured(make_harness, bind, dns_document(
        {"zone": bind.dns_config(tsig_secret=wrong), "other": bind.dns_config()}, "other"))
    return_all(world, published)
    world.passes("dns", 4)
    assert {world.state_of(host) for host in published} == {"destroyed"}
    replacements = sorted(world.hosts("dns", "ready"))
    assert len(replacements) == 2
    for host in replacements:
        assert world.store.get_vm(host).raw["dns_plugin"] == "other"  # type: ignore[union-attr]
        assert bind.addresses(f"{host}.{bind.zone}") != []
    return world, published, replacements


def returned_during_outage(world: Harness, bind: BindServer, hosts: Iterable[str]) -> None:
    """``return_all`` of ``hosts`` while the DNS server is down, passes until they are destroyed
    (their records noted as left), then the server back."""
    bind.kill()
    return_all(world, hosts)
    world.passes("dns", 4)
    assert {world.state_of(host) for host in hosts} == {"destroyed"}
    bind.start()


@pytest.mark.parametrize("same_zone", [True, False], ids=["zone-kept", "zone-was-the-old-domain"])
def test_a_vm_published_before_its_entrys_domain_changed_loses_the_record_it_was_published_under(
        make_harness: HarnessFactory, bind: BindServer, same_zone: bool) -> None:
    # Before, the delete went to <host>.<the new domain>: the record under the old one stayed
    # for good, leading to an address soon another machine's. Without ``zone`` the entry's zone
    # is its domain: the old name's zone is then the old domain (this server's only zone).
    lab = f"lab.{bind.zone}"
    entry = bind.dns_config(domain=lab, zone=bind.zone) if same_zone else bind.dns_config(domain=lab)
    world, published = published_then_reconfigured(make_harness, bind, dns_document({"zone": entry}, "zone"))
    return_all(world, published)
    world.passes("dns", 4)
    for host in published:
        assert world.state_of(host) == "destroyed"
        assert bind.addresses(f"{host}.{bind.zone}") == []
    if not same_zone:
        return  # this server has no zone lab.<zone>: the replacements wait for their records
    # Their replacements are published under the new domain.
    replacements = ready_vms(world)
    assert len(replacements) == 2
    for host, ip in replacements.items():
        assert bind.addresses(f"{host}.{lab}") == [ip]


@pytest.mark.parametrize("dns_plugin", ["other", None], ids=["switched-to-another-entry", "removed"])
def test_a_vm_published_before_its_pools_dns_plugin_changed_loses_its_record(
        make_harness: HarnessFactory, bind: BindServer, dns_plugin: str | None) -> None:
    # Before, the delete went to the pool's new entry (for another name) or nowhere (none).
    world, published = published_then_reconfigured(make_harness, bind, dns_document(
        {"zone": bind.dns_config(), "other": bind.dns_config(domain=f"lab.{bind.zone}", zone=bind.zone)},
        dns_plugin))
    return_all(world, published)
    world.passes("dns", 4)
    for host in published:
        assert world.state_of(host) == "destroyed"
        assert bind.addresses(f"{host}.{bind.zone}") == []


def test_a_record_left_behind_by_an_outage_is_deleted_by_its_entry_after_the_pools_dns_plugin_changed(
        make_harness: HarnessFactory, bind: BindServer) -> None:
    world, published = published_then_reconfigured(make_harness, bind, dns_document(
        {"zone": bind.dns_config(), "other": bind.dns_config(domain=f"lab.{bind.zone}", zone=bind.zone)},
        "other"))
    returned_during_outage(world, bind, published)
    world.passes("dns", 2)
    for host in published:
        assert bind.addresses(f"{host}.{bind.zone}") == []
        assert "dns_name" not in world.store.get_vm(host).raw  # type: ignore[union-attr]


def test_a_record_whose_entry_is_gone_from_the_config_is_counted_and_forgotten_without_failing_the_pass(
        make_harness: HarnessFactory, bind: BindServer, capsys: pytest.CaptureFixture[str]) -> None:
    world, published = published_then_reconfigured(make_harness, bind, dns_document({}, None))
    capsys.readouterr()
    return_all(world, published)
    reports = world.passes("dns", 4)
    assert not any(report.errors for report in reports)
    for host in published:
        assert world.state_of(host) == "destroyed"
        assert "dns_name" not in world.store.get_vm(host).raw  # type: ignore[union-attr]
    gone = [document for document in emf_documents(capsys.readouterr().out)
            if document.get("DnsFailures") and document.get("reason") == "entry_gone"]
    assert len(gone) == 2


def test_a_warm_process_publishes_under_an_entrys_new_domain_once_the_config_is_pushed(
        make_harness: HarnessFactory, bind: BindServer) -> None:
    # Before, Services kept the plugin built from the old entry: a warm Lambda went on
    # publishing new VMs under the old domain after the push, while handing out the new one.
    world = make_harness(parse(yaml.safe_dump(dns_document({"zone": bind.dns_config()}, "zone"))))
    world.passes("dns", 3)
    published = ready_vms(world)
    lab = f"lab.{bind.zone}"
    world.services.use_config(parse(yaml.safe_dump(dns_document(
        {"zone": bind.dns_config(domain=lab, zone=bind.zone)}, "zone"))))
    return_all(world, published)
    world.passes("dns", 4)
    replacements = ready_vms(world)
    assert len(replacements) == 2
    for host, ip in replacements.items():
        assert bind.addresses(f"{host}.{lab}") == [ip]
        assert world.store.get_vm(host).fqdn() == f"{host}.{lab}"  # type: ignore[union-attr]
    for host in published:
        assert bind.addresses(f"{host}.{bind.zone}") == []


def test_a_checkout_names_a_published_vm_as_get_vm_does_after_its_domain_changed(
        make_harness: HarnessFactory, bind: BindServer) -> None:
    # A VM keeps the name it was published under until a pass moves its record. POST /vm
    # answered <host>.<the pool's new domain>, a name with no record yet, while GET /vm (and
    # the DNS server) named it <host>.<zone>: the caller's first ssh went nowhere.
    lab = f"lab.{bind.zone}"
    world, published = published_then_reconfigured(make_harness, bind, dns_document(
        {"zone": bind.dns_config(domain=lab, zone=bind.zone)}, "zone"))
    status, body = world.answer("POST", "/api/v3/vm/dns")
    assert status == 200
    host, _, domain = body["dns"]["hostname"].partition(".")
    assert host in published and domain == bind.zone
    assert world.describe(host)["fqdn"] == f"{host}.{bind.zone}"
    assert bind.addresses(body["dns"]["hostname"]) == [published[host]]
    # v1 clients append the top-level domain to the short name: the same name.
    status, body = world.answer("POST", "/api/v1/vm/dns")
    [other] = set(published) - {host}
    assert (status, body["dns"]["hostname"], body["domain"]) == (200, other, bind.zone)
