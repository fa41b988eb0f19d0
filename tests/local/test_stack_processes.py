"""The local stack's processes: a SIGKILLed `make run` leaves nothing serving (HTTP workers,
redis-server), one state directory serves one stack at a time (a stale lock from a killed
stack does not block the next one), and a bad config starts nothing."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Iterator

import pytest
import redis

from local.run import most_workers
from tests.local.stack import (
    REPO_ROOT,
    RunningStack,
    alive,
    call,
    descendants,
    local_stack,
    process_parents,
    read_answer,
    stack_command,
    stack_env,
    stop,
    wait_for,
)
from tests.support import (
    free_port,
    free_ports,
    listeners_carrying,
    listening_pids,
    stop_process,
    taken_by_another_process,
)

CONFIG = (
    "config: {domain: example.com, check_loop_delay_min: 0.1}\n"
    "providers:\n  dummy: {provider_class: dummy, createvm_max_time: 0, boot_time: 0, destroyvm_max_time: 0}\n"
    "pools:\n  - {name: proc-debian, size: 2, provider: dummy}\n"
)


def our_listeners(tmp_path: Path, *ports: int) -> dict[int, dict[int, str]]:
    """Of ``ports``, those a process of this test's stacks (all started with paths under
    ``tmp_path`` in their environment) listens on: their listeners' pids and command lines. Not
    whether the port refuses connections: once our server died, any other process of the
    machine may bind the freed port (a check of that failed once in a few hundred runs)."""
    holders = {port: listeners_carrying(port, str(tmp_path)) for port in ports}
    return {port: pids for port, pids in holders.items() if pids}


@pytest.mark.slow
def test_sigkill_of_the_stack_stops_its_http_workers_and_redis(tmp_path: Path) -> None:
    with local_stack(tmp_path, CONFIG, workers=3) as stack:
        assert call("GET", f"{stack.api}/status")[0] == 200
        children = descendants(stack.process.pid)
        assert len(children) >= 5, children  # gunicorn's arbiter, 3 workers, redis-server
        assert our_listeners(tmp_path, stack.port, stack.redis_port).keys() == {stack.port, stack.redis_port}
        stack.process.kill()  # SIGKILL: no handler runs, no finally
        stack.process.wait()
        wait_for(lambda: not any(alive(pid) for pid in children), 20, "the stack's children to stop",
                 lambda: f"still alive: {[pid for pid in children if alive(pid)]}\n{stack.log()}")
        assert not our_listeners(tmp_path, stack.port, stack.redis_port)  # HTTP workers, redis-server

        # Its state directory is free again: the next stack on it starts (the lock died with it).
        with local_stack(tmp_path, CONFIG, workers=1, name="next", state_dir=stack.state_dir) as after:
            assert call("GET", f"{after.api}/status")[0] == 200


@pytest.mark.slow
def test_a_second_stack_on_the_same_state_directory_refuses_before_starting_anything(tmp_path: Path) -> None:
    with local_stack(tmp_path, CONFIG, workers=1) as first:
        config_file = tmp_path / "second.yaml"
        config_file.write_text(CONFIG)
        port, redis_port = free_ports(2)
        second = subprocess.run(
            stack_command(port, 1, 30) + ["--redis-port", str(redis_port)], cwd=REPO_ROOT,
            env=stack_env(config_file, first.state_dir), capture_output=True, text=True, timeout=60,
        )
        assert second.returncode != 0
        assert "in use by another" in second.stderr and str(first.process.pid) in second.stderr, second.stderr
        assert "redis on port" not in second.stdout and "vmpool: stopped" not in second.stdout, second.stdout
        assert not our_listeners(tmp_path, redis_port, port)
        assert call("GET", f"{first.api}/status")[0] == 200  # the first one is untouched


def http_arbiter(stack: RunningStack) -> int | None:
    """The pid of the stack's gunicorn arbiter (its child that is not redis-server, nor the
    resource tracker multiprocessing starts beside a front started again); None in the moments
    between a killed arbiter and its successor."""
    parents = process_parents()
    return next((pid for pid in descendants(stack.process.pid) if parents.get(pid) == stack.process.pid
                 and not any(other in _cmdline(pid) for other in (b"redis-server", b"resource_tracker"))), None)


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:  # exited meanwhile
        return b""


def running_arbiter(stack: RunningStack) -> int:
    """The pid of the stack's gunicorn arbiter, which must be running."""
    arbiter = http_arbiter(stack)
    assert arbiter is not None, stack.log()
    return arbiter


@pytest.mark.slow
def test_a_killed_http_server_is_started_again(tmp_path: Path) -> None:
    """The arbiter SIGKILLed: its workers exit (they watch their parent), and the stack starts a
    new HTTP front on the same port; before, the whole stack stopped (exit 1) until someone ran
    `make run` again."""
    with local_stack(tmp_path, CONFIG, workers=2) as stack:
        arbiter = running_arbiter(stack)
        workers = descendants(arbiter)
        assert len(workers) == 2, workers
        os.kill(arbiter, signal.SIGKILL)
        wait_for(lambda: not any(alive(pid) for pid in workers), 20, "the old workers to stop")
        wait_for(lambda: http_arbiter(stack) not in (None, arbiter) and call("GET", f"{stack.api}/status")[0] == 200,
                 60, "a new HTTP front to serve", lambda: stack.log())
        assert stack.process.poll() is None
        assert "starting it again" in stack.log()


