"""The local HTTP front's log lines: JSON like the app's, and bounded where a client decides how
many there are.

gunicorn writes its error log (its arbiter's lines and its workers', and uvicorn's, which
uvicorn-worker sends through the same handlers) as plain text, ``[<time>] [<pid>] [WARNING]
<message>``, beside the app's JSON lines: a Logs Insights or ``jq`` query on the JSON fields
misses them, and ``jq`` stops at the first. ``gunicorn_front.JsonLogger`` writes them as JSON with the app's
keys (``level``, ``location``, ``message``, ``timestamp``, ``service``) and the logger's name.

A malformed request was logged once per request (uvicorn's ``Invalid HTTP request received.``):
a client sending garbage over fresh connections made about 1,700 lines a second (130 KB/s of
log; 500 requests, 500 lines of 77 bytes, in 0.3 s). ``BoundedWarning`` (the app's refusal log,
``chalicelib.refusals.RefusalLog``, of one reason) says the first at once and counts the rest,
one summary line per window: a flood costs a line per worker per ``window``, and no count is lost
(the summary is written when its window ends, and when the worker stops).
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any, Callable

from aws_lambda_powertools.logging.formatter import LambdaPowertoolsFormatter

from chalicelib.logs import SERVICE
from chalicelib.observability import json_log_line
from chalicelib.refusals import RefusalLog

Schedule = Callable[[float, Callable[[], None]], Any]
"""Call a function after that many seconds (an event loop's ``call_later``)."""


class BoundedWarning(RefusalLog):
    """A warning a client can cause at will, logged at most about once per ``window`` seconds per
    process: the first of a quiet spell at once, with its details; those that follow within the
    window are counted, and one line gives their count when it ends. The app's refusal log
    (``chalicelib.refusals.RefusalLog``) of one reason, ``message``, written to ``log`` as that
    message with its ``count`` (and the ``seconds`` a count covers); where the app's window is
    written by the next request, this one's is written by a call its event loop makes when it ends
    (a worker may serve nothing more), and by ``flush`` when the worker stops. Safe to call from
    several threads (a worker's event loops)."""

    def __init__(self, log: logging.Logger, message: str, window: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(clock, window=window, max_keys=1)
        self._log = log
        self._message = message
        self._summary_due = False
        """A call is scheduled to write the window's count (one at a time)."""

    def note(self, schedule: Schedule, **details: Any) -> None:
        """One more occurrence, with its ``details`` (logged if it is the first in a window);
        ``schedule`` runs the summary when the window ends. Nothing is counted while ``log``
        writes no warning."""
        if not self._log.isEnabledFor(logging.WARNING):
            return
        if self._count(self._refused, [(self._message, "")], logging.WARNING, self._message):
            self._log.warning(self._message, extra={"count": 1, **details}, stacklevel=2)
            return
        self._schedule_summary(schedule)

    def flush(self) -> None:
        """Log how many occurrences have not been said yet, if any, window over or not (the
        worker stops); a new window begins with it."""
        with self._lock:
            taken = self._take(self._clock(), ended=True)
        if taken is not None:
            self._write(*taken)

    def _schedule_summary(self, schedule: Schedule) -> None:
        with self._lock:
            if self._summary_due or not self._refused:
                return
            self._summary_due = True
            wait = max(self._window_end - self._clock(), 0.0)
        schedule(wait, lambda: self._window_over(schedule))

    def _window_over(self, schedule: Schedule) -> None:
        with self._lock:
            self._summary_due = False
        self.flush_if_due()
        # A note that came after the window ended and before this call wrote that window's count
        # and began the next: what it holds is written when that one ends.
        self._schedule_summary(schedule)

    def _write(self, refused: dict[tuple[str, str], int], missed: dict[tuple[str, str], int], level: int,
               seconds: float) -> None:
        self._log.warning(self._message, extra={"count": sum(refused.values()), "seconds": seconds})


class LoggerName(logging.Filter):
    """Puts the record's logger name under ``logger``, as the app's lines of a library have it
    (``observability._ServiceHandler``)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.logger = record.name
        return True


def from_caller(kwargs: dict[str, Any]) -> dict[str, Any]:
    """``kwargs`` for ``logging``, its ``stacklevel`` one frame further out: the line is located
    where our logger's method was called, not in the method."""
    return {**kwargs, "stacklevel": kwargs.get("stacklevel", 1) + 1}


def json_formatter() -> logging.Formatter:
    """The app's JSON line format (Powertools'), with the writing process's id."""
    return LambdaPowertoolsFormatter(json_serializer=json_log_line, service=SERVICE, process="%(process)d")


class _CurrentStderr(logging.StreamHandler):
    """A stream handler writing to whatever ``sys.stderr`` is when a line is written, not the one
    it was made with (as logging's last-resort handler): a handler made once for the process
    must not keep writing to a stream since replaced (a test's captured stderr, long closed)."""

    @property
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, _: Any) -> None:
        pass


def json_stderr_handler() -> logging.Handler:
    """stderr in the app's JSON lines, the logger's name under ``logger``: what ``JsonLogger``
    writes, for uvicorn's log where no gunicorn logger is set (``http_front.InProcessFront``)."""
    handler = _CurrentStderr()
    handler.setFormatter(json_formatter())
    handler.addFilter(LoggerName())
    return handler
