"""Two `make run`s pointed at one Redis, an operator's mistake: a second stack, with a state
directory of its own (another checkout, another VMPOOL_STATE_DIR) but the first stack's Redis
port (`--redis-port`, or VMPOOL_LOCAL_REDIS_PORT left exported), while the first one serves
callers. The second must not take the first's redis-server for the one it started (that Redis
answers PING on the port as well): its scheduler and HTTP front would then work the first's
pools beside the first's, its start marked over the first's. It refuses, saying why, and
changes nothing; the first serves on, every VM it handed out still its caller's. (A second stack
on the same state directory is refused by its lock: tests/local/test_stack_processes.py.)"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import redis

from chalicelib.store.keys import Keys
from tests.local.stack import REPO_ROOT, call, local_stack, stack_command, stack_env, wait_for
from tests.local.test_stack_processes import CONFIG, our_listeners
from tests.support import free_port

KEYS = Keys()
POOL = "proc-debian"


@pytest.mark.slow
@pytest.mark.parametrize("workers", [0, 1])
def test_a_second_stack_on_the_first_stacks_redis_refuses_and_changes_nothing(tmp_path: Path, workers: int) -> None:
    with local_stack(tmp_path, CONFIG, workers=workers, interval=0.5) as first:
        client = redis.Redis(port=first.redis_port, decode_responses=True, socket_timeout=5)
        wait_for(lambda: client.zcard(KEYS.pool_state(POOL, "ready")) == 2, 30, "the pool to fill", first.log)
        status, body = call("POST", f"{first.api}/vm/{POOL}")
        assert status == 200, body
        held = body[POOL]["hostname"].split(".")[0]
        started = client.get(KEYS.started)
        assert started is not None

        config_file = tmp_path / "second.yaml"
        config_file.write_text(CONFIG)
        port = free_port()
        second = subprocess.run(
            stack_command(port, workers, 0.5) + ["--redis-port", str(first.redis_port)], cwd=REPO_ROOT,
            env=stack_env(config_file, tmp_path / "second-state"), capture_output=True, text=True, timeout=90)

        assert second.returncode == 1, second
        assert f"port {first.redis_port}: something else listens on it" in second.stderr, second.stderr
        assert "redis on port" not in second.stdout and "Traceback" not in second.stderr, second
        assert not our_listeners(tmp_path, port)
        assert client.get(KEYS.started) == started  # no second start marked on the first's Redis
        # The first serves on: its caller's VM still running for it, the next caller another VM.
        status, body = call("GET", f"{first.api}/vm/{held}")
        assert status == 200 and body[held]["state"] == "running", body
        status, body = call("POST", f"{first.api}/vm/{POOL}")
        assert status == 200 and body[POOL]["hostname"].split(".")[0] != held, body