def worker_serving(connection: socket.socket, port: int, workers: set[int]) -> int:
    """The HTTP worker holding the server's end of ``connection`` (from /proc: the socket's
    inode in /proc/net/tcp, then the worker with a descriptor on it)."""
    client_port = connection.getsockname()[1]
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, remote, inode = fields[1], fields[2], fields[9]
        if int(local.split(":")[1], 16) == port and int(remote.split(":")[1], 16) == client_port:
            link = f"socket:[{inode}]"
            for pid in workers:
                with contextlib.suppress(OSError):
                    if any(os.readlink(f"/proc/{pid}/fd/{fd}") == link for fd in os.listdir(f"/proc/{pid}/fd")):
                        return pid
    raise AssertionError(f"no worker holds the connection from port {client_port}")


@pytest.mark.slow
def test_a_worker_killed_mid_request_is_replaced_and_only_its_own_connections_fail(tmp_path: Path) -> None:
    """SIGKILL of one HTTP worker while every connection is halfway through a request: the
    connections it held end (a reset or a close, never an answer), the other worker's finish
    their requests and are answered, and the arbiter starts a new worker that serves."""
    with local_stack(tmp_path, CONFIG, workers=2) as stack:
        arbiter = running_arbiter(stack)
        workers = descendants(arbiter)
        assert len(workers) == 2, workers
        connections = [socket.create_connection(("127.0.0.1", stack.port), timeout=10) for _ in range(16)]
        try:
            for connection in connections:  # each taken up by a worker
                connection.sendall(b"GET /api/v3/status HTTP/1.1\r\nHost: x\r\n\r\n")
                assert read_answer(connection).startswith(b"HTTP/1.1 200")
            owners = [worker_serving(connection, stack.port, workers) for connection in connections]
            killed = owners[0]
            assert set(owners) == workers, owners  # 16 connections, each worker some (1 in 2^15 not)
            for connection in connections:
                connection.sendall(b"GET /api/v3/status HTTP/1.1\r\nHost: x\r\n")  # the head's end to come
            os.kill(killed, signal.SIGKILL)
            wait_for(lambda: not alive(killed), 10, "the worker to die")
            for connection, owner in zip(connections, owners, strict=True):
                if owner == killed:
                    with contextlib.suppress(ConnectionResetError, BrokenPipeError):
                        connection.sendall(b"\r\n")
                        assert connection.recv(65536) == b""
                else:
                    connection.sendall(b"\r\n")
                    assert read_answer(connection).startswith(b"HTTP/1.1 200")
            wait_for(lambda: len(descendants(arbiter) - {killed}) == 2, 30, "a new worker", stack.log)
            assert [call("GET", f"{stack.api}/status")[0] for _ in range(20)] == [200] * 20
        finally:
            for connection in connections:
                connection.close()
        assert "Traceback" not in stack.log()


@pytest.mark.slow
def test_a_killed_http_servers_port_stays_the_stacks_until_its_replacement_serves(tmp_path: Path) -> None:
    """Between the front's death and its replacement's bind (a fresh interpreter importing the
    app: a second or more under load) the port was free, and any process of the machine taking it
    left the stack without HTTP for good (the new workers cannot bind). The stack, paused here so
    the moment lasts, holds it meanwhile."""
    with local_stack(tmp_path, CONFIG, workers=2) as stack:
        arbiter = running_arbiter(stack)
        workers = descendants(arbiter)
        stop_process(stack.process.pid)
        try:
            os.kill(arbiter, signal.SIGKILL)
            for pid in workers:
                os.kill(pid, signal.SIGKILL)
            wait_for(lambda: not listeners_carrying(stack.port, str(tmp_path)), 20, "the front to be gone")
            assert not taken_by_another_process(stack.port)
        finally:
            os.kill(stack.process.pid, signal.SIGCONT)
        wait_for(lambda: http_arbiter(stack) not in (None, arbiter) and call("GET", f"{stack.api}/status")[0] == 200,
                 60, "a new HTTP front to serve", lambda: stack.log())


@pytest.mark.slow
def test_an_http_server_killed_again_soon_after_its_restart_is_started_again(tmp_path: Path) -> None:
    """`kill -9` of the arbiter right after the stack started, and again right after its
    replacement served: each time a new front serves, and the stack (its scheduler, its Redis)
    goes on. Before, a front that died within 30 s of its start stopped the whole stack (exit 1)
    for good, whatever killed it."""
    with local_stack(tmp_path, CONFIG, workers=2) as stack:
        for _ in range(2):
            arbiter = running_arbiter(stack)
            os.kill(arbiter, signal.SIGKILL)
            wait_for(lambda killed=arbiter: http_arbiter(stack) not in (None, killed)
                     and call("GET", f"{stack.api}/status")[0] == 200, 60, "a new HTTP front to serve", stack.log)
        assert stack.process.poll() is None, stack.log()
        assert call("POST", f"{stack.api}/vm/proc-debian")[0] == 200


@pytest.mark.slow
def test_an_http_server_that_cannot_start_again_stops_the_stack(tmp_path: Path) -> None:
    """A front that exits on its own before serving (here: the config it loads became unreadable,
    as a broken install would make it) is not restarted in a loop: the stack says so and stops,
    taking its workers along."""
    with local_stack(tmp_path, CONFIG, workers=2) as stack:
        children = descendants(stack.process.pid)
        (stack.state_dir / "config.json").write_text("{")
        os.kill(running_arbiter(stack), signal.SIGKILL)
        assert stack.process.wait(60) == 1, stack.log()
        wait_for(lambda: not any(alive(pid) for pid in children), 20, "the stack's children to stop")
        assert "the HTTP server stopped (1) before it served; stopping" in stack.log(), stack.log()
        assert not our_listeners(tmp_path, stack.port)


