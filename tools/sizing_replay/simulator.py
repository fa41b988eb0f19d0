"""Replay of checkout traces against pool sizing: demand sizing versus the best fixed size.

The simulator and the comparison; bench/sizing.py runs it on the shipped scenarios
(`make bench`, section "sizing"), the tests on small traces.

A deterministic simulation, minute by minute on a fake clock, of one pool of a dummy-like
provider whose clones take ``clone_minutes`` and boots ``boot_minutes``:

1. VMs whose clone and boot are done become ready;
2. the trace's checkouts of the minute take ready VMs, oldest first; a checkout finding none is a
   miss (vmpool would answer 503 or fall back to an on-demand clone);
3. a reconcile pass: the pool's size is asked of ``SizeController.target`` - the very code the
   reconcile pass runs, on an in-memory backend instead of Redis - ready VMs above it that have
   been ready for the drain grace leave (oldest first; pending ones finish first, as the pass
   does), and clones start until ready + pending reach it;
4. every VM ready or pending (existing, not checked out) counts an idle minute.

Checked-out VMs are destroyed when returned (as vmpool does), so they never come back to the pool.
The first week warms the history up; misses and idle VM-hours are counted over the second week.

A fixed size is the same loop with a constant size. The best fixed size (issue 15) is the
smallest size with the same or fewer misses than demand sizing; the pass criterion is at least
50 % fewer misses at equal or fewer idle VM-hours (against the smallest fixed size idling as
much or more), or equal misses at 30 % fewer idle VM-hours (against the best fixed size, whose
misses are the same or fewer by construction).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from chalicelib.config import PoolConfig, parse
from chalicelib.sizing import demand
from chalicelib.sizing.controller import DemandState, Inputs, SizeController
from tools.sizing_replay.traces import MINUTES_PER_DAY, Trace, all_traces

WARMUP_DAYS = 7
MAX_FIXED_SIZE = 400

DEMAND_POOL = """\
pools:
  - name: sim
    size: 1
    provider: dummy
    sizing:
      demand: {demand}
"""


def demand_pool(**demand_keys: float) -> PoolConfig:
    """A pool with demand sizing (min 1, max 80 and the defaults unless given), parsed from YAML
    as the service would."""
    keys = {"min": 1, "max": 80, **demand_keys}
    block = "{" + ", ".join(f"{name}: {value}" for name, value in keys.items()) + "}"
    pool = parse(DEMAND_POOL.format(demand=block)).pool("sim")
    assert pool is not None
    return pool


class MemoryBackend:
    """The controller's backend in memory: demand per epoch minute, the days a pass ran, the state."""

    def __init__(self, lead_seconds: float) -> None:
        self.counts: dict[int, int] = {}
        self.seen_days: set[str] = set()
        self.state: DemandState | None = None
        self.lead_seconds = lead_seconds
        self.measured = False

    def record(self, minute: int, count: int) -> None:
        if count:
            self.counts[minute] = self.counts.get(minute, 0) + count

    def load(self, pool: str, now: float, with_demand: bool) -> Inputs:
        if with_demand:
            self.seen_days.add(demand.day_and_minute(demand.epoch_minute(now))[0])
        return Inputs(None, self.state, self.lead_seconds if self.measured else None)

    def demand(self, pool: str, windows: Sequence[demand.Window]) -> list[list[int] | None]:
        result: list[list[int] | None] = []
        for window in windows:
            known = all(day in self.seen_days for day, _ in window.segments())
            minutes = range(window.start, window.start + window.length)
            result.append([self.counts.get(minute, 0) for minute in minutes] if known else None)
        return result

    def save(self, pool: str, now: float, state: DemandState) -> DemandState:
        self.state = state
        return state


@dataclass
class Outcome:
    misses: int = 0
    checkouts: int = 0
    idle_vm_minutes: int = 0
    sizes: list[int] = field(default_factory=list)

    @property
    def idle_vm_hours(self) -> float:
        return self.idle_vm_minutes / 60


Sizer = Callable[[float], int]


