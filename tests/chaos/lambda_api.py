"""The API function as AWS Lambda runs it against a Redis pair, for the failover tests: the
function's Services on the pair's endpoint, waiting for a replica as in AWS, and a call of it as
API Gateway makes one."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any, Callable, Iterable, Iterator

import pytest
import redis

import app
from chalicelib.clock import FakeClock
from chalicelib.config import parse
from chalicelib.manager.reconcile import reconcile_pool
from chalicelib.providers.dummy import DummyProvider
from chalicelib.services import Services
from chalicelib.store import ReplicaAcks, connect
from tests.infra.packaged_functions import api_event
from tests.redis_pair import RedisPair
from tests.support import Context, RecordingQueue, eventually

SYNCED_ACK_WAIT_MS = 5_000
"""How long a test's writes wait for a replica the link passes them on to: it acknowledges in
milliseconds, and the bound matters only on a loaded machine (at 50 or 100 ms, acknowledgements
through the test's forwarders came late at load 6 to 7: 503s and skipped passes the test did not
mean). Under ``socket_timeout`` (10 s in these configs), as the config requires."""
HELD_ACK_WAIT_MS = 100
"""How long they wait where no acknowledgement can come, however long (the link held, no replica
attached): each wait's length is then only the test's time."""


def waiting_for_a_replica(services: Services, timeout_ms: int) -> None:
    """``services``' writes wait ``timeout_ms`` for a replica from now on (``SYNCED_ACK_WAIT_MS``,
    ``HELD_ACK_WAIT_MS``)."""
    services.store.replica_acks = replace(services.store.replica_acks, timeout_ms=timeout_ms)


def dummy_config(redis_options: str, pools: Iterable[str], size: int) -> str:
    """A config of ``pools`` of ``size`` VMs each on the dummy provider, whose clones, boots and
    destroys take no time; ``redis_options``: its ``:redis:`` block's (``socket_timeout: 5.0,
    replica_ack_timeout: 300``)."""
    return (f":redis: {{{redis_options}}}\n"
            ":providers:\n  :dummy: {createvm_max_time: 0, boot_time: 0, destroyvm_max_time: 0}\n:pools:\n"
            + "".join(f"  - {{name: {pool}, size: {size}, provider: dummy}}\n" for pool in pools))


def serve(services: Services, monkeypatch: pytest.MonkeyPatch) -> Services:
    """Make ``services`` what the API function serves with (its queue recorded, not sent)."""
    monkeypatch.setattr(app, "_services", services)
    monkeypatch.setattr(app, "_config", None)
    monkeypatch.setattr(app, "_queue", RecordingQueue())
    return services


def lambda_services(pair: RedisPair, config: str, replica_acks: int = 1) -> Services:
    """The Services a function started now builds with ``config`` (its own client, on the node the
    pair's endpoint names), its writes waiting for ``replica_acks`` replicas (1 as in AWS)."""
    return Services.from_environment({"VMPOOL_CONFIG": config, "VMPOOL_REDIS_URL": pair.endpoint.url,
                                      "VMPOOL_REDIS_MIN_REPLICA_ACKS": str(replica_acks),
                                      "POWERTOOLS_METRICS_DISABLED": "true"})


def service_on(pair: RedisPair, config: str, hypervisor: redis.Redis, clock: FakeClock) -> Services:
    """One function of the service with ``config`` on the pair's endpoint, on ``clock``, waiting
    for a replica as in AWS (as long as its ``redis.replica_ack_timeout`` says, its
    ``redis.replica_loss_grace`` after the replica is lost); its dummy hypervisor on
    ``hypervisor``, a Redis no failover touches (as vCenter keeps its own state)."""
    parsed = parse(config)
    services = Services(parsed, connect(parsed.redis, url=pair.endpoint.url), clock=clock)
    services.store.replica_acks = ReplicaAcks(1, parsed.redis.replica_ack_timeout_ms,
                                              float(parsed.redis.replica_loss_grace))
    services._providers["dummy"] = DummyProvider(parsed.providers["dummy"], hypervisor, clock, prefix="hypervisor:")
    return services


def serving(pair: RedisPair, monkeypatch: pytest.MonkeyPatch, config: str) -> Services:
    """The API function on the pair's endpoint with ``config``, waiting for a replica as in AWS."""
    return serve(lambda_services(pair, config), monkeypatch)


def serving_fixture(config: str) -> Any:
    """A fixture of the API function on the ``redis_pair``'s endpoint with ``config`` (``serving``),
    its client closed after the test; a test module names it: ``api = serving_fixture(CONFIG)``."""

    @pytest.fixture
    def api(redis_pair: RedisPair, monkeypatch: pytest.MonkeyPatch) -> Iterator[Services]:
        services = serving(redis_pair, monkeypatch, config)
        yield services
        services.client.close()

    return api


def hold_connections(services: Services, count: int) -> None:
    """Open ``count`` pooled connections of ``services`` to the node the endpoint names now, as
    ``count`` requests served at once leave them, idle in its pool."""
    pool = services.client.connection_pool
    connections = [pool.get_connection("PING") for _ in range(count)]
    for connection in connections:
        connection.send_command("PING")
        assert connection.read_response() in (b"PONG", "PONG", True)
    for connection in connections:
        pool.release(connection)


def call(method: str, resource: str, path: str, params: dict[str, str] | None = None, body: Any = None,
         headers: dict[str, str] | None = None) -> tuple[int, Any]:
    """One request to the API function: its status and JSON answer (None for an empty body)."""
    answer = app.app(api_event(method, resource, path, params=params,
                               body=json.dumps(body) if body is not None else None,
                               headers={"Content-Type": "application/json", **(headers or {})}), Context())
    return answer["statusCode"], json.loads(answer["body"]) if answer["body"] else None


def check_out(pool: str) -> tuple[int, Any]:
    """``POST /api/v3/vm/<pool>``: one VM of ``pool``, without a token."""
    return call("POST", "/api/v3/vm/{name}", f"/api/v3/vm/{pool}", params={"name": pool})


def hostname(answer: Any, pool: str) -> str:
    """The short name of the VM of ``pool`` a checkout's 200 answer names."""
    return str(answer[pool]["hostname"]).split(".")[0]


def on_vm(method: str, hostname: str, body: Any = None) -> tuple[int, Any]:
    """``method`` on ``/api/v3/vm/<hostname>`` (a return, a change), with ``body`` as JSON."""
    return call(method, "/api/v3/vm/{name}", f"/api/v3/vm/{hostname}", params={"name": hostname}, body=body)


FILL_PASSES = 20
"""The most passes ``fill`` runs for a pool that is not full yet."""


def fill(services: Services, pool: str, passes: int = 3) -> None:
    """Reconcile passes of ``pool`` by ``services`` until its VMs are all ready (the dummy
    provider's clones and boots take no time): at least ``passes``, then more while it is short,
    FILL_PASSES in all at most. On a slow link (150 ms a chunk) a pass can end with part of its
    work left to the next (a names claim that lapsed while it ran): three passes left the pool
    empty and the test's first checkout a 503 with no VM. Counted in passes, not wall time."""
    config = services.pool(pool)
    assert config is not None
    ready = services.store.keys.pool_state(pool, "ready")
    for done in range(1, FILL_PASSES + 1):
        reconcile_pool(services.store, services.provider("dummy"), config, services.clock, services.config.service)
        if done >= passes and services.client.zcard(ready) >= config.size:
            return


def once_not_503(send: Callable[[], tuple[int, Any]], timeout: float = 15.0) -> tuple[int, Any]:
    """The first answer of ``send`` (sent again and again, within ``timeout`` seconds) that is not
    a 503: what a caller told to send it again gets once Redis answers this process again (its
    breaker closes when the probe's PING comes back: over a slow link, moments after Redis
    itself resumed)."""
    answers: list[tuple[int, Any]] = []

    def served() -> tuple[int, Any] | None:
        answers.append(send())
        return answers[-1] if answers[-1][0] != 503 else None

    return eventually(served, timeout, f"an answer other than 503 (the last: {answers[-1:]})", interval=0.1)


def checked_out_retrying(pool: str, tries: int = 5) -> tuple[int, Any]:
    """``check_out``, sent again (at most ``tries`` times in all) while it is answered the 503
    that says to try again: a checkout not confirmed within its window (``socket_timeout``) on a
    slow link, or not acknowledged by the replica within ``replica_ack_timeout`` on a loaded
    machine, is that 503 and hands out nothing. For a test's setup, not for what it asserts."""
    for _ in range(tries - 1):
        status, answer = check_out(pool)
        if status != 503 or "again" not in str(answer.get("error", "")):
            return status, answer
    return check_out(pool)


def assert_still_checked_out(new_primary: redis.Redis, held: Iterable[str]) -> None:
    """Each VM of ``held`` (a checkout answered 200 around a failover) is running on
    ``new_primary``, not in ready there for the next caller to get too."""
    for name in held:
        state = new_primary.hget(f"vmpool:vm:{name}", "state")
        assert state == "running", (f"{name} was answered 200, but the new primary has it {state}: "
                                    f"the next caller gets it too")
