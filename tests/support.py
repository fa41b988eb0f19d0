"""Helpers every test folder may use (fixtures shared by several folders are in tests/conftest.py).

    free_port()                      a loopback port nothing listens on
    free_ports(count)                that many distinct such ports
    unanswered_port()                a loopback port whose connects are never answered (a SYN dropped)
    port_in_use(port)                whether another socket holds a loopback port
    taken_by_another_process(port)   whether another process could bind and listen on it now
    listeners_carrying(port, mark)   which processes started with ``mark`` listen on a port
    eventually(check, timeout, what) poll a condition another process makes true on the wall clock
    emf_documents(stdout)            the CloudWatch EMF documents among printed lines
    json_lines(text)                 the structured log records among printed lines
    doc_prose(name)                  a doc's text as a reader sees it (line breaks as spaces)
    RedisRoundTrips()                count what this process sends to Redis, a round trip each
    refuse_task_reads(mp, provider, refusal)  the provider fails to read the tasks ``refusal`` names
    RecordingQueue()                 the reconcile queue, recording what is sent to it
    Context(), ClockedContext(clock, timeout)  a reconcile Lambda's context (its time left given, or on a fake clock)
    sqs_event(*bodies), TICK_EVENT   the events the reconcile and tick functions receive
"""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, TypeVar

import pytest
import redis.connection

from chalicelib.clock import FakeClock
from chalicelib.config import RedisConfig
from chalicelib.manager.pool_queue import PoolMessage
from chalicelib.providers.base import UNREACHABLE, Provider, ProviderError, TaskStatus
from chalicelib.store import connect
from chalicelib.store.store import RECOUNT
from local.redis_server import RedisServer, free_port

__all__ = ["RedisRoundTrips", "clone_failures_by_reason", "counts_by_reason", "doc_prose", "emf_documents", "emitted",
           "eventually", "free_port", "free_ports", "listeners_carrying", "port_in_use", "json_lines",
           "refuse_task_reads", "taken_by_another_process", "unanswered_port"]

T = TypeVar("T")
REPO_ROOT = Path(__file__).resolve().parents[1]


def port_in_use(port: int) -> bool:
    """Whether some socket holds TCP ``port`` on loopback (it cannot be bound): after a server that
    exited at start, whether another process took its port after it was chosen."""
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError as error:
            return error.errno == errno.EADDRINUSE
    return False


TAKE_PORT = """
import socket, sys
taker = socket.socket()
taker.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, int(sys.argv[2]))  # as servers (redis, gunicorn) bind
taker.bind(("127.0.0.1", int(sys.argv[1])))
taker.listen()
"""
"""A program run as ``python -c TAKE_PORT <port> <1|0: SO_REUSEADDR>``: binds the port and listens
(exit status 0), or fails (1)."""


def taken_by_another_process(port: int) -> bool:
    """Whether another process binds ``port`` (as a plain server would, without SO_REUSEADDR) and
    listens; it lets go at once. A port a server is to start on again must not be."""
    taker = subprocess.run([sys.executable, "-c", TAKE_PORT, str(port), "0"], capture_output=True, text=True)
    return taker.returncode == 0


def free_ports(count: int) -> list[int]:
    """``count`` distinct loopback ports nothing listens on right now (a server's two ports).
    free_port() called twice may return the same port: the kernel picks each at random, and the
    first probe is closed before the second binds; these probes stay bound until all are chosen."""
    probes = [socket.socket() for _ in range(count)]
    try:
        for probe in probes:
            probe.bind(("127.0.0.1", 0))
        return [probe.getsockname()[1] for probe in probes]
    finally:
        for probe in probes:
            probe.close()


