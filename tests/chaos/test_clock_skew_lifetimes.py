"""Lifetimes when the processes' clocks disagree: the API Lambda that checks a VM out stamps the
checkout's time, a reconcile Lambda compares it with its own time to end the lifetime. Each
process here is built as the Lambdas build theirs (``Services.from_environment``) on the real
test Redis, its wall clock a fake one set off by its skew (``chalicelib.clock``'s ``time``)."""

from __future__ import annotations

from typing import Iterator

import pytest
import redis

import app as chalice_app
from chalicelib import clock as clock_module
from chalicelib.clock import FakeClock
from chalicelib.config import parse
from chalicelib.services import KEY_PREFIX_ENV, REDIS_URL_ENV, Services
from tests.harness import Harness

CONFIG = """\
config: {vm_lifetime: 1}
providers:
  dummy: {provider_class: dummy, seed: 11, createvm_max_time: 0, boot_time: 0}
pools:
  - {name: skew, size: 1, provider: dummy}
"""
SKEW = 90.0
"""How far the scheduler's clock runs ahead of true time, and the API's behind it."""


class SkewedTime:
    """``time`` as one process of many reads it: one true fake time, each process off by its skew."""

    def __init__(self, true: FakeClock) -> None:
        self.true = true
        self.skew = 0.0

    def time(self) -> float:
        return self.true.now() + self.skew

    def monotonic(self) -> float:
        return self.true.monotonic()


@pytest.fixture
def skewed(monkeypatch: pytest.MonkeyPatch) -> Iterator[SkewedTime]:
    skewed = SkewedTime(FakeClock())
    monkeypatch.setattr(clock_module, "time", skewed)
    saved = chalice_app._services
    yield skewed
    chalice_app._services = saved


def process(redis_client: redis.Redis, skewed: SkewedTime, skew: float) -> Harness:
    """A process of the service built as a Lambda builds its own, its clock ``skew`` off."""
    port = redis_client.connection_pool.connection_kwargs["port"]
    environ = {REDIS_URL_ENV: f"redis://127.0.0.1:{port}/0", KEY_PREFIX_ENV: "skew:"}
    skewed.skew = skew
    built = Services.from_environment(environ, parse(CONFIG))
    return Harness(built.config, built.client, built.clock, prefix="skew:")  # type: ignore[arg-type]


def test_a_vm_in_use_is_not_reaped_early_by_a_pass_whose_clock_runs_ahead(
        redis_client: redis.Redis, skewed: SkewedTime) -> None:
    """The API's clock 90 s behind, the scheduler's 90 s ahead. Before, the checkout was stamped
    on the API's clock and the lifetime's end read on the scheduler's: the VM was taken from its
    user 3 minutes before its hour was over. Now both read Redis's clock, and the lifetime ends
    on time, neither early nor never."""
    api = process(redis_client, skewed, -SKEW)
    scheduler = process(redis_client, skewed, +SKEW)

    def reconcile() -> None:
        skewed.skew = +SKEW
        scheduler.reconcile("skew")

    for _ in range(5):
        reconcile()
        skewed.true.advance(5)
    assert api.ready("skew")
    skewed.skew = -SKEW
    chalice_app._services = api.services
    [hostname] = api.checkout_vms("skew", 1)
    skewed.true.advance(3600 - 60)  # a minute left of its lifetime
    reconcile()
    assert api.state_of(hostname) == "running", "reaped before its lifetime was over"
    skewed.true.advance(61)
    reconcile()
    assert api.state_of(hostname) == "completed"
