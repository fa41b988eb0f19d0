"""A pass acting on a stale read writes a pending VM's DNS refusal note (``dns_refused``) after
another pass published the VM (a real BIND 9 whose ``update-policy`` is lifted in between): the
note must block nothing, the VM is ready, handed out, and its record stays."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from chalicelib.config import parse
from chalicelib.manager import dns_records
from tests.dns.bind import BindServer
from tests.dns.test_dns_records import dns_of, names_sent
from tests.harness import Harness, HarnessFactory, Killed


def pending_vm_refused_by(make_harness: HarnessFactory, policy_bind: BindServer) -> tuple[Harness, str]:
    """A pool ``dns`` of one VM whose names go to ``policy_bind``'s zone, after one pass: the harness
    and its VM, still pending (booting), whose name the server now refuses to update."""
    world = make_harness(parse(yaml.safe_dump({
        "config": {"timeout": 60, "task_limit": 2},
        "providers": {"dummy": {"provider_class": "dummy", "seed": 5, "boot_time": 20}},
        "dns_configs": {"zone": policy_bind.dns_config()},
        "pools": [{"name": "dns", "size": 1, "provider": "dummy", "dns_plugin": "zone"}],
    })))
    world.passes("dns", 1)
    (host,) = world.hosts("dns", "pending")
    policy_bind.refuse_updates_of([host])
    return world, host


def test_a_refusal_noted_by_a_stale_pass_after_another_published_the_vm_blocks_nothing(
        make_harness: HarnessFactory, policy_bind: BindServer, monkeypatch: pytest.MonkeyPatch) -> None:
    world, host = pending_vm_refused_by(make_harness, policy_bind)
    plugin: Any = dns_of(world)
    create_many = plugin.create_many
    stale: list[bool] = []

    def refused_then_another_pass(records: Any, *args: Any) -> Any:
        outcome = create_many(records, *args)
        if not stale:  # the stale pass: refused; the policy lifted and another pass publishes
            stale.append(True)
            policy_bind.refuse_updates_of([])
            world.reconcile("dns")
            assert world.hosts("dns", "ready") == {host}
        return outcome

    monkeypatch.setattr(plugin, "create_many", refused_then_another_pass)
    world.passes("dns", 1)
    record = world.store.get_vm(host)
    assert record is not None and record.state == "ready"
    assert dns_records.REFUSED_NOTE in record.raw  # the stale pass's note, on a published VM
    world.passes("dns", 3)
    assert world.hosts("dns", "ready") == {host}
    assert world.checkout("dns") == host
    world.passes("dns", 3)
    assert world.hosts("dns", "running") == {host}
    assert policy_bind.addresses(f"{host}.{policy_bind.zone}") == [world.store.get_vm(host).ip]  # type: ignore[union-attr]


def test_a_pass_killed_between_a_refused_update_and_its_note_leaves_the_name_sent_again_then_held_back(
        make_harness: HarnessFactory, policy_bind: BindServer, monkeypatch: pytest.MonkeyPatch) -> None:
    world, host = pending_vm_refused_by(make_harness, policy_bind)
    sent = names_sent(world, monkeypatch)
    update_vms = world.store.update_vms

    def killed_at_the_note(fields: Any) -> Any:
        if any(dns_records.REFUSED_NOTE in changes for changes in fields.values()):
            raise Killed("killed before the refusal note")
        return update_vms(fields)

    monkeypatch.setattr(world.store, "update_vms", killed_at_the_note)
    with pytest.raises(Killed):
        world.passes("dns", 1)
    monkeypatch.setattr(world.store, "update_vms", update_vms)
    assert sent == [host]
    world.passes("dns", 1)  # no note: sent again at once, refused, noted
    assert sent == [host, host]
    assert str(world.store.get_vm(host).raw[dns_records.REFUSED_NOTE]).startswith("1 ")  # type: ignore[union-attr]
    world.passes("dns", 1, seconds=30)  # within the back-off
    assert sent == [host, host]
    policy_bind.refuse_updates_of([])
    world.passes("dns", 1, seconds=31)  # the back-off over: published
    assert world.hosts("dns", "ready") == {host}
    assert dns_records.REFUSED_NOTE not in world.store.get_vm(host).raw  # type: ignore[union-attr]
