"""Plain pipelines and transactions across a failover and a write cut part-way: a write runs at
most once (store/connection.py ``_Pipeline``, ``PartlyWritten``, ``ReadOnlyExecAbort``).

A real primary + replica (tests/redis_pair.py). ``Splitter`` stands for the primary endpoint and
for the network between: it passes what a client sends up to a given command, then holds the
rest (as a pipeline larger than one read of Redis's is read in pieces, another client's
``FAILOVER`` or ``REPLICAOF`` served between them), or cuts the connection there while the client
is still writing (a reset in the middle of a large pipeline)."""

from __future__ import annotations

import select
import socket
import struct
import threading
from typing import Any, Callable

import pytest
import redis

from chalicelib.config import parse
from chalicelib.store import ReplicaAcks, Store, connect
from chalicelib.store.connection import PartlyWritten, never_sent
from tests.redis_pair import RedisPair
from tests.support import eventually

BIG = 6_000_000
"""Bytes of a value no loopback socket buffer holds (``tcp_wmem`` tops out at 4 MB): its writer is
still writing when the Splitter cuts the connection."""


def resp(*args: str) -> bytes:
    """A command as redis-py writes it (RESP array of bulk strings)."""
    return b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%s\r\n" % (len(arg.encode()), arg.encode()) for arg in args)


class Splitter:
    """Forwards connections to the node it points at. The first connection to send ``before``
    (the start of a command) has everything before it passed on and the rest held from there
    (``reached`` is set): ``resume`` passes it on, ``cut`` resets the connection (RST) without
    reading more. Other connections, and that one once resumed, pass everything."""

    def __init__(self, target_port: int, before: bytes) -> None:
        self.target_port = target_port
        self.before = before
        self.reached = threading.Event()
        self._decided = threading.Event()
        self._cut = False
        self._listener = socket.socket()
        # A small receive buffer (inherited by accepted sockets): held bytes stay in the client's.
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen()
        self.port: int = self._listener.getsockname()[1]
        self._closing = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def point_at(self, port: int) -> None:
        self.target_port = port

    def resume(self) -> None:
        self._decided.set()

    def cut(self) -> None:
        self._cut = True
        self._decided.set()

    def close(self) -> None:
        self._closing.set()
        self._decided.set()
        self._listener.close()

    def _accept(self) -> None:
        while not self._closing.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            threading.Thread(target=self._pump, args=(client, upstream), daemon=True).start()

    def _pump(self, client: socket.socket, upstream: socket.socket) -> None:
        kept = b""  # bytes from the client not passed on yet: a possible start of ``before``
        try:
            while not self._closing.is_set():
                readable, _, _ = select.select([client, upstream], [], [], 0.05)
                if upstream in readable:
                    data = upstream.recv(65536)
                    if not data:
                        return
                    client.sendall(data)
                if client not in readable:
                    continue
                data = client.recv(65536)
                if not data:
                    return
                kept += data
                at = kept.find(self.before) if not self.reached.is_set() else -1
                if at < 0:
                    keep = 0 if self.reached.is_set() else self._partly_before(kept)
                    upstream.sendall(kept[:len(kept) - keep])
                    kept = kept[len(kept) - keep:]
                    continue
                upstream.sendall(kept[:at])
                kept = kept[at:]
                self.reached.set()
                self._held(client, upstream, kept)
                kept = b""
        except OSError:
            return
        finally:
            client.close()
            upstream.close()

    def _partly_before(self, data: bytes) -> int:
        """The length of the longest end of ``data`` that ``before`` starts with."""
        return next((size for size in range(min(len(data), len(self.before) - 1), 0, -1)
                     if self.before.startswith(data[-size:])), 0)

    def _held(self, client: socket.socket, upstream: socket.socket, kept: bytes) -> None:
        """Hold ``kept`` and what follows (unread) until resumed; then pass it on, or reset."""
        while not self._decided.wait(0.05):
            readable, _, _ = select.select([upstream], [], [], 0)
            if readable:
                client.sendall(upstream.recv(65536))
        if self._cut:
            client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            raise OSError("cut")
        upstream.sendall(kept)


@pytest.fixture
def splitters() -> Any:
    made: list[Splitter] = []
    yield made
    for splitter in made:
        splitter.close()


def service_client(url: str) -> redis.Redis:
    """The service's client (store.connect), its connection open."""
    client = connect(parse(":redis: {socket_timeout: 10.0}").redis, url=url)
    client.ping()
    return client


def in_background(call: Callable[[], Any]) -> tuple[threading.Thread, dict[str, Any]]:
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["value"] = call()
        except Exception as error:  # noqa: BLE001  (the test asserts on it)
            outcome["error"] = error

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, outcome


DEMOTIONS: dict[str, Callable[[RedisPair], None]] = {"replicaof": RedisPair.swap_with_replicaof,
                                                      "failover": RedisPair.fail_over}


