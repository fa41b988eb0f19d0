"""Concurrent identical reads of a feed share one answer.

A feed (``/status``, ``/summary``, the dashboard's) reads every pool; at 1,000 pools its answer
costs a worker tens of milliseconds of CPU. Sixteen dashboards polling the local stack, each
asking again the moment it has its answer, kept every thread of its workers computing the same
JSON, and a checkout waited seconds behind them. Here the callers asking one feed with the same
query at the same time share one computation, so a process computes each feed at most once at a
time, whatever the number of readers.

No caller gets an answer older than its request: one arriving while the feed is being computed
(whose reads may predate it) waits for that computation to end and shares the next one, which
starts after it arrived; when that computation failed (Redis out), its failure, seen after they
arrived, is theirs too, so no caller waits for two failures. In AWS a Lambda environment serves
one request at a time and nothing is ever shared; the local front's threads serve several.
Nothing here changes state: it is not a lock around a change (those are Lua scripts), only who
computes a read.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from typing import Callable, Hashable

from chalicelib.api.http import JSON_HEADERS, ApiResponse


@dataclass
class _Flight:
    """One computation of a feed and the callers waiting for it."""

    done: threading.Event = field(default_factory=threading.Event)
    answer: ApiResponse | None = None
    error: BaseException | None = None

    def result(self) -> ApiResponse:
        self.done.wait()
        if self.error is not None:
            raise self.error
        assert self.answer is not None
        return self.answer


@dataclass
class _Slot:
    running: _Flight | None = None
    """The computation under way; its reads may predate callers arriving now."""
    next: _Flight | None = None
    """The computation gathering callers that arrived while ``running`` ran; it starts once it ends."""


class SharedReads:
    """Runs a feed's computation once for all the callers asking the same feed at once."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._slots: dict[Hashable, _Slot] = {}

    def answer(self, key: Hashable, compute: Callable[[], ApiResponse]) -> ApiResponse:
        """``compute()``'s answer, shared with the callers of the same ``key`` that arrived while
        no computation of it had started; a JSON answer comes rendered once, for all of them."""
        with self._lock:
            slot = self._slots.setdefault(key, _Slot())
            joined = slot.next
            if joined is None:
                flight, before = _Flight(), slot.running
                if before is None:
                    slot.running = flight
                else:
                    slot.next = flight
        if joined is not None:
            return joined.result()
        if before is not None:
            before.done.wait()
            with self._lock:
                slot.running, slot.next = flight, None
        try:
            if before is not None and before.error is not None:
                # The computation before failed (Redis out, say) after these callers arrived: its
                # failure is theirs too, rather than a second wait as long as the first (a 503
                # that took two socket timeouts).
                raise before.error
            flight.answer = _rendered(compute())
        except BaseException as error:  # noqa: BLE001 - every caller sharing it gets the same failure
            flight.error = error
        finally:
            with self._lock:
                slot.running = None
                if slot.next is None:
                    del self._slots[key]
            flight.done.set()
        return flight.result()


def _rendered(response: ApiResponse) -> ApiResponse:
    """The answer with its JSON text made once, for every caller sharing it."""
    if isinstance(response.body, str):
        return response
    text = json.dumps(response.body, separators=(",", ":"))
    return ApiResponse(response.status, text, {**JSON_HEADERS, **response.headers})