@contextmanager
def unanswered_port(address: str = "127.0.0.1", port: int = 0) -> Iterator[int]:
    """A loopback port whose connects time out: a listener whose accept queue is full (Linux
    drops a SYN then, and the client sends it again until its timeout), as a host that never
    answers. A port nothing listens on is refused at once instead; one listening but not
    accepting answers the SYN (the kernel queues the connection). ``address`` and ``port``: where
    (another loopback address, a port another one uses there); a free port when 0."""
    listener = socket.create_server((address, port), backlog=0)
    port = listener.getsockname()[1]
    queued: list[socket.socket] = []
    try:
        while len(queued) < 16:
            filler = socket.socket()
            filler.settimeout(0.2)
            try:
                filler.connect((address, port))
            except socket.timeout:
                filler.close()
                break
            queued.append(filler)
        else:
            raise AssertionError("the listener's accept queue never filled")
        yield port
    finally:
        for filler in queued:
            filler.close()
        listener.close()


def connects_recorded(patch: pytest.MonkeyPatch) -> list[str]:
    """The addresses (host parts) the process connects to from now on, in order, refused or not:
    each socket's ``connect`` (ldap3 calls it once an address). What a test of a client's
    timeouts and retries asserts instead of the time it took, which a loaded machine stretches."""
    tried: list[str] = []
    connect = socket.socket.connect

    def recorded(self: socket.socket, address: Any) -> None:
        tried.append(address[0])
        connect(self, address)

    patch.setattr(socket.socket, "connect", recorded)
    return tried


def _listening_sockets(port: int, udp: bool = False) -> set[str]:
    """The listening TCP sockets on ``port`` (any address, IPv4 or IPv6), and with ``udp`` the
    UDP sockets bound to it, as a process's descriptors link to them (``socket:[inode]``), read
    from /proc (Linux)."""
    sockets = set()
    tables = ("tcp", "tcp6") + (("udp", "udp6") if udp else ())
    for table in tables:
        try:
            rows = Path("/proc/net", table).read_text().splitlines()[1:]
        except OSError:  # no IPv6
            continue
        for row in rows:
            fields = row.split()
            if (fields[3] == "0A" or table.startswith("udp")) \
                    and int(fields[1].rpartition(":")[2], 16) == port:  # 0A: LISTEN
                sockets.add(f"socket:[{fields[9]}]")
    return sockets


def _holds_any(pid: int | str, sockets: set[str]) -> bool:
    """Whether process ``pid`` has a descriptor on one of ``sockets`` (False once it exited)."""
    try:
        return any(os.readlink(fd.path) in sockets for fd in os.scandir(f"/proc/{pid}/fd"))
    except OSError:  # exited meanwhile, or another user's
        return False


def listening_pids(port: int, udp: bool = False) -> set[int]:
    """The processes (those this user may inspect) holding a listening TCP socket on ``port``, on
    any address, IPv4 or IPv6 (with ``udp``, or a UDP socket bound to it): who serves the port,
    read from /proc (Linux). Servers that bind with SO_REUSEPORT (named, gunicorn) share a port
    with any other such process of the same user, each getting a share of the connections."""
    sockets = _listening_sockets(port, udp)
    if not sockets:
        return set()
    return {int(process.name) for process in Path("/proc").glob("[0-9]*") if _holds_any(process.name, sockets)}


def listeners_carrying(port: int, mark: str) -> dict[int, str]:
    """The processes listening on ``port`` whose environment or command line, as they were
    started, or working directory contains ``mark`` (a test's tmp_path, which its stack's
    processes all carry: VMPOOL_STATE_DIR in their environment; redis-server, which overwrites
    both with its title, works in its data directory under the state directory), by pid, with
    their command lines. Whether *our* server still serves a port, where whether the port refuses
    connections is not: once our server died, any process of the machine may bind the freed
    port (free_port() hands the same ports to every test and helper), and a test saying
    "redis-server still serves" then failed once in a few hundred runs."""
    found = {}
    for pid in listening_pids(port):
        try:
            started = (Path(f"/proc/{pid}/environ").read_bytes(), Path(f"/proc/{pid}/cmdline").read_bytes(),
                       os.readlink(f"/proc/{pid}/cwd").encode())
        except OSError:  # exited meanwhile
            continue
        if any(mark.encode() in what for what in started):
            found[pid] = started[1].rstrip(b"\0").replace(b"\0", b" ").decode(errors="replace")
    return found


