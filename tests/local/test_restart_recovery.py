"""The local stack's scheduler when another process holds a pool's lease: the pool is not tried
in a busy loop meanwhile."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
import redis

from chalicelib.store.keys import Keys
from tests.local.stack import RunningStack, call, local_stack, wait_for
from tests.support import redis_commands

KEYS = Keys()
LEASE_SECONDS_LEFT = 40_000
"""A lease the killed stack held with at least this many ms to go: without the fix the restarted
stack waits that long before its first pass of the pool."""

DUMMY_CONFIG = (
    "config: {domain: example.com, check_loop_delay_min: 0.2}\n"
    "providers:\n  dummy: {provider_class: dummy, createvm_max_time: 0, boot_time: 0, destroyvm_max_time: 0}\n"
    "pools:\n"
    "  - {name: left-by-dead, size: 2, provider: dummy}\n"
    "  - {name: held-by-live, size: 2, provider: dummy}\n"
    "  - {name: held-elsewhere, size: 2, provider: dummy}\n"
)


def client(stack: RunningStack) -> redis.Redis:
    return redis.Redis(port=stack.redis_port, decode_responses=True)


def kill_stack(stack: RunningStack) -> None:
    """SIGKILL the stack's whole process group (`kill -9 -<pgid>`): no handler, no cleanup."""
    os.killpg(stack.process.pid, signal.SIGKILL)
    stack.process.wait()


def ready(client: redis.Redis, pool: str) -> list[str]:
    return sorted(client.zrange(KEYS.pool_state(pool, "ready"), 0, -1))


def dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid


@pytest.mark.slow
def test_a_pool_another_process_holds_is_tried_once_a_second_not_in_a_loop(tmp_path: Path) -> None:
    """A pool whose lease another live process holds (a second scheduler on the Redis, or one
    paused): each try nudges the holder through the pool's wake list, which the stack's own
    listener popped at once and tried again: tens of thousands of tries, most of a core, for as
    long as the lease was held (a minute after a restart before the fix above)."""
    host = socket.gethostname()
    with local_stack(tmp_path, DUMMY_CONFIG, workers=1, interval=30) as stack:
        store = client(stack)
        wait_for(lambda: len(ready(store, "held-by-live")) == 2, 30, "the pool to fill", stack.log)
        store.set(KEYS.lease("held-by-live"), f"{host}:{os.getpid()}:0123456789abcdef", px=60_000)
        assert call("POST", f"{stack.api}/vm/held-by-live")[0] == 200  # its nudge: a try
        store.config_resetstat()
        time.sleep(4)
        tries = redis_commands(store).get("set", 0)
        assert tries < 20, f"{tries} SETs in 4 s while the pool was held elsewhere"

        # Once the holder lets go, the pool is looked at within about a second.
        store.delete(KEYS.lease("held-by-live"))
        wait_for(lambda: len(ready(store, "held-by-live")) == 2, 10, "the released pool to refill", stack.log)
