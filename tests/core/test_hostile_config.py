"""A config file an operator could paste, however hostile: each is refused with one clear
ConfigError naming the problem (never a traceback, a crash of the interpreter, minutes of CPU or
gigabytes of memory), wherever a config is accepted (``parse``: make run, config-push,
packaging; ``from_text``: what a Lambda reads, and a refresh from the bucket)."""

from __future__ import annotations

import json

import pytest

from chalicelib.config import ConfigError, from_text

HEAD = ":providers:\n  :dummy:\n    provider_class: dummy\n:pools:\n"
POOL = "  - name: {name}\n    size: 1\n    provider: dummy\n"


def problems_of(text: str) -> list[str]:
    """The problems a load of ``text`` reports (it must fail with a ConfigError, nothing else)."""
    with pytest.raises(ConfigError) as refused:
        from_text(text)
    return refused.value.problems


NOT_A_ZONE = "must be a time zone name such as Europe/Berlin, got "


@pytest.mark.parametrize("zone, problem", [
    ("Europe", "unknown time zone 'Europe'"),  # a directory of the zone database
    ("a" * 10_000, NOT_A_ZONE + "'aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa...'"),
    ("a/" * 3000 + "b", NOT_A_ZONE + "'a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/...'"),
    ("Europe/../Europe/Berlin", NOT_A_ZONE + "'Europe/../Europe/Berlin'"),
    ("../../etc/passwd", NOT_A_ZONE + "'../../etc/passwd'"),
], ids=["directory", "long", "deep", "dotdot", "escape"])
def test_a_time_zone_that_is_not_one_is_refused_with_its_key(zone: str, problem: str) -> None:
    # Before: IsADirectoryError, OSError (file name too long) and RecursionError tracebacks.
    service = ":config:\n  sizing_timezone: " + json.dumps(zone) + "\n" + HEAD + POOL.format(name="a")
    assert problems_of(service) == [f"config.sizing_timezone: {problem}"]
    pool = HEAD + POOL.format(name="a") + "    sizing:\n      timezone: " + json.dumps(zone) + "\n"
    assert problems_of(pool) == [f"pools[0].sizing: timezone: {problem}"]


def test_a_long_pool_name_is_refused_without_echoing_it_whole() -> None:
    name = "a" * 10_000
    problem, = problems_of(HEAD + POOL.format(name=name))
    assert problem.startswith("pools[0].name: must match ^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$, got \"aaaa")
    assert len(problem) < 200
