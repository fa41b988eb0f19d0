"""`make run WORKERS=0` with a loop really stuck: the one-process stack, whose HTTP loops run on
threads beside the scheduler's, serves a login while its LDAP directory is stopped (SIGSTOP: the
kernel still accepts the connection, nothing answers) and the configured ``login_timeout`` is
longer than the watchdog's 30 s. The loop serving the login (the accepting loop) does not turn;
the other loop accepts and serves new callers meanwhile; 30 s on, the stack says so in one
CRITICAL JSON line (no password in it), exits 3, and leaves nothing behind (its redis-server
stopped, its ports and state directory free), so that its supervisor's restart serves again at
once. tests/local/test_one_process_watchdog.py covers the watchdog itself on a fake clock; this is
the whole way out, with real processes and signals (`make run` itself restarts nothing)."""

from __future__ import annotations

import base64
import http.client
import json
import os
import signal
import socket
import subprocess
import threading
from pathlib import Path

import pytest
import yaml

from local.http_front import WORKER_TIMEOUT_SECONDS
from tests.auth.slapd import SlapdServer
from tests.local.stack import (
    REPO_ROOT,
    alive,
    call,
    descendants,
    local_stack,
    read_answer,
    stack_command,
    stack_env,
    stop,
    wait_for,
)
from tests.support import listeners_carrying

LOGIN_TIMEOUT = 3 * WORKER_TIMEOUT_SECONDS
"""Longer than the watchdog waits: the login holds its loop until the stack gives up on it."""


def stack_config(slapd: SlapdServer) -> str:
    ldap = slapd.ldap_config(login_timeout=LOGIN_TIMEOUT, receive_timeout=LOGIN_TIMEOUT)
    return yaml.safe_dump({
        "config": {"domain": "example.com", "check_loop_delay_min": 0.5},
        "auth": {"provider": "ldap", "ldap": ldap},
        "providers": {"dummy": {"provider_class": "dummy", "createvm_max_time": 0, "boot_time": 0}},
        "pools": [{"name": "stuck-pool", "size": 1, "provider": "dummy"}],
    })


def login(port: int, user: str, password: str, outcome: dict[str, object]) -> None:
    """POST /token as ``user``; what came back (a status, or the error) into ``outcome``."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=LOGIN_TIMEOUT + 30)
    credentials = base64.b64encode(f"{user}:{password}".encode()).decode()
    try:
        connection.request("POST", "/api/v3/token", headers={"Authorization": f"Basic {credentials}"})
        outcome["status"] = connection.getresponse().status
    except (OSError, http.client.HTTPException) as error:
        outcome["error"] = type(error).__name__
    finally:
        connection.close()


@pytest.mark.slow
def test_a_loop_stuck_in_a_login_ends_the_one_process_stack_with_status_3_and_a_restart_serves(
        tmp_path: Path) -> None:
    with SlapdServer() as slapd:
        assert slapd.process is not None
        password = slapd.password("alice")
        with local_stack(tmp_path, stack_config(slapd), workers=0, interval=1,
                         extra_args=["--threads", "2"]) as stack:
            outcome: dict[str, object] = {}
            assert call("GET", f"{stack.api}/status")[0] == 200
            redis_pid = next(iter(descendants(stack.process.pid)))
            os.kill(slapd.process.pid, signal.SIGSTOP)
            kept = socket.create_connection(("127.0.0.1", stack.port), timeout=10)
            try:
                # A kept-alive client on the other loop (the accepting loop takes a connection
                # last), so that the login is the accepting loop's own: the worst loop to lose.
                kept.sendall(b"GET /api/v3/status HTTP/1.1\r\nHost: x\r\n\r\n")
                assert read_answer(kept).startswith(b"HTTP/1.1 200")
                stuck = threading.Thread(target=login, args=(stack.port, "alice", password, outcome), daemon=True)
                stuck.start()
                wait_for(lambda: "ldap" in _slapd_connections(slapd.port), 20, "the login to reach the directory")
                # The other loop accepts for it meanwhile: a new caller is served (before, its
                # connection waited unaccepted until the stack exited).
                assert call("GET", f"{stack.api}/status", timeout=WORKER_TIMEOUT_SECONDS / 2)[0] == 200
                assert "status" not in outcome and "error" not in outcome, outcome  # the login still held
                wait_for(lambda: stack.process.poll() is not None, WORKER_TIMEOUT_SECONDS + 60,
                         "the stack to give up on its stuck loop", stack.log)
            finally:
                kept.close()
                os.kill(slapd.process.pid, signal.SIGCONT)
            log = stack.log()
            assert stack.process.returncode == 3, log[-3000:]
            said = [json.loads(line) for line in log.splitlines()
                    if line.startswith("{") and "vmpool.http_front.watchdog" in line]
            assert len(said) == 1, log[-3000:]
            assert said[0]["level"] == "CRITICAL" and said[0]["loop"] == "vmpool-http-loop-0", said
            assert (said[0]["method"], said[0]["path"]) == ("POST", "/api/v3/token"), said
            assert said[0]["silent_seconds"] >= WORKER_TIMEOUT_SECONDS, said  # rounded to 0.1 s
            assert "stopping (exit 3)" in log, log[-3000:]
            assert password not in log and base64.b64encode(f"alice:{password}".encode()).decode() not in log
            # Nothing of it left: its redis-server stopped, its ports free.
            wait_for(lambda: not alive(redis_pid), 20, "its redis-server to stop", stack.log)
            assert not listeners_carrying(stack.port, str(tmp_path))
            assert not listeners_carrying(stack.redis_port, str(tmp_path))
            stuck.join(LOGIN_TIMEOUT + 30)
            assert "status" not in outcome or outcome["status"] in (503,), outcome

            # The supervisor starts it again (systemd's Restart=on-failure): on the same port and
            # state directory, it serves, and logins work once the directory answers again.
            again = _restart(stack.port, tmp_path / "stack.yaml", stack.state_dir, tmp_path / "again.log")
            try:
                api = f"http://127.0.0.1:{stack.port}/api/v3"
                wait_for(lambda: call("GET", f"{api}/status")[0] == 200, 30, "the restarted stack to serve",
                         lambda: (tmp_path / "again.log").read_text())
                credentials = base64.b64encode(f"alice:{password}".encode()).decode()
                status, body = call("POST", f"{api}/token", headers={"Authorization": f"Basic {credentials}"})
                assert status == 200 and body.get("token"), body
            finally:
                assert stop(again) == 0, (tmp_path / "again.log").read_text()[-3000:]


def _slapd_connections(port: int) -> str:
    """'ldap' once a connection to ``port`` is established (the kernel completes it for a stopped
    slapd): the login is on its way."""
    established = Path("/proc/net/tcp").read_text().splitlines()[1:]
    wanted = f":{port:04X}"
    return "ldap" if any(line.split()[2].endswith(wanted) and line.split()[3] == "01" for line in established) else ""


def _restart(port: int, config_file: Path, state_dir: Path, log_path: Path) -> subprocess.Popen[bytes]:
    with log_path.open("wb") as log:
        process = subprocess.Popen(stack_command(port, 0, 1.0) + ["--threads", "2"], cwd=REPO_ROOT,
                                   env=stack_env(config_file, state_dir), stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    return process
