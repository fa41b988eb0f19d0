"""Each DNS plugin against the real thing: dynamic-dns against BIND 9, route53 against moto's
Route 53 with a private hosted zone. Records appear, change, disappear; failures are typed."""

from __future__ import annotations

import socket
from typing import Any

import pytest

from chalicelib.config import ConfigError, build
from chalicelib.dns.base import DnsRejected, DnsUnavailable, UnmanagedDns
from chalicelib.dns.dynamic import DynamicDns
from chalicelib.dns.registry import build_dns_plugin
from chalicelib.dns.route53 import Route53Dns
from tests.aws_pages import PAGES, answer_with_page
from tests.dns.bind import BindServer


def plugin_for(entry: dict[str, Any]) -> Any:
    config = build({"dns_configs": {"entry": entry}})
    return build_dns_plugin(config.dns_configs["entry"])


def test_dynamic_dns_creates_replaces_and_deletes_a_records(bind: BindServer) -> None:
    plugin = plugin_for(bind.dns_config())
    assert isinstance(plugin, DynamicDns)
    fqdn = f"plugin-a.{bind.zone}"
    assert plugin.addresses("plugin-a") == []
    plugin.create_or_replace("plugin-a", "10.1.2.3")
    assert bind.addresses(fqdn) == ["10.1.2.3"] == plugin.addresses("plugin-a")
    plugin.create_or_replace("plugin-a", "10.1.2.4")  # replaced, not added
    assert bind.addresses(fqdn) == ["10.1.2.4"]
    plugin.delete("plugin-a")
    assert bind.addresses(fqdn) == []
    plugin.delete("plugin-a")  # nothing to delete: fine


def test_dynamic_dns_refuses_a_record_where_a_cname_holds_the_name(bind: BindServer) -> None:
    # RFC 2136: a server ignores an A record added at a CNAME's name and answers NOERROR. Before,
    # the VM was then taken as published (and made ready) while its name led to the alias target.
    plugin = plugin_for(bind.dns_config())
    bind.add_record(f"alias-a.{bind.zone}", "CNAME", f"ns.{bind.zone}.")
    assert plugin.addresses("alias-a") == [f"ns.{bind.zone} (CNAME)"]
    with pytest.raises(DnsRejected, match="has a CNAME record"):
        plugin.create_or_replace("alias-a", "10.1.2.3")
    # A name with another's AAAA record is looked up as held; a VM registering its own AAAA
    # record beside vmpool's A record is not an error.
    bind.add_record(f"six-a.{bind.zone}", "AAAA", "2001:db8::7")
    assert plugin.addresses("six-a") == ["2001:db8::7"]
    plugin.create_or_replace("six-a", "10.1.2.4")
    assert sorted(plugin.addresses("six-a")) == ["10.1.2.4", "2001:db8::7"]


def test_dynamic_dns_with_a_wrong_key_or_none_is_rejected(bind: BindServer) -> None:
    wrong = plugin_for(bind.dns_config(tsig_secret="c2VjcmV0LWJ1dC13cm9uZw=="))
    with pytest.raises(DnsRejected, match="TSIG") as failure:
        wrong.create_or_replace("plugin-b", "10.0.0.1")
    assert failure.value.metric_key == "rejected"
    assert "c2VjcmV0" not in str(failure.value)  # the key never shows
    unsigned = plugin_for(bind.dns_config(tsig_key_name=None, tsig_secret=None))
    with pytest.raises(DnsRejected, match="REFUSED"):
        unsigned.create_or_replace("plugin-b", "10.0.0.1")
    assert bind.addresses(f"plugin-b.{bind.zone}") == []


def test_dynamic_dns_with_no_server_answering_is_unavailable(bind: BindServer, closed_dns_port: int) -> None:
    plugin = plugin_for(bind.dns_config(port=closed_dns_port, timeout=0.5))
    with pytest.raises(DnsUnavailable) as failure:
        plugin.create_or_replace("plugin-c", "10.0.0.1")
    assert failure.value.metric_key == "unavailable"


def test_no_other_process_can_take_the_closed_dns_port(closed_dns_port: int) -> None:
    # The outage above stays an outage: another server (another test's named) cannot bind the
    # port on either transport while the test runs.
    for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
        with socket.socket(socket.AF_INET, kind) as other:
            other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            with pytest.raises(OSError):
                other.bind(("127.0.0.1", closed_dns_port))


def test_dynamic_dns_without_a_server_manages_nothing_as_in_vmpooler() -> None:
    plugin = plugin_for({"dns_class": "dynamic-dns", "domain": "example.com"})
    assert isinstance(plugin, UnmanagedDns) and not plugin.manages_records


