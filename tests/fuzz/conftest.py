"""The local stack (``python -m local.run``: HTTP workers, its own redis-server, the scheduler)
for the fuzz tests, with small dummy pools that refill in well under a second and the
experimental routes (runtime pool size and template, pool reset) switched on."""

from __future__ import annotations

from typing import Iterator

import pytest

from local.stack import Stack, dummy_config, local_stack

POOLS = [("fuzz-one", 4), ("fuzz-two", 2)]


@pytest.fixture(scope="session")
def fuzz_stack() -> Iterator[Stack]:
    config = dummy_config(POOLS, task_limit=20).replace(":config:\n", ":config:\n  experimental_features: true\n", 1)
    with local_stack(config, workers=2, interval=2.0) as stack:
        for pool, size in POOLS:
            stack.wait_ready(pool, size, timeout=60)
        yield stack
