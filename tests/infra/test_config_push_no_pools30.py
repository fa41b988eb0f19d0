"""`make config-push` of a file that lost its pools section: an empty or truncated file, or the
section's name mistyped. Each validates as a config of no pools, and published it drained every
pool of the stage within a minute (the tick queues a drain for each pool the config no longer has,
their ready VMs destroyed). Now it is refused and nothing is published; an explicit empty list
still removes every pool (moto S3)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from chalicelib.config import from_canonical
from chalicelib.config_source import DEFAULT_CONFIG_KEY
from tests.infra import test_config_push as pushing
from tests.infra.test_config_push import BUCKET, push_file

s3 = pushing.s3  # the fixture: a moto bucket of the dev stage's name
PROVIDERS = ":providers:\n  :dummy: {}\n"


@pytest.mark.parametrize("text", [
    "",
    "---\n",
    PROVIDERS,
    PROVIDERS + ":pool:\n  - {name: debian, size: 1, provider: dummy}\n",
    PROVIDERS + ":pools:\n",
], ids=["empty", "document-marker-only", "no-pools-section", "section-name-mistyped", "section-without-list"])
def test_a_config_without_a_pools_section_is_refused_and_an_empty_list_is_the_way_to_remove_every_pool(
        s3: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str) -> None:
    code, output = push_file(tmp_path, text, capsys)
    assert code == 1
    assert "no pools section" in output and "nothing published" in output and ":pools: []" in output
    assert "Contents" not in s3.list_objects_v2(Bucket=BUCKET)
    # What the refusal says to write, when removing every pool is meant, is published.
    code, output = push_file(tmp_path, PROVIDERS + ":pools: []\n", capsys)
    assert code == 0, output
    published = s3.get_object(Bucket=BUCKET, Key=DEFAULT_CONFIG_KEY)["Body"].read().decode()
    assert len(from_canonical(json.loads(published)).pools) == 0
