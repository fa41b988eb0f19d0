"""The one way the service connects to Redis: the API, the reconcile and refill functions, and
the local stack all build their client here (``connect``).

What it adds to redis-py's defaults, and why:

- Short timeouts (``socket_timeout``) and a health check of connections idle for 30 s: a dead
  Redis costs a request one timeout, then a 503, never a hang.
- One retry, at once, and only when the command surely did not run: the connection could not be
  opened or the command could not be written, or Redis refused a write with ``READONLY`` (a
  replica refuses every write, so nothing ran). A command whose reply was lost after it was sent
  (a timeout, a connection closed while waiting) is never retried: the checkout script may have
  run, and running it again would take a second VM. ``LOADING`` (a restarted Redis still reading
  its data) is a refusal that arrived: never run (``never_sent``), not retried at once.
- Failover: after an ElastiCache failover the primary endpoint's name points at the new primary,
  but open connections still reach the demoted node, which answers every write with
  ``READONLY``. The first such answer marks a failover on the client: every pooled connection
  opened before it is closed before its next command (so it reconnects through the endpoint's
  name), and the refused command is retried once on a fresh connection. A primary found to have
  lost its replicas marks one too (``reconnect_pooled_connections``, from ``Store``): it may be
  an old primary resumed after its replica was promoted, which refuses nothing. While the name
  still leads to the demoted node (a connection opened after the failover was marked refused
  too), the client reconnects at most once per ``FAILOVER_RECONNECT_SECONDS``: meanwhile a
  refused command is not retried and its connection is kept (``StillReadOnly``).
- A timeout before the command was sent (a connect never answered, the handshake or the health
  check's PING unanswered) is a ``NeverSentTimeoutError``: ``never_sent`` tells a caller that
  must know whether a failed command may have run (the dummy provider's clone write).
- A follow-up written behind a lost reply (``written_behind_a_lost_reply``): when a reply times
  out, commands the caller gave are written on the same connection before it closes, so Redis
  runs them right after the command whose reply was lost, whenever it gets to it. A new
  connection could not do that while Redis is stalled: its handshake waits on the same stall.
  Behind a blocking command (``WAIT``) that is not enough: Redis drops what a blocked client
  sent once that client disconnects, so ``written_on_a_spare_connection_too`` also writes them
  on a second connection opened before the command was sent.
- Pipelines (``_Pipeline``): a write of a plain pipeline runs at most once through a failover.
  redis-py re-ran the whole pipeline on ``READONLY`` or on a write that failed part-way, so the
  commands that ran before (on the node before it was demoted; those that reached Redis before
  the write failed) ran twice. A plain pipeline now sends again only the commands the demoted node
  refused (and a ``WAIT`` behind them: it counts the writes of its own connection); a write that
  failed part-way is a ``PartlyWritten`` (may have run, never retried). A transaction is all or
  nothing: refused (a queued write, or ``EXEC`` on a node demoted after the queueing:
  ``EXECABORT ... READONLY``) or cut part-way (``EXEC`` is last), nothing of it ran, and it is
  run once more whole.
"""

from __future__ import annotations

import os
import threading
import time
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, Callable, Iterator, Sequence, TypeVar, cast

import redis
from redis.backoff import NoBackoff
from redis.client import Pipeline
from redis.connection import HiredisRespSerializer, parse_url
from redis.credentials import StreamingCredentialProvider
from redis.exceptions import ExecAbortError, ReadOnlyError
from redis.maint_notifications import MaintNotificationsConfig
from redis.retry import Retry

from chalicelib.config import RedisConfig
from chalicelib.store.breaker import MIN_PROBE_EVERY, OPEN_SECONDS, RedisBreaker

_pack_command: Callable[..., bytes] | None
try:
    from hiredis import pack_command as _pack_command
except ImportError:  # pragma: no cover - the service's requirements install hiredis
    _pack_command = None

T = TypeVar("T")

HEALTH_CHECK_SECONDS = 30

