"""The one test harness: the service as the tests drive it, in-process, on the session's real
redis-server and a fake clock.

``Harness`` is a ``Services`` (config, store, providers, DNS plugins, refill trigger) with
reconcile passes run by hand and HTTP sent through ``local/gateway.py`` into the real Chalice
app (``app.app``, whose ``app._services`` the ``make_harness`` fixture of tests/conftest.py
replaces and restores). Every JSON answer to a documented route is checked against
docs/openapi.yaml, so any test that calls the API keeps the spec true too.

Each folder's conftest.py builds harnesses from its own configs (``make_world``, ``make_stack``,
``make_api``); the helpers below (invariants, killed passes, concurrent callers, the spec) are
imported from here, never from a conftest.py.
"""

from __future__ import annotations

import base64
import gzip
import json
import re
import threading
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, TypeVar

import redis
import yaml
from openapi_schema_validator import OAS30Validator

import app as chalice_app
from chalicelib.api.routes import ROUTES, Route, versioned_paths
from chalicelib.clock import FakeClock
from chalicelib.config import Config, PoolConfig
from chalicelib.dns.base import DnsPlugin
from chalicelib.manager.context import Checkpoint, PassReport, no_checkpoint
from chalicelib.manager.reconcile import reconcile_pool
from chalicelib.providers.base import Provider
from chalicelib.services import Services
from chalicelib.store import STATES, CheckoutRequest, Store
from chalicelib.store.connection import ReplyLost, _TcpConnection
from local.gateway import Gateway
from tests.support import production_client

PREFIX = "vmpool:"
"""The key prefix every harness uses (the service's default)."""

SPEC_PATH = Path(__file__).resolve().parents[1] / "docs" / "openapi.yaml"
VERSION_PREFIX = re.compile(r"^/api/v[123](?=/)")

T = TypeVar("T")


# --- docs/openapi.yaml ---------------------------------------------------------------------------


def load_spec() -> dict[str, Any]:
    return yaml.safe_load(SPEC_PATH.read_text())


def spec_template(path: str) -> str:
    """A path with its parameter names erased, so /vm/{name} and /vm/{hostname} compare equal."""
    return re.sub(r"{[^}]+}", "{}", path)


def _resolve(node: Any, spec: Mapping[str, Any]) -> Any:
    """The node with every local ``$ref`` replaced by its target (the spec has no cycles)."""
    if isinstance(node, dict):
        if "$ref" in node:
            target: Any = spec
            for part in node["$ref"].lstrip("#/").split("/"):
                target = target[part]
            return _resolve(target, spec)
        return {key: _resolve(value, spec) for key, value in node.items()}
    if isinstance(node, list):
        return [_resolve(item, spec) for item in node]
    return node


class SpecOperations:
    """Finds the operation of ``docs/openapi.yaml`` that a concrete request path belongs to."""

    def __init__(self, spec: Mapping[str, Any]) -> None:
        self.spec = spec
        self._patterns = []
        for path in spec["paths"]:
            regex = "^" + re.sub(r"\\{[^}]+\\}", "[^/]+", re.escape(path)) + "/?$"
            literals = len(re.sub(r"{[^}]+}", "", path))
            self._patterns.append((literals, path, re.compile(regex)))
        # Literal segments win over parameters, as in the gateway (/summary/boot vs /summary/{x}).
        self._patterns.sort(key=lambda entry: -entry[0])

    def operation(self, method: str, target: str) -> tuple[str, dict[str, Any]] | None:
        full_path = re.sub("^//+", "/", target.split("?", 1)[0])  # routed as the gateway routes it
        path = VERSION_PREFIX.sub("", full_path)
        for _, spec_path, pattern in self._patterns:
            if pattern.match(path):
                operation = self.spec["paths"][spec_path].get(method.lower())
                if operation is None or (path == full_path and not operation.get("x-unversioned")):
                    return None  # not served without a version prefix
                if path != full_path and operation.get("x-unversioned-only"):
                    return None  # not served with one
                return spec_path, operation
        return None

    def check(self, method: str, target: str, status: int, body: Any) -> None:
        """Fail unless ``status`` is documented for the operation and ``body`` fits its schema."""
        found = self.operation(method, target)
        if found is None:
            return  # an unknown route or method: the gateway's own 404/405
        spec_path, operation = found
        responses = operation["responses"]
        assert str(status) in responses, f"{method} {spec_path}: status {status} is not in the spec"
        content = _resolve(responses[str(status)], self.spec).get("content", {})
        schema = content.get("application/json", {}).get("schema")
        assert schema is not None, f"{method} {spec_path} {status}: no JSON schema in the spec"
        OAS30Validator(_resolve(schema, self.spec)).validate(body)


