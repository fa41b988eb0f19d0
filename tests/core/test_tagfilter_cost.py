"""Every tagfilter the config accepts costs ``re.search`` little on any tag value the API accepts
(chalicelib/tagfilter.py): generated patterns, each accepted one searched over hostile values of
the longest length (255), timed as CPU in a child process with a CPU limit (tagfilter_worst.py)."""

from __future__ import annotations

import json
import resource
import subprocess
import sys
from pathlib import Path

import pytest

from chalicelib.api.vms import TAG_VALUE_PATTERN
from chalicelib.tagfilter import TAG_VALUE_CHARACTERS

WORST = Path(__file__).with_name("tagfilter_worst.py")
BUDGET_SECONDS = 0.025
"""The slowest accepted shape measures 5-7 ms of CPU here (docs/api.md); the margin is for a
loaded machine. A pattern with more than one way to read a value takes 0.7 s to hours."""


def _limit_cpu() -> None:
    resource.setrlimit(resource.RLIMIT_CPU, (120, 120))


@pytest.mark.parametrize("seed", [1, 2])
def test_no_accepted_tagfilter_spends_more_than_a_few_ms_on_a_hostile_value(seed: int) -> None:
    result = subprocess.run([sys.executable, str(WORST), str(seed), "120"], capture_output=True, text=True,
                            timeout=600, preexec_fn=_limit_cpu, check=False)
    assert result.returncode == 0, result.stderr[-2000:]  # killed by its CPU limit: an accepted pattern ran away
    report = json.loads(result.stdout)
    accepted, refused = report["accepted"], report["refused"]
    assert len(accepted) >= 30 and len(refused) >= 30  # both sides of the check are exercised
    assert {r"(a|aa)+$", r"\w*\w*\w*!", r"(.*)-(.*)!"} <= set(refused)
    assert {r"(.*)\/", r"^(https?://)?([\w.-]+)/", r"([^-]*)-(.*)"} <= set(accepted)
    slow = {pattern: (round(seconds * 1000, 1), value[:20]) for pattern, (seconds, value) in accepted.items()
            if seconds > BUDGET_SECONDS}
    assert slow == {}


def test_the_analysis_knows_every_character_a_tag_value_may_hold() -> None:
    """The analysis decides which values a pattern's parts share over ``TAG_VALUE_CHARACTERS``: a
    character a value could hold outside them (a letter beyond ASCII) would be a way it missed."""
    allowed = [chr(code) for code in range(0x110000) if TAG_VALUE_PATTERN.match(chr(code))]
    assert "".join(allowed) == TAG_VALUE_CHARACTERS