MAX_CONNECTIONS = 100
"""Connections one process's client may hold at once (redis-py's pool raises MaxConnectionsError
past it, a ``redis.ConnectionError`` that never ran: an API request gets a 503 with Retry-After, a
pass fails as when Redis is down). Set here, not left to redis-py: its default was 2**31 before
redis-py 5 and is 100 since. What a process needs: an API function serves one request at a
time (a connection, and a spare one behind a WAIT); a local worker one per event loop
(``--threads``, 4) and its scheduler's; the reconcile consumer at most
``dispatch.POOL_THREADS + dispatch.MAX_PASSES_GIVEN_UP`` (30) pass threads, two each."""


class ReplyLost(redis.ConnectionError):
    """The connection failed after the command was sent: it may have run. Never retried."""


class PartlyWritten(ReplyLost):
    """The write of several commands that are not one transaction (a plain pipeline) failed
    part-way: the first of them may have reached Redis and run. Never retried."""


class ReadOnlyExecAbort(ExecAbortError, ReadOnlyError):
    """``EXECABORT ... READONLY``: the node was demoted between the queueing of a transaction's
    writes and its ``EXEC``, which ran none of them: retried as any ``READONLY``."""


class StillReadOnly(ReadOnlyError):
    """``READONLY`` from a connection opened since the client last reconnected for one, less
    than ``FAILOVER_RECONNECT_SECONDS`` ago: the endpoint still leads to the demoted node. Not
    retried, and the connection kept (reconnecting now would reach that node again)."""


class StillReadOnlyExecAbort(ReadOnlyExecAbort, StillReadOnly):
    """``EXECABORT ... READONLY`` on such a connection."""


class NeverSentTimeoutError(redis.TimeoutError):
    """A timeout before the command was sent: opening the connection (the TCP connect, a SYN
    never answered; the handshake) or the health check's PING before the command. The command
    never ran. Not retried, as any timeout: asking again waits as long again."""


class CredentialsUnavailable(redis.ConnectionError):
    """The password to open a connection with could not be had (its secret store did not
    answer): the command never ran, but asking again at once only waits as long again."""


def never_sent(error: BaseException | None) -> bool:
    """Whether the command that raised ``error`` (from a client of ``connect``) surely never
    reached Redis, so never ran: a timeout before it was sent (``NeverSentTimeoutError``), or a
    connection error that is not a lost reply (``ReplyLost``): the connection refused or not
    opened, the password not had, the command's write failed (a command partly written is never
    run, nor a transaction: its ``EXEC`` is last; a plain pipeline's first commands may be, so its
    failed write is a ``PartlyWritten``). Any other timeout may have come after the send."""
    return isinstance(error, NeverSentTimeoutError) or (
        isinstance(error, redis.ConnectionError) and not isinstance(error, ReplyLost))


FAILOVER_RECONNECT_SECONDS = 2.0
"""The least time between two reconnections of a client's connections for ``READONLY``
answers. A connection opened after the last one that is refused too means the endpoint's name
still leads to the demoted node (DNS not yet updated): reconnecting again at once reaches the
same node. Each refused write reconnected twice (the retry, then the next command) and every
other pooled connection once: 14,600 connections a minute from one process answering 503s in a
loop, each a TLS handshake on ElastiCache. Now at most one reconnection of the pool this often
(a 503 meanwhile, from the node the connection reaches); the cost, up to this long of 503s
after the name moves."""


class FailoverEpoch:
    """Counts the failovers a client has seen (``READONLY`` answers); shared by its connections."""

    def __init__(self, monotonic: Callable[[], float] = time.monotonic) -> None:
        self._value = 0
        self._lock = threading.Lock()
        self.monotonic = monotonic
        self._began = -float("inf")
        """When (``monotonic``) the current epoch began: never for the first, so the first
        failover reconnects at once."""

    @property
    def value(self) -> int:
        return self._value

    def advance(self, seen: int, at_most_every: float = 0.0) -> bool:
        """Record a failover noticed by a connection opened in epoch ``seen`` (once per epoch),
        unless the current epoch is ``seen`` and began less than ``at_most_every`` seconds ago.
        Returns whether the connection's epoch is over (it is to reconnect: a retry on a fresh
        connection may reach another node), False when reconnecting again so soon is held."""
        with self._lock:
            if self._value != seen:
                return True
            now = self.monotonic()
            if now - self._began < at_most_every:
                return False
            self._value += 1
            self._began = now
            return True


