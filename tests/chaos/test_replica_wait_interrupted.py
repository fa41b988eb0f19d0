"""A change made, then its wait for a replica (``WAIT``, the round trip after the change's own
script answered: ``Store.require_replicated``) cut short by the fault it guards against: the
primary demoted while the API waits in ``WAIT`` (Redis answers every blocked client ``UNBLOCKED
force unblock from blocking operation, instance state changed (master -> replica?)``, checked on
7.0), or the primary stalled (SIGSTOP: a long fork, a paused node) past the client's socket
timeout while it holds the ``WAIT``.

The change was made on the primary either way, and may survive the fault (the replica had it but
had not acknowledged yet; the stalled primary resumes with it). The 503 must be the one that says
so ("the disk was queued ... send the POST again only if GET /vm/<hostname> does not list it"):
before, it was the generic "the state store is unavailable, try again shortly", and the caller
who did as told queued a second disk (or snapshot, or revert).
"""

from __future__ import annotations

import base64
import json
import signal
import threading
import time
from typing import Any, Callable

import pytest

import app
from chalicelib.services import Services
from chalicelib.store.vm_tasks import VMTaskStore
from tests.chaos.lambda_api import call, check_out, dummy_config, on_vm, once_not_503, serving_fixture
from tests.chaos.test_failover_lost_writes import post_task, running_vm
from tests.infra.packaged_functions import api_event
from tests.redis_pair import RedisPair
from tests.support import Context, eventually, stop_process

POOL = "ha"
CONFIG = dummy_config("socket_timeout: 1.0, replica_ack_timeout: 900", [POOL], 2)

api = serving_fixture(CONFIG)
api_with_logins = serving_fixture(CONFIG + ":auth: {provider: dummy}\n")
api_one_token_each = serving_fixture(CONFIG + ":auth: {provider: dummy}\n:config: {max_tokens_per_user: 1}\n")


def blocked_in_wait(pair: RedisPair) -> None:
    """Until a client of the primary is blocked (the API's ``WAIT``: the link is held)."""
    primary = RedisPair.client(pair.primary)
    try:
        eventually(lambda: int(primary.info("clients")["blocked_clients"]) >= 1, 10, "the API blocked in WAIT",
                   interval=0.005)
    finally:
        primary.close()


def demote(pair: RedisPair) -> None:
    """The failover the wait guards against, while the API waits: roles swapped by REPLICAOF."""
    pair.swap_with_replicaof()


def stall(pair: RedisPair, seconds: float = 1.5) -> None:
    """The primary paused past the API's socket timeout (1 s) while it holds the WAIT."""
    assert pair.primary.process is not None
    stop_process(pair.primary.process.pid)
    time.sleep(seconds)
    pair.primary.process.send_signal(signal.SIGCONT)


def long_stall(pair: RedisPair) -> None:
    """``stall`` past what the token's deletion after the 503 can wait (its own socket timeout,
    on a new connection): the primary resumes with the token made and not deleted."""
    stall(pair, 3.0)


def during_the_wait(pair: RedisPair, fault: Callable[[RedisPair], None],
                    send: Callable[[], tuple[int, Any]]) -> tuple[int, Any]:
    """``send`` with the replication link held (its WAIT blocks), ``fault`` done while it waits."""
    pair.wait_synced()
    pair.link.hold()
    answers: list[tuple[int, Any]] = []
    sender = threading.Thread(target=lambda: answers.append(send()))
    sender.start()
    try:
        blocked_in_wait(pair)
        fault(pair)
    finally:
        sender.join(30)
        pair.link.release()
    assert answers, "no answer"
    return answers[0]


@pytest.mark.parametrize("task, fault", [("disk", demote), ("snapshot", stall)],
                         ids=["disk-demoted", "snapshot-stalled"])
def test_a_task_whose_replica_wait_is_cut_short_says_it_was_queued(
        redis_pair: RedisPair, api: Services, task: str, fault: Callable[[RedisPair], None]) -> None:
    hostname = running_vm(api)
    status, answer = during_the_wait(redis_pair, fault, lambda: post_task(hostname, task))

    assert status == 503 and answer["ok"] is False, answer
    assert "queued" in answer["error"] and "GET /vm/" in answer["error"], \
        f"a 503 that does not say the {task} was queued, so its caller sends it again: {answer}"
    if fault is stall:  # the primary resumed with it: sent again blindly, a second one is queued
        (queued,) = VMTaskStore(api.store).queued(hostname)
        assert queued["kind"] == task and queued["snapshot"] in answer["error"], answer


def test_a_change_with_a_disk_whose_replica_wait_is_cut_short_says_not_to_send_the_disk_blindly(
        redis_pair: RedisPair, api: Services) -> None:
    hostname = running_vm(api)
    status, answer = during_the_wait(redis_pair, demote, lambda: on_vm("PUT", hostname, {"lifetime": 12, "disk": 8}))

    assert status == 503 and answer["ok"] is False, answer
    assert "disk" in answer["error"] and "GET /vm/" in answer["error"], answer


def test_a_return_whose_replica_wait_is_cut_short_says_it_was_returned(redis_pair: RedisPair, api: Services) -> None:
    hostname = running_vm(api)
    status, answer = during_the_wait(redis_pair, stall, lambda: on_vm("DELETE", hostname))

    assert status == 503 and answer["ok"] is False and "send the DELETE again" in answer["error"], answer
    # Sent again as told, once a replica has it: done (sent again while this process still
    # answers 503 at once: its breaker closes when its probe's PING comes back).
    redis_pair.wait_synced()
    assert once_not_503(lambda: on_vm("DELETE", hostname)) == (200, {"ok": True})


