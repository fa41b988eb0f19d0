"""The text of a checkout's answer: laid out as vmpooler's ``JSON.pretty_generate`` (Python's
``json.dumps(indent=2)``, byte for byte), which scripts read line by line. ``json_text`` lays it
out without ``json.dumps``'s pure-Python indenting encoder (docs/performance.md, "Checkout CPU
per cycle"); whatever the answer holds, the text is the same."""

from __future__ import annotations

import enum
import json
import random
from typing import Any

import pytest

from chalicelib.api.http import json_text


class Flag(enum.IntEnum):
    ON = 1


ANSWERS = [
    {"ok": True, "centos-8": {"hostname": "quiet-fox.example.com"}},
    {"ok": True, "centos-8": {"hostname": ["a-host", "b-host"]}, "win-2019": {"hostname": "c-host"},
     "domain": "example.com"},
    {"ok": True, "p\u00f6\u00f6l": {"hostname": "h\u2028\"\\\x00\ud800"}},  # escapes, a lone surrogate
    {}, [], {"a": {}}, {"a": []}, [[[]]], {"n": None, "f": False, "i": -12, "big": 10**30, "flag": Flag.ON},
    ("a", "b"), "text", 7, None, True,
    {"x": 1.5}, {"nan": float("nan")}, {1: "a number as key"}, {None: 1}, {"set": {1}},  # left to json.dumps
]


@pytest.mark.parametrize("answer", ANSWERS, ids=repr)
def test_an_answer_is_laid_out_as_json_dumps_lays_it_out(answer: Any) -> None:
    try:
        expected = json.dumps(answer, indent=2)
    except TypeError:
        with pytest.raises(TypeError):
            json_text(answer, pretty=True)
        return
    assert json_text(answer, pretty=True) == expected


def _text(chooser: random.Random, letters: str, most: int) -> str:
    return "".join(chooser.choice(letters) for _ in range(chooser.randint(0, most)))


def _any_answer(chooser: random.Random, depth: int = 0) -> Any:
    pick = chooser.random()
    if depth > 4 or pick < 0.35:
        return chooser.choice([None, True, False, chooser.randint(-10**20, 10**20),
                               _text(chooser, "ab\"\\/\n\t\u00e9\u2603\U0001F600", 6)])
    if pick < 0.7:
        return {_text(chooser, "xy\u00e9\"", 4): _any_answer(chooser, depth + 1) for _ in range(chooser.randint(0, 4))}
    return [_any_answer(chooser, depth + 1) for _ in range(chooser.randint(0, 4))]


def test_answers_of_any_shape_are_laid_out_as_json_dumps_lays_them_out() -> None:
    chooser = random.Random(14)
    for _ in range(3000):
        answer = _any_answer(chooser)
        assert json_text(answer, pretty=True) == json.dumps(answer, indent=2), answer


def test_an_answer_nested_past_any_real_one_is_still_laid_out() -> None:
    deep: list[Any] = []
    inner = deep
    for _ in range(200):
        inner.append([])
        inner = inner[0]
    assert json_text(deep, pretty=True) == json.dumps(deep, indent=2)