def reconnect_pooled_connections(client: redis.Redis) -> None:
    """Have every connection ``client`` has open reconnect (through the endpoint's name) before
    its next command, as after a ``READONLY``: for a failover noticed another way (a primary
    that lost its replica may be a node the endpoint no longer names, still taking writes that
    its demotion will drop). A client built otherwise than by ``connect`` is left as it is."""
    epoch = client.connection_pool.connection_kwargs.get("failover_epoch")
    if isinstance(epoch, FailoverEpoch):
        epoch.advance(epoch.value)


class FollowUp:
    """Commands to write behind a reply that timed out (``written_behind_a_lost_reply``)."""

    def __init__(self, commands: Sequence[Sequence[Any]]) -> None:
        self.commands = commands
        self.written = False
        """Whether they were written (to the kernel's buffer of a connection open to Redis):
        Redis runs them once it gets to them, unless it dies or loses the connection first."""


_FOLLOW_UP: ContextVar[FollowUp | None] = ContextVar("vmpool_follow_up", default=None)


@contextmanager
def written_behind_a_lost_reply(*commands: Sequence[Any]) -> Iterator[FollowUp]:
    """Inside, when a reply times out (the command may have run, or may run once Redis gets to
    it), ``commands`` are written on the same connection before it closes, at most once: Redis
    runs a connection's commands in order, and those already written even after the client
    closed its end (checked on Linux, a RST included), so they run right after the command whose
    reply was lost. For an undo that must reach a Redis that stalled (SIGSTOP, a slow fork) just
    after running a command: a new connection's handshake waits on the same stall. No reply is
    read for them, and the connection closes as it would have: nothing waits longer."""
    follow_up = FollowUp(commands)
    token = _FOLLOW_UP.set(follow_up)
    try:
        yield follow_up
    finally:
        _FOLLOW_UP.reset(token)


@contextmanager
def written_on_a_spare_connection_too(client: redis.Redis, *commands: Sequence[Any]) -> Iterator[None]:
    """For commands followed by a blocking one on their connection (``WAIT`` for a replica):
    what ``written_behind_a_lost_reply`` writes behind them never runs when the block outlasts
    the client's timeout, for Redis drops what a blocked client sent once it disconnects (checked
    on Redis 7.0: a SET sent behind a blocked WAIT, the connection closed, never ran). Inside,
    when a connection error or a timeout escapes (a reply lost: what was sent may have run),
    ``commands`` are also written on a second connection of ``client``'s pool, connected before
    anything was sent (a new one's handshake would wait on a stalled Redis), which is then closed
    without reading a reply: Redis runs them whenever it reads them. They must be as right run
    before what was sent as after it: Redis may read the spare connection first. No spare is
    taken when none can be had (Redis not answering already)."""
    with spare_connection(client) as spare, written_on(spare, *commands):
        yield


@contextmanager
def spare_connection(client: redis.Redis) -> Iterator[redis.Connection | None]:
    """A connection of ``client``'s pool held aside until the block ends (None when none can be
    had), for ``written_on``. Taken before a write that is confirmed by a second one within a
    window (a checkout's, ``socket_timeout``): a process with one pooled connection (a cold
    Lambda) otherwise opened a new one for its confirmation inside that window (its handshake's
    round trips), and on a link of 300 ms round trips its first checkout was answered 503."""
    pool = client.connection_pool
    try:
        spare: redis.Connection | None = pool.get_connection()
    except redis.RedisError:
        spare = None
    try:
        yield spare
    finally:
        if spare is not None:
            pool.release(spare)


@contextmanager
def written_on(spare: redis.Connection | None, *commands: Sequence[Any]) -> Iterator[None]:
    """``written_on_a_spare_connection_too`` with the spare connection given (``spare_connection``)."""
    try:
        yield
    except (redis.ConnectionError, redis.TimeoutError):
        if spare is not None:
            try:
                spare.send_packed_command(spare.pack_commands(commands), check_health=False)
            except redis.RedisError:
                pass  # its socket failed too: the caller's own fallback is all that is left
            spare.disconnect()
        raise


