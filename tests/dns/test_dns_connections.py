"""Connections a ``dynamic-dns`` entry opens to its real BIND 9: one kept for the calls of the
passes, not one a VM (a pool of 200 filling or reaped opened 200 TCP connections a pass), and a
connection the server closed meanwhile opened again without failing a VM; a pool's creates, the
deletes of VMs leaving service and the records an outage left behind sent 50 to one update."""

from __future__ import annotations

import socket
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Iterator

import dns.message
import dns.query
import pytest
import yaml

from chalicelib.config import parse
from tests.dns.bind import BindServer
from tests.harness import Harness, HarnessFactory

POOL = 200
LEFT = 50


@pytest.fixture
def connections(bind: BindServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Any]]:
    """Every TCP connection any code of the test process opens to the server's port (the
    plugin's, whichever way it connects: the server sees these)."""
    opened: list[Any] = []
    real_connect, real_connect_ex = socket.socket.connect, socket.socket.connect_ex

    def noted(sock: socket.socket, address: Any) -> None:
        if sock.type == socket.SOCK_STREAM and isinstance(address, tuple) and address[1] == bind.port:
            opened.append(address)

    def connect(sock: socket.socket, address: Any) -> None:
        noted(sock, address)
        real_connect(sock, address)

    def connect_ex(sock: socket.socket, address: Any) -> int:
        noted(sock, address)
        return real_connect_ex(sock, address)

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket.socket, "connect_ex", connect_ex)
    yield opened


def pool_world(make_harness: HarnessFactory, bind: BindServer, size: int = POOL) -> Harness:
    document = {
        "config": {"timeout": 60, "task_limit": size},
        "providers": {"dummy": {"provider_class": "dummy", "seed": 5, "boot_time": 20}},
        "dns_configs": {"zone": bind.dns_config()},
        "pools": [{"name": "dns", "size": size, "provider": "dummy", "dns_plugin": "zone"}],
    }
    return make_harness(parse(yaml.safe_dump(document)))


def passes(world: Harness, count: int, connections: list[Any]) -> int:
    """Run ``count`` passes of the pool; the connections they opened to the server (the test's
    own look-ups at the server are not counted)."""
    before = len(connections)
    world.passes("dns", count)
    return len(connections) - before


