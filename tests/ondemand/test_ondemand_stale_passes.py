"""Two passes over one pool at once, each acting on a read from before the other's writes, while
on-demand requests are in flight: no request gets more VMs than it asked for, none is filled
twice, and no VM in use is destroyed; the next passes converge.

The interleaving is made through the pass's context, on the fake clock: both passes read their
inputs (``PassContext.read``: inventory, snapshot, overrides) before either runs a step, then
run their steps one pass after the other, or step by step in turn. Meanwhile the API acts too:
a user returns a delivered VM, checks a ready one out, deletes a request."""

from __future__ import annotations

from typing import Callable

import pytest

from chalicelib.manager.context import PassContext
from chalicelib.manager.reconcile import STEPS
from chalicelib.store.ondemand import OnDemandStore
from tests.harness import Harness, assert_consistent

POOL = "debian-12"
ASKED = {"first": {"debian-12": 2}, "second": {"debian": 2}, "deleted": {"debian-12": 1}}


def read_pass(stack: Harness) -> PassContext:
    """A pass over the pool with its inputs read now, no step run yet (as harness.reconcile)."""
    pool = stack.config.pool(POOL)
    assert pool is not None
    services = stack.services
    return PassContext.read(stack.store, services.provider(pool.provider), pool, stack.clock, stack.config.service,
                            dns=services.dns_plugin(pool), providers=services.configured_provider,
                            dns_plugins=services.dns_lookup, fleet=lambda: stack.config.pools)


def run_stale(stack: Harness, order: str, meanwhile: Callable[[], None] = lambda: None) -> None:
    """Two passes that both read before either writes; ``meanwhile`` (the API) runs between
    their reads and their steps. ``order``: one pass's steps after the other's, or in turn."""
    first, second = read_pass(stack), read_pass(stack)
    meanwhile()
    if order == "one after the other":
        for context in (first, second):
            for step in STEPS:
                step(context)
    else:
        for step in STEPS:
            for context in (first, second):
                step(context)


def assert_requests_sound(stack: Harness, requests: dict[str, str], in_use: set[str]) -> None:
    """Each request names only VMs built for it, no VM is two requests', none has more VMs
    delivered or building than it asked for, and every VM in use still runs, in the provider."""
    found = OnDemandStore(stack.store).get_many(list(requests.values()))
    owners: dict[str, str] = {}
    for label, request_id in requests.items():
        request = found[request_id]
        assert request is not None, label
        for vm in request.vms:
            assert vm.raw.get("request") == request_id, (label, vm.name)
            assert owners.setdefault(vm.name, label) == label, f"{vm.name} is {owners[vm.name]}'s and {label}'s"
        for name in request.names:
            held = len(request.delivered(name)) + len(request.building(name))
            assert held <= request.wanted(name), (label, name, held, [vm.name for vm in request.vms])
    for host in in_use:
        assert stack.state_of(host) == "running", (host, stack.state_of(host))
        assert host in stack.provider_vms(POOL), host
    assert_consistent(stack, POOL)


@pytest.mark.parametrize("order", ["one after the other", "step by step in turn"])
def test_stale_overlapping_passes_fill_each_request_once_and_destroy_nothing_in_use(make_stack, order):
    stack = make_stack(size=1, ondemand_clone_limit=3)
    stack.run_passes(POOL)  # the pool's own VM ready
    requests = {}
    for label, asked in ASKED.items():
        status, body = stack.answer("POST", "/api/v3/ondemandvm", asked)
        assert status == 201, body
        requests[label] = body["request_id"]
    in_use: set[str] = set()

    run_stale(stack, order)  # both reserve: within the clone limit of 3, across requests
    assert_requests_sound(stack, requests, in_use)
    assert stack.services.store.cloning_count() <= 3

    def user_acts() -> None:
        """Between the passes' reads and their steps: the plain VM is checked out, and the
        request asking for one VM is deleted."""
        in_use.add(stack.checkout(POOL))
        assert stack.answer("DELETE", f"/api/v3/ondemandvm/{requests['deleted']}") == (200, {"ok": True})

    stack.clock.advance(31)  # the clones booted
    run_stale(stack, order, user_acts)
    assert_requests_sound(stack, requests, in_use)

    for _ in range(6):
        stack.clock.advance(31)
        # A VM delivered (and so in use) since the last pass is in use for the rest of the test.
        for label in ("first", "second"):
            request = OnDemandStore(stack.store).get(requests[label])
            assert request is not None
            in_use |= {vm.name for name in request.names for vm in request.delivered(name)}
        run_stale(stack, order)
        assert_requests_sound(stack, requests, in_use)

    delivered: set[str] = set()
    for label in ("first", "second"):
        status, body = stack.answer("GET", f"/api/v3/ondemandvm/{requests[label]}")
        assert (status, body["ready"]) == (200, True), (label, body)
        [name] = ASKED[label]
        hosts = {host.split(".")[0] for host in body[name]["hostname"]}
        assert len(hosts) == 2 and not hosts & delivered, (label, hosts, delivered)
        delivered |= hosts
    status, body = stack.answer("GET", f"/api/v3/ondemandvm/{requests['deleted']}")
    assert (status, body["ready"], body["message"]) == (200, False, "The request has been deleted")
    assert {stack.state_of(host) for host in delivered | in_use} == {"running"}
    # Nothing else left behind: the pool's own ready VM, the VMs in use; every clone ended.
    assert stack.provider_vms(POOL) == delivered | in_use | stack.hosts(POOL, "ready")
    assert stack.services.store.cloning_count() == 0


@pytest.mark.parametrize("meanwhile", ["cloned", "cloned and handed over"])
def test_a_pass_paused_between_its_inventory_and_its_snapshot_keeps_a_vm_built_meanwhile(make_stack, meanwhile):
    """The pass read the provider's inventory, then paused; meanwhile other passes cloned a VM
    for a request (and handed it over, booted). The paused pass's snapshot has the VM, its
    inventory does not: it is not "gone from the provider", the request gets it, once."""
    stack = make_stack(size=0)
    status, body = stack.answer("POST", "/api/v3/ondemandvm", {"debian-12": 1})
    assert status == 201, body
    request_id = body["request_id"]
    paused = []

    def others_meanwhile(name: str) -> None:
        if name == "inventory" and not paused:
            paused.append(name)
            stack.reconcile(POOL)  # reserves and clones the request's VM
            if meanwhile == "cloned and handed over":
                stack.clock.advance(31)
                stack.reconcile(POOL)  # hands it over, booted
    pool = stack.config.pool(POOL)
    assert pool is not None
    services = stack.services
    context = PassContext.read(stack.store, services.provider(pool.provider), pool, stack.clock, stack.config.service,
                               others_meanwhile, fleet=lambda: stack.config.pools)
    state = "running" if meanwhile == "cloned and handed over" else "pending"
    [host] = stack.hosts(POOL, state)
    assert host not in context.inventory and host in context.snapshot.hostnames(state)
    for step in STEPS:
        step(context)
    assert stack.state_of(host) == state and host in stack.provider_vms(POOL)
    assert_consistent(stack, POOL)

    stack.run_passes(POOL)
    assert stack.state_of(host) == "running" and host in stack.provider_vms(POOL)
    status, body = stack.answer("GET", f"/api/v3/ondemandvm/{request_id}")
    assert (status, body["ready"], body[POOL]["hostname"]) == (200, True, [f"{host}.example.com"])
    assert_consistent(stack, POOL)
