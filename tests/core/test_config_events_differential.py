"""The event-built document (chalicelib/config_events.py) against PyYAML's composed one, over
generated YAML: whenever the fast path builds a document, it is the one the composed read gives
(colon-stripped), and the composed read does not refuse the text. Scalars are drawn from the
spellings YAML 1.1 resolves differently (booleans, octal and sexagesimal numbers, timestamps,
nulls, merge keys, Ruby-symbol colons), written plain, quoted or as block scalars, in block and
flow collections."""

from __future__ import annotations

import math
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chalicelib import config
from chalicelib.config_events import GAVE_UP, EventDocument
from chalicelib.config_fields import BlockReader

LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
SCALARS = ["a", "size", ":size", "::x", ":", "yes", "No", "on", "off", "y", "n", "true", "~", "null", "",
           "0x1f", "0o17", "017", "08", "1_000", "+5", "-3", "1:30", "190:20:30.15", "0b101", "1.5", ".inf",
           "-.Inf", ".nan", "1e3", "6.8523015e+5", "2001-12-14", "2001-12-14 21:59:43.10", "<<", "=", "-",
           "a b", "a:b", "x #y", "é", "9" * 30]
KEYS = ["a", "b", ":a", "::a", "size", ":size", "1", "yes", "~", "<<", "2001-12-14", "=", "x y", ":"]


def _scalar(text: str, style: str) -> str:
    if style == "single":
        return "'" + text.replace("'", "''") + "'"
    if style == "double":
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return text


def _plain_ok(text: str) -> bool:
    """Whether ``text`` may be written plain here without changing the YAML's structure."""
    if text in (":size", "::x", ":a", "::a", "-3", ":"):  # Ruby symbols and a sign: plain in vmpooler's files
        return True
    return (bool(text) and text[0] not in "-:?[]{},#&*!|>'\"%@`" and ": " not in text and " #" not in text
            and not text.endswith(":"))


nodes = st.recursive(
    st.tuples(st.just("scalar"), st.sampled_from(SCALARS), st.sampled_from(["plain", "single", "double"])),
    lambda children: st.one_of(
        st.tuples(st.just("list"), st.lists(children, max_size=4), st.booleans()),
        st.tuples(st.just("map"), st.lists(st.tuples(st.sampled_from(KEYS), st.sampled_from(["plain", "single"]),
                                                     children), max_size=4), st.booleans()),
    ),
    max_leaves=12,
)


def _flow(node: Any) -> str:
    kind = node[0]
    if kind == "scalar":
        text, style = node[1], node[2]
        return _scalar(text, style if style != "plain" or (_plain_ok(text) and "," not in text) else "double")
    if kind == "list":
        return "[" + ", ".join(_flow(item) for item in node[1]) + "]"
    return "{" + ", ".join(f"{_scalar(key, style) if style != 'plain' or _plain_ok(key) else _scalar(key, 'single')}: "
                           f"{_flow(value)}" for key, style, value in node[1]) + "}"


def _block(node: Any, indent: int) -> str:
    """``node`` as a block value following a key or dash at ``indent`` (its own line(s) or inline)."""
    kind, pad = node[0], " " * (indent + 2)
    if kind == "scalar" or node[2] or not node[1]:
        return " " + _flow(node) + "\n"
    if kind == "list":
        return "\n" + "".join(f"{pad}-{_block(item, indent + 2)}" for item in node[1])
    return "\n" + "".join(f"{pad}{_flow(('scalar', key, style))}:{_block(value, indent + 2)}"
                          for key, style, value in node[1])


def _document(node: Any) -> str:
    if node[0] == "map" and not node[2]:
        return "".join(f"{_flow(('scalar', key, style))}:{_block(value, 0)}" for key, style, value in node[1])
    return _flow(node) + "\n"


def _same(one: Any, other: Any) -> bool:
    if isinstance(one, float) and isinstance(other, float) and math.isnan(one) and math.isnan(other):
        return True
    if type(one) is not type(other):
        return False
    if isinstance(one, dict):
        return list(one) == list(other) and all(_same(one[key], other[key]) for key in one)
    if isinstance(one, list):
        return len(one) == len(other) and all(_same(a, b) for a, b in zip(one, other, strict=True))
    return bool(one == other)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(nodes)
def test_the_event_built_document_is_the_composed_one(node: Any) -> None:
    text = _document(node)
    resolver = LOADER("")
    try:
        built = EventDocument(yaml, resolver)
        try:
            for event in yaml.parse(text, Loader=LOADER):
                built.see(event)
        except yaml.YAMLError:
            return  # not YAML: both reads refuse it (the shape walk first)
    finally:
        resolver.dispose()
    try:
        composed = config._composed(yaml, text, LOADER, "config", BlockReader())
    except (yaml.YAMLError, config.ConfigError) as error:
        assert built.document is GAVE_UP, (text, error)
        return
    if built.document is not GAVE_UP:
        assert _same(built.document, composed), text
