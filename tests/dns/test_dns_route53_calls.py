"""Route 53 calls a pass makes, counted (a botocore ``before-call`` hook on moto's Route 53): a
pass's new names are looked up, and the records of VMs leaving service read before their delete,
a listing of the zone's record sets at a time (up to 300 a call), not one call a name; the
answers are each name's own across page boundaries. IAM's AccessDenied is shown as its code and
the action, never the role's ARN (which names the account)."""

from __future__ import annotations

import hashlib
from typing import Any

import pytest

from chalicelib.config import build
from chalicelib.dns import route53 as route53_module
from chalicelib.dns.base import DnsEntryRejected, DnsRejected
from chalicelib.dns.registry import build_dns_plugin
from tests.dns.test_dns_records import dns_of, make_dns_world
from tests.dns.test_dns_route53_denied import DeniedNames
from tests.harness import HarnessFactory

DOMAIN = "vms.example.test"
ACCOUNT = "123456789012"


def name_of(i: int) -> str:
    """A VM-like name: words with a hyphen (Route 53 sorts '-' before the '.' ending a label, moto
    after: both orders must be read right), spread over the zone."""
    digest = hashlib.sha256(str(i).encode()).hexdigest()
    return f"{digest[:5]}-{digest[5:9]}" if i % 3 else digest[:5]


def fill(route53: tuple[Any, str], count: int) -> dict[str, list[str]]:
    """``count`` names in the zone (an A record; every 4th an AAAA record too; every 10th a CNAME
    instead, someone else's alias), plus ``<name>-x`` and ``x.<name>`` beside some: what each
    name leads to, as ``addresses`` tells it."""
    client, zone = route53
    leads: dict[str, list[str]] = {}
    changes: list[dict[str, Any]] = []

    def add(name: str, rdtype: str, value: str) -> None:
        changes.append({"Action": "CREATE", "ResourceRecordSet": {
            "Name": f"{name}.{DOMAIN}", "Type": rdtype, "TTL": 60, "ResourceRecords": [{"Value": value}]}})

    for i in range(count):
        name = name_of(i)
        if i % 10 == 0:
            add(name, "CNAME", "elsewhere.example.org")
            leads[name] = ["elsewhere.example.org (CNAME)"]
            continue
        add(name, "A", f"10.{i // 250}.{i % 250}.1")
        leads[name] = [f"10.{i // 250}.{i % 250}.1"]
        if i % 4 == 0:
            add(name, "AAAA", f"2001:db8::{i:x}")
            leads[name].append(f"2001:db8::{i:x}")
        if i % 7 == 0:
            add(f"{name}-x", "A", "10.255.0.1")  # a name that sorts beside it, apart in each order
            add(f"x.{name}", "A", "10.255.0.2")  # a name below it
            leads[f"{name}-x"] = ["10.255.0.1"]
    for start in range(0, len(changes), 500):
        client.change_resource_record_sets(HostedZoneId=zone, ChangeBatch={"Changes": changes[start:start + 500]})
    return leads


def plugin_for(route53: tuple[Any, str]) -> tuple[Any, list[str]]:
    """The zone's plugin, and the Route 53 operations it calls (in order)."""
    _, zone = route53
    entry = {"dns_class": "route53", "domain": DOMAIN, "hosted_zone_id": zone}
    plugin = build_dns_plugin(build({"dns_configs": {"e": entry}}).dns_configs["e"])
    calls: list[str] = []
    plugin.client.meta.events.register(  # type: ignore[attr-defined]
        "before-call.route53.*", lambda event_name, **_: calls.append(event_name.split(".")[-1]))
    return plugin, calls


def test_50_new_names_are_looked_up_in_a_few_listings_not_50_calls(route53: tuple[Any, str]) -> None:
    # Route 53 allows 5 calls a second for the whole account: a clone pass of 50 names was 50
    # lookups (10 s of the account's rate), now a listing from each name not yet read, 300
    # record sets a call: a zone of 1,000 VMs (about 1,500 record sets) is read in at most 6.
    leads = fill(route53, 1000)
    plugin, calls = plugin_for(route53)
    held = [name_of(i) for i in range(0, 1000, 40)]  # 25 names spread over the zone
    fresh = [f"fresh{i:02d}-new" for i in range(25)]
    found = plugin.addresses_many(held + fresh)
    assert found == {**{name: leads[name] for name in held}, **{name: [] for name in fresh}}
    assert set(calls) == {"ListResourceRecordSets"} and len(calls) <= 6, calls


def test_every_answer_is_its_own_names_across_page_boundaries(
        route53: tuple[Any, str], monkeypatch: pytest.MonkeyPatch) -> None:
    # Pages of 7 record sets: hundreds of boundaries, names beside each other in one order and not
    # the other ("abc-x", "x.abc", "abc"), free names between held ones.
    leads = fill(route53, 300)
    monkeypatch.setattr(route53_module, "LIST_PAGE_RECORDS", 7)
    plugin, calls = plugin_for(route53)
    wanted = [*leads, *(f"{name}-free" for name in list(leads)[::5]), *(f"{name}0" for name in list(leads)[::9])]
    found = plugin.addresses_many(wanted)
    assert found == {name: leads.get(name, []) for name in wanted}
    assert len(calls) < len(wanted) / 2, (len(calls), len(wanted))


