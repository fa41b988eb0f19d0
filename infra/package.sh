#!/usr/bin/env bash
# Builds the deployable package of one stage into build/package/ (or $2):
#   sam.json        Chalice's SAM template merged with infra/template.yaml + generated resources
#   deployment.zip  the app and its dependencies for Lambda
#
#   infra/package.sh [stage=dev] [out=build/package]
#   VMPOOL_CONFIG_FILE=my-vmpool.yaml infra/package.sh ...   (packages my-vmpool.yaml as the stage's config)
#
# Chalice gives the Lambdas the runtime of the Python that runs it and downloads wheels for that
# Python, so the build runs in its own virtualenv of the Lambda Python ($LAMBDA_PYTHON, default
# python3.13; Lambda no longer creates python3.11 functions). The first build fills
# build/wheels-<version>/ from PyPI and installs requirements.txt into build/venv-<version>/;
# later builds are offline (pip runs with --no-index against that wheel cache) until
# requirements.txt changes. Chalice also keeps the dependency zip in .chalice/deployments/.
# CI: cache build/wheels-* keyed on requirements.txt.
set -euo pipefail

stage="${1:-dev}"
out="${2:-build/package}"
root="$(cd "$(dirname "$0")/.." && pwd)"
# VMPOOL_CONFIG_FILE, when given, is the config to package (relative to where we were called).
given_config="${VMPOOL_CONFIG_FILE:+$(realpath -- "$VMPOOL_CONFIG_FILE")}"
cd "$root"

python="$(infra/lambda_venv.sh)"
wheels="$(cat "$(dirname "$python")/../.wheels")"
export PIP_NO_INDEX=1 PIP_FIND_LINKS="$root/$wheels" PIP_DISABLE_PIP_VERSION_CHECK=1
if [[ -f ".chalice/stack-$stage.json" ]]; then
    echo "package: stage $stage is wired for chalice deploy (.chalice/stack-$stage.json); deploy it with" \
         "'make chalice-deploy STAGE=$stage', or delete that file and run python -m infra.sync_config" >&2
    exit 1
fi
# The config.json / policy files must match infra/sync_config.py.
"$python" -m infra.sync_config --check


# Package with the stage's own environment, so app.py declares the same functions (the stage's
# reconcile queue, its consumer's concurrency) as the Lambdas will at run time.
eval "$("$python" - "$stage" <<'PY'
import json, shlex, sys
env = json.load(open(".chalice/config.json"))["stages"][sys.argv[1]]["environment_variables"]
for name, value in env.items():
    print(f"export {name}={shlex.quote(value)}")
PY
)"

# The stage's IAM policy grants the route53 zones of its own config file only (others: refused),
# and its own secrets (vmpool/<stage>/...: others are warned of, they would fail until a push).
"$python" -m infra.sync_config --granted "$stage" "${given_config:-$VMPOOL_CONFIG_FILE}"

# The config file the functions read (the stage's path, e.g. chalicelib/vmpool.yaml): packaged as
# the canonical JSON of its validated config (infra/slim_zip.py), so a Lambda imports neither
# pydantic nor yaml to load it; from the given VMPOOL_CONFIG_FILE when there is one (make package
# VMPOOL_CONFIG_FILE=my-vmpool.yaml: the functions start with its pools until a push replaces them).
packaged_config="$VMPOOL_CONFIG_FILE"
from_config=()
if [[ -n "$given_config" ]]; then
    export VMPOOL_CONFIG_FILE="$given_config"
    from_config=(--from "$given_config")
fi

merge="build/merge-template-$stage.json"
# (what the packaged config's DNS entries need of the stack's parameters becomes its Rules)
"$python" -m infra.template --stage "$stage" --config "$VMPOOL_CONFIG_FILE" > "$merge"
rm -rf "$out"
# chalice needs a region to build ARNs; the template itself is region-neutral. Its import of app.py
# loads the stage's own config, not the given one: nothing chalice packages depends on the pools,
# and the given file, validated above, is validated again as it goes into the zip (slim_zip). A
# config of 2,000 pools takes a second or more of CPU each time it is validated.
VMPOOL_CONFIG_FILE="$packaged_config" AWS_DEFAULT_REGION="${AWS_DEFAULT_REGION:-us-east-1}" \
    "$python" -c "import sys; from chalice.cli import main; sys.exit(main())" \
    package --stage "$stage" --merge-template "$merge" "$out" >&2
# Slimmed for Lambda (infra/slim_zip.py): no SDK, no unused library parts, bytecode compiled ahead,
# the config validated and written as canonical JSON; no X-Ray SDK for a stage that does not trace
# (its POWERTOOLS_TRACE_DISABLED, exported above from the stage's environment).
tracing=()
if [[ "${POWERTOOLS_TRACE_DISABLED:-false}" == true ]]; then
    tracing=(--without-tracing)
fi
"$python" -m infra.slim_zip "$out/deployment.zip" --config "$packaged_config" ${from_config[@]+"${from_config[@]}"} \
    ${tracing[@]+"${tracing[@]}"}
echo "$out/sam.json"
