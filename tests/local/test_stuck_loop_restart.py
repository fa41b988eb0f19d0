"""`make run WORKERS=0` whose HTTP loop is really stuck (a login held by a stopped LDAP
directory, past the watchdog's timeout, shortened here by VMPOOL_HTTP_LOOP_TIMEOUT): the stack
stops and starts itself again, in the same process, after its back-off, and serves on with
everything it had handed out; a SIGKILL of it then leaves nothing running. Before (chaos21), the
stack exited 3 and `make run` restarted nothing: the service stayed down.
tests/local/test_one_process_watchdog.py covers the watchdog itself on a fake clock."""

from __future__ import annotations

import base64
import os
import signal
import threading
import time
from pathlib import Path

import pytest
import yaml

from local.processes import process_alive as alive
from local.run import RESTART_DELAYS_SECONDS, RESTARTS_FORGOTTEN_SECONDS, restart_delay
from tests.auth.slapd import SlapdServer
from tests.local.stack import call, descendants, local_stack, wait_for
from tests.local.test_one_process_slow_directory import _slapd_connections, login
from tests.local.test_stack_processes import our_listeners

LOOP_TIMEOUT = 2
"""The watchdog's timeout in this test: the stopped directory holds a login far longer."""


def stack_config(slapd: SlapdServer) -> str:
    return yaml.safe_dump({
        "config": {"domain": "example.com", "check_loop_delay_min": 0.5},
        "auth": {"provider": "ldap", "ldap": slapd.ldap_config(connect_timeout=2, login_timeout=15,
                                                              receive_timeout=15)},
        "providers": {"dummy": {"provider_class": "dummy", "createvm_max_time": 0, "boot_time": 0}},
        "pools": [{"name": "stuck-pool", "size": 2, "provider": "dummy"}],
    })


@pytest.mark.slow
def test_a_stack_whose_loop_is_stuck_starts_itself_again_and_serves_what_it_handed_out(tmp_path: Path) -> None:
    with SlapdServer() as slapd:
        assert slapd.process is not None
        password = slapd.password("alice")
        basic = {"Authorization": "Basic " + base64.b64encode(f"alice:{password}".encode()).decode()}
        with local_stack(tmp_path, stack_config(slapd), workers=0, interval=1, extra_args=["--threads", "2"],
                         env={"VMPOOL_HTTP_LOOP_TIMEOUT": str(LOOP_TIMEOUT)}) as stack:
            status, answer = call("POST", f"{stack.api}/token", headers=basic)
            assert status == 200, answer
            token = {"X-AUTH-TOKEN": answer["token"]}
            wait_for(lambda: call("GET", f"{stack.api}/status")[1]["pools"]["stuck-pool"]["ready"] == 2, 30,
                     "the pool to fill", stack.log)
            status, answer = call("POST", f"{stack.api}/vm/stuck-pool", headers=token)
            assert status == 200, answer
            host = answer["stuck-pool"]["hostname"].split(".")[0]
            first_children = descendants(stack.process.pid)

            os.kill(slapd.process.pid, signal.SIGSTOP)
            outcome: dict[str, object] = {}
            try:
                held = threading.Thread(target=login, args=(stack.port, "alice", password, outcome), daemon=True)
                held.start()
                wait_for(lambda: "ldap" in _slapd_connections(slapd.port), 20, "the login to reach the directory")
                wait_for(lambda: stack.log().count("redis on port") == 2, 60, "the stack to serve again",
                         stack.log)
                held.join(30)
            finally:
                os.kill(slapd.process.pid, signal.SIGCONT)
            log = stack.log()
            assert "vmpool.http_front.watchdog" in log and "starting the stack again in 1 s (restart 1" in log, log
            assert stack.process.poll() is None, log  # the same process: what `make` and Ctrl-C know
            assert "error" in outcome, outcome  # the held caller's connection closed, not left waiting
            assert not any(alive(pid) for pid in first_children), log  # the first redis-server stopped

            # Serving again, on the same Redis data: alice's VM is still hers, running.
            status, answer = call("GET", f"{stack.api}/vm/{host}")
            assert status == 200 and answer[host]["state"] == "running", answer
            status, answer = call("POST", f"{stack.api}/token", headers=basic)
            assert status == 200, answer
            status, answer = call("DELETE", f"{stack.api}/vm/{host}", headers=token)
            assert status == 200, answer

            children = descendants(stack.process.pid)
            assert children, log  # its new redis-server
            stack.process.kill()  # SIGKILL: nothing of the restarted stack is left behind
            stack.process.wait()
            wait_for(lambda: not any(alive(pid) for pid in children), 20, "the stack's children to stop",
                     stack.log)
            assert not our_listeners(tmp_path, stack.port)


@pytest.mark.slow
def test_sigterm_during_the_back_off_stops_the_stack_for_good(tmp_path: Path) -> None:
    """Started as after six restarts in a row (VMPOOL_LOCAL_RESTARTS): the next waits 60 s, and a
    supervisor's SIGTERM meanwhile ends it, exit 0, nothing started again nor left running."""
    with SlapdServer() as slapd:
        assert slapd.process is not None
        password = slapd.password("alice")
        with local_stack(tmp_path, stack_config(slapd), workers=0, interval=1, extra_args=["--threads", "2"],
                         env={"VMPOOL_HTTP_LOOP_TIMEOUT": str(LOOP_TIMEOUT),
                              "VMPOOL_LOCAL_RESTARTS": f"6:{time.monotonic()!r}"}) as stack:
            children = descendants(stack.process.pid)
            os.kill(slapd.process.pid, signal.SIGSTOP)
            try:
                threading.Thread(target=login, args=(stack.port, "alice", password, {}), daemon=True).start()
                wait_for(lambda: "starting the stack again in 60 s (restart 7 in a row" in stack.log(), 60,
                         "the stack to wait before its restart", stack.log)
                stack.process.send_signal(signal.SIGTERM)
                assert stack.process.wait(20) == 0, stack.log()
            finally:
                os.kill(slapd.process.pid, signal.SIGCONT)
            assert stack.log().count("redis on port") == 1, stack.log()  # not started again
            assert not any(alive(pid) for pid in children), stack.log()
            assert not our_listeners(tmp_path, stack.port)


def test_restarts_back_off_to_a_bound_and_start_over_after_a_quiet_run() -> None:
    delays, previous, now = [], "", 1000.0
    for _ in range(len(RESTART_DELAYS_SECONDS) + 3):
        count, delay = restart_delay(previous, now)
        delays.append(delay)
        previous, now = f"{count}:{now + delay!r}", now + delay + 1
    assert delays == [*RESTART_DELAYS_SECONDS, *[RESTART_DELAYS_SECONDS[-1]] * 3]
    assert max(delays) <= 60
    assert restart_delay(previous, now + RESTARTS_FORGOTTEN_SECONDS + 1) == (1, RESTART_DELAYS_SECONDS[0])
    assert restart_delay("garbage", now) == (1, RESTART_DELAYS_SECONDS[0])