def test_50_withdrawals_read_their_records_in_a_few_listings(route53: tuple[Any, str]) -> None:
    # Route 53 deletes only an exact copy of a record set: each name was read alone (51 calls
    # for 50 VMs leaving service), now in a few listings, then one change.
    client, zone = route53
    leads = fill(route53, 1000)
    plugin, calls = plugin_for(route53)
    leaving = [name for name in (name_of(i) for i in range(1, 1000, 17)) if not leads[name][0].endswith("(CNAME)")]
    leaving = leaving[:50]
    assert len(leaving) == 50
    outcome = plugin.delete_many([(name, None) for name in leaving])
    assert outcome == dict.fromkeys(leaving, None)
    assert calls.count("ChangeResourceRecordSets") == 1
    assert calls.count("ListResourceRecordSets") <= 6, calls
    left = {record["Name"].rstrip(".").removesuffix(f".{DOMAIN}")
            for record in client.list_resource_record_sets(HostedZoneId=zone, MaxItems="3000")["ResourceRecordSets"]}
    assert not left & set(leaving)
    assert set(leads) - set(leaving) <= left  # nothing else deleted


def test_access_denied_names_its_code_and_action_not_the_roles_arn(route53: tuple[Any, str]) -> None:
    # IAM's message names the role's ARN, with the account's ID: it became the VM's
    # not_ready_reason and dns_error, which every API user reads (GET /vm).
    _, zone = route53
    entry = {"dns_class": "route53", "domain": DOMAIN, "hosted_zone_id": zone}
    plugin = build_dns_plugin(build({"dns_configs": {"e": entry}}).dns_configs["e"])
    names = [f"denied-{i}" for i in range(4)]
    DeniedNames(plugin.client, {"denied-1"})
    outcome = plugin.create_many([(name, f"10.90.0.{i + 1}", None) for i, name in enumerate(names)])
    refused = outcome["denied-1"]
    assert isinstance(refused, DnsRejected)
    assert str(refused) == ("route53 create denied-1.vms.example.test: AccessDenied: "
                            "route53:ChangeResourceRecordSets denied to the role")
    DeniedNames(plugin.client, set(names))
    with pytest.raises(DnsEntryRejected) as entry_refusal:
        plugin.create_or_replace("denied-2", "10.90.0.9")
    for shown in (str(refused), str(entry_refusal.value)):
        assert ACCOUNT not in shown and "arn:" not in shown and "assumed-role" not in shown
        assert "AccessDenied" in shown and "route53:ChangeResourceRecordSets" in shown


def test_a_vm_whose_record_iam_denies_shows_no_arn_in_get_vm_nor_in_the_logs(
        make_harness: HarnessFactory, route53: tuple[Any, str], caplog: pytest.LogCaptureFixture) -> None:
    _, zone = route53
    world = make_dns_world(make_harness, {"dns_class": "route53", "domain": DOMAIN, "hosted_zone_id": zone}, size=2)
    world.passes("dns", 1)  # the clones
    pending = sorted(world.hosts("dns", "pending"))
    DeniedNames(dns_of(world).client, set(pending))  # the role may change none of them
    caplog.clear()
    world.passes("dns", 1)
    logged = " ".join(str(record.__dict__) for record in caplog.records)  # messages and their fields
    for host in pending:
        shown = world.describe(host)["not_ready_reason"]
        assert shown.startswith("DNS record not created: route53 create ") and "AccessDenied" in shown, shown
        assert "route53:ChangeResourceRecordSets" in shown
        assert ACCOUNT not in shown and "arn:" not in shown
    assert "AccessDenied" in logged and ACCOUNT not in logged


def test_any_arn_in_a_route53_refusal_is_withheld(route53: tuple[Any, str]) -> None:
    from botocore.awsrequest import AWSResponse

    plugin, _ = plugin_for(route53)

    def refused(**_: Any) -> Any:
        return AWSResponse("https://route53.amazonaws.com", 400, {}, None), {
            "Error": {"Code": "InvalidInput", "Message": f"Role arn:aws:iam::{ACCOUNT}:role/vmpool-reconcile "
                      "may not list this zone"}, "ResponseMetadata": {"HTTPStatusCode": 400}}

    plugin.client.meta.events.register("before-call.route53.ListResourceRecordSets", refused)
    found = plugin.addresses_many(["one", "two"])
    for error in found.values():
        assert isinstance(error, DnsRejected)
        assert str(error) == "route53 look up 2 names: InvalidInput: Role (ARN withheld) may not list this zone"
