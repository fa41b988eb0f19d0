"""Which ``tagfilter`` patterns are safe to run on caller input, decided once at config load.

A tagfilter runs Python's ``re`` (a backtracking matcher) on every tag value a caller sends
(``PUT /vm/<host>``; no token needed without ``:auth:``). On a value it does not match, ``re``
tries every way the pattern can read the value from every start: ``(a|aa)+$`` has exponentially
many (0.7 s at 30 characters, doubling with each more), ``\\w*\\w*\\w*!`` n^3 of them (1.3 s at 255
characters). vmpooler's Ruby 3.2 memoises and stays linear; ``google-re2`` would too but its wheel
(520 KB) does not fit in the deployment zip's 5 MB. So a pattern is accepted only when ``re``'s
work is provably small:

- it reads every value in at most one way (``_Automaton.reads_one_way``): the pattern is built
  into an automaton over the characters a tag value may hold, as ``re`` walks it (each branch,
  each iteration a way of its own), and two ways of reading one prefix that reach the same place
  again are refused. Then ``re`` tries at most one path per place in the pattern and per
  character, from each start;
- no backreference, lookaround or conditional (their work is not a path of the automaton), no
  repetition whose body can match nothing (``(a?)*``);
- at most ``MAX_REPETITIONS`` repetitions and ``MAX_POSITIONS`` character positions, the text at
  most ``MAX_PATTERN_LENGTH`` characters: the work is then at most positions x 255^2 / 2 steps
  of ``re``, and what it costs is measured (``tests/core/test_tagfilter_cost.py``, docs/api.md).

Atomic groups and possessive repetitions are analysed as plain ones (they only cut paths), and a
counted repetition ``{m,n}`` with n above ``UNROLLED_COUNT`` as ``+`` or ``*``: both can only
refuse more, never accept a pattern with more ways than the analysis counts."""

from __future__ import annotations

import importlib
import re
from dataclasses import dataclass, field
from typing import Any

TAG_VALUE_PATTERN = re.compile(r"^[A-Za-z0-9_ \t\r\n\f\v.,@:/?#\[\]!$&'()*+;=%~-]*\Z")
"""vmpooler's characters (letters, digits, ``_ .@:/-``, whitespace) and every other character a
URL may hold (RFC 3986: ``,?#[]!$&'()*+;=%~``): beaker tags a host's roles as ``agent, master``
and ``jenkins_build_url`` with the build's URL, whose matrix axes are ``name=value`` pairs.
The tagfilter analysis is over these characters."""
TAG_VALUE_CHARACTERS = "".join(chr(code) for code in range(128) if TAG_VALUE_PATTERN.match(chr(code)))

MAX_PATTERN_LENGTH = 200
MAX_REPETITIONS = 3
"""Repetitions of more than one (``*``, ``+``, ``{m,n}``): each alive at once costs ``re`` up to
about 2 ms at 255 characters (a group's; a single character's 0.5 ms)."""
MAX_POSITIONS = 24
"""Characters a pattern reads but for repetitions: ``re`` may try each after every character."""
UNROLLED_COUNT = 16
"""``x{2,5}`` is analysed as the five positions it is; ``x{2,50}`` as ``xx+``."""
MAX_NODES = 400
"""Places (nodes) at most: bounds the build, and the depth of counting empty paths (recursion)."""

# re's own parser and compiler (private modules without type stubs): the parse ``re.compile``
# does, read at load only, never per request.
_parser: Any = importlib.import_module("re._parser")
_compiler: Any = importlib.import_module("re._compiler")
_sre: Any = importlib.import_module("re._constants")

_CHARACTER_OPS = (_sre.LITERAL, _sre.NOT_LITERAL, _sre.ANY, _sre.IN)
_REPEAT_OPS = (_sre.MAX_REPEAT, _sre.MIN_REPEAT, _sre.POSSESSIVE_REPEAT)
_REFUSED_OPS = {_sre.GROUPREF: "a backreference", _sre.GROUPREF_EXISTS: "a conditional group",
                _sre.ASSERT: "a lookaround", _sre.ASSERT_NOT: "a lookaround"}

MORE_THAN_ONE_WAY = (
    "must read a value in one way only: {pattern} can split some values between its parts in more "
    "than one way (as (a+)+, (a|aa)+, \\w*\\w* or (.*)-(.*) do), and Python's re tries every split "
    "of a value it does not match, from every start (seconds to hours per request); let each "
    "character go one way, e.g. ([^-]*)-(.*) or ([\\w.-]+)/")


class Refused(ValueError):
    """A tagfilter the analysis cannot bound; its message says why and what to write instead."""


def check_tagfilter(pattern: str) -> None:
    """Raise ``Refused`` unless ``pattern`` (already known to compile) costs ``re.search`` little on
    every value a caller may send (module docstring)."""
    if len(pattern) > MAX_PATTERN_LENGTH:
        raise Refused(f"must be at most {MAX_PATTERN_LENGTH} characters, got {len(pattern)}")
    parsed = _parser.parse(pattern)
    automaton = _Automaton(parsed.state.flags)
    start = automaton.node()
    automaton.sequence(parsed, parsed.state.flags, start)
    if automaton.repetitions > MAX_REPETITIONS:
        raise Refused(f"must hold at most {MAX_REPETITIONS} repetitions (*, +, {{m,n}}), got "
                      f"{automaton.repetitions}")
    if not automaton.reads_one_way(start):
        raise Refused(MORE_THAN_ONE_WAY.format(pattern=pattern))


