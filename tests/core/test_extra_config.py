"""``extra_config``: the YAML files a config lists are merged into it, as vmpooler merges them."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from chalicelib import config as config_module
from chalicelib.config import ConfigError


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


def test_an_extra_file_over_16_mib_is_refused(tmp_path: Path) -> None:
    big = tmp_path / "big.yaml"
    with big.open("w") as out:
        out.write("# " + "x" * (16 * 1024 * 1024) + "\n")
    main = write(tmp_path, "main.yaml", MAIN.format(extra="big.yaml"))
    with pytest.raises(ConfigError) as failed:
        load(main)
    assert failed.value.problems == [f"{big}: more than {16 * 1024 * 1024} characters"]
