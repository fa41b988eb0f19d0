"""Redis stopped (or frozen) while HTTP clients hammer the API and the scheduler reconciles: every
request answered while Redis is out is a 503 JSON error, typically at once (never a 500, never a
hang), and once Redis is back on the same port the same service answers 200 again, with no
restart. A request the machine gets to only once Redis is back is served (a checkout held until
then stands for it in every run: on a loaded machine one once failed the test as a "200 while
Redis was down").

The service runs in this process exactly as one worker of the local stack does: the Chalice app
behind ``local.gateway``'s threaded HTTP server, and ``LocalScheduler`` reconciling every pool.
"""

from __future__ import annotations

import http.client
import json
import re
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

import app
from chalicelib.manager.reconcile import reconcile_pool
from chalicelib.services import Services
from chalicelib.store import StoreUnavailable
from local.redis_server import RedisServer
from local.scheduler import LocalScheduler
from tests.in_process_http import make_server
from tests.support import eventually

SOCKET_TIMEOUT = 1.5
"""The Redis client's socket timeout (config redis.socket_timeout): what a frozen Redis costs."""

CONFIG = f"""
:config: {{domain: example.com, task_limit: 1000, check_loop_delay_min: 1}}
:redis: {{server: 127.0.0.1, port: {{port}}, socket_timeout: {SOCKET_TIMEOUT}}}
:providers:
  :dummy: {{createvm_max_time: 0, boot_time: 0}}
:pools:
  - {{name: outage, size: 400, provider: dummy}}
"""
POOL = "outage"
IN_FLIGHT_BOUND = 4.0
"""A request caught in flight by the outage waits at most one socket timeout (1.5 s) on the
command it is in, then answers 503: chalicelib/store/connection.py never retries a timeout (the
command may have run) and retries a refused or broken-before-sending connection once, at once.
The rest (2.5 s) is room for the work the request did before, on a busy machine."""
SLACK = 1.0
"""What a busy machine may add to a request's time, at least; twice the slowest answer while
Redis was up when that is more. The bounds were fixed before: a 2-core machine at load 11 took
1.4 and 1.7 s to answer a 503 that costs milliseconds (2 failures in 48 restarted runs)."""


@dataclass
class Reply:
    started: float
    seconds: float
    status: int
    body: dict | None
    call: str


@dataclass
class Load:
    """HTTP clients doing checkout, describe and delete in a loop, recording every reply."""

    port: int
    clients: int = 4
    replies: list[Reply] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def _call(self, connection: http.client.HTTPConnection, method: str, target: str) -> Reply:
        started = time.monotonic()
        connection.request(method, target, body=b"" if method == "POST" else None)
        response = connection.getresponse()
        raw = response.read()
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        reply = Reply(started, time.monotonic() - started, response.status, body, f"{method} {target}")
        self.replies.append(reply)
        return reply

    def _client(self) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            while not self.stop.is_set():
                reply = self._call(connection, "POST", f"/api/v3/vm/{POOL}")
                if reply.status == 200 and reply.body:
                    hostname = reply.body[POOL]["hostname"]
                    self._call(connection, "GET", f"/api/v3/vm/{hostname}")
                    self._call(connection, "DELETE", f"/api/v3/vm/{hostname}")
                self._call(connection, "GET", "/api/v3/status")
                time.sleep(0.02)
        except Exception as error:  # noqa: BLE001 - a hung or broken connection fails the test
            self.errors.append(f"{type(error).__name__}: {error}")
        finally:
            connection.close()

    def __enter__(self) -> "Load":
        self._threads = [threading.Thread(target=self._client, daemon=True) for _ in range(self.clients)]
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self._threads:
            thread.join(timeout=30)
        assert not any(thread.is_alive() for thread in self._threads), "a client hung"

    def between(self, start: float, end: float) -> list[Reply]:
        """Replies to requests sent within [start, end], however long they took."""
        return [r for r in list(self.replies) if start <= r.started <= end]


@dataclass
class Service:
    redis_server: RedisServer
    services: Services
    port: int


@pytest.fixture(params=["config", "url"])
def service(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Service]:
    """The API and the scheduler on a Redis of their own, on a fixed port that outlives it.
    Built the way a Lambda builds them, with the Redis client from the config's ``:redis:``
    block (as in AWS) or from VMPOOL_REDIS_URL (as in the local stack).

    Without EMF metrics, as the local stack runs: the scheduler's threads run from setup to
    teardown, and pytest captures stdout only within each phase, so a metric printed in
    between (the first tick as setup ends, any pass while a failure's report is written) went
    to the terminal."""
    monkeypatch.setenv("POWERTOOLS_METRICS_DISABLED", "true")
    # A free port it picks itself, and picks again if another process takes it before it binds.
    server = RedisServer(data_dir=tmp_path / "redis", persist=True).start()
    environ = {"VMPOOL_CONFIG": CONFIG.replace("{port}", str(server.port))}
    if request.param == "url":
        environ["VMPOOL_REDIS_URL"] = server.url
    services = Services.from_environment(environ)
    config, client = services.config, services.client
    pool = config.pool(POOL)
    for _ in range(2):  # clones start, then they are ready
        reconcile_pool(services.store, services.provider("dummy"), pool, services.clock, config.service)
    saved, app._services = app._services, services
    http_server = make_server(app.app, "127.0.0.1", 0)  # a port the kernel picks
    threading.Thread(target=http_server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True).start()
    scheduler = LocalScheduler(services, interval_seconds=0.5, budget_seconds=2.0)
    scheduler.start()
    try:
        yield Service(server, services, http_server.server_address[1])
    finally:
        stopped = scheduler.stop()
        http_server.shutdown()
        http_server.server_close()
        app._services = saved
        client.close()
        server.stop()
    assert stopped, "the scheduler's threads outlived the test"


