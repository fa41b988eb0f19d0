"""The dashboard updates itself: headless Chromium loads the page once from the app served
in-process over HTTP, the pools change after its first poll, and the rendered DOM shows the
change with no second page load."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

import app
from chalicelib.store import DurationSample
from chalicelib.timestamps import day_of
from tests.api.test_dashboard import CONFIG, POOLS, tick
from tests.core.test_dashboard_browser import PoolRows, chromium
from tests.harness import Harness
from tests.in_process_http import make_server


class OneAtATime:
    """The gateway, serialised (one Chalice app must not serve two requests at once), counting
    page loads and status polls, and running ``on_second_poll`` before the page's second poll."""

    def __init__(self, gateway: Any, on_second_poll: Callable[[], None]) -> None:
        self.gateway = gateway
        self.on_second_poll = on_second_poll
        self.lock = threading.Lock()
        self.page_loads = 0
        self.status_polls = 0

    def __call__(self, method: str, target: str, *args: Any) -> Any:
        with self.lock:
            if target.startswith("/dashboard") and "/stats/" not in target:
                self.page_loads += 1
            if target.startswith("/api/v3/status"):
                self.status_polls += 1
                if self.status_polls == 2:
                    self.on_second_poll()
            return self.gateway(method, target, *args)


def checkout_then_wait(stack: Harness) -> None:
    """A checkout, and the page's 5 s to its next poll on the service's clock (Chromium's virtual
    time does not move it): the page accepts a /status up to 4 s old (api/feed_cache.py)."""
    stack.post("/api/v3/vm", {"debian": 2})
    stack.clock.advance(5)


@pytest.fixture
def served(make_stack: Callable[[str], Harness]) -> Iterator[tuple[Harness, str, OneAtATime]]:
    stack = make_stack(CONFIG)
    for _ in range(3):
        tick(stack)
        stack.clock.advance(60)
    server = make_server(app.app, "127.0.0.1", 0)  # a port the kernel picks: nothing can take it first
    port = server.server_port
    handler = server.RequestHandlerClass
    counting = OneAtATime(handler.gateway, lambda: checkout_then_wait(stack))  # type: ignore[attr-defined]
    handler.gateway = counting  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    thread.start()
    try:
        yield stack, f"http://127.0.0.1:{port}", counting
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@pytest.mark.slow
def test_the_page_polls_and_redraws_without_a_reload(served: tuple[Harness, str, OneAtATime], tmp_path: Path) -> None:
    stack, base, counting = served
    before = stack.get("/api/v3/status?view=pools").json["pools"]["debian-12-x86_64"]
    assert before["running"] == 0 and before["ready"] == 3
    # 12 s of the page's time: its first status poll, then two more 5 s apart.
    dom = chromium(f"{base}/dashboard/", tmp_path / "profile", "--dump-dom", budget_ms=12000)
    assert counting.page_loads == 1 and counting.status_polls >= 2
    page = PoolRows()
    page.feed(dom)
    assert set(page.rows) == set(POOLS)
    debian = page.rows["debian-12-x86_64"]
    # The checkout made between its polls is on the page: two running, one ready.
    assert (debian["running"], debian["ready"], debian["size"]) == (2, 1, 3)


class Recording:
    """The gateway, serialised, keeping the target and body of each answer it gives."""

    def __init__(self, gateway: Any) -> None:
        self.gateway = gateway
        self.lock = threading.Lock()
        self.answers: list[tuple[str, bytes]] = []

    def __call__(self, method: str, target: str, *args: Any) -> Any:
        with self.lock:
            status, headers, body = self.gateway(method, target, *args)
            self.answers.append((target, body))
            return status, headers, body


@pytest.mark.slow
def test_the_page_downloads_no_tags_while_a_day_is_full_of_them(make_stack: Callable[[str], Harness],
                                                               tmp_path: Path) -> None:
    """The page showed each pool's clone and boot times from all of /summary, polled every
    minute: today's tag counts came with it, which anyone may fill (tagging needs no token) to
    about 1.7 MB a poll per open page. It asks for /summary/clone and /summary/boot now."""
    stack = make_stack(CONFIG)
    today = day_of(stack.clock.now())
    stack.store.record_durations(today, [DurationSample("clone", "debian-12-x86_64", 42.0),
                                         DurationSample("boot", "debian-12-x86_64", 7.5)])
    service = stack.config.service
    marker = "v" * 200
    for value in range(service.max_tag_values_per_day):
        tags = {f"n{name:02d}": f"{value:03d}{marker}" for name in range(service.max_tag_names_per_day)}
        stack.store.record_tags(today, tags, service.max_tag_names_per_day, service.max_tag_values_per_day)
    server = make_server(app.app, "127.0.0.1", 0)
    handler = server.RequestHandlerClass
    recording = Recording(handler.gateway)  # type: ignore[attr-defined]
    handler.gateway = recording  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    thread.start()
    try:
        dom = chromium(f"http://127.0.0.1:{server.server_port}/dashboard/", tmp_path / "profile", "--dump-dom")
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)

    page = PoolRows()
    page.feed(dom)
    assert (page.rows["debian-12-x86_64"]["clone"], page.rows["debian-12-x86_64"]["boot"]) == ("42 s", "7.5 s")
    summaries = [target for target, _ in recording.answers if "/summary" in target]
    assert summaries and all(target.split("?")[0].endswith(("/summary/clone", "/summary/boot")) for target in summaries)
    fetched = b"".join(body for _, body in recording.answers)
    assert marker.encode() not in fetched
    assert all(len(body) < 100_000 for target, body in recording.answers if not target.startswith("/dashboard/"))