class _RetryWhenNotRun(Retry):
    """One immediate retry on a connection error that happened before the command was sent, or
    on ``READONLY``; never after a reply was lost, on a timeout, when the password could not
    be had, or when Redis refused it (asking again gets the same answer)."""

    def __init__(self) -> None:
        super().__init__(NoBackoff(), 1, supported_errors=(redis.ConnectionError, ReadOnlyError))

    def call_with_retry(
        self,
        do: Callable[[], T],
        fail: Callable[..., Any],
        is_retryable: Callable[[Exception], bool] | None = None,
        with_failure_count: bool = False,
    ) -> T:
        # redis-py's loop (Retry.call_with_retry), written out: it runs around every command,
        # and its closure, super() call and backoff reset were a tenth of a script call's
        # Python. Without the backoff: this retry's is NoBackoff, which never waits.
        failures = 0
        while True:
            try:
                return do()
            except self._supported_errors as error:
                if isinstance(error, _NEVER_RETRIED) or (is_retryable is not None and not is_retryable(error)):
                    raise
                failures += 1
                if with_failure_count:
                    fail(error, failures)
                else:
                    fail(error)
                if self._retries >= 0 and failures > self._retries:
                    raise error


_NEVER_RETRIED = (ReplyLost, CredentialsUnavailable, redis.AuthenticationError, redis.exceptions.AuthorizationError,
                  StillReadOnly, redis.BusyLoadingError)
"""Errors ``_RetryWhenNotRun`` never retries (nor closes the connection for): a reply lost (the
command may have run), a password not had, refused by the server, or by a node the endpoint
still leads to (``StillReadOnly``), or still loading its data (``LOADING``: asked again at once,
it is still loading)."""


