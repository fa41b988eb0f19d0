"""Creates and deletes of a ``dynamic-dns`` entry batched 50 to an RFC 2136 update, against a
real BIND 9: a batch the server refuses for some of its names (an ``update-policy`` denying the
key those names) is sent again one name a message, so the other names are published or deleted
and each denied one fails alone, typed and counted, without stopping the entry."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from chalicelib.config import Config, build, parse
from chalicelib.dns.base import DnsEntryRejected, DnsRejected
from chalicelib.dns.registry import build_dns_plugin
from chalicelib.manager.dns_records import REFUSED_NAME_BACKOFF_SECONDS
from tests.dns.bind import BindServer
from tests.dns.test_dns_connections import soa_serial
from tests.dns.test_dns_refusals import count_refusals
from tests.harness import HarnessFactory
from tests.support import emf_documents

BATCH = 50
DENIED = ["batch-7", "batch-31"]


def pool_published_by(bind: BindServer, size: int, timeout: int) -> Config:
    """A config of one pool, ``dns``, of ``size`` dummy VMs that boot in 20 s (``timeout``: how
    long a VM may stay pending), its records sent to ``bind`` through the entry ``zone``."""
    return parse(yaml.safe_dump({
        "config": {"timeout": timeout, "task_limit": size},
        "providers": {"dummy": {"provider_class": "dummy", "seed": 5, "boot_time": 20}},
        "dns_configs": {"zone": bind.dns_config()},
        "pools": [{"name": "dns", "size": size, "provider": "dummy", "dns_plugin": "zone"}],
    }))


def plugin_for(bind: BindServer) -> Any:
    return build_dns_plugin(build({"dns_configs": {"entry": bind.dns_config()}}).dns_configs["entry"])


def test_a_batch_the_policy_refuses_for_two_names_publishes_and_deletes_the_other_48(policy_bind: BindServer) -> None:
    # BIND refuses a whole update (REFUSED) for one record its update-policy denies the key. Sent
    # again a name a message, the 48 others are applied; before, the refusal was taken as the
    # entry's (every other VM of the pass left unsent).
    policy_bind.refuse_updates_of(DENIED)
    plugin = plugin_for(policy_bind)
    names = [f"batch-{i}" for i in range(BATCH)]
    serial = soa_serial(policy_bind)
    outcome = plugin.create_many([(name, f"10.60.0.{i + 1}", None) for i, name in enumerate(names)])
    assert {name for name, error in outcome.items() if error is None} == set(names) - set(DENIED)
    for name in DENIED:
        error = outcome[name]
        assert isinstance(error, DnsRejected) and not isinstance(error, DnsEntryRejected)
        assert error.metric_key == "rejected" and "REFUSED" in str(error)
        assert policy_bind.addresses(f"{name}.{policy_bind.zone}") == []
    for i, name in enumerate(names):
        if name not in DENIED:
            assert policy_bind.addresses(f"{name}.{policy_bind.zone}") == [f"10.60.0.{i + 1}"]
    # The refused batch and the check of the entry change nothing; then one update a name.
    assert soa_serial(policy_bind) == serial + BATCH - len(DENIED)

    serial = soa_serial(policy_bind)
    outcome = plugin.delete_many([(name, None) for name in names])
    assert {name for name, error in outcome.items() if error is None} == set(names) - set(DENIED)
    assert all(isinstance(outcome[name], DnsRejected) for name in DENIED)
    assert all(policy_bind.addresses(f"{name}.{policy_bind.zone}") == [] for name in names)
    assert soa_serial(policy_bind) == serial + BATCH - len(DENIED)

    # Without a denied name, 50 creates are one update, and a denied name alone is sent once.
    serial = soa_serial(policy_bind)
    fine = [f"fine-{i}" for i in range(BATCH)]
    assert plugin.create_many([(name, "10.61.0.1", None) for name in fine]) == dict.fromkeys(fine)
    assert soa_serial(policy_bind) == serial + 1
    with pytest.raises(DnsRejected, match="REFUSED") as refused:
        plugin.create_or_replace(DENIED[0], "10.61.0.2")
    assert not isinstance(refused.value, DnsEntryRejected)


def test_a_policy_denying_every_name_costs_a_few_refused_updates_not_one_a_name(
        policy_bind: BindServer, monkeypatch: pytest.MonkeyPatch) -> None:
    # The empty update is taken (no record to deny), so the refusals look like names' own: after
    # ``max_refusals`` of them the rest are not sent (the pass gives them the reason).
    names = [f"batch-{i}" for i in range(10)]
    policy_bind.refuse_updates_of(names)
    plugin = plugin_for(policy_bind)
    refused = count_refusals(monkeypatch)
    outcome = plugin.create_many([(name, "10.63.0.1", None) for name in names], 3)
    assert len(outcome) == 3 and all(isinstance(error, DnsRejected) for error in outcome.values())
    assert refused == ["REFUSED"] * 4  # the batch, then 3 names alone (the empty update was taken)


def test_a_key_the_zone_refuses_is_still_the_entrys_refusal(policy_bind: BindServer) -> None:
    # An update refused because the zone takes no update from the key at all (no key here:
    # allow-update names one) is the entry's: the empty update that tells them apart is refused too.
    unsigned = build_dns_plugin(build({"dns_configs": {"entry": policy_bind.dns_config(
        tsig_key_name=None, tsig_secret=None)}}).dns_configs["entry"])
    with pytest.raises(DnsEntryRejected, match="REFUSED"):
        unsigned.create_many([(f"batch-{i}", "10.62.0.1", None) for i in range(3)])


def test_a_pass_publishes_the_vms_the_policy_allows_and_keeps_the_denied_ones_pending(
        make_harness: HarnessFactory, policy_bind: BindServer, capsys: pytest.CaptureFixture[str]) -> None:
    size = 10
    world = make_harness(pool_published_by(policy_bind, size, timeout=30))
    world.passes("dns", 1)  # the clones: their names are known
    pending = sorted(world.hosts("dns", "pending"))
    assert len(pending) == size
    denied = pending[::3]  # an operator's update-policy leaves vmpool 4 of its names
    policy_bind.refuse_updates_of(denied)
    capsys.readouterr()
    serial = soa_serial(policy_bind)
    world.passes("dns", 1)  # booted: the 10 records sent in one update, refused, then one by one
    allowed = set(pending) - set(denied)
    assert world.hosts("dns", "ready") == allowed
    assert soa_serial(policy_bind) == serial + len(allowed)
    for host in allowed:
        assert policy_bind.addresses(f"{host}.{policy_bind.zone}") == [world.store.get_vm(host).ip]  # type: ignore[union-attr]
    for host in denied:
        reason = world.store.get_vm(host).not_ready_reason  # type: ignore[union-attr]
        assert reason.startswith("DNS record not created: ") and "REFUSED" in reason, reason
        assert "refused the entry" not in reason
    failures = [document for document in emf_documents(capsys.readouterr().out) if "DnsFailures" in document]
    counted = [document["DnsFailures"] for document in failures]  # a number, or the values of several
    assert sum(sum(value) if isinstance(value, list) else value for value in counted) == len(denied)
    assert {document["reason"] for document in failures} == {"rejected"}
    # The operator lifts the policy: the first pass after the names' back-off (a refused name waits
    # REFUSED_NAME_BACKOFF_SECONDS before it is sent again) publishes the 4 (one update).
    policy_bind.refuse_updates_of([])
    serial = soa_serial(policy_bind)
    world.passes("dns", 1, seconds=REFUSED_NAME_BACKOFF_SECONDS)
    assert world.hosts("dns", "ready") == set(pending)
    assert soa_serial(policy_bind) == serial + 1


def test_route53_publishes_50_vms_in_one_change(route53: tuple[Any, str]) -> None:
    # Route 53 allows 5 calls a second for the account: a pool of 200 publishing was 200 calls
    # (40 s of the account's rate), now 4; a VM that lost its IPv6 address has its AAAA record
    # deleted in the same change.
    client, zone = route53
    entry = {"dns_class": "route53", "domain": "vms.example.test", "hosted_zone_id": zone}
    plugin = build_dns_plugin(build({"dns_configs": {"e": entry}}).dns_configs["e"])
    plugin.create_or_replace("r53-lost-six", ("10.70.1.1", "2001:db8::70"))
    calls: list[str] = []
    plugin.client.meta.events.register(  # type: ignore[attr-defined]
        "before-call.route53.*", lambda event_name, **_: calls.append(event_name.split(".")[-1]))
    records = [(f"r53-{i}", f"10.70.0.{i + 1}" if i % 2 else (f"10.70.0.{i + 1}", f"2001:db8::{i + 1:x}"), None)
               for i in range(BATCH - 1)] + [("r53-lost-six", "10.70.1.2", "10.70.1.1 2001:db8::70")]
    assert plugin.create_many(records) == {hostname: None for hostname, _, _ in records}
    # One read (the name whose AAAA record goes), one change.
    assert calls == ["ListResourceRecordSets", "ChangeResourceRecordSets"]
    held = {(record["Name"].rstrip("."), record["Type"]): [value["Value"] for value in record["ResourceRecords"]]
            for record in client.list_resource_record_sets(HostedZoneId=zone)["ResourceRecordSets"]
            if record["Type"] in ("A", "AAAA")}
    assert held[("r53-2.vms.example.test", "A")] == ["10.70.0.3"]
    assert held[("r53-2.vms.example.test", "AAAA")] == ["2001:db8::3"]
    assert held[("r53-1.vms.example.test", "A")] == ["10.70.0.2"] and ("r53-1.vms.example.test", "AAAA") not in held
    assert held[("r53-lost-six.vms.example.test", "A")] == ["10.70.1.2"]
    assert ("r53-lost-six.vms.example.test", "AAAA") not in held
