"""After Redis lost its data, no clone takes the name of a VM Redis forgot in another pool's
folder (manager/discovered.py ``discover_fleet``): dummy provider, whose VMs live under their own
keys and survive the loss, as vCenter's do. The vSphere case: tests/vsphere/test_names_after_redis_loss_vcsim.py."""

from __future__ import annotations

import pytest

from chalicelib.config import parse
from chalicelib.manager import clones, ondemand
from chalicelib.manager.hostnames import random_name
from tests.harness import Harness, HarnessFactory

CONFIG = """
:config: {domain: example.com, experimental_features: true}
:providers:
  :dummy: {createvm_max_time: 0, boot_time: 0, destroyvm_max_time: 0}
:pools:
  - {name: a, size: 1, provider: dummy, folder: f/a}
  - {name: b, size: 1, provider: dummy, folder: f/b}
"""


def forgotten_vm(make_harness: HarnessFactory) -> tuple[Harness, str]:
    """Pool a's VM, in its folder, after Redis lost everything vmpool knew."""
    world = make_harness(parse(CONFIG))
    world.fill("a")
    (name,) = world.hosts("a", "ready")
    for key in world.client.keys("*"):
        if ":dummy:" not in key:
            world.client.delete(key)
    return world, name


def first_candidate(monkeypatch: pytest.MonkeyPatch, module: object, name: str) -> None:
    def candidates(count: int, prefix: str = "") -> list[str]:
        return [name, *(random_name(prefix) for _ in range(2 * count))]

    monkeypatch.setattr(module, "candidate_names", candidates)


def folders_holding(world: Harness, name: str) -> list[str]:
    return [folder for folder in ("f/a", "f/b")
            if world.client.hexists(world.store.keys.dummy_folder("dummy", folder), name)]


def test_a_refill_after_redis_lost_its_data_does_not_reuse_another_pools_vm_name(
        make_harness: HarnessFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    world, name = forgotten_vm(make_harness)
    first_candidate(monkeypatch, clones, name)
    report = world.reconcile("b")
    assert len(report.clones_started) == 1 and name not in report.clones_started
    assert folders_holding(world, name) == ["f/a"]
    assert world.state_of(name) == "discovered"


def test_an_ondemand_request_after_redis_lost_its_data_does_not_reuse_another_pools_vm_name(
        make_harness: HarnessFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    world, name = forgotten_vm(make_harness)
    first_candidate(monkeypatch, ondemand, name)
    assert world.post("/api/v3/ondemandvm", {"b": "1"}).status == 201
    world.reconcile("b")
    assert folders_holding(world, name) == ["f/a"]
    assert world.state_of(name) == "discovered"
