"""The local stack's scheduler while Redis refuses connections: each pool's run is queued again a
second on, and the runs Redis failed are one warning a window, not a line each (a real
redis-server's port, closed)."""

from __future__ import annotations

import io

from chalicelib.clock import FakeClock
from chalicelib.config import parse
from chalicelib.manager.pool_queue import TICK, PoolMessage
from chalicelib.refusals import WINDOW_SECONDS
from chalicelib.services import Services
from chalicelib.store import connect
from local.scheduler import REDIS_SKIPPED, LocalScheduler
from tests.support import json_lines

POOLS = 5
ROUNDS = 3


def test_runs_redis_failed_are_one_warning_a_window(closed_port: int, clock: FakeClock,
                                                    log_output: io.StringIO) -> None:
    """Five pools, each run three times (the worker's retries a second apart) with Redis down.
    Before: 15 warning lines, a line a pool a second for as long as Redis was out. Now: the first
    said at once, the rest summed in the window's line; every pool is still queued again."""
    pools = "".join(f"  - {{name: p{n}, size: 1, provider: dummy}}\n" for n in range(POOLS))
    config = parse("providers:\n  dummy: {provider_class: dummy}\npools:\n" + pools
                   + f"redis: {{server: 127.0.0.1, port: {closed_port}, socket_timeout: 0.2}}\n")
    scheduler = LocalScheduler(Services(config, connect(config.redis), clock=clock))  # not started: the test works

    for _ in range(ROUNDS):
        for n in range(POOLS):
            scheduler.run(PoolMessage(f"p{n}", TICK))
    said = [line for line in json_lines(log_output.getvalue()) if line["level"] == "WARNING"]
    assert [line["message"] for line in said] == [REDIS_SKIPPED]
    assert scheduler.queue.take(timeout=2.0) is not None  # queued again, a second on

    clock.advance(WINDOW_SECONDS)
    scheduler.run(PoolMessage("p0", TICK))
    summary = [line for line in json_lines(log_output.getvalue()) if line["message"] == "requests refused"]
    assert [line["refused"] for line in summary] == [{REDIS_SKIPPED: POOLS * ROUNDS - 1}]