def simulate(trace: Trace, sizer: Sizer, lead_minutes: int, grace_minutes: float = 0.0,
             on_checkout: Callable[[int, int], None] | None = None, on_ready: Callable[[], None] | None = None,
             measure_from: int = WARMUP_DAYS * MINUTES_PER_DAY, keep_sizes: bool = False) -> Outcome:
    """Replay ``trace``; ``sizer(now)`` is the pool's size at each pass. Counts from ``measure_from``."""
    outcome = Outcome()
    pending: deque[int] = deque()  # minute each clone becomes ready (non-decreasing: one lead time)
    ready: deque[int] = deque()  # minute each ready VM became ready, oldest first
    start_minute = demand.epoch_minute(trace.start)
    for offset, wanted in enumerate(trace.demand):
        minute = start_minute + offset
        while pending and pending[0] <= offset:
            ready.append(pending.popleft())
            if on_ready:
                on_ready()
        served = min(wanted, len(ready))
        for _ in range(served):
            ready.popleft()
        if on_checkout:
            on_checkout(minute, wanted)
        size = sizer(minute * 60.0 + 30)
        # As pool_changes.drain_and_retire: ready VMs above the size, oldest first, past the grace;
        # pending ones finish first.
        while len(ready) > size and offset - ready[0] >= grace_minutes:
            ready.popleft()
        for _ in range(size - len(ready) - len(pending)):
            pending.append(offset + lead_minutes)
        if offset >= measure_from:
            outcome.misses += wanted - served
            outcome.checkouts += served
            outcome.idle_vm_minutes += len(ready) + len(pending)
            if keep_sizes:
                outcome.sizes.append(size)
    return outcome


def simulate_fixed(trace: Trace, size: int, lead_minutes: int) -> Outcome:
    return simulate(trace, lambda now: size, lead_minutes)


def simulate_demand(trace: Trace, pool: PoolConfig, lead_minutes: int, keep_sizes: bool = False) -> Outcome:
    """Replay with the pool's size from the controller the reconcile pass uses."""
    backend = MemoryBackend(lead_seconds=lead_minutes * 60.0)
    controller = SizeController(backend, "UTC")
    settings = pool.sizing.demand

    def ready() -> None:
        backend.measured = True  # the first VM ready gives the pool a measured clone+boot time

    return simulate(trace, lambda now: controller.target(pool, now).size, lead_minutes,
                    grace_minutes=settings.drain_grace_minutes, on_checkout=backend.record, on_ready=ready,
                    keep_sizes=keep_sizes)


def smallest_size(trace: Trace, lead_minutes: int, good: Callable[[Outcome], bool]) -> tuple[int, Outcome]:
    """The smallest fixed size whose outcome is ``good`` (misses fall as the size grows)."""
    low, high = 0, MAX_FIXED_SIZE
    outcomes: dict[int, Outcome] = {}
    while low < high:
        middle = (low + high) // 2
        outcomes[middle] = simulate_fixed(trace, middle, lead_minutes)
        if good(outcomes[middle]):
            high = middle
        else:
            low = middle + 1
    return low, outcomes.get(low) or simulate_fixed(trace, low, lead_minutes)


@dataclass(frozen=True)
class Scenario:
    trace: Trace
    clone_minutes: int
    boot_minutes: int

    @property
    def lead(self) -> int:
        return self.clone_minutes + self.boot_minutes


def scenarios() -> list[Scenario]:
    traces = {trace.name: trace for trace in all_traces()}
    return [
        Scenario(traces["ci-fleet"], 3, 2),
        Scenario(traces["nightly-heavy"], 3, 2),
        Scenario(traces["release-week"], 3, 2),
        Scenario(traces["small-team"], 6, 4),
    ]


def compare(scenario: Scenario, pool: PoolConfig | None = None) -> dict[str, Any]:
    """Demand sizing against fixed sizes on one scenario, with the issue's verdict."""
    trace, lead = scenario.trace, scenario.lead
    sized = simulate_demand(trace, pool or demand_pool(), lead)
    best_size, best = smallest_size(trace, lead, lambda o: o.misses <= sized.misses)
    # The fixed size with equal or more idle VM-hours than demand sizing: the smallest such.
    same_idle_size, same_idle = smallest_size(trace, lead, lambda o: o.idle_vm_minutes >= sized.idle_vm_minutes)
    idle_saving = 1 - sized.idle_vm_minutes / best.idle_vm_minutes if best.idle_vm_minutes else 0.0
    miss_saving = 1 - sized.misses / same_idle.misses if same_idle.misses else 0.0
    # The best fixed size has the same or fewer misses by construction: demand sizing must save
    # 30 % of its idle VM-hours; or halve the misses of a fixed size idling as much or more.
    passed = idle_saving >= 0.30 or miss_saving >= 0.50
    return {
        "trace": trace.name, "seed": trace.seed, "lead_minutes": lead,
        "demand": sum(trace.demand[WARMUP_DAYS * MINUTES_PER_DAY:]),
        "demand_sizing": {"misses": sized.misses, "idle_vm_hours": round(sized.idle_vm_hours, 1)},
        "best_fixed": {"size": best_size, "misses": best.misses, "idle_vm_hours": round(best.idle_vm_hours, 1)},
        "same_idle_fixed": {"size": same_idle_size, "misses": same_idle.misses,
                            "idle_vm_hours": round(same_idle.idle_vm_hours, 1)},
        "idle_saving_percent": round(idle_saving * 100, 1),
        "miss_saving_percent": round(miss_saving * 100, 1),
        "passed": passed,
    }
