"""What the API acknowledged survives a failover that loses the primary's last writes.

Replication is asynchronous: a primary killed while its replica lags takes its last writes
with it, and the promoted replica serves without them. A checkout is answered only once a
replica has it (tests/chaos/test_redis_durability.py); these are the other answers a caller
acts on. The replication link is held (a replica far behind), the API answers, the primary is
killed and the replica promoted: an answer that said something was recorded must hold on the
new primary, or the API must not have given it (a 503: ask again).
"""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

import app
from chalicelib.auth.tokens import hash_token
from chalicelib.services import Services
from chalicelib.store import store as store_module
from chalicelib.store.ondemand import OnDemandStore
from chalicelib.store.vm_tasks import VMTaskStore
from tests.chaos.lambda_api import call, checked_out_retrying, fill, lambda_services, on_vm, serving, serving_fixture
from tests.infra.packaged_functions import api_event
from tests.redis_pair import RedisPair
from tests.support import Context, eventually

POOL = "ha"
CONFIG = f"""
:redis: {{socket_timeout: 5.0, replica_ack_timeout: 1000}}  # a loaded CI machine, not an outage: 5 s, 1 s
:providers:
  :dummy: {{createvm_max_time: 0, boot_time: 0}}
:pools:
  - {{name: {POOL}, size: 2, provider: dummy}}
"""

api = serving_fixture(CONFIG)


def after_failover(pair: RedisPair) -> Services:
    """A function started after the replica was promoted (its own client, on the new primary)."""
    return lambda_services(pair, CONFIG)


def promised(status: int, answer: Any, done: int = 200) -> bool:
    """Whether an answer given while the replica lagged said the change was made (``done``): then
    the new primary must have it. Else it must be a 503 saying to ask again: nothing promised."""
    assert status in (done, 503), answer
    if status == 503:
        assert answer["ok"] is False and "again" in answer["error"], answer
    return status == done


@pytest.mark.parametrize("request_id", [None, "chosen-by-the-client"], ids=["drawn-id", "chosen-id"])
def test_an_ondemand_request_answered_201_is_on_the_new_primary(
        redis_pair: RedisPair, api: Services, request_id: str | None) -> None:
    assert call("GET", "/api/v3/status", "/api/v3/status")[0] == 200  # warm: its connections open
    redis_pair.link.hold()  # the replica stops receiving
    body: dict[str, Any] = {POOL: 1} if request_id is None else {POOL: 1, "request_id": request_id}
    status, answer = call("POST", "/api/v3/ondemandvm", "/api/v3/ondemandvm", body=body)
    redis_pair.kill_primary_and_promote()

    if not promised(status, answer, 201):
        return
    assert OnDemandStore(after_failover(redis_pair).store).get(answer["request_id"]) is not None, \
        f"request {answer['request_id']} was answered 201, then lost with the primary"


def test_an_ondemand_request_no_replica_acknowledged_is_ended_not_built_for_nobody(
        redis_pair: RedisPair, api: Services) -> None:
    """Answered 503 (the caller asks again), the request must not stay open on the primary: its
    VMs would be built and delivered to a request nobody polls, and run out their lifetime."""
    redis_pair.link.hold()
    status, answer = call("POST", "/api/v3/ondemandvm", "/api/v3/ondemandvm", body={POOL: 1, "request_id": "r1"})
    redis_pair.link.release()

    assert status == 503 and "not opened" in answer["error"], answer
    request = OnDemandStore(api.store).get("r1")
    assert request is not None and request.state == "failed", request
    assert OnDemandStore(api.store).open_requests(POOL) == []


def test_a_token_answered_200_is_on_the_new_primary(redis_pair: RedisPair, monkeypatch: pytest.MonkeyPatch) -> None:
    token_service(redis_pair, monkeypatch)
    login = {"Authorization": "Basic " + base64.b64encode(b"alice:alice-secret").decode()}
    redis_pair.link.hold()
    answer = app.app(api_event("POST", "/api/v3/token", "/api/v3/token", headers=login), Context())
    status, body = answer["statusCode"], json.loads(answer["body"])
    redis_pair.kill_primary_and_promote()

    if not promised(status, body):
        return
    assert after_failover(redis_pair).tokens.owner(body["token"]) == "alice", \
        "the token was answered 200, then lost with the primary: its user is refused with it"


def token_service(pair: RedisPair, monkeypatch: pytest.MonkeyPatch) -> Services:
    """The API function with ``:auth:`` on the pair's endpoint, waiting for a replica as in AWS."""
    return serving(pair, monkeypatch, CONFIG + ":auth: {provider: dummy}\n")


