"""On-demand requests through the HTTP API, built by the pools' reconcile passes (dummy provider)."""

from __future__ import annotations

import threading
import uuid
from types import SimpleNamespace

import pytest

from chalicelib import config as config_module
from chalicelib.api.ondemand import DELETED_MESSAGE
from chalicelib.manager.dispatch import Ticker, look_at
from chalicelib.manager.ondemand import UNSERVED_GRACE_SECONDS
from chalicelib.manager.pool_queue import DRAIN, NUDGE, RETRY, PoolMessage
from chalicelib.providers.base import TaskState, TaskStatus
from chalicelib.store.fleet import FORGOTTEN_SECONDS, Fleet
from chalicelib.store.ondemand import REQUESTS_KEPT_PER_OWNER, OnDemandStore
from chalicelib.store.store import UNUSED_RECORD_TTL_SECONDS
from tests.dns.test_dns_dual import link_local_first
from tests.harness import redis_state
from tests.ondemand.conftest import BASE_CONFIG

SLOW_POOL = """
  - name: slow
    template: templates/slow
    size: 0
    provider: dummy
    vmready_fail_percent: 100
"""


def open_requests(stack, pool: str) -> list[str]:
    return OnDemandStore(stack.services.store).open_requests(pool)


def test_full_life_built_ready_checked_out_and_deleted(make_stack):
    stack = make_stack(size=1)
    status, body = stack.answer("POST", "/api/v3/ondemandvm", {"debian": "2", "win-2022": 1})
    assert status == 201
    request_id = body["request_id"]
    assert body == {"ok": True, "request_id": request_id}
    assert uuid.UUID(request_id)
    # Their reconcile runs at once: asked for (SQS in AWS), and running loops nudged.
    assert set(stack.refill.pools) == {"debian-12", "win-2022"}
    keys = stack.services.store.keys
    assert [stack.services.client.llen(keys.wake(p)) for p in ("debian-12", "win-2022")] == [1, 1]

    status, body = stack.answer("GET", f"/api/v3/ondemandvm/{request_id}")
    assert status == 202
    assert body == {"ok": True, "request_id": request_id, "ready": False,
                    "debian": {"ready": "0", "pending": "2"}, "win-2022": {"ready": "0", "pending": "1"}}
    assert stack.answer("GET", "/api/v3/status?view=queue")[1]["queue"]["requested"] == 3

    stack.reconcile("debian-12")
    assert stack.answer("GET", "/api/v3/status?view=queue")[1]["queue"]["requested"] == 1
    stack.run_passes()

    status, body = stack.answer("GET", f"/api/v3/ondemandvm/{request_id}")
    assert status == 200
    assert body["ready"] is True and body["request_id"] == request_id
    debian_hosts = body["debian"]["hostname"]
    assert len(debian_hosts) == 2 and all(h.endswith(".example.com") for h in debian_hosts)
    [windows_host] = body["win-2022"]["hostname"]
    assert windows_host.endswith(".win.example.com")

    # v1 clients append a top-level domain to every name: VMs of two domains get FQDNs instead.
    status, v1 = stack.answer("GET", f"/api/v1/ondemandvm/{request_id}")
    assert "domain" not in v1
    assert sorted(v1["debian"]["hostname"]) == sorted(debian_hosts)
    assert v1["win-2022"]["hostname"] == [windows_host]

    # The request's VMs are checked out for it: running, with the request's lifetime.
    request_vms = [h.split(".")[0] for h in debian_hosts + [windows_host]]
    for hostname in request_vms:
        status, vm = stack.answer("GET", f"/api/v3/vm/{hostname}")
        assert vm[hostname]["state"] == "running"
        assert vm[hostname]["lifetime"] == 2
    # The pools filled to their own size besides, and a plain checkout gets a pool VM.
    pools = stack.answer("GET", "/api/v3/status?view=pools")[1]["pools"]
    assert pools["debian-12"]["ready"] == 1 and pools["debian-12"]["running"] == 2
    status, checkout = stack.answer("POST", "/api/v3/vm", {"debian-12": 1})
    assert status == 200
    assert checkout["debian-12"]["hostname"].split(".")[0] not in request_vms

    status, body = stack.answer("DELETE", f"/api/v3/ondemandvm/{request_id}")
    assert (status, body) == (200, {"ok": True})
    assert {stack.state_of(h) for h in request_vms} == {"completed"}
    stack.run_passes(passes=1)
    assert {stack.state_of(h) for h in request_vms} == {"destroyed"}
    status, body = stack.answer("GET", f"/api/v3/ondemandvm/{request_id}")
    assert (status, body) == (200, {"ok": True, "request_id": request_id, "ready": False,
                                    "message": "The request has been deleted"})
    status, body = stack.answer("DELETE", f"/api/v3/ondemandvm/{request_id}")
    assert (status, body) == (200, {"ok": True})  # deleting again changes nothing


def test_a_deleted_requests_vms_leave_running_due_with_the_deletion(make_stack):
    """Each VM delivered to a request gets a next look in its pool's running_due set. Before,
    DELETE /ondemandvm (lua/ondemand_end.lua) left those entries for a later pass to sweep; they
    go in the step that takes the VMs out of running."""
    stack = make_stack(size=0)
    status, body = stack.answer("POST", "/api/v3/ondemandvm", {"debian-12": 2, "win-2022": 1})
    assert status == 201
    request_id = body["request_id"]
    stack.run_passes()
    request_vms = {pool: [vm.name for vm in OnDemandStore(stack.services.store).get(request_id).vms if vm.pool == pool]
                   for pool in ("debian-12", "win-2022")}
    keys = stack.services.store.keys
    due = {pool: stack.services.client.zrange(keys.running_due(pool), 0, -1) for pool in request_vms}
    assert {pool: sorted(hosts) for pool, hosts in due.items()} == {
        pool: sorted(hosts) for pool, hosts in request_vms.items()}

    assert stack.answer("DELETE", f"/api/v3/ondemandvm/{request_id}") == (200, {"ok": True})

    assert {stack.state_of(h) for hosts in request_vms.values() for h in hosts} == {"completed"}
    assert [stack.services.client.zcard(keys.running_due(pool)) for pool in request_vms] == [0, 0]