@dataclass
class _Automaton:
    """The pattern as ``re`` walks it: nodes joined by empty moves (``empty``) and by steps that
    read one character of a set (``steps``: source, characters as a bit mask over
    ``TAG_VALUE_CHARACTERS``, target; each step its own target). A branch, an optional part and an
    iteration are empty moves of their own, so two ways ``re`` can take are two paths here."""

    flags: int
    empty: list[list[int]] = field(default_factory=list)
    steps: list[tuple[int, int, int]] = field(default_factory=list)
    repetitions: int = 0

    def node(self) -> int:
        if len(self.empty) >= MAX_NODES:  # ((x{16}){16}){16}...: refused before it is built
            raise Refused(f"must match at most {MAX_POSITIONS} characters but for repetitions, and be "
                          f"simpler than {MAX_NODES} places")
        self.empty.append([])
        return len(self.empty) - 1

    def sequence(self, items: Any, flags: int, start: int) -> int:
        """Add ``items`` after node ``start``; the node where they end."""
        for op, argument in items:
            start = self.item(op, argument, flags, start)
        return start

    def item(self, op: Any, argument: Any, flags: int, start: int) -> int:
        if op in _CHARACTER_OPS:
            if len(self.steps) == MAX_POSITIONS:
                raise Refused(f"must match at most {MAX_POSITIONS} characters but for repetitions")
            end = self.node()
            self.steps.append((start, _characters(op, argument, flags), end))
            return end
        if op is _sre.AT:
            return start  # an anchor only removes paths
        if op is _sre.SUBPATTERN:
            _, add, remove, body = argument
            return self.sequence(body, (flags | add) & ~remove, start)
        if op is _sre.ATOMIC_GROUP:
            return self.sequence(argument, flags, start)
        if op is _sre.BRANCH:
            end = self.node()
            for alternative in argument[1]:
                entry = self.node()
                self.empty[start].append(entry)
                self.empty[self.sequence(alternative, flags, entry)].append(end)
            return end
        if op in _REPEAT_OPS:
            least, most, body = argument
            return self.repeat(least, most, body, flags, start)
        if op in _REFUSED_OPS:
            raise Refused(f"must not hold {_REFUSED_OPS[op]}: its work is not bounded by the analysis")
        raise Refused(f"must not use {str(op).lower()}")

    def repeat(self, least: int, most: Any, body: Any, flags: int, start: int) -> int:
        if most is not _sre.MAXREPEAT and most <= UNROLLED_COUNT:
            for _ in range(least):
                start = self.sequence(body, flags, start)
            end = self.node()
            for _ in range(most - least):  # x{0,3}: (x(x(x)?)?)?
                self.empty[start].append(end)
                entry = self.node()
                self.empty[start].append(entry)
                start = self.sequence(body, flags, entry)
            self.empty[start].append(end)
            return end
        self.repetitions += 1
        entry = self.node()
        self.empty[start].append(entry)
        body_end = self.sequence(body, flags, entry)
        if body_end in self._empty_reach(entry):
            raise Refused("must not repeat a part that can match nothing, as (a?)+ or (a|)* do")
        self.empty[body_end].append(entry)
        end = self.node()
        self.empty[body_end].append(end)
        if least == 0:
            self.empty[start].append(end)
        return end

    def _empty_reach(self, node: int) -> set[int]:
        seen, todo = {node}, [node]
        while todo:
            for target in self.empty[todo.pop()]:
                if target not in seen:
                    seen.add(target)
                    todo.append(target)
        return seen

    def _moves(self, node: int) -> list[tuple[int, int, int]]:
        """The steps ``node`` can take next: (characters, target, number of empty paths to the
        step's source, 2 meaning two or more). Empty moves form no cycle (a repeated body reads
        at least one character), so paths are counted over a finite graph."""
        ways: dict[int, int] = {}

        def count(current: int) -> int:
            if current not in ways:
                ways[current] = 0  # no cycle: never read before it is set
                ways[current] = min(2, (current == node) + sum(count(source) for source in into[current]))
            return ways[current]

        reach = self._empty_reach(node)
        into: dict[int, list[int]] = {current: [] for current in reach}
        for source in reach:
            for target in self.empty[source]:
                into[target].append(source)
        return [(mask, target, count(source)) for source, mask, target in self.steps if source in reach]

    def reads_one_way(self, start: int) -> bool:
        """Whether no prefix of any value (over ``TAG_VALUE_CHARACTERS``) reaches one step's
        target by two paths: pairs of places reached by one prefix are explored from (start,
        start); two different paths that meet again, or one step reached by two empty paths,
        mean more than one way."""
        moves = {node: self._moves(node) for node in [start] + [target for _, _, target in self.steps]}
        seen = {(start, start)}
        todo = [(start, start)]
        while todo:
            first, second = todo.pop()
            for mask, target, ways in moves[first]:
                for other_mask, other_target, _ in moves[second]:
                    if not mask & other_mask:
                        continue
                    if first == second and target == other_target:
                        if ways > 1:
                            return False  # one step reached by two empty paths
                    elif target == other_target:
                        return False  # two paths met again
                    pair = (target, other_target)
                    if pair not in seen:
                        seen.add(pair)
                        todo.append(pair)
        return True


def _characters(op: Any, argument: Any, flags: int) -> int:
    """Which tag value characters one character item of a pattern matches, as a bit mask: the item
    compiled alone by ``re`` with the flags in force where it stands (``(?i)``, ``(?s)``...)."""
    state = _parser.State()
    state.flags = flags
    matcher = _compiler.compile(_parser.SubPattern(state, [(op, argument)]), 0)
    return sum(1 << index for index, character in enumerate(TAG_VALUE_CHARACTERS) if matcher.match(character))
