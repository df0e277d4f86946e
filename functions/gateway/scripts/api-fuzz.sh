#!/usr/bin/env bash
# api-fuzz: schema-driven fuzzing of the live gateway with schemathesis (PyPI). Starts etcd on free
# loopback ports with a temporary data dir, seeds it from the real CSV (`gateway seed`), starts the
# gateway, and runs every schemathesis check against every operation in the OpenAPI document,
# with a bounded number of examples. Fails on any 5xx, on any response that violates the document
# (status, content type, headers, body schema), on schema-invalid input that is not rejected, and
# on schema-valid input that is (positive_data_acceptance): the schema is as strict as the
# gateway's parsers, and the two rules it cannot state are given to the generator by
# api_fuzz_hooks.py. Every process it starts is stopped on exit.
#
# Needs etcd (on PATH, or ETCD_BIN), python3 with venv and cargo: .ci/install-deps checks them.
# Tunables: API_FUZZ_EXAMPLES (examples per operation, default 300), API_FUZZ_SEED.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../../.." && pwd)"
source "$ROOT/functions/gateway/scripts/python-tools.sh"

EXAMPLES="${API_FUZZ_EXAMPLES:-300}"
SEED="${API_FUZZ_SEED:-20250718}"
CSV="$ROOT/testdata/dcgm_metrics_20250718_134233.csv"

bash "$ROOT/.ci/install-deps" api-fuzz
ensure_api_tools

cd "$ROOT"
# Every binary and example: the selection `cargo test --workspace` resolves features for, so after
# `make test` nothing is compiled again (`-p gateway` alone would rebuild its dependencies).
cargo build --quiet --workspace --bins --examples
GATEWAY="${CARGO_TARGET_DIR:-$ROOT/target}/debug/gateway"

