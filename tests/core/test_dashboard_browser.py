"""The dashboard in a real browser: the local stack (`python -m local.run`) serves it, headless
Chromium (Debian's `chromium`) runs its JavaScript, and the test reads pool names and counts from
the rendered DOM. It leaves the screenshot at build/dashboard.png (README shows a copy,
docs/dashboard.png)."""

from __future__ import annotations

import re
import shutil
import struct
import subprocess
import time
from contextlib import contextmanager
from html.parser import HTMLParser
from pathlib import Path
from typing import Any, Iterator

import pytest
import redis

from chalicelib.store import Store
from chalicelib.store.history import PoolHistory, Sample, minute_of
from tests.local.stack import REPO_ROOT, call, wait_for
from tests.local.stack import local_stack as running_stack

CONFIG = """\
config: {domain: example.com, check_loop_delay_min: 0.2, task_limit: 10, site_name: "<b>CI pools</b> (staging)"}
providers:
  dummy: {provider_class: dummy, createvm_max_time: 0.3, boot_time: 0.2, destroyvm_max_time: 0.2}
pools:
  - {name: debian-12-x86_64, size: 6, provider: dummy, alias: [debian, linux]}
  - {name: ubuntu-2404-x86_64, size: 4, provider: dummy, alias: [ubuntu, linux]}
  - {name: centos-9-x86_64, size: 3, provider: dummy, alias: centos,
     sizing: {schedule: [{days: daily, start: "00:00", end: "24:00", size: 3}]}}
  - {name: win-2022-x86_64, size: 2, provider: dummy, domain: win.example.com, createvm_fail_percent: 100,
     createvm_fail_kind: host}
"""
HEALTHY = ("debian-12-x86_64", "ubuntu-2404-x86_64", "centos-9-x86_64")
BROKEN = "win-2022-x86_64"
SCREENSHOT = REPO_ROOT / "build" / "dashboard.png"
CHROMIUM = shutil.which("chromium")


@contextmanager
def local_stack(tmp_path: Path, config: str = CONFIG) -> Iterator[tuple[str, int]]:
    """The local stack serving ``config`` on a free port: (its base URL, its Redis port). Stopped
    with Ctrl-C."""
    with running_stack(tmp_path, config, workers=1, interval=5) as stack:
        yield f"http://127.0.0.1:{stack.port}", stack.redis_port


def chromium(url: str, profile: Path, *extra: str, budget_ms: int = 4000) -> str:
    """Run headless Chromium on ``url``, its JavaScript given ``budget_ms`` of virtual time (timers
    run without waiting in real time); its stdout."""
    assert CHROMIUM, "chromium is not installed (Makefile TEST_APT)"
    command = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               f"--user-data-dir={profile}", f"--virtual-time-budget={budget_ms}", *extra, url]
    done = subprocess.run(command, capture_output=True, timeout=90, check=True)
    return done.stdout.decode()


class PoolRows(HTMLParser):
    """Reads the pools table (rows ``tr.pool[data-pool]``), the text of a few elements by id,
    and how many points each line of the history graph has, from the DOM."""

    TEXT_OF = ("site-name", "alerts", "health")
    ROW_TEXTS = ("size-reason", "aliases", "clone", "boot", "clone-failures")

    def __init__(self) -> None:
        super().__init__()
        self.rows: dict[str, dict[str, Any]] = {}
        self.texts: dict[str, str] = {}
        self.graph_points: dict[str, int] = {}
        self._row: dict[str, Any] | None = None
        self._field: str | None = None
        self._capture: str | None = None
        self._depth = 0
        self._text_field: str | None = None  # the row text (ROW_TEXTS) being read
        self._text_depth = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        classes = (attributes.get("class") or "").split()
        if self._text_field:  # an element inside a row's text (an alias's <bdi>)
            self._text_depth += 1
        elif tag == "tr" and "pool" in classes:
            self._row = {"classes": classes}
            self.rows[attributes.get("data-pool") or ""] = self._row
        elif self._row is not None:
            self._field = next((f for f in ("ready", "size", "pending", "running", *self.ROW_TEXTS)
                                if f in classes), None)
            if self._field in self.ROW_TEXTS:  # its whole text, the elements within it too
                self._text_field, self._text_depth, self._field = self._field, 1, None
                self._row[self._text_field] = ""
        if tag == "polyline" and attributes.get("data-points"):
            self.graph_points[classes[0]] = int(attributes["data-points"] or 0)
        if self._capture:
            self._depth += 1
        elif attributes.get("id") in self.TEXT_OF:
            self._capture, self._depth = attributes["id"], 1
            self.texts[self._capture] = ""

    def handle_endtag(self, tag: str) -> None:
        if self._text_field:
            self._text_depth -= 1
            if self._text_depth == 0:
                self._text_field = None
        if tag == "tr":
            self._row = None
        if self._capture:
            self._depth -= 1
            if self._depth == 0:
                self._capture = None

    def handle_data(self, data: str) -> None:
        if self._row is not None and self._text_field:
            self._row[self._text_field] += data
        elif self._row is not None and self._field:
            self._row[self._field] = int(data)
            self._field = None
        if self._capture:
            self.texts[self._capture] += data


