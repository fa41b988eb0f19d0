"""The dashboard in headless Chromium when the text it shows was written by an attacker: the site
name and a pool's aliases (what an admin's config can carry; pool names are restricted to
``[A-Za-z0-9_.-]``) hold script, markup, line and paragraph separators, a right-to-left override
and a very long string. None of it may run, none of it may become markup, and the page still
shows its counts. A link to ``//another.site/dashboard/`` finds no page that could fetch or link
to that site (the HTTP front served the dashboard there once: it read "another.site" as a
host). (Tags, on-demand requests and user names never reach an HTML page: every other answer is
JSON, tests/api/test_dashboard.py.)"""

from __future__ import annotations

import html
import json
import re
import urllib.request
from pathlib import Path
from typing import Any, Iterator

import pytest

from tests.core.test_dashboard_browser import PoolRows, chromium, local_stack
from tests.core.test_local_stack import call, wait_for

RUN = "document.documentElement.dataset.pwned=1"
"""What every payload tries to run: a mark on <html> that --dump-dom would show."""
ALIASES = [
    f'"><img src=x onerror="{RUN}">',
    f"<script>{RUN}</script>",
    f"</script><script>{RUN}</script><!--",
    f"javascript:{RUN}",
    "line\u2028separator\u2029paragraph",
    "\u202etxt.exe",
    "y" * 5000,
]
SITE_NAME = f"Ops \u202e & \"co\" </title><script>{RUN}</script> <img src=x onerror={RUN}//"
SHOWN_SITE_NAME = f"Ops \u202e & \"co\" {RUN} <img src=x onerror={RUN}//"
"""SITE_NAME as the page shows it: complete tags dropped (vmpooler's default name held some), the
rest as text."""
POOL = "debian-12-x86_64"
CONFIG = f"""\
config: {{domain: example.com, check_loop_delay_min: 0.2, task_limit: 10, site_name: {json.dumps(SITE_NAME)}}}
providers:
  dummy: {{provider_class: dummy, createvm_max_time: 0.2, boot_time: 0.1, destroyvm_max_time: 0.1}}
pools:
  - {{name: {POOL}, size: 2, provider: dummy, alias: {json.dumps(ALIASES)}}}
"""


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """The local stack serving CONFIG, its pool full: (base URL, a folder for browser profiles)."""
    tmp_path = tmp_path_factory.mktemp("hostile")
    with local_stack(tmp_path, CONFIG) as (base, _):
        wait_for(lambda: pool(base)["ready"] == 2, 20, "the pool to fill")
        yield base, tmp_path


def pool(base: str) -> dict[str, Any]:
    return call("GET", f"{base}/api/v3/status?view=pools")[1]["pools"][POOL]


@pytest.mark.slow
def test_hostile_site_name_and_aliases_show_as_text_and_never_run(stack: tuple[str, Path]) -> None:
    base, tmp_path = stack
    with urllib.request.urlopen(f"{base}/dashboard/") as answer:
        headers = answer.headers
    dom = chromium(f"{base}/dashboard/", tmp_path / "profile-text", "--dump-dom")
    now = pool(base)

    # Nothing ran and nothing became an element: the DOM has only the page's own markup.
    root = re.search(r"<html[^>]*>", dom)
    assert root and "pwned" not in root.group(0)
    assert "<img" not in dom and dom.count("<script") == 1
    # The policy that would stop it running reached the browser through the real HTTP front.
    assert "'unsafe-inline'" not in headers["Content-Security-Policy"]
    assert headers["X-Frame-Options"] == "DENY" and headers["X-Content-Type-Options"] == "nosniff"
    # Every payload reads as the text it was, and the counts are there.
    page = PoolRows()
    page.feed(dom)
    title = re.search(r"<title>(.*?)</title>", dom, re.S)
    assert title and html.unescape(title.group(1)) == f"{SHOWN_SITE_NAME} dashboard"
    assert page.texts["site-name"] == SHOWN_SITE_NAME
    row = page.rows[POOL]
    assert row["aliases"] == "alias: " + ", ".join(ALIASES)
    assert (row["ready"], row["size"], row["running"]) == (now["ready"], now["max"], now["running"]) == (2, 2, 0)


@pytest.mark.slow
def test_a_double_slash_path_does_not_point_the_page_at_another_site(stack: tuple[str, Path]) -> None:
    """The front served //evil.example/dashboard/ as /dashboard/ (urlsplit read "evil.example" as
    a host), and only dashboard.js's collapsing of leading slashes kept the page's links and polls
    on this site. The front reads the whole target as a path now: no page there at all, a JSON
    404. (dashboard.js still collapses them, for whatever path API Gateway hands on.)"""
    base, tmp_path = stack
    dom = chromium(f"{base}//evil.example/dashboard/", tmp_path / "profile-links", "--dump-dom")
    assert re.findall(r'<a [^>]*href="([^"]*)"', dom) == [], dom
    assert '{"ok":false}' in dom, dom
