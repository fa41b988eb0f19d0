"""What an unauthenticated caller can make grow is bounded: VMs and on-demand requests per client
and in total, and, with ``rate_limiting_enabled``, requests per minute (429 + Retry-After, counted
in Redis so every process and Lambda shares the count)."""

from __future__ import annotations

import http.client
import itertools
import json
import threading
import types
from typing import Callable

import pytest
import redis

import app
from chalicelib.api import limits, vms
from chalicelib.api.http import ApiRequest
from chalicelib.api.routes import handle
from chalicelib.manager import clones
from chalicelib.manager.dispatch import Ticker
from chalicelib.manager.hostnames import candidate_names
from chalicelib.services import Services
from chalicelib.store import CheckoutRequest
from chalicelib.store import store as store_module
from chalicelib.store.ondemand import OnDemandEntry, OnDemandStore
from tests.api.configs import CONFIG_YAML
from tests.harness import Harness, run_at_once
from tests.in_process_http import make_server
from tests.support import checkout_answers_lost, eventually, redis_commands

NO_QUEUE = types.SimpleNamespace(send=lambda messages, budget_seconds=None: None)
"""The reconcile queue of a tick whose passes the test runs itself."""


def _with(config: str, **keys: object) -> str:
    lines = "".join(f"  {key}: {value}\n" for key, value in keys.items())
    return config.replace(":config:\n", ":config:\n" + lines, 1)


def test_an_anonymous_client_holds_a_bounded_number_of_vms(make_stack: Callable[[str], Harness]) -> None:
    """The client that reached 940 running VMs in 5 minutes: it gets max_running_vms_per_user,
    then 403 until it returns some; another client is not affected."""
    stack = make_stack(_with(CONFIG_YAML, max_running_vms_per_user=3))
    stack.fill("pool1", "pool2")
    assert stack.post("/api/v3/vm", {"linux": 3}).status == 200
    stack.fill("pool1", "pool2")
    before = stack.redis_state()
    refused = stack.post("/api/v3/vm", {"pool1": 1})
    assert (refused.status, refused.json["ok"]) == (403, False)
    assert "at most 3 VMs" in refused.json["error"]
    assert stack.redis_state() == before
    refused = stack.post("/api/v3/ondemandvm", {"pool1": 1})
    assert refused.status == 403 and "at most 3 VMs" in refused.json["message"]
    # another address has its own budget
    other = ApiRequest("POST", 3, params={"name": "pool1"}, source_ip="203.0.113.5")
    others = handle(stack.services, vms.checkout_from_path, other)
    assert others.status == 200
    # returning one makes room again (one of this client's: returning the other's frees nothing here)
    running = stack.services.store.hostnames("pool1", "running") + stack.services.store.hostnames("pool2", "running")
    mine = next(host for host in running if stack.services.store.get_vm(host).raw.get("checkout")
                and host != others.body["pool1"]["hostname"].split(".")[0])
    assert stack.delete(f"/api/v3/vm/{mine}").status == 200
    assert stack.post("/api/v3/vm", {"pool2": 1}).status == 200


def test_the_service_runs_a_bounded_number_of_vms(make_stack: Callable[[str], Harness]) -> None:
    stack = make_stack(_with(CONFIG_YAML, max_running_vms=2))
    stack.fill("pool1", "pool2")
    assert stack.post("/api/v3/vm", {"pool1": 2}).status == 200
    other = ApiRequest("POST", 3, params={"name": "pool2"}, source_ip="203.0.113.5")
    refused = handle(stack.services, vms.checkout_from_path, other)
    assert refused.status == 503 and refused.headers["Retry-After"] == "60"
    assert "maximum of 2 VMs" in refused.body["error"]


def test_on_demand_requests_are_bounded_per_client_and_in_total(make_stack: Callable[[str], Harness]) -> None:
    stack = make_stack(_with(CONFIG_YAML, max_ondemand_requests_per_user=2, max_ondemand_requests=3))
    for _ in range(2):
        assert stack.post("/api/v3/ondemandvm", {"pool3": 1}).status == 201
    refused = stack.post("/api/v3/ondemandvm", {"pool3": 1})
    assert refused.status == 403 and "at most 2 on-demand requests" in refused.json["message"]
    from chalicelib.api import ondemand

    other = ApiRequest("POST", 3, params={"name": "pool3"}, source_ip="203.0.113.5")
    assert handle(stack.services, ondemand.create_from_path, other).status == 201
    third = ApiRequest("POST", 3, params={"name": "pool3"}, source_ip="203.0.113.6")
    refused_total = handle(stack.services, ondemand.create_from_path, third)
    assert refused_total.status == 503


