"""Which messages drain a pool the receiving function does not configure: only those whose sender
took the pool for removed (a DRAIN, a drain pass's retry or follow-up). A config without a
generation (a packaged config across a deploy) is as new as any other to ``newest_config``, so a
function a deploy behind must tell from the message itself that its sender has the pool."""

from __future__ import annotations

import dataclasses
from typing import Iterator

import pytest
import redis

from chalicelib.clock import FakeClock
from chalicelib.config import parse
from chalicelib.manager.dispatch import Ticker, handle_batch, look_at
from chalicelib.manager.pool_queue import DRAIN, FOLLOWUP, RETRY, TICK, PoolMessage
from chalicelib.services import Services
from chalicelib.store import STATES
from chalicelib.store.fleet import Fleet
from chalicelib.store.store import NEWEST_CONFIG_SECONDS
from local.scheduler import LocalQueue
from tests.support import RecordingQueue

CONFIG = """
:config:
  domain: example.com
  check_loop_delay_min: 4
:providers:
  :dummy: {createvm_max_time: 30, boot_time: 10, destroyvm_max_time: 30}
:pools:
  - {name: debian, size: 1, provider: dummy}
"""
FEDORA = "  - {name: fedora, size: 2, provider: dummy}\n"


@pytest.fixture
def behind(redis_client: redis.Redis) -> Iterator[Services]:
    """A reconcile function still on the config without fedora (generation 0: a packaged one)."""
    yield Services(parse(CONFIG), redis_client, clock=FakeClock(), prefix="drainintent:")


def _ahead(behind: Services) -> Services:
    """A function of the same Redis and clock whose config (generation 0 too) has fedora."""
    return Services(parse(CONFIG + FEDORA), behind.client, clock=behind.clock, prefix=behind.store.keys.prefix)


def _fill_fedora(ahead: Services, queue: RecordingQueue) -> set[str]:
    clock = ahead.clock
    assert isinstance(clock, FakeClock)
    message = PoolMessage("fedora", TICK)
    for _ in range(4):  # each pass's follow-up run as it falls due (its marker cleared)
        queue.sent.clear()
        look_at(ahead, message, queue)
        clock.advance(60)
        message = next((m for m, _ in queue.sent if m.reason == FOLLOWUP), PoolMessage("fedora", TICK))
    ready = set(ahead.store.hostnames("fedora", "ready"))
    assert len(ready) == 2
    return ready


@pytest.mark.parametrize("history", ["added", "removed and added back"])
@pytest.mark.parametrize("reason", [RETRY, FOLLOWUP])
def test_a_function_a_deploy_behind_never_drains_a_pool_on_its_retry_or_follow_up(
        behind: Services, reason: str, history: str) -> None:
    """Before, a retry or follow-up for a pool the receiver does not configure was taken for a
    drain: a function still on the older config destroyed the added pool's ready VMs (and they
    were cloned again by the newer one: a refill storm at each such message)."""
    queue = RecordingQueue()
    ahead = _ahead(behind)
    if history == "removed and added back":
        Ticker().tick(ahead, queue)
        ready_before = _fill_fedora(ahead, queue)
        Ticker().tick(behind, queue)  # the removal's tick: fedora drains (its VMs are gone) ...
        for _ in range(3):
            look_at(behind, PoolMessage("fedora", DRAIN), queue)
            behind.clock.advance(60)  # type: ignore[attr-defined]
        assert not set(ahead.store.hostnames("fedora", "ready")) & ready_before
    Ticker().tick(ahead, queue)  # ... the push (or deploy) that adds it (back) is ticked
    ready = _fill_fedora(ahead, queue)
    fedora = ahead.config.pool("fedora")
    assert fedora is not None
    queue.sent.clear()

    assert look_at(behind, PoolMessage("fedora", reason, attempt=1), queue) is None
    assert set(behind.store.hostnames("fedora", "ready")) == ready  # none destroyed
    assert ready <= {vm.name for vm in ahead.provider("dummy").list_vms(fedora)}
    # Left to a function that has the pool: queued again, which that function runs.
    assert [(m.pool, m.reason, m.drains) for m, _ in queue.sent] == [("fedora", RETRY, False)]
    assert look_at(ahead, queue.sent[0][0], queue) is not None
    assert set(ahead.store.hostnames("fedora", "ready")) == ready
    assert "fedora" in Fleet(ahead.store).names()


