"""A change whose script ran in Redis but whose answer never reached the API (the connection
reset as the reply came): answered as if the answer had arrived, made once (store/settle.py).

Before, ``POST /token``, a disk, snapshot or revert task, a ``PUT /vm/<host>`` with a disk and
an administrator's ``POST /poolreset`` answered 503, and the retry the 503 asks for made the
change again: a second token counted against ``max_tokens_per_user``, a second disk, the pool
reset twice. And a script the API gave up on that reached
Redis later, within its deadline, made the change the caller was told failed.

A real redis-server behind a TCP proxy that cuts the client's connection when the reply to one
script starts (``ReplyCuttingProxy``), or keeps that script back and closes the client's
connection, sending the script on to Redis only later (``hold``).
"""

from __future__ import annotations

import dataclasses
import json
import socket
import struct
import threading
from typing import Any, Iterator

import pytest
import redis

from chalicelib.auth.base import canonical_user
from chalicelib.auth.tokens import TokenStore
from chalicelib.config import parse
from chalicelib.store import ReplicaAcks, Store, StoreUnavailable, connect
from chalicelib.store.keys import Keys
from local.redis_server import RedisServer
from tests.harness import Harness, HarnessFactory, basic
from tests.redis_pair import InterposedProxy, RedisPair
from tests.support import eventually

ALICE = basic("alice", "alice-pw")


class ReplyCuttingProxy(InterposedProxy):
    """A TCP proxy to Redis. Once ``cut_at(marker)`` is called, the first command sent through it
    whose bytes hold ``marker`` (a script's SHA) is passed on, and when its reply starts, the
    client's connection is reset after the reply's first byte: Redis ran the script, the client
    lost the answer. With ``hold=True`` the command is kept back instead and the client's
    connection reset at once; ``release()`` then sends it on to Redis (the connection Redis had
    from the proxy still open), as a command written before the connection failed that reaches
    Redis late."""

    def __init__(self, upstream_port: int) -> None:
        self._marker: bytes | None = None
        self._then: list[bytes] = []
        self._hold = False
        self._held: tuple[socket.socket, bytes] | None = None
        self.cut = threading.Event()
        self._lock = threading.Lock()
        super().__init__(upstream_port)

    def cut_at(self, marker: str, hold: bool = False, then: tuple[str, ...] = ()) -> None:
        """Cut (or hold) the first command holding ``marker``; after it, the first holding each
        of ``then`` in turn is cut too."""
        with self._lock:
            self._marker, self._hold, self._then = marker.encode(), hold, [next_marker.encode() for next_marker in then]
            self.cut.clear()

    def all_cut(self) -> bool:
        """Whether every marker given to ``cut_at`` was met."""
        with self._lock:
            return self._marker is None and not self._then

    def release(self) -> None:
        """Send the command held back on to Redis."""
        assert self._held is not None, "no command was held"
        server, data = self._held
        server.sendall(data)

    def _serve(self, client: socket.socket, server: socket.socket) -> None:
        armed = threading.Event()
        threading.Thread(target=self._requests, args=(client, server, armed), daemon=True).start()
        threading.Thread(target=self._replies, args=(server, client, armed), daemon=True).start()

    def _requests(self, client: socket.socket, server: socket.socket, armed: threading.Event) -> None:
        while True:
            try:
                data = client.recv(65536)
            except OSError:
                return
            if not data:
                # The client went, or the reply's cut woke this read (SHUT_RD): reset (Redis's
                # connection stays open, as a server reads what it had).
                _reset(client)
                return
            with self._lock:
                hit = self._marker is not None and self._marker in data
                if hit:
                    self._marker = self._then.pop(0) if self._then else None
            if hit and self._hold:
                self._held = (server, data)
                _reset(client)
                self.cut.set()
                continue
            if hit:
                armed.set()
            try:
                server.sendall(data)
            except OSError:
                return

    def _replies(self, server: socket.socket, client: socket.socket, armed: threading.Event) -> None:
        while True:
            try:
                data = server.recv(65536)
            except OSError:
                return
            if not data:
                return
            try:
                if armed.is_set():
                    client.sendall(data[:1])  # the reply starts...
                    self.cut.set()
                    # ...and the connection is reset, by the thread reading it (a socket closed
                    # while another thread reads it stays open until that read returns).
                    client.shutdown(socket.SHUT_RD)
                    continue
                client.sendall(data)
            except OSError:
                continue  # the client's socket is gone: Redis's replies are dropped


