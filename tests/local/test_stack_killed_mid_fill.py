"""The whole local stack (`python -m local.run`: its redis-server, scheduler and HTTP front)
SIGKILLed again and again while its dummy pools fill, each time started again on the same state
directory: once a stack runs undisturbed, every pool holds exactly its size, and the dummy
provider's folders hold exactly the pools' VMs (no clone of a killed pass left behind as an
orphan, none twice under one name, no name in two pools)."""

from __future__ import annotations

import random
import time
from pathlib import Path

import pytest
import redis

from tests.local.stack import call, local_stack, wait_for
from tests.local.test_restart_recovery import KEYS, kill_stack, ready

POOLS = {"fill-a": 6, "fill-b": 5}
CONFIG = (
    "config: {domain: example.com, check_loop_delay_min: 0.2, task_limit: 3}\n"
    "providers:\n  dummy: {provider_class: dummy, createvm_max_time: 2, boot_time: 1, destroyvm_max_time: 1}\n"
    "pools:\n" + "".join(f"  - {{name: {name}, size: {size}, provider: dummy}}\n" for name, size in POOLS.items())
)
KILLS = 6


def folder(store: redis.Redis, pool: str) -> list[str]:
    """The VMs the dummy provider holds in the pool's folder (what an outsider sees of it)."""
    return sorted(store.hkeys(KEYS.dummy_folder("dummy", pool)))


@pytest.mark.audit
@pytest.mark.parametrize("seed", [1, 2])
def test_the_stack_killed_mid_fill_again_and_again_ends_with_exactly_its_vms(tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    state_dir = tmp_path / "state"
    clones_seen = 0
    for kill in range(KILLS):
        with local_stack(tmp_path, CONFIG, workers=1, interval=30, name=f"run{kill}", state_dir=state_dir) as stack:
            store = redis.Redis(port=stack.redis_port, decode_responses=True)
            # Killed while clones are in flight (those of the pass, or of one before it).
            wait_for(lambda store=store: store.zcard(KEYS.cloning) > 0 or all(
                len(ready(store, pool)) == size for pool, size in POOLS.items()), 30, "a clone in flight", stack.log)
            clones_seen += int(store.zcard(KEYS.cloning) > 0)
            if rng.random() < 0.5:  # a user takes one of each and gives it back: the pools refill
                for pool in POOLS:
                    status, body = call("POST", f"{stack.api}/vm/{pool}")
                    if status == 200:
                        host = body[pool]["hostname"].split(".")[0]
                        assert call("DELETE", f"{stack.api}/vm/{host}")[0] == 200
            time.sleep(rng.uniform(0, 1.5))  # a real process killed at a random moment: no fake clock
            kill_stack(stack)
    assert clones_seen, "no kill came while a clone was in flight"

    with local_stack(tmp_path, CONFIG, workers=1, interval=30, name="last", state_dir=state_dir) as stack:
        store = redis.Redis(port=stack.redis_port, decode_responses=True)

        def exactly_its_vms() -> bool:
            for pool, size in POOLS.items():
                unsettled = sum(store.zcard(KEYS.pool_state(pool, state))
                                for state in ("pending", "completed", "discovered", "running"))
                if unsettled or len(ready(store, pool)) != size or folder(store, pool) != ready(store, pool):
                    return False
            return store.zcard(KEYS.cloning) == 0

        wait_for(exactly_its_vms, 120, "every pool full and the dummy's folders exactly the pools' VMs", stack.log)
        names = [host for pool in POOLS for host in folder(store, pool)]
        assert len(names) == len(set(names)), names
