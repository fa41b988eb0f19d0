"""1,000 pools on one reconcile function: the scheduler's tick and the consumer's passes.

- ``tick``: one tick over 1,000 configured pools (remember the settings once, list the known
  pools, queue one message each, publish the totals): wall time, Redis round trips, messages.
  The SQS calls themselves are not in the wall time (the queue here records); in AWS they are
  100 SendMessageBatch calls made by 8 threads.
- ``steady``: the consumer's batches of 10 over those 1,000 full, idle pools (what every minute
  costs): per batch and per pass, round trips, follow-ups queued (none when idle); and batches
  of one message (what an invocation bills when each poll finds one).
- ``busy``: the pass of a pool with clones in flight (what each follow-up costs): it starts no
  wait, queues one follow-up after ``clone_poll_interval``.

The durations are the inputs of the cost model in docs/performance.md.
"""

from __future__ import annotations

import time
from typing import Any

import redis

from bench.common import CORES, RoundTrips, median, ms
from chalicelib.clock import FakeClock
from chalicelib.config import parse
from chalicelib.manager.dispatch import Ticker, handle_batch, look_at
from chalicelib.manager.pool_queue import FOLLOWUP, TICK, PoolMessage
from chalicelib.services import Services


class CountingQueue:
    def __init__(self) -> None:
        self.messages: list[tuple[PoolMessage, float]] = []

    def send(self, messages: Any, budget_seconds: float | None = None) -> None:
        self.messages.extend(messages)


def _services(client: redis.Redis, pools: int, size: int, clone_seconds: float,
              prefix: str = "bench-fleet:") -> Services:
    lines = "\n".join(f"  - {{name: pool-{n:04d}, size: {size}, provider: dummy}}" for n in range(pools))
    config = parse(f""":config: {{task_limit: 10000, check_loop_delay_min: 5}}
:providers:
  :dummy: {{createvm_max_time: {clone_seconds}, boot_time: 0, seed: 1}}
:pools:
{lines}
""")
    return Services(config, client, clock=FakeClock(), prefix=prefix)


def _fill(services: Services) -> None:
    clock = services.clock
    assert isinstance(clock, FakeClock)
    queue = CountingQueue()
    for _ in range(3):
        for name in services.config.pool_names:
            look_at(services, PoolMessage(name, TICK), queue)
        clock.advance(60)


def run(quick: bool = False) -> dict[str, Any]:
    from local.redis_server import RedisServer

    with RedisServer() as server:
        client = redis.Redis(port=server.port, decode_responses=True)
        try:
            return _run(client, 200 if quick else 1000)
        finally:
            client.close()


def _run(client: redis.Redis, pools: int) -> dict[str, Any]:
    services = _services(client, pools, size=5, clone_seconds=0)
    _fill(services)
    assert all(c["ready"] == 5 for c in services.store.counts(services.config.pool_names).values())

    ticker = Ticker()
    result: dict[str, Any] = {"cores": CORES, "pools": pools}
    with RoundTrips() as counter:
        ticks = []
        for _ in range(6):
            queue = CountingQueue()
            counter.take()
            started = time.perf_counter()
            ticker.tick(services, queue)
            ticks.append({"seconds": time.perf_counter() - started, "round_trips": counter.take(),
                          "messages": len(queue.messages)})
        result["tick_first_ms"] = ms(ticks[0]["seconds"])
        result["tick_ms"] = ms(median([t["seconds"] for t in ticks[1:]]))
        result["tick_round_trips"] = median([t["round_trips"] for t in ticks[1:]])
        result["tick_messages"] = ticks[-1]["messages"]
        result["tick_sqs_calls"] = -(-ticks[-1]["messages"] // 10)

        records = [(str(n), PoolMessage(name, TICK).body()) for n, name in enumerate(services.config.pool_names)]
        batches = []
        queue = CountingQueue()
        counter.take()
        started_all = time.perf_counter()
        for start in range(0, len(records), 10):
            started = time.perf_counter()
            failed = handle_batch(services, records[start:start + 10], queue, lambda: 60.0)
            assert failed == []
            batches.append(time.perf_counter() - started)
        total = time.perf_counter() - started_all
        round_trips = counter.take()
        result["steady_batch_ms"] = ms(median(batches))
        result["steady_pass_ms"] = ms(total / pools)
        result["steady_round_trips_per_pass"] = round(round_trips / pools, 1)
        result["steady_followups"] = len(queue.messages)
        result["steady_all_pools_s"] = round(total, 2)
        # The same passes one message per invocation (an SQS poll finding one message: the event
        # source's MaximumBatchingWindowInSeconds 0): what each invocation bills against a batch.
        singles = []
        for record in records[:200]:
            started = time.perf_counter()
            assert handle_batch(services, [record], queue, lambda: 60.0) == []
            singles.append(time.perf_counter() - started)
        result["steady_batch_of_one_ms"] = ms(median(singles))

        busy = _services(client, 1, size=20, clone_seconds=3600, prefix="bench-busy:")
        queue = CountingQueue()
        look_at(busy, PoolMessage("pool-0000", TICK), queue)  # starts 20 clones that never finish
        samples = []
        for _ in range(21):
            busy.clock.advance(5)  # type: ignore[attr-defined]
            message = queue.messages[-1][0]
            counter.take()
            started = time.perf_counter()
            look_at(busy, message, queue)
            samples.append((time.perf_counter() - started, counter.take()))
        # Clones in flight: looked at again after clone_poll_interval (a whole second on SQS).
        poll = busy.config.service.clone_poll_interval
        assert all(m.reason == FOLLOWUP and delay == poll for m, delay in queue.messages), queue.messages[:3]
        result["busy_followup_delay_s"] = poll
        result["busy_pass_ms"] = ms(median([s for s, _ in samples]))
        result["busy_round_trips"] = median([r for _, r in samples])
    return result
