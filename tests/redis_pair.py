"""A real primary + replica pair of redis-server, as ElastiCache runs one, for failover tests.

Clients reach the primary through ``Endpoint``, a TCP forwarder standing for ElastiCache's
primary endpoint name: pointing it at the other node is the DNS change a failover makes, and
connections opened before keep reaching the node they were opened to, as TCP connections to the
old address do. The replica replicates through a second forwarder (``link``) so a test can cut
the replication link, as a network partition or a lagging replica would.
"""

from __future__ import annotations

import select
import signal
import socket
import threading
import time
from typing import Callable

import redis

from local.redis_server import RedisServer


class InterposedProxy:
    """A TCP proxy on a free local port to the redis-server at ``upstream_port``: each client
    connection gets one of its own to Redis, and the pair goes to ``_serve`` (a subclass's, which
    starts the threads that pass bytes on as its test needs). Set a subclass's own attributes
    before calling ``__init__``: a connection may come at once."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._sockets: list[socket.socket] = [self._listener]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return  # closed
            server = socket.create_connection(("127.0.0.1", self.upstream_port))
            self._sockets += [client, server]
            self._serve(client, server)

    def _serve(self, client: socket.socket, server: socket.socket) -> None:
        raise NotImplementedError

    def close(self) -> None:
        for sock in self._sockets:
            sock.close()


class Endpoint:
    """Forwards every connection made to ``port`` to the node it currently points at."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self._held = threading.Event()
        self._closing = threading.Event()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.1)
        self.port: int = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._open: list[socket.socket] = []
        self._passing: list[threading.Lock] = []
        """One per connection, held while it passes a chunk on (``hold`` waits for them)."""
        self.connected: dict[int, int] = {}
        """Connections passed on so far, by the port they reached (a test waits for one to be
        made before it moves the endpoint: a connecting thread may be slower than the test)."""
        self.delay = 0.0
        """Seconds each chunk waits before it is passed on, either way: a slow link (a test sets it)."""
        self._acceptor = threading.Thread(target=self._accept, daemon=True)
        self._acceptor.start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def point_at(self, port: int) -> None:
        """New connections go to ``port``; open ones stay where they are."""
        self.target_port = port

    def hold(self) -> None:
        """Stop passing bytes either way (a partition); ``release`` resumes. Returns once no
        connection passes anything more on: a chunk being passed on is through by then, and
        nothing sent after is (a pump waiting in ``select`` when the hold began passed on the
        next chunk, often the very write a test held the link for)."""
        self._held.set()
        with self._lock:
            passing = list(self._passing)
        for lock in passing:
            with lock:
                pass

    def release(self) -> None:
        self._held.clear()

    def close(self) -> None:
        self._closing.set()
        self._acceptor.join()
        self._listener.close()
        with self._lock:
            for sock in self._open:
                sock.close()

    def _accept(self) -> None:
        while not self._closing.is_set():
            try:
                client, _ = self._listener.accept()
            except socket.timeout:
                continue
            target = self.target_port  # read once: a failover may move it meanwhile
            try:
                upstream = socket.create_connection(("127.0.0.1", target), timeout=1)
            except OSError:
                client.close()
                continue
            for sock in (client, upstream):  # no Nagle delay on Redis's small replies and acks
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                self._open += [client, upstream]
                self.connected[target] = self.connected.get(target, 0) + 1
            threading.Thread(target=self._pump, args=(client, upstream), daemon=True).start()

    def _pump(self, client: socket.socket, upstream: socket.socket) -> None:
        pair = {client: upstream, upstream: client}
        passing = threading.Lock()
        with self._lock:
            self._passing.append(passing)
        try:
            while not self._closing.is_set():
                if self._held.is_set():
                    time.sleep(0.01)
                    continue
                readable, _, _ = select.select(list(pair), [], [], 0.05)
                for sock in readable:
                    with passing:
                        if self._held.is_set():
                            break
                        data = sock.recv(65536)
                        if not data:
                            return
                        if self.delay:
                            time.sleep(self.delay)
                        pair[sock].sendall(data)
        except OSError:
            return
        finally:
            with self._lock:
                self._passing.remove(passing)
            client.close()
            upstream.close()