def _reset(sock: socket.socket) -> None:
    """Close with a RST, as a connection reset by a load balancer or a NAT."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        return  # closed already (the proxy's close)
    sock.close()


@pytest.fixture
def proxy(redis_server: RedisServer) -> Iterator[ReplyCuttingProxy]:
    cutting = ReplyCuttingProxy(redis_server.port)
    yield cutting
    cutting.close()


def _service(make_harness: HarnessFactory, redis_server: RedisServer, proxy: ReplyCuttingProxy,
             redis_client: redis.Redis, max_tokens: int = 5) -> Harness:
    """A pool of one VM (the dummy provider, disks and snapshots at once) and dummy auth (``root``
    an administrator, the pool changes of ``experimental_features`` on), the service's Redis
    reached through ``proxy``, with a long socket timeout: only the answer's loss, not the
    script's deadline, is at play. Every script loaded, as in a warm Lambda (a cut EVALSHA's
    reply is the script's, not NOSCRIPT)."""
    config = parse(f"""
:config: {{max_tokens_per_user: {max_tokens}, experimental_features: true}}
:auth: {{provider: dummy, admins: [root]}}
:redis: {{server: 127.0.0.1, port: {redis_server.port}, socket_timeout: 5}}
:providers:
  :dummy: {{createvm_max_time: 0, boot_time: 0, createdisk_max_time: 0, createsnapshot_max_time: 0}}
:pools:
  - {{name: pool1, size: 1, provider: dummy}}
""")
    harness = make_harness(config, client=connect(dataclasses.replace(config.redis, port=proxy.port)))
    for script in vars(harness.store.scripts).values():
        redis_client.script_load(script.script)
    redis_client.script_load(harness.services.tokens._create.script)
    harness.run_passes("pool1", seconds=1, passes=2)
    return harness


def _tasks(harness: Harness, redis_client: redis.Redis, host: str) -> list[dict[str, Any]]:
    """The tasks queued on the VM, oldest first."""
    return [json.loads(task) for task in redis_client.lrange(harness.store.keys.vm_tasks(host), 0, -1)]


@pytest.mark.parametrize("method, path, body, status, kind", [
    ("POST", "/api/v3/vm/{host}/disk/8", None, 202, "disk"),
    ("POST", "/api/v3/api/v1/vm/{host}/disk/8", None, 202, "disk"),  # beaker's
    ("POST", "/api/v3/vm/{host}/snapshot", None, 202, "snapshot"),
    ("PUT", "/api/v3/vm/{host}", {"disk": 8, "lifetime": 3}, 200, "disk"),
])
def test_a_task_whose_answer_was_lost_after_it_was_queued_is_answered_as_queued(
        make_harness: HarnessFactory, redis_server: RedisServer, redis_client: redis.Redis,
        proxy: ReplyCuttingProxy, method: str, path: str, body: Any, status: int, kind: str) -> None:
    """The connection is reset as the reply to the script that queued the task starts: the task
    is queued. Before, the caller was answered 503 and the retry it asks for queued a second
    disk (or snapshot). Now the API finds the task queued and answers as the script's answer
    would have: the task once, its answer (a snapshot's id: the one queued) given."""
    harness = _service(make_harness, redis_server, proxy, redis_client)
    token = harness.new_token("alice", "alice-pw")
    host = harness.checkout("pool1", token)
    script = harness.store.scripts.vm_modify if method == "PUT" else harness.store.scripts.vm_task_enqueue
    proxy.cut_at(script.sha)
    reply = harness.request(method, path.format(host=host), body, {"X-AUTH-TOKEN": token})
    assert proxy.cut.is_set(), "the reply was not cut: the test proved nothing"
    assert reply.status == status, reply.raw
    tasks = _tasks(harness, redis_client, host)
    assert [task["kind"] for task in tasks] == [kind]
    if kind == "snapshot":
        assert reply.json == {"ok": True, host: {"snapshot": tasks[0]["snapshot"]}}
    harness.run_passes("pool1", seconds=1, passes=2)
    shown = harness.describe(host)
    assert len(shown["disk" if kind == "disk" else "snapshots"]) == 1, shown