def test_passes_filling_and_reaping_200_vms_open_one_connection(
        make_harness: HarnessFactory, bind: BindServer, connections: list[Any]) -> None:
    world = pool_world(make_harness, bind)
    opened = passes(world, 1, connections)  # clones 200 names, each looked up first
    assert world.count("dns", "pending") == POOL
    serial = soa_serial(bind)
    opened += passes(world, 1, connections)  # publishes the 200 and makes them ready
    # 50 to an update: BIND applied 4 updates (4 journal writes), not 200.
    assert soa_serial(bind) == serial + POOL // 50
    ready = world.hosts("dns", "ready")
    assert len(ready) == POOL
    for host in sorted(ready)[:: POOL // 10]:
        assert bind.addresses(f"{host}.{bind.zone}") == [world.store.get_vm(host).ip]  # type: ignore[union-attr]
    # 200 lookups and 200 updates; before, each was a TCP connection of its own.
    assert opened == 1

    for host in ready:
        world.store.move(host, "dns", "ready", "completed", world.clock.now(), reason="returned")
    # 200 deletes, their replacements' lookups, then their updates: on the connection kept, and
    # 50 to an update (4 updates of deletes, 4 of creates; before, 400).
    serial = soa_serial(bind)
    assert passes(world, 2, connections) == 0
    assert soa_serial(bind) == serial + 2 * POOL // 50
    assert world.count("dns", "ready") == POOL
    assert all(bind.addresses(f"{host}.{bind.zone}") == [] for host in ready)


def test_a_connection_the_server_closed_is_opened_again_without_failing_a_vm(
        make_harness: HarnessFactory, bind: BindServer, connections: list[Any]) -> None:
    # A kept connection the server closed (restarted here; BIND also closes idle ones, and a
    # Lambda thawed after minutes finds it gone) fails its next exchange: that one is sent again
    # on a new connection, and the VM is published in that pass.
    world = make_harness(parse(yaml.safe_dump({
        "config": {"timeout": 60, "task_limit": 4},
        "providers": {"dummy": {"provider_class": "dummy", "seed": 5, "boot_time": 20}},
        "dns_configs": {"zone": bind.dns_config()},
        "pools": [{"name": "dns", "size": 2, "provider": "dummy", "dns_plugin": "zone"}],
    })))
    assert passes(world, 2, connections) == 1
    assert world.count("dns", "ready") == 2
    bind.stop()
    bind.start()
    [taken] = world.check_out("dns", 1)
    world.store.move(taken, "dns", "running", "completed", world.clock.now(), reason="returned")
    assert passes(world, 1, connections) == 1  # the delete, on a new connection
    assert bind.addresses(f"{taken}.{bind.zone}") == []
    assert world.store.get_vm(taken).raw.get("dns_error") is None  # type: ignore[union-attr]
    assert passes(world, 1, connections) == 0
    assert world.count("dns", "ready") == 2
    for host in world.hosts("dns", "ready"):
        assert bind.addresses(f"{host}.{bind.zone}") == [world.store.get_vm(host).ip]  # type: ignore[union-attr]


def soa_serial(bind: BindServer) -> int:
    """The zone's serial: BIND adds one for each update it applies (one message, however many
    records it carries)."""
    answer = dns.query.tcp(dns.message.make_query(bind.zone, "SOA"), "127.0.0.1", port=bind.port, timeout=5)
    return int(answer.answer[0][0].serial)


def test_records_left_by_an_outage_are_deleted_in_one_update_and_a_second_run_changes_nothing(
        make_harness: HarnessFactory, bind: BindServer) -> None:
    # 50 VMs destroyed while named was down leave 50 records (pool:<p>:dns_left). Before, the
    # pass deleting them sent 50 updates (50 connections, 50 journal writes); now one.
    world = pool_world(make_harness, bind, size=LEFT)
    world.passes("dns", 2)
    gone = sorted(world.hosts("dns", "ready"))
    assert len(gone) == LEFT
    bind.kill()
    for host in gone:
        world.store.move(host, "dns", "ready", "completed", world.clock.now(), reason="returned")
    world.passes("dns", 2)
    assert {world.state_of(host) for host in gone} == {"destroyed"}
    bind.start()
    # A pass killed after its batch was applied, before it forgot the names: the next pass sends
    # the deletes again, of records already gone, and that is no error.
    bind.clear_records()
    for host in gone[: LEFT // 2]:
        bind.add_record(f"{host}.{bind.zone}", "A", "10.20.30.40")
    serial, ready = soa_serial(bind), world.count("dns", "ready")
    world.passes("dns", 1)
    published = world.count("dns", "ready") - ready  # the replacements: one update (up to 50)
    assert 0 < published <= LEFT
    assert soa_serial(bind) == serial + 1 + 1  # the 50 deletes: one update
    assert all(bind.addresses(f"{host}.{bind.zone}") == [] for host in gone)
    assert world.client.exists(world.store.keys.dns_left("dns")) == 0
    assert all("dns_name" not in world.store.get_vm(host).raw for host in gone)  # type: ignore[union-attr]


def test_passes_of_several_pools_at_once_share_the_entry_without_mixing_answers(bind: BindServer) -> None:
    # The consumer runs up to 10 pools' passes at once in threads (manager/dispatch.py), each
    # with the entry's one plugin. A connection shared between them would carry two exchanges at
    # once: answers read by the wrong thread, VMs left pending for an error of someone else's.
    from chalicelib.config import build
    from chalicelib.dns.registry import build_dns_plugin

    plugin = build_dns_plugin(build({"dns_configs": {"e": bind.dns_config()}}).dns_configs["e"])
    threads, names = 8, 25

    def publish(thread: int) -> None:
        for i in range(names):
            plugin.create_or_replace(f"t{thread}-{i}", f"10.40.{thread}.{i + 1}")
            assert plugin.addresses(f"t{thread}-{i}") == [f"10.40.{thread}.{i + 1}"]

    with ThreadPoolExecutor(max_workers=threads) as pool:
        for done in [pool.submit(publish, thread) for thread in range(threads)]:
            done.result()  # raises what the thread met
    for thread in range(threads):
        assert bind.addresses(f"t{thread}-{names - 1}.{bind.zone}") == [f"10.40.{thread}.{names}"]


def test_route53_deletes_an_outages_left_records_in_one_change(route53: tuple[Any, str]) -> None:
    # Route 53 allows 5 calls a second for the account: 50 names were 100 calls (a read and a
    # delete each), now 51 (their reads, one change), and a dual-stack name goes whole.
    from chalicelib.config import build
    from chalicelib.dns.registry import build_dns_plugin

    client, zone = route53
    entry = {"dns_class": "route53", "domain": "vms.example.test", "hosted_zone_id": zone}
    plugin = build_dns_plugin(build({"dns_configs": {"e": entry}}).dns_configs["e"])
    for i in range(LEFT):
        plugin.create_or_replace(f"left-{i}", f"10.50.0.{i + 1}" if i % 2 else ("10.50.1.1", "2001:db8::1"))
    changes: list[str] = []
    plugin.client.meta.events.register(  # type: ignore[attr-defined]
        "before-call.route53.ChangeResourceRecordSets", lambda **_: changes.append("change"))
    names = [(f"left-{i}", None) for i in range(LEFT)] + [("never-published", None)]
    assert plugin.delete_many(names) == {name: None for name, _ in names}
    assert len(changes) == 1
    held = client.list_resource_record_sets(HostedZoneId=zone)["ResourceRecordSets"]
    assert [record for record in held if record["Type"] in ("A", "AAAA")] == []
    assert plugin.delete_many(names) == {name: None for name, _ in names}  # again: nothing to delete
    assert len(changes) == 1
