#!/usr/bin/env bash
# Fuzzes the HTTP API from its own OpenAPI document with schemathesis, as each role, on a
# fresh embedded store: every operation, a fixed budget of examples so the run is bounded.
# Exits non-zero on any failure.
#
# Every check runs, with the settings in scripts/schemathesis.toml: where the API's answer
# depends on more than a request's shape (a value's syntax, the authority policy, what is
# registered), the statuses that mean so are expected there, with why. What is checked: no
# server error, every status code and header documented, every response body conforming to
# its schema, requests the schema forbids refused, requests it allows accepted, authentication
# enforced, resources available after creation. The snapshot upload is left out: its NDJSON
# and CSV bodies are not something schemathesis can write (the API tests drive it with real
# files).
#
#   bash scripts/fuzz.sh [--bin PATH] [--max-examples N]
#
# Needs the idledger binary (default: the debug build the test step makes) and schemathesis
# (installed from PyPI with pip when missing). Talks to 127.0.0.1 only.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

bin=${CARGO_TARGET_DIR:-target}/debug/idledger
max_examples=${FUZZ_MAX_EXAMPLES:-15}
while [ $# -gt 0 ]; do
  case $1 in
    --bin) bin=$2; shift 2 ;;
    --max-examples) max_examples=$2; shift 2 ;;
    *) echo "fuzz.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
if [ ! -x "$bin" ]; then
  echo "fuzz.sh: error: $bin is missing; build it first (cargo build -p idledger-cli)" >&2
  exit 1
fi
if ! command -v st >/dev/null; then
  echo "fuzz.sh: installing schemathesis with pip" >&2
  python3 -m pip install --quiet 'schemathesis>=4,<5' >&2
  hash -r
fi
command -v st >/dev/null || {
  echo "fuzz.sh: error: schemathesis (st) is not on PATH after installing it" >&2
  exit 1
}

work=$(mktemp -d)
server=
cleanup() {
  if [ -n "$server" ]; then kill "$server" 2>/dev/null || true; wait "$server" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

export IDLEDGER__DATA_DIR=$work/data
idl() { "$bin" "$@"; }
token() { idl token create "$@" | grep -o 'idl_[A-Za-z0-9_-]*' | head -n 1; }

# A port nobody listens on.
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
base=http://127.0.0.1:$port

idl consumer add --id crm-sync --channel feed --fields '*' --purposes marketing,service >/dev/null
idl processor add --id journey --fields '*' --purposes marketing,service >/dev/null
declare -A tokens=(
  [source]=$(token --role source --source idp)
  [consumer]=$(token --role consumer --consumer crm-sync)
  [steward]=$(token --role steward --label fuzz-steward)
  [auditor]=$(token --role auditor)
  [admin]=$(token --role admin)
  [dsar]=$(token --role dsar)
  [processor]=$(token --role processor --processor journey)
)

# Generous limits: the fuzzer is one client sending as fast as it can.
# The binary itself in the background (not the `idl` function, whose subshell would be the
# process the cleanup kills, leaving the server running).
"$bin" serve --listen "127.0.0.1:$port" --no-relay --token-rate 0 --token-max-in-flight 0 \
  >"$work/serve.log" 2>&1 &
server=$!
for _ in $(seq 1 100); do
  curl -fsS "$base/healthz" >/dev/null 2>&1 && break
  sleep 0.1
done
curl -fsS "$base/healthz" >/dev/null || {
  echo "fuzz.sh: error: idledger serve did not start on $base:" >&2
  cat "$work/serve.log" >&2
  exit 1
}

# A customer to find: real ids make the fuzzer reach past 404s.
customer=$(curl -fsS -X POST "$base/v1/customers" \
  -H "Authorization: Bearer ${tokens[source]}" -H 'Content-Type: application/json' \
  -H 'Idempotency-Key: fuzz-seed' \
  -d '{"changes":[{"op":"set_field","field":"name.given","value":"Fuzz"}],"provenance":{"actor":{"kind":"system","id":"fuzz"}}}' |
  python3 -c 'import json,sys; print(json.load(sys.stdin)["customer_id"])') || {
  echo "fuzz.sh: error: could not register the seed customer" >&2
  cat "$work/serve.log" >&2
  exit 1
}

failed=0
for role in ${FUZZ_ROLES:-source consumer steward auditor admin dsar processor}; do
  echo "== schemathesis as $role ($max_examples examples per operation) =="
  if ! st --config-file scripts/schemathesis.toml run "$base/v1/openapi.json" \
    --header "Authorization: Bearer ${tokens[$role]}" \
    --exclude-path '/v1/consumers/{consumer_id}/snapshots' \
    --max-examples "$max_examples" \
    --seed 20261202 \
    --report-dir "$work/report-$role" \
    --workers 1; then
    failed=1
    echo "== schemathesis as $role: FAILED =="
  fi
done
if grep -q 'panicked' "$work/serve.log"; then
  echo "fuzz.sh: the server panicked:" >&2
  grep -A5 'panicked' "$work/serve.log" >&2
  failed=1
fi
echo "seed customer: $customer"
exit "$failed"