def test_what_many_anonymous_clients_keep_in_redis_by_checking_out_and_returning_is_bounded(
        make_stack: Callable[[str], Harness], monkeypatch: pytest.MonkeyPatch) -> None:
    """Before, each owner that took a VM kept its holdings set for 400 days after giving it back
    (its entries are dropped only as that owner counts them again), and an anonymous owner is an
    address (IPv6: its /64): one caller with a /48 is 65,536 owners. Past HOLDERS_KEPT owners,
    the scheduler's tick drops the sets of the owners that took something longest ago and hold
    nothing now; an owner still holding a VM keeps its set, and its quota."""
    monkeypatch.setattr(store_module, "HOLDERS_KEPT", 10)
    stack = make_stack(_with(CONFIG_YAML.replace("size: 2", "size: 30", 1), max_running_vms_per_user=1))
    client, keys = stack.services.client, stack.services.store.keys
    stack.fill("pool1")
    assert stack.call("POST", "/api/v3/vm/pool1", client_ip="198.51.100.7").status == 200
    for round_ in range(2):
        stack.fill("pool1")
        for index in range(25):
            address = f"2001:db8:66:{100 * round_ + index:x}::1"
            stack.clock.advance(1)
            reply = stack.call("POST", "/api/v3/vm/pool1", client_ip=address)
            assert reply.status == 200, reply.json
            host = reply.json["pool1"]["hostname"].split(".")[0]
            assert stack.call("DELETE", f"/api/v3/vm/{host}", client_ip=address).status == 200
        Ticker().tick(stack.services, NO_QUEUE)
        assert len(list(client.scan_iter(keys.holdings("*")))) <= 10 + 1  # and the bystander's
    # The bystander still holds its VM: its set is kept, and its quota of 1 still counts it.
    refused = stack.call("POST", "/api/v3/vm/pool1", client_ip="198.51.100.7")
    assert refused.status == 403 and "at most 1 VMs" in refused.json["error"]


def test_a_checkout_costs_the_same_however_many_owners_hold_dead_entries(
        make_stack: Callable[[str], Harness], monkeypatch: pytest.MonkeyPatch) -> None:
    """Past HOLDERS_KEPT owners, each new owner's take swept two other owners' sets, a record read
    per entry: with 1,000 owners past the bound holding 100 dead entries each, a checkout ran 437
    Redis commands instead of 30. Takes only list their owner now; the tick sweeps."""
    monkeypatch.setattr(store_module, "HOLDERS_KEPT", 1000)
    stack = make_stack(CONFIG_YAML.replace("size: 2", "size: 10", 1))
    client, keys = stack.services.client, stack.services.store.keys
    stack.fill("pool1")

    def checkout_commands(address: str) -> int:
        client.config_resetstat()
        assert stack.call("POST", "/api/v3/vm/pool1", client_ip=address).status == 200
        return sum(redis_commands(client).values())

    checkout_commands("198.51.100.1")  # its scripts loaded
    alone = checkout_commands("198.51.100.2")
    pipe = client.pipeline(transaction=False)
    for index in range(1001):
        owner = f"{index:032x}"
        pipe.zadd(keys.holdings(owner), {f"vm:gone-{index}-{entry}": 1 for entry in range(100)})
        pipe.zadd(keys.holders, {owner: index})
    pipe.execute()
    assert checkout_commands("198.51.100.3") == alone
    Ticker().tick(stack.services, NO_QUEUE)
    assert client.zcard(keys.holders) == 1000 and not client.exists(keys.holdings(f"{0:032x}"))


def test_a_forwarded_for_header_buys_no_owner_of_its_own(make_stack: Callable[[str], Harness]) -> None:
    """The owner is API Gateway's sourceIp (the local front: the socket's peer), never an address a
    header names: with one, every request would be a new owner with budgets of its own."""
    stack = make_stack(_with(CONFIG_YAML, max_ondemand_requests_per_user=1))
    assert stack.call("POST", "/api/v3/ondemandvm", body={"pool3": 1}, client_ip="198.51.100.20",
                      headers={"X-Forwarded-For": "203.0.113.1"}).status == 201
    for index, header in enumerate(("X-Forwarded-For", "X-Real-IP", "Forwarded", "True-Client-IP")):
        refused = stack.call("POST", "/api/v3/ondemandvm", body={"pool3": 1}, client_ip="198.51.100.20",
                             headers={header: f"203.0.113.{index + 2}"})
        assert refused.status == 403 and "at most 1 on-demand requests" in refused.json["message"]


RATE_LIMITED = (_with(CONFIG_YAML, rate_limiting_enabled="true")
                + ":rate_limits:\n  vm_creation: {limit: 3, period: 60}\n  global_per_ip: {limit: 5, period: 30}\n")


