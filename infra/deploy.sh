#!/usr/bin/env bash
# Deploy one stage of vmpool to the AWS account of the current credentials, in one command:
#
#   infra/deploy.sh STAGE S3_BUCKET Key=Value ...      (or: make deploy STAGE=prod BUCKET=... PARAMS="...")
#
# Builds the package (infra/package.sh), uploads its code and template to S3_BUCKET, and creates
# or updates the CloudFormation stack vmpool-STAGE through a change set with the given parameter
# overrides (VpcId, PrivateSubnetIds, VCenterCidr, ... see docs/deploy.md, "Parameters").
# Needs Python with boto3 (the project's venv), not the AWS CLI.
set -euo pipefail

if [[ $# -lt 2 ]]; then
    echo "usage: infra/deploy.sh STAGE S3_BUCKET [Key=Value ...]" >&2
    exit 2
fi
stage="$1"
bucket="$2"
shift 2
# make deploy without BUCKET=... hands the first of PARAMS over as the bucket: say so before the
# package is built (before, the upload failed minutes later on an invalid bucket name).
if [[ "$bucket" == *=* ]]; then
    echo "deploy: S3_BUCKET is missing ('$bucket' is a parameter): make deploy STAGE=$stage BUCKET=my-deploy-bucket PARAMS=\"...\"" >&2
    exit 2
fi
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
out="build/package-$stage"
python="${PYTHON:-python3}"

infra/package.sh "$stage" "$out"
"$python" -m infra.deploy --stage "$stage" --bucket "$bucket" --package "$out" "$@"