@pytest.mark.parametrize("demote", list(DEMOTIONS))
def test_a_plain_pipeline_demoted_part_way_runs_each_write_once(
        redis_pair: RedisPair, splitters: list[Splitter], demote: str) -> None:
    """The node demoted after it ran the pipeline's first write: the rest is refused (READONLY).
    redis-py ran the whole pipeline again on the new primary: the first INCR twice (a counter a
    dashboard or a limit reads, one too many). Only the refused write is sent again."""
    splitter = Splitter(redis_pair.primary.port, before=resp("INCRBY", "other", "1"))
    splitters.append(splitter)
    client = service_client(splitter.url)
    old_primary = RedisPair.client(redis_pair.primary)
    pipe = client.pipeline(transaction=False)
    pipe.incr("counted")
    pipe.incr("other")
    pipe.get("counted")
    thread, outcome = in_background(pipe.execute)
    assert splitter.reached.wait(10)
    eventually(lambda: old_primary.get("counted") == "1", 10, "the first INCR run")
    redis_pair.wait_synced()
    DEMOTIONS[demote](redis_pair)
    splitter.point_at(redis_pair.primary.port)
    splitter.resume()
    thread.join(30)

    promoted = RedisPair.client(redis_pair.primary)
    assert outcome == {"value": [1, 1, "1"]}
    assert promoted.get("counted") == "1", "a write that ran before the demotion ran again"
    assert promoted.get("other") == "1"


def test_a_transaction_whose_exec_reaches_a_demoted_node_runs_once_on_the_new_primary(
        redis_pair: RedisPair, splitters: list[Splitter]) -> None:
    """Its writes queued on the primary, EXEC read after a FAILOVER demoted it: Redis discards
    the transaction (``EXECABORT ... READONLY``). redis-py raised that ExecAbortError, not a
    READONLY: not retried, the failover not noticed (StoreUnavailable: a tick's fleet.remember,
    a history sample, a migration's end failed). Nothing ran: run once more whole, there."""
    splitter = Splitter(redis_pair.primary.port, before=resp("EXEC"))
    splitters.append(splitter)
    client = service_client(splitter.url)
    pipe = client.pipeline(transaction=True)
    pipe.incr("counted")
    pipe.hset("known", "pool", "x")
    thread, outcome = in_background(pipe.execute)
    assert splitter.reached.wait(10)
    redis_pair.wait_synced()
    redis_pair.fail_over()
    splitter.point_at(redis_pair.primary.port)
    splitter.resume()
    thread.join(30)

    assert outcome == {"value": [1, 1]}
    assert RedisPair.client(redis_pair.primary).get("counted") == "1"


def test_a_write_and_its_wait_refused_by_a_demoted_node_are_both_sent_again(redis_pair: RedisPair) -> None:
    """Store.writes_replicated (an INCR and WAIT in one pipeline) on a connection still open to
    the demoted node: the INCR is refused, WAIT answered an error (a replica cannot WAIT). WAIT
    counts its own connection's writes: sent again with the INCR, it is answered there."""
    store = Store(service_client(redis_pair.endpoint.url), replica_acks=ReplicaAcks(1, 5000))
    assert store.writes_replicated()  # the replica counted online (looked up again after 5 s)
    redis_pair.wait_synced()
    redis_pair.swap_with_replicaof()
    redis_pair.wait_synced()

    assert store.writes_replicated()
    assert RedisPair.client(redis_pair.primary).get(store.keys.changes) == "2"


@pytest.mark.parametrize("transaction", [False, True], ids=["plain", "transaction"])
def test_a_pipeline_whose_write_is_cut_part_way_is_run_again_only_when_nothing_ran(
        redis_pair: RedisPair, splitters: list[Splitter], transaction: bool) -> None:
    """The connection reset while the client writes a large pipeline, its first command through
    and run. redis-py took the failed write for a command never sent and ran the pipeline again:
    that INCR twice. A plain pipeline's failed write is now PartlyWritten (not retried, not
    ``never_sent``). A transaction's cut before EXEC ran nothing: run again whole, as before."""
    splitter = Splitter(redis_pair.primary.port, before=b"*3\r\n$3\r\nSET\r\n$3\r\nbig\r\n")
    splitters.append(splitter)
    client = service_client(splitter.url)
    primary = RedisPair.client(redis_pair.primary)
    pipe = client.pipeline(transaction=transaction)
    pipe.incr("counted")
    pipe.set("big", "x" * BIG)
    thread, outcome = in_background(pipe.execute)
    assert splitter.reached.wait(10)
    if not transaction:
        eventually(lambda: primary.get("counted") == "1", 10, "the INCR run")
    splitter.cut()
    thread.join(60)

    if transaction:
        assert outcome == {"value": [1, True]}
    else:
        error = outcome.get("error")
        assert isinstance(error, PartlyWritten) and not never_sent(error), outcome
    assert primary.get("counted") == "1", "a write that ran before the cut ran again"
