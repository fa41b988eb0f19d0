"""Hostile or mistyped vSphere settings are refused when the config loads, with the key named
and the password never shown; before, most loaded and failed every pass with a library's
exception (``ValueError: invalid literal for int()``, ``embedded null byte``, an endless timeout),
or, for a folder like ``vmpool//a``, cloned into one folder and looked in another: every clone
leaked."""

from __future__ import annotations

from typing import Any

import pytest

from chalicelib.config import ConfigError, build

SECRET = "hostile-config-secret-4711"


def document(provider: dict[str, Any] | None = None, pool: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "providers": {"vc": {"provider_class": "vsphere", "server": "vc.example.com", "username": "svc",
                             "password": SECRET, **(provider or {})}},
        "pools": [{"name": "p", "size": 1, "provider": "vc", "template": "templates/t", "folder": "vmpool/p",
                   **(pool or {})}],
    }


@pytest.mark.parametrize(("where", "key", "value", "says"), [
    ("provider", "server", "https://vc.example.com", "no https://"),
    ("provider", "server", "vc.example.com/sdk", "no path"),
    ("provider", "server", f"https://svc:{SECRET}@vc.example.com/sdk", "without a user or password"),
    ("provider", "server", f"svc:{SECRET}@vc.example.com", "without a user or password"),
    ("provider", "server", "vc.example.com:99999", "port from 1 to 65535"),
    ("provider", "server", "vc.example.com:0", "port from 1 to 65535"),
    ("provider", "server", "vc.example.com:https", "numeric port"),
    ("provider", "server", "vc\x00.example.com", "host name or host:port"),
    ("provider", "server", "vc example.com", "no spaces"),
    ("provider", "server", "a" * 1_000_000, "host name"),
    ("provider", "server", "bad_label-.example.com", "host name"),
    ("provider", "datacenter", "D" * 1_000_000, "at most 80 characters"),
    ("provider", "datacenter", "DC0\n", "control characters"),
    ("provider", "username", "u" * 1_000_000, "1 to 256 characters"),
    ("provider", "connect_timeout", float("inf"), "from 0.1 to 300"),
    ("provider", "call_timeout", 1e308, "from 0.1 to 600"),
    ("provider", "host_selection_cache_seconds", float("nan"), "from 0 to 86400"),
    ("pool", "folder", "vmpool//a", "empty name"),
    ("pool", "folder", "f" * 1_000_000, "at most 80 characters"),
    ("pool", "folder", "vmpool/a\x00b", "control characters"),
    ("pool", "template", "templates/" + "t" * 81, "at most 80 characters"),
    ("pool", "template", "templates/../t", "'..' name"),
    ("pool", "folder", "vmpool/./p", "'.' or '..' name"),
    ("pool", "datacenter", "DC0//x", "empty name"),
    ("pool", "clone_target", "C/" * 40, "at most 32 names"),
    ("pool", "snapshot_mainMem_ioBlockPages", "2048\nmainMem.x = 1", "must be an integer >= 0"),
    ("pool", "snapshot_mainMem_iowait", -1, "must be an integer >= 0"),
    ("pool", "snapshot_mainMem_iowait", 2**40, "must be an integer <= 2147483647"),
])
def test_a_hostile_value_is_refused_at_load_naming_the_key_and_never_the_password(
        where: str, key: str, value: Any, says: str) -> None:
    with pytest.raises(ConfigError) as refused:
        build(document(**{where: {key: value}}))
    message = str(refused.value)
    path = f"providers.vc.{key}" if where == "provider" else f"pools[0].{key}"
    assert f"{path}: " in message and says in message, message
    assert SECRET not in message
    assert len(message) < 2000  # a million characters are quoted by their start only


@pytest.mark.parametrize(("where", "key", "value", "kept"), [
    ("provider", "server", "vcenter.example.com:8443", "vcenter.example.com:8443"),
    ("provider", "server", "[::1]:443", "[::1]:443"),
    ("provider", "server", "10.0.0.5", "10.0.0.5"),
    ("provider", "server", "vç.例え.jp", "vç.例え.jp"),
    ("provider", "username", "DOMAIN\\svc-vmpool", "DOMAIN\\svc-vmpool"),
    ("provider", "datacenter", "Europe/DC-Zürich", "Europe/DC-Zürich"),
    ("pool", "folder", "/vmpool/déjà vu/日本/", "vmpool/déjà vu/日本"),
    ("pool", "folder", "", ""),
])
def test_ordinary_values_load_and_a_folder_loses_its_outer_slashes(where: str, key: str, value: Any,
                                                                     kept: str) -> None:
    config = build(document(**{where: {key: value}}))
    settings = config.providers["vc"].settings if where == "provider" else config.pools[0]
    assert getattr(settings, key) == kept
