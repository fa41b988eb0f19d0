"""What a config must be to leave this machine for the Lambdas, checked where it leaves: packaging
(``infra/slim_zip.py`` writes its canonical JSON into the zip), ``make config-push`` (into the
config bucket) and ``make chalice-deploy`` (whose zip carries the stage's YAML as it is).

- **No secret written inline** (``password: "..."``, ``tsig_secret: "..."``): the zip is readable
  by whoever may read the deploy bucket or ``lambda:GetFunction``, and the versioned config
  bucket keeps every pushed version. Each is refused naming its key path, never its value; a
  reference (``{secret: vmpool/<stage>/...}``, ``{ssm: /vmpool/<stage>/...}``) is what travels.
- **Within what a function reads**: a function refuses a canonical config of more than
  ``config.MAX_CONFIG_CHARACTERS`` (16 MiB) and keeps the one it has. A YAML well under its own
  8 MiB can pass that once its CA files are carried (up to 1 MiB each, per provider) or its
  YAML aliases expanded: refused here, naming its largest parts.
- **CA files that reach the functions**: the canonical JSON carries a CA file's certificates;
  one it could not carry (unreadable, no PEM certificate, over 1 MiB) would travel as a path the
  functions do not have. The chalice-deploy path ships the YAML, so any CA *path* in it fails in
  AWS (an LDAP ``ca_file`` stops every function's import: ``no such file``).

This module imports the app's config only (no boto3): packaging runs it in the Lambda Python.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import Any, Iterator, Mapping

from chalicelib.auth.secrets import Secret
from chalicelib.config import (
    MAX_CONFIG_CHARACTERS,
    Config,
    ConfigError,
    canonical_json,
    config_files,
    parse,
    read_config_file,
)
from infra.config_walk import values_of_type

REFERENCE_HINT = ("secrets travel to the functions as references only: write each as one the stage's functions "
                  "may read, e.g. "
                  "{secret: vmpool/<stage>/vsphere, key: <provider>} for a provider's password or tsig_secret, "
                  "{secret: vmpool/<stage>/ldap, key: password} for LDAP's, or {ssm: /vmpool/<stage>/<name>}; "
                  "remove redis.password (in AWS the stack gives Redis's token): docs/auth.md, Secrets in the config")
"""What to do about a secret written inline."""

LARGEST_PARTS_SHOWN = 5


def inline_secrets(config: Config) -> list[str]:
    """The key paths of ``config``'s secrets written inline (a ``Secret``, not a reference). The
    pools are not walked: no pool setting is a secret (a walk of 10,000 pools took 0.33 s)."""
    seen: set[int] = set()
    return [path for item in dataclasses.fields(config) if item.name != "pools" and not item.name.startswith("_")
            for path, _ in _secrets(getattr(config, item.name), _yaml_path(item.name), seen)]


def _secrets(value: Any, path: str, seen: set[int]) -> Iterator[tuple[str, Secret]]:
    return values_of_type(Secret, value, path, seen, _yaml_path)


def _yaml_path(path: str) -> str:
    """A dataclass path as the YAML names it (the service's ``:config:`` block is ``service``)."""
    return "config" + path[len("service"):] if path == "service" or path.startswith("service.") else path


def too_large(text: str, document: Mapping[str, Any]) -> list[str]:
    """Why the canonical ``text`` (of ``document``) is more than a function reads: its size and
    its largest parts, each with its largest value; empty when it fits."""
    if len(text) <= MAX_CONFIG_CHARACTERS:
        return []
    parts: list[tuple[int, str, str]] = []  # size, key path, what in it is largest
    for section, value in document.items():
        if section in ("providers", "dns_configs", "auth") and isinstance(value, Mapping):
            parts += [(_size(block), f"{section}.{name}", _largest_key(block)) for name, block in value.items()]
        elif section == "pools" and isinstance(value, list):
            biggest = max(value, key=_size, default=None)
            named = f"the largest {biggest.get('name')}: {_mib(_size(biggest))}" if isinstance(biggest, dict) else ""
            parts.append((_size(value), f"pools ({len(value)})", named))
        else:
            parts.append((_size(value), section, ""))
    parts.sort(key=lambda part: part[0], reverse=True)
    shown = [f"{name}: {_mib(size)}" + (f" ({detail})" if detail else "")
             for size, name, detail in parts[:LARGEST_PARTS_SHOWN] if size]
    more = sum(1 for size, _, _ in parts[LARGEST_PARTS_SHOWN:] if size >= 1024)
    if more:
        shown.append(f"{more} more parts of 1 KiB or more")
    return [f"its canonical JSON is {_mib(len(text))} ({len(text)} characters), more than the "
            f"{MAX_CONFIG_CHARACTERS // (1024 * 1024)} MiB ({MAX_CONFIG_CHARACTERS} characters) a function reads: "
            "every function would refuse it; the largest parts: " + "; ".join(shown)]


def _largest_key(block: Any) -> str:
    """``ca_bundle 1.01 MiB``: the largest value of a block, when the block is a mapping."""
    if not isinstance(block, Mapping) or not block:
        return ""
    key, value = max(block.items(), key=lambda item: _size(item[1]))
    return f"{key} {_mib(_size(value))}"


def _size(value: Any) -> int:
    return len(json.dumps(value, separators=(",", ":"), default=str))


def _mib(size: int) -> str:
    return f"{size / (1024 * 1024):.2f} MiB"


def uncarried_ca_files(document: Mapping[str, Any]) -> list[str]:
    """The CA files the canonical ``document`` names by path (it carries the certificates of
    those it could read): the functions have no such file."""
    found = []
    auth = document.get("auth")
    ldap = auth.get("ldap") if isinstance(auth, Mapping) else None
    if isinstance(ldap, Mapping) and isinstance(ldap.get("ca_file"), str):
        found.append(f"auth.ldap.ca_file: {ldap['ca_file']}")
    providers = document.get("providers")
    for name, block in (providers.items() if isinstance(providers, Mapping) else ()):
        bundle = block.get("ca_bundle") if isinstance(block, Mapping) else None
        if isinstance(bundle, str) and "-----BEGIN " not in bundle:
            found.append(f"providers.{name}.ca_bundle: {bundle}")
    return found


CA_NOT_CARRIED = ("not carried: each must be a readable file of PEM certificates (-----BEGIN CERTIFICATE-----) "
                  "of at most 1 MiB where the config is validated, or its certificates written in the config "
                  "(auth.ldap.ca_data, or ca_bundle as PEM text)")


def shipping_problems(config: Config, text: str | None = None) -> list[str]:
    """Why ``config``, as canonical JSON (``text``: its ``canonical_json`` when already made),
    must not reach the functions; empty when it may."""
    problems = _inline_secret_problems(config)
    if text is None:
        text = canonical_json(config)
    document = json.loads(text)  # the CA files read once, by canonical_json
    problems += [f"{path}: CA file {CA_NOT_CARRIED}" for path in uncarried_ca_files(document)]
    problems += too_large(text, document)
    return problems


def _inline_secret_problems(config: Config) -> list[str]:
    """A line per secret written inline (its key path, never its value), then what to do."""
    paths = inline_secrets(config)
    return [f"{path}: a secret written inline" for path in paths] + ([f"({REFERENCE_HINT})"] if paths else [])


def yaml_shipping_problems(config: Config) -> list[str]:
    """Why ``config``'s YAML, shipped as it is (the ``chalice deploy`` path: its zip holds the
    stage's config file, validated again by every function), must not reach the functions."""
    problems = _inline_secret_problems(config)
    ldap = config.auth.ldap if config.auth is not None else None
    if ldap is not None and ldap.ca_file:
        problems.append(f"auth.ldap.ca_file: {ldap.ca_file}: a CA file's path (every function would refuse the "
                        "config: no such file)")
    for name, provider in config.providers.items():
        bundle = getattr(provider.settings, "ca_bundle", None)
        if isinstance(bundle, str) and "-----BEGIN " not in bundle:
            problems.append(f"providers.{name}.ca_bundle: {bundle}: a CA file's path (every pass of its pools would "
                            "fail: cannot use ca_bundle ...: No such file)")
    return problems


SHIPPED_DIR = Path(__file__).resolve().parents[1] / "chalicelib"
"""What Chalice ships of the project beside app.py (and vendor/): a config file elsewhere is not
in the functions' zip."""


def unshipped_files(path: Path) -> list[str]:
    """The ``extra_config`` files of the config file ``path`` that ``chalice deploy`` would not
    ship (outside chalicelib/): every function's import would fail reading them."""
    return [f"config.extra_config: {file}: outside {SHIPPED_DIR.name}/, which is all of the project's files Chalice "
            "ships beside app.py (every function would refuse the config: cannot read)"
            for file in config_files(path)[1:] if not file.resolve().is_relative_to(SHIPPED_DIR)]


CHALICE_DEPLOY_FIX = ("The chalice deploy path ships the config file as it is, not its canonical JSON: write the "
                      "certificates into it as PEM text (auth.ldap.ca_data: |, ca_bundle: |), secrets as references, "
                      "extra_config files in chalicelib/, "
                      "or deploy with make deploy, whose package carries the certificates (docs/deploy.md)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--chalice-deploy", metavar="CONFIG_FILE", required=True,
                        help="refuse the stage's config file the chalice deploy path would ship as it is")
    args = parser.parse_args(argv)
    path = Path(args.chalice_deploy)
    try:
        config = parse(read_config_file(path), str(path), base_dir=path.parent)
    except OSError as error:
        print(f"chalice-deploy: cannot read {path}: {error.strerror}", file=sys.stderr)
        return 1
    except ConfigError as error:
        print(f"chalice-deploy: {path} is not valid; nothing deployed:\n{error}", file=sys.stderr)
        return 1
    problems = yaml_shipping_problems(config) + unshipped_files(path)
    if problems:
        print(f"chalice-deploy: {path} cannot be shipped to the functions; nothing deployed:\n  "
              + "\n  ".join(problems) + f"\n{CHALICE_DEPLOY_FIX}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