def test_requests_past_the_rate_limit_get_429_with_retry_after(make_stack: Callable[[str], Harness]) -> None:
    stack = make_stack(RATE_LIMITED)
    stack.fill("pool1", "pool2")
    for _ in range(3):
        assert stack.post("/api/v3/vm/pool3").status == 503  # counted even when refused for want of VMs
    limited = stack.post("/api/v3/vm", {"pool1": 1})
    assert limited.status == 429
    assert 1 <= int(limited.headers["Retry-After"]) <= 60
    assert limited.headers["X-RateLimit-Limit"] == "3"
    assert limited.json == {"ok": False, "error": "Rate limit exceeded", "limit": 3, "period": 60,
                            "retry_after": int(limited.headers["Retry-After"])}
    assert stack.ready("pool1") and len(stack.ready("pool1")) == 2  # nothing taken
    # other kinds of request have their own budget
    for _ in range(5):
        assert stack.get("/api/v3/status").status == 200
    assert stack.get("/api/v3/vm").status == 429
    # the count lives in Redis: another process sharing it sees the same budget
    elsewhere = Services(stack.config, stack.client, clock=stack.clock)
    assert handle(elsewhere, vms.checkout_from_path, ApiRequest("POST", 3, params={"name": "pool1"},
                                                                source_ip="127.0.0.1")).status == 429
    # another address has its own
    assert handle(elsewhere, vms.checkout_from_path, ApiRequest("POST", 3, params={"name": "pool1"},
                                                                source_ip="203.0.113.5")).status == 200


def test_the_window_ends(make_stack: Callable[[str], Harness]) -> None:
    stack = make_stack(RATE_LIMITED)
    for _ in range(5):
        stack.get("/api/v3/status")
    assert stack.get("/api/v3/status").status == 429
    for key in stack.client.keys("vmpool:ratelimit:*"):
        assert 0 < stack.client.ttl(key) <= 30
        stack.client.delete(key)  # what its expiry does
    assert stack.get("/api/v3/status").status == 200


def test_what_many_addresses_keep_in_redis_under_the_rate_limits_is_bounded(
        make_stack: Callable[[str], Harness], monkeypatch: pytest.MonkeyPatch) -> None:
    """Before, each client kept a counter (about 100 bytes) per class for its window: (requests a
    second) x ``period``, 8.6 GB a day-long period at 1,000 a second from a caller with many
    addresses. A class now counts ``max_rate_limited_clients`` on their own; past it new clients
    share SHARED_RATE_COUNTERS counters, one per IPv6 /48 (or address) hashed, and a client
    counted before keeps its count: neither reset nor refused for what others send.

    The counters expire on Redis's clock, which the test's clock does not stop: with a 30-second
    period a starved run (load 14) saw the windows end mid-flood, new clients fill the emptied
    table under longer names (19,192 bytes against 18,120) or the first client's count restart.
    A period no run lasts keeps every window open until the test ends them itself."""
    monkeypatch.setattr(limits, "SHARED_RATE_COUNTERS", 64, raising=False)
    stack = make_stack(RATE_LIMITED.replace("rate_limiting_enabled: true",
                                            "rate_limiting_enabled: true\n  max_rate_limited_clients: 100")
                       .replace("global_per_ip: {limit: 5, period: 30}", "global_per_ip: {limit: 5, period: 86400}"))
    client = stack.client

    def kept() -> tuple[int, int]:
        counters = list(client.scan_iter("vmpool:ratelimit:*", count=1000))
        return len(counters), sum(client.memory_usage(key) or 0 for key in counters)

    def end_the_windows() -> None:
        """What the end of every window does: their counters and the table expire (on Redis's clock,
        which times the windows: the service's is not asked)."""
        for key in client.scan_iter("vmpool:ratelimit:global_per_ip:*"):
            client.delete(key)

    for _ in range(3):
        assert stack.call("GET", "/api/v3/status", client_ip="198.51.100.9").status == 200
    for index in range(99):
        assert stack.call("GET", "/api/v3/status", client_ip=f"192.0.2.{index}").status == 200
    # The table is full. A caller with a /48 is one client more: its /64s share one counter.
    flooder = [stack.call("GET", "/api/v3/status", client_ip=f"2001:db8:ffff:{index:x}::1") for index in range(8)]
    assert [reply.status for reply in flooder] == [200] * 5 + [429] * 3
    assert flooder[-1].json["shared"] is True and flooder[-1].headers["X-RateLimit-Limit"] == "5"
    newcomer = "203.0.113.77"
    assert limits.shared_counter(None, newcomer) != limits.shared_counter(None, "2001:db8:ffff::1")
    assert stack.call("GET", "/api/v3/status", client_ip=newcomer).status == 200
    # Thousands of addresses: no more than the table and the shared counters are ever kept.
    for index in range(2000):
        stack.call("GET", "/api/v3/status", client_ip=f"2001:db8:{index:x}::1")  # one /48 each
    counters, size = kept()
    assert counters <= 100 + 64 + 1
    for index in range(2000, 6000):
        stack.call("GET", "/api/v3/status", client_ip=f"2001:db8:{index:x}::1")
    assert kept()[0] <= counters and kept()[1] <= size + 1024
    # The client counted before the flood has its own count still: 2 more, then its own 429.
    assert [stack.call("GET", "/api/v3/status", client_ip="198.51.100.9").status for _ in range(3)] == [200, 200, 429]
    assert "shared" not in stack.call("GET", "/api/v3/status", client_ip="198.51.100.9").json
    # Windows that end mid-flood: the table empties and fills again, with no more than it holds.
    end_the_windows()
    for index in range(6000, 8000):
        stack.call("GET", "/api/v3/status", client_ip=f"2001:db8:{index:x}::1")
    assert kept()[0] <= 100 + 64 + 1
    assert client.zcard(stack.store.keys.rate_limit_clients("global_per_ip")) == 100  # full again
    # Once their windows end the table has room again: a new client is counted on its own.
    end_the_windows()
    for _ in range(5):
        assert stack.call("GET", "/api/v3/status", client_ip="2001:db8:ffff:1::1").status == 200
    assert stack.call("GET", "/api/v3/status", client_ip="2001:db8:ffff:2::1").status == 200  # another /64