def test_plugin_keys_are_checked_when_the_config_loads() -> None:
    with pytest.raises(ConfigError) as failed:
        build({"dns_configs": {"r": {"dns_class": "route53", "domain": "x.test", "ttl": "soon"},
                               "d": {"dns_class": "dynamic-dns", "port": 70000, "tsig_algorithm": "rot13"}}})
    problems = "\n".join(failed.value.problems)
    assert "dns_configs.r.hosted_zone_id: is required" in problems
    assert 'dns_configs.r.ttl: must be an integer >= 1, got "soon"' in problems
    assert "dns_configs.d.port: must be an integer <= 65535" in problems
    assert "dns_configs.d.tsig_algorithm: must be one of" in problems


def test_a_dns_timeout_longer_than_a_pass_can_wait_is_refused_when_the_config_loads() -> None:
    # Before, timeout: 30 loaded: one Route 53 call against a silent endpoint (connect, then
    # read) held the 60 s reconcile pass past its end.
    with pytest.raises(ConfigError) as failed:
        build({"dns_configs": {"r": {"dns_class": "route53", "domain": "x.test", "hosted_zone_id": "Z1", "timeout": 30},
                               "d": {"dns_class": "dynamic-dns", "server": "10.0.0.53", "domain": "x.test",
                                     "timeout": 10.5}}})
    assert sorted(failed.value.problems) == ["dns_configs.d.timeout: must be a finite number from 0.1 to 10, got 10.5",
                                             "dns_configs.r.timeout: must be a finite number from 0.1 to 10, got 30"]
    assert plugin_for({"dns_class": "route53", "domain": "x.test", "hosted_zone_id": "Z1", "timeout": 10}).client