def test_request_fails_after_its_ttl_and_its_vms_are_destroyed(make_stack):
    stack = make_stack(extra=SLOW_POOL)
    status, body = stack.answer("POST", "/api/v3/ondemandvm/slow+slow")
    assert status == 201
    request_id = body["request_id"]
    stack.reconcile("slow")
    building = [vm.name for vm in OnDemandStore(stack.services.store).get(request_id).vms]
    assert len(building) == 2 and {stack.state_of(h) for h in building} == {"pending"}
    provider = stack.services.provider("dummy")
    slow = stack.services.pool("slow")
    assert {vm.name for vm in provider.list_vms(slow)} == set(building)

    stack.clock.advance(5 * 60 + 1)
    stack.reconcile("slow")
    status, body = stack.answer("GET", f"/api/v3/ondemandvm/{request_id}")
    assert (status, body) == (200, {
        "ok": True, "request_id": request_id, "ready": False,
        "message": "The request failed to provision instances within the configured ondemand_request_ttl '5'"})
    assert {stack.state_of(h) for h in building} == {"completed"}
    stack.run_passes("slow", seconds=1, passes=1)  # a destroy is started, then seen done
    assert {stack.state_of(h) for h in building} == {"destroyed"}
    assert list(provider.list_vms(slow)) == []
    assert open_requests(stack, "slow") == []
    vm = stack.answer("GET", f"/api/v3/vm/{building[0]}")[1][building[0]]
    assert vm["state"] == "destroyed" and vm["reason"] == "its on-demand request failed"


def test_duplicate_request_id_is_a_409_and_changes_nothing(make_stack):
    stack = make_stack()
    status, body = stack.answer("POST", "/api/v3/ondemandvm", {"debian-12": 1, "request_id": "build-42"})
    assert (status, body) == (201, {"ok": True, "request_id": "build-42"})
    status, body = stack.answer("POST", "/api/v3/ondemandvm", {"win-2022": 3, "request_id": "build-42"})
    assert (status, body) == (409, {"ok": False, "message": "request_id 'build-42' has already been created",
                                    "request_id": "build-42"})
    assert stack.answer("GET", "/api/v3/ondemandvm/build-42")[1]["debian-12"] == {"ready": "0", "pending": "1"}
    assert open_requests(stack, "win-2022") == []


def test_over_the_limit_is_a_403_naming_the_maximum(make_stack):
    stack = make_stack()
    status, body = stack.answer("POST", "/api/v3/ondemandvm", {"debian": 4, "win-2022": 2})
    assert (status, body) == (403, {"ok": False, "message": "requested amount of instances exceeds the maximum 5"})
    assert open_requests(stack, "debian-12") == [] and stack.refill.pools == []


def test_a_count_in_the_body_is_bounded_by_the_configured_maximum_as_in_a_path(make_stack):
    """A body's count is bounded by ``max_ondemand_instances_per_request``, as vmpooler bounds it
    and as a path's mentions were already: over it, the 403 naming the maximum (vmfloaty prints
    "Request exceeds the configured per pool maximum"). Before, a body's count over 100 was
    ``400 VM count must be at most 100``: a maximum configured above 100 could not be asked for
    in one pool, and a count over the maximum got a status no client reads as "too many"."""
    stack = make_stack(max_ondemand_instances_per_request=150, max_running_vms_per_user=200)
    status, body = stack.answer("POST", "/api/v3/ondemandvm", {"debian": 120})
    assert status == 201 and body["ok"] is True
    assert stack.answer("GET", f"/api/v3/ondemandvm/{body['request_id']}")[1]["debian"]["pending"] == "120"
    too_many = (403, {"ok": False, "message": "requested amount of instances exceeds the maximum 150"})
    for count in (151, "151", "9" * 5000):
        assert stack.answer("POST", "/api/v3/ondemandvm", {"win-2022": count}) == too_many, count
    assert stack.answer("POST", "/api/v3/ondemandvm/" + "+".join(["win-2022"] * 151)) == too_many
    assert open_requests(stack, "win-2022") == []


def test_bad_requests_leave_redis_unchanged(make_stack, redis_client):
    stack = make_stack()
    before = redis_state(redis_client)
    assert stack.answer("POST", "/api/v3/ondemandvm", raw=b"{nope") == (
        400, {"ok": False, "message": "JSON payload could not be parsed"})
    assert stack.answer("POST", "/api/v3/ondemandvm", {"centos": 1, "debian": 1}) == (
        404, {"ok": False, "bad_templates": ["centos"]})
    assert stack.answer("POST", "/api/v3/ondemandvm/centos+debian")[0] == 404
    status, body = stack.answer("POST", "/api/v3/ondemandvm", {"debian": 1, "request_id": "no spaces"})
    assert status == 400 and "request_id" in body["error"]
    assert stack.answer("POST", "/api/v3/ondemandvm", {"debian": 0})[0] == 400
    assert stack.answer("POST", "/api/v3/ondemandvm", ["debian"])[0] == 400
    status, body = stack.answer("GET", "/api/v3/ondemandvm/unknown-id")
    assert (status, body) == (404, {"ok": False, "message": "no request found for request_id 'unknown-id'"})
    assert stack.answer("DELETE", "/api/v3/ondemandvm/unknown-id")[0] == 404
    assert stack.answer("POST", "/api/v3/ondemandvm", {"debian": 6})[0] == 403
    assert redis_state(redis_client) == before


def test_hostile_bodies_are_refused_with_the_documented_status_and_leave_nothing(make_stack, redis_client):
    stack = make_stack()
    before = redis_state(redis_client)
    too_large = (413, {"ok": False, "error": "Request body too large (at most 65536 bytes)"})
    # A million-character pool name, 10,000 pools, a 1 MB request_id: over 64 KiB, so refused
    # before parsing, as every route does (it was a 400 "could not be parsed" here).
    assert stack.answer("POST", "/api/v3/ondemandvm", {"x" * 1_000_000: 1}) == too_large
    assert stack.answer("POST", "/api/v3/ondemandvm", {f"pool-{n}": 1 for n in range(10_000)}) == too_large
    assert stack.answer("POST", "/api/v3/ondemandvm", {"debian": 1, "request_id": "r" * 1_000_000}) == too_large
    bad_count = {"ok": False, "error": "VM count must be a valid integer"}
    for count in (1.5, "two", True, [1], {"n": 1}, "1e3", " 1", "-"):
        assert stack.answer("POST", "/api/v3/ondemandvm", {"debian": count}) == (400, bad_count), count
    too_few = {"ok": False, "error": "VM count must be at least 1"}  # before, -1 was no "valid integer"
    for count in (0, "0", -1, "-1", -10**40):
        assert stack.answer("POST", "/api/v3/ondemandvm", {"debian": count}) == (400, too_few), count
    # A count of 31 digits in the body, or 10,000 mentions in the path: over the request's maximum.
    too_many = (403, {"ok": False, "message": "requested amount of instances exceeds the maximum 5"})
    assert stack.answer("POST", "/api/v3/ondemandvm", {"debian": 10**30}) == too_many
    assert stack.answer("POST", "/api/v3/ondemandvm/" + "+".join(["debian"] * 10_000)) == too_many
    # Aliases add up with their pool's own name; duplicate keys are JSON's last one.
    assert stack.answer("POST", "/api/v3/ondemandvm", {"debian": 3, "linux": 3})[0] == 403
    for request_id in ("r" * 1_000_000, "a\x00b", "\u00e9t\u00e9"):
        status, body = stack.answer("GET", "/api/v3/ondemandvm/" + request_id)
        assert status == 404 and len(body["message"]) < 100
    assert redis_state(redis_client) == before


