"""The local stack (``python -m local.run``: HTTP workers, its own redis-server, the scheduler)
for the fuzz tests, with small dummy pools that refill in well under a second and the
experimental routes (runtime pool size and template, pool reset) switched on.

Two stacks, as VMPOOL_FUZZ_AUTH lists them (both by default): ``open``, without ``:auth:`` (the
token routes answer 404, VMs need no token), and ``admin``, with the dummy login and every request
sent with an administrator's token and Basic credentials, so the token routes and the runtime
config routes get past the login to their handlers."""

from __future__ import annotations

import os
from typing import Iterator

import pytest

from local.stack import dummy_config, local_stack
from tests.fuzz.fuzz_target import AUTH, POOLS, FuzzTarget, admin_headers

MODES = os.environ.get("VMPOOL_FUZZ_AUTH", "open,admin").split(",")


@pytest.fixture(scope="session", params=MODES)
def fuzz_target(request: pytest.FixtureRequest) -> Iterator[FuzzTarget]:
    config = dummy_config(POOLS, task_limit=20).replace(":config:\n", ":config:\n  experimental_features: true\n", 1)
    if request.param == "admin":
        # A user's token answer lists their VMs: the config refuses a quota it could not answer.
        config = config.replace("max_running_vms_per_user: 1000000", "max_running_vms_per_user: 50") + AUTH
    with local_stack(config, workers=2, interval=2.0) as stack:
        for pool, size in POOLS:
            stack.wait_ready(pool, size, timeout=60)
        yield FuzzTarget(stack, admin_headers(stack) if request.param == "admin" else {})