def _until_healthy(load: Load, since: float, timeout: float) -> float:
    """Seconds from ``since`` until a checkout succeeds again."""
    def checked_out() -> bool:
        return any(r.status == 200 and r.call.startswith("POST") for r in load.between(since, time.monotonic()))

    eventually(checked_out, timeout - (time.monotonic() - since), "a successful checkout after Redis came back")
    return time.monotonic() - since


def _story(load: Load, services: Services, failed: Reply, down_from: float) -> str:
    """A failed reply, every reply naming its VM (times from the outage's start) and the VM's
    record now: who moved it, and when (it failed once, a DELETE's 404 'not running', unexplained)."""
    lines = [f"{failed.call}: {failed.status} {failed.body}"]
    host = failed.call.rsplit("/", 1)[-1].split(".")[0]
    if failed.call.startswith("POST") or "/vm/" not in failed.call:
        return lines[0]
    for reply in list(load.replies):
        if host in reply.call or host in json.dumps(reply.body):
            lines.append(f"  {reply.started - down_from:+.3f} s ({reply.seconds:.3f} s) {reply.call}: "
                         f"{reply.status} {reply.body}")
    record = services.store.get_first_vm([host])
    lines.append(f"  its record: {dict(record.raw) if record else None}")
    return "\n".join(lines)


def _slack(replies: list[Reply]) -> float:
    """What the machine adds to a request now: SLACK, or twice the slowest of ``replies``."""
    return max([SLACK, *(2 * reply.seconds for reply in replies)])


def _kind(call: str) -> str:
    """The route a call is to: the method and the path without a VM's name."""
    return re.sub(r"/vm/[^/]+$", "/vm/<name>", call)


