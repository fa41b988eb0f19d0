"""A Redis loading its data (a restart, a replica's full resync, a reload) answers ``LOADING``
to every command: a refusal that arrived, the command never run. The client (store.connect) reported it as a lost reply
(``ReplyLost``: it may have run), so callers that must know took the path of a change perhaps
made: a POST /token settled three times more on the loading server before its 503, the dummy
provider's clone write was followed as if recorded. Now it is never run (``never_sent``), and not
sent again at once (a server loading now is loading a moment later); several commands written at
once stay "may have run": the load may end between them.

A real redis-server loading a snapshot slowly (``key-load-delay``, its own test knob) and
answering clients while it loads (``loading-process-events-interval-bytes``): started on it, or
reloading it (``DEBUG RELOAD``) under a connection opened and checked before, as one in a pool is."""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path
from typing import Iterator

import pytest
import redis

from chalicelib.config import RedisConfig
from chalicelib.store.connection import ReplyLost, never_sent
from tests.support import eventually, free_ports, production_client

KEYS = 5_000
LOAD_DELAY_MICROSECONDS = 4_000
"""Per key: a load takes 20 s, far longer than the test (which kills the server first)."""


@pytest.fixture
def loading_port(tmp_path: Path) -> Iterator[int]:
    """The port of a redis-server with a snapshot of KEYS keys, each loaded slowly."""
    (port,) = free_ports(1)
    process = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--dir", str(tmp_path), "--save", "",
         "--appendonly", "no", "--loglevel", "warning", "--key-load-delay", str(LOAD_DELAY_MICROSECONDS),
         "--loading-process-events-interval-bytes", "1024", "--enable-debug-command", "local"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        writer = redis.Redis(port=port, socket_timeout=2)
        eventually(writer.ping, 10, "the server to answer", ignoring=(redis.ConnectionError,))
        writer.eval(f"for i = 1, {KEYS} do redis.call('SET', 'k' .. i, 'v') end", 0)
        writer.close()
        yield port
    finally:
        process.kill()
        process.wait(timeout=10)


@pytest.fixture
def restarted_port(tmp_path: Path) -> Iterator[int]:
    """The port of a redis-server started on a snapshot of KEYS keys, loading it (for 20 s)."""
    (first, port) = free_ports(2)
    base = ["redis-server", "--bind", "127.0.0.1", "--dir", str(tmp_path), "--save", "", "--appendonly", "no",
            "--loglevel", "warning"]
    before = subprocess.Popen([*base, "--port", str(first)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        writer = redis.Redis(port=first, socket_timeout=2)
        eventually(writer.ping, 10, "the server to answer", ignoring=(redis.ConnectionError,))
        writer.eval(f"for i = 1, {KEYS} do redis.call('SET', 'k' .. i, 'v') end", 0)
        writer.save()
        writer.close()
    finally:
        before.kill()
        before.wait(timeout=10)
    process = subprocess.Popen(
        [*base, "--port", str(port), "--key-load-delay", str(LOAD_DELAY_MICROSECONDS),
         "--loading-process-events-interval-bytes", "1024"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        probe = redis.Redis(port=port, socket_timeout=2)
        eventually(lambda: probe.info("persistence")["loading"] == 1, 10, "the server to be loading",
                   ignoring=(redis.ConnectionError,))
        probe.close()
        yield port
    finally:
        process.kill()
        process.wait(timeout=10)


def rejected(port: int) -> int:
    """Commands the server refused so far, any command (INFO answers while it loads)."""
    stats = redis.Redis(port=port, socket_timeout=2).info("commandstats")
    return sum(int(command.get("rejected_calls", 0)) for command in stats.values())


def start_loading(port: int) -> socket.socket:
    """Make the server reload its data (DEBUG RELOAD, its answer not awaited) and return once it
    is loading; the socket that asked, to close after."""
    asking = socket.create_connection(("127.0.0.1", port), timeout=2)
    asking.sendall(b"DEBUG RELOAD\r\n")
    probe = redis.Redis(port=port, socket_timeout=2)
    eventually(lambda: probe.info("persistence")["loading"] == 1, 10, "the server to be loading")
    probe.close()
    return asking


def rejected_sets(port: int) -> int:
    """SETs the server refused so far (INFO answers while it loads)."""
    stats = redis.Redis(port=port, socket_timeout=2).info("commandstats").get("cmdstat_set", {})
    return int(stats.get("rejected_calls", 0))


def test_a_command_refused_while_redis_loads_never_ran_and_is_not_sent_again(loading_port: int) -> None:
    client = production_client(RedisConfig(), loading_port)
    assert client.ping()  # a pooled connection, checked before the load
    asking = start_loading(loading_port)

    with pytest.raises(redis.BusyLoadingError) as refused:
        client.set("a", "b")
    asking.close()

    assert never_sent(refused.value) and not isinstance(refused.value, ReplyLost)
    assert rejected_sets(loading_port) == 1  # once: an immediate retry meets the same load
    # Answered, not waited out: counted, not timed (a loaded machine stretches any time). A
    # client that retried meanwhile is counted above; one that waited for the load would have had
    # the SET run, not refused; and the load (20 s) still under way bounds any other wait.
    assert redis.Redis(port=loading_port, socket_timeout=2).info("persistence")["loading"] == 1


def test_several_commands_written_at_once_may_have_run_when_the_first_is_refused(loading_port: int) -> None:
    """The load may end while the server reads them: the first refused, the later ones run."""
    client = production_client(RedisConfig(), loading_port)
    assert client.ping()
    asking = start_loading(loading_port)
    pipe = client.pipeline(transaction=False)
    pipe.set("a", "b")
    pipe.set("c", "d")

    with pytest.raises(ReplyLost) as lost:
        pipe.execute()
    asking.close()

    assert not never_sent(lost.value) and isinstance(lost.value.__cause__, redis.BusyLoadingError)


def test_a_command_to_a_redis_restarted_on_its_data_is_refused_once_as_never_run(restarted_port: int) -> None:
    """A new connection to a Redis still loading after its restart: its check (PING) is refused,
    and that is the answer. Before, the check was tried again on another connection, the command
    then sent and refused too, and the whole reported as a lost reply: three refusals, "may have
    run"."""
    client = production_client(RedisConfig(), restarted_port)

    with pytest.raises(redis.BusyLoadingError) as refused:
        client.set("a", "b")

    assert never_sent(refused.value) and not isinstance(refused.value, ReplyLost)
    assert rejected(restarted_port) == 1
