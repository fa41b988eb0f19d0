"""The failover audit's own faults (tests/chaos/failover_audit.py): one that promotes the replica
first waits for it to have what the primary has. ``swap`` (and ``stoppromote``) did not: right
after a ``stoppromote`` the demoted node is in a full sync (Redis's diskless sync waits 5 s, as
long as the audit's pause between faults), and a ``swap`` then promoted it without any write
answered since. The service answers those without ``WAIT`` by design (its primary has no replica
online, nothing a failover could promote: docs/reliability.md, "Availability trade"), so the
audit reported 85 to 142 problems of its own making (VMs handed out twice, returned 404, kept
ones destroyed): ``--seed 18 --faults stoppromote,swap,stop,cutkill``, 2 of 3 runs."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from tests.chaos.failover_audit import Audit
from tests.redis_pair import RedisPair
from tests.support import eventually


def stopped(pid: int) -> bool:
    """Whether process ``pid`` is stopped (SIGSTOP): state T in /proc."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "T"


def stop_promote_with_a_write_left_behind(pair: RedisPair) -> None:
    """``stoppromote`` as the audit meets it: a connection opened before the failover writes to
    the old primary while it is stopped, applied when it resumes (a primary still), so the node,
    once demoted, shares no history with the new primary past that point: a full sync."""
    left_behind = RedisPair.client(pair.primary)
    left_behind.ping()
    process = pair.primary.process
    assert process is not None
    fault = threading.Thread(target=pair.stop_primary_and_promote, args=(2.0, 0.2))
    fault.start()
    eventually(lambda: stopped(process.pid), 5, "the primary to be stopped")
    left_behind.set("left-behind", "1")  # blocks until the SIGCONT
    left_behind.close()
    fault.join()


@pytest.mark.parametrize("fault", ["swap", "stoppromote"])
def test_the_audit_promotes_a_replica_only_once_it_has_the_writes_answered(redis_pair: RedisPair,
                                                                           fault: str) -> None:
    stop_promote_with_a_write_left_behind(redis_pair)
    answered = redis_pair.client(redis_pair.primary)
    try:
        answered.set("answered", "1")  # a checkout the service answered on the new primary
    finally:
        answered.close()
    audit = Audit.__new__(Audit)  # only its fault gate: no service processes
    audit.pair = redis_pair
    assert audit.cannot_apply(fault) == ""
    if fault == "swap":
        redis_pair.swap_with_replicaof()
    else:
        redis_pair.stop_primary_and_promote(0.4, demote_after=0.2)
    promoted = RedisPair.client(redis_pair.primary)
    try:
        assert promoted.get("answered") == "1", "the promoted node lacks a write answered before the fault"
    finally:
        promoted.close()
