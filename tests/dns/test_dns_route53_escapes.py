"""Route 53 returns a name's characters other than ``a-z``, ``0-9``, ``-`` and ``_`` as octal
escapes (``*`` as ``\\052``) in ListResourceRecordSets answers, and sorts the record sets by the
characters themselves. moto neither escapes nor needs to: a botocore ``after-call`` hook writes
its answers' names as Route 53 does, and moto keeps its order."""

from __future__ import annotations

from typing import Any

import pytest

from chalicelib.config import build
from chalicelib.dns import route53 as route53_module
from chalicelib.dns.registry import build_dns_plugin

DOMAIN = "vms.example.test"
PLAIN = set("abcdefghijklmnopqrstuvwxyz0123456789-_.")


def escaped(name: str) -> str:
    """``name`` as Route 53's answers write it (octal escapes, three digits)."""
    return "".join(char if char in PLAIN else f"\\{ord(char):03o}" for char in name)


def escape_answers(event_name: str = "", parsed: Any = None, **_: Any) -> None:
    for record in (parsed or {}).get("ResourceRecordSets", []):
        record["Name"] = escaped(record["Name"])
    if (parsed or {}).get("NextRecordName"):
        parsed["NextRecordName"] = escaped(parsed["NextRecordName"])


@pytest.fixture
def plugin(route53: tuple[Any, str]) -> Any:
    client, zone = route53

    def add(name: str, address: str) -> None:
        client.change_resource_record_sets(HostedZoneId=zone, ChangeBatch={"Changes": [{
            "Action": "CREATE", "ResourceRecordSet": {"Name": f"{name}.{DOMAIN}", "Type": "A", "TTL": 60,
                                                      "ResourceRecords": [{"Value": address}]}}]})

    add("web", "10.0.0.1")
    add("web*1", "10.0.0.2")  # someone else's name, a character Route 53 escapes in it
    add("web0", "10.0.0.3")
    entry = {"dns_class": "route53", "domain": DOMAIN, "hosted_zone_id": zone}
    built = build_dns_plugin(build({"dns_configs": {"e": entry}}).dns_configs["e"])
    built.client.meta.events.register("after-call.route53.ListResourceRecordSets", escape_answers)
    return built


def test_the_hook_writes_names_as_route53_does(plugin: Any) -> None:
    listed = plugin.client.list_resource_record_sets(HostedZoneId=plugin.zone_id)["ResourceRecordSets"]
    assert f"web\\0521.{DOMAIN}." in [record["Name"] for record in listed]


def test_a_page_ending_at_an_escaped_name_does_not_count_the_names_after_it_as_read(
        plugin: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Pages of 2 record sets: the first (from ``web``) ends at ``web*1``, before ``web0`` in
    Route 53's order. Read as the text ``web\\0521`` (``\\`` after ``0``), ``web0`` was taken for
    read on that page, and for free: a stale record's name was handed to a new VM (and a
    withdrawal deleted nothing, leaving the record behind)."""
    monkeypatch.setattr(route53_module, "LIST_PAGE_RECORDS", 2)
    assert plugin.addresses_many(["web", "web0"]) == {"web": ["10.0.0.1"], "web0": ["10.0.0.3"]}
    assert plugin.delete_many([("web", None), ("web0", None)]) == {"web": None, "web0": None}
    assert plugin.addresses_many(["web", "web0", "web*1"]) == {"web": [], "web0": [], "web*1": ["10.0.0.2"]}