def test_a_checkout_whose_replica_wait_the_demotion_cuts_short_hands_out_nothing(
        redis_pair: RedisPair, api: Services) -> None:
    """A checkout's confirmation and its WAIT share a round trip (``Store._confirm``): answered
    ``UNBLOCKED``, the VMs go back to ready (a release on a new connection, which reaches the new
    primary) and the 503 hands out nothing. Nothing found (the stall: tests/chaos/test_slow_redis.py)."""
    running_vm(api)  # the pool filled, the API's connections open
    status, answer = during_the_wait(redis_pair, demote, lambda: check_out(POOL))
    assert status == 503 and answer["ok"] is False, answer
    redis_pair.wait_synced()
    # The one VM left ready (size 2, one checked out before): still ready, on the primary and its replica.
    assert eventually(lambda: len(api.store.hostnames(POOL, "running")) == 1, 5, "nothing handed out by the 503")
    assert len(api.store.hostnames(POOL, "ready")) == 1


def test_a_token_whose_replica_wait_a_stall_cuts_short_is_not_left_behind(
        redis_pair: RedisPair, api_with_logins: Services) -> None:
    """The token is made, then deleted when no replica is known to have it (``Tokens.create``):
    with Redis stalled, the deletion sent after the 503 cannot reach it."""
    basic = {"Authorization": "Basic " + base64.b64encode(b"alice:right password").decode()}
    assert call("GET", "/api/v3/status", "/api/v3/status")[0] == 200  # warm: its connections open
    status, answer = during_the_wait(redis_pair, stall, lambda: new_token(basic))
    assert status == 503, answer
    redis_pair.wait_synced()
    assert eventually(lambda: api_with_logins.tokens.list_for_user("alice") == [], 5, "no token left that nobody saw")


def test_a_login_answered_503_in_a_long_stall_does_not_count_against_its_user(
        redis_pair: RedisPair, api_one_token_each: Services) -> None:
    """The stall outlasts the deletion the API sends after its 503: the primary resumes with the
    token made. Before, it counted against ``max_tokens_per_user`` (1 here) until ``token_ttl``,
    and alice's next login, Redis back, was refused: 403 "you have 1 tokens already". Now it was
    never counted (lua/token_confirm.lua never ran): her login sent again gets her one token,
    which is the only one listed; bob, another caller meanwhile, is not affected."""
    alice, bob = (basic_credentials(user) for user in ("alice", "bob"))
    assert call("GET", "/api/v3/status", "/api/v3/status")[0] == 200  # warm: its connections open
    status, answer = during_the_wait(redis_pair, long_stall, lambda: new_token(alice))
    assert status == 503, answer
    redis_pair.wait_synced()
    status, answer = once_not_503(lambda: new_token(alice))
    assert status == 200 and len(answer["token"]) == 32, f"alice refused after a failed login: {status} {answer}"
    status, listed = call("GET", "/api/v3/token", "/api/v3/token", headers=alice)
    assert status == 200 and len(listed) == 2, listed  # "ok" and her one token
    assert once_not_503(lambda: new_token(bob))[0] == 200
    assert new_token(alice)[0] == 403  # her limit still holds


def basic_credentials(user: str) -> dict[str, str]:
    """Basic credentials the dummy provider accepts for ``user``."""
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:right password".encode()).decode()}


def new_token(headers: dict[str, str]) -> tuple[int, Any]:
    answer = app.app(api_event("POST", "/api/v3/token", "/api/v3/token", headers=headers), Context())
    return answer["statusCode"], json.loads(answer["body"])


def demote_behind_a_stale_endpoint(pair: RedisPair) -> None:
    """The demotion, the endpoint's name still on the demoted node: the API's reconnections
    (the release after ``UNBLOCKED``, its retry) reach it again and are refused ``READONLY``."""
    pair.swap_with_replicaof(move_endpoint=False)


def test_a_checkout_cut_short_by_a_demotion_behind_a_stale_endpoint_hands_out_nothing_twice(
        redis_pair: RedisPair, api: Services) -> None:
    """As above, but the release of the VMs cannot reach the new primary either (the endpoint
    names the demoted node). Checked: a JSON 503 (never a 500), and no VM is handed out twice:
    the promoted replica never had the checkout (the link was held), so the VM is ready there,
    and once the name moves the next checkouts get each ready VM once."""
    first = running_vm(api)  # the pool filled, the API's connections open
    status, answer = during_the_wait(redis_pair, demote_behind_a_stale_endpoint, lambda: check_out(POOL))
    assert status == 503 and answer["ok"] is False and "again" in answer["error"], answer
    assert check_out(POOL)[0] == 503  # still on the demoted node: refused, nothing taken
    redis_pair.endpoint.point_at(redis_pair.primary.port)  # the name updated
    redis_pair.wait_synced()
    handed = [first]
    for _ in range(2):
        status, answer = check_out(POOL)
        if status == 200:
            handed.append(answer[POOL]["hostname"])
    assert len(handed) == len(set(handed)) == 2, f"a VM handed out twice, or the ready one lost: {handed}"
    assert api.store.hostnames(POOL, "ready") == [] and sorted(api.store.hostnames(POOL, "running")) == sorted(handed)
