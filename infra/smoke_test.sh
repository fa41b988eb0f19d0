#!/usr/bin/env bash
# Smoke test of a deployed stage: the API answers, unknown routes give 404 {"ok":false}, a pool
# fills, a VM can be checked out and returned.
#
#   infra/smoke_test.sh <api-url> <pool> [fill-timeout-seconds=900] [token]
#   infra/smoke_test.sh "$(aws cloudformation describe-stacks --stack-name vmpool-dev \
#       --query "Stacks[0].Outputs[?OutputKey=='EndpointURL'].OutputValue" --output text)" debian-12-x86_64
#
# <api-url> is the stack output EndpointURL (https://<id>.execute-api.<region>.amazonaws.com/api/).
# Needs curl and python3. Exits non-zero with the reason on the first failure.
set -euo pipefail

url="${1:?usage: smoke_test.sh <api-url> <pool> [fill-timeout-seconds] [token]}"
pool="${2:?usage: smoke_test.sh <api-url> <pool> [fill-timeout-seconds] [token]}"
timeout="${3:-900}"
token="${4:-}"
api="${url%/}/api/v3"
auth=()
if [[ -n "$token" ]]; then auth=(-H "X-AUTH-TOKEN: $token"); fi

fail() { echo "smoke: FAIL: $*" >&2; exit 1; }
json() { python3 -c "import json,sys; d=json.load(sys.stdin); print(eval(sys.argv[1], {}, {'d': d}))" "$1"; }
request() {  # method path -> sets $status and $body
    local out
    out="$(curl -sS --max-time 30 -w '\n%{http_code}' -X "$1" "${auth[@]}" "$api$2")" || fail "$1 $2: no answer"
    status="${out##*$'\n'}"
    body="${out%$'\n'*}"
}

request GET /status
[[ "$status" == 200 ]] || fail "GET /status answered $status: $body"
echo "smoke: status ok: $(echo "$body" | json 'd["status"]["ok"]')"

request GET /no-such-route
[[ "$status" == 404 && "$(echo "$body" | json 'd["ok"]')" == False ]] || fail "unknown route answered $status: $body"
echo "smoke: unknown route -> 404 {\"ok\":false}"

deadline=$((SECONDS + timeout))
while :; do
    request GET "/poolstat?pool=$pool"
    [[ "$status" == 200 ]] || fail "GET /poolstat answered $status: $body"
    ready="$(echo "$body" | json "d['pools'].get('$pool', {}).get('ready', -1)")"
    [[ "$ready" != -1 ]] || fail "pool $pool is not configured: $body"
    if (( ready > 0 )); then break; fi
    (( SECONDS < deadline )) || fail "pool $pool has no ready VM after ${timeout}s"
    echo "smoke: waiting for $pool to fill (ready=$ready)"
    sleep 15
done
echo "smoke: $pool has $ready ready"

request POST "/vm/$pool"
[[ "$status" == 200 ]] || fail "checkout answered $status: $body"
hostname="$(echo "$body" | json "d['$pool']['hostname']")"
echo "smoke: checked out $hostname"

request GET "/vm/$hostname"
[[ "$status" == 200 && "$(echo "$body" | json "[v for k, v in d.items() if k != 'ok'][0]['state']")" == running ]] \
    || fail "GET /vm/$hostname answered $status: $body"

request DELETE "/vm/$hostname"
[[ "$status" == 200 ]] || fail "delete answered $status: $body"
echo "smoke: returned $hostname; OK"