def eventually(check: Callable[[], T], timeout: float, what: str, interval: float = 0.05,
               ignoring: tuple[type[BaseException], ...] = ()) -> T:
    """Call ``check`` until it returns something truthy and return that; fail naming ``what``
    after ``timeout`` seconds. Only for conditions another process makes true on its own clock
    (a server starting, vcsim's guests booting, a stack answering again): anything the test's
    FakeClock drives needs no waiting. Exceptions of the ``ignoring`` types count as not yet."""
    deadline = time.monotonic() + timeout
    while True:
        value: T | None
        try:
            value = check()
        except ignoring:
            value = None  # not yet
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


def stop_process(pid: int, timeout: float = 5) -> None:
    """SIGSTOP ``pid`` and return once every thread of it is stopped: the signal takes effect
    when each thread next runs, which on a loaded machine may be after the caller's next step (a
    server "paused" that still answers its first requests)."""
    os.kill(pid, signal.SIGSTOP)
    deadline = time.monotonic() + timeout

    def stopped() -> bool:
        for stat in Path(f"/proc/{pid}/task").glob("*/stat"):
            try:
                if stat.read_text().rpartition(")")[2].split()[0] not in ("T", "t"):
                    return False
            except OSError:  # the thread ended meanwhile
                continue
        return True

    while not stopped() and time.monotonic() < deadline:
        time.sleep(0.001)


def json_lines(text: str) -> list[dict[str, Any]]:
    """The structured log records among the lines of ``text`` (Powertools JSON lines)."""
    lines = []
    for line in text.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and "level" in record:
            lines.append(record)
    return lines




def doc_prose(name: str) -> str:
    """The text of a doc of the repository (``README.md``, ``docs/deploy.md``) with its line
    breaks and indentation as single spaces, as a reader sees it: a sentence is found wherever
    the doc's lines break."""
    return re.sub(r"\s+", " ", (REPO_ROOT / name).read_text(encoding="utf-8"))


def emf_documents(stdout: str) -> list[dict[str, Any]]:
    """The EMF documents among the JSON lines on stdout (log lines are JSON too)."""
    documents = []
    for line in stdout.splitlines():
        if line.startswith("{") and '"_aws"' in line:
            documents.append(json.loads(line))
    return documents


def emitted(documents: list[dict[str, Any]]) -> dict[tuple[str, tuple[str, ...]], list[float]]:
    """(metric name, sorted dimension names) -> every value published."""
    # Imported here, not at the top: conftest.py imports this module, and chalicelib.observability
    # imported before app.py under another sys.stdout makes Chalice reset the "vmpool" logger
    # (same name as the app) to ERROR, silencing every INFO line of the tests after.
    from chalicelib.observability import NAMESPACE

    found: dict[tuple[str, tuple[str, ...]], list[float]] = {}
    for document in documents:
        (directive,) = document["_aws"]["CloudWatchMetrics"]
        assert directive["Namespace"] == NAMESPACE
        (dimensions,) = directive["Dimensions"]
        assert all(isinstance(document[d], str) for d in dimensions)
        for metric in directive["Metrics"]:
            values = document[metric["Name"]]
            found.setdefault((metric["Name"], tuple(sorted(dimensions))), []).extend(
                values if isinstance(values, list) else [values])
    return found


def clone_failures_by_reason(documents: list[dict[str, Any]]) -> dict[str, float]:
    """The CloneFailures counts published with the ``reason`` dimension, by reason."""
    return counts_by_reason(documents, "CloneFailures")


