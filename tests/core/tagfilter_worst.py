"""Generated tagfilters and the tag values that make Python's ``re`` work hardest on them.

Run as a script (``python tests/core/tagfilter_worst.py SEED COUNT``) it prints, as JSON, the
accepted and refused patterns of a generated set and, for each accepted one, the CPU time of its
slowest ``re.search`` over the hostile values: run in a child process with a CPU limit, so a
pattern the analysis wrongly accepted ends the child instead of hanging the test."""

from __future__ import annotations

import json
import random
import re
import sys
import time
from pathlib import Path

if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from chalicelib.api.vms import MAX_TAG_VALUE
from chalicelib.tagfilter import Refused, check_tagfilter

ATOMS = ["a", "b", "-", "/", r"\.", ".", r"\w", r"\d", r"\s", "[ab]", "[^-]", "[^/]", "[a-z0-9.-]", "[^a]"]
QUANTIFIERS = ["", "", "*", "+", "?", "*?", "+?", "{1,3}", "{2}", "{0,20}", "{2,}"]
KNOWN_SHAPES = [
    r"(.*)\/", r"^(https?://)?([\w.-]+)/", r"([^-]*)-(.*)", r"^v(\d+(\.\d+)*)", r"(\w)*!",
    # the slowest accepted shapes measured: three group repetitions alive at once, each followed
    # by positions re tries at every backtrack; one repetition and 22 positions after it
    r"(?:(\w)*[0!]a{6}|(\w)*[1!]a{6}|(\w)*[2!]a{6})", r"(\w)+[ab]{16}[ab]{6}\Z",
    r"(?:.*0|.*1|.*2)!", r"(\w)*(\wb|\wc|\wd|\we|\wf|\wg|\wh|\wi|\wj)!",
    r"(?:\w\w?\w?\w?\w?\w?){4}!", r"\w{0,16}\w{0,16}!",
    r"(?:[^/]*/){3}(.*)", r"(a|aa)+$", r"\w*\w*\w*!", r"(.*)-(.*)!",
]


def generate(seed: int, count: int) -> list[str]:
    """``count`` random patterns over the atoms tag values meet (letters, separators, classes),
    grouped, alternated and repeated up to three levels deep."""
    chooser = random.Random(seed)

    def sequence(depth: int) -> str:
        return "".join(part(depth) for _ in range(chooser.randint(1, 3)))

    def part(depth: int) -> str:
        if depth < 3 and chooser.random() < 0.4:
            body = "|".join(sequence(depth + 1) for _ in range(chooser.randint(1, 3)))
            text = f"({body})" if chooser.random() < 0.5 else f"(?:{body})"
        else:
            text = chooser.choice(ATOMS)
        return text + chooser.choice(QUANTIFIERS)

    patterns = []
    while len(patterns) < count:
        pattern = sequence(0) + chooser.choice(["", "!", "$", r"\Z"])
        try:
            re.compile(pattern)
        except re.error:
            continue
        patterns.append(pattern)
    return patterns


def accepted(pattern: str) -> bool:
    try:
        check_tagfilter(pattern)
    except Refused:
        return False
    return True


def hostile_values(pattern: str) -> list[str]:
    """Values of 255 characters that keep a backtracking matcher trying: runs of one character,
    of two alternating, and of the pattern's own literal text, each with and without a last
    character the pattern cannot match after them."""
    literals = sorted(set(re.sub(r"\\.|\[[^\]]*\]|[()?*+{}|^$]", "", pattern)) | set("ab-/.1 "))
    runs = [c for c in literals] + [a + b for a in literals for b in literals if a < b]
    runs.append(re.sub(r"\\.|[\[\]()?*+{}|^$]", "", pattern) or "a")
    values = []
    for run in runs:
        body = (run * MAX_TAG_VALUE)[:MAX_TAG_VALUE - 1]
        values += [body + "!", body + "~", body + body[-1]]
    return values


def worst_search(pattern: str) -> tuple[float, str]:
    """The most CPU one ``re.search`` of ``pattern`` took over the hostile values (each the best of
    three runs, to leave out another process's interference), and that value."""
    compiled = re.compile(pattern)
    worst = (0.0, "")
    for value in hostile_values(pattern):
        best = float("inf")
        for _ in range(3):
            started = time.process_time()
            compiled.search(value)
            best = min(best, time.process_time() - started)
        worst = max(worst, (best, value))
    return worst


def main(seed: int, count: int) -> None:
    patterns = KNOWN_SHAPES + generate(seed, count)
    report = {"accepted": {}, "refused": []}
    for pattern in patterns:
        if accepted(pattern):
            seconds, value = worst_search(pattern)
            report["accepted"][pattern] = [seconds, value]
        else:
            report["refused"].append(pattern)
    print(json.dumps(report))


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]))