def test_path_form_and_clone_limit(make_stack):
    stack = make_stack(size=0)
    status, body = stack.answer("POST", "/api/v2/ondemandvm/debian-12+debian-12+debian-12+debian-12+debian-12")
    assert status == 201
    request_id = body["request_id"]
    report = stack.reconcile("debian-12")
    assert len(report.clones_started) == 3  # ondemand_clone_limit
    assert stack.answer("GET", "/api/v3/status?view=queue")[1]["queue"]["requested"] == 2
    stack.run_passes("debian-12")
    status, body = stack.answer("GET", f"/api/v2/ondemandvm/{request_id}")
    assert status == 200 and len(body["debian-12"]["hostname"]) == 5


def test_clone_failures_are_retried_up_to_max_vm_retries(make_stack):
    stack = make_stack(size=0, clone_fail=100)
    request_id = stack.answer("POST", "/api/v3/ondemandvm", {"debian-12": 1})[1]["request_id"]
    stack.run_passes("debian-12", seconds=1, passes=4)
    status, body = stack.answer("GET", f"/api/v3/ondemandvm/{request_id}")
    assert status == 200 and body["ready"] is False
    assert body["message"] == "The request failed: 3 attempts to build its VMs failed (max_vm_retries 2)"
    attempts = [vm for vm in OnDemandStore(stack.services.store).get(request_id).vms]
    assert len(attempts) == 3
    assert all(vm.reason.startswith("clone failed") for vm in attempts)


def failing_pool(kind: str) -> str:
    """A pool whose every clone fails with a failure of ``kind``."""
    return f"""
  - name: fragile
    template: templates/fragile
    size: 0
    provider: dummy
    createvm_fail_percent: 100
    createvm_fail_kind: {kind}
"""


@pytest.mark.parametrize("kind", ["template", "network", "placement", "permission"])
def test_a_clone_failure_retrying_cannot_fix_fails_the_request_at_once(make_stack, kind):
    """A missing template, network or folder, or a permission refused, fails every attempt the
    same way: the request fails on the first, with the reason, instead of spending its retries."""
    stack = make_stack(size=0, extra=failing_pool(kind))
    request_id = stack.answer("POST", "/api/v3/ondemandvm", {"fragile": 2})[1]["request_id"]
    stack.run_passes("fragile", seconds=1, passes=2)
    status, body = stack.answer("GET", f"/api/v3/ondemandvm/{request_id}")
    assert status == 200 and body["ready"] is False
    assert "retrying cannot help" in body["message"] and "clone failed (simulated failure)" in body["message"]
    attempts = OnDemandStore(stack.services.store).get(request_id).vms
    assert len(attempts) == 2  # the first attempts only
    assert kind in {vm.failure for vm in attempts}  # the other one's request ended first


@pytest.mark.parametrize("kind", ["capacity", "timeout", "connection", "other"])
def test_a_clone_failure_worth_retrying_spends_the_retries(make_stack, kind):
    stack = make_stack(size=0, extra=failing_pool(kind))
    request_id = stack.answer("POST", "/api/v3/ondemandvm", {"fragile": 1})[1]["request_id"]
    stack.run_passes("fragile", seconds=1, passes=4)
    status, body = stack.answer("GET", f"/api/v3/ondemandvm/{request_id}")
    assert status == 200 and body["ready"] is False
    assert body["message"] == "The request failed: 3 attempts to build its VMs failed (max_vm_retries 2)"
    assert {vm.failure for vm in OnDemandStore(stack.services.store).get(request_id).vms} == {kind}


def test_a_quota_refusal_reads_as_the_other_errors_of_its_route(make_stack):
    """On-demand errors carry ``message`` (vmpooler's, which its 403 over
    ``max_ondemand_instances_per_request`` uses), POST /vm's ``error`` (vmpooler's input
    validation). Before, the service limits' 503 on ``POST /ondemandvm`` said ``error`` while its
    403s said ``message``, and a ``POST /vm`` falling back to an on-demand request answered
    ``message`` where the same checkout without the fallback answered ``error``."""
    stack = make_stack(size=0, max_ondemand_requests=2, max_ondemand_requests_per_user=1)

    def post(path: str, body: dict[str, int], address: str) -> tuple[int, object]:
        reply = stack.post(f"/api/v3/{path}", body, client_ip=address)
        return reply.status, reply.json

    assert post("ondemandvm", {"debian": 1}, "198.51.100.1")[0] == 201
    mine = "you may have at most 1 on-demand requests open at once"
    assert post("ondemandvm", {"debian": 1}, "198.51.100.1") == (403, {"ok": False, "message": mine})
    assert post("vm", {"win-2022": 1}, "198.51.100.1") == (403, {"ok": False, "error": mine})  # its fallback
    assert post("ondemandvm", {"debian": 1}, "198.51.100.2")[0] == 201
    full = "the service has its maximum of 2 on-demand requests open; try again later"
    assert post("ondemandvm", {"debian": 1}, "198.51.100.3") == (503, {"ok": False, "message": full})
    assert post("vm", {"win-2022": 1}, "198.51.100.3") == (503, {"ok": False, "error": full})


def test_checkout_miss_falls_back_to_an_on_demand_request(make_stack):
    stack = make_stack(size=0)
    # win-2022 has ondemand_fallback: true; its pool is empty.
    status, body = stack.answer("POST", "/api/v3/vm", {"win-2022": 2})
    assert status == 202
    assert body == {"ok": True, "request_id": body["request_id"], "ready": False}
    stack.run_passes("win-2022")
    status, ready = stack.answer("GET", f"/api/v3/ondemandvm/{body['request_id']}")
    assert status == 200 and len(ready["win-2022"]["hostname"]) == 2

    # debian-12 has no fallback: a miss is a 503 and leaves nothing behind...
    assert stack.answer("POST", "/api/v3/vm", {"debian-12": 1})[0] == 503
    assert open_requests(stack, "debian-12") == []
    # ...unless the request asks for it; and a request may refuse the pool's fallback.
    status, body = stack.answer("POST", "/api/v3/vm?ondemand=true", {"debian": 2})
    assert status == 202 and open_requests(stack, "debian-12") == [body["request_id"]]
    assert stack.answer("GET", "/api/v3/poolstat?pool=win-2022")[1]["pools"]["win-2022"]["ready"] == 1
    assert stack.answer("POST", "/api/v3/vm/win-2022+win-2022?ondemand=false")[0] == 503
    assert stack.answer("GET", "/api/v3/poolstat?pool=win-2022")[1]["pools"]["win-2022"]["ready"] == 1