@pytest.mark.parametrize("by", ["token", "id"])
def test_a_token_deleted_with_200_stays_deleted_on_the_new_primary(
        redis_pair: RedisPair, monkeypatch: pytest.MonkeyPatch, by: str) -> None:
    """Revoking a leaked token: a 200 must mean no failover brings the token back to life."""
    services = token_service(redis_pair, monkeypatch)
    token = services.tokens.create("alice")
    redis_pair.wait_synced()  # the token is on the replica
    login = {"Authorization": "Basic " + base64.b64encode(b"alice:alice-secret").decode()}
    name = token if by == "token" else hash_token(token)[:16]
    redis_pair.link.hold()
    answer = app.app(api_event("DELETE", "/api/v3/token/{token}", f"/api/v3/token/{name}",
                               params={"token": name}, headers=login), Context())
    status, body = answer["statusCode"], json.loads(answer["body"])
    assert services.tokens.owner(token) is None, "the deletion is done on the primary, whatever the answer"
    redis_pair.kill_primary_and_promote()

    if not promised(status, body):
        return
    assert after_failover(redis_pair).tokens.owner(token) is None, \
        "the token was deleted with 200, then came back with the replica: a leaked token works again"


def test_a_token_deletion_no_replica_acknowledged_is_answered_503_and_its_retry_404_once_replicated(
        redis_pair: RedisPair, monkeypatch: pytest.MonkeyPatch) -> None:
    services = token_service(redis_pair, monkeypatch)
    token = services.tokens.create("alice")
    redis_pair.wait_synced()
    login = {"Authorization": "Basic " + base64.b64encode(b"alice:alice-secret").decode()}

    def delete(name: str = token) -> tuple[int, Any]:
        answer = app.app(api_event("DELETE", "/api/v3/token/{token}", f"/api/v3/token/{name}",
                                   params={"token": name}, headers=login), Context())
        return answer["statusCode"], json.loads(answer["body"])

    redis_pair.link.hold()
    assert delete() == (503, {"ok": False, "error": "the token was deleted, but the deletion could not be "
                                                    "replicated in time; send the DELETE again shortly to be "
                                                    "sure it holds"})
    assert services.tokens.owner(token) is None, "the deletion stays done on the primary"
    assert delete()[0] == 503, "the retry, while no replica has the deletion"
    # A name no token or id could have deleted nothing: no retry of a deletion, nothing to wait for.
    assert delete("not-a-token") == (404, {"ok": False, "error": "unknown or expired token"})
    redis_pair.link.release()
    redis_pair.wait_synced()
    # The retry finds the token gone; its answer says so only once a replica has the deletion.
    assert delete()[0] == 404
    assert RedisPair.client(redis_pair.replica).exists(services.tokens._token_key(hash_token(token))) == 0


def running_vm(services: Services) -> str:
    """A VM of the pool checked out through the API (the pool filled by passes of ``services``),
    every write on the replica."""
    fill(services, POOL)
    status, answer = checked_out_retrying(POOL)
    assert status == 200, answer
    return str(answer[POOL]["hostname"])


def answered_200_then_failed_over(redis_pair: RedisPair, method: str, hostname: str, body: Any = None) -> bool:
    """Send a change to ``hostname`` while the replica lags, then fail over to that replica.
    True if the change was answered 200 (so it must be on the new primary); a 503 must say to
    send it again, and then nothing was promised."""
    redis_pair.wait_synced()
    redis_pair.link.hold()
    status, answer = on_vm(method, hostname, body)
    redis_pair.kill_primary_and_promote()
    return promised(status, answer)


def test_a_vm_returned_with_200_stays_returned_on_the_new_primary(redis_pair: RedisPair, api: Services) -> None:
    """A return lost: the VM is running again, its user's (who believes it gone), and its
    lifetime counts against their quota."""
    hostname = running_vm(api)
    if not answered_200_then_failed_over(redis_pair, "DELETE", hostname):
        return
    record = after_failover(redis_pair).store.get_vm(hostname)
    assert record is not None and record.state != "running", \
        f"{hostname} was returned with 200, then was running again on the new primary"


def test_a_return_no_replica_acknowledged_is_answered_503_and_its_retry_200_once_replicated(
        redis_pair: RedisPair, api: Services) -> None:
    """The 503 says to send the DELETE again; vmfloaty reads only ``ok`` and lists a VM whose
    DELETE was not ok under "Unable to delete" (exit 1), so the retry of a VM its user returned
    is ok, and says so only once a replica has the return."""
    hostname = running_vm(api)
    redis_pair.wait_synced()
    redis_pair.link.hold()
    status, answer = on_vm("DELETE", hostname)
    assert status == 503 and answer["ok"] is False and "send the DELETE again" in answer["error"], answer
    record = api.store.get_vm(hostname)
    assert record is not None and record.state == "completed", "the return stays done on the primary"
    assert on_vm("DELETE", hostname)[0] == 503, "the retry, while no replica has the return"

    redis_pair.link.release()
    redis_pair.wait_synced()
    assert on_vm("DELETE", hostname) == (200, {"ok": True})
    assert RedisPair.client(redis_pair.replica).hget(api.store.keys.vm(hostname), "state") == "completed"


