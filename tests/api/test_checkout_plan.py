"""Checkouts of several pools and aliases at once: whenever the ready VMs can serve the whole
request, it is served (the plan is a matching, not a greedy pass), and ``backend_weight`` chooses
among an alias's pools as vmpooler does."""

from __future__ import annotations

import random
from collections import Counter
from typing import Any, Callable, Sequence

import pytest
import redis

from chalicelib.api.pool_choice import preference, weighted_order
from chalicelib.config import build, parse
from chalicelib.store.store import SLOT_CHOICES_SENT
from tests.api.configs import CONFIG_YAML
from tests.compat.pooler import pooler_document
from tests.harness import Harness, HarnessFactory


def _short(hostname: str) -> str:
    return hostname.split(".", 1)[0]


@pytest.fixture
def in_config_order(monkeypatch: pytest.MonkeyPatch) -> None:
    """No shuffle: an alias tries its pools in config order (``linux`` = pool1 then pool2), the
    order in which a greedy plan fails."""
    monkeypatch.setattr(random, "shuffle", lambda items: None)


def _one_ready_in_each(stack: Harness) -> None:
    stack.fill("pool1", "pool2")
    stack.checkout("pool1")
    stack.checkout("pool2")
    assert len(stack.ready("pool1")) == len(stack.ready("pool2")) == 1


@pytest.mark.usefixtures("in_config_order")
@pytest.mark.parametrize("how", ["path", "body"])
def test_an_alias_gives_way_so_the_whole_request_is_served(stack: Harness, how: str) -> None:
    """``linux`` (pool1 or pool2) + ``pool1`` with one ready VM in each pool: linux takes pool2's."""
    _one_ready_in_each(stack)
    pool1_vm, pool2_vm = stack.ready("pool1")[0], stack.ready("pool2")[0]
    if how == "path":
        reply = stack.post("/api/v3/vm/linux+pool1")
    else:
        reply = stack.post("/api/v3/vm", {"linux": 1, "pool1": 1})
    assert reply.status == 200, reply.json
    assert _short(reply.json["linux"]["hostname"]) == pool2_vm
    assert _short(reply.json["pool1"]["hostname"]) == pool1_vm


@pytest.mark.usefixtures("in_config_order")
def test_every_vm_of_an_alias_is_placed_where_the_others_leave_room(full: Harness) -> None:
    """Two ready in pool1 and pool2; ``linux`` x2 + ``pool1`` + ``two`` (pool2) needs all four:
    linux must take one of each."""
    reply = full.post("/api/v3/vm", {"linux": 2, "pool1": 1, "two": 1})
    assert reply.status == 200, reply.json
    assert sorted(name.endswith(".one.example.com") for name in reply.json["linux"]["hostname"]) == [False, True]
    assert full.ready("pool1") == [] and full.ready("pool2") == []


def test_a_request_no_plan_can_serve_is_refused_whole(full: Harness) -> None:
    full.post("/api/v3/vm", {"pool1": 1})
    before = full.redis_state()
    reply = full.post("/api/v3/vm", {"linux": 2, "pool1": 1, "two": 1})
    assert reply.status == 503 and reply.json["ok"] is False
    assert full.redis_state() == before


WEIGHTED_CONFIG = (CONFIG_YAML
                   .replace(":config:\n", ":config:\n  clone_target: cluster-b\n"
                                          "  backend_weight:\n    cluster-a: {a}\n    cluster-b: {b}\n", 1)
                   .replace("    domain: one.example.com\n",
                            "    domain: one.example.com\n    clone_target: cluster-a\n"))
"""pool1 clones on cluster-a, pool2 (and pool3) on the service's cluster-b."""


def test_backend_weight_zero_is_never_chosen_while_another_pool_has_vms(make_stack: Callable[[str], Harness]) -> None:
    stack = make_stack(WEIGHTED_CONFIG.format(a=1, b=0))
    stack.fill("pool1", "pool2")
    reply = stack.post("/api/v3/vm", {"linux": 2})
    assert reply.status == 200
    assert all(name.endswith(".one.example.com") for name in reply.json["linux"]["hostname"])
    # pool1 is empty now: the weight-0 pool still serves, and a full plan is still found
    reply = stack.post("/api/v3/vm", {"linux": 1, "pool2": 1})
    assert reply.status == 200, reply.json
    assert not reply.json["linux"]["hostname"].endswith(".one.example.com")