def test_token_required_when_auth_is_configured(make_stack):
    stack = make_stack(extra="\n:auth:\n  provider: dummy\n")
    status, body = stack.answer("POST", "/api/v3/ondemandvm", {"debian": 1})
    assert (status, body) == (401, {"ok": False, "error": "a token is required (X-AUTH-TOKEN)"})
    assert stack.answer("DELETE", "/api/v3/ondemandvm/some-id")[0] == 401
    assert open_requests(stack, "debian-12") == []
    # GET needs its owner's token too (issue 10 #11: vmpooler showed anyone's request).
    assert stack.answer("GET", "/api/v3/ondemandvm/some-id")[0] == 401


def test_request_ids_shaped_like_other_keys_touch_nothing_but_their_own_request(make_stack):
    # Before, the id was pasted into the key names: "open:debian-12" wrote its hash where
    # debian-12's open-request set lives (the create answered 503 halfway, and from then on
    # every pass of debian-12 and every request for it was a 503), and "build:vms" was the VM
    # set of another caller's request "build" (that request's GET and its pool's pass failed).
    stack = make_stack(size=0)
    ids = ["open:debian-12", "build", "build:vms", "open", "vms", "a:b:c"]
    for request_id in ids:
        status, body = stack.answer("POST", "/api/v3/ondemandvm", {"debian": 1, "request_id": request_id})
        assert (status, body) == (201, {"ok": True, "request_id": request_id})
    assert stack.answer("POST", "/api/v3/ondemandvm", {"debian": 1, "request_id": "build:vms"})[0] == 409
    stack.run_passes("debian-12", passes=4)
    seen: set[str] = set()
    for request_id in ids:
        status, body = stack.answer("GET", f"/api/v3/ondemandvm/{request_id}")
        assert status == 200 and body["ready"] is True, (request_id, body)
        [host] = body["debian"]["hostname"]
        assert host not in seen  # each request shows exactly its own VM
        seen.add(host)
        assert stack.answer("GET", f"/api/v3/vm/{host.split('.')[0]}")[1][host.split(".")[0]]["state"] == "running"
    assert len(stack.services.store.hostnames("debian-12", "running")) == len(ids)
    assert stack.answer("DELETE", "/api/v3/ondemandvm/build:vms") == (200, {"ok": True})
    assert stack.answer("GET", "/api/v3/ondemandvm/build")[1]["ready"] is True
    assert len(stack.services.store.hostnames("debian-12", "running")) == len(ids) - 1


AUTH = "\n:auth:\n  provider: dummy\n"


def test_the_service_limit_on_open_requests_counts_requests_not_the_pools_they_need(make_stack):
    # Before, each pool a request needed counted as one open request: one request for two pools
    # filled max_ondemand_requests 2 and the next caller got a 503.
    stack = make_stack(size=0, max_ondemand_requests=2)
    assert stack.answer("POST", "/api/v3/ondemandvm", {"debian": 1, "win-2022": 1})[0] == 201
    assert stack.answer("POST", "/api/v3/ondemandvm", {"debian": 1, "win-2022": 1})[0] == 201
    status, body = stack.answer("POST", "/api/v3/ondemandvm", {"debian": 1})
    assert (status, body) == (503, {"ok": False, "message": "the service has its maximum of 2 on-demand requests open; "
                                                            "try again later"})


def test_the_service_limit_on_running_vms_counts_the_vms_open_requests_will_run(make_stack):
    # Before, max_running_vms counted running VMs only: three callers each opened a request for
    # 5 VMs under a limit of 6, and 15 VMs ran once they were built.
    stack = make_stack(size=1, max_running_vms=6, extra=AUTH)
    stack.run_passes()
    tokens = [stack.new_token(user, "password") for user in ("u1", "u2", "u3")]
    full = (503, {"ok": False, "message": "the service runs its maximum of 6 VMs; try again later"})

    def create(token: str, count: int):
        return stack.answer("POST", "/api/v3/ondemandvm", {"debian": count}, headers={"X-AUTH-TOKEN": token})

    assert create(tokens[0], 5)[0] == 201
    assert create(tokens[1], 5) == full
    assert create(tokens[1], 1)[0] == 201
    # The last place is promised to the requests: a checkout from the ready pool waits too.
    assert stack.answer("POST", "/api/v3/vm", {"win-2022": 1}, headers={"X-AUTH-TOKEN": tokens[2]})[0] == 503
    stack.run_passes(passes=4)
    running = [h for pool in ("debian-12", "win-2022") for h in stack.services.store.hostnames(pool, "running")]
    assert len(running) == 6
    assert create(tokens[2], 1) == full
    # Its VMs running now, a ready request counts them once: returning one makes room for one.
    mine = next(host for host in running if stack.services.store.get_vm(host).raw.get("token_user") == "u1")
    assert stack.answer("DELETE", f"/api/v3/vm/{mine}", headers={"X-AUTH-TOKEN": tokens[0]})[0] == 200
    assert create(tokens[2], 1)[0] == 201
    assert create(tokens[2], 1) == full


def test_a_delivered_vm_gone_from_the_provider_before_its_request_is_ready_is_built_again(make_stack):
    # Before, it stayed delivered: the request became ready naming a VM that no longer existed,
    # and the service's limit counted one VM fewer than the request would run.
    stack = make_stack(size=0, max_running_vms=2, extra=SLOW_POOL)
    request_id = stack.answer("POST", "/api/v3/ondemandvm", {"debian-12": 1, "slow": 1})[1]["request_id"]
    full = (503, {"ok": False, "message": "the service runs its maximum of 2 VMs; try again later"})
    stack.run_passes("debian-12", "slow")
    [vanished] = stack.services.store.hostnames("debian-12", "running")
    assert stack.answer("GET", f"/api/v3/ondemandvm/{request_id}")[1]["debian-12"] == {"ready": "1", "pending": "0"}
    stack.client.hdel(stack.provider._folder_key(stack.pool("debian-12")), vanished)  # an admin deleted it
    stack.clock.advance(61)  # the pass's next whole look at the folder (vm_checktime)
    stack.reconcile("debian-12")
    assert stack.describe(vanished)["state"] == "destroyed"
    assert stack.answer("GET", f"/api/v3/ondemandvm/{request_id}")[1]["debian-12"] == {"ready": "0", "pending": "1"}
    assert stack.answer("POST", "/api/v3/ondemandvm", {"debian-12": 1}) == full  # it still waits for 2 VMs
    stack.run_passes("debian-12")
    [rebuilt] = stack.services.store.hostnames("debian-12", "running")
    assert rebuilt != vanished
    assert stack.answer("GET", f"/api/v3/ondemandvm/{request_id}")[1]["debian-12"] == {"ready": "1", "pending": "0"}
    assert stack.answer("POST", "/api/v3/ondemandvm", {"debian-12": 1}) == full