SPEC = SpecOperations(load_spec())


# --- the route table -----------------------------------------------------------------------------


def routes_of(handlers: object) -> list[Route]:
    """The routes whose handlers live in the module ``handlers`` (``chalicelib.api.pool_config``):
    a test parametrised over these covers a route added there from the moment it exists."""
    return [route for route in ROUTES if route.handler.__module__ == getattr(handlers, "__name__", "")]


def route_target(route: Route, params: Mapping[str, str], prefix: str = "/api/v3") -> str:
    """The route's path under ``prefix`` ("" for unversioned) with its parameters filled in."""
    (path,) = [path for path, _ in versioned_paths(route)
               if (path.startswith(prefix + "/") if prefix else not VERSION_PREFIX.match(path))]
    return re.sub(r"\{(\w+)\}", lambda found: params[found.group(1)], path)


# --- HTTP ----------------------------------------------------------------------------------------


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    raw: bytes

    @property
    def json(self) -> Any:
        return json.loads(self.raw)

    body = json


def decoded(headers: Mapping[str, str], raw: bytes) -> bytes:
    """An answer's body as a client that asked for gzip or deflate reads it (Ruby's Net::HTTP,
    a browser): decompressed when the front compressed it (local.gateway.compressed)."""
    coding = headers.get("Content-Encoding")
    if coding == "gzip":
        return gzip.decompress(raw)
    if coding == "deflate":
        return zlib.decompress(raw)
    assert coding is None, headers
    return raw


def basic(user: str, password: str) -> dict[str, str]:
    """An HTTP Basic Authorization header."""
    encoded = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {encoded}"}


def redis_state(client: redis.Redis) -> dict[str, Any]:
    """Every key with its type, value and whether it expires: compare two to prove nothing changed."""
    state: dict[str, Any] = {}
    for key in sorted(client.keys("*")):
        kind = client.type(key)
        if kind == "string":
            value: Any = client.get(key)
        elif kind == "hash":
            value = client.hgetall(key)
        elif kind == "zset":
            value = client.zrange(key, 0, -1, withscores=True)
        elif kind == "set":
            value = sorted(client.smembers(key))
        elif kind == "list":
            value = client.lrange(key, 0, -1)
        else:
            value = None
        # PTTL: TTL rounds a key's last half second to 0 s, which read as "does not expire".
        state[key] = (kind, value, client.pttl(key) >= 0)
    return state


class RecordingRefill:
    """The refill trigger: remembers which pools the API asked to reconcile at once."""

    def __init__(self) -> None:
        self.pools: list[str] = []

    def pools_changed(self, pools: Iterable[str]) -> None:
        self.pools.extend(sorted(set(pools)))


# --- the harness ---------------------------------------------------------------------------------


