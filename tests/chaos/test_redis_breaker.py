"""Redis stopped (SIGSTOP: it accepts connections and answers nothing): once one request has
waited its socket timeout, the process answers 503 (JSON, Retry-After) at once without sending
anything to Redis, until Redis answers again (SIGCONT: the breaker's PING, waiting in Redis's
socket, is answered at once) or for ``OPEN_SECONDS`` at most.

Before, each request waited its socket timeout for its 503, and a process's requests queued
behind one another (24 clients of the one-process stack waited 10 s). What reached Redis is
counted by Redis itself (``INFO commandstats``, read once it runs again): a command sent while it
was stopped waits in its socket and runs when it resumes, even from a connection since closed.
"""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Iterator

import pytest
import redis

from chalicelib.config import parse
from chalicelib.store import connect
from chalicelib.store.breaker import OPEN_SECONDS
from local.redis_server import RedisServer
from tests.harness import Harness, HarnessFactory
from tests.redis_pair import Endpoint
from tests.support import eventually, pausable_redis_server, stop_process

SOCKET_TIMEOUT = 0.3
CONNECTION_COMMANDS = {"ping", "hello", "client", "info", "auth", "select"}
"""Opening a connection and the probe's PING: not a request's work."""


@pytest.fixture
def stoppable(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of this test's own, to stop and continue."""
    with pausable_redis_server(tmp_path / "redis") as server:
        yield server


def _harness(make_harness: HarnessFactory, server: RedisServer) -> Harness:
    config = parse(f"""
:config: {{domain: example.com}}
:redis: {{server: 127.0.0.1, port: {server.port}, socket_timeout: {SOCKET_TIMEOUT}}}
:providers:
  :dummy: {{}}
:pools:
  - {{name: pool, size: 2, provider: dummy}}
""")
    return make_harness(config, client=connect(config.redis))


def _requests_work(server: RedisServer) -> int:
    """What requests sent Redis: the commands it ran for them (opening connections and the
    breaker's PING left out) and the connections they opened (a request waiting for a new
    connection's handshake sent no command yet). The breaker's probe connections name themselves
    (one CLIENT SETNAME each); this reader's own connection is one more."""
    with redis.Redis(port=server.port, decode_responses=True) as reader:
        stats = reader.info("commandstats")
        connections = int(reader.info("stats")["total_connections_received"])
    commands = sum(int(entry["calls"]) for name, entry in stats.items()
                   if name.removeprefix("cmdstat_").split("|")[0] not in CONNECTION_COMMANDS)
    probes = int(stats.get("cmdstat_client|setname", {}).get("calls", 0))
    return commands + connections - probes


def _one_request_work(harness: Harness, server: RedisServer) -> int:
    before = _requests_work(server)
    assert harness.get("/api/v3/vm/gone-host").status == 404
    return _requests_work(server) - before


def _stop(server: RedisServer) -> None:
    assert server.process is not None
    stop_process(server.process.pid)  # returns once it is stopped, not once it is told to


def _resume(server: RedisServer) -> None:
    assert server.process is not None
    server.process.send_signal(signal.SIGCONT)


def _is_503_at_once(reply: object) -> None:
    status, headers, body = reply.status, reply.headers, reply.json  # type: ignore[attr-defined]
    assert status == 503, body
    assert headers.get("Retry-After") == "1"
    assert body == {"ok": False, "error": "the state store is unavailable, try again shortly"}


def test_after_a_timeout_requests_are_refused_at_once_until_redis_answers(
        make_harness: HarnessFactory, stoppable: RedisServer) -> None:
    harness = _harness(make_harness, stoppable)
    per_request = _one_request_work(harness, stoppable)
    assert per_request >= 1
    breaker = harness.services.redis_breaker
    assert breaker is not None
    # The breaker's time stands still: one probe, however long the 20 requests take. On the
    # machine's clock a busy machine spread them over more than probe_every (a second probe,
    # whose thread may connect only after Redis resumed: counted as a request's connection
    # before its CLIENT SETNAME ran) or over OPEN_SECONDS (the breaker closed, one more timeout).
    breaker.monotonic = lambda: 0.0
    before = _requests_work(stoppable)
    _stop(stoppable)
    try:
        timed_out = harness.get("/api/v3/vm/gone-host")  # waits its socket timeout: the one that finds out
        assert timed_out.status == 503
        for _ in range(20):  # before: each waited 0.3 s and sent its first command
            _is_503_at_once(harness.get("/api/v3/vm/gone-host"))
    finally:
        _resume(stoppable)
    # The PING that waited in Redis's socket is answered as soon as Redis runs: no request had
    # to find out, and the first one after is served.
    eventually(lambda: not breaker.is_open, 10, "the breaker closed once Redis answered its PING")
    sent_while_stopped = _requests_work(stoppable) - before - 1  # - this reader's connection
    assert 1 <= sent_while_stopped <= per_request, "the refused requests reached Redis"
    assert harness.get("/api/v3/vm/gone-host").status == 404
    assert breaker.refused == 20


def test_the_breaker_opens_for_a_bounded_while_only(make_harness: HarnessFactory, stoppable: RedisServer) -> None:
    harness = _harness(make_harness, stoppable)
    per_request = _one_request_work(harness, stoppable)
    breaker = harness.services.redis_breaker
    assert breaker is not None
    elapsed = [0.0]
    breaker.monotonic = lambda: elapsed[0]
    before = _requests_work(stoppable)
    _stop(stoppable)
    try:
        assert harness.get("/api/v3/vm/gone-host").status == 503  # timed out: open
        _is_503_at_once(harness.get("/api/v3/vm/gone-host"))
        elapsed[0] = OPEN_SECONDS  # its PING still unanswered: the requests try Redis again
        assert harness.get("/api/v3/vm/gone-host").status == 503  # waited for Redis, timed out: open again
        _is_503_at_once(harness.get("/api/v3/vm/gone-host"))
    finally:
        _resume(stoppable)
    eventually(lambda: not breaker.is_open, 10, "the breaker closed once Redis answered its PING")
    # The two that timed out reached Redis (a command or a connection each), the two refused
    # did not (each reader call counts one connection more).
    assert 2 <= _requests_work(stoppable) - before - 1 <= 2 * per_request
    assert breaker.refused == 2
    assert harness.get("/api/v3/vm/gone-host").status == 404


def test_a_failover_away_from_a_stopped_primary_is_seen_by_the_next_probe(
        make_harness: HarnessFactory, stoppable: RedisServer, tmp_path: Path) -> None:
    """The endpoint's name moves to another node while the first probe's PING waits on the
    stopped one: the probe started a socket timeout later connects anew, reaches the new
    primary, and the breaker closes then, not after OPEN_SECONDS."""
    harness = _harness(make_harness, stoppable)
    with RedisServer(data_dir=tmp_path / "promoted") as promoted:
        endpoint = Endpoint(stoppable.port)
        try:
            config = harness.config
            harness = make_harness(config, client=connect(config.redis, url=endpoint.url))
            breaker = harness.services.redis_breaker
            assert breaker is not None
            elapsed = [0.0]
            breaker.monotonic = lambda: elapsed[0]
            assert harness.get("/api/v3/vm/gone-host").status == 404
            _stop(stoppable)
            try:
                reached_stopped = endpoint.connected.get(stoppable.port, 0)
                assert harness.get("/api/v3/vm/gone-host").status == 503  # timed out: open
                # The first probe connects from a thread of its own: it must reach the stopped
                # node before the failover (on a busy machine the test got there first, the probe
                # reached the new primary and the breaker closed before the next request).
                eventually(lambda: endpoint.connected.get(stoppable.port, 0) > reached_stopped, 10,
                           "the first probe connected to the stopped primary")
                endpoint.point_at(promoted.port)  # the failover
                _is_503_at_once(harness.get("/api/v3/vm/gone-host"))  # the first probe still waits
                elapsed[0] = breaker.probe_every
                _is_503_at_once(harness.get("/api/v3/vm/gone-host"))  # and starts the next one
                eventually(lambda: not breaker.is_open, 10, "the new primary answered the second probe")
                assert elapsed[0] < OPEN_SECONDS
                assert harness.get("/api/v3/vm/gone-host").status == 404
            finally:
                _resume(stoppable)
        finally:
            endpoint.close()