def test_limits_hold_exactly_when_many_callers_create_at_once(make_stack):
    stack = make_stack(size=0, max_running_vms=7, max_ondemand_requests=5, extra=AUTH)
    tokens = [stack.new_token(f"user{n}", "password") for n in range(12)]
    answers: list[int] = []

    def create(token: str) -> None:
        answers.append(stack.answer("POST", "/api/v3/ondemandvm", {"debian": 2},
                                    headers={"X-AUTH-TOKEN": token})[0])

    threads = [threading.Thread(target=create, args=(token,)) for token in tokens]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(answers) == [201] * 3 + [503] * 9  # 3 requests of 2 fit under 7 VMs
    stack.run_passes("debian-12", passes=4)
    assert len(stack.services.store.hostnames("debian-12", "running")) == 6


def test_requests_for_a_pool_removed_from_the_config_fail_and_their_vms_are_destroyed(make_stack):
    # Before, the removed pool's drain passes went on building the request's VMs, and once the
    # pool was forgotten nothing served the request or saw it expire: it stayed open (202, and
    # counted against the on-demand limits) until its record expired days later.
    stack = make_stack(size=0, extra=SLOW_POOL)
    services = stack.services
    status, body = stack.answer("POST", "/api/v3/ondemandvm", {"slow": 2, "debian": 1})
    assert status == 201
    request_id = body["request_id"]
    stack.reconcile("slow")
    building = [vm.name for vm in OnDemandStore(services.store).get(request_id).vms]
    assert len(building) == 2 and {stack.state_of(host) for host in building} == {"pending"}
    queue = SimpleNamespace(send=lambda messages: None)
    Ticker().tick(services, queue)  # the fleet remembers each pool's settings, to drain it later

    services.use_config(config_module.parse(
        BASE_CONFIG.format(experimental="true", size=0, task_time=0, clone_fail=0, disk_fail=0)))
    for _ in range(3):
        look_at(services, PoolMessage("slow", DRAIN), queue)
        stack.clock.advance(31)
    status, body = stack.answer("GET", f"/api/v3/ondemandvm/{request_id}")
    assert (status, body["message"]) == (200, "The request failed: its pool slow was removed from the configuration")
    assert {stack.state_of(host) for host in building} == {"destroyed"}
    assert open_requests(stack, "slow") == [] and open_requests(stack, "debian-12") == []
    assert Fleet(services.store).names() == {"debian-12", "win-2022"}  # drained and forgotten


def slow_pool_forgotten(make_stack):
    """A stack whose ``slow`` pool was configured at a tick (the fleet remembers each pool's
    settings, to drain it later), then removed from the config and drained: forgotten. Returns
    the stack, the config that had the pool, and a queue that drops what it is sent (the test
    delivers the messages itself)."""
    stack = make_stack(size=0, extra=SLOW_POOL)
    services = stack.services
    with_slow = services.config
    queue = SimpleNamespace(send=lambda messages, budget_seconds=None: None)
    Ticker().tick(services, queue)
    services.use_config(config_module.parse(
        BASE_CONFIG.format(experimental="true", size=0, task_time=0, clone_fail=0, disk_fail=0)))
    look_at(services, PoolMessage("slow", DRAIN), queue)
    assert "slow" not in Fleet(services.store).names()  # drained and forgotten
    return stack, with_slow, queue


def test_a_request_an_api_a_config_behind_opens_for_a_pool_already_forgotten_fails(make_stack):
    # An API function reads the config every 30 s at most: one still running the config with the
    # pool opened a request for it (a POST /ondemandvm, or a checkout's on-demand fallback) after
    # the drain had forgotten the pool. No pass served it or saw its ttl: it answered 202
    # (pending) for good and counted against the on-demand limits until its record expired.
    stack, with_slow, queue = slow_pool_forgotten(make_stack)
    services = stack.services

    without_slow = services.config
    services.use_config(with_slow)  # the API function a refresh behind
    stack.refill.pools.clear()
    status, body = stack.answer("POST", "/api/v3/ondemandvm", {"slow": 1})
    assert status == 201
    request_id = body["request_id"]
    services.use_config(without_slow)
    for pool in stack.refill.pools:  # its nudge, as the reconcile queue delivers it
        look_at(services, PoolMessage(pool, NUDGE), queue)
    # Looked at again once past a config's overlap (the request may be a push ahead's, below).
    stack.clock.advance(UNSERVED_GRACE_SECONDS)
    look_at(services, PoolMessage("slow", RETRY, attempt=1), queue)
    status, body = stack.answer("GET", f"/api/v3/ondemandvm/{request_id}")
    removed = "The request failed: its pool slow was removed from the configuration"
    assert (status, body.get("message")) == (200, removed)
    assert open_requests(stack, "slow") == []
    assert "slow" not in Fleet(services.store).names()


def test_a_request_opened_between_the_drains_last_pass_and_its_forget_fails(make_stack, monkeypatch):
    # The same API function a config behind, a moment earlier: its request opened after the
    # drain's last pass (its run no longer taking nudges) and before that drain forgot the pool,
    # and its nudge was handled meanwhile (the pool still known: left to a function that has
    # it). The forget went ahead all the same: the request answered 202 (pending) for good,
    # counted by the on-demand limits. The forget now waits for the pool's open requests to fail.
    stack = make_stack(size=0, extra=SLOW_POOL)
    services = stack.services
    with_slow = services.config
    queue = SimpleNamespace(send=lambda messages, budget_seconds=None: None)
    Ticker().tick(services, queue)
    without_slow = config_module.parse(
        BASE_CONFIG.format(experimental="true", size=0, task_time=0, clone_fail=0, disk_fail=0))
    services.use_config(without_slow)
    opened: list[str] = []
    forget = Fleet.forget

    def opened_just_before(fleet: Fleet, pool: str, now: float | None = None) -> bool:
        if not opened:
            services.use_config(with_slow)  # the API function a refresh behind
            stack.refill.pools.clear()
            status, body = stack.answer("POST", "/api/v3/ondemandvm", {"slow": 1})
            assert status == 201
            opened.append(body["request_id"])
            services.use_config(without_slow)
            for nudged in stack.refill.pools:  # its nudge, handled while the pool is still known
                look_at(services, PoolMessage(nudged, NUDGE), queue)
        return forget(fleet, pool, now)

    monkeypatch.setattr(Fleet, "forget", opened_just_before)
    look_at(services, PoolMessage("slow", DRAIN), queue)
    assert opened and "slow" in Fleet(services.store).names()  # not forgotten: a request is open
    look_at(services, PoolMessage("slow", DRAIN), queue)  # the next tick's drain: fails it, forgets
    status, body = stack.answer("GET", f"/api/v3/ondemandvm/{opened[0]}")
    removed = "The request failed: its pool slow was removed from the configuration"
    assert (status, body.get("message")) == (200, removed)
    assert open_requests(stack, "slow") == []
    assert "slow" not in Fleet(services.store).names()