def png_size(path: Path) -> tuple[int, int]:
    header = path.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", header[16:24])
    return width, height


def seed_history(redis_port: int) -> None:
    """Three hours of per-minute samples, as the pools' reconciles would have recorded them, so
    the graphs have a past to draw (the stack itself has only run for seconds)."""
    history = PoolHistory(Store(redis.Redis(port=redis_port, decode_responses=True)))
    now = minute_of(time.time())
    sizes = {"debian-12-x86_64": 6, "ubuntu-2404-x86_64": 4, "centos-9-x86_64": 3, BROKEN: 2}
    for pool, size in sizes.items():
        for minute in range(now - 180, now):
            busy = (minute // 15 + len(pool)) % 4  # a few busy spells
            running = min(size, busy + (minute % 5 == 0))
            ready = 0 if pool == BROKEN and minute > now - 45 else size - min(size, running // 2)
            history.record(pool, Sample(minute, ready, running, size - ready, size))


@pytest.mark.slow
def test_dashboard_renders_live_pool_counts_in_chromium(tmp_path: Path) -> None:
    with local_stack(tmp_path) as (base, redis_port):
        def pools() -> dict[str, Any]:
            return call("GET", f"{base}/api/v3/status?view=pools")[1]["pools"]

        wait_for(lambda: all(pools()[p]["ready"] == pools()[p]["max"] for p in HEALTHY), 20, "the pools to fill")
        status, body = call("POST", f"{base}/api/v3/vm", {"debian": 2, "centos": 1})
        assert status == 200, body
        wait_for(lambda: all(pools()[p]["ready"] == pools()[p]["max"] for p in HEALTHY), 20, "the refill")
        seed_history(redis_port)

        dom = chromium(f"{base}/dashboard/", tmp_path / "profile-dom", "--dump-dom")
        now = pools()
        SCREENSHOT.parent.mkdir(exist_ok=True)
        SCREENSHOT.unlink(missing_ok=True)
        chromium(f"{base}/", tmp_path / "profile-shot", f"--screenshot={SCREENSHOT}", "--window-size=1280,900")

    page = PoolRows()
    page.feed(dom)
    assert page.texts["site-name"].strip() == "CI pools (staging)"
    assert set(page.rows) == set(now)
    for name in HEALTHY:
        row = page.rows[name]
        assert (row["ready"], row["size"], row["pending"], row["running"]) == (
            now[name]["ready"], now[name]["max"], now[name]["pending"], now[name]["running"]), name
        assert "empty" not in row["classes"]
    assert page.rows["debian-12-x86_64"]["running"] == 2 and page.rows["centos-9-x86_64"]["running"] == 1
    # Where a pool's size comes from, when not simply its config (docs/sizing.md).
    assert page.rows["centos-9-x86_64"]["size-reason"] == "size: schedule daily 00:00-24:00"
    assert "size-reason" not in page.rows["debian-12-x86_64"]
    broken = page.rows[BROKEN]
    assert (broken["ready"], broken["size"]) == (0, 2) and "empty" in broken["classes"]
    assert BROKEN in page.texts["alerts"] and page.texts["health"].strip() == "1 empty"
    # Its clones fail, and the page says so: first among the problems, flagged in its row and the
    # alerts (before, it looked like a pool refilling until it was empty, then like any empty one).
    assert next(iter(page.rows)) == BROKEN and "failing" in broken["classes"]
    # With the kind of the last failure, which says where to look (before, the count alone).
    assert re.fullmatch(r"clones failing: \d+ in a row, host", broken["clone-failures"]), broken
    assert re.search(rf"Clones failing: these pools cannot refill; see the reconcile logs for why. {BROKEN} "
                     r"\(\d+ in a row, host\)", page.texts["alerts"]), page.texts["alerts"]
    assert not any("failing" in page.rows[name]["classes"] or "clone-failures" in page.rows[name] for name in HEALTHY)
    # The history graph drew the seeded hour: a point per minute for each line.
    assert page.graph_points["ready"] >= 59 and page.graph_points["running"] >= 59
    # The screenshot was taken through / (the redirect) at the size asked for.
    assert png_size(SCREENSHOT) == (1280, 900)