def test_a_service_clock_ahead_of_redis_counts_no_more_clients_on_their_own(
        make_stack: Callable[[str], Harness]) -> None:
    """The counters expire on Redis's clock; the table of clients counted on their own was timed
    on the service's. A Lambda whose clock ran ahead of Redis's (here by a whole period) dropped
    clients from the table while their counters lived on, so new ones were counted on their own
    too: 4 counters with ``max_rate_limited_clients: 2``. The table now keeps Redis's time."""
    stack = make_stack(RATE_LIMITED.replace("rate_limiting_enabled: true",
                                            "rate_limiting_enabled: true\n  max_rate_limited_clients: 2"))
    for address in ("192.0.2.1", "192.0.2.2"):
        assert stack.call("GET", "/api/v3/status", client_ip=address).status == 200
    stack.clock.advance(31)  # the service's clock, not Redis's: both windows are still open
    for address in ("192.0.2.3", "192.0.2.4"):
        assert stack.call("GET", "/api/v3/status", client_ip=address).status == 200
    own = list(stack.client.scan_iter(stack.store.keys.rate_limit("global_per_ip", "ip:*")))
    assert len(own) == 2
    # The newcomers share a counter; the two counted first still count on their own.
    for _ in range(4):
        stack.call("GET", "/api/v3/status", client_ip="192.0.2.1")
    refused = stack.call("GET", "/api/v3/status", client_ip="192.0.2.1")
    assert refused.status == 429 and "shared" not in refused.json


def test_without_auth_a_token_is_ignored_by_the_rate_limits(make_stack: Callable[[str], Harness]) -> None:
    """Without ``:auth:`` tokens are ignored, by the rate limits too: any X-AUTH-TOKEN made a
    request ``authenticated`` (500 a minute by default against 100), a budget for a header."""
    stack = make_stack(RATE_LIMITED)
    for _ in range(5):
        assert stack.get("/api/v3/status").status == 200
    limited = stack.get("/api/v3/status", headers={"X-AUTH-TOKEN": "a" * 32})
    assert limited.status == 429 and limited.headers["X-RateLimit-Limit"] == "5"


def test_rate_limits_are_off_unless_enabled(full: Harness) -> None:
    for _ in range(120):
        assert full.get("/api/v3/status").status == 200
    assert full.client.keys("vmpool:ratelimit:*") == []


def test_a_vm_another_owner_took_after_a_lost_checkout_counts_for_that_owner_only(
        make_stack: Callable[[str], Harness]) -> None:
    """A checkout whose answer was lost leaves its VM unconfirmed; a pass gives it back to ready
    and another client checks it out. Before: the VM still counted against the first client
    (its holdings named the VM, and the VM was running), so with a limit of 1 that client was
    refused (403 "at most 1 VMs") while holding nothing."""
    stack = make_stack(_with(CONFIG_YAML, max_running_vms_per_user=1))
    stack.fill("pool3")
    store = stack.services.store
    with checkout_answers_lost(store):
        assert stack.post("/api/v3/vm", {"pool3": 1}).status == 503
    (lost,) = store.hostnames("pool3", "running")
    stack.clock.advance(61)
    assert lost in stack.reconcile("pool3").returned
    other = ApiRequest("POST", 3, params={"name": "pool3"}, source_ip="203.0.113.5")
    taken = handle(stack.services, vms.checkout_from_path, other)
    assert (taken.status, taken.body["pool3"]["hostname"]) == (200, f"{lost}.three.example.com")
    stack.fill("pool3")
    assert stack.post("/api/v3/vm", {"pool3": 1}).status == 200
    stack.fill("pool3")
    refused = handle(stack.services, vms.checkout_from_path, other)
    assert refused.status == 403  # the other client holds its one VM