def counts_by_reason(documents: list[dict[str, Any]], metric: str) -> dict[str, float]:
    """The counts of ``metric`` published with the ``reason`` dimension, by reason."""
    counts: dict[str, float] = {}
    for document in documents:
        if "reason" in document and metric in document:
            values = document[metric]
            counts[document["reason"]] = counts.get(document["reason"], 0) + sum(
                values if isinstance(values, list) else [values])
    return counts


class RedisRoundTrips:
    """Counts what this process writes to Redis connections while in the ``with`` block: one
    per command, pipeline or MULTI block (each is written at once and answered at once)."""

    def __init__(self) -> None:
        self.count = 0

    def __enter__(self) -> "RedisRoundTrips":
        self._original = redis.connection.AbstractConnection.send_packed_command
        original = self._original

        def counting(connection: object, command: object, check_health: bool = True) -> None:
            self.count += 1
            original(connection, command, check_health)  # type: ignore[arg-type]

        redis.connection.AbstractConnection.send_packed_command = counting  # type: ignore[method-assign]
        return self

    def __exit__(self, *exc: object) -> None:
        redis.connection.AbstractConnection.send_packed_command = self._original  # type: ignore[method-assign]


def redis_commands(client: redis.Redis) -> dict[str, int]:
    """Every command the Redis server ran since its last ``CONFIG RESETSTAT`` (those of Lua
    scripts included, the RESETSTAT itself not), by name: exact, whatever the machine's load."""
    stats = client.info("commandstats")
    return {name.removeprefix("cmdstat_"): entry["calls"] for name, entry in stats.items()
            if name != "cmdstat_config|resetstat"}


@contextmanager
def checkout_answers_lost(store: Any) -> Iterator[None]:
    """Inside: a checkout script runs (its VM is taken) but its answer never reaches the API, as
    when the socket times out; the API answers 503 and the VM waits unconfirmed."""
    run_checkout = store.scripts.checkout

    def answer_lost(**kwargs: Any) -> Any:
        answer = run_checkout(**kwargs)
        if json.loads(answer).get("quota") == RECOUNT:
            return answer  # nothing taken: the store builds the service's running set and runs it again
        raise redis.exceptions.TimeoutError("Timeout reading from socket")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(store.scripts, "checkout", answer_lost)
        yield


def production_client(config: RedisConfig, port: int, socket_timeout: float = 10.0) -> redis.Redis:
    """The client the service builds (``connect``: its retry, which never sends again a command
    whose reply was lost; its failover handling) for the local redis-server on ``port``. For
    tests that inject faults: redis-py's plain client sends a command again after a lost reply
    (10 tries), so a test run on it takes a path production never does. The long default socket
    timeout: a loaded test machine is no outage."""
    return connect(dataclasses.replace(config, server="127.0.0.1", port=port, tls=False, unix_socket=None,
                                       socket_timeout=socket_timeout))


def refuse_task_reads(monkeypatch: pytest.MonkeyPatch, provider: Provider,
                      refusal: Callable[[str], ProviderError | None]) -> None:
    """The provider fails to read each task ``refusal`` gives an error for, read alone
    (``task_status`` raises it) or with others (``task_statuses``: that task UNKNOWN with the
    error's message and kind, the others read as ever; an error of an UNREACHABLE kind raises,
    as a provider not reached fails the whole call)."""
    read_one, read_many = provider.task_status, provider.task_statuses

    def task_status(task_ref: str) -> TaskStatus:
        error = refusal(task_ref)
        if error is not None:
            raise error
        return read_one(task_ref)

    def task_statuses(task_refs: Any) -> dict[str, TaskStatus]:
        refs = list(dict.fromkeys(task_refs))
        refused = {ref: error for ref in refs if (error := refusal(ref)) is not None}
        unreached = next((error for error in refused.values() if error.kind in UNREACHABLE), None)
        if unreached is not None:
            raise unreached
        read = read_many([ref for ref in refs if ref not in refused]) if len(refused) < len(refs) else {}
        return {ref: TaskStatus.unread(refused[ref]) if ref in refused else read[ref] for ref in refs}

    monkeypatch.setattr(provider, "task_status", task_status)
    monkeypatch.setattr(provider, "task_statuses", task_statuses)


