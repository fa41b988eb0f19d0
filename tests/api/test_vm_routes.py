"""The /vm routes doing their job: list, check out (body and path forms, aliases, all or nothing),
describe, change lifetime and tags, return."""

from __future__ import annotations

from datetime import datetime
from typing import Callable

import pytest

from chalicelib.store import store as store_module
from chalicelib.store.store import UNUSED_RECORD_TTL_SECONDS
from tests.api.configs import CONFIG_YAML
from tests.harness import Harness
from tests.support import RedisRoundTrips


def _counts(stack: Harness, pool: str) -> dict[str, int]:
    return stack.services.store.counts([pool])[pool]


def _short(hostname: str) -> str:
    return hostname.split(".", 1)[0]


def test_list_pools_in_config_order_without_aliases(full: Harness) -> None:
    reply = full.get("/api/v3/vm")
    assert (reply.status, reply.json) == (200, ["pool1", "pool2", "pool3"])


def test_checkout_one_vm_moves_it_from_ready_to_running(full: Harness) -> None:
    ready_before = set(full.ready("pool1"))
    reply = full.post("/api/v3/vm", {"pool1": 1})
    assert reply.status == 200
    assert list(reply.json) == ["ok", "pool1"]
    hostname = reply.json["pool1"]["hostname"]
    assert isinstance(hostname, str) and hostname.endswith(".one.example.com")
    assert _short(hostname) in ready_before
    assert _short(hostname) not in full.ready("pool1")
    assert full.services.store.hostnames("pool1", "running") == [_short(hostname)]
    assert full.services.store.get_vm(_short(hostname)).state == "running"


def test_checkout_counts_as_strings_give_arrays(full: Harness) -> None:
    reply = full.post("/api/v3/vm", {"pool2": "2", "pool3": "1"})
    assert reply.status == 200
    assert list(reply.json) == ["ok", "pool2", "pool3"]
    hostnames = reply.json["pool2"]["hostname"]
    assert isinstance(hostnames, list) and len(set(hostnames)) == 2
    assert all(name.endswith(".example.com") for name in hostnames)
    assert reply.json["pool3"]["hostname"].endswith(".three.example.com")
    assert _counts(full, "pool2")["ready"] == 0


def test_alias_checkout_spreads_over_its_pools(full: Harness) -> None:
    """linux = pool1 + pool2, two ready each: four VMs take both pools' VMs, named by their pool's
    domain, under the alias as requested."""
    reply = full.post("/api/v3/vm", {"linux": 4})
    assert reply.status == 200
    assert list(reply.json) == ["ok", "linux"]
    hostnames = reply.json["linux"]["hostname"]
    assert len(set(hostnames)) == 4
    assert sum(name.endswith(".one.example.com") for name in hostnames) == 2
    assert _counts(full, "pool1")["running"] == 2 and _counts(full, "pool2")["running"] == 2


def test_alias_checkout_takes_what_its_other_pool_has(full: Harness) -> None:
    full.post("/api/v3/vm", {"pool1": 2})
    reply = full.post("/api/v3/vm", {"linux": 2})
    assert reply.status == 200
    assert all(not name.endswith(".one.example.com") for name in reply.json["linux"]["hostname"])
    assert _counts(full, "pool2")["ready"] == 0


def test_path_checkout_counts_each_mention(full: Harness) -> None:
    reply = full.post("/api/v3/vm/pool1+pool2+pool1")
    assert reply.status == 200
    assert list(reply.json) == ["ok", "pool1", "pool2"]
    assert len(reply.json["pool1"]["hostname"]) == 2
    assert isinstance(reply.json["pool2"]["hostname"], str)


def test_short_of_one_pool_checks_out_nothing(full: Harness) -> None:
    full.post("/api/v3/vm", {"pool3": 1})
    before = full.redis_state()
    reply = full.post("/api/v3/vm", {"pool1": 2, "pool2": 1, "pool3": 1})
    assert (reply.status, reply.json) == (503, {"ok": False})
    assert full.redis_state() == before
    assert len(full.ready("pool1")) == 2 and len(full.ready("pool2")) == 2


def test_no_vm_is_handed_out_twice(full: Harness) -> None:
    seen: list[str] = []
    for _ in range(2):
        for pool in ("pool1", "pool2"):
            seen.append(full.post(f"/api/v3/vm/{pool}").json[pool]["hostname"])
    assert len(set(seen)) == 4
    assert full.post("/api/v3/vm/linux").status == 503


