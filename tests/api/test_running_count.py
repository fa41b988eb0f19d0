"""The service-wide quota (``max_running_vms``) counts one set, the service's running set, that
the scripts moving VMs keep (keys.running): its cost no longer grows with the pools. Every way a
VM enters or leaves running keeps it exact; drift (the set changed or lost behind the service's
back) is repaired by the scheduler's next tick, and a set not known to be whole is rebuilt before
any quota is checked against it."""

from __future__ import annotations

import json
from types import SimpleNamespace
from typing import Any, Callable

import pytest

from chalicelib.api import vms
from chalicelib.api.http import ApiRequest
from chalicelib.api.routes import handle
from chalicelib.config import parse
from chalicelib.manager.dispatch import Ticker
from chalicelib.store import CheckoutRequest, Quota, Store
from tests.api.configs import CONFIG_YAML
from tests.harness import Harness, run_at_once
from tests.support import checkout_answers_lost, emf_documents, emitted, redis_commands


def _with(config: str, **keys: object) -> str:
    lines = "".join(f"  {key}: {value}\n" for key, value in keys.items())
    return config.replace(":config:\n", ":config:\n" + lines, 1)


def counted(stack: Harness) -> set[str]:
    """The VMs the service-wide quota counts."""
    return set(stack.client.zrange(stack.store.keys.running, 0, -1))


def running(stack: Harness) -> set[str]:
    """The VMs the pools' own sets say are running."""
    return {host for pool in stack.config.pool_names for host in stack.hosts(pool, "running")}


def assert_exact(stack: Harness, expected: int) -> None:
    assert len(running(stack)) == expected
    assert counted(stack) == running(stack)


def checked_out(reply: Any) -> list[str]:
    """The short hostnames a checkout answered with."""
    assert reply.status == 200, reply.json
    names: list[str] = []
    for answer in reply.json.values():
        if isinstance(answer, dict):
            hostname = answer["hostname"]
            names += [name.split(".")[0] for name in (hostname if isinstance(hostname, list) else [hostname])]
    return names


def tick(stack: Harness) -> Any:
    return Ticker().tick(stack.services, SimpleNamespace(send=lambda messages: None))


def test_every_way_into_and_out_of_running_keeps_the_count_exact(make_stack: Callable[[str], Harness]) -> None:
    stack = make_stack(_with(CONFIG_YAML, experimental_features="true"))  # POST /poolreset
    stack.fill()
    # a checkout; a return (DELETE)
    hosts = checked_out(stack.post("/api/v3/vm", {"pool1": 2}))
    assert_exact(stack, 2)
    assert stack.delete(f"/api/v3/vm/{hosts[0]}").status == 200
    assert_exact(stack, 1)
    # its lifetime ends: reaped by a pass
    stack.clock.advance(2 * 3600 + 1)
    assert hosts[1] in stack.reconcile("pool1").completed
    assert_exact(stack, 0)
    # a checkout whose answer was lost: back to ready once unconfirmed past its deadline
    stack.fill("pool3")
    with checkout_answers_lost(stack.store):
        assert stack.post("/api/v3/vm", {"pool3": 1}).status == 503
    assert_exact(stack, 1)
    stack.clock.advance(61)
    assert len(stack.reconcile("pool3").returned) == 1
    assert_exact(stack, 0)
    # gone from the provider while running: dropped by a pass
    stack.fill("pool2")
    (gone,) = checked_out(stack.post("/api/v3/vm", {"pool2": 1}))
    assert_exact(stack, 1)
    stack.provider.delete_by_hand(stack.pool("pool2"), gone)
    stack.clock.advance(1)
    assert gone in stack.reconcile("pool2").dropped
    assert_exact(stack, 0)
    # on-demand: delivered VMs run for the request; deleting the request ends them
    status, body = stack.answer("POST", "/api/v3/ondemandvm", {"pool1": 1, "pool2": 1})
    assert status == 201
    stack.run_passes("pool1", "pool2")
    assert stack.get(f"/api/v3/ondemandvm/{body['request_id']}").status == 200
    assert_exact(stack, 2)
    assert stack.delete(f"/api/v3/ondemandvm/{body['request_id']}").status == 200
    assert_exact(stack, 0)
    # a VM someone made in a pool's folder: discovered, never counted
    stack.provider.create_by_hand(stack.pool("pool1"), "made-by-hand")
    stack.fill("pool1")
    stack.post("/api/v3/vm", {"pool1": 1})
    stack.run_passes("pool1")
    assert stack.state_of("made-by-hand") in ("completed", "destroyed")
    assert_exact(stack, 1)
    # a pool reset drains ready and pending VMs, never one in use
    assert stack.post("/api/v3/poolreset", {"pool1": "1"}).status == 201
    stack.run_passes("pool1")
    assert_exact(stack, 1)
    # the pool removed from the config: its VM in use still runs, and still counts
    ticked = tick(stack)
    assert ticked.running.running == 1 and not ticked.running.drifted
    stack.services.use_config(parse(CONFIG_YAML.replace("  - name: pool1\n    alias: [linux]\n", "  - name: old\n")))
    assert not tick(stack).running.drifted
    assert len(counted(stack)) == 1
    # nothing a tick rebuilt ever differed from what the scripts kept
    assert tick(stack).running.drifted is False


