"""The local HTTP front's own log lines: JSON like the app's, and a client sending garbage makes a
bounded number of them (``local.front_logs``), however many requests it sends."""

from __future__ import annotations

import io
import json
import logging
import socket
import sys
import time
from pathlib import Path
from typing import Callable, Iterator

import pytest
from gunicorn.config import Config

from chalicelib.clock import FakeClock
from local.front_logs import BoundedWarning
from local.gunicorn_front import JsonLogger
from local.http_front import INVALID_REQUEST_LOG_SECONDS
from tests.local.stack import call, local_stack, wait_for


class Flood(logging.Handler):
    """Where a ``BoundedWarning`` under test writes: its lines (``caught``), a fake clock, and a
    fake ``call_later`` that remembers what is due when and runs it when the test says."""

    def __init__(self, log: logging.Logger) -> None:
        super().__init__()
        self.log = log
        self.caught: list[logging.LogRecord] = []
        self.clock = FakeClock(1000.0)
        self.due: list[tuple[float, Callable[[], None]]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.caught.append(record)

    def warning(self, message: str, window: float) -> BoundedWarning:
        """A ``BoundedWarning`` of ``message`` on this flood's logger and clock."""
        return BoundedWarning(self.log, message, window=window, clock=self.clock.now)

    def call_later(self, delay: float, function: Callable[[], None]) -> None:
        self.due.append((self.clock.now() + delay, function))

    def run_due(self) -> None:
        ready = [entry for entry in self.due if entry[0] <= self.clock.now()]
        self.due = [entry for entry in self.due if entry[0] > self.clock.now()]
        for _, function in ready:
            function()


@pytest.fixture
def flood() -> Iterator[Flood]:
    """A ``Flood`` catching what the test logger says while the test runs."""
    log = logging.getLogger("tests.front_logs")
    log.propagate = False
    log.setLevel(logging.DEBUG)
    flood = Flood(log)
    log.addHandler(flood)
    yield flood
    log.removeHandler(flood)


def test_a_flood_is_one_line_at_once_and_one_count_when_its_window_ends(flood: Flood) -> None:
    warning = flood.warning("invalid HTTP request received", window=60)
    for number in range(10_000):
        flood.clock.advance(0.001)
        warning.note(flood.call_later, client="127.0.0.1", reason=f"garbage {number}")
    assert [(record.count, record.reason) for record in flood.caught] == [(1, "garbage 0")]
    assert len(flood.due) == 1, "one summary scheduled, not one per request"
    flood.clock.advance(49)
    flood.run_due()
    assert len(flood.caught) == 1, "nothing more before the window ends"
    flood.clock.advance(2)
    flood.run_due()
    assert len(flood.caught) == 2
    assert flood.caught[1].count == 9_999 and flood.caught[1].seconds == 61.0  # the window began with the first
    assert flood.caught[1].getMessage() == "invalid HTTP request received"


def test_a_steady_flood_is_a_line_per_window_and_every_request_is_counted(flood: Flood) -> None:
    warning = flood.warning("bad", window=10)
    sent = 0
    for _ in range(100 * 100):  # 100 s at 100 a second
        flood.clock.advance(0.01)
        flood.run_due()
        warning.note(flood.call_later)
        sent += 1
    warning.flush()  # the worker stops
    assert len(flood.caught) <= 100 / 10 + 2
    assert sum(record.count for record in flood.caught) == sent


def test_after_a_quiet_window_the_next_one_is_said_at_once_with_its_details(flood: Flood) -> None:
    warning = flood.warning("bad", window=10)
    warning.note(flood.call_later, reason="first")
    warning.note(flood.call_later, reason="second")
    flood.clock.advance(10)
    flood.run_due()
    flood.clock.advance(30)  # quiet
    warning.note(flood.call_later, reason="third")
    assert [(record.count, getattr(record, "reason", None)) for record in flood.caught] == [
        (1, "first"), (1, None), (1, "third")]
    warning.flush()  # nothing unsaid: no line
    assert len(flood.caught) == 3


def test_a_window_whose_summary_a_late_note_wrote_still_has_its_next_written_when_it_ends(flood: Flood) -> None:
    """Two event loops of a worker: one notes a request after the window ended, before the other
    runs the summary it scheduled. The note writes the window's count and begins the next; what
    that next window counts is written when it ends, not left until another request or the stop."""
    warning = flood.warning("bad", window=10)
    for _ in range(3):
        warning.note(flood.call_later)
    flood.clock.advance(10)
    warning.note(flood.call_later)  # before the scheduled summary runs: writes the window's 2 and itself
    warning.note(flood.call_later)
    flood.run_due()
    assert [record.count for record in flood.caught] == [1, 3]
    flood.clock.advance(10)
    flood.run_due()
    assert [record.count for record in flood.caught] == [1, 3, 1]


def test_gunicorns_error_log_is_json_with_the_apps_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    stream = io.StringIO()
    monkeypatch.setattr("sys.stderr", stream)
    config = Config()
    config.set("errorlog", "-")
    config.set("loglevel", "warning")
    JsonLogger(config).critical("WORKER TIMEOUT (pid:%s)", 42)
    line = json.loads(stream.getvalue())
    assert line["message"] == "WORKER TIMEOUT (pid:42)"
    assert line["level"] == "CRITICAL" and line["service"] == "vmpool" and line["logger"] == "gunicorn.error"
    assert "timestamp" in line and line["process"].isdigit()



def _arbiter_says(logger: JsonLogger) -> int:
    """Log as gunicorn's arbiter does, through the logger's method; the line it was said on."""
    logger.warning("Worker (pid:%s) was sent %s!", 42, "SIGSEGV")
    return sys._getframe().f_lineno - 1


@pytest.mark.parametrize("level", ["critical", "error", "warning", "info", "exception", "log"])
def test_gunicorns_lines_are_located_where_gunicorn_said_them(monkeypatch: pytest.MonkeyPatch, level: str) -> None:
    """Each line of the arbiter was located at gunicorn's logger method (``warning:286``), never
    at the arbiter's line that said it."""
    stream = io.StringIO()
    monkeypatch.setattr("sys.stderr", stream)
    config = Config()
    config.set("errorlog", "-")
    config.set("loglevel", "info")
    logger = JsonLogger(config)
    arguments = ("warning", "said here") if level == "log" else ("said here",)
    said = sys._getframe().f_lineno + 1
    getattr(logger, level)(*arguments)
    line = json.loads(stream.getvalue().splitlines()[0])
    assert line["location"] == f"{test_gunicorns_lines_are_located_where_gunicorn_said_them.__name__}:{said}"
    stream.seek(0)
    stream.truncate()
    said = _arbiter_says(logger)
    assert json.loads(stream.getvalue())["location"] == f"_arbiter_says:{said}"


POOL = "flood"
CONFIG = (
    "config: {domain: example.com, check_loop_delay_min: 0.1}\n"
    "providers:\n  dummy: {provider_class: dummy, createvm_max_time: 0, boot_time: 0, destroyvm_max_time: 0}\n"
    f"pools:\n  - {{name: {POOL}, size: 1, provider: dummy}}\n"
)
GARBAGE = (b"GARBAGE\x00 / HTTP/1.1\r\n\r\n", b"GET / HTTP/1.1\r\nHost: x\r\nBad\x01Field: 1\r\n\r\n",
           b"GET / HTTP/9.Z\r\n\r\n", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")
"""Requests llhttp cannot parse: a bad method, a control character in a field name, a bad
version, a TLS ClientHello sent to the plain-HTTP port."""
FLOOD = 1200
WORKERS = 2


@pytest.mark.parametrize("workers", [WORKERS, 0], ids=["workers", "one-process"])
def test_a_flood_of_malformed_requests_writes_a_bounded_number_of_json_lines(tmp_path: Path, workers: int) -> None:
    """``workers`` 0: `make run WORKERS=0`, the front's loops in the stack's own process (its
    log set up there, without gunicorn's logger)."""
    processes = max(workers, 1)
    with local_stack(tmp_path, CONFIG, workers=workers, interval=1) as stack:
        wait_for(lambda: call("GET", f"{stack.api}/status")[0] == 200, 30, "the stack to serve")
        flood_began = time.monotonic()
        for number in range(FLOOD):
            with socket.create_connection(("127.0.0.1", stack.port), timeout=10) as connection:
                connection.sendall(GARBAGE[number % len(GARBAGE)])
                answer = b""
                while chunk := connection.recv(65536):
                    answer += chunk
                assert answer.startswith(b"HTTP/1.1 400 "), answer[:200]
    logged_for = time.monotonic() - flood_began  # the flood and the stack's stop: its last lines
    lines = [line for line in stack.log().splitlines() if not line.startswith("vmpool: ")]
    records = [json.loads(line) for line in lines]  # every line JSON: no plain-text line left
    invalid = [record for record in records if record["message"] == "invalid HTTP request received"]
    # The first of each worker at once, a count per worker for each whole window (a minute) the
    # flood and the stop went on, and each worker's count when it stopped. (The bound was 2 per
    # worker, for a flood under a minute: on a loaded machine the flood took longer, and its
    # windows' counts failed the test.)
    windows = int(logged_for // INVALID_REQUEST_LOG_SECONDS)
    assert len(invalid) <= (2 + windows) * processes, (logged_for, invalid)
    assert sum(record["count"] for record in invalid) == FLOOD, "each malformed request counted once"
    # The parser's reason depends on how far the bytes it read got (a version may read as "Invalid
    # minor version" or "Invalid HTTP version"): each line carries one, in the parser's words.
    assert all(str(record["reason"]).startswith("Invalid ") for record in invalid if "reason" in record), invalid
    # No other line of the front: a worker stopped by Ctrl-C says nothing (before ops9 the arbiter
    # said "Worker (pid:...) was sent SIGINT!" for each, which this allowed as 2 * WORKERS lines).
    front = [record for record in records if str(record.get("logger", "")).startswith(("gunicorn", "uvicorn"))]
    assert [record for record in front if record not in invalid] == [], front