def test_describe_a_running_vm(full: Harness) -> None:
    host = full.checkout("pool1")
    full.clock.advance(1800)
    reply = full.get(f"/api/v3/vm/{host}")
    assert reply.status == 200
    assert list(reply.json) == ["ok", host]
    vm = reply.json[host]
    assert vm["template"] == "pool1"
    assert vm["lifetime"] == 2
    assert vm["state"] == "running"
    assert (vm["running"], vm["remaining"]) == (0.5, 1.5)
    start = datetime.fromisoformat(vm["start_time"])
    end = datetime.fromisoformat(vm["end_time"])
    assert vm["start_time"].endswith("+00:00")
    assert (end - start).total_seconds() == 2 * 3600
    assert vm["fqdn"] == f"{host}.one.example.com"
    assert vm["ip"] and vm["host"] == "dummy-host"
    assert (vm["tags"], vm["snapshots"], vm["disk"]) == ({}, [], [])


def test_describe_by_fqdn_or_in_capitals(full: Harness) -> None:
    host = full.ready("pool2")[0]
    for name in (f"{host}.example.com", f"{host}.any.other.domain", host.upper()):
        reply = full.get(f"/api/v3/vm/{name}")
        assert reply.status == 200, name
        assert reply.json[host]["state"] == "ready"
        assert "running" not in reply.json[host] and "start_time" not in reply.json[host]


def test_change_lifetime(full: Harness) -> None:
    host = full.checkout("pool1")
    reply = full.put(f"/api/v3/vm/{host}", {"lifetime": "5"})
    assert (reply.status, reply.json) == (200, {"ok": True})
    vm = full.get(f"/api/v3/vm/{host}").json[host]
    assert (vm["lifetime"], vm["remaining"]) == (5, 5.0)


@pytest.mark.parametrize(("sent", "hours"), [
    ("4h", 4), ("4 hours", 4), ("4 Hour", 4), ("4hrs", 4), (" 4 ", 4), ("+4", 4),
    ("2.5", 3), (2.5, 3), ("2.0", 2), (2.0, 2), ("2.", 2), (0.25, 1), (1e2, 100),
])
def test_lifetimes_vmpooler_reads_with_to_i_are_hours(full: Harness, sent: object, hours: int) -> None:
    """vmpooler reads a PUT's lifetime with Ruby's ``to_i``, so curl scripts sending ``"4h"`` or
    ``"2.5"`` work there; they were a 400 here. A fraction is rounded up (vmpooler cut 2.5 hours
    to 2: the VM reaped half an hour before its user asked)."""
    host = full.checkout("pool1")
    assert full.put(f"/api/v3/vm/{host}", {"lifetime": sent}).json == {"ok": True}
    assert full.describe(host)["lifetime"] == hours


def test_tags_are_answered_in_the_order_first_set_as_vmpooler_does(full: Harness) -> None:
    """vmpooler's GET /vm lists a VM's ``tag:<name>`` hash fields in Redis's order: the order
    each tag was first set (a tag set again keeps its place), which ``floaty list --active``
    prints. Ours are the same fields, in the same order."""
    host = full.checkout("pool1")
    assert full.put(f"/api/v3/vm/{host}", {"tags": {"url": "b.example", "project": "ci"}}).status == 200
    assert full.put(f"/api/v3/vm/{host}", {"tags": {"owner": "alice", "url": "a.example"}}).status == 200
    for version in (1, 3):
        tags = full.get(f"/api/v{version}/vm/{host}").json[host]["tags"]
        assert list(tags.items()) == [("url", "a.example"), ("project", "ci"), ("owner", "alice")]