def opened_by_an_api_a_config_behind(stack, with_slow) -> str:
    """A request for ``slow`` opened by an API function still running ``with_slow``; its nudge
    is dropped (returned to the caller's config)."""
    services = stack.services
    now_config = services.config
    services.use_config(with_slow)
    status, body = stack.answer("POST", "/api/v3/ondemandvm", {"slow": 1})
    assert status == 201
    services.use_config(now_config)
    stack.refill.pools.clear()  # the nudge lost: an SQS send that failed, the local listener deaf to it
    return str(body["request_id"])


@pytest.mark.parametrize("opened_after_the_forget", [0.0, FORGOTTEN_SECONDS + 60],
                         ids=["nudge-lost", "opened-past-the-forgotten-window"])
def test_a_request_for_a_forgotten_pool_no_nudge_reaches_is_failed_by_the_tick(make_stack, opened_after_the_forget):
    # What the nudge fix left: a request an API function a config behind opens for a pool the
    # drain forgot, whose nudge never reaches a pass (lost; on the local stack the listener hears
    # only its configured pools' wake lists), or comes more than 10 minutes after the forget
    # (taken for a pool not configured here yet, and dropped). No pass served it, none failed it:
    # 202 (pending) for good, counted against the on-demand limits until its record expired.
    # The tick finds it (level-triggered) and fails it once it is older than a config's overlap.
    stack, with_slow, queue = slow_pool_forgotten(make_stack)
    services = stack.services
    stack.clock.advance(opened_after_the_forget)
    request_id = opened_by_an_api_a_config_behind(stack, with_slow)
    pending = (202, {"ok": True, "request_id": request_id, "ready": False, "slow": {"ready": "0", "pending": "1"}})
    if opened_after_the_forget:
        look_at(services, PoolMessage("slow", NUDGE), queue)  # its nudge: past the window, dropped
        assert stack.answer("GET", f"/api/v3/ondemandvm/{request_id}") == pending

    Ticker().tick(services, queue)  # within the grace: perhaps a pool a push just added
    assert stack.answer("GET", f"/api/v3/ondemandvm/{request_id}") == pending
    stack.clock.advance(UNSERVED_GRACE_SECONDS)
    Ticker().tick(services, queue)
    status, body = stack.answer("GET", f"/api/v3/ondemandvm/{request_id}")
    removed = "The request failed: its pool slow was removed from the configuration"
    assert (status, body.get("message")) == (200, removed)
    assert open_requests(stack, "slow") == []
    assert "slow" not in Fleet(services.store).names()


def test_a_request_for_a_pool_the_tick_has_not_read_yet_is_left_to_its_passes(make_stack):
    # The other side: an API function that read a push adding a pool before the tick's function
    # did opens a request for it. The tick a config behind does not take it for a removed pool.
    stack = make_stack(size=0, extra=SLOW_POOL)
    services = stack.services
    with_slow = services.config
    services.use_config(config_module.parse(
        BASE_CONFIG.format(experimental="true", size=0, task_time=0, clone_fail=0, disk_fail=0)))
    queue = SimpleNamespace(send=lambda messages, budget_seconds=None: None)
    Ticker().tick(services, queue)  # the tick's function, a push behind: no "slow"
    request_id = opened_by_an_api_a_config_behind(stack, with_slow)  # here: a push ahead
    stack.clock.advance(UNSERVED_GRACE_SECONDS - 1)
    Ticker().tick(services, queue)
    assert open_requests(stack, "slow") == [request_id]
    services.use_config(with_slow)  # the tick's function reads the push
    Ticker().tick(services, queue)
    assert open_requests(stack, "slow") == [request_id]
    status, body = stack.answer("GET", f"/api/v3/ondemandvm/{request_id}")
    assert status == 202, body


def test_a_request_for_a_pool_pushed_back_within_the_grace_is_left_to_its_passes(make_stack):
    # A pool removed by mistake, drained and forgotten, then pushed back (docs/deploy.md: "Removed
    # by mistake? push it back"). An API function that read the push opens a request for it; its
    # nudge reaches a reconcile function still on the config without the pool (each reads a push
    # within 30 s). That function took it for a request an API a config behind opened after the
    # forget and failed it at once: "its pool slow was removed from the configuration", for a
    # pool configured again. The nudge now leaves a request younger than the tick's grace
    # (UNSERVED_GRACE_SECONDS, a config's overlap) to a later look.
    stack, with_slow, queue = slow_pool_forgotten(make_stack)
    services = stack.services
    stack.clock.advance(60)
    request_id = opened_by_an_api_a_config_behind(stack, with_slow)  # here: a push ahead
    look_at(services, PoolMessage("slow", NUDGE), queue)  # its nudge, at a function a push behind
    Ticker().tick(services, queue)  # and the tick's, a push behind too
    assert open_requests(stack, "slow") == [request_id]
    stack.clock.advance(UNSERVED_GRACE_SECONDS - 1)
    services.use_config(with_slow)  # the reconcile functions read the push
    Ticker().tick(services, queue)
    look_at(services, PoolMessage("slow", NUDGE), queue)
    status, body = stack.answer("GET", f"/api/v3/ondemandvm/{request_id}")
    assert status == 202 and body["slow"]["pending"] == "1", body  # built in the pool pushed back


def test_a_request_opened_at_the_forget_by_an_api_a_config_behind_fails_at_its_nudges_retry(make_stack):
    # The nudge of a request an API a config behind opens the moment the drain forgot the pool is
    # not failed at once any more (above): it is looked at again once past the grace, and failed
    # then, without waiting for a tick.
    sent: list[tuple[PoolMessage, float]] = []
    stack, with_slow, _ = slow_pool_forgotten(make_stack)
    queue = SimpleNamespace(send=lambda messages, budget_seconds=None: sent.extend(messages))
    services = stack.services
    request_id = opened_by_an_api_a_config_behind(stack, with_slow)  # at the forget's instant
    look_at(services, PoolMessage("slow", NUDGE), queue)
    assert open_requests(stack, "slow") == [request_id]
    ((retry, delay),) = sent
    assert retry.pool == "slow" and delay == UNSERVED_GRACE_SECONDS
    stack.clock.advance(delay - 0.5)
    look_at(services, retry, queue)  # early (a queue's delay is whole seconds): looked at again
    assert open_requests(stack, "slow") == [request_id]
    stack.clock.advance(0.5)
    look_at(services, sent[-1][0], queue)
    status, body = stack.answer("GET", f"/api/v3/ondemandvm/{request_id}")
    removed = "The request failed: its pool slow was removed from the configuration"
    assert (status, body.get("message")) == (200, removed)


