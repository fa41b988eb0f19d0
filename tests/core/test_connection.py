"""The Redis client every process builds (store.connect): it retries a command once when the
command surely did not run, never when its reply was lost after it was sent.

A scripted server stands for Redis here, because the faults are in the wire: it answers the
client's handshake, then does what the test says with the command under test (SET)."""

from __future__ import annotations

import select
import socket
import threading
from typing import Any, Iterator

import pytest
import redis

from chalicelib.config import parse
from chalicelib.store import connect
from chalicelib.store.connection import NeverSentTimeoutError, never_sent
from chalicelib.store.scripts import registered
from tests.support import unanswered_port


def _read_command(stream: socket.SocketIO) -> list[bytes] | None:
    """One RESP array of bulk strings, or None at end of stream."""
    header = stream.readline()
    if not header:
        return None
    parts = []
    for _ in range(int(header[1:])):
        length = int(stream.readline()[1:])
        parts.append(stream.read(length + 2)[:-2])
    return parts


class ScriptedRedis:
    """Answers HELLO, and +OK to everything else but SET (an EVALSHA counts as a SET); ``on_set``
    says what to do with each SET it receives:
    "answer", "drop" (close the connection without answering: the reply is lost) or "ignore"
    (never answer: the reply times out). The first ``refuse_first`` connections are closed as
    soon as they are accepted (nothing was sent). Once ``ignore_pings`` is set, PING is never answered."""

    def __init__(self, on_set: list[str], refuse_first: int = 0) -> None:
        self.on_set = on_set
        self.refuse_first = refuse_first
        self.ignore_pings = False
        self.sets_received = 0
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                connection, _ = self._listener.accept()
            except OSError:
                return
            if self.refuse_first:
                self.refuse_first -= 1
                connection.close()
                continue
            threading.Thread(target=self._talk, args=(connection,), daemon=True).start()

    def _talk(self, connection: socket.socket) -> None:
        stream = connection.makefile("rb")
        try:
            while (command := _read_command(stream)) is not None:
                if command[0].upper() in (b"SET", b"EVALSHA"):  # a write, by SET or a script
                    self.sets_received += 1
                    action = self.on_set.pop(0) if self.on_set else "answer"
                    if action == "drop":
                        return
                    if action == "ignore":
                        continue
                if command[0].upper() == b"PING" and self.ignore_pings:
                    continue
                if command[0].upper() == b"HELLO":  # redis-py 8 speaks RESP3
                    connection.sendall(b"%1\r\n+proto\r\n:3\r\n")
                    continue
                connection.sendall(b"+OK\r\n")
        finally:
            stream.close()
            connection.close()

    def close(self) -> None:
        self._listener.close()


def client_for(port: int) -> redis.Redis:
    return connect(parse(f":redis: {{server: 127.0.0.1, port: {port}, socket_timeout: 1}}").redis)


@pytest.fixture
def scripted() -> Iterator[list[ScriptedRedis]]:
    servers: list[ScriptedRedis] = []
    yield servers
    for server in servers:
        server.close()


def test_a_command_whose_reply_was_lost_is_not_sent_again(scripted: list[ScriptedRedis]) -> None:
    server = ScriptedRedis(on_set=["drop"])
    scripted.append(server)
    client = client_for(server.port)

    with pytest.raises(redis.ConnectionError):
        client.set("k", "v")

    assert server.sets_received == 1, "a command that may have run was sent again"
    assert client.set("k", "v")  # the next command opens a fresh connection


def test_a_connection_that_failed_before_the_command_was_sent_is_retried(scripted: list[ScriptedRedis]) -> None:
    server = ScriptedRedis(on_set=[], refuse_first=1)
    scripted.append(server)

    assert client_for(server.port).set("k", "v")
    assert server.sets_received == 1


def test_a_connect_never_answered_is_a_timeout_never_sent() -> None:
    """A SYN never answered (the connect times out): the command was never sent. Callers that
    must know whether it may have run (the dummy's clone write) ask ``never_sent``."""
    with unanswered_port() as port, pytest.raises(NeverSentTimeoutError) as raised:
        client_for(port).set("k", "v")
    assert never_sent(raised.value)


def test_a_handshake_never_answered_is_a_timeout_never_sent() -> None:
    """The connection taken (the kernel's backlog: a Redis stalled, a listener that never
    accepts), its handshake never answered: the command was not sent either."""
    with socket.create_server(("127.0.0.1", 0), backlog=8) as listener:
        with pytest.raises(NeverSentTimeoutError) as raised:
            client_for(listener.getsockname()[1]).set("k", "v")
    assert never_sent(raised.value)


def test_a_health_check_never_answered_is_a_timeout_never_sent(scripted: list[ScriptedRedis]) -> None:
    server = ScriptedRedis(on_set=[])
    scripted.append(server)
    client = client_for(server.port)
    assert client.set("k", "v")  # the connection open (its handshake's health check answered)
    server.ignore_pings = True
    idle = client.connection_pool.get_connection()
    idle.next_health_check = 0  # type: ignore[attr-defined]  # idle past HEALTH_CHECK_SECONDS
    client.connection_pool.release(idle)

    with pytest.raises(NeverSentTimeoutError) as raised:
        client.set("k", "v")

    assert never_sent(raised.value) and server.sets_received == 1


def test_a_reply_that_timed_out_after_the_send_may_have_run(scripted: list[ScriptedRedis]) -> None:
    server = ScriptedRedis(on_set=["ignore"])
    scripted.append(server)

    with pytest.raises(redis.TimeoutError) as raised:
        client_for(server.port).set("k", "v")

    assert server.sets_received == 1 and not never_sent(raised.value)
    assert not isinstance(raised.value, NeverSentTimeoutError)