def test_backend_weight_follows_a_clone_target_changed_at_runtime(make_stack: Callable[[str], Harness]) -> None:
    experimental = ":config:\n  experimental_features: true\n"
    stack = make_stack(WEIGHTED_CONFIG.format(a=1, b=0).replace(":config:\n", experimental, 1))
    stack.fill("pool1", "pool2")
    moved = stack.post("/api/v3/config/clonetarget", {"pool1": "cluster-b", "pool2": "cluster-a"})
    assert moved.status == 201
    reply = stack.post("/api/v3/vm", {"linux": 2})
    assert reply.status == 200
    assert not any(name.endswith(".one.example.com") for name in reply.json["linux"]["hostname"])


def test_backend_weight_draws_pools_in_proportion(make_stack: Callable[[str], Harness],
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    stack = make_stack(WEIGHTED_CONFIG.format(a=3, b=1))
    monkeypatch.setattr(random, "random", random.Random(7).random)
    firsts = Counter(preference(stack.config, "linux")[0] for _ in range(4000))
    assert 2800 < firsts["pool1"] < 3200  # 3:1
    assert sorted(preference(stack.config, "linux")) == ["pool1", "pool2"]


def test_a_weighted_order_is_drawn_as_one_pool_at_a_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every order of three pools of weights 1, 2 and 3 comes as often as drawing them one at a
    time makes it (c first: 3/6, then b: 2/3 of the rest...); a pool of weight 0 always last."""
    monkeypatch.setattr(random, "random", random.Random(11).random)
    draws = 60_000
    orders = Counter(tuple(weighted_order(["a", "b", "c", "z"], [1.0, 2.0, 3.0, 0.0])) for _ in range(draws))
    weights = {"a": 1, "b": 2, "c": 3}
    for order, seen in orders.items():
        assert order[3] == "z", order
        first, second, _, _ = order
        expected = weights[first] / 6 * weights[second] / (6 - weights[first])
        assert abs(seen / draws - expected) < 0.01, (order, seen / draws, expected)
    assert len(orders) == 6


OPERATIONS = Counter[str]()


def _counted(name: str) -> Callable[[float, object], object]:
    def operation(self: float, other: object) -> object:
        OPERATIONS["weight"] += 1
        return getattr(float, name)(self, other)
    return operation


class CountedWeight(float):
    """A weight that counts the arithmetic done with it (in OPERATIONS)."""

    __add__, __radd__, __sub__, __rsub__ = map(_counted, ("__add__", "__radd__", "__sub__", "__rsub__"))
    __truediv__, __rtruediv__, __mul__, __rmul__ = map(_counted, ("__truediv__", "__rtruediv__", "__mul__", "__rmul__"))


def test_a_weighted_draw_over_thousands_of_pools_reads_each_weight_a_few_times() -> None:
    """Drawn one pool at a time, summing the weights left at each draw, an alias of 1,000
    weighted pools took 0.6 s for each VM asked for (``POST /vm {"alias": 100}``: a minute of
    the API's CPU, past API Gateway's 29 s); the draw is now linear in the pools."""
    pools = [f"p{i}" for i in range(2000)]
    OPERATIONS.clear()
    order = weighted_order(pools, [CountedWeight(1 + i % 7) for i in range(len(pools))])
    assert sorted(order) == sorted(pools)
    assert OPERATIONS["weight"] <= 3 * len(pools), OPERATIONS


def test_backend_weight_applies_only_when_every_pool_has_one(make_stack: Callable[[str], Harness],
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """As vmpooler: one pool without a weight and the choice is uniform."""
    stack = make_stack(WEIGHTED_CONFIG.format(a=1, b=0).replace("  clone_target: cluster-b\n", "", 1))
    monkeypatch.setattr(random, "random", random.Random(7).random)
    monkeypatch.setattr(random, "shuffle", random.Random(7).shuffle)
    firsts = Counter(preference(stack.config, "linux")[0] for _ in range(2000))
    assert 800 < firsts["pool2"] < 1200


def test_ondemand_builds_an_alias_in_the_weighted_pool(make_stack: Callable[[str], Harness]) -> None:
    stack = make_stack(WEIGHTED_CONFIG.format(a=0, b=1))
    reply = stack.post("/api/v3/ondemandvm", {"linux": 1})
    assert reply.status == 201
    assert stack.client.zcard("vmpool:ondemand:open:pool2") == 1
    assert stack.client.zcard("vmpool:ondemand:open:pool1") == 0


def _alias_of_many_pools(make_harness: HarnessFactory, pools: int, ready: dict[str, int]) -> Harness:
    """An alias ``all`` of ``pools`` pools, those named in ``ready`` (name -> size) filled."""
    document = pooler_document([{"name": f"p{i}", "size": ready.get(f"p{i}", 0), "alias": ["all"]}
                                for i in range(pools)], {"example": "example.com"})
    harness = make_harness(build(document), headers={"Content-Type": "application/json"})
    harness.fill(*ready)
    return harness


def test_a_checkout_of_an_alias_of_many_pools_names_each_pool_to_redis_once(
        make_harness: HarnessFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each VM of a checkout sent the script its order of all of a name's pools: 100 VMs of an
    alias of 1,000 pools were 100,000 names for Redis to read (80 ms of it, 450 ms at 5,000
    pools), asked by anyone. Each VM now sends its first choices, and the name its pools once."""
    stack = _alias_of_many_pools(make_harness, 1000, {"p500": 2, "p999": 1})
    sent: list[int] = []
    script = stack.store.scripts.checkout

    def checkout(keys: Sequence[str], args: Sequence[str]) -> Any:
        sent.append(len(args[1]))
        return script(keys=keys, args=args)

    monkeypatch.setattr(stack.store.scripts, "checkout", checkout)
    assert stack.post("/api/v3/vm", {"all": 4}).status == 503
    assert stack.post("/api/v3/vm", {"all": 100}).status == 503
    assert stack.count("p500", "ready") == 2
    # Its pools' keys and one order of them, then SLOT_CHOICES_SENT names a VM (1,000 before).
    few, many = sent
    assert many - few < 96 * (SLOT_CHOICES_SENT + 5) * 10, sent  # a name, "p123", is 7 characters
    reply = stack.post("/api/v3/vm", {"all": 3})
    assert reply.status == 200, reply.json
    assert {_short(name) for name in reply.json["all"]["hostname"]} == stack.hosts("p500", "running") | stack.hosts(
        "p999", "running")


@pytest.mark.usefixtures("in_config_order")
def test_a_vm_whose_first_choices_are_taken_gives_way_through_its_names_other_pools(
        make_harness: HarnessFactory) -> None:
    """``all`` + ``p0``, one ready VM in p0 and one in p29: every order is config order (p0
    first), ``all``'s first choices hold only p0's VM, which ``p0`` needs; ``all`` takes p29's,
    from the pools past its first choices."""
    stack = _alias_of_many_pools(make_harness, 30, {"p0": 1, "p29": 1})
    reply = stack.post("/api/v3/vm", {"all": 1, "p0": 1})
    assert reply.status == 200, reply.json
    assert stack.count("p0", "ready") == stack.count("p29", "ready") == 0
    assert _short(reply.json["p0"]["hostname"]) in stack.hosts("p0", "running")


def _weighted_fleet(make_harness: HarnessFactory, pools: int) -> Harness:
    """``pools`` pools, weighted by clone target; the alias ``small`` is p0 and p1, filled."""
    lines = [":config: {domain: example.com, backend_weight: {cluster-a: 1, cluster-b: 3}}",
             ":providers:", "  :dummy: {createvm_max_time: 0, boot_time: 0, destroyvm_max_time: 0}", ":pools:"]
    lines += [f"  - {{name: p{i}, size: {2 if i < 2 else 0}, provider: dummy, clone_target: cluster-{'ab'[i % 2]}"
              f"{', alias: [small]' if i < 2 else ''}}}" for i in range(pools)]
    harness = make_harness(parse("\n".join(lines) + "\n"))
    harness.fill("p0", "p1")
    return harness


def _bytes_sent_to_redis(call: Callable[[], Any]) -> int:
    sent = [0]
    original = redis.connection.AbstractConnection.send_packed_command

    def counting(connection: Any, command: Any, check_health: bool = True) -> None:
        sent[0] += len(command) if isinstance(command, (bytes, str)) else sum(map(len, command))
        original(connection, command, check_health)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(redis.connection.AbstractConnection, "send_packed_command", counting)
        call()
    return sent[0]


def test_a_weighted_alias_checkout_reads_the_pools_behind_it_not_the_fleet(make_harness: HarnessFactory) -> None:
    """With ``backend_weight`` set, every checkout read the runtime overrides of every pool (5
    fields each) and built each pool's config, to weigh the pools of the names asked for: at
    1,000 pools an alias checkout of its 2 pools took 69 ms (3.9 ms now), each checkout more
    Redis work as the fleet grows. It reads those of its names' pools now: the same bytes
    whatever the fleet's size."""
    def checkout(stack: Harness) -> None:
        reply = stack.post("/api/v3/vm", {"small": 1})
        assert reply.status == 200, reply.json

    small = _weighted_fleet(make_harness, 2)
    checkout(small)  # the scripts loaded: the second checkout is a steady one
    few = _bytes_sent_to_redis(lambda: checkout(small))
    large = _weighted_fleet(make_harness, 1000)
    checkout(large)
    many = _bytes_sent_to_redis(lambda: checkout(large))
    assert many < few + 500, (few, many)  # 1,900 and 51,300 bytes before