class Harness:
    """One service on the test Redis and a fake clock, driven as the Lambdas and clients drive it."""

    def __init__(self, config: Config, client: redis.Redis, clock: FakeClock, *, prefix: str = PREFIX,
                 headers: Mapping[str, str] | None = None, client_ip: str = "127.0.0.1",
                 **service_options: Any) -> None:
        self.refill = RecordingRefill()
        """What the API asked to reconcile at once (the refill trigger of the services)."""
        self.services = Services(config, client, clock=clock, prefix=prefix, refill=self.refill, **service_options)
        self.clock = clock
        self.headers = dict(headers or {})
        """Sent with every request (a test's own headers win)."""
        self.client_ip = client_ip
        self.replies: list[Reply] = []
        """Every reply received, for scans over all of them (secrets)."""
        self.gateway = Gateway(chalice_app.app)

    @property
    def config(self) -> Config:
        return self.services.config

    @property
    def client(self) -> redis.Redis:
        return self.services.client

    @property
    def store(self) -> Store:
        return self.services.store

    @property
    def provider(self) -> Any:
        """The provider of the first pool (every harness config has one provider kind)."""
        return self.services.provider(self.config.pools[0].provider)

    # --- reconcile passes, run by hand ---

    def pool(self, name: str) -> PoolConfig:
        """The pool as it should be now (with its runtime overrides)."""
        pool = self.services.pool(name)
        assert pool is not None, name
        return pool

    def reconcile(self, name: str, checkpoint: Checkpoint | None = None) -> PassReport:
        """One pass over the pool, with its provider and DNS plugin, as the reconcile Lambda runs it
        (given the pool as configured: the pass applies the runtime overrides it reads)."""
        pool = self.config.pool(name)
        assert pool is not None, name
        provider: Provider = self.services.provider(pool.provider)
        return reconcile_pool(self.store, provider, pool, self.clock, self.config.service,
                              checkpoint or no_checkpoint, self.services.dns_plugin(pool),
                              self.services.configured_provider, dns_plugins=self.services.dns_lookup,
                              fleet=lambda: self.config.pools)

    def settle(self, name: str, seconds: float = 30.0, passes: int = 40) -> None:
        """Advance the clock and reconcile until a pass finds nothing left to do; every pass must
        leave the pool consistent."""
        for _ in range(passes):
            self.clock.advance(seconds)
            report = self.reconcile(name)
            assert_consistent(self, name)
            if not report.work_in_flight:
                return
        raise AssertionError(f"pool {name} did not settle in {passes} passes")

    def passes(self, name: str, count: int, seconds: float = 30.0) -> list[PassReport]:
        """``count`` passes over the pool, each after ``seconds`` on the clock; every pass must
        leave the pool consistent."""
        reports = []
        for _ in range(count):
            self.clock.advance(seconds)
            reports.append(self.reconcile(name))
            assert_consistent(self, name)
        return reports

    def run_passes(self, *pools: str, seconds: float = 31, passes: int = 3) -> None:
        """``passes`` rounds over the pools (all when none is named), ``seconds`` apart, then one
        more: long enough, by default, for the dummy's clones to boot."""
        for _ in range(passes):
            for pool in pools or self.config.pool_names:
                self.reconcile(pool)
            self.clock.advance(seconds)
        for pool in pools or self.config.pool_names:
            self.reconcile(pool)

    def fill(self, *pools: str, seconds: float = 1, rounds: int = 10) -> None:
        """Reconcile the pools (all when none is named) until each has its size in ready VMs."""
        chosen = [self.pool(name) for name in pools] or list(self.services.pools())
        counts: dict[str, dict[str, int]] = {}
        for _ in range(rounds):
            for pool in chosen:
                self.reconcile(pool.name)
            counts = self.store.counts(pool.name for pool in chosen)
            if all(counts[pool.name]["ready"] >= pool.size for pool in chosen):
                return
            self.clock.advance(seconds)
        raise AssertionError(f"pools did not fill: {counts}")

    # --- what is where ---

    def hosts(self, name: str, state: str) -> set[str]:
        return set(self.store.hostnames(name, state))

    def ready(self, name: str) -> list[str]:
        return list(self.store.hostnames(name, "ready"))

    def count(self, name: str, state: str) -> int:
        return len(self.hosts(name, state))

    def provider_vms(self, name: str) -> set[str]:
        """Every VM in the pool's folder of the dummy provider, including clones not yet visible
        in its inventory."""
        return set(self.client.hkeys(self.provider._folder_key(self.pool(name))))

    def state_of(self, hostname: str) -> str | None:
        record = self.store.get_vm(hostname)
        return record.state if record else None

    def redis_state(self) -> dict[str, Any]:
        return redis_state(self.client)

    def check_out(self, name: str, count: int = 1, lifetime_hours: int = 2) -> list[str]:
        """Take VMs from the pool in the store (no HTTP); their hostnames."""
        result = self.store.checkout([CheckoutRequest(name, [name], count)], self.clock.now(),
                                     {"lifetime": str(lifetime_hours)})
        assert result.ok, result
        return [vm.hostname for vm in result.vms]

    # --- HTTP through the real app ---

    def request(self, method: str, target: str, body: Any = None, headers: Mapping[str, str] | None = None,
                client_ip: str | None = None) -> Reply:
        """Send a request as a client would. ``body``: bytes or str as sent, anything else as
        JSON, None for none. A JSON answer to a documented route must fit the spec."""
        if body is None:
            data = b""
        elif isinstance(body, bytes):
            data = body
        elif isinstance(body, str):
            data = body.encode()
        else:
            data = json.dumps(body).encode()
        sent = {**self.headers, **(headers or {})}
        status, out_headers, raw = self.gateway(method, target, sent, data, client_ip or self.client_ip)
        reply = Reply(status, out_headers, decoded(out_headers, raw))
        self.replies.append(reply)
        assert out_headers.get("Content-Type") == "application/json", f"{method} {target}: {out_headers}"
        # Tokens and live state must not be kept by a cache, nor sniffed as another type.
        assert out_headers.get("Cache-Control") == "no-store", f"{method} {target}: {out_headers}"
        assert out_headers.get("X-Content-Type-Options") == "nosniff", f"{method} {target}: {out_headers}"
        SPEC.check(method, target, status, reply.json)
        return reply

    def call(self, method: str, path: str, *, headers: Mapping[str, str] | None = None, body: Any = None,
             client_ip: str | None = None) -> Reply:
        return self.request(method, path, body, headers, client_ip)

    def answer(self, method: str, path: str, body: Any = None, raw: bytes | None = None,
               headers: Mapping[str, str] | None = None) -> tuple[int, Any]:
        """(status, JSON body) of a request: for comparing with the answer expected."""
        reply = self.request(method, path, raw if raw is not None else body, headers)
        return reply.status, reply.json

    def get(self, target: str, **kwargs: Any) -> Reply:
        return self.request("GET", target, **kwargs)

    def post(self, target: str, body: Any = None, **kwargs: Any) -> Reply:
        return self.request("POST", target, body, **kwargs)

    def put(self, target: str, body: Any = None, **kwargs: Any) -> Reply:
        return self.request("PUT", target, body, **kwargs)

    def delete(self, target: str, **kwargs: Any) -> Reply:
        return self.request("DELETE", target, **kwargs)

    def checkout(self, pool: str, token: str | None = None) -> str:
        """Check one VM out through the API (with ``token`` when given); its short hostname."""
        (hostname,) = self.checkout_vms(pool, 1, token)
        return hostname

    def checkout_vms(self, pool: str, count: int, token: str | None = None) -> list[str]:
        """Check ``count`` VMs out through the API in one request; their short hostnames."""
        reply = self.request("POST", "/api/v3/vm", {pool: count}, {"X-AUTH-TOKEN": token} if token else None)
        assert reply.status == 200, reply.raw
        names = reply.json[pool]["hostname"]
        return [str(name).split(".")[0] for name in ([names] if isinstance(names, str) else names)]

    def describe(self, hostname: str) -> dict[str, Any]:
        """GET /vm/<hostname>: what a client is told about the VM."""
        reply = self.request("GET", f"/api/v3/vm/{hostname}")
        assert reply.status == 200, reply.raw
        return dict(reply.json[hostname])

    def migrations_in_flight(self) -> int:
        return int(self.client.zcard(self.store.keys.migrating))

    def new_token(self, user: str, password: str, version: int = 3) -> str:
        reply = self.request("POST", f"/api/v{version}/token", headers=basic(user, password))
        assert reply.status == 200, reply.raw
        return str(reply.json["token"])