@pytest.mark.parametrize("change", [{"lifetime": 12}, {"tags": {"project": "ci"}}], ids=["lifetime", "tags"])
def test_a_vm_change_answered_200_is_on_the_new_primary(
        redis_pair: RedisPair, api: Services, change: dict[str, Any]) -> None:
    """A lifetime extension lost: the VM is reaped on its old lifetime, in use as it is."""
    hostname = running_vm(api)
    if not answered_200_then_failed_over(redis_pair, "PUT", hostname, change):
        return
    record = after_failover(redis_pair).store.get_vm(hostname)
    assert record is not None
    assert (record.lifetime_hours, dict(record.tags)) == (change.get("lifetime"), change.get("tags", {})), \
        f"{hostname}'s change was answered 200, then lost with the primary"


def test_a_vm_change_no_replica_acknowledged_is_answered_503_and_its_retry_200_once_replicated(
        redis_pair: RedisPair, api: Services) -> None:
    hostname = running_vm(api)
    redis_pair.wait_synced()
    redis_pair.link.hold()
    status, answer = on_vm("PUT", hostname, {"lifetime": 12})
    assert status == 503 and answer["ok"] is False and "send the PUT again" in answer["error"], answer
    record = api.store.get_vm(hostname)
    assert record is not None and record.lifetime_hours == 12, "the change stays made on the primary"

    redis_pair.link.release()
    redis_pair.wait_synced()
    assert on_vm("PUT", hostname, {"lifetime": 12}) == (200, {"ok": True})
    assert RedisPair.client(redis_pair.replica).hget(api.store.keys.vm(hostname), "lifetime") == "12"


def test_a_change_with_a_disk_no_replica_acknowledged_says_not_to_send_the_disk_blindly(
        redis_pair: RedisPair, api: Services) -> None:
    """`floaty modify --disk 8` queues a disk in the PUT's step: sent again, it would be queued
    again (two disks) unless the failover lost the first."""
    hostname = running_vm(api)
    redis_pair.wait_synced()
    redis_pair.link.hold()
    status, answer = on_vm("PUT", hostname, {"lifetime": 12, "disk": 8})
    assert status == 503 and answer["ok"] is False, answer
    assert "disk" in answer["error"] and "GET /vm/" in answer["error"], answer


def test_an_ondemand_request_deleted_with_200_stays_deleted_on_the_new_primary(
        redis_pair: RedisPair, api: Services) -> None:
    """A deleted request lost: open again on the new primary, its VMs are cloned and delivered
    to nobody, and run out their lifetime."""
    status, answer = call("POST", "/api/v3/ondemandvm", "/api/v3/ondemandvm", body={POOL: 1})
    assert status == 201, answer
    request_id = answer["request_id"]
    redis_pair.wait_synced()
    redis_pair.link.hold()
    status, answer = call("DELETE", "/api/v3/ondemandvm/{name}", f"/api/v3/ondemandvm/{request_id}",
                          params={"name": request_id})
    redis_pair.kill_primary_and_promote()

    if not promised(status, answer):
        return
    after = OnDemandStore(after_failover(redis_pair).store)
    request = after.get(request_id)
    assert request is not None and request.state == "deleted", \
        f"request {request_id} was deleted with 200, then open again on the new primary: {request}"
    assert after.open_requests(POOL) == []


def test_an_ondemand_deletion_no_replica_acknowledged_is_answered_503_and_its_retry_200_once_replicated(
        redis_pair: RedisPair, api: Services) -> None:
    status, answer = call("POST", "/api/v3/ondemandvm", "/api/v3/ondemandvm", body={POOL: 1})
    assert status == 201, answer
    request_id = answer["request_id"]

    def delete() -> tuple[int, Any]:
        return call("DELETE", "/api/v3/ondemandvm/{name}", f"/api/v3/ondemandvm/{request_id}",
                    params={"name": request_id})

    redis_pair.wait_synced()
    redis_pair.link.hold()
    status, answer = delete()
    assert status == 503 and answer["ok"] is False and "send the DELETE again" in answer["error"], answer
    request = OnDemandStore(api.store).get(request_id)
    assert request is not None and request.state == "deleted", "the deletion stays done on the primary"

    redis_pair.link.release()
    redis_pair.wait_synced()
    assert delete() == (200, {"ok": True})
    assert RedisPair.client(redis_pair.replica).hget(api.store.keys.ondemand(request_id), "state") == "deleted"


