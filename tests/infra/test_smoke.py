"""infra/smoke_test.sh, the post-deploy check of docs/deploy.md, passes against the local stack
(the same API and the same reconcile path as a stage in AWS) and fails on a pool that is not
there."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from packaged import ROOT

from local.redis_server import free_port

CONFIG = """\
config: {domain: example.com, check_loop_delay_min: 0.2, task_limit: 10}
providers:
  dummy: {provider_class: dummy, createvm_max_time: 0.3, boot_time: 0.2, destroyvm_max_time: 0.2}
pools:
  - {name: smoke-debian, size: 2, provider: dummy}
"""


@pytest.mark.slow
def test_smoke_test_passes_against_the_local_stack(tmp_path: Path) -> None:
    config = tmp_path / "vmpool.yaml"
    config.write_text(CONFIG)
    port = free_port()
    env = {key: value for key, value in os.environ.items() if not key.startswith("VMPOOL_")}
    env.update(VMPOOL_CONFIG_FILE=str(config), POWERTOOLS_LOG_LEVEL="WARNING", VMPOOL_STATE_DIR=str(tmp_path / "state"))
    log = (tmp_path / "stack.log").open("w+")
    stack = subprocess.Popen([sys.executable, "-m", "local.run", "--port", str(port), "--workers", "1"],
                             cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        while not re.search(r"serving http", (tmp_path / "stack.log").read_text()):
            assert time.monotonic() < deadline and stack.poll() is None, (tmp_path / "stack.log").read_text()
            time.sleep(0.1)
        url = f"http://127.0.0.1:{port}/"
        done = subprocess.run([str(ROOT / "infra" / "smoke_test.sh"), url, "smoke-debian", "60"],
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stdout + done.stderr
        assert "OK" in done.stdout
        missing = subprocess.run([str(ROOT / "infra" / "smoke_test.sh"), url, "no-such-pool", "5"],
                                 capture_output=True, text=True, timeout=60)
        assert missing.returncode != 0 and "not configured" in missing.stderr
    finally:
        os.killpg(stack.pid, signal.SIGINT)
        try:
            stack.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(stack.pid, signal.SIGKILL)
            stack.wait()
