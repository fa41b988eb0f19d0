"""Route 53 under an IAM policy that restricts the role to some record names
(``route53:ChangeResourceRecordSetsNormalizedRecordNames``): a batch denied for one of its names is
sent again a name a call, so the allowed names are published or deleted and each denied one fails
alone, typed; a role denied every name is still the entry's refusal.

moto enforces no IAM condition: a botocore ``before-call`` hook answers AccessDenied (as IAM
does, the whole call) to a ChangeResourceRecordSets naming a denied name, and moto serves the rest.
"""

from __future__ import annotations

import re
from typing import Any

import pytest

from chalicelib.config import build
from chalicelib.dns.base import DnsEntryRejected, DnsRejected
from chalicelib.dns.registry import build_dns_plugin

DOMAIN = "vms.example.test"


class DeniedNames:
    """IAM's answer to a change of a name the role's policy does not grant (a before-call hook)."""

    def __init__(self, client: Any, denied: set[str]) -> None:
        self.denied = denied
        self.calls: list[int] = []  # the names of each ChangeResourceRecordSets call sent
        client.meta.events.register("before-call.route53.ChangeResourceRecordSets", self)

    def __call__(self, params: dict[str, Any], **_: Any) -> Any:
        from botocore.awsrequest import AWSResponse

        body = params["body"].decode() if isinstance(params["body"], bytes) else params["body"]
        names = {name.rstrip(".").split(".")[0] for name in re.findall(r"<Name>([^<]*)</Name>", body)}
        self.calls.append(len(names))
        if not names & self.denied:
            return None  # moto applies it
        return AWSResponse("https://route53.amazonaws.com", 403, {}, None), {
            "Error": {"Code": "AccessDenied", "Message": "User: arn:aws:sts::123456789012:assumed-role/r/f is "
                      "not authorized to perform: route53:ChangeResourceRecordSets"},
            "ResponseMetadata": {"HTTPStatusCode": 403}}


def plugin_with(route53: tuple[Any, str], denied: set[str]) -> tuple[Any, DeniedNames]:
    _, zone = route53
    entry = {"dns_class": "route53", "domain": DOMAIN, "hosted_zone_id": zone}
    plugin = build_dns_plugin(build({"dns_configs": {"e": entry}}).dns_configs["e"])
    return plugin, DeniedNames(plugin.client, denied)


def held(route53: tuple[Any, str]) -> dict[str, list[str]]:
    client, zone = route53
    return {record["Name"].rstrip(".").split(".")[0]: [value["Value"] for value in record["ResourceRecords"]]
            for record in client.list_resource_record_sets(HostedZoneId=zone)["ResourceRecordSets"]
            if record["Type"] == "A"}


def test_a_batch_denied_for_two_names_publishes_and_deletes_the_others(route53: tuple[Any, str]) -> None:
    # Before, the AccessDenied of the batch was the entry's: none of the 10 published, and the pass
    # sent the entry nothing more.
    names = [f"r53-{i}" for i in range(10)]
    plugin, iam = plugin_with(route53, {"r53-3", "r53-7"})
    outcome = plugin.create_many([(name, f"10.80.0.{i + 1}", None) for i, name in enumerate(names)], 5)
    assert {name for name, error in outcome.items() if error is None} == set(names) - iam.denied
    for name in iam.denied:
        error = outcome[name]
        assert isinstance(error, DnsRejected) and not isinstance(error, DnsEntryRejected)
        assert error.metric_key == "rejected" and "AccessDenied" in str(error)
    assert held(route53) == {name: [f"10.80.0.{i + 1}"] for i, name in enumerate(names) if name not in iam.denied}
    assert iam.calls == [10] + [1] * 10  # the batch, then a VM a call

    # The deletes alike (the allowed names only: the denied ones hold nothing here).
    iam.calls.clear()
    iam.denied = {"r53-0", "r53-9"}
    outcome = plugin.delete_many([(name, None) for name in names], 5)
    assert {name for name, error in outcome.items() if error is None} == set(names) - {"r53-0", "r53-9"}
    assert isinstance(outcome["r53-0"], DnsRejected) and not isinstance(outcome["r53-0"], DnsEntryRejected)
    assert held(route53) == {"r53-0": ["10.80.0.1"], "r53-9": ["10.80.0.10"]}
    assert iam.calls == [8] + [1] * 8  # 8 names hold records: the batch, then a name a call


def test_a_role_denied_every_name_is_the_entrys_refusal_after_a_bounded_few_calls(route53: tuple[Any, str]) -> None:
    names = [f"r53-{i}" for i in range(50)]
    plugin, iam = plugin_with(route53, set(names))
    with pytest.raises(DnsEntryRejected, match="AccessDenied"):
        plugin.create_many([(name, "10.81.0.1", None) for name in names], 5)
    assert iam.calls == [50] + [1] * 5  # not 50 calls: 5 refused names and the entry is stopped
    iam.calls.clear()
    with pytest.raises(DnsEntryRejected, match="AccessDenied"):
        plugin.create_many([(name, "10.81.0.1", None) for name in names])  # unbounded (a withdrawal's)
    assert iam.calls == [50] + [1] * 5
    with pytest.raises(DnsEntryRejected, match="AccessDenied"):
        plugin.create_or_replace("r53-1", "10.81.0.1")  # one name: the entry's, as before
    assert held(route53) == {}