def test_a_drain_goes_on_through_its_own_follow_ups(behind: Services) -> None:
    """A drain pass with destroys in flight queues a follow-up that says it drains (its body
    too): received by a function without the pool, it goes on with the drain at once, not at the
    next tick."""
    queue = RecordingQueue()
    ahead = _ahead(behind)
    Ticker().tick(ahead, queue)
    _fill_fedora(ahead, queue)
    message = PoolMessage("fedora", DRAIN)  # fedora is removed for good
    followups = 0
    for _ in range(8):
        queue.sent.clear()
        assert look_at(behind, message, queue) is not None
        behind.clock.advance(60)  # type: ignore[attr-defined]
        sent = [m for m, _ in queue.sent if m.reason == FOLLOWUP]
        if message.reason == FOLLOWUP and not sent:
            break
        if sent:
            parsed = PoolMessage.parse(sent[0].body())
            assert parsed is not None and parsed.drains
            message, followups = parsed, followups + 1
    assert followups
    assert behind.store.counts(["fedora"])["fedora"] == {state: 0 for state in STATES}
    assert "fedora" not in Fleet(behind.store).names()


def test_a_stale_follow_up_in_the_batch_of_a_drain_does_not_skip_the_drain(behind: Services) -> None:
    """A follow-up queued while the pool was configured shares a batch with the tick's drain
    after its removal: the batch runs one message, the follow-up, and it drains."""
    queue = RecordingQueue()
    ahead = _ahead(behind)
    Ticker().tick(ahead, queue)
    _fill_fedora(ahead, queue)
    bodies = [PoolMessage("fedora", FOLLOWUP).body(), PoolMessage("fedora", DRAIN).body()]
    assert handle_batch(behind, [(f"m{n}", body) for n, body in enumerate(bodies)], queue, lambda: 60.0) == []
    assert behind.store.counts(["fedora"])["fedora"]["ready"] == 0


def test_the_local_queue_keeps_a_drain_merged_into_a_follow_up() -> None:
    """``make run``: a follow-up queued while the pool was in the file and the drain the tick
    queues once it is edited out are one message in the local queue; it drains."""
    queue = LocalQueue()
    queue.send([(PoolMessage("fedora", FOLLOWUP), 30.0)])
    queue.send([(PoolMessage("fedora", DRAIN), 0.0)])
    message = queue.take(1.0)
    assert message is not None and message.reason == FOLLOWUP and message.drains


def test_a_function_left_on_the_packaged_config_leaves_the_pools_to_the_pushed_one(behind: Services) -> None:
    """A cold start whose first read of the pushed config failed (S3 throttled, a blip) keeps the
    packaged config, which has no generation and may be many pushes behind. Before, it counted
    as the newest config: its tick queued the drain of a pool pushed since and its consumer
    destroyed that pool's ready VMs. A pushed config in use makes it give way."""
    queue = RecordingQueue()
    pushed = Services(dataclasses.replace(parse(CONFIG + FEDORA), generation=200.0), behind.client,
                      clock=behind.clock, prefix=behind.store.keys.prefix)
    Ticker().tick(pushed, queue)
    ready = _fill_fedora(pushed, queue)
    packaged = behind  # generation 0, without fedora
    queue.sent.clear()
    Ticker().tick(packaged, queue)
    drains = [message for message, _ in queue.sent if message.reason == DRAIN]
    assert [message.pool for message in drains] == ["fedora"]
    queue.sent.clear()
    assert look_at(packaged, drains[0], queue) is None
    assert set(packaged.store.hostnames("fedora", "ready")) == ready  # none destroyed
    assert [(m.pool, m.reason) for m, _ in queue.sent] == [("fedora", RETRY)]  # for a function on the push
    assert look_at(pushed, queue.sent[0][0], queue) is not None
    assert set(pushed.store.hostnames("fedora", "ready")) == ready
    # Once no function has run the pushed config for a while, the packaged one is the newest.
    behind.clock.advance(NEWEST_CONFIG_SECONDS + 1)  # type: ignore[attr-defined]
    assert look_at(packaged, PoolMessage("debian", TICK), queue) is not None