@contextmanager
def pausable_redis_server(data_dir: Path | None = None) -> Iterator[RedisServer]:
    """A redis-server of a test's own, which the test may stop (SIGSTOP) and continue: continued
    before it is stopped for good, so a test ending while it is paused leaves no frozen server."""
    server = RedisServer(data_dir=data_dir).start()
    try:
        yield server
    finally:
        if server.process is not None:
            server.process.send_signal(signal.SIGCONT)
        server.stop()


def pass_bytes_on(source: socket.socket, target: socket.socket, delay: float = 0.0) -> None:
    """Send on to ``target`` what ``source`` sends (each chunk ``delay`` s late) until either end
    closes, then shut both: one direction of a relay in front of a real server."""
    try:
        while data := source.recv(65536):
            if delay:
                time.sleep(delay)
            target.sendall(data)
    except OSError:
        pass
    finally:
        for end in (source, target):
            try:
                end.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


@contextmanager
def relay(listener: socket.socket, upstream: int, answer_delay: float = 0.0) -> Iterator[int]:
    """Pass every connection made to ``listener`` on to 127.0.0.1:``upstream`` (each of its answers
    ``answer_delay`` s late) while in the block, which is given the listener's port; after it
    nothing listens there (a connection is refused, as at a server's old address)."""
    sockets = [listener]

    def accept() -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            server = socket.create_connection(("127.0.0.1", upstream))
            sockets.extend((client, server))
            threading.Thread(target=pass_bytes_on, args=(client, server), daemon=True).start()
            threading.Thread(target=pass_bytes_on, args=(server, client, answer_delay), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    try:
        yield listener.getsockname()[1]
    finally:
        for sock in sockets:
            try:
                # A listener closed while a thread waits in accept() still listens on Linux.
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()


class RecordingQueue:
    """The reconcile queue as a pass's caller sees it: what was sent, with its delay."""

    def __init__(self) -> None:
        self.sent: list[tuple[PoolMessage, float]] = []

    def send(self, messages: list[tuple[PoolMessage, float]], budget_seconds: float | None = None) -> None:
        self.sent.extend(messages)


class Context:
    """A Lambda context (the reconcile function's) whose remaining time is given."""

    function_name = "vmpool-dev-reconcile"
    memory_limit_in_mb = 512
    aws_request_id = "test"
    invoked_function_arn = "arn:aws:lambda:us-east-1:123456789012:function:vmpool-dev-reconcile"

    def __init__(self, remaining_ms: int = 60_000) -> None:
        self.remaining_ms = remaining_ms

    def get_remaining_time_in_millis(self) -> int:
        return self.remaining_ms


class ClockedContext(Context):
    """A Lambda context whose time runs out on a fake clock, ``timeout`` seconds after it starts."""

    def __init__(self, clock: FakeClock, timeout: float) -> None:
        super().__init__()
        self.clock, self.ends = clock, clock.monotonic() + timeout

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self.ends - self.clock.monotonic()) * 1000))


def sqs_event(*bodies: str) -> dict[str, Any]:
    """An SQS event of the reconcile queue delivering ``bodies``, one record each."""
    return {"Records": [
        {"messageId": f"m{n}", "receiptHandle": "r", "body": body,
         "attributes": {"SentTimestamp": str(int(time.time() * 1000))},
         "eventSource": "aws:sqs", "eventSourceARN": "arn:aws:sqs:us-east-1:123456789012:vmpool-dev-reconcile"}
        for n, body in enumerate(bodies)
    ]}


TICK_EVENT = {"version": "0", "id": "e", "detail-type": "Scheduled Event", "source": "aws.events", "account": "1",
              "time": "2026-01-01T00:00:00Z", "region": "us-east-1", "resources": [], "detail": {}}
