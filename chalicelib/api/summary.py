"""/summary: clone and boot durations and tag counts per day, from what the manager recorded.

Shapes follow vmpooler's; its bugs are not kept: the range-wide durations carry min, max and a
true average, and bad dates are JSON 400s (never plain text or a 500).
"""

from __future__ import annotations

import re
from datetime import date, datetime, timedelta, timezone
from typing import Any

from chalicelib.answer_sizes import ANSWER_LIMIT_BYTES, summary_day_bytes
from chalicelib.api.http import (
    ANSWER_BUDGET_BYTES,
    ApiRequest,
    ApiResponse,
    bad_request,
    json_length,
    not_found,
    shown,
)
from chalicelib.services import Services
from chalicelib.store import DayStats

SECTIONS = ("boot", "clone", "tag")
MAX_DAYS = 366
DATE_PATTERN = re.compile(r"^[0-9]{4}-[0-9]{2}-[0-9]{2}\Z")
"""ASCII digits only: ``\\d`` matched 2026-12-01 in Arabic-Indic digits, refused after as no date."""


def _parse_day(name: str, value: str) -> date:
    if not DATE_PATTERN.match(value):
        raise bad_request(f"Invalid date format '{shown(value)}', must match YYYY-MM-DD.")
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise bad_request(f"Invalid date '{value}' for '{name}'.") from None