def request_records(stack) -> int:
    """Requests Redis holds a record of (their hashes)."""
    keys = stack.services.store.keys
    return sum(1 for key in stack.services.client.scan_iter(keys.ondemand("*"))
               if stack.services.client.type(key) == "hash")


def test_what_one_caller_keeps_in_redis_by_opening_and_deleting_requests_is_bounded(make_stack):
    # Before, every request ended (deleted or failed) kept its record for data_ttl (7 days): one
    # client creating and deleting requests in a loop (about 160 a second against `make run`)
    # added a kilobyte each, some 14 GB a day. An owner keeps its newest REQUESTS_KEPT_PER_OWNER
    # ended requests; the older ones are forgotten (404), never one that is open or holds VMs.
    stack = make_stack(size=0, max_running_vms_per_user=3, extra=AUTH)
    token, other = stack.new_token("churner", "password"), stack.new_token("bystander", "password")
    mine = {"X-AUTH-TOKEN": token}
    status, body = stack.answer("POST", "/api/v3/ondemandvm", {"debian": 1}, headers=mine)
    held = body["request_id"]
    stack.run_passes("debian-12")
    assert stack.answer("GET", f"/api/v3/ondemandvm/{held}", headers=mine)[1]["ready"] is True
    status, body = stack.answer("POST", "/api/v3/ondemandvm", {"win-2022": 1}, headers=mine)
    still_open = body["request_id"]
    theirs = stack.answer("POST", "/api/v3/ondemandvm", {"debian": 1}, headers={"X-AUTH-TOKEN": other})[1]
    stack.answer("DELETE", f"/api/v3/ondemandvm/{theirs['request_id']}", headers={"X-AUTH-TOKEN": other})

    ended: list[str] = []
    for _ in range(3 * REQUESTS_KEPT_PER_OWNER):
        stack.clock.advance(0.01)  # kept by creation time
        status, body = stack.answer("POST", "/api/v3/ondemandvm", {"debian": 1}, headers=mine)
        assert status == 201, body
        ended.append(body["request_id"])
        assert stack.answer("DELETE", f"/api/v3/ondemandvm/{ended[-1]}", headers=mine)[0] == 200
    assert request_records(stack) == REQUESTS_KEPT_PER_OWNER + 1  # and the bystander's
    # The newest ended requests still answer; the oldest are forgotten.
    assert stack.answer("GET", f"/api/v3/ondemandvm/{ended[-1]}", headers=mine)[1]["message"] == DELETED_MESSAGE
    assert stack.answer("GET", f"/api/v3/ondemandvm/{ended[0]}", headers=mine)[0] == 404
    # Another owner's ended request, the open one and the one holding a running VM stay whole.
    assert stack.answer("GET", f"/api/v3/ondemandvm/{theirs['request_id']}",
                        headers={"X-AUTH-TOKEN": other})[1]["message"] == DELETED_MESSAGE
    assert stack.answer("GET", f"/api/v3/ondemandvm/{still_open}", headers=mine)[0] == 202
    status, body = stack.answer("GET", f"/api/v3/ondemandvm/{held}", headers=mine)
    assert status == 200 and body["ready"] is True
    host = body["debian"]["hostname"][0].split(".")[0]
    assert stack.state_of(host) == "running"
    # ...and both still count against the owner's limit of 3 VMs.
    assert stack.answer("POST", "/api/v3/ondemandvm", {"debian": 2}, headers=mine)[0] == 403
    assert stack.answer("POST", "/api/v3/ondemandvm", {"debian": 1}, headers=mine)[0] == 201


def test_what_many_callers_keep_in_redis_by_opening_and_deleting_requests_is_bounded(make_stack):
    # Before, the bound was per owner only, and an anonymous owner is an address (IPv6: its /64):
    # a caller with a /48 (65,536 /64s) opening and deleting requests left a record (424 bytes,
    # kept 7 days), its /64's requests set (168 bytes, 7 days) and holdings set (168 bytes, 400
    # days) per request: 2,000 /64s grew Redis by 2.3 MB, at ~430 requests a second in-process
    # some 16 GB a day. The service keeps max_ondemand_requests_kept requests in total; past it
    # the oldest that hold nothing are forgotten with their owners' sets, whoever owns them, never
    # one that is open or holds a running VM.
    stack = make_stack(size=0, max_ondemand_requests_kept=40, max_ondemand_requests_per_user=1)
    client, keys = stack.services.client, stack.services.store.keys
    held = stack.call("POST", "/api/v3/ondemandvm", body={"debian": 1}, client_ip="198.51.100.7").json["request_id"]
    stack.run_passes("debian-12")
    still_open = stack.call("POST", "/api/v3/ondemandvm", body={"win-2022": 1},
                            client_ip="198.51.100.8").json["request_id"]

    def churn(first: int, count: int) -> list[str]:
        ids = []
        for index in range(first, first + count):
            address = f"2001:db8:77:{index:x}::1"  # one /64 each
            stack.clock.advance(0.01)
            reply = stack.call("POST", "/api/v3/ondemandvm", body={"debian": 1}, client_ip=address)
            assert reply.status == 201, reply.json
            ids.append(reply.json["request_id"])
            assert stack.call("DELETE", f"/api/v3/ondemandvm/{ids[-1]}", client_ip=address).status == 200
        return ids

    churn(0, 100)
    size = client.dbsize()
    ended = churn(100, 300)
    assert client.dbsize() <= size  # 300 owners more, nothing more kept
    assert request_records(stack) <= 40
    owner_sets = [key for prefix in (keys.holdings(""), keys.owner_requests(""))
                  for key in client.scan_iter(prefix + "*")]
    assert len(owner_sets) <= 2 * 40
    # The newest ended requests still answer; the oldest are forgotten.
    assert stack.call("GET", f"/api/v3/ondemandvm/{ended[-1]}").json["message"] == DELETED_MESSAGE
    assert stack.call("GET", f"/api/v3/ondemandvm/{ended[0]}").status == 404
    # The open request and the one holding a running VM stay whole, and still count.
    assert stack.call("GET", f"/api/v3/ondemandvm/{still_open}").status == 202
    reply = stack.call("GET", f"/api/v3/ondemandvm/{held}")
    assert reply.status == 200 and reply.json["ready"] is True
    assert stack.state_of(reply.json["debian"]["hostname"][0].split(".")[0]) == "running"
    assert stack.answer("GET", "/api/v3/status?view=queue")[1]["queue"]["requested"] == 1
    refused = stack.call("POST", "/api/v3/ondemandvm", body={"debian": 1}, client_ip="198.51.100.8")
    assert refused.status == 403  # the owner's limit still counts its open request