def test_two_identical_disk_requests_one_answer_lost_add_two_disks(
        make_harness: HarnessFactory, redis_server: RedisServer, redis_client: redis.Redis,
        proxy: ReplyCuttingProxy) -> None:
    """Beaker sends ``disks: [8, 8]`` as two identical requests: two disks, whichever reply is lost."""
    harness = _service(make_harness, redis_server, proxy, redis_client)
    token = harness.new_token("alice", "alice-pw")
    host = harness.checkout("pool1", token)
    proxy.cut_at(harness.store.scripts.vm_task_enqueue.sha)
    answers = [harness.request("POST", f"/api/v3/vm/{host}/disk/8", headers={"X-AUTH-TOKEN": token}).status
               for _ in range(2)]
    assert proxy.cut.is_set()
    assert answers == [202, 202]
    harness.run_passes("pool1", seconds=1, passes=3)
    assert harness.describe(host)["disk"] == ["+8gb", "+8gb"]


def test_a_disk_whose_script_reaches_redis_after_the_api_gave_up_is_never_added(
        make_harness: HarnessFactory, redis_server: RedisServer, redis_client: redis.Redis,
        proxy: ReplyCuttingProxy) -> None:
    """The script is written, the connection reset before Redis read it, and it reaches Redis
    later, within its deadline (a long socket timeout). The API, finding no disk queued, answers
    503; the script arriving afterwards queues nothing (the API marked the request settled), and
    the retry the 503 asks for queues the one disk."""
    harness = _service(make_harness, redis_server, proxy, redis_client)
    token = harness.new_token("alice", "alice-pw")
    host = harness.checkout("pool1", token)
    proxy.cut_at(harness.store.scripts.vm_task_enqueue.sha, hold=True)
    reply = harness.request("POST", f"/api/v3/vm/{host}/disk/8", headers={"X-AUTH-TOKEN": token})
    assert proxy.cut.is_set()
    assert reply.status == 503, reply.raw
    before = redis_client.info("commandstats").get("cmdstat_evalsha", {}).get("calls", 0)
    proxy.release()
    eventually(lambda: redis_client.info("commandstats")["cmdstat_evalsha"]["calls"] > before, 10,
               "the held script to run")
    assert _tasks(harness, redis_client, host) == [], "the script the API gave up on queued a disk"
    assert harness.request("POST", f"/api/v3/vm/{host}/disk/8", headers={"X-AUTH-TOKEN": token}).status == 202
    harness.run_passes("pool1", seconds=1, passes=3)
    assert harness.describe(host)["disk"] == ["+8gb"]


def test_a_token_whose_answer_was_lost_after_it_was_made_is_handed_out(
        make_harness: HarnessFactory, redis_server: RedisServer, redis_client: redis.Redis,
        proxy: ReplyCuttingProxy) -> None:
    """The connection is reset as the reply to the script that made the token starts. Before:
    503, a token nobody saw counted against ``max_tokens_per_user`` (at 1, the retry was refused
    403 until it expired). Now the token is handed out: it works, and it is the user's only one."""
    harness = _service(make_harness, redis_server, proxy, redis_client, max_tokens=1)
    proxy.cut_at(harness.services.tokens._create.sha)
    reply = harness.request("POST", "/api/v3/token", headers=ALICE)
    assert proxy.cut.is_set()
    assert reply.status == 200, reply.raw
    token = reply.json["token"]
    assert harness.request("GET", f"/api/v3/token/{token}").status == 200
    assert redis_client.scard(harness.store.keys.user_tokens(canonical_user("alice"))) == 1


