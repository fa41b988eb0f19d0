"""The dashboard's feeds, shared for a few seconds by every open page.

An open dashboard asks ``/status`` every 5 s, the hour's history every 30 s and the day's clone and
boot summaries every minute. At 1,000 pools each ``/status`` costs Redis ~7,000 commands (inside
scripts, 36 ms) and a worker ~240 ms, the history 210 ms of Redis: 50 pages open made a local
stack of two workers answer checkouts in seconds, and in AWS make ten ``/status`` Lambdas a
second. Each computation is the same for every page (docs/performance.md, "Open dashboards").

A caller that says it accepts an answer up to N seconds old (``Cache-Control: max-age=N``, as
HTTP has it, at most ``MAX_AGE_SECONDS``) gets the last answer computed for that feed when it is
no older; otherwise the answer is computed and kept in Redis for the next ones (shared by every
Lambda and worker), with an ``Age`` header saying how old it is. A caller that does not say so
(vmpooler's clients, curl, ``max-age=0``) always gets a fresh answer, as before.

Only the feeds and queries the page asks are kept (``entry_name``), so what Redis holds is
bounded whatever callers send: at 10,000 pools about 25 MB, each entry expiring after
``MAX_AGE_SECONDS``.
"""

from __future__ import annotations

import json
import re
from typing import Callable

from chalicelib.api.http import JSON_HEADERS, ApiRequest, ApiResponse
from chalicelib.services import Services

MAX_AGE_SECONDS = 30
"""The oldest answer given to a caller accepting one; how long Redis keeps an entry."""
HISTORY_HOURS = ("1", "6", "24", "168")
"""The history ranges the page's buttons ask for: the only ones kept."""
SUMMARY_SECTIONS = ("clone", "boot")
MAX_AGE = re.compile(r"(?:^|,)\s*max-age\s*=\s*\"?(\d{1,9})\"?\s*(?:,|$)", re.IGNORECASE | re.ASCII)
"""ASCII digits and blanks only, as HTTP writes them: ``max-age=`` 30 in Arabic-Indic digits was
read as 30 and given an answer 30 s old."""


def accepted_age(request: ApiRequest) -> int:
    """How old an answer the caller accepts, in seconds (``Cache-Control: max-age=N``, at most
    ``MAX_AGE_SECONDS``); 0, a fresh one, without it."""
    found = MAX_AGE.search(request.header("cache-control") or "")
    return min(int(found.group(1)), MAX_AGE_SECONDS) if found else 0


def entry_name(route: str, request: ApiRequest) -> tuple[str, ...] | None:
    """The entry a feed's answer is kept under, or None for a feed or query the page never asks
    (those are always computed, and nothing a caller sends can add entries)."""
    version = str(request.version)
    if route == "status" and not request.query:
        return ("status", version)
    # /summary, /summary/<section> and /summary/<section>/<key> share one handler, and so the
    # first's route: the params tell them apart.
    section = request.params.get("section")
    if route == "summary" and not request.query and dict(request.params) == {"section": section} \
            and section in SUMMARY_SECTIONS:
        return ("summary", section, version)
    if route == "dashboard_history" and set(request.query) == {"hours"} and request.query["hours"] in HISTORY_HOURS:
        return ("history", request.query["hours"])
    return None


def answer(services: Services, name: tuple[str, ...], max_age: int, compute: Callable[[], ApiResponse]) -> ApiResponse:
    """The entry's answer when it is at most ``max_age`` seconds old, else ``compute()``'s, kept
    for the next callers when it is a 200."""
    now = services.clock.now()
    kept = services.store.cached_feed(name)
    if kept is not None and 0 <= now - kept[0] <= max_age:
        return _answer(kept[1], now - kept[0])
    response = compute()
    if response.status != 200:
        return response
    text = response.body if isinstance(response.body, str) else json.dumps(response.body, separators=(",", ":"))
    services.store.cache_feed(name, now, text, MAX_AGE_SECONDS)
    return _answer(text, 0.0)


def _answer(text: str, age: float) -> ApiResponse:
    return ApiResponse(200, text, {**JSON_HEADERS, "Age": str(int(max(age, 0)))})