def test_a_returned_vms_name_taken_by_another_clients_vm_does_not_count_for_its_first_owner(
        make_stack: Callable[[str], Harness], monkeypatch: pytest.MonkeyPatch) -> None:
    """VM names come back: a destroyed VM's record lives ``data_ttl``, then its name (one of 900
    word names) may be given to a new clone. A client's holdings still name the VMs it returned
    until it next checks out; before, a VM of that name then running for another client counted
    for it too: with a limit of 1, it was refused (403 "at most 1 VMs") holding nothing."""
    stack = make_stack(_with(CONFIG_YAML, max_running_vms_per_user=1))
    stack.fill("pool1", "pool3")
    reply = stack.post("/api/v3/vm", {"pool3": 1})
    assert reply.status == 200, reply.raw
    returned = reply.json["pool3"]["hostname"].split(".")[0]
    assert stack.delete(f"/api/v3/vm/{returned}").status == 200
    stack.run_passes("pool3")
    assert stack.state_of(returned) == "destroyed"
    stack.client.delete(stack.store.keys.vm(returned))  # its data_ttl ended
    # Another client takes the pool's VM; the clone that replaces it gets the name back, and a
    # third client takes that one.
    monkeypatch.setattr(clones, "candidate_names", lambda count, prefix="": [returned, *candidate_names(count, prefix)])
    for address in ("203.0.113.5", "203.0.113.6"):
        stack.run_passes("pool3")
        other = ApiRequest("POST", 3, params={"name": "pool3"}, source_ip=address)
        assert handle(stack.services, vms.checkout_from_path, other).status == 200
    assert stack.state_of(returned) == "running"
    reply = stack.post("/api/v3/vm", {"pool1": 1})
    assert reply.status == 200, reply.raw


def test_a_request_id_taken_again_by_another_client_does_not_count_for_its_first_owner(
        make_stack: Callable[[str], Harness]) -> None:
    """The same for an on-demand request whose id the client chose: once its record is gone
    (``data_ttl``), another client may open a request under that id; it counted for the first
    owner too (403 "at most 1 on-demand requests open" for a client with none open)."""
    stack = make_stack(_with(CONFIG_YAML, max_ondemand_requests_per_user=1))
    assert stack.post("/api/v3/ondemandvm", {"pool3": 1, "request_id": "ci-1"}).status == 201
    assert stack.delete("/api/v3/ondemandvm/ci-1").status == 200
    keys = stack.store.keys
    stack.client.delete(keys.ondemand("ci-1"), keys.ondemand_vms("ci-1"))  # its data_ttl ended
    other = stack.call("POST", "/api/v3/ondemandvm", body={"pool3": 1, "request_id": "ci-1"}, client_ip="203.0.113.5")
    assert other.status == 201, other.raw
    reply = stack.post("/api/v3/ondemandvm", {"pool3": 1})
    assert reply.status == 201, reply.raw


# --- what the owner's quota costs -----------------------------------------------------------------


def _ready_vms(store: store_module.Store, pool: str, hostnames: list[str], now: float) -> None:
    """Ready VMs as the manager makes them: reserved pending records, then pending -> ready."""
    slots = len(hostnames)
    assert store.reserve_clones(pool, slots, slots, "tmpl", "example.com", hostnames, now) == hostnames
    for hostname in hostnames:
        assert store.move(hostname, pool, "pending", "ready", now, ready_at=now)


def _owner_holding(redis_client: redis.Redis, held: int) -> tuple[store_module.Store, store_module.Quota, str]:
    """A store (its own key prefix) whose one anonymous owner holds ``held`` VMs of ``pool``,
    far below its limit of 100, with ready VMs left to take."""
    store, pool = store_module.Store(redis_client, prefix=f"held{held}:"), "pool"
    quota = store_module.Quota("addr:203.0.113.1", max_owner_vms=100, max_vms=1000, pools=[pool],
                               max_owner_requests=10, max_requests=100)
    _ready_vms(store, pool, [f"vm-{n}" for n in range(held + 2)], 1000.0)
    for _ in range(held):
        assert store.checkout([CheckoutRequest(pool, [pool], 1)], 1000.0, {}, quota).ok
    return store, quota, pool


