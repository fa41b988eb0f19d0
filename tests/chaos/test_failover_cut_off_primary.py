"""A primary cut off from its replica (a partition, the link reset) while the endpoint still
names it, its replica promoted only later (the failover's detection takes that long).

The primary drops the replica from its count as soon as the link closes (after ``repl-timeout``
when it goes silent). A process that then looks its replicas up finds none, reconnects through
the endpoint, reaches the same node (same replication history) and took it for a primary left
alone: its checkouts were answered 200 without waiting for a replica, and lost when the replica
was promoted: the new primary had the VM in ready for the next caller. A process started after
the cut (a cold Lambda) did so from its first checkout.
"""

from __future__ import annotations

import pytest

from chalicelib.services import Services
from tests.chaos.lambda_api import (
    assert_still_checked_out,
    check_out,
    dummy_config,
    fill,
    hostname,
    lambda_services,
    serve,
    serving_fixture,
)
from tests.redis_pair import RedisPair

POOL = "cut"
CONFIG = dummy_config("socket_timeout: 5.0, replica_ack_timeout: 300", [POOL], 3)

api = serving_fixture(CONFIG)


def cut_the_link(pair: RedisPair) -> None:
    """The replication link reset: the primary counts its replica gone, the endpoint still
    names the primary."""
    pair.link.close()
    pair.wait_alone(pair.primary)


@pytest.mark.parametrize("process", ["warm", "cold"])
def test_a_checkout_on_a_primary_cut_off_from_its_replica_is_not_lost_by_the_later_promotion(
        redis_pair: RedisPair, api: Services, monkeypatch: pytest.MonkeyPatch, process: str) -> None:
    """Checkouts between the cut and the promotion are answered 503 (nothing a failover can lose),
    by a process that had seen the replica (warm) and by one started after the cut (cold); no VM
    answered 200 is in ready on the promoted replica. Before: 200, and the promoted replica
    handed the same VM to the next caller."""
    fill(api, POOL)
    status, answer = check_out(POOL)  # the process looks its replica up, and the checkout waits for it
    assert status == 200, answer
    held = [hostname(answer, POOL)]
    redis_pair.wait_synced()

    cut_the_link(redis_pair)
    if process == "cold":
        serve(lambda_services(redis_pair, CONFIG), monkeypatch)
    else:
        monkeypatch.setattr(api.store, "_replicas_known_until", 0.0)  # its 5 s are up: it looks again
    answers = [check_out(POOL) for _ in range(2)]
    assert all(status in (200, 503) for status, _ in answers), answers
    held += [hostname(answer, POOL) for status, answer in answers if status == 200]

    redis_pair.kill_primary_and_promote()
    promoted = RedisPair.client(redis_pair.primary)
    try:
        assert_still_checked_out(promoted, held)
    finally:
        promoted.close()


def test_a_process_waiting_on_a_cut_off_primary_follows_the_endpoint_to_the_promoted_replica(
        redis_pair: RedisPair, api: Services, monkeypatch: pytest.MonkeyPatch) -> None:
    """The replica is promoted and the endpoint moved while the cut-off primary still runs (not
    yet demoted): the process's pooled connections still reach it. Past the grace, that node
    would answer alone again, and what it takes is lost at its demotion. The process makes its
    connections again through the endpoint while it waits, and is served by the new primary.
    Before: 200 from the node left behind, the VM in ready on the new primary."""
    fill(api, POOL)
    assert check_out(POOL)[0] == 200
    redis_pair.wait_synced()
    cut_the_link(redis_pair)
    monkeypatch.setattr(api.store, "_replicas_known_until", 0.0)
    assert check_out(POOL)[0] == 503  # waits for the replica it lost

    left_behind, promoted = RedisPair.client(redis_pair.primary), RedisPair.client(redis_pair.replica)
    promoted.execute_command("REPLICAOF", "NO", "ONE")
    redis_pair.endpoint.point_at(redis_pair.replica.port)
    left_behind.delete(api.store.keys.replicas_seen)  # the grace over on the node left behind
    monkeypatch.setattr(api.store, "_rejoin_due", 0.0)  # the process's 5 s are up
    answers = [check_out(POOL) for _ in range(2)]
    try:
        assert all(status in (200, 503) for status, _ in answers), answers
        held = [hostname(answer, POOL) for status, answer in answers if status == 200]
        assert held, f"no checkout served by the promoted replica: {answers}"
        assert_still_checked_out(promoted, held)  # else answered by the node left behind
    finally:
        left_behind.close()
        promoted.close()
