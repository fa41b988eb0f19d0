"""`make run WORKERS=0` while its LDAP directory is stopped (SIGSTOP: the kernel still accepts
the connection, nothing answers), with the longest directory waits a config may have
(``connect_timeout + login_timeout`` = 25 s, ``receive_timeout`` as long): the login holding the
accepting loop answers 503 before the watchdog's 30 s, the other loop accepts and serves new
callers meanwhile, and the stack keeps running; the directory back, logins work. Before
(breaker18), a ``login_timeout`` over ~25 s was accepted, and such a login held its loop past
the watchdog: the stack logged it stuck and exited 3 (the default layout's worker was killed).
tests/local/test_one_process_watchdog.py covers the watchdog itself on a fake clock."""

from __future__ import annotations

import base64
import http.client
import os
import signal
import socket
import threading
from pathlib import Path

import pytest
import yaml

from chalicelib.auth.directory_budget import REQUEST_DIRECTORY_SECONDS
from local.http_front import WORKER_TIMEOUT_SECONDS
from tests.auth.slapd import SlapdServer
from tests.local.stack import call, local_stack, read_answer, wait_for
from tests.support import stop_process

CONNECT_TIMEOUT = 2
LOGIN_TIMEOUT = REQUEST_DIRECTORY_SECONDS - CONNECT_TIMEOUT
"""The longest a config may have with the test directory's connect_timeout."""


def stack_config(slapd: SlapdServer) -> str:
    ldap = slapd.ldap_config(connect_timeout=CONNECT_TIMEOUT, login_timeout=LOGIN_TIMEOUT,
                             receive_timeout=LOGIN_TIMEOUT)
    return yaml.safe_dump({
        "config": {"domain": "example.com", "check_loop_delay_min": 0.5},
        "auth": {"provider": "ldap", "ldap": ldap},
        "providers": {"dummy": {"provider_class": "dummy", "createvm_max_time": 0, "boot_time": 0}},
        "pools": [{"name": "stuck-pool", "size": 1, "provider": "dummy"}],
    })


def login(port: int, user: str, password: str, outcome: dict[str, object]) -> None:
    """POST /token as ``user``; what came back (a status, or the error) into ``outcome``."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=WORKER_TIMEOUT_SECONDS * 3)
    credentials = base64.b64encode(f"{user}:{password}".encode()).decode()
    try:
        connection.request("POST", "/api/v3/token", headers={"Authorization": f"Basic {credentials}"})
        outcome["status"] = connection.getresponse().status
    except (OSError, http.client.HTTPException) as error:
        outcome["error"] = type(error).__name__
    finally:
        connection.close()


@pytest.mark.slow
def test_a_login_held_by_a_stopped_directory_answers_503_before_the_watchdog_and_the_stack_serves_on(
        tmp_path: Path) -> None:
    with SlapdServer() as slapd:
        assert slapd.process is not None
        password = slapd.password("alice")
        with local_stack(tmp_path, stack_config(slapd), workers=0, interval=1,
                         extra_args=["--threads", "2"]) as stack:
            outcome: dict[str, object] = {}
            assert call("GET", f"{stack.api}/status")[0] == 200
            stop_process(slapd.process.pid)  # every thread of it stopped before the login
            kept = socket.create_connection(("127.0.0.1", stack.port), timeout=10)
            try:
                # A kept-alive client on the other loop (the accepting loop takes a connection
                # last), so that the login is the accepting loop's own: the worst loop to hold.
                kept.sendall(b"GET /api/v3/status HTTP/1.1\r\nHost: x\r\n\r\n")
                assert read_answer(kept).startswith(b"HTTP/1.1 200")
                held = threading.Thread(target=login, args=(stack.port, "alice", password, outcome), daemon=True)
                held.start()
                wait_for(lambda: "ldap" in _slapd_connections(slapd.port), 20, "the login to reach the directory")
                # The other loop accepts for it meanwhile: a new caller is served.
                assert call("GET", f"{stack.api}/status", timeout=WORKER_TIMEOUT_SECONDS / 2)[0] == 200
                held.join(WORKER_TIMEOUT_SECONDS * 3)
                # Before: no answer; the watchdog ended the stack at 30 s (exit 3).
                assert outcome == {"status": 503}, (outcome, stack.log()[-3000:])
            finally:
                kept.close()
                os.kill(slapd.process.pid, signal.SIGCONT)
            assert stack.process.poll() is None, stack.log()[-3000:]
            assert "vmpool.http_front.watchdog" not in stack.log()  # no loop said stuck
            credentials = base64.b64encode(f"alice:{password}".encode()).decode()
            status, body = call("POST", f"{stack.api}/token", headers={"Authorization": f"Basic {credentials}"})
            assert status == 200 and body.get("token"), body


def _slapd_connections(port: int) -> str:
    """'ldap' once a connection to ``port`` is established (the kernel completes it for a stopped
    slapd): the login is on its way."""
    established = Path("/proc/net/tcp").read_text().splitlines()[1:]
    wanted = f":{port:04X}"
    return "ldap" if any(line.split()[2].endswith(wanted) and line.split()[3] == "01" for line in established) else ""