def _assert_clean_outage(replies: list[Reply], redis_back: float, bound: float) -> None:
    """``replies``: to the requests sent while Redis was out. Each one answered before Redis
    was back is a 503 JSON error. One answered later may be a 200: the machine got to it only
    once Redis was back, and read its data then (see HeldUntilBack). Half the answers of each
    route come within ``bound``: a loaded machine holds a request now and then for seconds
    (every thread of this process, 2.5 s at load 14), so a bound on the slowest failed 13 runs
    in 145 at load 12-17 (the slowest 4.3 s; half took under 0.07 s in every run); the
    regressions the bound is for (a socket timeout or retries with backoff on every request)
    slow them all."""
    assert replies, "no request was answered while Redis was down"
    for reply in replies:
        if reply.started + reply.seconds < redis_back:
            assert reply.status == 503, f"{reply.call}: {reply.status} {reply.body} while Redis was down"
            assert reply.body is not None and reply.body.get("ok") is False, f"{reply.call}: not a JSON error"
            assert "unavailable" in reply.body.get("error", ""), reply.body
    for kind in sorted({_kind(reply.call) for reply in replies}):
        seconds = sorted(reply.seconds for reply in replies if _kind(reply.call) == kind)
        typical = seconds[len(seconds) // 2]
        assert typical < bound, (f"{kind}: half of {len(seconds)} answers while Redis was down took "
                                 f"{typical:.2f} s or more (the slowest {seconds[-1]:.2f} s)")


def _timeouts_logged(caplog: pytest.LogCaptureFixture, since: float) -> int:
    """How many requests the API answered 503 because Redis did not answer within the socket
    timeout, since ``since`` (time.monotonic)."""
    since_wall = time.time() - (time.monotonic() - since)
    return sum(1 for record in caplog.records
               if record.created >= since_wall and record.getMessage() == "state store unavailable"
               and "TimeoutError" in str(getattr(record, "error", "")))


class HeldUntilBack:
    """Wraps the store's ``checkout``: once ``armed``, the first checkout waits for ``release``
    before it reaches Redis. It stands for what a loaded machine does to a request now and then:
    the request arrives while Redis is out, and its thread runs again only after Redis is back
    (a 2-core machine at load 14 held every thread of this process for 2.5 s at once)."""

    def __init__(self, original: Callable[..., Any]) -> None:
        self.original = original
        self.armed = threading.Event()
        self.entered = threading.Event()
        self.release = threading.Event()
        self._lock = threading.Lock()
        self.hostname: str | None = None
        """The VM the held checkout took, once Redis was back."""
        self.failure: str | None = None
        """Why it failed instead (Redis, back, slower than the socket timeout on a loaded machine)."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        with self._lock:
            first = self.armed.is_set() and not self.entered.is_set()
            if first:
                self.entered.set()
        if not first:
            return self.original(*args, **kwargs)
        assert self.release.wait(30)
        try:
            result = self.original(*args, **kwargs)
        except StoreUnavailable as error:
            self.failure = str(error)
            raise
        self.hostname = result.vms[0].hostname if result.vms else None
        return result


@pytest.mark.parametrize("outage", ["restarted", "frozen"])
def test_api_answers_503_quickly_while_redis_is_out_and_recovers_without_a_restart(
        service: Service, outage: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    held = HeldUntilBack(service.services.store.checkout)
    monkeypatch.setattr(service.services.store, "checkout", held)
    with Load(service.port) as load:
        # The clients' threads have been answered (waited for: on a busy machine the first
        # answers took longer than the second this slept).
        eventually(lambda: [r for r in list(load.replies) if r.status == 200], 30, "the service to work")
        healthy = [r for r in list(load.replies) if r.status == 200]
        slack = _slack(healthy)
        # The typical request sent while Redis was out answers within this (a refused connection
        # costs nothing, a frozen Redis one socket timeout) plus what the machine adds.
        bound = slack if outage == "restarted" else SOCKET_TIMEOUT + slack
        process = service.redis_server.process
        assert process is not None
        if outage == "restarted":
            service.redis_server.stop(restart=True)  # SIGTERM: Redis saves its data on the way out
        else:
            process.send_signal(signal.SIGSTOP)  # accepts connections, answers nothing
        down_from = time.monotonic()
        held.armed.set()
        # Long enough that requests are sent inside the window checked below, [down_from,
        # down_until - bound]; frozen: after clients caught in flight (up to IN_FLIGHT_BOUND)
        # are answered (it was one socket timeout: flaky).
        time.sleep(bound + 3.0 if outage == "restarted" else IN_FLIGHT_BOUND + bound + 1.5)
        down_until = time.monotonic()
        try:
            if outage == "restarted":
                service.redis_server.start()  # same port (held meanwhile), same data
            else:
                process.send_signal(signal.SIGCONT)
        finally:
            held.release.set()  # the held checkout reaches Redis only now
        back = time.monotonic()
        assert held.entered.is_set(), "no checkout was sent while Redis was down"
        recovery = _until_healthy(load, back, timeout=10.0)
        # Requests sent once it recovered, answered (checked below).
        eventually(lambda: load.between(back + recovery, time.monotonic()), 30, "answers after the recovery")

    assert load.errors == []  # a request unanswered within the clients' 10 s timeout: a hang
    assert not [r for r in load.replies if r.status >= 500 and r.status != 503], "a 5xx other than 503"
    # Requests sent while Redis was out: 503 JSON while it was, typically within the bound.
    _assert_clean_outage(load.between(down_from, down_until - bound), down_until, bound)
    # The checkout the machine got to only once Redis was back (sent while it was out, or in
    # flight as it went) was served by the Redis back: once failed as a "200 while Redis was down".
    held_reply = [(r.status, r.started < down_until < r.started + r.seconds) for r in load.replies
                  if r.call.startswith("POST") and r.body and r.body.get(POOL, {}).get("hostname", "")
                  .split(".")[0] == held.hostname]
    if held.failure is None:
        assert held_reply == [(200, True)], (held.hostname, held_reply)
    else:
        assert "TimeoutError" in held.failure, held.failure
    # Requests caught in flight when Redis went away answer, whichever way: within one socket
    # timeout when answered while Redis was still out (connection.py never retries a timeout).
    busy = slack - SLACK  # what the machine adds beyond what the fixed bounds allow for
    for reply in load.between(down_from - 0.5, down_from):
        if reply.started + reply.seconds < down_until:
            assert reply.seconds < IN_FLIGHT_BOUND + busy, f"{reply.call} in flight took {reply.seconds:.2f} s"
    assert recovery < 5.0 + busy
    # Once back, the same process serves checkouts again and the pool's data survived: every
    # answer a 200, or a 503 when Redis, back, took longer than the socket timeout to answer (a
    # loaded machine starves it too: 3.3 s after a frozen Redis resumed at load 19), never one
    # from the outage (a connection it broke, kept in the pool).
    recovered_at = back + recovery
    recent = load.between(recovered_at, time.monotonic())
    unavailable = [r for r in recent if r.status == 503 and "unavailable" in (r.body or {}).get("error", "")]
    failed = [r for r in recent if r.status != 200 and r not in unavailable]
    assert recent and not failed, "\n".join(_story(load, service.services, r, down_from) for r in failed)
    assert len(unavailable) <= _timeouts_logged(caplog, since=recovered_at), \
        "\n".join(_story(load, service.services, r, down_from) for r in unavailable)
    counts = service.services.store.counts([POOL])[POOL]
    assert counts["ready"] + counts["pending"] > 0
