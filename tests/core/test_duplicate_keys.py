"""A key written twice in one mapping of the YAML config: PyYAML (and Ruby's Psych, for vmpooler)
keeps the last silently, so an operator who writes ``size: 5`` and later ``size: 50`` in one pool,
or ``:config:`` twice, lost one without a word. Now refused, naming the key's path and both lines,
where a value would be lost in a section vmpool reads; a warning where nothing is lost or the
section is one vmpool ignores (a config vmpooler accepts keeps loading where it can)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from chalicelib.config import MAX_REPORTED_DUPLICATES, ConfigError, parse

HEAD = ":providers:\n  :dummy:\n    provider_class: dummy\n:pools:\n"


def problems_of(text: str, base_dir: Path | None = None) -> list[str]:
    with pytest.raises(ConfigError) as refused:
        parse(text, "vmpool.yaml", base_dir=base_dir)
    return refused.value.problems


@pytest.mark.parametrize("text, problem", [
    (HEAD + "  - name: a\n    size: 5\n    provider: dummy\n    size: 50\n",
     "pools[0].size: written twice, at lines 6 and 8 of vmpool.yaml"),
    (":config:\n  task_limit: 3\n" + HEAD + "  - {name: a, size: 1, provider: dummy}\nconfig:\n  timeout: 7\n",
     "config: written twice, at lines 1 and 8 of vmpool.yaml"),  # :config: and config: are one key
    (HEAD + "  - {name: a, size: 1, provider: dummy}\n:pools:\n  - {name: b, size: 1, provider: dummy}\n",
     "pools: written twice, at lines 4 and 6 of vmpool.yaml"),
    (HEAD.replace("    provider_class: dummy\n", "    provider_class: dummy\n  dummy: {}\n")
     + "  - {name: a, size: 1, provider: dummy}\n", "providers.dummy: written twice, at lines 2 and 4"),
    (HEAD + "  - {name: a, size: 1, provider: dummy}\n:tagfilter:\n  url: '(.*)/'\n  :url: '(.*)'\n",
     "tagfilter.url: written twice, at lines 7 and 8"),
])
def test_a_key_written_twice_with_two_values_is_refused_naming_its_path_and_lines(text: str, problem: str) -> None:
    problems = problems_of(text)
    assert len(problems) == 1 and problems[0].startswith(problem), problems


def test_every_problem_is_listed_with_the_duplicates() -> None:
    problems = problems_of(HEAD + "  - {name: a, size: 6, provider: dummy, size: five}\n")
    assert problems[0].startswith("pools[0].size: written twice, at lines 5 and 5")
    assert any("must be an integer" in problem for problem in problems[1:]), problems


def test_a_secret_written_twice_is_not_shown() -> None:
    text = (":providers:\n  :vsphere:\n    server: v\n    username: u\n    password: hunter2\n"
            "    password: 's3cret!'\n:pools:\n  - {name: a, size: 1, template: t/a}\n")
    problems = problems_of(text)
    assert problems[0].startswith("providers.vsphere.password: written twice, at lines 5 and 6")
    assert "hunter2" not in str(problems) and "s3cret" not in str(problems)


def test_a_key_written_twice_with_the_same_value_or_in_an_ignored_section_loads_with_a_warning() -> None:
    text = (HEAD + "  - name: a\n    size: 2\n    provider: dummy\n    size: 2\n"
            ":graphite:\n  server: one.example.com\n  server: two.example.com\n")
    config = parse(text, "vmpool.yaml")
    assert config.pools[0].size == 2
    assert config.warnings == (
        ("graphite.server: written twice, at lines 10 and 11 of vmpool.yaml, in a section vmpool ignores: "
        "the last one would be used"),
        "pools[0].size: written twice, at lines 6 and 8 of vmpool.yaml, with the same value: one is enough",
    )


def test_merge_keys_still_override_without_a_warning() -> None:
    text = (":providers:\n  :dummy: {provider_class: dummy}\n"
            "defaults: &defaults {size: 1, provider: dummy, template: t/base}\n"
            "bigger: &bigger {size: 9, timeout: 30}\n:pools:\n"
            "  - &a {<<: *defaults, name: a, template: t/a}\n"
            "  - <<: [*bigger, *defaults]\n    name: b\n"
            "  - <<: *a\n    name: c\n    size: 3\n")
    config = parse(text)
    assert [(pool.name, pool.size, pool.template, pool.timeout_minutes) for pool in config.pools] == [
        ("a", 1, "t/a", 15), ("b", 9, "t/base", 30), ("c", 3, "t/a", 15)]
    assert not [warning for warning in config.warnings if "twice" in warning], config.warnings


def test_a_key_written_100000_times_is_one_bounded_refusal() -> None:
    text = HEAD + "  - name: a\n    provider: dummy\n" + "".join(f"    size: {n}\n" for n in range(100_000))
    started = time.process_time()
    problems = [problem for problem in problems_of(text) if "twice" in problem]
    assert time.process_time() - started < 20  # a load, not a quadratic walk (about 1 s here)
    assert len(problems) == MAX_REPORTED_DUPLICATES + 1, problems[-3:]
    assert problems[0].startswith("pools[0].size: written twice, at lines 7 and 8 of vmpool.yaml")
    assert problems[-1] == f"vmpool.yaml: {99_999 - MAX_REPORTED_DUPLICATES} more keys written twice"


def test_a_key_written_100000_times_in_an_ignored_section_is_a_bounded_warning() -> None:
    text = HEAD + "  - {name: a, size: 1, provider: dummy}\n:statsd:\n" + "  port: 8125\n" * 100_000
    warnings = [warning for warning in parse(text).warnings if "twice" in warning]
    assert len(warnings) == MAX_REPORTED_DUPLICATES + 1
    assert warnings[-1] == f"config: {99_999 - MAX_REPORTED_DUPLICATES} more keys written twice"


def test_an_alias_bomb_under_a_key_written_twice_is_still_refused_at_once() -> None:
    bomb = 'l0: &l0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]\n'
    bomb += "".join(f"l{n}: &l{n} [{', '.join([f'*l{n - 1}'] * 9)}]\n" for n in range(1, 9))
    started = time.process_time()
    problems = problems_of(bomb + HEAD + "  - {name: a, size: 1, provider: dummy, alias: *l8, alias: *l8}\n")
    assert time.process_time() - started < 10
    assert problems == ["vmpool.yaml: more than 2000000 values once its YAML aliases are expanded (an alias bomb?)"]


def test_a_key_written_twice_in_an_extra_config_file_names_that_file(tmp_path: Path) -> None:
    (tmp_path / "pools.yaml").write_text(":pools:\n  - name: b\n    size: 1\n    size: 4\n    provider: dummy\n")
    text = ":config:\n  extra_config: pools.yaml\n" + HEAD + "  - {name: a, size: 1, provider: dummy}\n"
    problems = problems_of(text, base_dir=tmp_path)
    assert problems == [(f"pools[0].size: written twice, at lines 3 and 4 of {tmp_path / 'pools.yaml'}; the one "
                        "at line 3 would be ignored: remove one of them")]


def test_keys_written_differently_that_load_as_one_are_one_key() -> None:
    # true and True are one boolean, 1 and 0x1 one integer: PyYAML kept the last of each.
    problems = problems_of(HEAD + "  - {name: a, size: 1, provider: dummy}\n:tagfilter:\n"
                           "  true: a\n  True: b\n  1: x\n  0x1: y\n")
    assert [problem.split(";")[0] for problem in problems] == [
        "tagfilter.True: written twice, at lines 7 and 8 of vmpool.yaml",
        "tagfilter.0x1: written twice, at lines 9 and 10 of vmpool.yaml"]
