"""The local stack's scheduler stops whole: ``stop`` returns once no thread of it runs, so
nothing it does (a pass, a metric printed) happens after the caller closed its services."""

from __future__ import annotations

import threading
from typing import Any

import pytest
import redis

import local.scheduler
from chalicelib.clock import FakeClock
from chalicelib.config import parse
from chalicelib.services import Services
from local.scheduler import LocalScheduler

CONFIG = """\
providers:
  dummy: {provider_class: dummy, createvm_max_time: 0, boot_time: 0}
pools:
  - {name: alpha, size: 1, provider: dummy}
"""


def test_stop_waits_for_a_pass_in_progress_and_says_whether_every_thread_ended(
        redis_client: redis.Redis, clock: FakeClock, monkeypatch: pytest.MonkeyPatch) -> None:
    in_pass, let_go = threading.Event(), threading.Event()

    def slow_pass(*args: Any, **kwargs: Any) -> None:
        in_pass.set()
        let_go.wait(30)

    monkeypatch.setattr(local.scheduler, "look_at", slow_pass)
    scheduler = LocalScheduler(Services(parse(CONFIG), redis_client, clock=clock), interval_seconds=60)
    scheduler.start()
    try:
        assert in_pass.wait(30), "the tick never queued the pool"
        # A pass longer than the caller waits: stop says so rather than pretend it stopped.
        assert scheduler.stop(timeout=0.2) is False
        let_go.set()
        assert scheduler.stop(timeout=30) is True
        assert not [thread for thread in threading.enumerate() if thread in scheduler._threads]
    finally:
        let_go.set()
        scheduler.stop(timeout=30)