def test_drift_is_repaired_by_the_next_tick(make_stack: Callable[[str], Harness], log_output: Any,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    stack = make_stack(_with(CONFIG_YAML, max_running_vms=3))
    stack.fill()
    assert stack.post("/api/v3/vm", {"pool1": 2, "pool2": 1}).status == 200
    first = tick(stack).running
    assert (first.running, first.added, first.removed, first.was_whole) == (3, 0, 0, True)
    # changed behind the service's back: one VM forgotten, one that does not run counted
    forgotten = sorted(counted(stack))[0]
    stack.client.zrem(stack.store.keys.running, forgotten)
    stack.client.zadd(stack.store.keys.running, {"not-running": 1.0})
    capsys.readouterr()
    repaired = tick(stack).running
    assert (repaired.running, repaired.added, repaired.removed, repaired.drifted) == (3, 1, 1, True)
    assert_exact(stack, 3)
    assert "running count had drifted" in log_output.getvalue()
    # Drift is a path that moved a VM without keeping the set: counted, for an alarm or a graph.
    assert emitted(emf_documents(capsys.readouterr().out))[("RunningCountDrift", ("service",))] == [2.0]
    tick(stack)
    assert ("RunningCountDrift", ("service",)) not in emitted(emf_documents(capsys.readouterr().out))
    other = ApiRequest("POST", 3, params={"name": "pool2"}, source_ip="203.0.113.5")
    assert handle(stack.services, vms.checkout_from_path, other).status == 503


def test_a_lost_count_is_rebuilt_before_a_quota_is_checked(make_stack: Callable[[str], Harness]) -> None:
    """A Redis that lost the set (a new deployment over running VMs, a key deleted): the first
    checkout rebuilds it, so the limit neither refuses nor admits more than it should."""
    stack = make_stack(_with(CONFIG_YAML, max_running_vms=3))
    stack.fill()
    assert stack.post("/api/v3/vm", {"pool1": 2}).status == 200
    stack.client.delete(stack.store.keys.running, stack.store.keys.running_counted)
    assert stack.post("/api/v3/vm", {"pool2": 1}).status == 200  # 2 + 1: fits
    assert_exact(stack, 3)
    stack.client.delete(stack.store.keys.running, stack.store.keys.running_counted)
    refused = stack.post("/api/v3/vm", {"pool2": 1}, client_ip="203.0.113.9")
    assert refused.status == 503 and "maximum of 3 VMs" in refused.json["error"]
    assert_exact(stack, 3)
    # an on-demand request is held to the same count
    stack.client.delete(stack.store.keys.running, stack.store.keys.running_counted)
    assert stack.post("/api/v3/ondemandvm", {"pool3": 1}).status == 503
    assert_exact(stack, 3)


def test_the_limit_holds_under_40_checkouts_at_once_from_distinct_owners(
        make_stack: Callable[[str], Harness]) -> None:
    stack = make_stack(_with(CONFIG_YAML.replace("size: 2", "size: 20").replace("size: 1", "size: 20"),
                             max_running_vms=12))
    stack.fill()
    stack.client.delete(stack.store.keys.running_counted)  # the first of them rebuilds the set
    statuses: list[int] = []
    owners = iter(range(40))

    def checkout() -> None:
        request = ApiRequest("POST", 3, params={"name": "linux"}, source_ip=f"203.0.113.{next(owners)}")
        statuses.append(handle(stack.services, vms.checkout_from_path, request).status)

    run_at_once(checkout, 40)
    assert sorted(statuses) == [200] * 12 + [503] * 28
    assert_exact(stack, 12)


def _ready_vm(store: Store, pool: str, hostname: str, now: float) -> None:
    assert store.reserve_clones(pool, 10, 10, "tmpl", "example.com", [hostname], now) == [hostname]
    assert store.move(hostname, pool, "pending", "ready", now, ready_at=now)


def _checkout_commands(store: Store, pools: int) -> dict[str, int]:
    """The Redis commands (scripts' own included) of one checkout held to a quota, the service
    having ``pools`` pools."""
    names = [f"pool-{n:05d}" for n in range(pools)]
    quota = Quota("addr:203.0.113.1", max_owner_vms=100, max_vms=1000, pools=names)
    for hostname in ("warm-up", "measured"):
        _ready_vm(store, names[0], f"{hostname}-{pools}", 1000.0)
    store.checkout([CheckoutRequest(names[0], [names[0]], 1)], 1000.0, {}, quota)  # scripts loaded, set built
    store.client.config_resetstat()
    assert store.checkout([CheckoutRequest(names[0], [names[0]], 1)], 1000.0, {}, quota).ok
    return redis_commands(store.client)


def test_a_checkout_costs_redis_the_same_whatever_the_number_of_pools(redis_client: Any) -> None:
    """Before, the quota read each pool's running set (a ZCARD per pool: 1 ms of Redis's one
    thread a checkout at 1,000 pools)."""
    few = _checkout_commands(Store(redis_client, prefix="few:"), 3)
    many = _checkout_commands(Store(redis_client, prefix="many:"), 2000)
    assert few == many
    assert few.get("zcard", 0) <= 2


def test_a_pool_the_ticks_config_does_not_list_yet_keeps_its_vms_counted(
        make_stack: Callable[[str], Harness]) -> None:
    """The tick rebuilds from the pools its config lists; an API already serving a pool pushed
    since has VMs running in it that the rebuild must not drop (the quota would admit them twice)."""
    stack = make_stack(CONFIG_YAML)
    stack.fill()
    assert stack.post("/api/v3/vm", {"pool3": 1, "pool1": 1}).status == 200
    rebuilt = stack.store.recount_running(["pool1", "pool2"], stack.clock.now())
    assert (rebuilt.running, rebuilt.removed) == (2, 0)
    assert_exact(stack, 2)
    # a VM of that pool no longer running in it is dropped all the same
    (host,) = stack.hosts("pool3", "running")
    stack.client.zrem(stack.store.keys.pool_state("pool3", "running"), host)
    assert stack.store.recount_running(["pool1", "pool2"], stack.clock.now()).removed == 1
    assert counted(stack) == stack.hosts("pool1", "running")


def test_a_checkout_names_only_the_keys_of_the_pools_it_takes_from(make_stack: Callable[[str], Harness]) -> None:
    """The quota's arguments no longer list every pool's running set: the checkout's keys are
    those of the pools it takes from."""
    stack = make_stack(CONFIG_YAML)
    stack.fill("pool1")
    sent: list[list[str]] = []
    run = stack.store.scripts.checkout

    def recording(**kwargs: Any) -> Any:
        sent.append(list(kwargs["keys"]))
        return run(**kwargs)

    stack.store.scripts.checkout = recording  # type: ignore[method-assign]
    try:
        assert stack.post("/api/v3/vm", {"pool1": 1}).status == 200
    finally:
        stack.store.scripts.checkout = run  # type: ignore[method-assign]
    keys = sent[-1]
    assert not any(key.startswith(("vmpool:pool:pool2:", "vmpool:pool:pool3:")) for key in keys), json.dumps(keys)


def test_a_deployment_over_thousands_of_running_vms_counts_each_once(redis_client: Any) -> None:
    """The first tick after this version is deployed over running VMs (their pools' sets written
    before the service's set existed) builds it whole, however many pools; the next finds no drift."""
    store = Store(redis_client)
    pools = [f"pool-{n:05d}" for n in range(6000)]  # more than the script unions in one command
    pipe = redis_client.pipeline(transaction=False)
    for n, pool in enumerate(pools):
        for host in (f"vm-{n}", f"vm-{n}-b")[: 1 + n % 2]:
            pipe.hset(store.keys.vm(host), mapping={"name": host, "pool": pool, "state": "running"})
            pipe.zadd(store.keys.pool_state(pool, "running"), {host: float(n)})
    pipe.execute()
    built = store.recount_running(pools, 1000.0)
    assert (built.running, built.added, built.removed, built.was_whole) == (9000, 9000, 0, False)
    assert redis_client.zscore(store.keys.running, "vm-5999-b") == 5999.0
    again = store.recount_running(pools, 1060.0)
    assert (again.running, again.drifted) == (9000, False)
    assert not redis_client.exists(store.keys.running_rebuild)
