"""A primary that stops answering (SIGSTOP: a paused node, a partition) long enough that its
replica is promoted, then resumes before anyone demotes it.

The resumed node still says it is a primary and accepts writes, and an API process's pooled
connections opened before the failover still reach it (connections to the old address, as the
endpoint's name moved). It has lost its replica (the promoted one left it), so it looks like a
primary left alone after a failover, whose checkouts are answered without waiting for a replica
(docs/reliability.md, "Redis process killed"). But whatever it accepts now is lost when it is
made a replica of the new primary: a checkout answered 200 there hands out a VM the new primary
still has in ready, to be handed out again.
"""

from __future__ import annotations

from typing import Any

import pytest

from chalicelib.services import Services
from tests.chaos.lambda_api import (
    assert_still_checked_out,
    check_out,
    dummy_config,
    fill,
    hold_connections,
    hostname,
    lambda_services,
    on_vm,
    serve,
    serving_fixture,
)
from tests.redis_pair import RedisPair

POOL = "ha"
CONFIG = dummy_config("socket_timeout: 5.0, replica_ack_timeout: 1000", [POOL], 1)

api = serving_fixture(CONFIG)


def test_a_checkout_on_the_resumed_old_primary_is_never_handed_out_again(
        redis_pair: RedisPair, api: Services, monkeypatch: pytest.MonkeyPatch) -> None:
    """The checkout is answered 503 (its caller asks again, and the retry is served by the new
    primary), not 200 with a VM that only the doomed node holds as checked out. Before: 200,
    and the new primary still had the VM in ready, the next caller's."""
    fill(api, POOL)
    redis_pair.wait_synced()
    hold_connections(api, 8)  # a process that served requests at once keeps their connections
    new_primary = RedisPair.client(redis_pair.replica)

    redis_pair.stop_primary_and_promote(0, demote_after=None)  # the old primary resumed, not demoted
    # The pause outlasted the 5 s the process keeps its count of replicas: it looks them up again.
    monkeypatch.setattr(api.store, "_replicas_known_until", 0.0)
    answers = [check_out(POOL) for _ in range(3)]  # the first a 503 (asked again), then served
    held = [hostname(answer, POOL) for status, answer in answers if status == 200]
    assert all(status in (200, 503) for status, _ in answers), answers
    assert held, f"no checkout served after the failover: {answers}"
    assert_still_checked_out(new_primary, held)

    # A function started after the failover (its connections on the new primary) gets another VM.
    started_after = serve(lambda_services(redis_pair, CONFIG), monkeypatch)
    status, answer = check_out(POOL)
    started_after.client.close()
    new_primary.close()
    if status == 200:
        assert hostname(answer, POOL) not in held, "one VM handed to two callers"


@pytest.mark.parametrize("method, body", [("DELETE", None), ("PUT", {"lifetime": 12})], ids=["return", "lifetime"])
def test_a_change_made_on_the_resumed_old_primary_is_not_answered_200(
        redis_pair: RedisPair, api: Services, monkeypatch: pytest.MonkeyPatch, method: str, body: Any) -> None:
    """A return or a lifetime change of a VM checked out before the pause, sent to the process
    whose connections still reach the old primary: answered 503 (send it again), and the retry
    makes it on the new primary. Before: 200, made on the node left behind only; the VM the user
    returned stayed running (counted against them) on the new primary, or kept its old lifetime,
    on which it is reaped while in use."""
    fill(api, POOL)
    status, answer = check_out(POOL)
    assert status == 200, answer
    name = hostname(answer, POOL)
    redis_pair.wait_synced()
    hold_connections(api, 8)
    new_primary = RedisPair.client(redis_pair.replica)

    redis_pair.stop_primary_and_promote(0, demote_after=None)  # the old primary resumed, not demoted
    monkeypatch.setattr(api.store, "_replicas_known_until", 0.0)
    answers = [on_vm(method, name, body) for _ in range(2)]  # the change, then its retry if asked
    record = new_primary.hgetall(f"vmpool:vm:{name}")
    new_primary.close()

    assert answers[0][0] in (200, 503), answers
    assert answers[1][0] == 200, answers
    if method == "DELETE":
        assert record.get("state") != "running", f"{name} was answered returned; the new primary has it running"
    else:
        assert record.get("lifetime") == "12", f"the lifetime was answered 200; the new primary has {record}"
