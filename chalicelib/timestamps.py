"""How the service writes points in time where vmpooler's clients and keys expect its formats.

Plain functions of epoch seconds (from the injected Clock), used by the API and the manager alike.
"""

from __future__ import annotations

from datetime import datetime, timezone


def day_of(timestamp: float) -> str:
    """The UTC day a timestamp falls on, as /summary keys it (``2024-05-01``)."""
    return datetime.fromtimestamp(timestamp, timezone.utc).strftime("%Y-%m-%d")


def ruby_time(timestamp: float) -> str:
    """vmpooler's time format for lastBoot and similar fields: ``2024-05-01 10:00:00 +0000``."""
    return datetime.fromtimestamp(timestamp, timezone.utc).strftime("%Y-%m-%d %H:%M:%S +0000")
