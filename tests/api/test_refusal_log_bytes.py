"""Refusals any caller can cause (a checkout of an empty pool's 503, a 403) cost a bounded
number of log bytes per process and window, not bytes per request (CloudWatch Logs bills
ingestion per byte), and still reach the operator: the first at once with its request id, the
rest as counts in one ``requests refused`` line and in ``CheckoutMisses``, summed."""

from __future__ import annotations

import io

import pytest
import redis

from chalicelib import observability as m
from chalicelib.clock import FakeClock
from chalicelib.config import parse
from chalicelib.refusals import NO_READY_VMS, STORE_UNAVAILABLE, WINDOW_SECONDS
from chalicelib.services import Services
from tests.support import emf_documents, emitted, json_lines

CONFIG = """\
providers:
  dummy: {provider_class: dummy}
pools:
  - {name: alpha, size: 0, provider: dummy, alias: [any]}
  - {name: beta, size: 0, provider: dummy, alias: [any]}
"""


def _gateway(redis_client: redis.Redis, clock: FakeClock, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    import app
    from local.gateway import Gateway

    services = Services(parse(CONFIG), redis_client, clock=clock, prefix="vmpool:")
    monkeypatch.setattr(app, "_services", services)
    monkeypatch.setattr(app, "_config", None)
    return Gateway(app.app)


def _refused_checkouts(gateway, count: int, start: int = 0) -> None:  # type: ignore[no-untyped-def]
    for caller in range(start, start + count):
        address = f"10.{caller // 65536 % 256}.{caller // 256 % 256}.{caller % 256}"
        target = "/api/v3/vm/alpha" if caller % 2 else "/api/v3/vm/any"
        status, _, _ = gateway("POST", target, {}, b"", address)
        assert status == 503


def test_refused_checkouts_by_many_callers_cost_bounded_log_bytes_and_are_counted(
        redis_client: redis.Redis, clock: FakeClock, capsys: pytest.CaptureFixture[str],
        log_output: io.StringIO, monkeypatch: pytest.MonkeyPatch) -> None:
    """outsider25's run: 109,000 refused checkouts wrote a line and EMF documents each (41 MB
    of logs in minutes). 20 or 400 refusals by distinct callers in a window print the same
    bytes; the window's counts reach the operator when it ends."""
    gateway = _gateway(redis_client, clock, monkeypatch)

    def printed() -> str:
        """What the process wrote since last asked: its log lines and its EMF documents."""
        lines = log_output.getvalue()
        log_output.seek(0)
        log_output.truncate()
        return lines + capsys.readouterr().out

    printed()
    _refused_checkouts(gateway, 20)
    few = printed()
    _refused_checkouts(gateway, 400, start=20)
    many = printed()
    assert len(many) <= len(few)  # nothing more, however many callers: the window's first line was said

    (first,) = [line for line in json_lines(few) if line["message"] == NO_READY_VMS]
    assert first["names"] == ["any"] and first.get("correlation_id")  # the request id stays on it

    clock.advance(WINDOW_SECONDS)
    status, _, _ = gateway("GET", "/api/v3/status", {}, b"", "10.9.9.9")  # any request writes the window
    assert status == 200
    out = printed()
    (summary,) = [line for line in json_lines(out) if line["message"] == "requests refused"]
    assert summary["refused"] == {NO_READY_VMS: 419}
    assert summary["by_name"] == {NO_READY_VMS: {"alpha": 210, "any": 209}}
    assert summary.get("correlation_id") is None  # about the window, not the request that wrote it
    found = emitted(emf_documents(out))
    assert found[(m.CHECKOUT_MISSES, ("service",))] == [419.0]
    assert found[(m.CHECKOUT_MISSES, ("pool", "service"))] == [210.0]
    assert found[(m.CHECKOUT_MISSES, ("alias", "service"))] == [209.0]
    assert len(out) < 2000  # one line and three documents for 419 refusals

    # A steady flood: one summary per window, counted from the refusals of that window only.
    _refused_checkouts(gateway, 100)
    clock.advance(WINDOW_SECONDS)
    _refused_checkouts(gateway, 1, start=100)
    (summary,) = [line for line in json_lines(printed()) if line["message"] == "requests refused"]
    assert summary["refused"] == {NO_READY_VMS: 100}


def test_a_window_line_keeps_a_bounded_number_of_names(log_output: io.StringIO) -> None:
    """Past ``max_keys`` distinct names in a window, the rest are counted under ``(other)``: the
    summary does not grow with the names refused (here 50 names, 3 kept)."""
    from chalicelib.refusals import OTHER, RefusalLog

    now = [0.0]
    refusals = RefusalLog(lambda: now[0], window=10, max_keys=3)
    for n in range(51):
        refusals.refused(NO_READY_VMS, [f"pool{n}"])
    now[0] = 10
    refusals.flush_if_due()
    (summary,) = [line for line in json_lines(log_output.getvalue()) if line["message"] == "requests refused"]
    assert summary["refused"] == {NO_READY_VMS: 50}
    assert summary["by_name"] == {NO_READY_VMS: {"pool1": 1, "pool2": 1, "pool3": 1, OTHER: 47}}


def test_a_redis_refusing_every_request_costs_one_line_a_window_not_one_per_503(
        closed_port: int, clock: FakeClock, log_output: io.StringIO, monkeypatch: pytest.MonkeyPatch) -> None:
    """While Redis refuses connections (an error, not a timeout: the breaker stays closed), every
    request is a 503 and wrote its own ``state store unavailable`` WARNING: a flood of callers
    during an outage wrote a line each. Now the first at once with its error, the rest counted."""
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    down = redis.Redis(host="127.0.0.1", port=closed_port, socket_connect_timeout=2, retry=Retry(NoBackoff(), 0))
    gateway = _gateway(down, clock, monkeypatch)
    for caller in range(40):
        status, _, _ = gateway("GET", "/api/v3/vm/alpha" if caller % 2 else "/api/v3/status", {}, b"",
                               f"10.8.{caller // 256}.{caller % 256}")
        assert status == 503
    said = [line for line in json_lines(log_output.getvalue()) if line["message"] == STORE_UNAVAILABLE]
    assert len(said) == 1 and said[0]["level"] == "WARNING"
    assert "ConnectionError" in said[0]["error"]  # the cause stays on it

    clock.advance(WINDOW_SECONDS)
    status, _, _ = gateway("GET", "/api/v3/status", {}, b"", "10.9.9.9")  # the window is written by the next
    assert status == 503
    (summary,) = [line for line in json_lines(log_output.getvalue()) if line["message"] == "requests refused"]
    assert summary["refused"] == {STORE_UNAVAILABLE: 39} and summary["level"] == "WARNING"
