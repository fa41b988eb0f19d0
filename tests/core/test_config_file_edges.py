"""Config files at the edges of what YAML and text are: bytes that are not UTF-8, scalars YAML
resolves but cannot build, thousands of unknown keys, a key a million characters long. Each is a
ConfigError (or a bounded warning) wherever a config is read: ``load`` (make run's start and its
check), ``make config-push``, an ``extra_config`` file, a YAML object in the bucket."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from chalicelib.clock import FakeClock
from chalicelib.config import MAX_WARNINGS, ConfigError, canonical_json, from_text, load, parse
from chalicelib.config_source import ConfigSource
from infra import config_push

GOOD = ":providers:\n  :dummy:\n:pools:\n  - name: debian\n    size: 1\n    provider: dummy\n"
LATIN1 = GOOD.replace("debian", "caf\xe9").encode("latin-1")


def test_a_file_that_is_not_utf8_is_refused_at_start_naming_the_byte_and_line(tmp_path: Path) -> None:
    path = tmp_path / "vmpool.yaml"
    path.write_bytes(LATIN1)
    with pytest.raises(ConfigError) as refused:  # before: UnicodeDecodeError out of make run's start
        load({"VMPOOL_CONFIG_FILE": str(path)})
    assert refused.value.problems == [f"{path}: cannot read: not UTF-8 text (byte 43, line 4)"]


def test_config_push_refuses_a_file_that_is_not_utf8_in_one_line(tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "vmpool.yaml"
    path.write_bytes(LATIN1)
    # Refused before any AWS client is made: the session is never used.
    assert config_push.main(["--stage", "dev", "--file", str(path), "--bucket", "b"], session=object()) == 1
    assert capsys.readouterr().err == f"config-push: cannot read {path}: not UTF-8 text (byte 43, line 4)\n"


def test_an_extra_config_file_that_is_not_utf8_is_a_problem_naming_it(tmp_path: Path) -> None:
    (tmp_path / "extra.yaml").write_bytes(b":pools:\n  - name: caf\xe9\n")
    with pytest.raises(ConfigError) as refused:
        parse(GOOD + ":config:\n  extra_config: extra.yaml\n", base_dir=tmp_path)
    assert refused.value.problems == [(f"config.extra_config: cannot read {tmp_path / 'extra.yaml'}: not UTF-8 text "
                                      "(byte 21, line 2)")]


@pytest.mark.parametrize(("text", "problem"), [
    # A date past its month: YAML resolves it as a timestamp, Python cannot build it.
    (GOOD + "    template: 2001-02-30\n",
     ('config: line 7: "2001-02-30" is no value YAML can build (day is out of range for month): quote it to make '
     "it a string")),
    (GOOD + ":graphite:\n  2001-02-30: 1\n",  # as a key, in a section vmpool ignores
     ('config: line 8: "2001-02-30" is no value YAML can build (day is out of range for month): quote it to make '
     "it a string")),
    # An integer of more digits than Python converts (4,300).
    (GOOD.replace("size: 1", "size: " + "9" * 5000),
     'config: line 5: "' + "9" * 80 + '..." is no value YAML can build (Exceeds the limit (4300 digits) for integer '
     "string conversion: value has 5000 digits): quote it to make it a string"),
], ids=["date", "date-key", "digits"])
def test_a_scalar_yaml_resolves_but_cannot_build_is_refused_with_its_line(text: str, problem: str) -> None:
    with pytest.raises(ConfigError) as refused:  # before: ValueError (a traceback)
        parse(text)
    assert refused.value.problems == [problem]


def test_a_bucket_object_yaml_cannot_build_keeps_the_last_good_config() -> None:
    """An object put in the bucket by hand (``aws s3 cp``): before, the ValueError left every
    function's refresh, a 500 to the request that ran it, again every 30 s."""
    good = parse(GOOD)
    objects = iter([(GOOD + "    template: 2001-02-30\n", "etag-1")])
    source = ConfigSource(good, lambda etag: next(objects, None), FakeClock(), refresh_seconds=0)
    assert source.current() is good
    assert source.current() is good  # the same object is not fetched and built again