def test_ctrl_c_stops_a_stack_started_with_sigint_ignored(tmp_path: Path) -> None:
    """Started as a script's background job (`make run &`, nohup): SIGINT is ignored on entry, and
    Python keeps it so. Ctrl-C still stops the whole stack cleanly; before, it stopped gunicorn
    alone and the stack exited 1, reporting its HTTP server lost."""
    with local_stack(tmp_path, CONFIG, workers=1, sigint_ignored=True) as stack:
        children = descendants(stack.process.pid)
        assert children
        assert stop(stack.process) == 0, stack.log()
    wait_for(lambda: not any(alive(pid) for pid in children), 20, "the stack's children to stop")
    assert "vmpool: stopped" in stack.log() and "the HTTP server stopped" not in stack.log()
    assert not our_listeners(tmp_path, stack.port)


def test_ctrl_c_stops_the_stack_with_a_clean_last_line_and_no_warning_of_the_http_front(tmp_path: Path) -> None:
    """Ctrl-C (SIGINT to the terminal's process group, the HTTP workers too) is a clean stop: exit
    0 and "vmpool: stopped" last. Before, the arbiter logged a warning per worker as it went,
    "Worker (pid:...) was sent SIGINT!": uvicorn re-raised the SIGINT it had handled, and each
    worker died of it."""
    with local_stack(tmp_path, CONFIG, workers=2) as stack:
        assert call("GET", f"{stack.api}/status")[0] == 200
        assert stop(stack.process) == 0, stack.log()
    lines = stack.log().splitlines()
    assert lines[-1] == "vmpool: stopped", lines
    front = [json.loads(line) for line in lines if line.startswith("{")]
    front = [line for line in front if str(line.get("logger", "")).startswith(("gunicorn", "uvicorn"))]
    assert front == [] and "was sent" not in stack.log(), front


CTRL_C_AT_IMPORT = """
import os, signal, sys

class CtrlCAtImport:
    \"\"\"Ctrl-C (SIGINT to the whole process group, as a terminal sends it) at the first import
    of the module CTRL_C_AT_IMPORT names: a point of the start-up, reached without timing.\"\"\"
    fired = False

    def find_spec(self, name, path=None, target=None):
        if name == os.environ["CTRL_C_AT_IMPORT"] and not CtrlCAtImport.fired:
            CtrlCAtImport.fired = True
            print(f"ctrl-c at import of {name}", file=sys.stderr, flush=True)
            os.killpg(0, signal.SIGINT)
        return None

if os.environ.get("CTRL_C_AT_IMPORT"):
    sys.meta_path.insert(0, CtrlCAtImport())
"""


@pytest.mark.parametrize("module, workers", [
    ("argparse", 1),  # local.run's own imports, before main()
    ("redis", 1),  # main()'s first imports, before the state directory is locked
    ("pydantic", 1),  # the config's check, in its child process, while the stack waits for its verdict
    ("chalicelib.store", 1),  # after the stack's redis-server started
    ("uvicorn.loops.asyncio", 0),  # WORKERS=0: imported by the HTTP loops starting in the stack's process
])
def test_ctrl_c_while_the_stack_starts_prints_one_line_and_stops_what_it_started(tmp_path: Path, module: str,
                                                                                 workers: int) -> None:
    """Ctrl-C in the first second of `make run` (its imports: redis, pydantic in the config's
    check) printed a 20-40 line KeyboardInterrupt traceback (two, the check's child's too) and
    exited 130. Now: "vmpool: stopped", exit 0, as a Ctrl-C later, with nothing left running."""
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(CTRL_C_AT_IMPORT)
    config_file = tmp_path / "vmpool.yaml"
    config_file.write_text(CONFIG)
    port, redis_port = free_ports(2)
    env = {**stack_env(config_file, tmp_path / "state"), "PYTHONPATH": str(hook), "CTRL_C_AT_IMPORT": module}
    run = subprocess.run(stack_command(port, workers, 30) + ["--redis-port", str(redis_port)], cwd=REPO_ROOT, env=env,
                         capture_output=True, text=True, timeout=120, start_new_session=True)
    assert run.stderr == f"ctrl-c at import of {module}\n", run.stderr  # it was reached, and no traceback
    assert (run.returncode, run.stdout) == (0, "vmpool: stopped\n"), run
    if module == "chalicelib.store":
        assert (tmp_path / "state" / "redis-dummy.log").exists()  # its redis-server had started
    assert not our_listeners(tmp_path, redis_port, port)
    # Its state directory is free for the next stack (no process of this one holds its lock).
    with local_stack(tmp_path, CONFIG, workers=1, name="next", state_dir=tmp_path / "state") as after:
        assert call("GET", f"{after.api}/status")[0] == 200


def start_refused(tmp_path: Path, config: str) -> subprocess.CompletedProcess[str]:
    """``local.run`` started with ``config`` (written to tmp_path/vmpool.yaml): it must exit 2."""
    config_file = tmp_path / "vmpool.yaml"
    config_file.write_text(config)
    port, redis_port = free_ports(2)
    run = subprocess.run(stack_command(port, 1, 30) + ["--redis-port", str(redis_port)], cwd=REPO_ROOT,
                         env=stack_env(config_file, tmp_path / "state"), capture_output=True, text=True, timeout=60)
    assert run.returncode == 2, run
    assert "redis on port" not in run.stdout and "Traceback" not in run.stderr, run
    assert not our_listeners(tmp_path, redis_port, port)  # nothing was started
    return run


