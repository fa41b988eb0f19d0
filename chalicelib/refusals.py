"""Refusals any caller can cause at will, logged and counted once per window per process, not
once per request.

A checkout of an empty pool (503) wrote an INFO line and two EMF documents (``CheckoutMisses``
service-wide and per pool), about 600 bytes of CloudWatch Logs, billed per byte: a caller in a
loop (no token needed where checkouts need none) wrote 109,000 lines (41 MB) in minutes, and
drowned the lines an operator reads. Now the first refusal of a quiet spell is written at once,
with its details and the request's id (``correlation_id``); the ones that follow within
``WINDOW_SECONDS`` are only counted, and one ``requests refused`` line gives their counts by
reason and name when the window ends, with one EMF document per pool or alias missed carrying
the window's sum. A flood costs a few lines a minute per process, whatever its size, and no
count is lost while the process serves: the window's counts are written by the next request
that finds it over (any request, ``flush_if_due``). A process that serves nothing more after a
flood (a Lambda environment reclaimed while idle) loses at most one window's counts.

The names counted are the config's pools and aliases (an unknown name is a 404 before any
miss) and reasons named in the code; past ``MAX_KEYS`` distinct ones in a window, the rest are
counted under ``OTHER``: a line never grows with what callers send.

``RefusalLog`` is the one window of bounded refusal lines: the local HTTP front's
``local.front_logs.BoundedWarning`` (a request it cannot parse) is one, written to the front's
logger and summed when its event loop says the window is over.
"""

from __future__ import annotations

import logging
import math
import threading
from typing import Any, Callable, Iterable

from chalicelib import observability as metric
from chalicelib.observability import SERVICE, emit, logger, metrics_disabled

WINDOW_SECONDS = 60.0
"""How long refusals after the first are only counted (CloudWatch's usual metric period)."""
MAX_KEYS = 200
"""Distinct (reason, name) and (dimension, name) counts a window keeps; the rest go under ``OTHER``."""
OTHER = "(other)"

NO_READY_VMS = "checkout refused: not enough ready VMs"
"""The reason of a 503 of a checkout whose pools were short; the names are those that were short."""

STORE_UNAVAILABLE = "state store unavailable"
"""The reason of a 503 for a Redis error that was not a timeout (refused connection, READONLY,
an error reply): every request fails so at once while it lasts, and the breaker, opened only by
timeouts, does not hold them back. A timeout's line is still said for each one (the breaker
then answers the requests after it without trying Redis, and writes nothing)."""

SERVICE_WIDE = ("", "")
"""The ``CheckoutMisses`` count without a pool or alias dimension (one per missed request)."""


