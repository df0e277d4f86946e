#!/usr/bin/env bash
# `make run`: the whole pipeline on this machine. Starts a local etcd (data under .run/, reused on
# the next run), the gateway, a streamer looping over the bundled real CSV, and the autoscaler,
# which brings collectors up from zero on queue depth. Prints where to look (the dashboard first),
# then a status line every few seconds. Ctrl-C stops everything and leaves no process behind.
set -euo pipefail
cd "$(dirname "$0")/../../.."
root=$(pwd)
# shellcheck source=functions/autoscaler/scripts/processes.sh
source functions/autoscaler/scripts/processes.sh # (the script runs from the repository root)
run_dir="$root/.run"
profile=${PROFILE:-debug}
etcd_port=${ETCD_PORT:-2379}
gateway_port=${GATEWAY_PORT:-8080}
streamer_port=${STREAMER_PORT:-8082}
autoscaler_port=${AUTOSCALER_PORT:-8083}
prefix=${TELEMETRY_PREFIX:-/gpu-telemetry}
csv=${STREAMER_CSV:-$root/testdata/dcgm_metrics_20250718_134233.csv}

# 1. Tools: installed when missing (as root), otherwise the exact apt-get line is printed.
bash .ci/install-deps run

# 2. Build.
build_functions "$profile"

# 3. Processes, stopped together on exit.
mkdir -p "$run_dir/logs"
log_dir="$run_dir/logs"
cleanup() {
  trap - INT TERM EXIT
  echo
  say "stopping"
  # Reverse start order: producers and consumers first (the autoscaler drains its collectors
  # while etcd is still up), etcd last.
  stop_all
  say "stopped; etcd data kept in .run/etcd (delete it to start empty)"
}
trap cleanup INT TERM EXIT

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
for p in "$etcd_port" "$gateway_port" "$streamer_port" "$autoscaler_port"; do
  port_free "$p" || { echo "port $p is in use; set ETCD_PORT/GATEWAY_PORT/STREAMER_PORT/AUTOSCALER_PORT" >&2; exit 1; }
done

say "starting etcd on 127.0.0.1:$etcd_port (data: .run/etcd)"
start_etcd local "$run_dir/etcd" "$etcd_port" "$((etcd_port + 1))" 5m 4294967296
for _ in $(seq 1 100); do
  curl -sf "http://127.0.0.1:$etcd_port/health" >/dev/null && break
  sleep 0.1
done
curl -sf "http://127.0.0.1:$etcd_port/health" >/dev/null || { echo "etcd did not start; see .run/logs/etcd.log" >&2; exit 1; }

export ETCD_ENDPOINTS="http://127.0.0.1:$etcd_port" TELEMETRY_PREFIX="$prefix" RUST_LOG="${RUST_LOG:-info}"

PORT=$gateway_port start gateway "$bin/gateway" run
# The autoscaler runs `collector run` from the same directory, one process per replica.
PORT=$autoscaler_port start autoscaler "$bin/autoscaler" run --stabilization 10s --cooldown 20s
PORT=$streamer_port start streamer "$bin/streamer" run --csv "$csv" --interval 1s

for _ in $(seq 1 100); do
  curl -sf "http://127.0.0.1:$gateway_port/healthz" >/dev/null && break
  sleep 0.1
done

cat <<INFO

  Dashboard    http://127.0.0.1:$gateway_port/
  Gateway      http://127.0.0.1:$gateway_port/api/v1/gpus
  Swagger UI   http://127.0.0.1:$gateway_port/swagger-ui/
  OpenAPI      http://127.0.0.1:$gateway_port/openapi.json
  Try          curl -s 'http://127.0.0.1:$gateway_port/api/v1/gpus' | head -c 600
  Logs         .run/logs/{etcd,gateway,streamer,autoscaler}.log

  Ctrl-C stops everything.

INFO

last_published=$(metric "$streamer_port" streamer_samples_published_total || echo 0)
last_time=$(date +%s.%N)
while true; do
  sleep 3
  for pid in "${pids[@]}"; do
    kill -0 "$pid" 2>/dev/null || { echo "a process exited unexpectedly; see .run/logs/" >&2; exit 1; }
  done
  now=$(date +%s.%N)
  published=$(metric "$streamer_port" streamer_samples_published_total || echo 0)
  depth=$(metric "$autoscaler_port" autoscaler_queue_depth || echo "?")
  collectors=$(metric "$autoscaler_port" autoscaler_replicas || echo "?")
  gpus=$(curl -sf "http://127.0.0.1:$gateway_port/api/v1/gpus" | grep -o '"count":[0-9]*' | cut -d: -f2 || echo "?")
  rate=$(awk -v a="${published:-0}" -v b="${last_published:-0}" -v t1="$now" -v t0="$last_time" 'BEGIN { printf "%.0f", (a - b) / (t1 - t0) }')
  printf '%s  streamed %s samples/s  queue depth %s  collectors %s  GPUs queryable %s\n' \
    "$(date +%H:%M:%S)" "$rate" "${depth:-?}" "${collectors:-?}" "${gpus:-0}"
  last_published=$published
  last_time=$now
done