def test_a_bad_config_is_refused_before_anything_starts(tmp_path: Path) -> None:
    run = start_refused(tmp_path, CONFIG.replace("size: 2", "size: -2"))
    assert "size" in run.stderr, run.stderr


@pytest.mark.slow
def test_a_killed_redis_server_is_started_again_with_everything_it_acknowledged(tmp_path: Path) -> None:
    """`kill -9` of the stack's redis-server (a crash, the OOM killer): the stack starts it again
    on its port and data, and the service carries on where it was; before, every request
    answered 503 until someone restarted `make run`."""
    with local_stack(tmp_path, CONFIG, workers=1, interval=0.5) as stack:
        wait_for(lambda: call("POST", f"{stack.api}/vm/proc-debian")[0] == 200, 30, "a first checkout")
        assert call("GET", f"{stack.api}/status")[1]["pools"]["proc-debian"]["running"] == 1
        redis_pid = next(pid for pid in descendants(stack.process.pid)
                         if b"redis-server" in Path(f"/proc/{pid}/cmdline").read_bytes())
        os.kill(redis_pid, signal.SIGKILL)
        wait_for(lambda: not alive(redis_pid), 10, "redis-server to die")

        # Served again, the VM checked out before the crash still its user's and not handed out again.
        wait_for(lambda: call("GET", f"{stack.api}/status")[0] == 200, 30, "the service to answer again",
                 lambda: stack.log())
        assert call("GET", f"{stack.api}/status")[1]["pools"]["proc-debian"]["running"] == 1
        wait_for(lambda: call("POST", f"{stack.api}/vm/proc-debian")[0] == 200, 30, "a checkout after the crash")
        assert stack.process.poll() is None
        assert "redis-server exited" in stack.log()
        # Its own log in the state directory tells both starts (and what it found on disk).
        redis_log = (stack.state_dir / "redis-dummy.log").read_text()
        assert redis_log.count("Ready to accept connections") == 2, redis_log


def test_the_stacks_redis_log_is_bounded_across_starts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Redis never rotates its log: a stack's redis-server finding its log over LOG_BYTES at a start
    moves it aside (replacing the one moved before), so two files of about that size at most."""
    import local.redis_server as redis_server_module

    monkeypatch.setattr(redis_server_module, "LOG_BYTES", 200)
    log_file = tmp_path / "redis.log"
    log_file.write_text("an old start\n" * 20)
    (tmp_path / "redis.log.1").write_text("an older one\n")
    server = redis_server_module.RedisServer(data_dir=tmp_path / "data", log_file=log_file)
    try:
        server.start()
        assert (tmp_path / "redis.log.1").read_text() == "an old start\n" * 20
        assert log_file.read_text().count("Ready to accept connections") == 1
        server.stop()
        server.start()  # its first start's log is over the bound too: moved aside, replacing the old one
        assert (tmp_path / "redis.log.1").read_text().count("Ready to accept connections") == 1
        assert log_file.read_text().count("Ready to accept connections") == 1
        server.stop()
        monkeypatch.setattr(redis_server_module, "LOG_BYTES", 1_000_000)
        server.start()  # under the bound: it carries on in the same file
        assert log_file.read_text().count("Ready to accept connections") == 2
    finally:
        server.stop()


@contextlib.contextmanager
def first_port_taken(harness: object, monkeypatch: pytest.MonkeyPatch) -> Iterator[int]:
    """The first port ``harness`` (a module) picks with free_port() is taken by another process
    (a socket listening on it, yielded) by the time its stack binds it; free ones after."""
    with socket.socket() as taker:
        taker.bind(("127.0.0.1", 0))
        taker.listen()
        taken = taker.getsockname()[1]
        chosen = iter([taken])
        monkeypatch.setattr(harness, "free_port", lambda: next(chosen, 0) or free_port())
        yield taken


@pytest.mark.slow
def test_a_stack_whose_port_was_taken_after_it_was_chosen_starts_on_another(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The harness picks a free port, then the stack binds it seconds later: any process of the
    machine may take it in between (an outgoing connection gets such a port as its own), and the
    stack refuses, "port N is in use". A test of restart recovery failed so once in a full run at
    load 14. The harnesses now start the stack again on another port (the refusal itself is
    tested where it is meant: test_two_stacks_started_at_once_on_one_port_do_not_both_serve_it)."""
    import tests.local.stack as harness

    with first_port_taken(harness, monkeypatch) as taken, local_stack(tmp_path, CONFIG, workers=1) as stack:
        assert stack.port != taken
        assert call("GET", f"{stack.api}/status")[0] == 200


