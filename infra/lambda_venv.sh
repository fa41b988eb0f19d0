#!/usr/bin/env bash
# Builds (once) the virtualenv of the Lambda Python that packages and deploys the app, and prints
# its python. Chalice gives the Lambdas the runtime of the Python that runs it and downloads
# wheels for that Python, so packaging (infra/package.sh) and `chalice deploy`
# (infra/chalice_deploy.sh) run in build/venv-<version> of $LAMBDA_PYTHON (default python3.13).
# The first build fills build/wheels-<version>/ from PyPI; later builds are offline until
# requirements.txt changes. Exit 2: no Python 3.12/3.13 on this machine.
# Beside it, build/venv-<version>/runtime-sdk/ holds what the Lambda Python runtime provides (boto3
# and its dependencies, requirements-dev.txt's boto3 pin): with the unpacked deployment zip, and
# nothing else, it stands in for the runtime when the tests run the packaged functions and when
# `make bench` times their cold import (infra/lambda_sandbox.py).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"

find_python() {
    # Lambda creates functions on Python 3.12 and newer; Debian 12's python3 is 3.11.
    if [[ -n "${LAMBDA_PYTHON:-}" ]]; then echo "$LAMBDA_PYTHON"; return; fi
    for name in python3.13 python3.12; do
        if command -v "$name" >/dev/null 2>&1 && "$name" -V >/dev/null 2>&1; then command -v "$name"; return; fi
    done
    if command -v pyenv >/dev/null 2>&1; then
        for candidate in "$(pyenv root)"/versions/3.13*/bin/python "$(pyenv root)"/versions/3.12*/bin/python; do
            if [[ -x "$candidate" ]]; then echo "$candidate"; return; fi
        done
    fi
    echo "package: no Lambda-supported Python (3.12 or 3.13) found; set LAMBDA_PYTHON to one" >&2
    exit 2
}

base_python="$(find_python)"
version="$("$base_python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
wheels="build/wheels-$version"
venv="build/venv-$version"
python="$venv/bin/python"
# Chalice packages the app but is not one of its run-time dependencies (it bundles its own runtime
# module), so it comes from requirements-dev.txt's pin.
chalice_pin="$(grep -E '^chalice==' requirements-dev.txt)"
sdk_pin="$(grep -E '^boto3==' requirements-dev.txt)"
want="$( (cat requirements.txt; echo "$chalice_pin"; echo "$sdk_pin") | sha256sum | cut -d' ' -f1)"
stamp="$venv/.requirements.sha256"

if [[ ! -x "$python" || ! -f "$stamp" || "$(cat "$stamp")" != "$want" ]]; then
    echo "package: building $venv (Python $version) from requirements.txt" >&2
    rm -rf "$venv" && mkdir -p "$wheels"
    "$base_python" -m venv "$venv"
    "$python" -m pip download --quiet --disable-pip-version-check -r requirements.txt "$chalice_pin" -d "$wheels"
    "$python" -m pip install --quiet --disable-pip-version-check --no-index --find-links "$wheels" -r requirements.txt "$chalice_pin"
    "$python" -m pip download --quiet --disable-pip-version-check "$sdk_pin" -d "$wheels"
    "$python" -m pip install --quiet --disable-pip-version-check --no-index --find-links "$wheels" \
        --target "$venv/runtime-sdk" "$sdk_pin"
    echo "$want" > "$stamp"
fi

echo "$wheels" > "$venv/.wheels"
echo "$root/$python"
