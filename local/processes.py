"""Child processes the local stack and the test fixtures start (redis-server, slapd...)."""

from __future__ import annotations

import subprocess


def stop_process(process: subprocess.Popen | None, timeout: float = 10.0) -> None:
    """Ask a child to stop (SIGTERM), and kill it if it has not stopped within ``timeout``."""
    if process is None or process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