class _FailoverAware:
    """Mixed into redis-py's connection classes: tells a lost reply from a command never sent,
    and closes connections opened before a failover this client has noticed."""

    def __init__(self, *args: Any, failover_epoch: FailoverEpoch, breaker: RedisBreaker | None = None,
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._failover_epoch = failover_epoch
        self._breaker = breaker
        """Told of every timeout (``RedisBreaker``); None for its own probe's connection."""
        self._opened_in_epoch = failover_epoch.value
        self._sending = 0
        """Nesting depth of send_packed_command: opening a connection (AUTH, HELLO) and the
        health check's PING send and read inside the command's send, before the command is
        written, so their failures are retryable."""
        self._command_sent = False
        self._several = False
        """The command being sent is several packed together (a pipeline, a transaction)."""

    def connect_check_health(self, *args: Any, **kwargs: Any) -> None:
        # Every way of opening the connection (connect(), or a send on a closed one) comes here.
        if not getattr(self, "_sock", None):
            self._opened_in_epoch = self._failover_epoch.value
        try:
            with _TIMEOUTS_NEVER_SENT:
                super().connect_check_health(*args, **kwargs)  # type: ignore[misc]
        except redis.TimeoutError:
            if self._breaker is not None:
                self._breaker.timed_out()
            raise

    def check_health(self) -> None:
        # The PING of a connection idle for HEALTH_CHECK_SECONDS, sent before the command.
        with _TIMEOUTS_NEVER_SENT:
            super().check_health()  # type: ignore[misc]

    def pack_commands(self, commands: Sequence[Sequence[Any]]) -> list[bytes]:
        commands = list(commands)
        chunks = _hiredis_packed(commands, self) if _pack_command is not None else None
        if chunks is None:
            chunks = super().pack_commands(commands)  # type: ignore[misc]
        packed = _PackedCommands(chunks)
        packed.several = len(commands) > 1
        packed.may_run_in_part = len(commands) > 1 and not (
            _name(commands[0]) == "MULTI" and _name(commands[-1]) == "EXEC")
        return packed

    def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        outermost = self._sending == 0
        if outermost:
            self._command_sent = False
            self._several = getattr(command, "several", False)
            if self._opened_in_epoch != self._failover_epoch.value:
                self.disconnect()  # type: ignore[attr-defined]  # may reach the demoted node
        self._sending += 1
        try:
            if outermost:
                # Opened and checked here, before the write: what fails in them never sent anything.
                if not getattr(self, "_sock", None):
                    self.connect_check_health(check_health=False)
                if check_health:
                    self.check_health()
                check_health = False
            try:
                super().send_packed_command(command, check_health)  # type: ignore[misc]
            except redis.ConnectionError as error:
                if outermost and getattr(command, "may_run_in_part", False):
                    raise PartlyWritten(str(error)) from error
                raise
        finally:
            self._sending -= 1
        if self._sending == 0:
            self._command_sent = True

    def read_response(self, *args: Any, **kwargs: Any) -> Any:
        try:
            follow_up = _FOLLOW_UP.get()
            if follow_up is None or follow_up.written:
                return super().read_response(*args, **kwargs)  # type: ignore[misc]
            return self._read_and_follow_up(follow_up, *args, **kwargs)
        except ReadOnlyError as error:
            if self._failover_epoch.advance(self._opened_in_epoch, FAILOVER_RECONNECT_SECONDS):
                raise
            raise StillReadOnly(*error.args) from error
        except ExecAbortError as error:
            if "READONLY" not in str(error):
                raise
            if self._failover_epoch.advance(self._opened_in_epoch, FAILOVER_RECONNECT_SECONDS):
                raise ReadOnlyExecAbort(*error.args) from error
            raise StillReadOnlyExecAbort(*error.args) from error
        except (ReplyLost, redis.AuthenticationError, redis.exceptions.AuthorizationError):
            # The last two are the server's answers (a wrong password, a user without the
            # right): a reply that arrived, reported as what it says.
            raise
        except redis.BusyLoadingError as error:
            # LOADING, from a restarted Redis still reading its data: a refusal that arrived, the
            # command never run. Not so of several written at once: the load may end between
            # them, and the later ones run (a MULTI refused, the writes behind it run alone).
            if self._several and self._sending == 0 and self._command_sent:
                raise ReplyLost(str(error)) from error
            raise
        except redis.TimeoutError:
            if self._breaker is not None:
                self._breaker.timed_out()
            raise
        except redis.ConnectionError as error:
            if self._sending == 0 and self._command_sent:
                raise ReplyLost(str(error)) from error
            raise


    def _read_and_follow_up(self, follow_up: FollowUp, *args: Any, **kwargs: Any) -> Any:
        """redis-py's read inside ``written_behind_a_lost_reply``: a timeout writes the
        follow-up on this connection before it closes (redis-py closes it inside its read)."""
        disconnect = kwargs.pop("disconnect_on_error", True)
        try:
            return super().read_response(*args, disconnect_on_error=False, **kwargs)  # type: ignore[misc]
        except redis.ResponseError:
            raise  # Redis's answer (redis-py raises it after the read): the connection stays open
        except BaseException as error:
            if isinstance(error, redis.TimeoutError) and getattr(self, "_sock", None) is not None:
                try:
                    packed = self.pack_commands(follow_up.commands)
                    super().send_packed_command(packed, check_health=False)  # type: ignore[misc]
                    follow_up.written = True
                except redis.RedisError:
                    pass  # the socket failed too: the caller's own fallback is all that is left
            if disconnect:
                self.disconnect()  # type: ignore[attr-defined]
            raise


class _PackedCommands(list[bytes]):
    """What ``pack_commands`` packed, knowing whether a write of it failing part-way may have
    left some of its commands run: several commands, not one MULTI ... EXEC."""

    may_run_in_part = False
    several = False


def _name(command: Sequence[Any]) -> str:
    name = command[0]
    return (name.decode() if isinstance(name, bytes) else str(name)).upper()


class _Pipeline(Pipeline):
    """redis-py's pipeline; a plain one (not a transaction) sends again only the commands a
    demoted node refused with ``READONLY``, not the whole pipeline."""

    def execute(self, raise_on_error: bool = True) -> list[Any]:
        """As redis-py's. Plain: a node demoted before or while it ran the pipeline refused each
        write from some command on (a replica refuses a write before making it); the commands
        before ran, writes included, and reads after it ran there too. Only the refused ones are
        sent once more, on a new connection (the first ``READONLY`` marked the failover: it
        reaches the new primary), with each ``WAIT`` behind the first of them (``WAIT`` counts
        the writes of its own connection; the demoted node answered it with an error); refused
        again, the error stays. A read after a refused write answered from the demoted node,
        before that write: no pipeline of the service reads what it writes in the same pipeline."""
        if cast(bool, self.transaction) or self.explicit_transaction:  # an attribute, not Redis.transaction
            return super().execute(raise_on_error)  # all or nothing: redis-py's retry runs it whole
        stack, scripts = list(self.command_stack), set(self.scripts)
        replies = super().execute(raise_on_error=False)
        refused = [index for index, reply in enumerate(replies) if isinstance(reply, ReadOnlyError)]
        if refused and not isinstance(replies[refused[0]], StillReadOnly):  # else the same node again
            again = [index for index in range(refused[0], len(stack))
                     if index in refused or _name(stack[index][0]) == "WAIT"]
            resend = Pipeline(self.connection_pool, self.response_callbacks, False, self.shard_hint)
            resend.command_stack, resend.scripts = [stack[index] for index in again], scripts
            for index, reply in zip(again, resend.execute(raise_on_error=False), strict=True):
                replies[index] = reply
        if raise_on_error:
            self.raise_first_error(stack, replies)
        return replies


class _Pool(redis.ConnectionPool):
    """redis-py's pool, an idle connection handed out and taken back in fewer layers: the same
    lock, lists and fork check, the same test of the connection before it is handed out (a
    socket the server closed is reconnected once; one holding data too, unless maintenance
    notifications are on, which they are by default: redis-py's rule), the same
    ``should_reconnect`` on release. Left out, as ``run_script`` leaves them out: redis-py 8's
    observability recorder (its connection counts; off, never configured by the service), its
    deprecated-argument wrapper, ``connect()`` through the retry object on a connection already
    open (it returns at once there), and the release event, whose only listener
    re-authenticates with a streaming credential provider (the service's are not; such a pool
    keeps redis-py's path, as does a client-side cache). A new connection, and any call in a
    forked process before its pool was reset: redis-py's own path. About 80 K of the 138 K
    instructions of a script call (docs/performance.md, "Checkout CPU per cycle")."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        credentials = self.connection_kwargs.get("credential_provider")
        self._lean = self.cache is None and not isinstance(credentials, StreamingCredentialProvider)

    def _refuses_data(self) -> bool:
        """Whether a connection holding unread data is reconnected before it is handed out
        (redis-py's condition: not with maintenance notifications, whose pushes may wait there)."""
        return self.cache is None and not self.maint_notifications_enabled()

    def get_connection(self, command_name: Any = None, *keys: Any, **options: Any) -> Any:
        if not self._lean or self.pid != os.getpid():
            return super().get_connection()
        with self._lock:
            if not self._available_connections:
                connection = None
            else:
                connection = self._available_connections.pop()
                self._in_use_connections.add(connection)
        if connection is None:
            return super().get_connection()  # a new connection: made, counted and connected there
        try:
            if getattr(connection, "_sock", None) is None:
                connection.connect()
            try:
                if connection.can_read() and self._refuses_data():
                    raise redis.ConnectionError("Connection has data")
            except (redis.ConnectionError, redis.TimeoutError, OSError):
                connection.disconnect()
                connection.connect()
                if connection.can_read() and self._refuses_data():
                    raise redis.ConnectionError("Connection not ready") from None
        except BaseException:
            self.release(connection)
            raise
        return connection

    def release(self, connection: Any) -> None:
        if not self._lean or self.pid != os.getpid() or connection.pid != self.pid:
            super().release(connection)
            return
        with self._lock:
            try:
                self._in_use_connections.remove(connection)
            except KeyError:
                return  # not this pool's: ignored, as redis-py does
            if connection.should_reconnect():
                connection.disconnect()
            self._available_connections.append(connection)


class _Client(redis.Redis):
    """redis-py's client, its pipelines ``_Pipeline``."""

    def pipeline(self, transaction: bool = True, shard_hint: Any = None) -> Pipeline:
        return _Pipeline(self.connection_pool, self.response_callbacks, transaction, shard_hint)

    def run_script(self, sha: str, keys: Sequence[Any], args: Sequence[Any], text: str | None = None) -> Any:
        """``EVALSHA sha len(keys) *keys *args``, as ``evalsha`` runs it, in fewer Python layers
        (with ``text``, the script's own: ``EVAL text ...``, for a Redis that answered ``NOSCRIPT``):
        the pool's connection, this client's retry (``_RetryWhenNotRun``: once, at once, only
        when the command surely did not run; the connection closed before the retry) and the
        connection classes' failover handling are the same objects redis-py's
        ``execute_command`` uses. Left out: its observability recorder (off here), its
        per-command event dispatch and its command packer's generic path (``hiredis`` packs
        the command in one call). For the API's hot scripts: about half of redis-py's Python
        per command (docs/performance.md, "Ninth round")."""
        pool = self.connection_pool
        connection = pool.get_connection()
        try:
            command = _packed(connection, ("EVALSHA", sha, len(keys), *keys, *args) if text is None
                              else ("EVAL", text, len(keys), *keys, *args))
        except BaseException:
            pool.release(connection)
            raise

        def send_and_read() -> Any:
            connection.send_packed_command(command)
            return connection.read_response()

        try:
            return connection.retry.call_with_retry(send_and_read, lambda _error: connection.disconnect())
        finally:
            try:
                if connection.should_reconnect():  # a server maintenance notice (redis-py's rule)
                    connection.disconnect()
                    connection.connect()
            finally:
                pool.release(connection)


def _packed(connection: Any, command: tuple[Any, ...]) -> list[bytes]:
    """``command`` in Redis's protocol, as redis-py's ``connection`` packs it (with hiredis
    when it is installed, as the service's requirements have it)."""
    if _pack_command is None:
        return list(connection.pack_command(*command))
    try:
        return [_pack_command(command)]
    except TypeError as error:
        raise redis.DataError(error) from error


def _hiredis_packed(commands: list[Sequence[Any]], connection: Any) -> list[bytes] | None:
    """A pipeline's ``commands`` packed as redis-py's ``pack_commands`` packs them with its
    hiredis packer (``HiredisRespSerializer``: the command's name split at spaces, then
    ``hiredis.pack_command``; the bytes put in chunks of about ``_buffer_cutoff``), without that
    packer's Python pass over every argument looking for a ``bytearray`` or ``memoryview``
    (6 % of the instructions of a small pool's refill: docs/performance.md, "Twelfth round"). None when
    redis-py packs differently (another packer) or an argument is one hiredis refuses
    (``bytearray``, ``None``...): redis-py's own path then converts or refuses it, as before."""
    if not isinstance(getattr(connection, "_command_packer", None), HiredisRespSerializer):
        return None
    pack, cutoff = _pack_command, connection._buffer_cutoff
    assert pack is not None
    output: list[bytes] = []
    pieces: list[bytes] = []
    length = 0
    for command in commands:
        name = command[0]
        if isinstance(name, str):
            command = (*name.encode().split(), *command[1:])
        elif b" " in name:
            command = (*name.split(), *command[1:])
        try:
            chunk = pack(command if isinstance(command, tuple) else tuple(command))
        except TypeError:
            return None
        if length > cutoff or len(chunk) > cutoff:
            if pieces:
                output.append(b"".join(pieces))
            pieces, length = [], 0
        if len(chunk) > cutoff:
            output.append(chunk)
        else:
            pieces.append(chunk)
            length += len(chunk)
    if pieces:
        output.append(b"".join(pieces))
    return output


class _TimeoutsNeverSent:
    """Inside, before the command is sent, a timeout is a ``NeverSentTimeoutError``. A class,
    not a generator's context manager: it is entered around every command's health check."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, traceback: Any) -> None:
        if isinstance(error, redis.TimeoutError) and not isinstance(error, NeverSentTimeoutError):
            raise NeverSentTimeoutError(*error.args) from error


_TIMEOUTS_NEVER_SENT = _TimeoutsNeverSent()
"""Holds no state: one for every connection and thread."""


class _TcpConnection(_FailoverAware, redis.Connection):
    pass


class _TlsConnection(_FailoverAware, redis.SSLConnection):
    pass


class _UnixConnection(_FailoverAware, redis.UnixDomainSocketConnection):
    pass


_OURS: dict[type, type] = {
    redis.Connection: _TcpConnection,
    redis.SSLConnection: _TlsConnection,
    redis.UnixDomainSocketConnection: _UnixConnection,
}


def connect(
    config: RedisConfig,
    url: str | None = None,
    password: str | None = None,
    credential_provider: redis.CredentialProvider | None = None,
) -> redis.Redis:
    """A client for the configured Redis (or ``url``, which wins over the config's server, port,
    db, TLS and socket): short timeouts, health checks, decoded strings, the retry and failover
    handling above.

    ``credential_provider`` (instead of ``password``) is asked for the password each time a
    connection opens, so a password kept in AWS is fetched only when first needed."""
    if url:
        target: dict[str, Any] = dict(parse_url(url))
        target.setdefault("connection_class", redis.Connection)
    elif config.unix_socket:
        target = {"path": config.unix_socket, "db": config.db,
                  "connection_class": redis.UnixDomainSocketConnection}
    else:
        target = {"host": config.server, "port": config.port, "db": config.db,
                  "connection_class": redis.SSLConnection if config.tls else redis.Connection}
    target["connection_class"] = _OURS[target["connection_class"]]
    if password is not None or credential_provider is not None:
        target.pop("password", None)
        target.pop("username", None)
    options: dict[str, Any] = dict(
        password=password,
        credential_provider=credential_provider,
        decode_responses=True,
        socket_timeout=config.socket_timeout,
        socket_connect_timeout=config.socket_timeout,
        health_check_interval=HEALTH_CHECK_SECONDS,
        max_connections=MAX_CONNECTIONS,
        retry=_RetryWhenNotRun(),
        failover_epoch=FailoverEpoch(),
        # No CLIENT SETINFO (two round trips per new connection, refused by Redis before 7.2)
        # and no CLIENT MAINT_NOTIFICATIONS (one more, for Redis Enterprise's maintenance
        # pushes, which ElastiCache does not send): a new connection is its AUTH and SELECT
        # only, where a handshake counts most (a cold start, the reconnect after a failover,
        # the spare connection opened inside a checkout's confirm window). Left to redis-py,
        # SETINFO's version also read its dist-info through importlib.metadata, a module the
        # cold start skips (chalicelib/deferred_imports.py).
        driver_info=None,
        maint_notifications_config=MaintNotificationsConfig(enabled=False),
    )
    if "password" in target:
        options.pop("password")
    if target["connection_class"] is _UnixConnection:
        options.pop("socket_connect_timeout")
    breaker = options["breaker"] = RedisBreaker(probe_every=max(config.socket_timeout, MIN_PROBE_EVERY))
    pool = _Pool(**options, **target)

    def probe_connection() -> redis.Connection:
        # Its own timeouts are OPEN_SECONDS (how long it waits) and are not the breaker's.
        kwargs = {**pool.connection_kwargs, "socket_timeout": OPEN_SECONDS, "breaker": None,
                  "client_name": PROBE_CLIENT_NAME}
        if "socket_connect_timeout" in kwargs:
            kwargs["socket_connect_timeout"] = OPEN_SECONDS
        return cast(redis.Connection, pool.connection_class(**kwargs))

    breaker.probe_connection = probe_connection
    return _Client(connection_pool=pool)


PROBE_CLIENT_NAME = "vmpool-breaker-probe"
"""The breaker's probe connection's name (CLIENT LIST), set on it as it opens."""


def breaker_of(client: Any) -> RedisBreaker | None:
    """The breaker of a client ``connect`` made (None for another: a test's plain client)."""
    breaker = getattr(getattr(client, "connection_pool", None), "connection_kwargs", {}).get("breaker")
    return breaker if isinstance(breaker, RedisBreaker) else None
