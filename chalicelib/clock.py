"""Time as the service sees it. The manager and the store take a Clock so tests can use a fake one."""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    def now(self) -> float:
        """Seconds since the epoch."""
        ...

    def monotonic(self) -> float:
        """Seconds on a clock that never goes back: for budgets and durations."""
        ...


class SystemClock:
    """The real wall clock."""

    def now(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()


class FakeClock:
    """A clock that moves only when told to: for tests and simulations."""

    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self._now = start

    def now(self) -> float:
        return self._now

    def monotonic(self) -> float:
        """Moves with ``now``: a test advances both at once."""
        return self._now

    def advance(self, seconds: float) -> None:
        self._now += seconds