def test_a_change_answered_200_right_after_a_replica_came_online_is_on_it_when_promoted(
        redis_pair: RedisPair, api: Services, monkeypatch: pytest.MonkeyPatch) -> None:
    """A primary left alone (its replica gone, as right after a failover while ElastiCache builds
    a new one) answers without waiting for anyone: there is no replica a failover could promote.
    Once a replica is online again it can be promoted, so the writes answered from then on must
    be on it, not only those after the process next looks up its replicas."""
    monkeypatch.setattr(store_module, "REPLICAS_RECHECK_SECONDS", 0.0)  # the next write looks them up
    hostname = running_vm(api)
    replica = RedisPair.client(redis_pair.replica)
    replica.execute_command("REPLICAOF", "NO", "ONE")  # the replica lost; the primary alone
    eventually_alone(redis_pair)
    # Alone for longer than REPLICA_LOSS_GRACE_SECONDS (its replica lost for good): the mark of
    # the replica last seen has lapsed (test_failover_cut_off_primary.py: the writes before wait).
    with RedisPair.client(redis_pair.primary) as primary:
        primary.delete(api.store.keys.replicas_seen)
    monkeypatch.setattr(store_module, "REPLICAS_RECHECK_SECONDS", 3600.0)  # what it finds holds a while
    assert on_vm("PUT", hostname, {"tags": {"project": "alone"}})[0] == 200  # none: answered at once
    replica.execute_command("REPLICAOF", "127.0.0.1", str(redis_pair.link.port))  # a new replica, synced
    replica.close()
    redis_pair.wait_synced()
    redis_pair.link.hold()
    status, answer = on_vm("PUT", hostname, {"lifetime": 12})
    redis_pair.kill_primary_and_promote()

    if not promised(status, answer):
        return
    record = after_failover(redis_pair).store.get_vm(hostname)
    assert record is not None and record.lifetime_hours == 12, \
        f"{hostname}'s lifetime was answered 200 with a replica online, then lost when it was promoted"


def eventually_alone(pair: RedisPair) -> None:
    """Until the primary counts no replica."""
    primary = RedisPair.client(pair.primary)
    try:
        eventually(lambda: primary.info("replication").get("connected_slaves") == 0, 5, "the primary alone")
    finally:
        primary.close()


def post_task(hostname: str, task: str) -> tuple[int, Any]:
    """POST /vm/<host>/disk/8 or /vm/<host>/snapshot: 202 when queued."""
    if task == "disk":
        return call("POST", "/api/v3/vm/{name}/disk/{size}", f"/api/v3/vm/{hostname}/disk/8",
                    params={"name": hostname, "size": "8"})
    return call("POST", "/api/v3/vm/{name}/snapshot", f"/api/v3/vm/{hostname}/snapshot", params={"name": hostname})


@pytest.mark.parametrize("task", ["disk", "snapshot"])
def test_a_vm_task_answered_202_is_on_the_new_primary(redis_pair: RedisPair, api: Services, task: str) -> None:
    """A snapshot lost with the primary: its user holds an id no revert finds (404); a disk lost:
    never added, the 202 said it would be."""
    hostname = running_vm(api)
    redis_pair.wait_synced()
    redis_pair.link.hold()
    status, answer = post_task(hostname, task)
    redis_pair.kill_primary_and_promote()

    if not promised(status, answer, 202):
        return
    queued = VMTaskStore(after_failover(redis_pair).store).queued(hostname)
    assert [each["kind"] for each in queued] == [task], f"{hostname}'s {task} was answered 202, then lost"


@pytest.mark.parametrize("task", ["disk", "snapshot"])
def test_a_vm_task_no_replica_acknowledged_is_answered_503_saying_when_to_send_it_again(
        redis_pair: RedisPair, api: Services, task: str) -> None:
    """Sent again, a task is queued again (a second disk, another snapshot): the 503 says it was
    queued and to send it again only if GET /vm/<host> does not list it; a snapshot's names its id."""
    hostname = running_vm(api)
    redis_pair.wait_synced()
    redis_pair.link.hold()
    status, answer = post_task(hostname, task)
    assert status == 503 and answer["ok"] is False, answer
    assert "queued" in answer["error"] and "GET /vm/" in answer["error"], answer
    (queued,) = VMTaskStore(api.store).queued(hostname)  # it stays queued on the primary
    assert queued["kind"] == task
    if task == "snapshot":
        assert queued["snapshot"] in answer["error"], answer
    redis_pair.link.release()
