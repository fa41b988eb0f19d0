"""Sizes by time window: which window of a pool's schedule covers a moment, in the pool's zone."""

from __future__ import annotations

from datetime import datetime
from functools import lru_cache
from zoneinfo import ZoneInfo

from chalicelib.sizing.settings import SizingSettings, Window

DEFAULT_TIMEZONE = "UTC"


@lru_cache(maxsize=64)
def _zone(name: str) -> ZoneInfo:
    return ZoneInfo(name)


def current_window(sizing: SizingSettings, now: float, default_timezone: str | None = None) -> Window | None:
    """The first window of the schedule (in the order written) that covers ``now``, in the
    pool's time zone, else the service's ``sizing_timezone``, else UTC; None outside them all."""
    if not sizing.windows:
        return None
    zone = _zone(sizing.timezone or default_timezone or DEFAULT_TIMEZONE)
    local = datetime.fromtimestamp(now, zone)
    minute = local.hour * 60 + local.minute
    for window in sizing.windows:
        if window.covers(local.weekday(), minute):
            return window
    return None