class RefusalLog:
    """Counts of refusals (for the log) and checkout misses (for ``CheckoutMisses``) in this
    process's current window, said at once for the first of a quiet spell and summed when the
    window ends. Safe to use from several threads (the local front serves several requests of
    one process at once)."""

    def __init__(self, clock: Callable[[], float], window: float = WINDOW_SECONDS,
                 max_keys: int = MAX_KEYS) -> None:
        self._clock = clock
        self._window = window
        self._max_keys = max_keys
        self._lock = threading.Lock()
        self._window_end = -math.inf
        self._window_start = -math.inf
        self._refused: dict[tuple[str, str], int] = {}
        self._missed: dict[tuple[str, str], int] = {}
        self._level = logging.INFO
        self._said: set[str] = set()
        """The reasons (and "" for the misses) said at once since the last quiet spell."""

    def refused(self, reason: str, names: Iterable[str] = ("",), level: int = logging.INFO,
                **details: Any) -> None:
        """A request refused for ``reason`` (a fixed text, the message of the line said at once),
        naming ``names`` (pools or aliases; never what a caller typed unchecked). ``details`` go
        only on the line of the first refusal of a quiet spell. Nothing is counted while the
        service logs nothing at ``level``: neither line would be written."""
        if not logging.getLogger(SERVICE).isEnabledFor(level):
            return
        keys = [(reason, name) for name in names] or [(reason, "")]
        if self._count(self._refused, keys, level, reason):
            _say(level)(reason, extra={"count": 1, "names": [name for _, name in keys if name], **details},
                       stacklevel=3)

    def missed(self, pools: Iterable[str], aliases: Iterable[str]) -> None:
        """A checkout that found too few ready VMs for ``pools`` and ``aliases`` (its 503, or
        the 202 of its on-demand fallback): ``CheckoutMisses``, once service-wide and once per
        pool or alias. Nothing is counted while metrics are off (the local stack): none would be
        published."""
        if metrics_disabled():
            return
        keys = [SERVICE_WIDE, *(("pool", pool) for pool in pools), *(("alias", alias) for alias in aliases)]
        if self._count(self._missed, keys, logging.INFO, ""):
            _emit_misses({key: 1 for key in keys})

    def flush_if_due(self) -> None:
        """Write the counts of a window that is over (cheap when none is)."""
        if self._clock() < self._window_end or not (self._refused or self._missed):
            return
        with self._lock:
            taken = self._take(self._clock())
        if taken is not None:
            self._write(*taken)

    def _count(self, counts: dict[tuple[str, str], int], keys: list[tuple[str, str]], level: int,
               kind: str) -> bool:
        """Count ``keys`` in this window; True when they are the first of their ``kind`` (a
        reason, or the misses) since a quiet spell: to be said at once, and not counted."""
        now = self._clock()
        with self._lock:
            taken = self._take(now)
            if now >= self._window_end:  # a quiet spell ends: a window begins
                self._window_start, self._window_end = now, now + self._window
                self._said = set()
            say = kind not in self._said
            if say:
                self._said.add(kind)
            else:
                for key in keys:
                    if key not in counts and len(counts) >= self._max_keys:
                        key = (key[0], OTHER)
                    counts[key] = counts.get(key, 0) + 1
                self._level = max(self._level, level)
        if taken is not None:
            self._write(*taken)
        return say

    def _take(self, now: float, *, ended: bool = False
              ) -> tuple[dict[tuple[str, str], int], dict[tuple[str, str], int], int, float] | None:
        """The counts of the window, if it is over (or ``ended``: the process stops) and holds
        any, emptied; a new window begins now (a steady flood gives one summary a window). Under
        the lock."""
        if (now < self._window_end and not ended) or not (self._refused or self._missed):
            return None
        taken = (self._refused, self._missed, self._level, round(now - self._window_start, 1))
        self._refused, self._missed, self._level = {}, {}, logging.INFO
        self._window_start, self._window_end = now, now + self._window
        return taken

    def _write(self, refused: dict[tuple[str, str], int], missed: dict[tuple[str, str], int], level: int,
               seconds: float) -> None:
        """Write a window's counts: one ``requests refused`` line, and ``CheckoutMisses``."""
        if refused:
            by_reason: dict[str, dict[str, int]] = {}
            totals: dict[str, int] = {}
            for (reason, name), count in refused.items():
                totals[reason] = totals.get(reason, 0) + count
                if name:  # a refusal that names no pool (a 403, a login's 429) is in the total only
                    by_reason.setdefault(reason, {})[name] = count
            # About this process's last window, not the request that happened to write it.
            _say(level)("requests refused", extra={"refused": totals, "by_name": by_reason,
                                                          "seconds": seconds, "correlation_id": None})
        if missed:
            _emit_misses(missed)


def _say(level: int) -> Callable[..., None]:
    """The service logger's method for ``level`` (Powertools' Logger has no ``log``)."""
    return logger.warning if level >= logging.WARNING else logger.info


def _emit_misses(counts: dict[tuple[str, str], int]) -> None:
    """``CheckoutMisses`` with these counts: service-wide, per pool, per alias (one document each)."""
    for (dimension, name), count in counts.items():
        if dimension == "pool":
            emit(name, {metric.CHECKOUT_MISSES: count})
        elif dimension == "alias":
            emit(None, {metric.CHECKOUT_MISSES: count}, dimensions={"alias": name})
        else:
            emit(None, {metric.CHECKOUT_MISSES: count})