HarnessFactory = Callable[..., Harness]


# --- invariants and faults -----------------------------------------------------------------------


def assert_consistent(harness: Harness, name: str, pass_completed: bool = True) -> None:
    """The invariants every pass must leave behind, whatever happened before: every VM in one
    state with a matching record; the pool's own VMs (on-demand ones are built beyond its size)
    pending + ready within the size; every clone counted in flight pending (or held for an ended
    request), and counted against
    task_limit exactly when it is no request's. A killed pass may leave a VM made by hand
    undiscovered; after a whole pass no VM in the provider is unknown."""
    pool = harness.pool(name)
    seen: dict[str, str] = {}
    on_demand: set[str] = set()
    for state in STATES:
        for host in harness.hosts(name, state):
            assert host not in seen, f"{host} is both {seen[host]} and {state}"
            seen[host] = state
            record = harness.store.get_vm(host)
            assert record is not None, f"{host} is {state} without a record"
            assert (record.state, record.pool) == (state, name), f"{host}: record says {record.state}"
            if record.raw.get("request"):
                on_demand.add(host)
    pool_vms = (harness.hosts(name, "pending") | harness.hosts(name, "ready")) - on_demand
    assert len(pool_vms) <= pool.size, f"{name}: {len(pool_vms)} pending+ready > size {pool.size}"
    pool_clones = set(harness.client.zrange(harness.store.keys.pool_clones, 0, -1))
    counted = harness.client.exists(harness.store.keys.pool_clones_counted)
    for host in harness.client.zrange(harness.store.keys.cloning, 0, -1):
        record = harness.store.get_vm(host)
        # or completed, its request ended, while its clone may still run (lua/ondemand_end.lua)
        held = record is not None and record.state == "completed" and record.raw.get("clone_held")
        assert record is not None and (record.state == "pending" or held), \
            f"{host} cloning but {record and record.state}"
        # what task_limit counts (keys.pool_clones), once built: the clones that are no request's
        assert not counted or (host in pool_clones) == (not record.raw.get("request")), f"{host} miscounted"
    assert pool_clones <= set(harness.client.zrange(harness.store.keys.cloning, 0, -1)), "slots held after clones"
    # The service's running set (what the service-wide quota counts) holds the running VMs, no others.
    counted = set(harness.client.zrange(harness.store.keys.running, 0, -1))
    assert harness.hosts(name, "running") <= counted, f"{name}: running VMs not counted by the service"
    for host in counted:
        record = harness.store.get_vm(host)
        assert record is not None and host in harness.hosts(record.pool, "running"), f"{host} counted, not running"
    if pass_completed:
        untracked = harness.provider_vms(name) - set(seen)
        assert not untracked, f"VMs in the provider that no state knows: {untracked}"