def test_replica_acknowledgements_are_on_in_lambda_unless_set() -> None:
    from chalicelib.store import ReplicaAcks

    unset = parse(":redis: {server: r}").redis
    assert ReplicaAcks.from_config(unset, {}).replicas == 0  # the local stack's lone Redis
    assert ReplicaAcks.from_config(unset, {"AWS_LAMBDA_FUNCTION_NAME": "vmpool-prod-api"}).replicas == 1
    assert ReplicaAcks.from_config(unset, {"AWS_LAMBDA_FUNCTION_NAME": "f",
                                           "VMPOOL_REDIS_MIN_REPLICA_ACKS": "0"}).replicas == 0
    configured = parse(":redis: {server: r, min_replica_acks: 2, replica_ack_timeout: 100}").redis
    assert ReplicaAcks.from_config(configured, {}) == ReplicaAcks(2, 100)


def test_a_refused_password_is_reported_as_such_not_as_a_lost_reply() -> None:
    """An operator reading "redis: ReplyLost" looks for a network fault; the server answered, and
    its answer was that the password is wrong."""
    from chalicelib.store import Store, StoreUnavailable
    from local.redis_server import RedisServer

    with RedisServer() as server:
        redis.Redis(port=server.port).config_set("requirepass", "the-right-one")
        client = connect(parse(f":redis: {{server: 127.0.0.1, port: {server.port}}}").redis,
                         password="a-wrong-one")

        with pytest.raises(redis.AuthenticationError):
            client.ping()
        with pytest.raises(StoreUnavailable, match="AuthenticationError"):
            Store(client).counts(["pool"])


# The API's hot scripts (checkout, confirm, return) go through the client's lean EVALSHA
# (``run_script``), not redis-py's ``execute_command``: the same rules hold for them.

def _script_of(client: redis.Redis) -> Any:
    return registered(client, "return redis.call('SET', KEYS[1], ARGV[1])")


def test_a_script_call_whose_reply_was_lost_is_not_sent_again(scripted: list[ScriptedRedis]) -> None:
    server = ScriptedRedis(on_set=["drop"])
    scripted.append(server)
    client = client_for(server.port)
    script = _script_of(client)

    with pytest.raises(redis.ConnectionError) as raised:
        script(keys=["k"], args=["v"])

    assert server.sets_received == 1, "a checkout that may have run was sent again"
    assert not never_sent(raised.value)
    assert script(keys=["k"], args=["v"]) == "OK"  # the next call opens a fresh connection


def test_a_script_call_whose_connection_failed_before_the_send_is_retried(scripted: list[ScriptedRedis]) -> None:
    server = ScriptedRedis(on_set=[], refuse_first=1)
    scripted.append(server)

    assert _script_of(client_for(server.port))(keys=["k"], args=["v"]) == "OK"
    assert server.sets_received == 1


def test_a_script_call_that_timed_out_after_the_send_may_have_run(scripted: list[ScriptedRedis]) -> None:
    server = ScriptedRedis(on_set=["ignore"])
    scripted.append(server)
    client = client_for(server.port)

    with pytest.raises(redis.TimeoutError) as raised:
        _script_of(client)(keys=["k"], args=["v"])

    assert server.sets_received == 1 and not never_sent(raised.value)
    pool = client.connection_pool
    assert len(pool._available_connections) == 1 and not pool._in_use_connections  # type: ignore[attr-defined]


# The client's pool hands out an idle connection in fewer layers than redis-py's (``_Pool``):
# the checks it keeps are the ones a caller notices.

def test_a_pooled_connection_the_server_closed_is_reopened_before_a_script_call(
        redis_server: Any, redis_client: redis.Redis) -> None:
    """Redis closed the idle connection (a restart, ``timeout``, ``CLIENT KILL``): the next
    checkout's script runs on a new connection, once. Sent on the closed one, its reply would
    be lost (the script may have run: never retried) and the caller answered 503."""
    client = client_for(redis_server.port)
    script = _script_of(client)
    assert script(keys=["k"], args=["first"]) == "OK"
    pool = client.connection_pool
    (idle,) = pool._available_connections  # type: ignore[attr-defined]
    assert redis_client.client_kill_filter(_type="normal", skipme=True) >= 1
    select.select([idle._sock], [], [], 5)  # type: ignore[attr-defined]  # its end of the close arrived

    assert script(keys=["k"], args=["second"]) == "OK"
    assert redis_client.get("k") == "second"


def test_threads_never_share_a_pooled_connection(redis_server: Any) -> None:
    """Connections handed out at once are distinct, and one given back is handed out again
    rather than a new one opened (the pool's bound, MAX_CONNECTIONS, counts every one)."""
    client = client_for(redis_server.port)
    pool = client.connection_pool
    start = threading.Barrier(8)
    held: list[Any] = []
    lock = threading.Lock()

    def take() -> None:
        start.wait()
        connection = pool.get_connection()
        with lock:
            held.append(connection)

    threads = [threading.Thread(target=take) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len({id(connection) for connection in held}) == 8
    for connection in held:
        pool.release(connection)
    again = [pool.get_connection() for _ in range(8)]
    assert {id(connection) for connection in again} == {id(connection) for connection in held}
    assert client.set("k", "v")  # a ninth: opened beside them
    assert len(pool._available_connections) == 1  # type: ignore[attr-defined]
