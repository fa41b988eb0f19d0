"""A failover in the middle of a burst of checkouts from 8 callers, each with its own user's token
(dummy login), on the service's processes (two API processes and a scheduler, each built as a
Lambda is: tests/chaos/failover_audit.py) over a primary + replica pair (tests/redis_pair.py).
Each caller checks out, tags, reads back and returns VMs in a loop; mid-burst the replica is
promoted and the endpoint moved (``swap``), or the primary hangs past the clients' socket
timeout while the replica is promoted, then runs again until demoted (``stoppromote``).

Asserted after the pools settle (the audit's checks): no VM handed to two callers; every VM a
caller holds (checked out, not returned) is running and its user's on the new primary; every
error answer a JSON 503, never a 500 nor a hang; the pools full again with nothing pending, and
Redis matching the hypervisor. Long (about a minute each): marked ``audit``."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.chaos.failover_audit import Audit

CALLERS = 8


@pytest.mark.audit
@pytest.mark.parametrize("fault", ["swap", "stoppromote"])
def test_a_failover_mid_burst_hands_no_vm_twice_and_keeps_what_callers_hold(fault: str, tmp_path: Path) -> None:
    audit = Audit(seed=10, out_dir=tmp_path, callers=CALLERS, anonymous=False)
    try:
        audit.run([fault])
    finally:
        audit.close()
    assert not audit.skipped, audit.skipped
    assert audit.handed, "no checkout succeeded"
    assert not audit.problems, "\n".join(audit.problems[:50])