class Killed(Exception):
    """Raised at a checkpoint to stand for a pass killed there (a Lambda timing out, a crash)."""


def kill_at_step(step: int) -> tuple[Callable[[str], None], list[str]]:
    """A reconcile checkpoint that kills the pass when it reaches its ``step``-th checkpoint
    (0-based), and the list of the checkpoints it reached."""
    reached: list[str] = []

    def checkpoint(name: str) -> None:
        reached.append(name)
        if len(reached) == step + 1:
            raise Killed(name)

    return checkpoint, reached


def at_once(*calls: Callable[[], T], wait: float | None = 60.0) -> list[T]:
    """Run ``calls`` in threads released together by a barrier; their results, in order. A call
    that raised, or had not ended ``wait`` seconds after the others were joined (None: waited
    for), fails the test with what it raised."""
    barrier = threading.Barrier(len(calls), timeout=30)
    results: list[Any] = [None] * len(calls)
    errors: dict[int, BaseException] = {}
    ended: set[int] = set()

    def run(index: int) -> None:
        try:
            barrier.wait()
            results[index] = calls[index]()
            ended.add(index)
        except BaseException as error:  # noqa: BLE001 - reported below
            errors[index] = error

    workers = [threading.Thread(target=run, args=(index,)) for index in range(len(calls))]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(wait)
    failed = {index: errors.get(index, "still running") for index in range(len(calls)) if index not in ended}
    assert not failed, f"calls failed: {failed!r}"
    return results


def run_at_once(action: Callable[[], object], threads: int) -> None:
    """Run ``action`` in ``threads`` threads released together; fail with what any of them raised."""
    at_once(*[action] * threads, wait=None)


# --- a process killed after any Redis command ----------------------------------------------------


class Died(BaseException):
    """The process is gone: not an Exception, so nothing in the service catches it, and a
    ``finally:`` that tries to write meets the same end."""


class Fuse:
    """Counts the Redis round trips (a command, a pipeline, a script) of the clients it is wired
    into (``fused_services``) and stops the process after its ``die_after``-th: every later one
    raises ``Died`` before anything is sent. ``pause_after``/``meanwhile``: after that round trip,
    once, ``meanwhile()`` runs (another pass, a user) before the next one is sent, as a process
    frozen there and resumed would see it. ``lose_reply_of``: that round trip (0-based) reaches
    Redis and runs, and its reply is lost (the connection reset as it comes: ``ReplyLost``); the
    process lives on, as production's client (``connect``) leaves it: nothing sent again."""

    def __init__(self, die_after: int | None = None, pause_after: int | None = None,
                 meanwhile: Callable[[], None] | None = None, lose_reply_of: int | None = None) -> None:
        self.sent = 0
        self.die_after = die_after
        self.pause_after = pause_after
        self.meanwhile = meanwhile
        self.lose_reply_of = lose_reply_of
        self.dead = False
        self.replies_lost = 0

    def before_send(self) -> bool:
        """Count one more round trip; whether its reply is to be lost."""
        if self.dead or (self.die_after is not None and self.sent >= self.die_after):
            self.dead = True
            raise Died(f"killed after round trip {self.sent}")
        if self.sent == self.pause_after and self.meanwhile is not None:
            meanwhile, self.meanwhile = self.meanwhile, None
            meanwhile()
        self.sent += 1
        return self.sent - 1 == self.lose_reply_of

    def step(self, name: str) -> None:
        """A reconcile checkpoint (after each VM of a batch, each step): one more point to die at."""
        self.before_send()