def test_a_silent_route53_endpoint_costs_one_try_of_one_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    """An endpoint that takes the connection and never answers (a NAT or proxy gone wrong).
    Before, botocore's ``max_attempts: 3`` (retries, not tries) made four tries with backoff:
    27 s at timeout 5, while the pass's DNS budget counts one timeout for a silent service."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    with socket.create_server(("127.0.0.1", 0), backlog=16) as silent:
        monkeypatch.setenv("AWS_ENDPOINT_URL_ROUTE_53", f"http://127.0.0.1:{silent.getsockname()[1]}")
        plugin = plugin_for({"dns_class": "route53", "domain": "vms.example.test", "hosted_zone_id": "Z1",
                             "region": "us-east-1", "timeout": 0.3})
        with pytest.raises(DnsUnavailable, match="ReadTimeoutError"):
            plugin.addresses("r53-silent")
        silent.setblocking(False)
        tries = []
        while True:
            try:
                tries.append(silent.accept()[0])
            except BlockingIOError:
                break
        for connection in tries:
            connection.close()
    assert len(tries) == 1


THROTTLED = (b'<?xml version="1.0"?><ErrorResponse xmlns="https://route53.amazonaws.com/doc/2013-04-01/">'
             b"<Error><Type>Sender</Type><Code>Throttling</Code><Message>Rate exceeded</Message></Error>"
             b"<RequestId>r</RequestId></ErrorResponse>")


def test_a_throttled_route53_call_is_tried_again_after_a_growing_wait(route53: tuple[Any, str]) -> None:
    _, zone = route53
    plugin = plugin_for({"dns_class": "route53", "domain": "vms.example.test", "hosted_zone_id": zone})
    waits: list[float] = []
    plugin._sleep = waits.append
    answer_with_page(plugin.client, 400, THROTTLED, times=2)
    plugin.create_or_replace("r53-throttled", "10.0.0.7")  # the third try goes through
    assert plugin.addresses("r53-throttled") == ["10.0.0.7"]
    assert len(waits) == 2 and 0 <= waits[0] <= 0.5 and 0 <= waits[1] <= 1.0
    waits.clear()
    answer_with_page(plugin.client, 400, THROTTLED)
    with pytest.raises(DnsUnavailable, match="Throttling"):
        plugin.delete("r53-throttled")
    assert len(waits) == 3  # three retries, then the pass is told


@pytest.mark.parametrize("entry", [
    {"dns_class": "route53", "hosted_zone_id": "Z1"},
    {"dns_class": "dynamic-dns", "server": "127.0.0.1", "zone": "vms.example.test"},
])
def test_a_plugin_publishing_records_publishes_them_under_the_domain_its_pools_hand_out(entry: dict[str, Any]) -> None:
    # Before, an entry without a domain published bare names (the server answered NOTZONE,
    # Route 53 InvalidChangeBatch) while its pools handed out <name>.<config.domain>; and a pool
    # with a domain of its own was told <name>.<its domain> while its record was published under
    # the entry's. Either way every VM stayed pending until its timeout, or led nowhere.
    pool = {"name": "p", "size": 1, "provider": "dummy", "dns_plugin": "zone"}
    document = {"config": {"domain": "vms.example.test"}, "providers": {"dummy": {"provider_class": "dummy"}},
                "dns_configs": {"zone": entry}, "pools": [pool]}
    with pytest.raises(ConfigError) as failed:
        build(document)
    assert failed.value.problems == [
        f"dns_configs.zone.domain: is required: {entry['dns_class']} publishes each VM's record as <name>.<domain>"]
    document["dns_configs"] = {"zone": {**entry, "domain": "VMS.example.test."}}
    assert build(document).pools[0].domain == "VMS.example.test."  # the same name, written another way
    document["pools"] = [{**pool, "domain": "other.example.test"}]
    with pytest.raises(ConfigError) as failed:
        build(document)
    assert failed.value.problems == [
        ('pools[0].domain: "other.example.test" is not the domain of its dns_plugin "zone" '
         '("VMS.example.test."), under which its VMs\' records are published')]
    document["pools"] = [{**pool, "domain": "vms.example.test"}]
    assert build(document).pools[0].domain == "vms.example.test"


def test_route53_upserts_and_deletes_in_a_private_zone(route53: tuple[Any, str]) -> None:
    client, zone = route53
    plugin = plugin_for({"dns_class": "route53", "domain": "vms.example.test", "hosted_zone_id": zone, "ttl": 30})
    assert isinstance(plugin, Route53Dns)

    def records() -> dict[str, list[str]]:
        found = client.list_resource_record_sets(HostedZoneId=zone)["ResourceRecordSets"]
        return {r["Name"]: [v["Value"] for v in r["ResourceRecords"]] for r in found if r["Type"] == "A"}

    assert plugin.addresses("r53-a") == []
    plugin.create_or_replace("r53-a", "10.0.0.7")
    plugin.create_or_replace("r53-b", "10.0.0.8")
    plugin.create_or_replace("r53-a", "10.0.0.9")
    assert records() == {"r53-a.vms.example.test.": ["10.0.0.9"], "r53-b.vms.example.test.": ["10.0.0.8"]}
    assert plugin.addresses("r53-a") == ["10.0.0.9"]
    plugin.delete("r53-a")
    plugin.delete("r53-a")
    assert records() == {"r53-b.vms.example.test.": ["10.0.0.8"]}


def test_route53_lookups_see_aaaa_and_cname_records(route53: tuple[Any, str]) -> None:
    # Before, only an A record made a new name "already in DNS".
    client, zone = route53
    plugin = plugin_for({"dns_class": "route53", "domain": "vms.example.test", "hosted_zone_id": zone})
    changes = [{"Action": "CREATE", "ResourceRecordSet": {"Name": name, "Type": rdtype, "TTL": 60,
                                                          "ResourceRecords": [{"Value": value}]}}
               for name, rdtype, value in [("r53-six.vms.example.test", "AAAA", "2001:db8::7"),
                                           ("r53-alias.vms.example.test", "CNAME", "elsewhere.example.test")]]
    client.change_resource_record_sets(HostedZoneId=zone, ChangeBatch={"Changes": changes})
    assert plugin.addresses("r53-six") == ["2001:db8::7"]
    assert plugin.addresses("r53-alias") == ["elsewhere.example.test (CNAME)"]
    assert plugin.addresses("r53-six-not") == []


def test_route53_refusals_are_typed(route53: tuple[Any, str]) -> None:
    plugin = plugin_for({"dns_class": "route53", "domain": "vms.example.test", "hosted_zone_id": "ZNOSUCHZONE"})
    with pytest.raises(DnsRejected, match="NoSuchHostedZone"):
        plugin.create_or_replace("r53-c", "10.0.0.1")
    _, zone = route53
    plugin = plugin_for({"dns_class": "route53", "domain": "vms.example.test", "hosted_zone_id": zone})
    with pytest.raises(DnsRejected, match="fe80::1 is a link-local address"):
        plugin.create_or_replace("r53-c", "fe80::1")


@pytest.mark.parametrize("address", ["fe80::1", "not-an-address", "", "10.0.0.256", "169.254.3.4", "0.0.0.0",
                                     "224.0.0.1", "255.255.255.255", "::", "ff02::1", "2001:db8::1%eth0",
                                     "2001:db8::g", "10.0.0.1\nx", "1" * 100])
def test_an_address_that_users_cannot_reach_is_refused_before_anything_is_sent(bind: BindServer, address: str) -> None:
    # vSphere reports the guest's own choice of address (VMware Tools): anything a user inside
    # the guest says. An IPv6 one made dnspython raise its own SyntaxError, which stopped the
    # pool's reconcile pass every time.
    plugin = plugin_for(bind.dns_config())
    with pytest.raises(DnsRejected, match=r"is not an IP address|is a link-local|is not an address users can reach"):
        plugin.create_or_replace("plugin-d", address)
    assert bind.addresses(f"plugin-d.{bind.zone}") == []


@pytest.mark.parametrize("hostname", ["a" * 64, "a..b", "x." * 130])
def test_a_name_that_cannot_be_in_dns_is_a_typed_refusal(bind: BindServer, hostname: str) -> None:
    plugin = plugin_for(bind.dns_config())
    for call in (lambda: plugin.create_or_replace(hostname, "10.0.0.1"), lambda: plugin.delete(hostname),
                 lambda: plugin.addresses(hostname)):
        with pytest.raises(DnsRejected, match="not a valid DNS name"):
            call()


@pytest.mark.parametrize(("key", "value"), [("domain", "vms..example.test"), ("domain", "x" * 64 + ".test"),
                                            ("domain", "bad domain"), ("zone", "a..b"), ("tsig_key_name", "-key-")])
def test_a_name_dns_cannot_hold_is_refused_when_the_config_loads(bind: BindServer, key: str, value: str) -> None:
    # Before, the config loaded and building the plugin raised dnspython's EmptyLabel or
    # LabelTooLong in every reconcile pass of the pools using it.
    with pytest.raises(ConfigError, match=f"dns_configs.entry.{key}: must be a DNS name"):
        plugin_for(bind.dns_config(**{key: value}))


@pytest.mark.parametrize("secret", ["not base64!!", "abc"])
def test_a_tsig_secret_that_is_not_base64_fails_each_update_with_a_typed_refusal(bind: BindServer, secret: str) -> None:
    # A reference (SSM, Secrets Manager) is read at run time: a value that is not a key is every
    # update's typed failure, not an exception out of the plugin's constructor, and never shown.
    plugin = plugin_for(bind.dns_config(tsig_secret=secret))
    with pytest.raises(DnsRejected, match="tsig_secret is not a valid base64 key") as failure:
        plugin.create_or_replace("plugin-e", "10.0.0.1")
    assert secret not in str(failure.value)
    with pytest.raises(DnsRejected, match="tsig_secret is not a valid base64 key"):
        plugin.delete("plugin-e")


def test_an_ipv4_address_written_as_ipv6_is_published_as_the_a_record_it_is(bind: BindServer) -> None:
    plugin = plugin_for(bind.dns_config())
    plugin.create_or_replace("mapped-a", "::ffff:10.1.2.5")
    assert bind.addresses(f"mapped-a.{bind.zone}") == ["10.1.2.5"]
    assert bind.addresses(f"mapped-a.{bind.zone}", "AAAA") == []
    plugin.delete("mapped-a")


@pytest.mark.parametrize("page", sorted(PAGES))
def test_route53_answers_that_are_not_route53s_are_typed_as_unavailable(route53: tuple[Any, str], page: str) -> None:
    """An HTML or text page instead of Route 53's answer (a proxy, an outage). Before: a page
    botocore could not parse raised its ResponseParserError, untyped, out of the reconcile pass;
    a well-formed HTML page with status 200 read as an empty answer, so a lookup said "no record
    here" and a delete "already gone"; a 502 page was a DnsRejected (an operator's problem)
    instead of a failure to retry."""
    _, zone = route53
    plugin = plugin_for({"dns_class": "route53", "domain": "vms.example.test", "hosted_zone_id": zone})
    plugin.create_or_replace("r53-page", "10.0.0.5")
    answer_with_page(plugin.client, *PAGES[page])
    for call in (lambda: plugin.addresses("r53-page"), lambda: plugin.delete("r53-page"),
                 lambda: plugin.create_or_replace("r53-page", "10.0.0.6")):
        with pytest.raises(DnsUnavailable) as raised:
            call()
        assert raised.value.metric_key == "unavailable"
        assert "html" not in str(raised.value).lower() and len(str(raised.value)) < 200