def test_records_of_vms_built_for_requests_deleted_mid_build_do_not_stay_a_week(make_stack):
    # Before, each VM cloned for an on-demand request deleted before its delivery kept its record
    # data_ttl (7 days) once destroyed: a create/delete loop from many addresses made the service
    # clone as fast as its clone limits allow and keep each clone's record a week. A VM no one
    # ever held keeps its record UNUSED_RECORD_TTL_SECONDS once its destroy is confirmed; one a
    # request was given keeps data_ttl, and none loses its record before it is destroyed.
    stack = make_stack(size=0)
    client, keys = stack.services.client, stack.services.store.keys
    data_ttl = stack.services.store.data_ttl_seconds

    def request_vms(request_id: str) -> list[str]:
        return list(client.zrange(keys.ondemand_vms(request_id), 0, -1))

    held = stack.call("POST", "/api/v3/ondemandvm", body={"debian": 1}, client_ip="198.51.100.7").json["request_id"]
    stack.run_passes("debian-12")
    (delivered,) = request_vms(held)
    assert stack.state_of(delivered) == "running"
    built: list[str] = []
    for index in range(12):
        address = f"2001:db8:77:{index:x}::1"  # one /64 each
        request_id = stack.call("POST", "/api/v3/ondemandvm", body={"debian": 1}, client_ip=address).json["request_id"]
        stack.reconcile("debian-12")  # its clone starts, and boots for 30 s
        built += request_vms(request_id)
        assert stack.call("DELETE", f"/api/v3/ondemandvm/{request_id}", client_ip=address).status == 200
    assert len(built) == 12
    assert (stack.state_of(built[-1]), client.ttl(keys.vm(built[-1]))) == ("completed", -1)  # kept until destroyed
    assert stack.call("DELETE", f"/api/v3/ondemandvm/{held}", client_ip="198.51.100.7").status == 200
    stack.settle("debian-12")
    assert {stack.state_of(host) for host in [*built, delivered]} == {"destroyed"}
    assert all(0 < client.ttl(keys.vm(host)) <= UNUSED_RECORD_TTL_SECONDS for host in built)
    assert data_ttl - 60 <= client.ttl(keys.vm(delivered)) <= data_ttl


def test_a_request_fails_at_its_ttl_while_its_pools_template_is_still_being_prepared(make_stack, monkeypatch):
    # Before, a pass whose pool's template was being prepared (create_template_delta_disks) left
    # the pool's open requests alone: one whose preparation hung (a vCenter task that never
    # ends) stayed open, 202 to its poller and counted by the on-demand limits, for data_ttl.
    stack = make_stack(size=0, create_template_delta_disks="true")
    provider = stack.services.provider("dummy")
    statuses = provider.task_statuses

    def hung(refs):
        known = statuses([ref for ref in refs if ref != "prepare-hung"])
        return {ref: known.get(ref, TaskStatus(TaskState.RUNNING)) for ref in refs}

    monkeypatch.setattr(provider, "prepare_template", lambda pool: "prepare-hung")
    monkeypatch.setattr(provider, "task_statuses", hung)
    request_id = stack.answer("POST", "/api/v3/ondemandvm", {"debian": 2})[1]["request_id"]
    stack.reconcile("debian-12")
    assert stack.answer("GET", f"/api/v3/ondemandvm/{request_id}")[0] == 202
    assert OnDemandStore(stack.services.store).get(request_id).vms == ()  # nothing cloned meanwhile
    stack.clock.advance(5 * 60 + 1)
    stack.reconcile("debian-12")
    status, body = stack.answer("GET", f"/api/v3/ondemandvm/{request_id}")
    assert (status, body["message"]) == (
        200, "The request failed to provision instances within the configured ondemand_request_ttl '5'")
    assert open_requests(stack, "debian-12") == []


def test_vms_whose_primary_address_is_link_local_are_ready_and_delivered_with_a_reachable_one(
        make_stack, monkeypatch):
    # Before, GET /vm gave the fe80:: address VMware Tools reported as primary from the pass
    # that made the VM ready (or delivered it to its request) until a later pass compared it.
    stack = make_stack(size=1)
    link_local_first(stack, monkeypatch)
    status, _ = stack.answer("POST", "/api/v3/ondemandvm", {"debian-12": 1})
    assert status == 201
    for _ in range(4):
        stack.clock.advance(31)
        stack.reconcile("debian-12")
        shown = {host: stack.answer("GET", f"/api/v3/vm/{host}")[1][host]["ip"]
                 for state in ("ready", "running") for host in stack.hosts("debian-12", state)}
        assert set(shown.values()) <= {"10.200.0.31"}
    assert {stack.state_of(host) for host in shown} == {"ready", "running"}


def test_a_ready_request_names_its_vms_as_get_vm_does_after_a_domain_change(make_stack):
    """Without managed DNS, GET /vm names a VM under its pool's domain in the config in effect
    (as vmpooler does). GET /ondemandvm answered the domain noted when the request was made: after
    ``config.domain`` changed, the two answers named one VM as two hosts, and vmfloaty's
    ``get --ondemand`` printed the one that no longer resolved."""
    stack = make_stack(size=0)
    status, body = stack.answer("POST", "/api/v3/ondemandvm", {"debian": 1})
    assert status == 201
    request_id = body["request_id"]
    stack.run_passes("debian-12")
    [before] = stack.answer("GET", f"/api/v3/ondemandvm/{request_id}")[1]["debian"]["hostname"]
    host = before.split(".")[0]
    assert before == f"{host}.example.com"

    stack.services.use_config(config_module.parse(
        BASE_CONFIG.format(experimental="true", size=0, task_time=0, clone_fail=0, disk_fail=0)
        .replace("domain: example.com", "domain: new.example.com")))
    assert stack.describe(host)["fqdn"] == f"{host}.new.example.com"
    status, body = stack.answer("GET", f"/api/v3/ondemandvm/{request_id}")
    assert (status, body["debian"]["hostname"]) == (200, [f"{host}.new.example.com"])
    v1 = stack.answer("GET", f"/api/v1/ondemandvm/{request_id}")[1]
    assert (v1["debian"]["hostname"], v1["domain"]) == ([host], "new.example.com")
    assert stack.answer("GET", f"/api/v1/vm/{host}")[1][host]["domain"] == "new.example.com"
