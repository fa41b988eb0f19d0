"""The tests' port helpers (tests/support.py): ports chosen for one server are distinct, and "our
server no longer serves the port" is asked of the processes that listen on it, not of the port,
which any other process of the machine may bind once our server died."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import redis

from local.processes import on_a_free_port
from local.redis_server import RedisServer
from tests.dns.bind import BindServer
from tests.local.stack import wait_for
from tests.local.stack_audit import Stack, dummy_inventory, serving
from tests.support import TAKE_PORT, free_ports, listeners_carrying, listening_pids, taken_by_another_process
from tests.vsphere.vcsim import VcsimServer

LISTENER = """
import socket, sys, time
family = socket.AF_INET6 if sys.argv[1] == "::1" else socket.AF_INET
server = socket.socket(family)
server.bind((sys.argv[1], 0))
server.listen()
print(server.getsockname()[1], flush=True)
time.sleep(600)
"""


def start_listener(address: str, env: dict[str, str], cwd: Path | None = None) -> tuple[subprocess.Popen[str], int]:
    """A child process listening on a free port of ``address``; it and its port."""
    child = subprocess.Popen([sys.executable, "-c", LISTENER, address], env=env, cwd=cwd, stdout=subprocess.PIPE,
                             text=True)
    assert child.stdout is not None
    return child, int(child.stdout.readline())


def test_a_listener_started_with_the_mark_is_ours_and_one_bound_after_its_death_is_not(tmp_path: Path) -> None:
    """A stack's process killed, then another process binding the port it freed (seen once in a
    few hundred runs: "redis-server still serves"): the port answers, but nothing of ours holds it."""
    child, port = start_listener("127.0.0.1", {**os.environ, "VMPOOL_STATE_DIR": str(tmp_path / "state")})
    try:
        assert list(listeners_carrying(port, str(tmp_path))) == [child.pid]
        assert "time.sleep" in listeners_carrying(port, str(tmp_path))[child.pid]
        assert listeners_carrying(port, str(tmp_path / "another-test")) == {}
    finally:
        child.kill()
        child.wait()
        assert child.stdout is not None
        child.stdout.close()
    with socket.socket() as other:  # another test's server takes the freed port at once
        other.bind(("127.0.0.1", port))
        other.listen()
        socket.create_connection(("127.0.0.1", port), timeout=5).close()  # the port still answers
        assert listening_pids(port) == {os.getpid()}
        assert listeners_carrying(port, str(tmp_path)) == {}


def test_an_ipv6_listener_marked_by_its_working_directory_or_command_line_counts(tmp_path: Path) -> None:
    """redis-server overwrites its environment and command line with its title, but works in its
    data directory, under the stack's state directory; a server may listen on ::1."""
    if not socket.has_ipv6:
        return
    environment = {key: value for key, value in os.environ.items() if str(tmp_path) not in value}
    try:
        child, port = start_listener("::1", environment, cwd=tmp_path)
    except ValueError:  # no ::1 on this machine: it printed nothing
        return
    try:
        assert list(listeners_carrying(port, str(tmp_path))) == [child.pid]  # its working directory
        assert list(listeners_carrying(port, "time.sleep(600)")) == [child.pid]  # its command line
    finally:
        child.kill()
        child.wait()
        assert child.stdout is not None
        child.stdout.close()
    assert child.pid not in listening_pids(port)


def test_the_ports_chosen_for_one_server_are_distinct() -> None:
    """slapd's two ports came from two free_port() calls, which may return one port twice (each
    probe is closed before the next binds): slapd then exited at start, and with neither port
    held by anyone, its fixture did not try fresh ones. 500 ports from free_port() alone repeat
    one almost surely (about 14,000 even ports to pick from)."""
    ports = free_ports(500)
    assert len(set(ports)) == 500


def test_a_closed_port_refuses_connections_and_no_other_process_can_take_it(closed_port: int) -> None:
    """The ``closed_port`` fixture, "LDAP (or Redis) is down": a port of free_port() could be bound
    by another process before the test connected, which then met that process, not an outage."""
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", closed_port), timeout=5)
    for reuse in ("0", "1"):
        taker = subprocess.run([sys.executable, "-c", TAKE_PORT, str(closed_port), reuse], capture_output=True,
                               text=True)
        assert taker.returncode != 0 and "Address already in use" in taker.stderr, taker
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", closed_port), timeout=5)


