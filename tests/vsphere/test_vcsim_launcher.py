"""The simulator's launcher leaves a trace: vcsim's output goes to a log file (not /dev/null, not a
pipe nobody reads after startup), so a simulator that cannot start or that exits during a test
says why."""

from __future__ import annotations

import signal
import socket
from pathlib import Path

import pytest

from tests.vsphere.vcsim import VcsimServer
from tools.vcsim import launcher


def test_a_simulator_that_cannot_start_says_why(tmp_path: Path, vcsim_dir: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        log_path = tmp_path / "vcsim.log"
        with pytest.raises(RuntimeError) as refused:
            launcher.start_vcsim(port, 0.2, tmp_path / "vcsim.pem", log_path=log_path, timeout=20)
    assert "address already in use" in str(refused.value)
    assert "address already in use" in log_path.read_text()


def test_a_simulator_that_exits_during_a_test_is_reported_with_its_log(tmp_path: Path, vcsim_dir: Path) -> None:
    """What a failed test's report gets (tests/conftest.py): nothing while it runs or once stopped
    on purpose; once it has died, that it did and its output."""
    log_path = tmp_path / "vcsim.log"
    with VcsimServer(boot_delay=0.2, cert_path=tmp_path / "vcsim.pem", log_path=log_path) as server:
        assert server.trouble() is None
        assert server.process is not None
        server.process.send_signal(signal.SIGKILL)
        server.process.wait()
        trouble = server.trouble()
        assert trouble is not None
        assert f"exited by itself (status {-signal.SIGKILL})" in trouble and "VCSIM_URL=" in trouble
    assert server.trouble() is None  # stopped by the fixture: nothing to report
