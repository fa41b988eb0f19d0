"""A DNS entry its server refuses as a whole (a wrong or rotated TSIG key, a zone the server
does not serve), against a real BIND 9: a pass learns it from one update and sends that entry
nothing more, the VMs keep the reason, the failure is counted, and other pools go on. And an
entry's domain rewritten in capitals or with a final dot: the same DNS name, no record moved;
a backlog of records left by an outage: its pool looked at again soon until it is deleted."""

from __future__ import annotations

import base64
import secrets
from typing import Any

import dns.opcode
import dns.query
import dns.rcode
import pytest
import yaml

from chalicelib.config import build, parse
from chalicelib.dns.base import DnsEntryRejected, DnsRejected
from chalicelib.dns.registry import build_dns_plugin
from chalicelib.manager.dns_records import LEFT_RECORDS_PER_PASS
from tests.dns.bind import BindServer
from tests.dns.test_dns_records import (
    dns_document,
    left_by_a_refused_entry,
    make_dns_world,
    published_then_reconfigured,
    returned_during_outage,
)
from tests.dns.test_dns_republish import readdress
from tests.harness import Harness, HarnessFactory
from tests.support import emf_documents

SIZE = 12


def two_pools(make_harness: HarnessFactory, refused: dict[str, Any], working: dict[str, Any]) -> Harness:
    """Pool ``refused`` published by an entry the server refuses, pool ``good`` by one it accepts."""
    document = {
        "config": {"timeout": 10, "task_limit": 2 * SIZE},
        "providers": {"dummy": {"provider_class": "dummy", "seed": 5, "boot_time": 20}},
        "dns_configs": {"refused": refused, "good": working},
        "pools": [{"name": "refused", "size": SIZE, "provider": "dummy", "dns_plugin": "refused"},
                  {"name": "good", "size": 2, "provider": "dummy", "dns_plugin": "good"}],
    }
    return make_harness(parse(yaml.safe_dump(document)))


def count_refusals(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every update the server refused from now on (its answer code, or the exception). New
    names' lookups are not counted: one per clone, never sent again for its VM."""
    refused: list[str] = []
    real = dns.query.tcp

    def counted(message: Any, *args: Any, **kwargs: Any) -> Any:
        if message.opcode() != dns.opcode.UPDATE:
            return real(message, *args, **kwargs)
        try:
            answer = real(message, *args, **kwargs)
        except Exception as error:
            refused.append(type(error).__name__)
            raise
        if answer.rcode() not in (dns.rcode.NOERROR, dns.rcode.NXDOMAIN):
            refused.append(dns.rcode.to_text(answer.rcode()))
        return answer

    monkeypatch.setattr(dns.query, "tcp", counted)
    return refused


REFUSALS = {
    # A key rotated on the server but not in vmpool's config: BIND answers NOTAUTH with BADSIG.
    "wrong key": ({"tsig_secret": base64.b64encode(secrets.token_bytes(32)).decode()}, "rejected the TSIG key"),
    # A domain whose zone the server does not serve: updates NOTAUTH, lookups REFUSED.
    "zone not served": ({"domain": "elsewhere.test"}, "the server answered "),
}


@pytest.mark.parametrize("refusal", list(REFUSALS))
def test_an_entry_the_server_refuses_costs_a_pass_one_refused_update_not_one_per_vm(
        make_harness: HarnessFactory, bind: BindServer, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str], refusal: str) -> None:
    # Before, each pass sent every pending VM's update to a server that refused the entry as a
    # whole: a 1,000-VM pool sent 1,000 refused updates a pass, each logged by the server, until
    # the 15 s DNS budget ran out.
    overrides, said = REFUSALS[refusal]
    world = two_pools(make_harness, bind.dns_config(**overrides), bind.dns_config())
    refused = count_refusals(monkeypatch)
    per_pass = []
    for _ in range(3):  # clone, boot, publish
        before = len(refused)
        world.passes("refused", 1)
        per_pass.append(len(refused) - before)
        world.passes("good", 1, seconds=0)
    assert max(per_pass) == 1, per_pass
    pending = world.hosts("refused", "pending")
    assert len(pending) == SIZE and world.hosts("refused", "ready") == set()
    reasons = {world.store.get_vm(host).not_ready_reason for host in pending}  # type: ignore[union-attr]
    assert all(reason.startswith("DNS record not created: ") and said in reason for reason in reasons), reasons
    failures = [document for document in emf_documents(capsys.readouterr().out)
                if "DnsFailures" in document and document.get("pool") == "refused"]
    assert failures and {document["reason"] for document in failures} == {"rejected"}
    # The other pool, published by an entry the server accepts, went on.
    ready = world.hosts("good", "ready")
    assert len(ready) == 2
    monkeypatch.undo()
    for host in ready:
        assert bind.addresses(f"{host}.{bind.zone}") == [world.store.get_vm(host).ip]  # type: ignore[union-attr]