def test_tags_keep_the_order_first_set_after_disks_and_snapshots(full: Harness) -> None:
    """A disk or snapshot (its task in flight, two snapshot ids) made the VM's Redis hash hold a
    field over 64 bytes: Redis turned it into a hash table, and GET /vm (and ``floaty list
    --active``) answered the tags in that table's order, not the order first set. vmpooler keeps
    its tasks and snapshot times out of such long fields: its order held (specrun21, floaty
    1.9.1: ``modify --tags``, ``modify --disk 8``, ``snapshot``, then ``query``)."""
    host = full.checkout("pool1")
    assert full.put(f"/api/v3/vm/{host}", {"tags": {"url": "a.example", "project": "ci"}}).status == 200
    assert full.post(f"/api/v3/vm/{host}/disk/8").status == 202
    for _ in range(2):
        assert full.post(f"/api/v3/vm/{host}/snapshot").status == 202
        full.run_passes("pool1")
    assert full.put(f"/api/v3/vm/{host}", {"tags": {"owner": "alice", "url": "b.example",
                                                    "created_by": "floaty"}}).status == 200
    vm = full.get(f"/api/v3/vm/{host}").json[host]
    assert (len(vm["snapshots"]), vm["disk"]) == (2, ["+8gb"])  # the tasks ran
    for version in (1, 3):
        tags = full.get(f"/api/v{version}/vm/{host}").json[host]["tags"]
        assert list(tags.items()) == [("url", "b.example"), ("project", "ci"), ("owner", "alice"),
                                      ("created_by", "floaty")]


def test_tags_set_before_tag_order_was_kept_stay_first(full: Harness) -> None:
    """A VM tagged by a release that kept no ``tag_order`` (the field absent), tagged again after
    the upgrade: its earlier tags are answered first, then the new ones in the order set."""
    host = full.checkout("pool1")
    assert full.put(f"/api/v3/vm/{host}", {"tags": {"url": "a.example", "project": "ci"}}).status == 200
    full.client.hdel(full.store.keys.vm(host), "tag_order")
    assert full.put(f"/api/v3/vm/{host}", {"tags": {"owner": "alice", "created_by": "floaty"}}).status == 200
    tags = full.get(f"/api/v3/vm/{host}").json[host]["tags"]
    assert list(tags) == ["url", "project", "owner", "created_by"]


def test_tags_are_stored_filtered_and_counted(full: Harness) -> None:
    host = full.checkout("pool1")
    reply = full.put(f"/api/v3/vm/{host}", {"tags": {
        "project": "ci", "url": "foo.com/something.html", "owner": "",
    }})
    assert (reply.status, reply.json) == (200, {"ok": True})
    vm = full.get(f"/api/v3/vm/{host}").json[host]
    assert vm["tags"] == {"project": "ci", "url": "foo.com"}  # tagfilter; the empty tag is skipped
    summary = full.get("/api/v3/summary/tag").json
    assert summary["tag"]["project"] == {"ci": 1, "total": 1}


def test_empty_body_changes_nothing(full: Harness) -> None:
    """vmpooler's answer since its input validation (v3.rb sanitize_json_body reads an empty body
    as {}): 200, nothing changed (docs/compatibility.md)."""
    host = full.checkout("pool1")
    before = full.redis_state()
    for body in (None, {}):
        assert full.put(f"/api/v3/vm/{host}", body).json == {"ok": True}
        assert full.put("/api/v3/vm/nosuchvm", body).status == 404
    assert full.redis_state() == before


def test_return_a_vm(full: Harness) -> None:
    host = full.checkout("pool2")
    reply = full.delete(f"/api/v3/vm/{host}.example.com")
    assert (reply.status, reply.json) == (200, {"ok": True})
    counts = _counts(full, "pool2")
    assert (counts["running"], counts["completed"]) == (0, 1)
    assert full.get(f"/api/v3/vm/{host}").json[host]["state"] == "destroyed"


