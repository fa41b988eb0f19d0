"""infra/smoke_test.sh, the post-deploy check of docs/deploy.md, passes against the local stack
(the same API and the same reconcile path as a stage in AWS) and fails on a pool that is not
there."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from packaged import ROOT

from tests.local.stack import local_stack

CONFIG = """\
config: {domain: example.com, check_loop_delay_min: 0.2, task_limit: 10}
providers:
  dummy: {provider_class: dummy, createvm_max_time: 0.3, boot_time: 0.2, destroyvm_max_time: 0.2}
pools:
  - {name: smoke-debian, size: 2, provider: dummy}
"""


@pytest.mark.slow
def test_smoke_test_passes_against_the_local_stack(tmp_path: Path) -> None:
    with local_stack(tmp_path, CONFIG, workers=1) as stack:
        url = f"http://127.0.0.1:{stack.port}/"
        done = subprocess.run([str(ROOT / "infra" / "smoke_test.sh"), url, "smoke-debian", "60"],
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stdout + done.stderr
        assert "OK" in done.stdout
        missing = subprocess.run([str(ROOT / "infra" / "smoke_test.sh"), url, "no-such-pool", "5"],
                                 capture_output=True, text=True, timeout=60)
        assert missing.returncode != 0 and "not configured" in missing.stderr