def test_a_checkout_costs_redis_the_same_however_many_vms_its_owner_holds(redis_client: redis.Redis) -> None:
    """Before, the quota read the record of every VM the owner held (an HMGET each, in the
    checkout's script): an anonymous client holding 500 VMs paid some 370 Redis commands a
    checkout. Far below its limit, an owner's holdings are bounded by their scores alone."""

    def checkout_commands(held: int) -> dict[str, int]:
        store, quota, pool = _owner_holding(redis_client, held)
        redis_client.config_resetstat()
        assert store.checkout([CheckoutRequest(pool, [pool], 1)], 1000.0, {}, quota).ok
        return redis_commands(redis_client)

    assert checkout_commands(1) == checkout_commands(60)


def test_an_on_demand_request_costs_redis_the_same_however_many_vms_its_owner_holds(
        redis_client: redis.Redis) -> None:
    """The same for a request: the owner's open requests are at most its holdings' 'od:' entries,
    counted by name (one command), not by reading each entry's record."""

    def create_commands(held: int) -> dict[str, int]:
        store, quota, pool = _owner_holding(redis_client, held)
        requests = OnDemandStore(store)
        assert requests.create("first", [OnDemandEntry(pool, pool, 1)], 1000.0, 3600, 2, quota=quota)
        redis_client.config_resetstat()
        assert requests.create("second", [OnDemandEntry(pool, pool, 2)], 1000.0, 3600, 2, quota=quota)
        return redis_commands(redis_client)

    assert create_commands(12) == create_commands(60)


def test_an_owner_taking_and_returning_vms_keeps_its_quota_and_a_bounded_holdings_set(
        make_stack: Callable[[str], Harness]) -> None:
    """Returned VMs stay in the owner's holdings until its bound reaches its limit; then one count
    drops them all. The set never outgrows the limit, and a client that gave its VMs back is
    served again, however many it took before."""
    stack = make_stack(_with(CONFIG_YAML, max_running_vms_per_user=3))
    client = stack.client
    key = limits.quota(stack.services, ApiRequest("POST", 3, source_ip=stack.client_ip), None).holdings_key(
        stack.store.keys)
    for _ in range(8):
        stack.fill("pool1", "pool2")
        reply = stack.post("/api/v3/vm", {"linux": 2})
        assert reply.status == 200, reply.raw
        for host in reply.json["linux"]["hostname"]:
            assert stack.delete(f"/api/v3/vm/{host.split('.')[0]}").status == 200
        assert client.zcard(key) <= 3
    stack.fill("pool1", "pool2")
    assert stack.post("/api/v3/vm", {"linux": 3}).status == 200
    assert client.zcard(key) == 3
    refused = stack.post("/api/v3/vm", {"linux": 1})  # the fourth ready VM
    assert refused.status == 403 and "at most 3 VMs" in refused.json["error"]


def test_an_on_demand_request_counts_every_vm_it_asked_for_open_and_ready(
        make_stack: Callable[[str], Harness]) -> None:
    """A request's holdings entry counts the VMs it asked for (its score), not 1: a bound that
    counted entries would let an owner with a request of 3 open check out 2 more past its 4."""
    stack = make_stack(_with(CONFIG_YAML, max_running_vms_per_user=4))
    stack.fill("pool1")
    reply = stack.post("/api/v3/ondemandvm", {"pool3": 3})
    assert reply.status == 201, reply.raw
    request_id = reply.json["request_id"]
    before = stack.redis_state()
    refused = stack.post("/api/v3/vm", {"pool1": 2})
    assert refused.status == 403 and "at most 4 VMs" in refused.json["error"]
    assert stack.redis_state() == before
    taken = stack.post("/api/v3/vm", {"pool1": 1})
    assert taken.status == 200
    stack.run_passes("pool3")
    ready = stack.get(f"/api/v3/ondemandvm/{request_id}")
    assert ready.status == 200 and ready.json["ready"] is True
    assert stack.delete(f"/api/v3/vm/{taken.json['pool1']['hostname'].split('.')[0]}").status == 200
    stack.fill("pool1")
    refused = stack.post("/api/v3/vm", {"pool1": 2})
    assert refused.status == 403 and "at most 4 VMs" in refused.json["error"]
    assert stack.post("/api/v3/vm", {"pool1": 1}).status == 200