class RedisPair:
    """A primary, its replica, the endpoint clients use and the replication link between them."""

    def __init__(self) -> None:
        self.primary = RedisServer().start()
        self.link = Endpoint(self.primary.port)
        self.replica = RedisServer(replica_of=self.link.port).start()
        self.endpoint = Endpoint(self.primary.port)
        self.wait_synced()

    @staticmethod
    def client(server: RedisServer) -> redis.Redis:
        return redis.Redis(port=server.port, decode_responses=True, socket_timeout=5)

    def wait_synced(self, timeout: float = 10.0) -> None:
        """Until the replica is connected and has every write the primary has, and the primary
        counts it online (the count a checkout's ``WAIT`` is bounded by: a primary puts a replica
        online at its first acknowledgement, which a link held right after the sync keeps back)."""
        primary, replica = self.client(self.primary), self.client(self.replica)
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                info, mine = primary.info("replication"), replica.info("replication")
                online = any(isinstance(value, dict) and value.get("state") == "online"
                             for name, value in info.items() if name.startswith("slave"))
                if (online and mine.get("master_link_status") == "up"
                        and mine.get("slave_repl_offset") == info.get("master_repl_offset")):
                    return
                time.sleep(0.02)
        finally:
            primary.close()
            replica.close()
        raise AssertionError("the replica did not catch up")

    def _relink(self, replica: redis.Redis, primary_port: int | None = None) -> None:
        """Make ``replica`` (a client of the node about to be the replica) replicate from the new
        primary (``primary_port``; unless given ``self.replica``, the new primary before the roles
        swap) through a new ``link``, so that holding the link after a swap lags the replica as it
        did before (the demoted node replicating straight from the new primary, ``link.hold`` held
        nothing: no lag, and a test of lost writes could not fail). The old link is closed."""
        old_link, self.link = self.link, Endpoint(primary_port or self.replica.port)
        replica.execute_command("REPLICAOF", "127.0.0.1", self.link.port)
        old_link.close()

    def kill_primary_and_promote(self) -> None:
        """The primary crashes (SIGKILL); the replica is promoted and the endpoint points at it."""
        self.primary.kill()
        self.link.close()
        promoted = self.client(self.replica)
        promoted.execute_command("REPLICAOF", "NO", "ONE")
        promoted.close()
        self.endpoint.point_at(self.replica.port)
        self.primary, self.replica = self.replica, self.primary

    def fail_over(self, timeout: float = 10.0) -> None:
        """A coordinated switch (Redis FAILOVER, as an ElastiCache test failover): the replica
        becomes primary, the old primary its replica, and the endpoint moves to the new one."""
        old, new = self.client(self.primary), self.client(self.replica)
        try:
            old.execute_command("FAILOVER", "TO", "127.0.0.1", self.replica.port, "TIMEOUT", 5000)
            deadline = time.monotonic() + timeout
            while new.info("replication").get("role") != "master" or old.info("replication").get("role") != "slave":
                if time.monotonic() > deadline:
                    raise AssertionError("FAILOVER did not complete")
                time.sleep(0.01)
            self._relink(old)  # FAILOVER made it a replica straight of the new primary
        finally:
            old.close()
            new.close()
        self.endpoint.point_at(self.replica.port)
        self.primary, self.replica = self.replica, self.primary

    def stop_primary_and_promote(self, pause: float, demote_after: float | None = 1.0,
                                 while_stopped: Callable[[], None] | None = None) -> None:
        """The primary stops answering (SIGSTOP) for ``pause`` seconds, meanwhile the replica is
        promoted and the endpoint moved, as a failover on a hung primary; then the old primary
        runs again (SIGCONT), still a primary to the connections opened to it, until it is made
        the new one's replica ``demote_after`` seconds later. With ``demote_after`` None it is
        left running, a primary alone (returns once it counts its replica gone), until the test
        calls ``demote_left_behind``. ``while_stopped``: called once the replica is promoted,
        before the old primary runs again (which waits for it)."""
        stopped = self.primary.process
        assert stopped is not None
        stopped.send_signal(signal.SIGSTOP)
        try:
            time.sleep(pause / 2)
            promoted = self.client(self.replica)
            promoted.execute_command("REPLICAOF", "NO", "ONE")
            promoted.close()
            self.endpoint.point_at(self.replica.port)
            time.sleep(pause / 2)
            if while_stopped is not None:
                while_stopped()
        finally:
            stopped.send_signal(signal.SIGCONT)
        if demote_after is None:
            self.primary, self.replica = self.replica, self.primary
            self.wait_alone(self.replica)
            return
        time.sleep(demote_after)
        demoted = self.client(self.primary)
        try:
            self._relink(demoted)
        finally:
            demoted.close()
        self.primary, self.replica = self.replica, self.primary

    def wait_alone(self, server: RedisServer, timeout: float = 10.0) -> None:
        """Until ``server``, a primary, counts no replica (a link closed, a replica promoted)."""
        primary = self.client(server)
        deadline = time.monotonic() + timeout
        try:
            while primary.info("replication").get("connected_slaves") != 0:
                if time.monotonic() > deadline:
                    raise AssertionError("the primary still counts its replica")
                time.sleep(0.02)
        finally:
            primary.close()

    def demote_left_behind(self) -> None:
        """The old primary left running by ``stop_primary_and_promote(demote_after=None)``
        (``self.replica`` by then) made the new primary's replica, as ElastiCache does at last:
        what it took alone is gone."""
        demoted = self.client(self.replica)
        try:
            self._relink(demoted, self.primary.port)
        finally:
            demoted.close()

    def swap_with_replicaof(self, move_endpoint: bool = True) -> None:
        """Roles swapped by hand (REPLICAOF NO ONE on the replica, REPLICAOF on the primary), the
        endpoint moved: connections opened before still reach the demoted node, now read-only.
        Without ``move_endpoint`` the endpoint stays on the demoted node (its name not yet
        updated): new connections reach it too."""
        old, new = self.client(self.primary), self.client(self.replica)
        try:
            new.execute_command("REPLICAOF", "NO", "ONE")
            self._relink(old)
        finally:
            old.close()
            new.close()
        if move_endpoint:
            self.endpoint.point_at(self.replica.port)
        self.primary, self.replica = self.replica, self.primary

    def stop(self) -> None:
        self.endpoint.close()
        self.link.close()
        self.primary.stop()
        self.replica.stop()
