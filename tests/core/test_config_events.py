"""A plain YAML config is built from the events the shape walk reads (chalicelib/config_events.py)
instead of being composed and constructed again by PyYAML: the same document, with the same
types, as PyYAML's safe loader gives (colon-stripped); anything not plain (tags, anchors,
aliases, merge keys, keys that are not strings, a key written twice, two documents) is read the
composed way, its errors and warnings worded as before. Before, every config was composed:
3 of the 6 s of CPU a config of 10,000 pools took to validate (docs/performance.md)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import yaml

from chalicelib import config
from chalicelib.config_events import GAVE_UP, EventDocument
from chalicelib.config_fields import BlockReader
from tests.infra.packaged import pools_config

ROOT = Path(__file__).resolve().parents[2]
LOADERS = [yaml.SafeLoader, *([yaml.CSafeLoader] if hasattr(yaml, "CSafeLoader") else [])]

PLAIN = {
    "example": (ROOT / "vmpool.yaml.example").read_text(),
    "vmpooler pools": pools_config(40),
    "integers": "a: 0x1f\nb: 0o17\nc: 1_000\nd: +5\ne: -3\nf: 017\ng: 1:30\nh: 0b101\n",
    "floats": "a: 1.5\nb: .inf\nc: -.Inf\nd: .nan\ne: 6.8523015e+5\nf: 1_0.5\ng: 190:20:30.15\n",
    "booleans and nulls": "a: yes\nb: No\nc: on\nd: OFF\ne: True\nf: ~\ng: null\nh:\ni: ''\n",
    "timestamps": "a: 2001-12-14\nb: 2001-12-14t21:59:43.10-05:00\nc: 2001-12-14 21:59:43.10\n",
    "strings": ("a: 'quoted 5'\nb: \"5\"\nc: |\n  two\n  lines\nd: >\n  folded\n  text\ne: a:b\n"
                "f: 'yes'\ng: x # comment\nh: [1, 'one', 2.0, true, ~]\ni: {x: 1, 'y': [z]}\n"),
    "colons": ":config:\n  ::site_name: x\n:pools:\n  - :name: a\n    :size: 1\n'::quoted': 2\n",
    "nested lists": "a:\n  - [1, [2, [3, {b: [4]}]]]\n  - []\n  - {}\n",
    "a list at the top": "- 1\n- two\n",
    "a scalar at the top": "just text\n",
    "empty": "",
    "only a comment": "# nothing\n",
    "an empty document": "---\n...\n",
}
NOT_PLAIN = {
    "an alias": "a: &x [1, 2]\nb: *x\n",
    "a merge key": "base: &b {size: 1}\npool:\n  <<: *b\n  name: x\n",
    "a tag": "a: !!str 5\n",
    "binary": "a: !!binary aGVsbG8=\n",
    "an unknown tag": "a: !custom 5\n",
    "a tagged mapping": "a: !!map {b: 1}\n",
    "a set": "a: !!set {b, c}\n",
    "an integer key": "1: a\n",
    "a boolean key": "true: a\n",
    "a null key": "~: a\n",
    "a complex key": "? [a, b]\n: c\n",
    "a key written twice": "config:\n  size: 1\n  size: 2\n",
    "a key written twice alike": "config:\n  size: 1\n  size: 1\n",
    "a key written twice with a colon": "config:\n  :size: 1\n  size: 2\n",
    "two documents": "a: 1\n---\nb: 2\n",
    "a value sign": "a: =\n",
}


def typed(value: Any) -> Any:
    """``value`` with each scalar's type beside it (1 and True and 1.0 differ; nan equals nan)."""
    if isinstance(value, dict):
        return {key: typed(item) for key, item in value.items()}
    if isinstance(value, list):
        return [typed(item) for item in value]
    if isinstance(value, float) and math.isnan(value):
        return ("float", "nan")
    return (type(value).__name__, value)


def built(text: str, loader: type) -> Any:
    resolver = loader("")
    try:
        document = EventDocument(yaml, resolver)
        for event in yaml.parse(text, Loader=loader):
            document.see(event)
        return document.document
    finally:
        resolver.dispose()


def composed(text: str, loader: type) -> tuple[Any, ...]:
    """What the loader composes and constructs (colon-stripped), with the keys written twice
    (problems, warnings); or its error."""
    reader = BlockReader()
    try:
        document = config._composed(yaml, text, loader, "c", reader)
    except yaml.YAMLError as error:
        return ("error", str(error))
    return ("document", typed(document), reader.problems, reader.warnings)


@pytest.mark.parametrize("loader", LOADERS, ids=lambda loader: loader.__name__)
@pytest.mark.parametrize("name", PLAIN)
def test_a_plain_config_is_built_from_its_events_as_pyyaml_would_construct_it(name: str, loader: type) -> None:
    document = built(PLAIN[name], loader)
    assert document is not GAVE_UP
    assert ("document", typed(document), [], []) == composed(PLAIN[name], loader)


@pytest.mark.parametrize("loader", LOADERS, ids=lambda loader: loader.__name__)
@pytest.mark.parametrize("name", NOT_PLAIN)
def test_a_config_that_is_not_plain_is_read_the_composed_way(name: str, loader: type,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    assert built(NOT_PLAIN[name], loader) is GAVE_UP
    monkeypatch.setattr(yaml, "CSafeLoader", loader)
    reader = BlockReader()
    try:
        read: tuple[Any, ...] = ("document", typed(config._read_document(NOT_PLAIN[name], "c", reader)),
                                 reader.problems, reader.warnings)
    except config.ConfigError as error:
        read = ("refused", str(error))
    expected = composed(NOT_PLAIN[name], loader)
    if expected[0] == "error":
        expected = ("refused", str(config.ConfigError([f"c: not valid YAML: {expected[1]}"])))
    assert read == expected


def test_a_plain_config_of_many_pools_is_never_composed(monkeypatch: pytest.MonkeyPatch) -> None:
    """The vmpooler-style config of 3,000 pools validates without PyYAML composing it (each pool's
    values as before)."""
    text = pools_config(3000)
    expected = config.parse(text)
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

    def composing(*args: Any) -> Any:
        raise AssertionError("composed")

    monkeypatch.setattr(loader, "get_single_node", composing)
    assert config.parse(text) == expected