def most_days(services: Services) -> int:
    """The longest range a summary answers: a year, or fewer days when the pools' figures would
    not fit ANSWER_BUDGET_BYTES (a year of 1,000 pools would be about 90 MB, read from Redis
    first)."""
    per_day = summary_day_bytes(services.config.pools)  # and once more for the range
    return max(1, min(MAX_DAYS, ANSWER_BUDGET_BYTES // max(per_day, 1) - 1))


DAYS_PER_READ = 4
"""Days of statistics read from Redis at a time while their tags are measured (a day holds at
most about 1.7 MB of them)."""


def _tag_bytes(stats: DayStats) -> int:
    """About what a day's tag counts take in a summary: each value once in its day and once in the
    range's totals, as JSON writes it (a value of control characters takes up to six times its
    length there: counted by its length, one day of them was a 15 MB answer)."""
    return sum(2 * (json_length(name) + len(value) + 4) for name, value in stats.values.items()
               if name.startswith("tag:"))


def _read_days(services: Services, days: list[str]) -> list[DayStats]:
    """The statistics of ``days``, read a few days at a time, refused (400) as soon as their tag
    counts would not fit ANSWER_BUDGET_BYTES, or not beside the pools' figures of those days one
    answer as Lambda sends it (answer_sizes.ANSWER_LIMIT_BYTES): tags need no token, so anyone may fill a day's
    with the most names and values it keeps (about 1.7 MB of answer), and a range of such days
    was API Gateway's 502, or for a year some 600 MB read into one worker."""
    found: list[DayStats] = []
    tag_bytes = 0
    pool_bytes = summary_day_bytes(services.config.pools)
    for start in range(0, len(days), DAYS_PER_READ):
        for stats in services.store.day_stats(days[start:start + DAYS_PER_READ]):
            tag_bytes += _tag_bytes(stats)
            # The pools' figures of the days read count too: 20 days of 1,000 pools' (4 MB) and
            # one day full of tags (3.3 MB) were one answer of 7 MB.
            if tag_bytes > ANSWER_BUDGET_BYTES or tag_bytes + pool_bytes * (len(found) + 2) > ANSWER_LIMIT_BYTES:
                fits = max(len(found), 1)
                raise bad_request("Date range is invalid, the tags counted in it would not fit one answer; "
                                  f"ask for at most {fits} day{'s' if fits > 1 else ''} from {days[0]}.")
            found.append(stats)
    return found


def _days(services: Services, request: ApiRequest) -> list[str]:
    today = datetime.fromtimestamp(services.clock.now(), timezone.utc).date()
    first = _parse_day("from", request.query.get("from") or today.isoformat())
    last = _parse_day("to", request.query.get("to") or today.isoformat())
    if last < first:
        raise bad_request("Date range is invalid, 'to' cannot come before 'from'.")
    if first > today:
        raise bad_request("Date range is invalid, 'from' must be in the past.")
    most = most_days(services)
    if (last - first).days >= most:
        pools = len(services.config.pools)
        raise bad_request(f"Date range is invalid, at most {most} days may be asked for"
                          + (f" with {pools} pools." if most < MAX_DAYS else "."))
    return [(first + timedelta(days=offset)).isoformat() for offset in range((last - first).days + 1)]


def _number(value: float) -> float | int:
    return round(value, 2) if value != int(value) else int(value)


def _stats(stats: DayStats, scope: str) -> dict[str, float | int]:
    count = int(stats.number(f"{scope}:count"))
    total = stats.number(f"{scope}:total")
    return {
        "average": _number(round(total / count, 1)) if count else 0,
        "min": _number(stats.number(f"{scope}:min")),
        "max": _number(stats.number(f"{scope}:max")),
        "total": _number(total),
        "count": count,
    }


def _pools_in(stats: DayStats, kind: str) -> list[str]:
    marker = f"{kind}:pool:"
    return sorted({name[len(marker):].rsplit(":", 1)[0] for name in stats.values if name.startswith(marker)})


def day_metrics(stats: DayStats, kind: str, per_pool: bool = True) -> dict[str, Any]:
    """One day's ``boot`` or ``clone`` figures in vmpooler's shape."""
    overall = _stats(stats, kind)
    duration: dict[str, Any] = {key: overall[key] for key in ("average", "min", "max", "total")}
    count: dict[str, Any] = {"total": overall["count"]}
    if per_pool and overall["count"]:
        duration["pool"] = {}
        count["pool"] = {}
        for pool in _pools_in(stats, kind):
            figures = _stats(stats, f"{kind}:pool:{pool}")
            duration["pool"][pool] = {key: figures[key] for key in ("total", "average", "min", "max")}
            count["pool"][pool] = {"total": figures["count"]}
    return {"duration": duration, "count": count}


def _range_metrics(days: list[DayStats], kind: str) -> dict[str, Any]:
    """Figures over a range: true min/max/average of durations, and per-day count statistics."""
    per_day = [_stats(stats, kind) for stats in days]
    samples = sum(day["count"] for day in per_day)
    total = sum(day["total"] for day in per_day)
    with_data = [day for day in per_day if day["count"]]
    counts = [day["count"] for day in per_day]
    duration: dict[str, Any] = {
        "average": _number(round(total / samples, 1)) if samples else 0,
        "min": min((day["min"] for day in with_data), default=0),
        "max": max((day["max"] for day in with_data), default=0),
        "total": _number(total),
        "pool": {},
    }
    count: dict[str, Any] = {
        "average": _number(round(samples / len(days), 1)) if days else 0,
        "min": min(counts, default=0),
        "max": max(counts, default=0),
        "total": samples,
        "pool": {},
    }
    pools = sorted({pool for stats in days for pool in _pools_in(stats, kind)})
    for pool in pools:
        figures = [_stats(stats, f"{kind}:pool:{pool}") for stats in days]
        figures = [f for f in figures if f["count"]]
        pool_samples = sum(f["count"] for f in figures)
        pool_total = sum(f["total"] for f in figures)
        duration["pool"][pool] = {
            "total": _number(pool_total),
            "average": _number(round(pool_total / pool_samples, 1)) if pool_samples else 0,
            # default: a pool whose count is broken in Redis on every day has figures but no samples
            "min": min((f["min"] for f in figures), default=0),
            "max": max((f["max"] for f in figures), default=0),
        }
        count["pool"][pool] = {"total": pool_samples}
    return {"duration": duration, "count": count}


def _day_tags(stats: DayStats) -> dict[str, dict[str, int]]:
    """Each tag's count of each value, and ``total``, the tag's count of all its values. A value
    a caller wrote as ``total`` is counted in that total only: vmpooler's shape has no other place
    for it (it was counted twice in the total before)."""
    values: dict[str, dict[str, int]] = {}
    for name in stats.values:
        if not name.startswith("tag:"):
            continue
        tag, _, tag_value = name[4:].partition(":")
        counts = values.setdefault(tag, {})
        counts[tag_value] = counts.get(tag_value, 0) + int(stats.number(name))
    return {tag: {**counts, "total": sum(counts.values())} for tag, counts in values.items()}


def _range_tags(days: list[DayStats]) -> dict[str, dict[str, int]]:
    tags: dict[str, dict[str, int]] = {}
    for stats in days:
        for tag, values in _day_tags(stats).items():
            entry = tags.setdefault(tag, {})
            for value, count in values.items():
                entry[value] = entry.get(value, 0) + count
    return tags


def _select(figures: dict[str, Any], key: str | None) -> dict[str, Any]:
    if key is None:
        return figures
    return {key: figures[key]} if key in figures else {}


def summary(services: Services, request: ApiRequest) -> ApiResponse:
    """GET /summary, /summary/<section> and /summary/<section>/<key>. /summary/boot and
    /summary/clone read no tag counts (store.day_figures): their ranges are bounded by the pools'
    figures alone, and the dashboard's polls carry no tags."""
    names = _days(services, request)
    section = request.params.get("section")
    key = request.params.get("key")
    if section is not None and section not in SECTIONS:
        raise not_found(error=f"unknown summary section {shown(section)}")
    if section in ("boot", "clone"):
        figures = services.store.day_figures(names)
        return ApiResponse(200, {
            section: _select(_range_metrics(figures, section), key),
            "daily": [{"date": stats.day, section: _select(day_metrics(stats, section), key)} for stats in figures],
        })
    days = _read_days(services, names)
    if section == "tag":
        return ApiResponse(200, {
            "tag": _select(_range_tags(days), key),
            "daily": [{"date": stats.day, "tag": _select(_day_tags(stats), key)} for stats in days],
        })
    return ApiResponse(200, {
        "daily": [
            {"date": stats.day, "boot": day_metrics(stats, "boot"), "clone": day_metrics(stats, "clone"),
             "tag": _day_tags(stats)}
            for stats in days
        ],
        "boot": _range_metrics(days, "boot"),
        "clone": _range_metrics(days, "clone"),
        "tag": _range_tags(days),
    })