def test_checkouts_and_requests_sent_together_by_an_owner_one_vm_short_of_its_limit_get_one_vm(
        make_stack: Callable[[str], Harness]) -> None:
    """Over HTTP, at once, from one address holding 2 VMs of its 3: the first to reach Redis fits
    by the holdings' bound alone, the others' bound reaches the limit and their count refuses them
    (403): one VM more, whatever arrives first, a checkout or an on-demand request."""
    stack = make_stack(_with(CONFIG_YAML.replace("size: 2", "size: 8"), max_running_vms_per_user=3))
    stack.fill("pool1", "pool2")
    assert stack.post("/api/v3/vm", {"linux": 2}).status == 200
    server = make_server(app.app, "127.0.0.1", 0)  # a port the kernel picks
    serving = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    serving.start()
    sent = itertools.count()
    statuses: list[tuple[str, int]] = []

    def send() -> None:
        path = "/api/v3/ondemandvm" if next(sent) % 4 == 0 else "/api/v3/vm"
        connection = http.client.HTTPConnection("127.0.0.1", server.server_port, timeout=30)
        try:
            connection.request("POST", path, body=json.dumps({"pool1": 1}),
                               headers={"Content-Type": "application/json"})
            statuses.append((path, connection.getresponse().status))
        finally:
            connection.close()

    try:
        run_at_once(send, 8)
    finally:
        server.shutdown()
        server.server_close()
        serving.join(5)
    served = [(path, status) for path, status in statuses if status in (200, 201)]
    assert len(served) == 1 and len(statuses) == 8, statuses
    assert {status for _, status in statuses} - {200, 201} == {403}
    stack.run_passes("pool1")  # a request served is built and delivered
    assert stack.count("pool1", "running") + stack.count("pool2", "running") == 3


def _open_requests(store: store_module.Store, pool: str, weights: list[int]) -> OnDemandStore:
    """On-demand requests for ``weights`` VMs each, open, by as many owners."""
    requests = OnDemandStore(store)
    for n, weight in enumerate(weights):
        quota = store_module.Quota(f"addr:198.51.100.{n % 250}-{n}", max_owner_vms=100, max_vms=1_000_000,
                                   pools=[pool], max_owner_requests=10, max_requests=10_000)
        assert requests.create(f"req-{n}", [OnDemandEntry(pool, pool, weight)], 1000.0, 3600, 2, quota=quota)
    return requests


def _waiting(store: store_module.Store) -> int:
    """What the open requests still wait for, counted from their scores."""
    scores = store.client.zrange(store.keys.ondemand_open_requests, 0, -1, withscores=True)
    return int(sum(max(score, 0) for _, score in scores))


def test_a_checkout_costs_redis_the_same_however_many_requests_are_open(redis_client: redis.Redis) -> None:
    """The service's limit counts the VMs open on-demand requests still wait for. A checkout read
    every open request's score for it (one ZRANGE, but of 1,000 entries, each added up in Lua,
    with 1,000 open); it reads their sum, kept by the scripts that open, count down and close
    requests (lua/open_waiting.lua): the same commands, none reading the set."""

    def checkout_commands(open_requests: int) -> dict[str, int]:
        store, pool = store_module.Store(redis_client, prefix=f"open{open_requests}:"), "pool"
        quota = store_module.Quota("addr:203.0.113.1", max_owner_vms=100, max_vms=1_000_000, pools=[pool])
        _ready_vms(store, pool, ["vm-0", "vm-1"], 1000.0)
        _open_requests(store, pool, [1] * open_requests)
        assert store.checkout([CheckoutRequest(pool, [pool], 1)], 1000.0, {}, quota).ok  # scripts loaded
        assert _waiting(store) == open_requests
        redis_client.config_resetstat()
        assert store.checkout([CheckoutRequest(pool, [pool], 1)], 1000.0, {}, quota).ok
        return redis_commands(redis_client)

    few, many = checkout_commands(1), checkout_commands(1000)
    assert few == many
    assert "zrange" not in many, "the checkout read the open requests' set"


def test_the_open_requests_sum_follows_each_request_and_the_service_limit_counts_it(
        redis_client: redis.Redis) -> None:
    store, pool = store_module.Store(redis_client, prefix="waiting:"), "pool"
    _ready_vms(store, pool, [f"vm-{n}" for n in range(4)], 1000.0)
    requests = _open_requests(store, pool, [2, 1, 3])
    waiting_key = store.keys.ondemand_open_waiting
    assert int(redis_client.get(waiting_key)) == _waiting(store) == 6

    # Two VMs of the first request built and delivered: it waits for none, then it is ready.
    names = [f"od-{n}" for n in range(2)]
    reservation = requests.reserve("req-0", pool, 10, 3, "tmpl", "example.com", names, 1000.0)
    assert list(reservation.reserved) == names, reservation
    for name in names:
        requests.deliver(name, pool, 1001.0, "10.0.0.1", "esx")
        assert int(redis_client.get(waiting_key)) == _waiting(store)
    assert _waiting(store) == 4
    assert requests.end("req-2", "deleted", "deleted by its user", "its request was deleted", 1002.0).result == "ended"
    assert int(redis_client.get(waiting_key)) == _waiting(store) == 1

    # 2 running (the delivered VMs) + 1 still to come: a limit of 4 leaves room for one VM, not two.
    quota = store_module.Quota("addr:203.0.113.9", max_owner_vms=100, max_vms=4, pools=[pool])
    store.recount_running([pool], 1002.0)
    with pytest.raises(store_module.QuotaExceeded):
        store.checkout([CheckoutRequest(pool, [pool], 2)], 1002.0, {}, quota)
    redis_client.delete(waiting_key)  # lost: counted again whole, the same
    with pytest.raises(store_module.QuotaExceeded):
        store.checkout([CheckoutRequest(pool, [pool], 2)], 1002.0, {}, quota)
    assert int(redis_client.get(waiting_key)) == 1
    assert store.checkout([CheckoutRequest(pool, [pool], 1)], 1002.0, {}, quota).ok