WORK="$(mktemp -d)"
ETCD_PID=""
GATEWAY_PID=""
# shellcheck disable=SC2317,SC2329 # (invoked by the EXIT trap)
cleanup() {
  for pid in "$GATEWAY_PID" "$ETCD_PID"; do
    if [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null; then
      kill "$pid" 2>/dev/null || true
      wait "$pid" 2>/dev/null || true
    fi
  done
  rm -rf "$WORK"
}
trap cleanup EXIT

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# Polls `url` until it answers 200 or `seconds` pass.
wait_for() {
  local url="$1" seconds="$2" what="$3"
  python3 - "$url" "$seconds" "$what" <<'EOF'
import sys, time, urllib.request
url, limit, what = sys.argv[1], float(sys.argv[2]), sys.argv[3]
deadline = time.monotonic() + limit
while True:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            if r.status == 200:
                break
    except Exception:
        pass
    if time.monotonic() > deadline:
        sys.exit(f"{what} did not become ready within {limit:.0f}s ({url})")
    time.sleep(0.1)
EOF
}

CLIENT_PORT="$(free_port)"
PEER_PORT="$(free_port)"
"${ETCD_BIN:-etcd}" --name api-fuzz --data-dir "$WORK/etcd" \
  --listen-client-urls "http://127.0.0.1:$CLIENT_PORT" --advertise-client-urls "http://127.0.0.1:$CLIENT_PORT" \
  --listen-peer-urls "http://127.0.0.1:$PEER_PORT" --initial-advertise-peer-urls "http://127.0.0.1:$PEER_PORT" \
  --initial-cluster "api-fuzz=http://127.0.0.1:$PEER_PORT" --experimental-enable-lease-checkpoint \
  --logger zap --log-level warn >"$WORK/etcd.log" 2>&1 &
ETCD_PID=$!
# etcd 3.4 needs `--logger zap` here: with its default (capnslog) logger, the lease checkpoint flag
# makes it crash at start-up.
wait_for "http://127.0.0.1:$CLIENT_PORT/health" 30 etcd || {
  echo "--- etcd log (last 40 lines)"
  tail -n 40 "$WORK/etcd.log"
  exit 1
}

export ETCD_ENDPOINTS="http://127.0.0.1:$CLIENT_PORT"
export TELEMETRY_PREFIX="/api-fuzz"
"$GATEWAY" seed --csv "$CSV" --passes 3

PORT="$(free_port)"
PORT="$PORT" RUST_LOG="${RUST_LOG:-warn}" "$GATEWAY" run >"$WORK/gateway.log" 2>&1 &
GATEWAY_PID=$!
wait_for "http://127.0.0.1:$PORT/readyz" 30 gateway || {
  echo "--- gateway log (last 40 lines)"
  tail -n 40 "$WORK/gateway.log"
  exit 1
}
BASE="http://127.0.0.1:$PORT"

# Real ids, times and steps (each drawn half of the time, the other half generated from the
# schema) make the fuzzer reach the 200 paths of the per-GPU operations, not only 400s and 404s.
python3 - "$BASE" "$WORK/data-span" >"$WORK/schemathesis.toml" <<'EOF'
import json, sys, urllib.request
from datetime import datetime, timedelta, timezone
base = sys.argv[1]
gpus = json.load(urllib.request.urlopen(f"{base}/api/v1/gpus"))["gpus"]
EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
def micros(text):
    return (datetime.fromisoformat(text.replace("Z", "+00:00")) - EPOCH) // timedelta(microseconds=1)
with open(sys.argv[2], "w") as span:
    span.write(f"{min(micros(g['first_seen']) for g in gpus)} {max(micros(g['last_seen']) for g in gpus)}\n")
first = gpus[0]
page = json.load(urllib.request.urlopen(f"{base}/api/v1/gpus/{first['uuid']}/telemetry?limit=3"))
def toml_list(values):
    return "[" + ", ".join(json.dumps(v) for v in values) + "]"
ids = [g["uuid"] for g in gpus[:20]]
times = [first["first_seen"], first["last_seen"], first["first_seen"].replace(".000000", "")]
steps = ["1s", "500ms", "1m", "10s", "1h"]
cursors = [page["next_cursor"]] if page["next_cursor"] else []
print(f"""[dictionaries.gpu-ids]
values = {toml_list(ids)}

[dictionaries.times]
values = {toml_list(times)}

[dictionaries.steps]
values = {toml_list(steps)}
""")
if cursors:
    print(f"[dictionaries.cursors]\nvalues = {toml_list(cursors)}\n")
# The Prometheus API takes every parameter as text, as Prometheus does: on the wire a boolean or
# a one-element array is the same string as a selector or a time (`match[]=false` is the metric
# `false`), and a form body's stray `AAA` is a parameter without a value, ignored. Its schema
# cannot mark such input invalid, so these operations skip negative_data_rejection; every other
# check runs on them.
# For the same reason positive_data_acceptance is off there: a schema-valid `query` is any text,
# and text that is not PromQL is Prometheus' 400 bad_data. The checks are chosen here, not on the
# command line, where they would override the per-operation setting.
print("""[checks]
enabled = true

[[operations]]
include-tag = "prometheus"
checks.negative_data_rejection.enabled = false
checks.positive_data_acceptance.enabled = false
""")
print("""[parameters]
"path.id" = { dictionary = "gpu-ids", probability = 0.5 }
"query.start_time" = { dictionary = "times", probability = 0.5 }
"query.end_time" = { dictionary = "times", probability = 0.5 }
"query.step" = { dictionary = "steps", probability = 0.5 }""")
if cursors:
    print('"query.cursor" = { dictionary = "cursors", probability = 0.3 }')
EOF

# Every check runs, positive_data_acceptance (schema-valid input must be accepted) and
# negative_data_rejection (schema-invalid input must get a 4xx) included, but for the Prometheus
# API (see the [[operations]] entry above). The rules a schema cannot state (start_time not after
# end_time; at most the gateway's points per series over the data) reach the generator through
# api_fuzz_hooks.py, which needs the data's time span.
# One worker: with several, Python 3.11's parser state races inside Hypothesis and aborts the run
# with "AST constructor recursion depth mismatch".
read -r DATA_FIRST_US DATA_LAST_US <"$WORK/data-span"
export API_FUZZ_DATA_FIRST_US="$DATA_FIRST_US" API_FUZZ_DATA_LAST_US="$DATA_LAST_US"
export PYTHONPATH="$ROOT/functions/gateway/scripts" SCHEMATHESIS_HOOKS=api_fuzz_hooks
started=$SECONDS
cd "$WORK" # schemathesis keeps its state in ./.schemathesis
set +e
"$API_TOOLS_VENV/bin/schemathesis" --config-file "$WORK/schemathesis.toml" run "$BASE/openapi.json" \
  --max-examples "$EXAMPLES" \
  --seed "$SEED" \
  --workers 1 \
  --request-timeout 10 \
  --suppress-health-check too_slow
status=$?
set -e
echo "schemathesis finished in $((SECONDS - started))s with status $status"
if [[ $status -ne 0 ]]; then
  echo "--- gateway log (last 40 lines)"
  tail -n 40 "$WORK/gateway.log"
fi
exit "$status"