@pytest.mark.slow
def test_a_bench_or_fuzz_stack_whose_port_was_taken_after_it_was_chosen_starts_on_another(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The same for ``local.stack`` (the benchmarks' and the fuzz tests' stack)."""
    import local.stack as harness

    with first_port_taken(harness, monkeypatch) as taken, harness.local_stack(CONFIG, workers=1) as stack:
        assert stack.port != taken
        assert call("GET", f"http://127.0.0.1:{stack.port}/api/v3/status")[0] == 200


@pytest.mark.slow
def test_the_dashboard_tests_stack_whose_port_was_taken_after_it_was_chosen_starts_on_another(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The same for the stack the dashboard's browser tests start (and tests/core/test_local_stack.py
    and tests/infra/test_smoke.py, which chose their port the same way): they start theirs with
    this harness now. Before, each picked its port itself, with free_port() of its own module."""
    import tests.core.test_dashboard_browser as dashboard
    import tests.local.stack as harness

    with first_port_taken(harness, monkeypatch) as taken:
        monkeypatch.setattr(dashboard, "free_port", lambda: taken, raising=False)  # its own choice, before
        with dashboard.local_stack(tmp_path, CONFIG) as (base, _):
            assert base != f"http://127.0.0.1:{taken}"
            assert call("GET", f"{base}/api/v3/status")[0] == 200


@pytest.mark.slow
def test_an_http_front_whose_port_was_taken_after_it_was_chosen_starts_on_another(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The same for ``http_front`` (the HTTP front's own tests): gunicorn refuses a taken port
    ("Connection in use", then exits after 5 tries 1 s apart); before, the test then failed after
    waiting 30 s for a worker that never came."""
    from chalice import Chalice

    import tests.local.stack as harness
    from local.gateway import AsgiApp

    app = Chalice(app_name="front")
    app.route("/")(lambda: {"served": True})
    with first_port_taken(harness, monkeypatch) as taken, harness.http_front(lambda: AsgiApp(app)) as port:
        assert port != taken
        assert call("GET", f"http://127.0.0.1:{port}/") == (200, {"served": True})


def test_a_directory_whose_port_was_taken_after_it_was_chosen_starts_on_another() -> None:
    """The LDAP tests' slapd (tests/auth/slapd.py) binds ports chosen free earlier. When one was
    taken meanwhile, slapd exited and the fixture failed after its timeout, or (only the other
    port free) took the taker for its slapd. It now starts on fresh ports and really answers."""
    from ldap3 import Connection, Server

    from tests.auth.slapd import USERS, SlapdServer

    with socket.socket() as taker:
        taker.bind(("127.0.0.1", 0))
        taker.listen()
        taken = taker.getsockname()[1]
        with SlapdServer(port=taken) as directory:
            assert directory.port != taken
            user = next(iter(USERS))
            with Connection(Server(directory.host, port=directory.port), user=directory.dn(user),
                            password=directory.password(user)) as bound:
                assert bound.bound


def test_a_dns_server_whose_port_was_taken_after_it_was_chosen_starts_on_another(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The same for the DNS tests' named (tests/dns/bind.py), which went on serving without the
    taken port ("address in use") until its start timed out 20 s later. A restart keeps its port."""
    import tests.dns.bind as bind

    with socket.socket() as taker:
        taker.bind(("127.0.0.1", 0))
        taker.listen()
        taken = taker.getsockname()[1]
        chosen = iter([taken])
        monkeypatch.setattr(bind, "free_port", lambda fresh=bind.free_port: next(chosen, 0) or fresh())
        with bind.BindServer() as server:
            assert server.port != taken
            assert server.addresses(f"ns.{server.zone}") == ["127.0.0.1"]
            port = server.port
            server.stop()
            server.start()
            assert server.port == port
            assert server.addresses(f"ns.{server.zone}") == ["127.0.0.1"]


def test_a_dns_server_whose_port_another_named_took_starts_on_another_not_taking_it_for_its_own(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The port taken by another named (another test's, or another helper's, serving the same
    zone name): it answered the fixture's first SOA query before ours had logged "address in use",
    and the test went on with a server whose TSIG key it did not know. Ours must listen itself."""
    import tests.dns.bind as bind

    with bind.BindServer() as foreign:
        chosen = iter([foreign.port])
        monkeypatch.setattr(bind, "free_port", lambda fresh=bind.free_port: next(chosen, 0) or fresh())
        with bind.BindServer() as server:
            assert server.port != foreign.port
            assert server.process is not None and listening_pids(server.port) == {server.process.pid}
            server.add_record(f"mine.{server.zone}", "A", "192.0.2.1")  # its key: ours


def test_a_port_left_in_time_wait_by_the_last_stack_is_free_for_the_next() -> None:
    """`make run` stopped after serving, then started again on its port: the connections the
    old stack closed linger in TIME_WAIT for a minute. Before, the check that no stale stack
    still serves the port took them for one ("port ... is in use: is another `make run` still
    running?"), and the new stack refused to start for that minute."""
    from local.run import _require_free_port

    port = free_port()
    with socket.socket() as listener:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gunicorn's is
        listener.bind(("127.0.0.1", port))
        listener.listen()
        with pytest.raises(SystemExit, match="in use"):  # still served: refused
            _require_free_port(port)
        client = socket.create_connection(("127.0.0.1", port))
        served, _ = listener.accept()
        served.close()  # the server closes first, as a stopping stack does: TIME_WAIT on its side
        assert client.recv(1) == b""
        client.close()
    _require_free_port(port)  # nothing serves it any more


def test_a_port_refused_as_in_use_names_the_way_to_pick_another() -> None:
    """A user whose port 8000 another program holds was told only that it was in use; the
    README's `PORT=` is the way out, and the refusal now says it."""
    from local.run import _require_free_port

    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        with pytest.raises(SystemExit, match=rf"port {port} is in use.*`make run PORT=<another>`"):
            _require_free_port(port)


def run_refused(tmp_path: Path, port: int, redis_port: int, state_dir: Path) -> subprocess.CompletedProcess[str]:
    """A stack that must refuse to start: its exit, and what it said."""
    config_file = tmp_path / "refused.yaml"
    config_file.write_text(CONFIG)
    return subprocess.run(stack_command(port, 1, 30) + ["--redis-port", str(redis_port)], cwd=REPO_ROOT,
                          env=stack_env(config_file, state_dir), capture_output=True, text=True, timeout=60)


def test_two_stacks_started_at_once_on_one_port_do_not_both_serve_it(tmp_path: Path) -> None:
    """Two `make run` started together on one port (different state directories): both found the
    port free before either's workers bound it (SO_REUSEPORT), and both served it, each with its
    own Redis: the kernel spread callers over two services with different VMs. A stack now claims
    the port before its check, and the other refuses."""
    from local.run import _require_free_port

    port, redis_port = free_ports(2)
    claim = _require_free_port(port)  # a first stack, checked the port, its workers not bound yet
    try:
        second = run_refused(tmp_path, port, redis_port, tmp_path / "second-state")
    finally:
        if claim is not None:
            claim.close()
    assert second.returncode == 1, second
    assert f"port {port} is in use" in second.stderr and "Traceback" not in second.stderr, second.stderr
    assert "vmpool: stopped" not in second.stdout, second.stdout  # it never started
    assert not our_listeners(tmp_path, port, redis_port)


def test_a_redis_port_held_by_another_server_is_refused_not_shared(tmp_path: Path) -> None:
    """VMPOOL_LOCAL_REDIS_PORT naming a port another Redis serves (a system one, another stack's):
    the stack's own redis-server could not bind it, the stack took the other one's PONG for its
    own, wrote its pools into that Redis, and logged "redis-server exited; starting it again"
    twice a second for as long as it ran. Now it says the port is taken and starts nothing."""
    from local.redis_server import RedisServer

    with RedisServer() as foreign:
        client = redis.Redis(port=foreign.port)
        client.set("someone-else", "data")
        port = free_port()
        run = run_refused(tmp_path, port, foreign.port, tmp_path / "state")
        assert run.returncode == 1, run
        assert f"port {foreign.port}" in run.stderr and "Traceback" not in run.stderr, run.stderr
        assert client.keys("*") == [b"someone-else"]  # nothing of the stack's written there
        assert not our_listeners(tmp_path, port)
        client.close()


def test_a_free_redis_port_taken_before_redis_binds_it_moves_to_another(monkeypatch: pytest.MonkeyPatch) -> None:
    """The free port the stack picked for its Redis taken by another process before redis-server
    bound it (helpers, tests and stacks pick ports at once): a fresh port, never the other's server."""
    import local.redis_server as redis_server_module
    from local.redis_server import RedisServer

    with RedisServer() as foreign:
        ports = iter([foreign.port])
        real_free_port = redis_server_module.free_port
        monkeypatch.setattr(redis_server_module, "free_port", lambda: next(ports, None) or real_free_port())
        with RedisServer() as ours:
            assert ours.port != foreign.port
            client = redis.Redis(port=ours.port)
            assert client.info("server")["process_id"] == ours.process.pid  # type: ignore[union-attr]
            client.close()


def test_an_unusable_state_directory_is_refused_with_a_message(tmp_path: Path) -> None:
    """VMPOOL_STATE_DIR naming a file (or a read-only or full file system): before, a Python
    traceback (FileExistsError, OSError: Read-only file system, No space left on device)."""
    not_a_directory = tmp_path / "a-file"
    not_a_directory.write_text("")
    port, redis_port = free_ports(2)
    run = run_refused(tmp_path, port, redis_port, not_a_directory)
    assert run.returncode == 1, run
    assert f"cannot use {not_a_directory} as the state directory" in run.stderr, run.stderr
    assert "Traceback" not in run.stderr
    assert not our_listeners(tmp_path, port, redis_port)


def assert_the_stack_under_make_stops(tmp_path: Path, stop: Callable[[subprocess.Popen[bytes]], None]) -> None:
    """`make run` (a Makefile running local.run, as ours does) started and serving, then ``stop``
    given make's process: the whole stack below make (local.run, gunicorn's arbiter, its worker,
    redis-server) stops, with local.run's clean-up done, and the port no longer served."""
    makefile = tmp_path / "Makefile"
    makefile.write_text(f"run:\n\t{sys.executable} -m local.run --port $(PORT) --workers 1 --interval 30\n")
    config_file = tmp_path / "make.yaml"
    config_file.write_text(CONFIG)
    port = free_port()
    log_path = tmp_path / "make.log"
    with log_path.open("wb") as log:
        make = subprocess.Popen(["make", "-s", "-f", str(makefile), "run", f"PORT={port}"], cwd=REPO_ROOT,
                                env=stack_env(config_file, tmp_path / "state"), stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for(lambda: "redis on port" in log_path.read_text(), 30, "the stack to start", log_path.read_text)
        stack = descendants(make.pid)
        assert len(stack) >= 3, stack  # local.run, gunicorn's arbiter, a worker, redis-server
        stop(make)
        make.wait()
        wait_for(lambda: not any(alive(pid) for pid in stack), 20, "the stack to stop",
                 lambda: f"still alive: {[pid for pid in stack if alive(pid)]}\n{log_path.read_text()}")
        assert not our_listeners(tmp_path, port)
        assert "vmpool: stopped" in log_path.read_text()
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(make.pid, signal.SIGKILL)


@pytest.mark.slow
def test_sigkill_of_make_above_the_stack_stops_the_stack(tmp_path: Path) -> None:
    """`make run` SIGKILLed (an IDE's stop button, a CI job's timeout kill the process they
    started: make): make cannot pass anything on, and the whole stack (scheduler, HTTP workers,
    redis-server) went on serving, orphaned. It now stops as on Ctrl-C."""
    assert_the_stack_under_make_stops(tmp_path, lambda make: make.kill())


@pytest.mark.slow
def test_sigterm_to_make_runs_process_group_stops_the_stack(tmp_path: Path) -> None:
    """`kill -- -<pgid>` of `make run` (a terminal's job control, a supervisor stopping the
    group, `timeout make run`): local.run gets two SIGTERMs at once, the group's and its
    parent-death signal as make dies; here, more of them while it stops. A second signal used to
    arrive while the first's handler was inside ``Event.set``: it waited for that lock forever
    (the stack hung with its children gone, seen with `make run`), or, under more signals, each
    blocked handler ran the next until Python's recursion limit killed the process before its
    clean-up (half the runs of this test failed so)."""
    def sigterms(make: subprocess.Popen[bytes]) -> None:
        run = next(pid for pid, parent in process_parents().items() if parent == make.pid)  # local.run
        os.killpg(make.pid, signal.SIGTERM)
        deadline = time.monotonic() + 3
        while alive(run) and time.monotonic() < deadline:  # more, as fast as they go, while it stops
            with contextlib.suppress(ProcessLookupError):
                os.kill(run, signal.SIGTERM)

    assert_the_stack_under_make_stops(tmp_path, sigterms)


# A child Python that starts a stack with a fixture's helper, prints the stack's pid, and waits.
STACK_HOLDERS = {
    "tests.local.stack": (
        "import sys, time; from pathlib import Path; from tests.local.stack import local_stack\n"
        "with local_stack(Path(sys.argv[1]), sys.argv[2], workers=1) as stack:\n"
        "    print(stack.process.pid, flush=True); time.sleep(600)\n"),
    "local.stack": (
        "import sys, time; from local.stack import local_stack\n"
        "with local_stack(sys.argv[2], workers=1) as stack:\n"
        "    print(stack.process.pid, flush=True); time.sleep(600)\n"),
}


@pytest.mark.slow
@pytest.mark.parametrize("helper", sorted(STACK_HOLDERS))
def test_a_stack_a_fixture_started_stops_when_the_test_process_is_sigkilled(tmp_path: Path, helper: str) -> None:
    """pytest SIGKILLed (a CI job's timeout) cannot stop the stacks its fixtures started: they
    went on running, orphaned (HTTP workers, redis-server, the scheduler). They now stop with it."""
    holder = subprocess.Popen([sys.executable, "-c", STACK_HOLDERS[helper], str(tmp_path), CONFIG], cwd=REPO_ROOT,
                              stdout=subprocess.PIPE, text=True, start_new_session=True)
    stack_pid = 0
    try:
        assert holder.stdout is not None
        stack_pid = int(holder.stdout.readline() or 0)
        assert stack_pid, f"the helper exited ({holder.wait()}) before its stack served"
        stack = {stack_pid, *descendants(stack_pid)}
        assert len(stack) >= 3, stack  # local.run, gunicorn's arbiter, a worker, redis-server
        holder.kill()
        holder.wait()
        wait_for(lambda: not any(alive(pid) for pid in stack), 20, "the stack to stop",
                 lambda: f"still alive: {[pid for pid in stack if alive(pid)]}")
    finally:
        for pgid in (holder.pid, stack_pid):
            with contextlib.suppress(ProcessLookupError):
                if pgid:
                    os.killpg(pgid, signal.SIGKILL)


def stack_redis(stack: RunningStack) -> int:
    """The pid of the stack's redis-server."""
    return next(pid for pid in descendants(stack.process.pid)
                if b"redis-server" in Path(f"/proc/{pid}/cmdline").read_bytes())


@pytest.mark.slow
def test_no_second_stack_starts_on_the_data_while_the_old_redis_still_runs(tmp_path: Path) -> None:
    """A SIGKILLed stack whose redis-server has not exited yet (stopped, busy, slow to flush):
    the lock on the state directory died with the stack's Python processes, and a new stack
    started a second redis-server on the same append-only file while the old one still held
    it. The old server now holds the lock until it has stopped."""
    with local_stack(tmp_path, CONFIG, workers=1) as stack:
        old_redis = stack_redis(stack)
        os.kill(old_redis, signal.SIGSTOP)  # it cannot act on the SIGTERM its parent's death sends
        try:
            children = descendants(stack.process.pid) - {old_redis}
            stack.process.kill()
            stack.process.wait()
            wait_for(lambda: not any(alive(pid) for pid in children), 20, "the HTTP front to stop")
            second = run_refused(tmp_path, *free_ports(2), stack.state_dir)
            assert second.returncode == 1, second
            assert "in use by another" in second.stderr, second.stderr
        finally:
            os.kill(old_redis, signal.SIGCONT)
        wait_for(lambda: not alive(old_redis), 20, "the old redis-server to stop")
        with local_stack(tmp_path, CONFIG, workers=1, name="next", state_dir=stack.state_dir) as after:
            assert call("GET", f"{after.api}/status")[0] == 200


@pytest.mark.slow
def test_sigkill_of_a_vcsim_stack_stops_its_simulator_too(tmp_path: Path) -> None:
    """`make run PROVIDER=vcsim` SIGKILLed: the HTTP front and redis-server stopped with it, the
    vCenter simulator went on running, orphaned, one more each time."""
    with local_stack(tmp_path, CONFIG, workers=1, extra_args=["--provider", "vcsim"]) as stack:
        children = descendants(stack.process.pid)
        assert any(b"vcsim" in Path(f"/proc/{pid}/cmdline").read_bytes() for pid in children), children
        stack.process.kill()
        stack.process.wait()
        wait_for(lambda: not any(alive(pid) for pid in children), 20, "the stack's children to stop",
                 lambda: f"still alive: {[pid for pid in children if alive(pid)]}\n{stack.log()}")


def test_a_key_written_twice_is_refused_before_anything_starts_naming_its_lines(tmp_path: Path) -> None:
    """Before, the pool's last `size:` won silently and the stack served it."""
    run = start_refused(tmp_path, CONFIG.replace("size: 2,", "size: 2, size: 20,"))
    assert f"pools[0].size: written twice, at lines 5 and 5 of {tmp_path / 'vmpool.yaml'}" in run.stderr, run.stderr


def test_a_key_written_twice_with_one_value_starts_with_a_warning_at_start_and_in_the_logs(tmp_path: Path) -> None:
    config = CONFIG.replace("size: 2,", "size: 2, size: 2,")
    with local_stack(tmp_path, config, workers=1) as stack:
        warning = (f"pools[0].size: written twice, at lines 5 and 5 of {tmp_path / 'stack.yaml'}, with the "
                   "same value: one is enough")
        assert f"vmpool: config warning: {warning}\n" in stack.log()
        assert call("GET", f"{stack.api}/status")[0] == 200
        # The processes serving it log it too, as JSON lines.
        wait_for(lambda: any(json.loads(line).get("message") == f"config: {warning}"
                             for line in stack.log().splitlines() if line.startswith("{")),
                 20, "a JSON log line of the warning", stack.log)


@pytest.mark.parametrize("arguments, says", [
    (["--port", "0"], "--port: 0 is not a TCP port"),  # each worker would bind a port of its own
    (["--port", "70000"], "--port: 70000 is not a TCP port"),  # was a traceback (OverflowError)
    (["--port", "http"], "--port: http is not a TCP port"),
    (["--redis-port", "-1"], "--redis-port: -1 is not a TCP port"),
    (["--interval", "0"], "--interval: 0 is not a positive number"),  # a tick loop that never waits
    (["--threads", "100000"], "--threads: 100000 is not a number of threads (1 to 32)"),  # was started
    (["--threads", "0"], "--threads: 0 is not a number of threads"),
    # one loop in the one process: a login held 23 s by a stopped directory held every caller as long
    (["--workers", "0", "--threads", "1"], "--threads 1 with --workers 0: one event loop held by a slow request"),
    # was started: 100,000 forks, until the system refused one
    (["--workers", str(most_workers() + 1)],
     f"--workers: {most_workers() + 1} is not a number of workers (0 to {most_workers()}: 4 a core;"),
    (["--workers", "-1"], "--workers: -1 is not a number of workers"),  # was taken for 1 (0 is one process now)
    (["--workers", "many"], "--workers: many is not a number of workers"),
])
def test_bad_command_line_values_are_refused_before_anything_starts(tmp_path: Path, arguments: list[str],
                                                                    says: str) -> None:
    """`make run PORT=0` served on a different free port in each worker (the banner said port 0),
    PORT=70000 was a traceback after redis-server had started, --interval 0 ticked in a busy loop,
    --threads 100000 had each worker start threads until the system refused one."""
    config_file = tmp_path / "cli.yaml"
    config_file.write_text(CONFIG)
    command = stack_command(free_port(), 1, 30) + arguments  # the last of a repeated option wins
    run = subprocess.run(command, cwd=REPO_ROOT, env=stack_env(config_file, tmp_path / "state"),
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 2, run
    assert says in run.stderr and "Traceback" not in run.stderr, run.stderr
    assert not (tmp_path / "state").exists()  # nothing started, nothing written


def test_a_workers_setting_that_is_no_number_is_refused_without_a_traceback(tmp_path: Path) -> None:
    """`make run WORKERS=two` was a ValueError traceback (the default was parsed before argparse)."""
    config_file = tmp_path / "cli.yaml"
    config_file.write_text(CONFIG)
    command = stack_command(free_port(), 1, 30)
    del command[command.index("--workers"):command.index("--workers") + 2]
    run = subprocess.run(command, cwd=REPO_ROOT, env={**stack_env(config_file, tmp_path / "state"), "WORKERS": "two"},
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 2, run
    assert "--workers: two is not a number of workers" in run.stderr and "Traceback" not in run.stderr, run.stderr
    assert not (tmp_path / "state").exists()


def test_the_banner_says_worker_for_one_worker(tmp_path: Path) -> None:
    """It said "with 1 workers"."""
    with local_stack(tmp_path, CONFIG, workers=1) as stack:
        wait_for(lambda: "/api/v3 with 1 worker; redis on port" in stack.log(), 20, "the banner", stack.log)


@pytest.mark.parametrize("workers", [1, 0], ids=["one-worker", "one-process"])
def test_the_stacks_processes_do_not_hold_the_config_parsers(tmp_path: Path, workers: int) -> None:
    """The YAML config is read and validated in processes that exit, so the scheduler's process,
    the arbiter and the HTTP workers forked from it never load PyYAML's libyaml nor pydantic's
    core (memory each of them would hold: docs/performance.md, "Memory (item 6)"). Before, the
    config watch listed the config's files in the stack's process before the front was forked
    from it: every process held PyYAML."""
    with local_stack(tmp_path, CONFIG, workers=workers) as stack:
        assert call("GET", f"{stack.api}/status")[0] == 200
        processes = {stack.process.pid, *descendants(stack.process.pid)}
        service = [pid for pid in processes if b"redis-server" not in _cmdline(pid)]
        # the scheduler's process, the arbiter, a worker; or the one process serving HTTP too
        assert len(service) >= (3 if workers else 1), service
        for pid in service:
            mapped = Path(f"/proc/{pid}/maps").read_text()
            for parser in ("_yaml.cpython", "pydantic_core"):
                assert parser not in mapped, f"{parser} loaded in {_cmdline(pid)!r} ({pid})"
