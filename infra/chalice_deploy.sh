#!/usr/bin/env bash
# Update a stage's API and functions with `chalice deploy`, once its infrastructure stack exists
# (make infra-deploy). docs/deploy.md says when to use this path instead of make deploy.
#
#   infra/chalice_deploy.sh STAGE          (or: make chalice-deploy STAGE=dev)
#
# 0. infra/shipped_config.py refuses a config file Chalice would ship with a CA file's path or a
#    secret written inline in it (the functions have no such file; the zip is no place for secrets).
# 1. infra/stage_settings.py writes the stage's settings from the stack's outputs (subnets,
#    security group, Redis URL and token secret, queue URL, config bucket) into .chalice/
#    (KEEP_STAGE_SETTINGS=1: use .chalice/stack-STAGE.json as it is).
# 2. chalice deploy --stage STAGE, run by the Lambda Python (infra/lambda_venv.sh).
# 3. infra/stage_settings.py --finish sets what Chalice cannot: partial batch responses on the
#    reconcile queue's event source, the stage in the API's name, the 404 {"ok":false} answers.
set -euo pipefail
stage="${1:?usage: infra/chalice_deploy.sh STAGE}"
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
tools="${PYTHON:-$root/.venv/bin/python}"  # boto3 for the settings: not a Lambda dependency
# Chalice ships the stage's config file as it is (not its canonical JSON, as make deploy's package
# does), and every function validates it again: a CA file's path or a secret written inline in it
# is refused here, before anything is built or deployed (infra/shipped_config.py).
stage_config="$("$tools" - "$stage" <<'PY'
import json, sys
print(json.load(open(".chalice/config.json"))["stages"][sys.argv[1]]["environment_variables"]["VMPOOL_CONFIG_FILE"])
PY
)"
"$tools" -m infra.shipped_config --chalice-deploy "$stage_config"
python="$(infra/lambda_venv.sh)"
wheels="$(cat "$(dirname "$python")/../.wheels")"
export PIP_NO_INDEX=1 PIP_FIND_LINKS="$root/$wheels" PIP_DISABLE_PIP_VERSION_CHECK=1

if [[ "${KEEP_STAGE_SETTINGS:-}" == 1 && -f ".chalice/stack-$stage.json" ]]; then
    echo "chalice-deploy: keeping .chalice/stack-$stage.json as it is" >&2
else
    "$tools" -m infra.stage_settings --stage "$stage"
fi
eval "$("$python" - "$stage" <<'PY'
import json, shlex, sys
env = json.load(open(".chalice/config.json"))["stages"][sys.argv[1]]["environment_variables"]
for name, value in env.items():
    print(f"export {name}={shlex.quote(value)}")
PY
)"
"$python" -c "import sys; from chalice.cli import main; sys.exit(main())" deploy --stage "$stage" >&2
"$tools" -m infra.stage_settings --stage "$stage" --finish