def test_thousands_of_unknown_keys_are_a_bounded_list_of_warnings() -> None:
    """Each warning is logged by every function at each load of the config: before, 200,000
    unknown keys were 200,000 warnings in the canonical JSON and as many log lines at every start."""
    unknown = "".join(f"    key{n}: 1\n" for n in range(MAX_WARNINGS + 500))
    config = parse(GOOD + unknown)
    assert config.warnings == (*(f"pools[0].key{n}: unknown key, ignored" for n in range(MAX_WARNINGS)),
                               "500 more warnings")
    assert json.loads(canonical_json(config))["warnings"] == list(config.warnings)
    assert from_text(canonical_json(config)).warnings == config.warnings


def test_unknown_sections_count_toward_the_same_bound() -> None:
    config = parse(GOOD + "".join(f"section{n}: 1\n" for n in range(MAX_WARNINGS + 1)))
    assert config.warnings[0] == "section0: unknown section, ignored"
    assert config.warnings[-1] == "1 more warnings"


def test_an_unknown_key_a_million_characters_long_is_warned_about_cut_short() -> None:
    config = parse(GOOD + "    ? " + "k" * 1_000_000 + "\n    : 1\n")
    assert config.warnings == ("pools[0]." + "k" * 191 + "...: unknown key, ignored",)


@pytest.mark.parametrize("name", ["VMPOOLER_CONFIG_FILE", "VMPOOLER_CONFIG"])
def test_a_config_named_by_vmpoolers_variable_alone_is_refused_naming_vmpools(name: str, tmp_path: Path) -> None:
    """Before: loaded without a word the packaged demo config (three dummy pools)."""
    path = tmp_path / "vmpooler.yaml"
    path.write_text(GOOD)
    value = str(path) if name.endswith("FILE") else GOOD
    with pytest.raises(ConfigError) as refused:
        load({name: value})
    wanted = name.replace("VMPOOLER", "VMPOOL")
    assert refused.value.problems == [(f"{name} is vmpooler's variable, which vmpool does not read: name the config "
                                      f"with {wanted} (README.md, Configuration)")]
    assert [pool.name for pool in load({name: value, wanted: value}).pools] == ["debian"]


def test_a_config_and_its_extra_files_hold_at_most_max_values_together(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """Before, each file could hold MAX_VALUES: 50 extra files of 1.9 million values each were
    50 times 15 s of CPU and gigabytes joined (one is 15 s and 736 MB)."""
    monkeypatch.setattr("chalicelib.config.MAX_VALUES", 1000)
    for name in ("one", "two"):
        (tmp_path / f"{name}.yaml").write_text("graphite:\n  " + name + ": [" + ", ".join(map(str, range(600))) + "]\n")
    (tmp_path / "three.yaml").write_bytes(b"\xff")  # never read: the values were spent before it
    main = GOOD + ":config:\n  extra_config: one.yaml, two.yaml, three.yaml\n"
    assert parse(GOOD + ":config:\n  extra_config: one.yaml\n", base_dir=tmp_path).pools  # 600 and the main's: fine
    with pytest.raises(ConfigError) as refused:
        parse(main, base_dir=tmp_path)
    assert refused.value.problems == [(f"{tmp_path / 'two.yaml'}: more than 1000 values with the config files read "
                                      "before it")]


def test_canonical_json_with_a_byte_order_mark_is_read_as_canonical() -> None:
    """An editor that writes a BOM saved config-push's JSON, copied into the bucket by hand:
    before, read as YAML (two 'unknown section' warnings, and in a Lambda, without pydantic, refused)."""
    pushed = canonical_json(parse(GOOD))
    config = from_text("\ufeff" + pushed)
    assert config == from_text(pushed) and config.warnings == ()