def test_a_login_whose_script_reaches_redis_after_the_api_gave_up_makes_no_token(
        make_harness: HarnessFactory, redis_server: RedisServer, redis_client: redis.Redis,
        proxy: ReplyCuttingProxy) -> None:
    """The token's script held back past the API's 503 and sent on within its deadline makes
    nothing: at a limit of one token, the retry the 503 asks for gets it."""
    harness = _service(make_harness, redis_server, proxy, redis_client, max_tokens=1)
    proxy.cut_at(harness.services.tokens._create.sha, hold=True)
    assert harness.request("POST", "/api/v3/token", headers=ALICE).status == 503
    before = redis_client.info("commandstats").get("cmdstat_evalsha", {}).get("calls", 0)
    proxy.release()
    eventually(lambda: redis_client.info("commandstats")["cmdstat_evalsha"]["calls"] > before, 10,
               "the held script to run")
    tokens = harness.store.keys.user_tokens(canonical_user("alice"))
    assert redis_client.scard(tokens) == 0, "the script the API gave up on made a token"
    assert harness.request("POST", "/api/v3/token", headers=ALICE).status == 200
    assert redis_client.scard(tokens) == 1


def _resets(harness: Harness, redis_client: redis.Redis) -> tuple[dict[str, str], dict[str, str]]:
    """The pools' resets (pool -> when) and ready fences (pool -> the change's id)."""
    keys = harness.store.keys
    return redis_client.hgetall(keys.pool_override("poolreset")), redis_client.hgetall(keys.ready_fence)


def _reset_with_its_reply_cut(harness: Harness, proxy: ReplyCuttingProxy, **cut: Any) -> tuple[Any, str]:
    """``POST /poolreset`` of pool1 by root, the reply to the reset's script cut (``cut``: as
    ``ReplyCuttingProxy.cut_at`` takes it); the API's reply, and root's token."""
    token = harness.new_token("root", "root-pw")
    proxy.cut_at(harness.store.scripts.pool_overrides.sha, **cut)
    return harness.request("POST", "/api/v3/poolreset", {"pool1": "1"}, {"X-AUTH-TOKEN": token}), token


def _assert_reset_once(harness: Harness, redis_client: redis.Redis, reply: Any) -> None:
    """The reset answered 201, and made once: pool1 reset now, one ready fence."""
    assert reply.status == 201, reply.raw
    resets, fences = _resets(harness, redis_client)
    assert resets == {"pool1": repr(harness.clock.now())} and list(fences) == ["pool1"]


def test_a_pool_reset_whose_answer_was_lost_after_it_was_made_is_answered_as_made(
        make_harness: HarnessFactory, redis_server: RedisServer, redis_client: redis.Redis,
        proxy: ReplyCuttingProxy) -> None:
    """The connection is reset as the reply to the reset's script starts. Before: 503, and the
    retry it asks for reset the pool again, draining the VMs cloned since the first. Now 201."""
    harness = _service(make_harness, redis_server, proxy, redis_client)
    reply, _ = _reset_with_its_reply_cut(harness, proxy)
    assert proxy.cut.is_set(), "the reply was not cut: the test proved nothing"
    _assert_reset_once(harness, redis_client, reply)


def test_a_pool_reset_whose_answer_and_its_settles_answer_were_both_lost_is_answered_as_made_once(
        make_harness: HarnessFactory, redis_server: RedisServer, redis_client: redis.Redis,
        proxy: ReplyCuttingProxy) -> None:
    """The reply to the reset's script is cut, then the reply to the settle that asks how it
    ended. Before: 503 (the reset made), and the retry the 503 asks for reset the pool a second
    time, draining the VMs cloned since the first. Now the settle is asked again and the reset
    answered 201, made once."""
    harness = _service(make_harness, redis_server, proxy, redis_client)
    reply, _ = _reset_with_its_reply_cut(harness, proxy, then=(harness.store.scripts.settle.sha,))
    assert proxy.cut.is_set() and proxy.all_cut(), "the settle's reply was not cut: the test proved nothing"
    _assert_reset_once(harness, redis_client, reply)