def plugin_for(entry: dict[str, Any]) -> Any:
    config = build({"dns_configs": {"entry": entry}})
    return build_dns_plugin(config.dns_configs["entry"])


def test_refusals_of_the_entry_are_told_from_refusals_of_one_name(bind: BindServer,
                                                                  route53: tuple[Any, str]) -> None:
    # Of the entry: every call meets them (the pass stops calling the entry).
    wrong_key = plugin_for(bind.dns_config(tsig_secret=base64.b64encode(b"k" * 32).decode()))
    unsigned = plugin_for(bind.dns_config(tsig_key_name=None, tsig_secret=None))  # REFUSED
    elsewhere = plugin_for(bind.dns_config(domain="elsewhere.test"))  # NOTAUTH, lookups REFUSED
    for plugin in (wrong_key, unsigned, elsewhere):
        with pytest.raises(DnsEntryRejected):
            plugin.create_or_replace("refusal-a", "10.0.0.1")
    # A lookup's refusal is not the entry's: a server may refuse queries (allow-query) and take updates.
    with pytest.raises(DnsRejected, match="REFUSED") as failure:
        elsewhere.addresses("refusal-a")
    assert not isinstance(failure.value, DnsEntryRejected)
    with pytest.raises(DnsEntryRejected, match="NoSuchHostedZone"):
        plugin_for({"dns_class": "route53", "domain": "vms.example.test",
                    "hosted_zone_id": "ZNOSUCHZONE"}).create_or_replace("refusal-a", "10.0.0.1")
    # Of one name: the next VM's call may well pass.
    working = plugin_for(bind.dns_config())
    bind.add_record(f"refusal-b.{bind.zone}", "CNAME", "elsewhere.example.")
    with pytest.raises(DnsRejected, match="CNAME") as failure:
        working.create_or_replace("refusal-b", "10.0.0.1")
    assert not isinstance(failure.value, DnsEntryRejected)
    # A delete under a former domain goes to its parent zone: that zone's refusal is not the entry's.
    with pytest.raises(DnsRejected, match="NOTAUTH") as failure:
        working.delete("refusal-c", "refusal-c.former.test")
    assert not isinstance(failure.value, DnsEntryRejected)
    _, zone = route53
    r53 = plugin_for({"dns_class": "route53", "domain": "vms.example.test", "hosted_zone_id": zone})
    with pytest.raises(DnsRejected) as failure:
        r53.create_or_replace("refusal-d", "fe80::1")
    assert not isinstance(failure.value, DnsEntryRejected)


@pytest.mark.parametrize("domain", ["VMS.Example.Test", "vms.example.test."])
def test_a_domain_rewritten_in_another_case_or_with_a_final_dot_moves_no_record(
        make_harness: HarnessFactory, bind: BindServer, monkeypatch: pytest.MonkeyPatch, domain: str) -> None:
    # DNS names ignore case and the final dot: the same name. Before, a case-only edit of the
    # entry's domain (a config generator lower-casing it, say) counted as a new domain: every VM
    # in service, its user's running ones too, had its record deleted and created again (10 a
    # pass), its name leading nowhere in between, until a later pass if DNS failed after the delete.
    assert domain.strip(".").lower() == bind.zone
    world, published = published_then_reconfigured(
        make_harness, bind, dns_document({"zone": bind.dns_config(domain=domain)}, "zone"))
    [running] = world.check_out("dns")
    plugin = world.services.dns_plugin(world.pool("dns"))
    assert plugin is not None
    deletes: list[str] = []  # the names whose deletes were sent
    delete_many = plugin.delete_many
    monkeypatch.setattr(plugin, "delete_many", lambda *args: (lambda sent: (deletes.extend(sent), sent)[1])(
        delete_many(*args)))
    world.passes("dns", 2, seconds=61)  # whole comparisons
    assert deletes == []
    for host, ip in published.items():
        assert bind.addresses(f"{host}.{bind.zone}") == [ip]
    assert world.state_of(running) == "running"
    # And the record still goes when the VM leaves.
    world.store.move(running, "dns", "running", "completed", world.clock.now(), reason="returned by its user")
    world.passes("dns", 3)
    assert deletes == [running] and bind.addresses(f"{running}.{bind.zone}") == []