def test_the_open_requests_sum_an_earlier_release_did_not_keep_is_counted_again_within_a_minute(
        redis_client: redis.Redis) -> None:
    """During a deploy (or after a rollback) releases up to 60eceaa deliver and end on-demand
    requests too: they change the open requests' scores, never the sum (docs/reliability.md,
    "Upgrades and rollbacks"). The sum then counts VMs already running: checkouts were refused
    at the service's limit (503) until the next on-demand request counted it again. It lives a
    minute at most from its last whole count now (Redis' own clock: its lifetime is read)."""
    store, pool = store_module.Store(redis_client, prefix="earlier:"), "pool"
    _ready_vms(store, pool, [f"vm-{n}" for n in range(4)], 1000.0)
    _open_requests(store, pool, [2])
    waiting_key = store.keys.ondemand_open_waiting
    assert int(redis_client.get(waiting_key)) == 2
    assert 0 < redis_client.pttl(waiting_key) <= 60_000
    # The earlier release's ondemand_end.lua: the request leaves the open set, the sum stays.
    [(request_id, _)] = redis_client.zrange(store.keys.ondemand_open_requests, 0, -1, withscores=True)
    redis_client.zrem(store.keys.ondemand_open_requests, request_id)
    quota = store_module.Quota("addr:203.0.113.7", max_owner_vms=100, max_vms=2, pools=[pool])
    store.recount_running([pool], 1001.0)
    assert 0 < redis_client.pttl(waiting_key) <= 60_000  # checkouts meanwhile do not make it last
    with pytest.raises(store_module.QuotaExceeded):
        store.checkout([CheckoutRequest(pool, [pool], 2)], 1001.0, {}, quota)
    assert 0 < redis_client.pttl(waiting_key) <= 60_000
    redis_client.pexpire(waiting_key, 1)  # its minute over, as Redis' clock counts it
    eventually(lambda: not redis_client.exists(waiting_key), 5, "the sum expired")
    assert store.checkout([CheckoutRequest(pool, [pool], 2)], 1001.0, {}, quota).ok
    assert int(redis_client.get(waiting_key)) == 0


def test_a_shorter_period_pushed_later_counts_no_more_clients_on_their_own(
        make_stack: Callable[[str], Harness]) -> None:
    """The table of clients counted on their own was set to expire when the newest window ended:
    after a config push lowering ``period``, a client counted under the short period made the
    table expire while the counters of the long period lived on, and newcomers were counted on
    their own too (3 counters with ``max_rate_limited_clients: 2``). The table now lasts as long
    as its longest window."""
    stack = make_stack(RATE_LIMITED)
    store, client = stack.store, stack.client

    def end_windows_within(seconds: int) -> None:
        """What Redis's clock running ``seconds`` on does: every key that expires by then is gone."""
        for key in client.scan_iter("vmpool:ratelimit:*"):
            if 0 <= client.pttl(key) <= seconds * 1000:
                client.delete(key)
        now_s, now_us = client.time()
        client.zremrangebyscore(store.keys.rate_limit_clients("global_per_ip"), "-inf",
                                now_s * 1000 + now_us // 1000 + seconds * 1000)

    assert not store.count_request("global_per_ip", "ip:192.0.2.1", 0, 86400, 2).shared  # the old period
    assert not store.count_request("global_per_ip", "ip:192.0.2.2", 0, 30, 2).shared  # pushed: 30 s
    end_windows_within(60)  # the second client's window ends, the first's does not
    assert not store.count_request("global_per_ip", "ip:192.0.2.3", 1, 30, 2).shared
    assert store.count_request("global_per_ip", "ip:192.0.2.4", 2, 30, 2).shared
    own = list(client.scan_iter(store.keys.rate_limit("global_per_ip", "ip:*")))
    assert len(own) == 2