@pytest.mark.parametrize("down", ["killed", "stopped to restart", "crashed"])
def test_a_redis_server_down_between_its_starts_keeps_its_port(down: str) -> None:
    """kill() (a crash) or stop(restart=True), then start() on the same port, as the chaos tests
    do: while it was down any process could bind the freed port, and the restart then failed
    ("something else listens on it"). The port is held until it starts; a final stop() frees it.
    "crashed": the server dies on its own (SIGKILL from outside, the OOM killer), as `make run`'s
    RedisRestarts finds it, up to half a second later: its port was free until then."""
    server = RedisServer().start()
    try:
        port = server.port
        if down == "crashed":
            assert server.process is not None
            os.kill(server.process.pid, signal.SIGKILL)
            server.process.wait()
        else:
            server.kill() if down == "killed" else server.stop(restart=True)
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=5)
        assert not taken_by_another_process(port)
        server.start()
        assert server.port == port
        client = redis.Redis(port=port, socket_timeout=5)
        assert client.info("server")["process_id"] == server.process.pid  # type: ignore[union-attr]
        client.close()
    finally:
        server.stop()
    assert taken_by_another_process(port)


def test_make_runs_redis_restart_after_a_crash_is_on_its_port_though_another_process_wanted_it() -> None:
    """`make run`'s redis-server crashed: its HTTP workers and scheduler hold its address, so
    RedisRestarts starts it again on that port only; a port taken meanwhile (by any process of the
    machine: an outgoing connection, another test's server) stopped the whole stack after 30 s of
    503s. The port stays held from the crash to the restart."""
    from local.run import RedisRestarts

    server = RedisServer().start()
    try:
        restarts = RedisRestarts(server, give_up_seconds=0)
        port, crashed = server.port, server.process
        assert crashed is not None
        os.kill(crashed.pid, signal.SIGKILL)
        crashed.wait()
        assert not taken_by_another_process(port)  # before the stack's next look
        assert restarts.check() is None
        assert server.port == port and server.process is not None and server.process.pid != crashed.pid
        client = redis.Redis(port=port, socket_timeout=5)
        assert client.info("server")["process_id"] == server.process.pid
        client.close()
    finally:
        server.stop()


def test_a_simulator_and_a_dns_server_stopped_and_started_again_keep_their_ports(private_vcsim: VcsimServer) -> None:
    """vcsim's and named's tests stop them (a vCenter or DNS outage) and start them again on the
    same port: the port is held meanwhile, and given back when the server's ``with`` block ends."""
    with BindServer() as named:
        for server in (private_vcsim, named):
            port = server.port
            server.stop()
            with pytest.raises(ConnectionRefusedError):
                socket.create_connection(("127.0.0.1", port), timeout=5)
            assert not taken_by_another_process(port), server
            server.start()
            assert server.port == port
            socket.create_connection(("127.0.0.1", port), timeout=5).close()
            assert listening_pids(port) == {server.process.pid}  # type: ignore[union-attr]
    assert taken_by_another_process(named.port)


def test_a_port_chosen_for_a_server_is_held_until_it_has_started() -> None:
    """The local stacks, HTTP fronts, moto and TLS Redis of the tests start on a port chosen
    free (``on_a_free_port``): their start takes seconds under load, and another process (the
    kernel hands the port to the next free_port() of any test) could take the port meanwhile.
    It is held until the start returns; the server, binding with SO_REUSEADDR, binds beside."""
    def start(port: int) -> socket.socket:
        assert not taken_by_another_process(port)
        server = socket.socket()
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(("127.0.0.1", port))
        server.listen()
        return server

    port, server = on_a_free_port(lambda: free_ports(1)[0], start, lambda port: False)
    with server:
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
    assert taken_by_another_process(port)  # the hold went with the start


def test_a_dns_server_killed_keeps_its_port_for_the_fixtures_restart(bind: BindServer) -> None:
    """The DNS tests `kill -9` named (a crash) and the ``bind`` fixture starts it again on its
    port, for the next test: the port was free meanwhile, and a process taking it failed that
    restart ("address in use"), and every DNS test after it."""
    assert bind.process is not None
    port = bind.port
    os.kill(bind.process.pid, signal.SIGKILL)
    bind.process.wait()
    assert not taken_by_another_process(port)
    bind.start()
    assert bind.port == port and listening_pids(port) == {bind.process.pid}


def test_the_audits_stack_killed_keeps_its_http_port_for_its_restart(tmp_path: Path) -> None:
    """The process-fault audits (tests/local/stack_audit.py) `kill -9` the whole stack and start
    it again on its port, which its callers keep: the port was free meanwhile, and a process
    taking it made the restart refuse ("port N is in use") and the audit fail."""
    stack = Stack(tmp_path, AUDIT_CONFIG, {"p": 1}, dummy_inventory)
    try:
        stack.start()
        port = stack.port
        stack.kill()
        assert not taken_by_another_process(port)
        stack.start()
        wait_for(lambda: serving(stack), 60, "the stack to serve again", stack.log)
        assert stack.port == port
    finally:
        stack.stop()
    wait_for(lambda: taken_by_another_process(port), 20, "the port given back once the stack's workers exit")


AUDIT_CONFIG = (
    "config: {domain: example.com, check_loop_delay_min: 1}\n"
    "providers:\n  dummy: {provider_class: dummy, createvm_max_time: 0, boot_time: 0, destroyvm_max_time: 0}\n"
    "pools:\n  - {name: p, size: 1, provider: dummy}\n"
)
