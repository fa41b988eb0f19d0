"""Fixtures shared by every test folder: a real redis-server, a fake clock, and the real servers
several folders need (slapd, vcsim, BIND), and ``make_harness`` (the service in-process: tests/harness.py).
Helpers (free_port, eventually...) are in tests/support.py."""

from __future__ import annotations

import io
import itertools
import logging
import shutil
import socket
import tempfile
from pathlib import Path
from typing import Any, Iterator

import pytest
import redis

import app as chalice_app
from chalicelib.clock import FakeClock
from chalicelib.config import Config
from chalicelib.observability import logger
from local.redis_server import RedisServer
from tests.auth.slapd import SlapdServer
from tests.dns.bind import BindServer
from tests.harness import Harness, HarnessFactory
from tests.redis_pair import RedisPair
from tests.vsphere.vcsim import VcsimServer
from tools.vcsim import launcher


@pytest.fixture(autouse=True)
def botocore_retries_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """botocore retries a throttled or 5xx answer itself, sleeping its backoff for real between
    tries (seconds each: a test of an outage page paid 10 to 20 s). The tries still happen, and
    are still counted; only the wait between them is skipped."""
    import types

    import botocore.endpoint

    monkeypatch.setattr(botocore.endpoint, "time", types.SimpleNamespace(sleep=lambda seconds: None))


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """One real redis-server for the whole test session, on a free port."""
    with RedisServer() as server:
        yield server


@pytest.fixture
def redis_client(redis_server: RedisServer) -> Iterator[redis.Redis]:
    """A client on an empty database."""
    client = redis.Redis(port=redis_server.port, decode_responses=True)
    client.flushall()
    yield client
    client.close()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def log_output() -> Iterator[io.StringIO]:
    """What the service logs, formatted as in Lambda (Powertools' JSON formatter)."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logger.registered_formatter)
    logger.addHandler(handler)
    yield stream
    logger.removeHandler(handler)


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A loopback TCP port that refuses connections for the whole test (a server that is down):
    bound by a socket that never listens, so no other process can take it meanwhile. A port of
    free_port() "nothing listens there" may be bound by any process of the machine before the
    test connects, and the test then meets that process instead of an outage."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        yield holder.getsockname()[1]


@pytest.fixture(scope="session")
def slapd() -> Iterator[SlapdServer]:
    """One real slapd for the session: ``url``, ``ldaps_url``, ``ca_file``, ``rogue_ca_file``,
    ``users`` (name -> (dn, password)), ``service_dn``/``service_password``, ``ldap_config()``."""
    with SlapdServer() as server:
        yield server


@pytest.fixture(scope="session")
def vcsim_dir() -> Iterator[Path]:
    launcher.build()  # once, before any simulator starts (skips when up to date)
    directory = Path(tempfile.mkdtemp(prefix="vcsim-"))
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="session")
def vcsim(vcsim_dir: Path) -> Iterator[VcsimServer]:
    """One simulator for the session: DC0, cluster DC0_C0 with hosts DC0_C0_H0..2, template
    DC0/vm/templates/vmpool-template, folder DC0/vm/vmpool; guests boot after 1 s."""
    with VcsimServer(boot_delay=1.0, cert_path=vcsim_dir / "session.pem") as server:
        yield server


@pytest.fixture
def private_vcsim(vcsim_dir: Path, tmp_path: Path) -> Iterator[VcsimServer]:
    """A simulator of its own, for tests that stop and restart it; its output in tmp_path/vcsim.log."""
    with VcsimServer(boot_delay=0.2, cert_path=vcsim_dir / f"private-{next(_counter)}.pem",
                     log_path=tmp_path / "vcsim.log") as server:
        yield server


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """A failed test that used a simulator which exited or refuses connections says so, with the
    simulator's log's tail (its own output was lost before, and nothing said why it had gone)."""
    outcome = yield
    report = outcome.get_result()
    if report.failed:
        for value in getattr(item, "funcargs", {}).values():
            trouble = value.trouble() if isinstance(value, VcsimServer) else None
            if trouble:
                report.sections.append((f"vcsim ({report.when})", trouble))


_counter = itertools.count()


@pytest.fixture(scope="session")
def bind_session() -> Iterator[BindServer]:
    """One real BIND 9 (named) for the session, its zone updated with TSIG (tests/dns/bind.py)."""
    with BindServer() as server:
        yield server


@pytest.fixture
def bind(bind_session: BindServer) -> Iterator[BindServer]:
    """The session's named, started again if a test stopped it, its zone without the records
    earlier tests left."""
    if bind_session.process is None or bind_session.process.poll() is not None:
        bind_session.start()
    bind_session.clear_records()
    yield bind_session
    if bind_session.process is None:
        bind_session.start()


@pytest.fixture
def redis_pair() -> Iterator[RedisPair]:
    """A real primary + replica of redis-server behind an endpoint clients connect to (a new
    pair per test: failover tests leave it swapped or killed). See tests/redis_pair.py."""
    pair = RedisPair()
    try:
        yield pair
    finally:
        pair.stop()


@pytest.fixture
def make_harness(redis_client: redis.Redis, clock: FakeClock) -> Iterator[HarnessFactory]:
    """``make_harness(config, **options)``: a Harness (tests/harness.py) on the session's Redis and
    the test's fake clock, installed as the app's services for its HTTP (restored after the test,
    not through monkeypatch: a test's ``monkeypatch.undo()`` must not uninstall it). Options:
    those of Harness (``prefix``, ``headers``, ``client_ip``, ``secrets``...), and ``client`` for
    another Redis."""
    saved = chalice_app._services

    def make(config: Config, client: redis.Redis | None = None, **options: Any) -> Harness:
        harness = Harness(config, client or redis_client, clock, **options)
        chalice_app._services = harness.services
        return harness

    yield make
    chalice_app._services = saved