def test_a_token_whose_answer_and_its_settles_answer_were_both_lost_is_handed_out(
        make_harness: HarnessFactory, redis_server: RedisServer, redis_client: redis.Redis,
        proxy: ReplyCuttingProxy) -> None:
    """Both replies cut (the token's script's, then the settle's). Before: 503 and the token
    nobody saw stayed, so at a limit of one token the retry was refused 403 until it expired. Now
    the token is handed out, the user's only one."""
    harness = _service(make_harness, redis_server, proxy, redis_client, max_tokens=1)
    proxy.cut_at(harness.services.tokens._create.sha, then=(harness.services.tokens._settle.sha,))
    reply = harness.request("POST", "/api/v3/token", headers=ALICE)
    assert proxy.all_cut(), "the settle's reply was not cut: the test proved nothing"
    assert reply.status == 200, reply.raw
    assert harness.request("GET", f"/api/v3/token/{reply.json['token']}").status == 200
    assert redis_client.scard(harness.store.keys.user_tokens(canonical_user("alice"))) == 1


def test_a_pool_reset_whose_script_reaches_redis_after_the_api_gave_up_is_never_made(
        make_harness: HarnessFactory, redis_server: RedisServer, redis_client: redis.Redis,
        proxy: ReplyCuttingProxy) -> None:
    """The reset's script is held back past the API's 503 and sent on within its deadline: it
    resets nothing (the API marked the change settled, void); the retry the 503 asks for resets
    the pool, once."""
    harness = _service(make_harness, redis_server, proxy, redis_client)
    reply, token = _reset_with_its_reply_cut(harness, proxy, hold=True)
    assert proxy.cut.is_set()
    assert reply.status == 503, reply.raw
    before = redis_client.info("commandstats").get("cmdstat_evalsha", {}).get("calls", 0)
    proxy.release()
    eventually(lambda: redis_client.info("commandstats")["cmdstat_evalsha"]["calls"] > before, 10,
               "the held script to run")
    assert _resets(harness, redis_client) == ({}, {}), "the script the API gave up on reset the pool"
    harness.clock.advance(1)
    assert harness.request("POST", "/api/v3/poolreset", {"pool1": "1"}, {"X-AUTH-TOKEN": token}).status == 201
    assert _resets(harness, redis_client)[0] == {"pool1": repr(harness.clock.now())}


def test_a_token_whose_replica_wait_answer_is_lost_is_not_left_behind(redis_pair: RedisPair) -> None:
    """With replica acknowledgements a token is handed out once a replica has it (WAIT after its
    script). The replica slow (its link held) and WAIT's timeout past the socket timeout, WAIT's
    answer is lost: the caller is answered 503. Before, the token stayed, one nobody ever saw,
    counted against ``max_tokens_per_user`` (only a WAIT answered short deleted it); now it is
    deleted as one no replica acknowledged."""
    config = parse(f"""
:redis: {{server: 127.0.0.1, port: {redis_pair.primary.port}, socket_timeout: 0.2}}
:providers:
  :dummy: {{}}
:pools:
  - {{name: pool1, size: 0, provider: dummy}}
""")
    store = Store(connect(config.redis), replica_acks=ReplicaAcks(1, 2000))
    tokens = TokenStore(store.client, max_per_user=1, replicated=store.writes_replicated)
    redis_pair.wait_synced()
    assert store._replicas_to_wait_for() == 1
    redis_pair.link.hold()
    try:
        with pytest.raises(StoreUnavailable):
            tokens.create("alice")
    finally:
        redis_pair.link.release()
    direct = redis_pair.client(redis_pair.primary)
    assert direct.scard(Keys().user_tokens("alice")) == 0, "a token nobody saw was left behind"
    redis_pair.wait_synced()
    assert tokens.create("alice")  # the retry the 503 asks for, at a limit of one token