def test_an_entry_refused_stops_only_that_entry(make_harness: HarnessFactory, bind: BindServer) -> None:
    # The pool moved to entry "other"; its VMs in service were published by "zone", whose key the
    # server no longer takes: their moves are refused (each pass one delete), and the pool's own
    # entry still publishes a readdressed VM in the same pass, after that refusal.
    wrong = base64.b64encode(secrets.token_bytes(32)).decode()
    world, published = published_then_reconfigured(make_harness, bind, dns_document(
        {"zone": bind.dns_config(tsig_secret=wrong), "other": bind.dns_config()}, "other"))
    world.check_out("dns")  # running now, still under "zone"
    world.passes("dns", 3)  # its replacement cloned, booted, published by "other"
    [new] = world.hosts("dns", "ready") - set(published)
    assert world.store.get_vm(new).raw["dns_plugin"] == "other"  # type: ignore[union-attr]
    readdress(world, new, "10.200.0.9")
    report = world.passes("dns", 1, seconds=61)[0]  # a whole comparison: the moves, then the new address
    assert bind.addresses(f"{new}.{bind.zone}") == ["10.200.0.9"]
    for host, ip in published.items():  # their former records stay until the server takes the key
        assert bind.addresses(f"{host}.{bind.zone}") == [ip]
        assert world.store.get_vm(host).raw["dns_plugin"] == "zone"  # type: ignore[union-attr]
    assert any("rejected the TSIG key" in error for error in report.errors), report.errors


def test_left_records_of_a_refused_entry_do_not_keep_another_entrys_in_the_zone(
        make_harness: HarnessFactory, bind: BindServer) -> None:
    # The pool moved to entry "other"; the VMs "zone" published (whose key the server no longer
    # takes) are destroyed with their records noted as left, then VMs "other" published are
    # destroyed while the server is down. Before, each pass sent the oldest left records first,
    # "zone"'s, met the refused key and stopped there: "other"'s records, which the server would
    # delete, stayed in the zone until their VMs' records expired (data_ttl, a week by default).
    world, published, replacements = left_by_a_refused_entry(make_harness, bind)
    returned_during_outage(world, bind, replacements)
    world.passes("dns", 3)
    for host in replacements:
        assert bind.addresses(f"{host}.{bind.zone}") == []
    for host, ip in published.items():  # still there until the server takes "zone"'s key again
        assert bind.addresses(f"{host}.{bind.zone}") == [ip]


def test_a_backlog_of_left_records_brings_its_pool_back_soon_not_at_the_next_tick(
        make_harness: HarnessFactory, bind: BindServer) -> None:
    # Records of VMs destroyed while DNS was down are deleted LEFT_RECORDS_PER_PASS a pass. Before,
    # a pass that deleted a full batch left the pool idle: the rest waited for the next tick, one
    # batch a minute (1,000 VMs destroyed in an outage: 20 minutes of names leading to addresses
    # DHCP hands to other machines meanwhile). Now a full batch deleted is work in flight.
    size = 2 * LEFT_RECORDS_PER_PASS + 10
    world = make_dns_world(make_harness, bind.dns_config(), size=size)
    world.passes("dns", 3)
    gone = sorted(world.hosts("dns", "ready"))
    assert len(gone) == size
    bind.stop()
    for host in gone:
        world.store.move(host, "dns", "ready", "completed", world.clock.now(), reason="returned by its user")
    world.passes("dns", 3)
    assert {world.state_of(host) for host in gone} == {"destroyed"}
    bind.start()
    world.passes("dns", 1)  # their replacements published (the pool is full again)
    assert world.count("dns", "ready") == size and world.count("dns", "pending") == 0
    assert world.client.zcard(world.store.keys.dns_left("dns")) == size - LEFT_RECORDS_PER_PASS
    batch = world.passes("dns", 1)[0]  # nothing else in flight: a full batch of deletes
    assert world.client.zcard(world.store.keys.dns_left("dns")) == size - 2 * LEFT_RECORDS_PER_PASS
    assert batch.work_in_flight  # more to do: look again soon
    last = world.passes("dns", 1)[0]
    assert world.client.exists(world.store.keys.dns_left("dns")) == 0
    assert not last.work_in_flight  # nothing left: the pool waits for its tick
    for host in gone:
        assert bind.addresses(f"{host}.{bind.zone}") == []
