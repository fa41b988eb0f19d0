"""Running VMs whose address changed and whose names the DNS service refuses alone (a real
BIND 9 whose ``update-policy`` denies the key some names; Route 53 with IAM denying some) wait out
the same back-off as pending VMs' refused names (``dns_records.REFUSED_NAME_BACKOFF_SECONDS``,
doubling), and go after the names never refused: they never keep the other running VMs' records
at their former addresses."""

from __future__ import annotations

from typing import Any

import pytest

from chalicelib.manager import dns_records
from chalicelib.manager.dns_records import REFUSALS_PER_CALL
from tests.dns.bind import BindServer
from tests.dns.test_dns_batches import pool_published_by
from tests.dns.test_dns_records import dns_of, make_dns_world, names_sent
from tests.dns.test_dns_republish import readdress
from tests.dns.test_dns_route53_denied import DeniedNames
from tests.harness import HarnessFactory

SIZE = 8


def test_running_vms_names_the_server_refuses_back_off_and_do_not_keep_the_others_at_their_former_address(
        make_harness: HarnessFactory, policy_bind: BindServer, monkeypatch: pytest.MonkeyPatch) -> None:
    world = make_harness(pool_published_by(policy_bind, SIZE, timeout=60))
    for _ in range(10):
        world.passes("dns", 1)
        if len(world.hosts("dns", "ready")) == SIZE:
            break
    running = world.check_out("dns", SIZE - 1)
    fqdn = {host: f"{host}.{policy_bind.zone}" for host in running}
    new_ip = {host: f"10.200.0.{index + 1}" for index, host in enumerate(running)}

    # Each running VM rebooted onto another lease; the policy denies every one of their names:
    # the update is refused, then 5 names alone, and the rest is not sent.
    policy_bind.refuse_updates_of(running)
    for host in running:
        readdress(world, host, new_ip[host])
    [report] = world.passes("dns", 1, seconds=61)  # a whole comparison: every VM looked at
    first = [host for host in running if any(error.startswith(f"DNS record of {host} not published again: ")
                                             and "REFUSED" in error for error in report.errors)]
    assert len(first) == REFUSALS_PER_CALL, report.errors
    unsent = [host for host in running if host not in first]

    # The operator's policy now denies those 5 and one more: the last one's record must follow
    # its address. Before, the 5 refused names led each pass's update again, were refused again,
    # and the VMs behind them were never sent: their names led to their former addresses (soon
    # another machine's) for as long as the 5 were refused.
    denied = [*first, unsent[0]]
    [allowed] = unsent[1:]
    policy_bind.refuse_updates_of(denied)
    sent = names_sent(world, monkeypatch)
    world.passes("dns", 1, seconds=61)
    assert policy_bind.addresses(fqdn[allowed]) == [new_ip[allowed]]
    assert all(world.state_of(host) == "running" for host in running)  # their user's: kept

    # 10 minutes of whole comparisons (one a minute): a denied name is sent again after 1, 2, 4
    # and 5 minutes (at most REFUSED_NAME_BACKOFF_MAX_SECONDS), not at every pass: 5 times at most.
    sent.clear()
    world.passes("dns", 10, seconds=61)
    for host in first:
        assert 2 <= sent.count(host) <= 5, (host, sent.count(host))

    # The policy lifted: each record follows its address within its back-off, then its note is gone.
    policy_bind.refuse_updates_of([])
    world.passes("dns", int(dns_records.REFUSED_NAME_BACKOFF_MAX_SECONDS // 61) + 2, seconds=61)
    for host in running:
        assert policy_bind.addresses(fqdn[host]) == [new_ip[host]], host
        assert dns_records.REFUSED_NOTE not in world.store.get_vm(host).raw  # type: ignore[union-attr]


def test_route53_running_vms_names_iam_denies_go_after_the_others(
        make_harness: HarnessFactory, route53: tuple[Any, str], monkeypatch: pytest.MonkeyPatch) -> None:
    """The same with Route 53, IAM denying some names (a botocore hook answering AccessDenied, as
    ``test_dns_route53_denied.py``): names denied one by one a pass ago (the denial then taken
    for the entry's) go after the others, so the same 5 no longer make every pass's denial the
    entry's and keep the other running VMs' records at their former addresses."""
    client, zone = route53
    domain = "vms.example.test"
    world = make_dns_world(make_harness, {"dns_class": "route53", "domain": domain, "hosted_zone_id": zone},
                           size=SIZE)
    for _ in range(10):
        world.passes("dns", 1)
        if len(world.hosts("dns", "ready")) == SIZE:
            break
    running = world.check_out("dns", SIZE - 1)
    plugin: Any = dns_of(world)
    denial = DeniedNames(plugin.client, set())
    order = names_sent(world, monkeypatch)

    def published(host: str) -> list[str]:
        found = client.list_resource_record_sets(HostedZoneId=zone, StartRecordName=f"{host}.{domain}",
                                                 StartRecordType="A", MaxItems="1")["ResourceRecordSets"]
        return [value["Value"] for record in found if record["Name"] == f"{host}.{domain}." and record["Type"] == "A"
                for value in record["ResourceRecords"]]

    for index, host in enumerate(running):
        readdress(world, host, f"10.200.0.{index + 1}")
    world.passes("dns", 1, seconds=61)  # the order the pass sends them in
    sent = list(order)
    assert sorted(sent) == sorted(running)

    # IAM denies the first 5 the pass sends: denied one by one, none allowed, the denial is taken
    # for the entry's (the role's) and the pass sends the entry nothing more.
    first, others = sent[:REFUSALS_PER_CALL], sent[REFUSALS_PER_CALL:]
    denial.denied = set(first)
    for index, host in enumerate(running):
        readdress(world, host, f"10.201.0.{index + 1}")
    world.passes("dns", 1, seconds=61)
    assert [published(host) for host in others] == [[f"10.200.0.{running.index(host) + 1}"] for host in others]

    # The next pass sends the names IAM grants first: published. Before, the 5 denied names led
    # the change again, were denied again, and the denial was the entry's at every pass: the
    # names of the others led to their former addresses for as long as IAM denied those 5.
    world.passes("dns", 1, seconds=61)
    assert [published(host) for host in others] == [[f"10.201.0.{running.index(host) + 1}"] for host in others]
    assert all(world.state_of(host) == "running" for host in running)
    assert all(published(host) == [f"10.200.0.{running.index(host) + 1}"] for host in first)  # still denied
