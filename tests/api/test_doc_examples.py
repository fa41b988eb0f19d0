"""The curl examples users copy from README.md and docs/api.md: each names a route the service
serves, and the answer the doc shows for it has a status and a body docs/openapi.yaml allows (the
spec every API test holds the service's own answers to). A doc showing a key the service never
sends, a value of the wrong type or a status the route does not answer fails here."""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from jsonschema import ValidationError

from tests.harness import SPEC

ROOT = Path(__file__).resolve().parents[2]
DOCS_WITH_EXAMPLES = ("README.md", "docs/api.md")
BASE = "http://127.0.0.1:8000/api/v3"
STATUS_LINE = re.compile(r"^# HTTP (\d{3})$")
STATUS_SUFFIX = re.compile(r"^(.*\S) (\d{3})$")
CONSOLE_BLOCK = re.compile(r"^```console\n(.*?)^```", re.S | re.M)


@dataclass(frozen=True)
class Example:
    where: str
    command: str
    method: str
    target: str
    status: int | None
    body: Any


def _request(command: str) -> tuple[str, str, bool]:
    """(method, path and query, whether curl prints the status) of a `curl ...` line as a shell
    would run it with B set as the docs set it."""
    words = shlex.split(command.replace("$B", BASE))
    method, target, has_body, prints_status = "", "", False, False
    takes_value = {"-X", "-d", "-H", "-u", "-w", "--data"}
    index = 1
    while index < len(words):
        word = words[index]
        if word in takes_value:
            value = words[index + 1]
            if word == "-X":
                method = value
            elif word in ("-d", "--data"):
                has_body = True
            elif word == "-w" and "%{http_code}" in value:
                prints_status = True
            index += 2
            continue
        if not word.startswith("-"):
            target = re.sub(r"^https?://[^/]+", "", word)
        index += 1
    return method or ("POST" if has_body else "GET"), target, prints_status


def examples() -> list[Example]:
    found: list[Example] = []
    for name in DOCS_WITH_EXAMPLES:
        text = (ROOT / name).read_text(encoding="utf-8")
        for block in CONSOLE_BLOCK.finditer(text):
            line_no = text[: block.start()].count("\n") + 2
            lines = block.group(1).splitlines()
            for index, line in enumerate(lines):
                if not line.startswith("$ curl"):
                    continue
                method, target, prints_status = _request(line[2:])
                answer = [text for text in lines[index + 1:index + 3] if text.strip()]
                if not answer or answer[0].startswith("$"):
                    continue  # an example whose answer the doc does not show
                if answer[0] == "{":  # laid out over lines, as a checkout answers (docs/api.md)
                    end = lines.index("}", index + 1)
                    answer = ["\n".join(lines[index + 1:end + 1]), *[t for t in lines[end + 1:end + 2] if t.strip()]]
                shown, status = answer[0], None
                if prints_status:
                    suffix = STATUS_SUFFIX.match(shown)
                    assert suffix, f"{name}:{line_no + index}: no status after the body"
                    shown, status = suffix.group(1), int(suffix.group(2))
                elif len(answer) > 1 and (status_line := STATUS_LINE.match(answer[1])):
                    status = int(status_line.group(1))
                found.append(Example(f"{name}:{line_no + index}", line, method, target, status,
                                     json.loads(shown)))
    return found


EXAMPLES = examples()


def test_the_docs_show_examples_with_their_answers() -> None:
    """The parser finds them (an edit of the blocks' form must not leave the test checking nothing)."""
    by_doc = {name: sum(example.where.startswith(name + ":") for example in EXAMPLES) for name in DOCS_WITH_EXAMPLES}
    assert by_doc["README.md"] >= 15 and by_doc["docs/api.md"] >= 30, by_doc


@pytest.mark.parametrize("example", EXAMPLES, ids=[example.where for example in EXAMPLES])
def test_a_documented_answer_is_one_the_spec_allows(example: Example) -> None:
    found = SPEC.operation(example.method, example.target)
    assert found is not None, f"{example.where}: {example.method} {example.target} is not a route"
    statuses = [example.status] if example.status is not None else [
        int(code) for code in found[1]["responses"] if code.startswith("2")]
    problems = []
    for status in statuses:
        try:
            SPEC.check(example.method, example.target, status, example.body)
            return
        except (AssertionError, ValidationError) as problem:
            problems.append(f"{status}: {str(problem).splitlines()[0]}")
    pytest.fail(f"{example.where}: {example.command}\n" + "\n".join(problems))


def _curl_lines_matching(pattern: re.Pattern[str]) -> list[str]:
    """Every `curl` command line of README.md and docs/*.md in which ``pattern`` occurs."""
    return [
        f"{path.relative_to(ROOT)}:{number}: {line.strip()}"
        for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if re.match(r"\s*(\$ )?curl ", line) and pattern.search(line)
    ]


def test_no_curl_example_puts_a_shell_variable_in_single_quotes() -> None:
    """`-H 'X-AUTH-TOKEN: $TOKEN'` sends the six characters `$TOKEN`: copied with `:auth:`
    configured, every such example of docs/api.md was a 401 (`invalid or expired token`)."""
    wrong = _curl_lines_matching(re.compile(r"'[^']*\$[A-Za-z_{][^']*'"))
    assert not wrong, "\n".join(wrong)


def test_every_curl_example_with_a_query_quotes_its_url() -> None:
    """An unquoted `?` is a glob: zsh (macOS's shell) refuses `curl $B/status?view=queue` with
    `no matches found` before curl runs."""
    wrong = _curl_lines_matching(re.compile(r"(^|\s)[^\s\"']*\?[^\s\"']*="))
    assert not wrong, "\n".join(wrong)
