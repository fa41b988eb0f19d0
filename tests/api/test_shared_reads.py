"""Readers of a feed asking at once share one computation (chalicelib/api/shared_reads.py), and
none of them gets an answer older than its request. Sixteen dashboards polling /status of 1,000
pools kept every thread of the local stack's workers computing the same answer, and a checkout
waited seconds behind them (docs/performance.md, "The feeds at 1,000 and 10,000 pools")."""

from __future__ import annotations

import threading
import time
from typing import Any, Callable, Iterator

import pytest

from chalicelib.api import shared_reads
from chalicelib.api.routes import SHARED_READS
from chalicelib.store import StoreUnavailable
from tests.harness import Harness, Reply

READERS = 8


class HeldCounts:
    """Wraps the store's ``counts``: its first call reads, then waits for ``release``."""

    def __init__(self, original: Callable[..., Any]) -> None:
        self.original = original
        self.calls = 0
        self.entered = threading.Event()
        self.release = threading.Event()
        self._lock = threading.Lock()

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        with self._lock:
            self.calls += 1
            first = self.calls == 1
        found = self.original(*args, **kwargs)
        if first:
            self.entered.set()
            assert self.release.wait(30)
        return found


@pytest.fixture
def held(full: Harness, monkeypatch: pytest.MonkeyPatch) -> Iterator[HeldCounts]:
    counts = HeldCounts(full.services.store.counts)
    monkeypatch.setattr(full.services.store, "counts", counts)
    yield counts
    counts.release.set()


def until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + 20
    while not condition():
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.005)


def read_in_thread(stack: Harness, path: str, replies: list[Reply]) -> threading.Thread:
    thread = threading.Thread(target=lambda: replies.append(stack.get(path)))
    thread.start()
    return thread


def test_readers_asking_at_once_share_one_computation(full: Harness, held: HeldCounts,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    waiting = []
    result = shared_reads._Flight.result

    def counted_result(flight: shared_reads._Flight) -> Any:
        waiting.append(flight)
        return result(flight)

    monkeypatch.setattr(shared_reads._Flight, "result", counted_result)
    replies: list[Reply] = []
    first = read_in_thread(full, "/api/v3/status", replies)
    assert held.entered.wait(20)
    others = [read_in_thread(full, "/api/v3/status", replies) for _ in range(READERS - 1)]
    # One of the others waits to compute the next answer; the rest wait for that one (before
    # the fix, each computed its own: held.calls reached READERS at once).
    until(lambda: len(waiting) >= READERS - 2 or held.calls >= READERS, "the readers to arrive")
    held.release.set()
    for thread in (first, *others):
        thread.join(30)

    assert [reply.status for reply in replies] == [200] * READERS
    assert held.calls == 2
    assert len({reply.raw for reply in replies[1:]}) == 1


def test_a_reader_arriving_during_a_computation_gets_an_answer_from_after_its_request(
        full: Harness, held: HeldCounts) -> None:
    before: list[Reply] = []
    after: list[Reply] = []
    first = read_in_thread(full, "/api/v3/status?view=queue", before)
    assert held.entered.wait(20)  # the first reader's counts are read: no VM running
    full.checkout("pool1")
    second = read_in_thread(full, "/api/v3/status?view=queue", after)
    until(lambda: any(slot.next for slot in SHARED_READS._slots.values()), "the second reader to wait")
    held.release.set()
    first.join(30)
    second.join(30)

    assert before[0].json["queue"]["running"] == 0
    assert after[0].json["queue"]["running"] == 1


def test_different_queries_are_not_shared_and_a_failure_reaches_every_reader(full: Harness) -> None:
    assert full.get("/api/v3/status?view=pools").json.keys() == {"pools", "status"}
    assert full.get("/api/v3/status?view=queue").json.keys() == {"queue", "status"}
    assert full.get("/api/v3/summary/nosuch").status == 404
    assert SHARED_READS._slots == {}


def test_readers_waiting_behind_a_failed_computation_share_its_failure(full: Harness,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """With Redis out each computation waits for its socket timeout: a reader arriving during one
    got its 503 only after a second timeout (3 s where 1.5 s is promised,
    tests/chaos/test_redis_outage.py)."""
    held = HeldCounts(full.services.store.counts)

    def failing(*args: Any, **kwargs: Any) -> Any:
        held(*args, **kwargs)
        raise StoreUnavailable("redis: TimeoutError")

    monkeypatch.setattr(full.services.store, "counts", failing)
    before: list[Reply] = []
    after: list[Reply] = []
    first = read_in_thread(full, "/api/v3/status", before)
    assert held.entered.wait(20)
    second = read_in_thread(full, "/api/v3/status", after)
    until(lambda: any(slot.next for slot in SHARED_READS._slots.values()), "the second reader to wait")
    held.release.set()
    first.join(30)
    second.join(30)

    assert [before[0].status, after[0].status] == [503, 503]
    assert held.calls == 1