class _FusedConnection(_TcpConnection):
    """Production's connection (``connect``: its retry, its tell of a lost reply from a command
    never sent) whose round trips go through a Fuse (opening it, its handshake and its health
    check's PING are part of the round trip that needed them). Before, a plain redis-py
    connection: its retry (10 tries) sent a command again when its reply was lost."""

    def __init__(self, *args: Any, fuse: Fuse, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._fuse = fuse
        self._fused_sending = 0
        self._losing = False

    def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        if self._fused_sending == 0:
            self._losing = self._fuse.before_send()
        self._fused_sending += 1
        try:
            super().send_packed_command(command, check_health)
        finally:
            self._fused_sending -= 1

    def on_connect_check_health(self, check_health: bool = True) -> None:
        self._fused_sending += 1  # the handshake: HELLO, CLIENT SETINFO
        try:
            super().on_connect_check_health(check_health)
        finally:
            self._fused_sending -= 1

    def read_response(self, *args: Any, **kwargs: Any) -> Any:
        reply = super().read_response(*args, **kwargs)
        if self._losing and self._fused_sending == 0:
            self._losing = False
            self._fuse.replies_lost += 1
            self.disconnect()  # the reply came (Redis ran it), and never reaches the process
            raise ReplyLost("Connection reset by peer (the test's Fuse)")
        return reply


class _FusedCalls:
    """A provider or DNS plugin whose every call goes through a Fuse first: for backends that keep
    nothing in Redis (vSphere, a DNS server), each call that may reach them is one step the
    process may die after."""

    _LOCAL = frozenset({"call_count", "clone_seconds", "fqdn"})
    """Calls that only read the object's own settings or counters."""

    def __init__(self, backend: Any, fuse: Fuse) -> None:
        self._backend = backend
        self._fuse = fuse

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._backend, name)
        if not callable(value) or name.startswith("_") or name in self._LOCAL:
            return value

        def call(*args: Any, **kwargs: Any) -> Any:
            self._fuse.before_send()
            return value(*args, **kwargs)

        return call


class _FusedServices(Services):
    """Services whose providers and DNS plugins are called through a Fuse."""

    def __init__(self, *args: Any, fuse: Fuse, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._fuse = fuse
        self._fused: dict[int, Any] = {}

    def _through_fuse(self, backend: Any) -> Any:
        if id(backend) not in self._fused:
            self._fused[id(backend)] = _FusedCalls(backend, self._fuse)
        return self._fused[id(backend)]

    def provider(self, name: str) -> Provider:
        return self._through_fuse(super().provider(name))  # type: ignore[no-any-return]

    def dns_plugin(self, pool: PoolConfig) -> DnsPlugin | None:
        plugin = super().dns_plugin(pool)
        return None if plugin is None else self._through_fuse(plugin)  # type: ignore[no-any-return]


def fused_services(harness: Harness, fuse: Fuse | None, backend_fuse: Fuse | None = None) -> Services:
    """Another process of the harness's service (a reconcile Lambda), with the same config, clock
    and key prefix. ``fuse``: it has its own Redis client, whose commands (the store's, and the
    dummy provider's, which keeps its VMs in Redis) go through that fuse. ``backend_fuse``: every
    call to a provider or a DNS plugin goes through that fuse first (a backend not kept in Redis)."""
    client = harness.client
    if fuse is not None:
        kwargs = harness.client.connection_pool.connection_kwargs
        client = production_client(harness.config.redis, kwargs.get("port", 6379))
        client.connection_pool.connection_class = _FusedConnection
        client.connection_pool.connection_kwargs["fuse"] = fuse
    if backend_fuse is not None:
        return _FusedServices(harness.config, client, clock=harness.clock, prefix=harness.store.keys.prefix,
                              fuse=backend_fuse)
    return Services(harness.config, client, clock=harness.clock, prefix=harness.store.keys.prefix)


SavedState = dict[str, tuple[bytes, int]]
"""Every key's serialized value and time to live in milliseconds (0: none)."""


def save_state(client: redis.Redis) -> SavedState:
    """Every key of the database, to ``restore_state`` when a test runs many times from one state."""
    raw = redis.Redis(connection_pool=client.connection_pool)
    return {key: (raw.execute_command("DUMP", key, NEVER_DECODE=True), max(raw.pttl(key), 0))
            for key in raw.keys("*")}


def restore_state(client: redis.Redis, saved: SavedState) -> None:
    """The database exactly as ``save_state`` saved it (the scripts Redis has loaded stay)."""
    client.flushall()
    for key, (value, ttl) in saved.items():
        client.restore(key, ttl, value)