def test_destroyed_vms_keep_their_records_data_ttl_up_to_a_count(full: Harness,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """A destroyed VM's record lived data_ttl (a week by default) whatever the churn: ~840 bytes,
    up to ~10 KB with tags, and 10,000 checkouts a day kept ~70,000. The newest
    DESTROYED_RECORDS_KEPT (here 3) still answer ``destroyed`` for data_ttl, as vmpooler's do;
    older ones expire within the hour, and a record whose name a new VM took is left alone."""
    monkeypatch.setattr(store_module, "DESTROYED_RECORDS_KEPT", 3)
    data_ttl = full.services.store.data_ttl_seconds
    destroyed: list[str] = []
    for round_ in range(5):
        if round_ == 3:  # a new VM took the first one's name (the record as reserve_clones writes it)
            full.client.persist(full.store.keys.vm(destroyed[0]))
            full.client.hset(full.store.keys.vm(destroyed[0]), "state", "pending")
        host = full.checkout("pool2")
        assert full.delete(f"/api/v3/vm/{host}").status == 200
        full.run_passes("pool2")
        assert full.state_of(host) == "destroyed"
        destroyed.append(host)
        full.clock.advance(60)
    ttls = [full.client.ttl(full.store.keys.vm(host)) for host in destroyed]
    assert ttls[0] == -1 and 0 < ttls[1] <= UNUSED_RECORD_TTL_SECONDS, ttls
    assert all(data_ttl - 60 <= ttl <= data_ttl for ttl in ttls[2:]), ttls
    assert full.client.zcard(full.store.keys.destroyed) == 3
    for host in destroyed[2:]:
        assert full.get(f"/api/v3/vm/{host}").json[host]["state"] == "destroyed"


def test_vms_no_one_held_never_push_out_the_records_of_vms_someone_held(
        make_stack: Callable[..., Harness], monkeypatch: pytest.MonkeyPatch) -> None:
    """Ready VMs recycled unused (ready_ttl here; a reset or a template change alike) joined the
    newest DESTROYED_RECORDS_KEPT as a returned VM did: pools recycling their ready VMs pushed a
    user's returned VM out within the hour (GET /vm: 404, not ``destroyed``). Now the records of
    VMs no one held go first; held ones (a checkout, an on-demand delivery) only make room for
    each other."""
    monkeypatch.setattr(store_module, "DESTROYED_RECORDS_KEPT", 3)
    stack = make_stack(CONFIG_YAML.replace("    size: 1\n", "    size: 1\n    ready_ttl: 1\n"))
    stack.fill()
    data_ttl = stack.services.store.data_ttl_seconds
    returned = stack.checkout("pool2")
    assert stack.delete(f"/api/v3/vm/{returned}").status == 200
    stack.run_passes("pool2")
    recycled: list[str] = []
    for _ in range(4):  # pool3's one ready VM passes its ready_ttl, is destroyed and replaced
        recycled += stack.ready("pool3")
        stack.clock.advance(120)
        stack.run_passes("pool3")
    assert [stack.state_of(host) for host in recycled] == ["destroyed"] * 4
    assert stack.get(f"/api/v3/vm/{returned}").json[returned]["state"] == "destroyed"
    assert stack.client.ttl(stack.store.keys.vm(returned)) > data_ttl - 3600
    assert stack.client.zcard(stack.store.keys.destroyed) == 3
    assert 0 < stack.client.ttl(stack.store.keys.vm(recycled[0])) <= UNUSED_RECORD_TTL_SECONDS


def test_return_is_one_redis_round_trip_and_errors_still_say_why(full: Harness) -> None:
    host = full.checkout("pool2")
    with RedisRoundTrips() as sent:
        assert full.delete(f"/api/v3/vm/{host}").status == 200
    assert sent.count == 1  # the move itself finds the VM's pool and checks it is running

    again = full.delete(f"/api/v3/vm/{host}")  # returned by its user already: ok (test_errors.py)
    assert (again.status, again.json) == (200, {"ok": True})
    ready = full.ready("pool2")[0]
    not_running = full.delete(f"/api/v3/vm/{ready}")
    assert (not_running.status, not_running.json["error"]) == (404, f"VM {ready} is not running")
    unknown = full.delete("/api/v3/vm/nosuchvm")
    assert (unknown.status, unknown.json["error"]) == (404, "VM nosuchvm not found")
    assert _counts(full, "pool2")["completed"] == 1


def test_any_content_type_is_read_as_json(full: Harness) -> None:
    """curl -d sends application/x-www-form-urlencoded; vmpooler reads the JSON anyway."""
    form = full.request("POST", "/api/v3/vm", {"pool1": 1},
                            headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert form.status == 200 and "pool1" in form.json
    odd = full.request("GET", "/api/v3/vm", headers={"Content-Type": "application/xml"})
    assert (odd.status, odd.json) == (200, ["pool1", "pool2", "pool3"])


def test_a_path_checkout_reads_no_body(full: Harness) -> None:
    """vmpooler's API-v3.md shows ``curl -d --url vmpooler.example.com/api/v3/vm/debian-7-i386``:
    curl takes ``--url`` as the data, so the checkout carries the body ``--url``, form-encoded.
    vmpooler's POST /vm/<names> never reads its body; scripts copied from those docs work only
    if ours does not either (a 400 "Invalid JSON" would refuse them)."""
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    reply = full.request("POST", "/api/v3/vm/pool1+pool1+pool2", b"--url", headers=form)
    assert reply.status == 200, reply.json
    assert list(reply.json) == ["ok", "pool1", "pool2"] and len(reply.json["pool1"]["hostname"]) == 2


def test_a_vm_whose_own_name_has_capitals_is_found_by_it(full: Harness) -> None:
    """Names the service makes are lower-case, and the API reads a name in capitals as its
    lower-case DNS spelling (above). A VM whose own name has capitals (made by hand in the pool
    folder, so discovered and destroyed; or named under an upper-case prefix before prefixes had
    to be lower-case) is found by that name, as vmpooler finds it. Before: 404 "VM stray-vm not
    found" for the VM the pool had just discovered, and a running one could never be returned."""
    full.provider.create_by_hand(full.pool("pool1"), "Stray-VM")
    full.reconcile("pool1")
    reply = full.get("/api/v1/vm/Stray-VM.one.example.com")
    assert (reply.status, reply.json["Stray-VM"]["state"]) == (200, "discovered")
    full.clock.advance(1)
    full.reconcile("pool1")
    described = full.get("/api/v3/vm/Stray-VM").json["Stray-VM"]
    assert described["state"] == "destroyed"
    assert described["reason"] == "found in the pool folder but not created by vmpool"
    assert full.get("/api/v3/vm/stray-vm").status == 404  # another name

    host = full.checkout("pool2")
    old_name = f"CI-{host}"  # as a prefix 'CI-' named it
    full.client.rename(f"vmpool:vm:{host}", f"vmpool:vm:{old_name}")
    full.client.hset(f"vmpool:vm:{old_name}", "name", old_name)
    full.client.zrem("vmpool:pool:pool2:running", host)
    full.client.zadd("vmpool:pool:pool2:running", {old_name: full.clock.now()})
    assert full.put(f"/api/v3/vm/{old_name}", {"tags": {"project": "x"}}).status == 200
    assert full.post(f"/api/v3/vm/{old_name}/snapshot").status == 202
    assert (full.delete(f"/api/v3/vm/{old_name}").status, full.state_of(old_name)) == (200, "completed")


def test_describe_says_what_a_vm_was_cloned_from_only_when_it_is_known(
        make_stack: Callable[..., Harness]) -> None:
    """vmpooler's GET /vm/<host> has no ``source_template``; ours adds the template the VM was
    cloned from (a template change drains by it), and says nothing when it does not know one (a
    dummy pool without ``template``). Before, such a VM answered ``"source_template": ""``."""
    stack = make_stack("providers:\n  dummy: {}\npools:\n  - {name: plain, size: 1, provider: dummy}\n"
                       "  - {name: cloned, size: 1, provider: dummy, template: templates/debian-12}\n")
    stack.fill()
    plain = stack.get(f"/api/v3/vm/{stack.ready('plain')[0]}").json
    cloned = stack.get(f"/api/v3/vm/{stack.ready('cloned')[0]}").json
    assert "source_template" not in plain[stack.ready("plain")[0]]
    assert cloned[stack.ready("cloned")[0]]["source_template"] == "templates/debian-12"


def test_a_fully_qualified_name_ending_in_a_dot_is_the_vm(full: Harness) -> None:
    """An absolute DNS name ends in a dot (``host.example.com.``, as ``dig`` and resolv.conf write
    it); vmpooler takes the first label of whatever it is given. Before: 400 "Invalid hostname
    format" for a name the same request without the dot found. Only one dot at the end: ``.``,
    ``host..`` and ``.host.`` are still no hostname."""
    host = full.checkout("pool2")
    reply = full.get(f"/api/v3/vm/{host}.example.com.")
    assert (reply.status, reply.json[host]["state"]) == (200, "running")
    assert full.get(f"/api/v1/vm/{host.upper()}.").json[host]["state"] == "running"
    reply = full.put(f"/api/v3/vm/{host}.example.com.", {"lifetime": "5"})
    assert (reply.status, reply.json) == (200, {"ok": True})
    assert full.describe(host)["lifetime"] == 5
    before = full.redis_state()
    for name in (".", f"{host}..", f".{host}.", f"{host}.example.com.."):
        reply = full.get(f"/api/v3/vm/{name}")
        assert (reply.status, reply.json) == (400, {"ok": False, "error": "Invalid hostname format"}), name
        assert full.delete(f"/api/v3/vm/{name}").status == 400, name
    assert full.redis_state() == before
    reply = full.delete(f"/api/v3/vm/{host}.example.com.")
    assert (reply.status, reply.json) == (200, {"ok": True})
    assert full.describe(host)["state"] == "destroyed"
