"""A pool's ``sizing`` block: sizes by time window and demand-aware sizing, validated at load.

    pools:
      - name: debian-12-x86_64
        size: 5                        # the size outside every window (and without demand sizing)
        sizing:
          timezone: Europe/Berlin      # else config.sizing_timezone, else UTC
          schedule:
            - {days: weekdays, start: "07:00", end: "19:00", size: 40}
          demand: {min: 2, max: 60}    # opt-in; see docs/sizing.md for every key

The config loader calls ``parse_sizing`` for the block and keeps the result (a frozen
``SizingSettings``) in the pool's settings under ``sizing``.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any, Mapping
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

DAY_NAMES = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
DAY_GROUPS = {
    "weekdays": frozenset(range(5)),
    "weekends": frozenset({5, 6}),
    "daily": frozenset(range(7)),
    "everyday": frozenset(range(7)),
}
TIME_PATTERN = re.compile(r"^([01]?[0-9]|2[0-3]):([0-5][0-9])\Z|^24:00\Z")
TIMEZONE_PATTERN = re.compile(r"^[A-Za-z0-9_+-]{1,30}(/[A-Za-z0-9_+-]{1,30}){0,3}\Z")
"""The shape of an IANA zone name (``America/Argentina/Buenos_Aires``, ``Etc/GMT+5``)."""
MAX_WINDOWS = 50
MAX_SIZE = 10000
MAX_LEAD_TIME_MINUTES = 240
"""The longest clone + boot time sizing plans for, configured (``lead_time``) or measured."""


class SizingConfigError(ValueError):
    """A ``sizing`` block is invalid; the message names the key."""


@dataclass(frozen=True)
class Window:
    """Sizes ``size`` on ``days`` (0 = Monday) from ``start`` to ``end`` (minutes after local
    midnight). A window with ``end <= start`` runs past midnight into the next day."""

    days: frozenset[int]
    start: int
    end: int
    size: int
    label: str
    """How it was written, for ``size_reason``: ``weekdays 07:00-19:00``."""

    def covers(self, weekday: int, minute: int) -> bool:
        """Whether local ``weekday`` (0 = Monday) at ``minute`` after midnight is inside."""
        if self.start < self.end:
            return weekday in self.days and self.start <= minute < self.end
        # Past midnight: the evening part belongs to its day, the morning part to the day before.
        return ((weekday in self.days and minute >= self.start)
                or ((weekday - 1) % 7 in self.days and minute < self.end))


@dataclass(frozen=True)
class DemandSettings:
    """Demand-aware sizing of one pool (docs/sizing.md explains each)."""

    min: int
    max: int
    cooldown_minutes: int = 10
    drain_grace_minutes: int = 5
    recent_minutes: int = 10
    safety: float = 2.0
    lead_time_minutes: float = 10.0
    """Clone + boot time assumed until the pool has measured its own (today's or yesterday's)."""


@dataclass(frozen=True)
class SizingSettings:
    windows: tuple[Window, ...] = ()
    timezone: str | None = None
    demand: DemandSettings | None = None
    source: Any = field(default=None, compare=False)
    """The block as written, in plain JSON types: what GET /config shows."""


def _int(value: Any, path: str, minimum: int = 0, maximum: int = MAX_SIZE) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not minimum <= value <= maximum:
        raise SizingConfigError(f"{path}: must be an integer from {minimum} to {maximum}, got {value!r}")
    return value


def _number(value: Any, path: str, minimum: float, maximum: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not minimum <= value <= maximum:
        raise SizingConfigError(f"{path}: must be a number from {minimum:g} to {maximum:g}, got {value!r}")
    return float(value)


def _time(value: Any, path: str) -> int:
    # YAML 1.1 reads an unquoted 07:00 as the sexagesimal number 420; accept it as minutes.
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 1440:
        return value
    if not isinstance(value, str) or not TIME_PATTERN.match(value.strip()):
        raise SizingConfigError(f"{path}: must be a time HH:MM, got {value!r}")
    hours, minutes = value.strip().split(":")
    return int(hours) * 60 + int(minutes)


FULL_DAY_NAMES = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")


def _day(name: str) -> int | None:
    """A day (0 = Monday) from its name: the full name (``sunday``, ``sundays``) or its first
    three letters or more (``mon``, ``tues``, ``thurs``); None for anything else (``monkey``,
    ``satan``): a typo must fail the load, not size the pool on some other day."""
    if name.endswith("s") and name[:-1] in FULL_DAY_NAMES:
        name = name[:-1]
    if len(name) < 3:
        return None
    return next((day for day, full in enumerate(FULL_DAY_NAMES) if full.startswith(name)), None)


def _days(value: Any, path: str) -> frozenset[int]:
    names = value if isinstance(value, list) else str(value).replace(" ", "").split(",")
    days: set[int] = set()
    for name in names:
        text = str(name).lower()
        first, _, last = text.partition("-")
        ends = (_day(first), _day(last)) if last else (None, None)
        if text in DAY_GROUPS:
            days |= DAY_GROUPS[text]
        elif ends[0] is not None and ends[1] is not None:
            days |= {(ends[0] + offset) % 7 for offset in range((ends[1] - ends[0]) % 7 + 1)}
        elif (day := _day(text)) is not None:
            days.add(day)
        else:
            raise SizingConfigError(
                f"{path}: must name days (weekdays, weekends, daily, mon..sun, mon-fri), got {name!r}")
    if not days:
        raise SizingConfigError(f"{path}: must name at least one day")
    return frozenset(days)


def _hhmm(minute: int) -> str:
    return f"{minute // 60:02d}:{minute % 60:02d}"


def check_timezone(value: Any, path: str = "timezone") -> str:
    """An IANA time zone name that zoneinfo knows (``Europe/Berlin``, ``UTC``). Only the shape of
    one reaches zoneinfo, which opens it as a file under the zone database: a directory there
    (``Europe``), a name too long for a file or nested thousands of levels deep would fail with
    an OSError or a RecursionError instead of this message."""
    if not isinstance(value, str) or not TIMEZONE_PATTERN.match(value):
        shown = value if not isinstance(value, str) or len(value) <= 40 else value[:40] + "..."
        raise SizingConfigError(f"{path}: must be a time zone name such as Europe/Berlin, got {shown!r}")
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise SizingConfigError(f"{path}: unknown time zone {value!r}") from None
    return value


def _window(raw: Any, path: str) -> Window:
    if not isinstance(raw, Mapping):
        raise SizingConfigError(f"{path}: must be a mapping with days, start, end and size")
    unknown = set(raw) - {"days", "start", "end", "size"}
    if unknown:
        raise SizingConfigError(f"{path}: unknown keys {', '.join(sorted(map(str, unknown)))}")
    for key in ("start", "end", "size"):
        if key not in raw:
            raise SizingConfigError(f"{path}.{key}: is required")
    days_raw = raw.get("days", "daily")
    days = _days(days_raw, f"{path}.days")
    start, end = _time(raw["start"], f"{path}.start"), _time(raw["end"], f"{path}.end")
    if start == 1440:
        raise SizingConfigError(f"{path}.start: must be before 24:00")
    end = end or 1440  # an end of 00:00 is the midnight that ends the day
    if start == end:
        raise SizingConfigError(f"{path}: start and end are the same time")
    days_label = days_raw if isinstance(days_raw, str) else ",".join(map(str, days_raw))
    return Window(days=days, start=start, end=end, size=_int(raw["size"], f"{path}.size"),
                  label=f"{days_label} {_hhmm(start)}-{_hhmm(end)}")


DEMAND_KEYS = {"min", "max", "cooldown", "drain_grace", "recent_minutes", "safety", "lead_time"}


def _demand(raw: Any, path: str) -> DemandSettings | None:
    if raw is None or raw is False:
        return None
    if raw is True:
        raise SizingConfigError(f"{path}: needs at least max (for example {{min: 1, max: 40}})")
    if not isinstance(raw, Mapping):
        raise SizingConfigError(f"{path}: must be a mapping such as {{min: 1, max: 40}}")
    unknown = set(raw) - DEMAND_KEYS
    if unknown:
        raise SizingConfigError(f"{path}: unknown keys {', '.join(sorted(map(str, unknown)))}")
    if "max" not in raw:
        raise SizingConfigError(f"{path}.max: is required")
    low = _int(raw.get("min", 0), f"{path}.min")
    high = _int(raw["max"], f"{path}.max")
    if high < low:
        raise SizingConfigError(f"{path}.max: must be at least min ({low}), got {high}")
    defaults = DemandSettings(low, high)
    return DemandSettings(
        min=low,
        max=high,
        cooldown_minutes=_int(raw.get("cooldown", defaults.cooldown_minutes), f"{path}.cooldown", 0, 1440),
        drain_grace_minutes=_int(raw.get("drain_grace", defaults.drain_grace_minutes), f"{path}.drain_grace", 0, 1440),
        recent_minutes=_int(raw.get("recent_minutes", defaults.recent_minutes), f"{path}.recent_minutes", 1, 120),
        safety=_number(raw.get("safety", defaults.safety), f"{path}.safety", 0, 10),
        lead_time_minutes=_number(raw.get("lead_time", defaults.lead_time_minutes), f"{path}.lead_time", 0.1,
                                  MAX_LEAD_TIME_MINUTES),
    )


def parse_sizing(raw: Any) -> SizingSettings:
    """Validate a pool's ``sizing`` block. Raises SizingConfigError naming the bad key (relative
    to the block: ``schedule[0].start``)."""
    if isinstance(raw, SizingSettings):
        return raw
    if not isinstance(raw, Mapping):
        raise SizingConfigError("must be a mapping with schedule, demand and/or timezone")
    unknown = set(raw) - {"schedule", "demand", "timezone"}
    if unknown:
        raise SizingConfigError(f"unknown keys {', '.join(sorted(map(str, unknown)))}")
    schedule = raw.get("schedule") or []
    if not isinstance(schedule, list):
        raise SizingConfigError("schedule: must be a list of windows")
    if len(schedule) > MAX_WINDOWS:
        raise SizingConfigError(f"schedule: at most {MAX_WINDOWS} windows")
    timezone = raw.get("timezone")
    return SizingSettings(
        windows=tuple(_window(item, f"schedule[{index}]") for index, item in enumerate(schedule)),
        timezone=check_timezone(timezone) if timezone is not None else None,
        demand=_demand(raw.get("demand"), "demand"),
        source=json.loads(json.dumps(raw, default=str)),
    )
