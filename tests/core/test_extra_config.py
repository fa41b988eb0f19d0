"""``extra_config``: the YAML files a config lists are merged into it, as vmpooler merges them."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from chalicelib import config as config_module
from chalicelib.config import YAML_TOO_LARGE, ConfigError


def write(directory: Path, name: str, text: str) -> Path:
    path = directory / name
    path.write_text(text)
    return path


MAIN = """\
:config:
  task_limit: 4
  prefix: 'ci-'
  extra_config: '{extra}'
:providers:
  :dummy:
    createvm_max_time: 5
:pools:
  - name: 'main-pool'
    size: 2
    provider: dummy
"""


def load(path: Path) -> config_module.Config:
    return config_module.load({config_module.CONFIG_FILE_ENV: str(path)})


def test_extra_files_add_pools_and_keys_and_the_main_file_wins(tmp_path: Path) -> None:
    write(tmp_path, "pools.yaml", """\
:pools:
  - name: 'extra-pool'
    size: 3
    provider: dummy
""")
    write(tmp_path, "more.yaml", """\
:config:
  task_limit: 99
  vm_lifetime: 7
:providers:
  :dummy:
    createvm_max_time: 50
    boot_time: 2
""")
    main = write(tmp_path, "vmpooler.yaml", MAIN.format(extra="pools.yaml, more.yaml"))
    config = load(main)
    assert config.pool_names == ("main-pool", "extra-pool")
    assert config.pool("extra-pool").size == 3  # type: ignore[union-attr]
    # Set in the main file: kept. Only in an extra file: added.
    assert config.service.task_limit == 4 and config.service.vm_lifetime == 7
    dummy = config.providers["dummy"]
    assert dummy.settings.createvm_max_time == 5 and dummy.settings.boot_time == 2


def test_a_list_of_files_and_absolute_paths(tmp_path: Path) -> None:
    extra = write(tmp_path, "a.yaml", ":pools:\n  - {name: 'a', size: 1, provider: dummy}\n")
    main = write(tmp_path, "main.yaml", f":config:\n  extra_config: ['{extra}']\n:pools: []\n")
    assert load(main).pool_names == ("a",)


def test_relative_paths_are_read_from_the_main_files_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "conf").mkdir()
    write(tmp_path / "conf", "pools.yaml", ":pools:\n  - {name: 'near', size: 1, provider: dummy}\n")
    main = write(tmp_path / "conf", "main.yaml", ":config:\n  extra_config: 'pools.yaml'\n")
    monkeypatch.chdir(tmp_path)  # not where the files are
    assert load(main).pool_names == ("near",)


def test_a_missing_or_broken_extra_file_fails_the_load_naming_it(tmp_path: Path) -> None:
    write(tmp_path, "broken.yaml", "pools: [\n")
    main = write(tmp_path, "main.yaml", MAIN.format(extra="missing.yaml,broken.yaml"))
    with pytest.raises(ConfigError) as failed:
        load(main)
    problems = "\n".join(failed.value.problems)
    assert f"cannot read {tmp_path / 'missing.yaml'}" in problems
    assert f"{tmp_path / 'broken.yaml'}: not valid YAML" in problems


def test_an_extra_pool_is_validated_like_any_other(tmp_path: Path) -> None:
    write(tmp_path, "pools.yaml", ":pools:\n  - {name: 'main-pool', size: 9, provider: dummy}\n")
    main = write(tmp_path, "main.yaml", MAIN.format(extra="pools.yaml"))
    with pytest.raises(ConfigError, match='duplicate pool name "main-pool"'):
        load(main)


@pytest.mark.parametrize("special", ["/dev/zero", "fifo"])
def test_a_file_that_is_not_a_regular_file_is_refused_not_read(tmp_path: Path, special: str) -> None:
    """Before, ``extra_config: /dev/zero`` read until memory ran out and a named pipe blocked the
    load for ever (make run, config-push); so did the same as the config file itself."""
    if special == "fifo":
        special = str(tmp_path / "fifo")
        os.mkfifo(special)
    main = write(tmp_path, "main.yaml", MAIN.format(extra=special))
    with pytest.raises(ConfigError) as failed:
        load(main)
    assert failed.value.problems == [f"config.extra_config: cannot read {special}: not a regular file"]
    with pytest.raises(ConfigError) as failed:
        load(Path(special))
    assert failed.value.problems == [f"{special}: cannot read: not a regular file"]


def test_an_extra_file_over_8_mib_is_refused(tmp_path: Path) -> None:
    big = tmp_path / "big.yaml"
    with big.open("w") as out:
        out.write("# " + "x" * (8 * 1024 * 1024) + "\n")
    main = write(tmp_path, "main.yaml", MAIN.format(extra="big.yaml"))
    with pytest.raises(ConfigError) as failed:
        load(main)
    assert failed.value.problems == [f"{big}: more than {8 * 1024 * 1024} characters" + YAML_TOO_LARGE]


def test_extra_files_past_8_mib_together_are_refused_naming_the_file_that_passes_it(tmp_path: Path) -> None:
    """Each file was bounded at 8 MiB, not the files together: up to 50 of 8 MiB each were read,
    parsed and kept (a long string in each: 4.0 s of CPU and 454 MB, 9 s on the shared machine)."""
    chunk = "# " + "x" * 1022 + "\n"
    third = config_module.MAX_YAML_CHARACTERS // 3 // len(chunk)
    for name in ("part-1.yaml", "part-2.yaml", "part-3.yaml"):
        write(tmp_path, name, chunk * third)  # each 1/3 of the limit: the main file's text passes it
    (tmp_path / "never-read.yaml").mkdir()  # would be refused as no regular file, if it were read
    main = write(tmp_path, "main.yaml", MAIN.format(extra="part-1.yaml, part-2.yaml, part-3.yaml, never-read.yaml"))
    with pytest.raises(ConfigError) as failed:
        load(main)
    assert failed.value.problems == [(
        f"config.extra_config: with {tmp_path / 'part-3.yaml'} the config and its extra_config files hold more "
        f"than {8 * 1024 * 1024} characters (8 MiB) of YAML together, more than any config the service can serve "
        "(10,000 pools written as vmpooler writes them are 2.5 MB); the files after it are not read")]
    # Two of them together are within the bound: loaded.
    write(tmp_path, "main.yaml", MAIN.format(extra="part-1.yaml, part-2.yaml"))
    assert load(main).pool_names == ("main-pool",)


def test_more_than_50_extra_files_are_refused_before_any_is_read(tmp_path: Path) -> None:
    names = ", ".join(f"missing-{n}.yaml" for n in range(51))
    with pytest.raises(ConfigError) as failed:
        load(write(tmp_path, "main.yaml", MAIN.format(extra=names)))
    assert failed.value.problems == ["config.extra_config: at most 50 files, got 51"]


def test_pools_past_the_limit_across_extra_files_are_refused_before_the_next_file_is_read(tmp_path: Path) -> None:
    """Each file may hold up to 10,000 pools, and up to 50 files may be listed: before, all of
    them were read and joined (each join comparing every pool with every one already there)
    before the pools were counted."""
    pool = "  - {{name: {name}, size: 1, provider: dummy}}\n"
    for number in (1, 2):
        write(tmp_path, f"pools-{number}.yaml",
              ":pools:\n" + "".join(pool.format(name=f"p{number}-{n}") for n in range(6000)))
    (tmp_path / "never-read.yaml").mkdir()  # would be refused as no regular file, if it were read
    main = write(tmp_path, "main.yaml", MAIN.format(extra="pools-1.yaml, pools-2.yaml, never-read.yaml"))
    with pytest.raises(ConfigError) as failed:
        load(main)
    assert failed.value.problems == [f"pools: at most 10000 pools, got 12001 with {tmp_path / 'pools-2.yaml'}"]


class Counted(dict):  # type: ignore[type-arg]
    """A pool whose comparisons with another are counted."""

    compared = 0

    def __eq__(self, other: object) -> bool:
        Counted.compared += 1
        return super().__eq__(other)

    __hash__ = None  # type: ignore[assignment]


def test_joining_an_extra_files_pools_does_not_compare_each_with_every_pool_there() -> None:
    """vmpooler's deep_merge appends the extra file's items not already in the list; before,
    each was compared with every item there: 3,000 pools joined to 3,000 took 1.4 s of CPU,
    50 files of 10,000 pools would have taken hours."""
    main = [Counted(name=f"a{n}", size=1) for n in range(500)]
    extra = [Counted(name=f"b{n}", size=1) for n in range(500)] + [Counted(name="a7", size=1.0)]
    Counted.compared = 0
    joined = config_module._deep_merge({"pools": main}, {"pools": extra})["pools"]
    assert Counted.compared == 0  # before: 250,500
    assert joined == main + extra[:-1]  # a7 is there already (1.0 == 1)
    # Values no key stands for (YAML's !!set) are still joined as vmpooler joins them.
    assert config_module._deep_merge([{"x"}, 1], [{"x"}, {"y"}, True]) == [{"x"}, 1, {"y"}]


POOLS = ":pools:\n" + "".join(f"  - {{name: p{n}, size: 1, provider: dummy}}\n" for n in range(2000))


@pytest.mark.parametrize("main", [
    ":config:\n  extra_config: 'a.yaml, b.yaml'\n" + POOLS,
    POOLS + "config:\n  task_limit: 4\n  extra_config: [a.yaml, b.yaml]\n",  # after the pools
    "base: &base {task_limit: 4}\n:config:\n  <<: *base\n  extra_config: [a.yaml, b.yaml]\n" + POOLS,  # an alias
    ":config: &c\n  extra_config: &e [a.yaml, &b b.yaml]\n  x: *e\n" + POOLS,  # anchors inside
    "{config: {extra_config: 'a.yaml,b.yaml'}, pools: []}\n",
], ids=["first", "last", "alias-outside", "anchors-inside", "flow"])
def test_the_watched_files_are_the_ones_a_load_reads_without_building_the_pools(
        tmp_path: Path, main: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The local stack watches the config and its extra files (``config_files``): only the
    config section is built to find them, unless it names what is outside it."""
    path = write(tmp_path, "main.yaml", main)
    read = config_module._read_document
    built: list[int] = []
    monkeypatch.setattr(config_module, "_read_document",
                        lambda text, source, reader: built.append(len(text)) or read(text, source, reader))
    assert config_module.config_files(path) == [path, tmp_path / "a.yaml", tmp_path / "b.yaml"]
    assert built[0] < 200 and (len(built) == 1) is ("*base" not in main)  # else the whole file, once


@pytest.mark.parametrize("main", [POOLS, "- a\n- b\n", "", ":config:\n  extra_config: [a.yaml\n", ":config: {\n"])
def test_a_config_without_extra_files_or_unreadable_is_watched_alone(tmp_path: Path, main: str) -> None:
    path = write(tmp_path, "main.yaml", main)
    assert config_module.config_files(path) == [path]
