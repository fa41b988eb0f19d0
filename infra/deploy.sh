#!/usr/bin/env bash
# Deploy one stage of vmpool to the AWS account of the current credentials, in one command:
#
#   infra/deploy.sh STAGE S3_BUCKET Key=Value ...      (or: make deploy STAGE=prod BUCKET=... PARAMS="...")
#
# Builds the package (infra/package.sh), uploads its code to S3_BUCKET, and creates or updates the
# CloudFormation stack vmpool-STAGE with the given parameter overrides (VpcId, PrivateSubnetIds,
# VCenterCidr, ... see docs/deploy.md, "Parameters"). Needs the AWS CLI.
set -euo pipefail

if [[ $# -lt 2 ]]; then
    echo "usage: infra/deploy.sh STAGE S3_BUCKET [Key=Value ...]" >&2
    exit 2
fi
stage="$1"
bucket="$2"
shift 2
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
out="build/package-$stage"

infra/package.sh "$stage" "$out"
aws cloudformation package --template-file "$out/sam.json" \
    --s3-bucket "$bucket" --s3-prefix "vmpool/$stage" \
    --output-template-file "$out/packaged.json" --use-json
# The IAM policies name log groups /aws/lambda/vmpool-<stage>-*, so the stack name is fixed.
deploy=(aws cloudformation deploy --stack-name "vmpool-$stage"
        --template-file "$out/packaged.json"
        --capabilities CAPABILITY_IAM CAPABILITY_AUTO_EXPAND --no-fail-on-empty-changeset)
if [[ $# -gt 0 ]]; then
    deploy+=(--parameter-overrides "$@")
fi
"${deploy[@]}"
aws cloudformation describe-stacks --stack-name "vmpool-$stage" \
    --query "Stacks[0].Outputs[?OutputKey=='EndpointURL'].OutputValue" --output text
