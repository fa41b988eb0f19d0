"""A change whose answer was lost, settled by one look (``POST /token``, a disk, snapshot or
revert task, a ``PUT /vm/<host>`` with a disk, the administrators' ``POST /poolreset`` and
``/config/*`` changes).

When the reply of a change's script is lost after the script was sent (the connection reset as
the reply came, a timeout), the script may have run. Answered 503, the caller's retry made the
change again: a second token counted against ``max_tokens_per_user``, a second disk, a second
reset of a pool (the VMs cloned after the first destroyed too). The API now names each such
change by a random id before its script is sent (``Keys.settled``). The script, in the step that
makes the change, marks the id ``done`` (a token's script need not: the token's record, under its
random hash, shows it made; lua/pool_overrides.lua marks it with its answer, which names the
pools it changed and the value a DELETE removed), and makes nothing when the id is marked
already. When the answer is lost, one more script (lua/settle.lua) returns the mark when the
change was made, and otherwise marks the id ``void``: the script, should it still reach Redis,
makes nothing. The API answers as if the script's answer had arrived, or 503 only when the change
was not made and never will be.

If the settle's own answer is lost as well, the settle is sent again (it is idempotent: the mark
the first one left answers every later one), ``SETTLE_TRIES`` times in all. Only when every try
is lost does the caller get 503 with the change perhaps made: ``undo`` (commands written behind
the settle on its connection when its reply times out, ``written_behind_a_lost_reply``; the
settle is then not sent again) undoes what can be undone (a token nobody saw)."""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any, Callable, Sequence, TypeVar

import redis

from chalicelib.store.connection import never_sent, written_behind_a_lost_reply
from chalicelib.store.deadline import socket_timeout_ms

T = TypeVar("T")

SETTLED_TTL_SECONDS = 60
"""How long a settled mark lives at least: far longer than a script may still act after it was
sent (its deadline, store/deadline.py, is one socket timeout) and than the settle takes to come."""

SETTLE_TRIES = 3
"""How many times the settle is sent when its own reply is lost (``settled_mark``): each try is
one round trip on a fresh connection, at most one socket timeout."""

DONE = "done"
VOID = "void"


def settled_ttl(client: Any) -> int:
    """Seconds a settled mark lives with ``client``: SETTLED_TTL_SECONDS, or twice its socket
    timeout when that is longer (the mark must outlive the script's deadline)."""
    timeout_ms = socket_timeout_ms(client) or 0
    return max(SETTLED_TTL_SECONDS, 2 * (timeout_ms // 1000 + 1))


def reply_lost(error: BaseException) -> bool:
    """Whether ``error`` (from a client of ``connection.connect``) came after the command was
    sent: it may have run."""
    return isinstance(error, (redis.ConnectionError, redis.TimeoutError)) and not never_sent(error)


def answered_or_found(run: Callable[[], T], find: Callable[[], T | None]) -> T:
    """``run()``'s answer; when its reply was lost (``reply_lost``), the answer ``find()`` finds
    the change made with (the script kept it in its settled mark: ``settled_mark``), else, when
    ``find()`` returns None, the error (the change was not made, and now never will be)."""
    try:
        return run()
    except (redis.ConnectionError, redis.TimeoutError) as error:
        if not reply_lost(error):
            raise
        found = find()
        if found is None:
            raise
        return found


def answered_or_settled(run: Callable[[], T], settle: Callable[[], bool], made: T) -> T:
    """``run()``'s answer; when its reply was lost (``reply_lost``), ``made`` if ``settle()``
    finds the change made, else the error (the change was not made, and now never will be)."""
    return answered_or_found(run, lambda: made if settle() else None)


def settled_mark(client: Any, settle_script: Callable[..., Any], key: str,
                 undo: Sequence[Sequence[Any]] = (), made: str = "") -> str:
    """Run lua/settle.lua on ``key``: what the change's script marked it with when it made the
    change (``DONE``, or the answer it gave: lua/pool_overrides.lua), ``DONE`` when ``made`` (a
    key only the change writes) exists, else ``VOID`` (the change was not made, and now never will
    be). Its reply lost too, it is run again (``SETTLE_TRIES`` in all): the settle is idempotent,
    the mark the first run left (or the change's) is the answer of every later one, so the
    caller learns how the change ended rather than answering 503 for a change that was made
    (the retry of a ``POST /poolreset`` answered so reset the pool twice). Not run again once
    ``undo`` was written behind a lost reply (a timeout): Redis may run a new connection's
    settle before that connection's undo, and answer ``DONE`` for what the undo then removes;
    that error is raised, as is the last try's."""
    follow_up = written_behind_a_lost_reply(*undo) if undo else nullcontext()
    with follow_up as undoing:
        for tries_left in reversed(range(SETTLE_TRIES)):
            try:
                return str(settle_script(keys=[key, *([made] if made else [])], args=[settled_ttl(client)]))
            except (redis.ConnectionError, redis.TimeoutError):
                if not tries_left or (undoing is not None and undoing.written):
                    raise
    raise AssertionError("unreachable")  # pragma: no cover


def settled_done(client: Any, settle_script: Callable[..., Any], key: str,
                 undo: Sequence[Sequence[Any]] = (), made: str = "") -> bool:
    """``settled_mark``: True when the change was made (marked done, or ``made`` exists), False
    when it was not (and is now marked void)."""
    return settled_mark(client, settle_script, key, undo, made) == DONE
