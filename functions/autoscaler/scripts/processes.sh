# shellcheck shell=bash disable=SC2154 # (log_dir is set by the sourcing script)
# Sourced by run-local.sh and soak.sh: builds the pipeline's processes and starts each in a
# session of its own (so a terminal's Ctrl-C reaches only the calling script), stops them in
# reverse start order with SIGTERM and a bounded wait, so consumers drain while etcd is still up,
# and reads their /metrics.
# The caller sets log_dir before calling start.

pids=()
names=()

say() { printf '\033[1m%s\033[0m\n' "$*"; }

build_functions() { # build_functions <debug|release>: build the four functions; sets bin
  say "building ($1)"
  if [ "$1" = release ]; then
    cargo build --release -p streamer -p collector -p gateway -p autoscaler
  else
    # Every binary and example: the selection `cargo test --workspace` resolves features for, so
    # a build after the tests (or the tests after this) reuses the same compiled dependencies.
    cargo build --workspace --bins --examples
  fi
  # shellcheck disable=SC2034 # (read by the sourcing script)
  bin="${CARGO_TARGET_DIR:-$PWD/target}/$1"
}

start() { # start <name> <command...>: run in the background, logging to $log_dir/<name>.log
  local name=$1
  shift
  setsid "$@" >"$log_dir/$name.log" 2>&1 &
  pids+=($!)
  names+=("$name")
}

stop_one() { # stop_one <pid> <seconds>: SIGTERM, wait up to <seconds>, then SIGKILL
  kill -TERM "$1" 2>/dev/null || return 0
  for _ in $(seq 1 $(($2 * 10))); do
    kill -0 "$1" 2>/dev/null || return 0
    sleep 0.1
  done
  kill -KILL "$1" 2>/dev/null || true
}

session_members() { # session_members <sid>: pids still alive in that session
  ps -eo pid=,sid= | awk -v s="$1" '$2 == s { print $1 }'
}

stop_all() { # stop everything started, newest first, then anything left in their sessions
  for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
    stop_one "${pids[$i]}" 40
    echo "  stopped ${names[$i]}"
  done
  wait 2>/dev/null || true
  # Each process led its own session: anything still in one (a collector the autoscaler could
  # not reap) is ours, and is stopped by its pid.
  local left=()
  for pid in "${pids[@]}"; do
    mapfile -t -O "${#left[@]}" left < <(session_members "$pid")
  done
  if ((${#left[@]})); then
    echo "  processes left behind: ${left[*]}; killing them" >&2
    for pid in "${left[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
  else
    echo "  no process left behind"
  fi
}

start_etcd() { # start_etcd <name> <data-dir> <client-port> <peer-port> <compaction-retention> <quota-bytes>
  local name=$1 data=$2 client="http://127.0.0.1:$3" peer="http://127.0.0.1:$4"
  start etcd "${ETCD_BIN:-etcd}" --name "$name" --data-dir "$data" \
    --listen-client-urls "$client" --advertise-client-urls "$client" \
    --listen-peer-urls "$peer" --initial-advertise-peer-urls "$peer" \
    --initial-cluster "$name=$peer" \
    --auto-compaction-mode periodic --auto-compaction-retention "$5" \
    --quota-backend-bytes "$6" --experimental-enable-lease-checkpoint --logger zap --log-level warn
}

metric() { # metric <port> <name>: first sample value of a Prometheus metric, or empty
  # awk reads to the end: a reader that exits early would fail the pipe with SIGPIPE under pipefail.
  curl -sf --max-time 5 "http://127.0.0.1:$1/metrics" 2>/dev/null |
    awk -v m="$2" '!found && ($1 == m || index($1, m "{") == 1) { print $2; found = 1 }'
}
