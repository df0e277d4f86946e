#!/usr/bin/env bash
# `make soak`: shows that the etcd database size levels off under a continuous feed.
#
# Starts its own etcd (free loopback ports, temporary data dir, periodic auto-compaction, a backend
# quota), the gateway, SOAK_STREAMERS streamers looping over the bundled real CSV, and the
# autoscaler (which brings collectors up on queue depth), all with a short store retention so the
# steady state comes within minutes. For SOAK_DURATION it samples, every SOAK_SAMPLE: etcd's
# dbSize (file size) and dbSizeInUse (pages in use: live keys plus uncompacted history), the
# revision, keys under the prefix by kind, leases, queue depth, collectors, samples published and
# samples stored. The samples go to target/soak/soak-<time>.csv and are printed as a table.
# It defragments once (midway or at the end) and reports dbSize before and after; at the end it
# also stops the pipeline, compacts to the current revision and defragments, to show what the live
# data alone takes. Verdict: the mean in-use size of the last third of the run against the middle
# third; growth within SOAK_TOLERANCE percent means the size levels off (exit 0), more fails
# (exit 1). Every process it starts is stopped on exit; the etcd data dir is removed.
#
# Tunables (environment):
#   SOAK_DURATION=10m  SOAK_SAMPLE=20s  SOAK_STREAMERS=1  SOAK_TOLERANCE=10 (percent)
#   SOAK_DEFRAG=end|mid|none (default end)  SOAK_COUNT_SAMPLES=1 (0 skips the per-GPU count)
#   STORE_RETENTION=2m  STORE_BUCKET=30s  ETCD_COMPACTION_RETENTION=1m  ETCD_QUOTA_BYTES=2147483648
#   STREAMER_INTERVAL=1s  PROFILE=debug|release  BIN_DIR (use these binaries, skip the build)
#   SOAK_OUT (output dir, default target/soak)
set -euo pipefail
export LC_ALL=C
cd "$(dirname "$0")/../../.."
root=$(pwd)
# shellcheck source=functions/autoscaler/scripts/processes.sh
source functions/autoscaler/scripts/processes.sh # (the script runs from the repository root)

duration_s() { # duration_s <90s|10m|1h|45>: seconds
  local v=$1
  case $v in
    *ms) echo 0 ;;
    *h) echo $((${v%h} * 3600)) ;;
    *m) echo $((${v%m} * 60)) ;;
    *s) echo "${v%s}" ;;
    *) echo "$v" ;;
  esac
}

duration=$(duration_s "${SOAK_DURATION:-10m}")
sample_every=$(duration_s "${SOAK_SAMPLE:-20s}")
streamers=${SOAK_STREAMERS:-1}
tolerance=${SOAK_TOLERANCE:-10}
defrag_when=${SOAK_DEFRAG:-end}
count_samples=${SOAK_COUNT_SAMPLES:-1}
profile=${PROFILE:-debug}
prefix=${TELEMETRY_PREFIX:-/gpu-telemetry}
csv_in=${STREAMER_CSV:-$root/testdata/dcgm_metrics_20250718_134233.csv}
out_dir=${SOAK_OUT:-$root/target/soak}
export STORE_RETENTION=${STORE_RETENTION:-2m} STORE_BUCKET=${STORE_BUCKET:-30s}
compaction_retention=${ETCD_COMPACTION_RETENTION:-1m}
quota=${ETCD_QUOTA_BYTES:-2147483648}
interval=${STREAMER_INTERVAL:-1s}

die() { echo "soak: $*" >&2; exit 2; }

((duration >= 3 * sample_every)) || die "SOAK_DURATION must cover at least three samples"
case $defrag_when in end | mid | none) ;; *) die "SOAK_DEFRAG must be end, mid or none" ;; esac
# Tools: installed when missing (as root), otherwise the exact apt-get line is printed. Binaries
# from BIN_DIR need no Rust toolchain.
needs=(soak)
[ -n "${BIN_DIR:-}" ] || needs+=(build)
bash "$root/.ci/install-deps" "${needs[@]}"
[ -f "$csv_in" ] || die "CSV not found: $csv_in"

# 1. Binaries.
if [ -n "${BIN_DIR:-}" ]; then
  bin=$BIN_DIR
else
  build_functions "$profile"
fi
for b in streamer collector gateway autoscaler; do
  [ -x "$bin/$b" ] || die "$bin/$b is missing (build it, or point BIN_DIR at the binaries)"
done

# 2. Output and scratch space.
stamp=$(date +%Y%m%d-%H%M%S)
mkdir -p "$out_dir"
out_csv="$out_dir/soak-$stamp.csv"
log_dir="$out_dir/logs-$stamp"
mkdir -p "$log_dir"
work=$(mktemp -d "${TMPDIR:-/tmp}/soak.XXXXXX")

# 3. Processes, stopped together on exit (reverse start order, etcd last).
cleanup() {
  local rc=$?
  trap - INT TERM EXIT
  say "stopping"
  stop_all
  rm -rf "$work"
  exit "$rc"
}
trap cleanup INT TERM EXIT

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
wait_http() { # wait_http <url> <seconds> <what>
  for _ in $(seq 1 $(($2 * 10))); do
    curl -sf "$1" >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  die "$3 did not become ready within $2s ($1); see $log_dir"
}

etcd_port=$(free_port)
peer_port=$(free_port)
gateway_port=$(free_port)
autoscaler_port=$(free_port)
endpoint="http://127.0.0.1:$etcd_port"
export ETCDCTL_API=3

say "starting etcd on $endpoint (compaction periodic $compaction_retention, quota $quota bytes)"
start_etcd soak "$work/etcd" "$etcd_port" "$peer_port" "$compaction_retention" "$quota"
wait_http "$endpoint/health" 30 etcd

export ETCD_ENDPOINTS=$endpoint TELEMETRY_PREFIX=$prefix RUST_LOG=${RUST_LOG:-warn}
say "starting gateway, autoscaler, $streamers streamer(s) (retention $STORE_RETENTION, bucket $STORE_BUCKET)"
PORT=$gateway_port start gateway "$bin/gateway" run
PORT=$autoscaler_port start autoscaler "$bin/autoscaler" run --stabilization 10s --cooldown 20s
streamer_ports=()
for i in $(seq 1 "$streamers"); do
  port=$(free_port)
  streamer_ports+=("$port")
  PORT=$port start "streamer-$i" "$bin/streamer" run --csv "$csv_in" --interval "$interval"
done
wait_http "http://127.0.0.1:$gateway_port/healthz" 30 gateway
wait_http "http://127.0.0.1:$autoscaler_port/healthz" 30 autoscaler

# 4. Probes.
ectl() { etcdctl --endpoints="$endpoint" --command-timeout=30s "$@"; }
status() { # status: "dbSize dbSizeInUse revision"
  ectl endpoint status -w json | jq -r '.[0].Status | "\(.dbSize) \(.dbSizeInUse) \(.header.revision)"'
}
key_kinds() { # key_kinds: "total msg open sealed gpu retention other" under the prefix
  ectl get "$prefix/" --prefix --keys-only | awk -v p="$prefix/" '
    NF == 0 { next }
    { k = substr($0, length(p) + 1); total++ }
    k ~ /^queue\/[^\/]+\/msg\// { msg++; next }
    k ~ /^store\/chunk\/[^\/]+\/open$/ { open++; next }
    k ~ /^store\/chunk\/[^\/]+\/s\// { sealed++; next }
    k ~ /^store\/gpu\// { gpu++; next }
    k ~ /^store\/retention\// { ret++; next }
    { other++ }
    END { printf "%d %d %d %d %d %d %d\n", total, msg, open, sealed, gpu, ret, other }'
}
key_shapes() { # key_shapes: count of keys per shape (numbers and ids folded), for the report
  ectl get "$prefix/" --prefix --keys-only | awk -v p="$prefix/" '
    NF == 0 { next }
    { k = substr($0, length(p) + 1); n = split(k, part, "/"); s = part[1]
      for (i = 2; i <= n; i++) {
        seg = part[i]
        if (part[1] == "store" && part[2] == "chunk" && i == 3) seg = "{uuid}"
        else if (part[1] == "store" && part[2] == "gpu" && i == 3) seg = "{uuid}"
        else if (seg ~ /^[0-9]+(-[0-9]+)*(-.*)?$/) seg = "{n}"
        else if (i == n && (part[i - 1] == "member" || part[i - 1] == "producer")) seg = "{id}"
        s = s "/" seg
      }
      c[s]++ }
    END { for (s in c) printf "%8d  %s\n", c[s], s }' | sort -k2
}
leases() { ectl lease list | awk 'NR > 1 && NF { n++ } END { print n + 0 }'; }
gpu_ids() { curl -sf --max-time 10 "http://127.0.0.1:$gateway_port/api/v1/gpus" | jq -r '.gpus[].uuid'; }
samples_stored() { # samples_stored: sum over every GPU of the stored sample count (agg=count)
  local ids urls=()
  ids=$(gpu_ids) || { echo ""; return; }
  [ -n "$ids" ] || { echo 0; return; }
  while read -r id; do
    urls+=("http://127.0.0.1:$gateway_port/api/v1/gpus/$id/telemetry?step=1h&agg=count&limit=10000")
  done <<<"$ids"
  # One curl for every GPU, so the connection is reused; each body is one JSON document.
  curl -sf --max-time 60 "${urls[@]}" 2>/dev/null | jq -s '[.[].entries[].value] | add // 0 | floor' ||
    echo ""
}

mib() { awk -v b="$1" 'BEGIN { printf "%.2f", b / 1048576 }'; }
header="elapsed_s,db_size,db_in_use,revision,keys,msg_keys,open_chunks,sealed_chunks,gpu_records,retention_keys,other_keys,leases,queue_depth,collectors,published,gpus,samples_stored"
echo "$header" >"$out_csv"
table_row() { # table_row <csv line>
  IFS=, read -r t size inuse rev keys msg open sealed _ ret other ls depth coll pub gpus stored <<<"$1"
  printf '%6s  %9s  %9s  %9s  %6s  %5s  %5s  %6s  %5s  %5s  %6s  %5s  %3s  %9s  %4s  %9s\n' \
    "$t" "$(mib "$size")" "$(mib "$inuse")" "$rev" "$keys" "$msg" "$open" "$sealed" "$ret" "$other" \
    "$ls" "$depth" "$coll" "$pub" "$gpus" "$stored"
}
table_header() {
  printf '%6s  %9s  %9s  %9s  %6s  %5s  %5s  %6s  %5s  %5s  %6s  %5s  %3s  %9s  %4s  %9s\n' \
    elapsed dbSize_MiB inUse_MiB revision keys msg open sealed ret other leases depth col published gpus stored
}
take_sample() { # take_sample <elapsed>: append one CSV row and print it
  local t=$1 st kinds depth coll pub=0 p v gpus stored=""
  st=$(status)
  kinds=$(key_kinds)
  depth=$(ectl get "$prefix/queue/telemetry/depth" --print-value-only)
  coll=$(metric "$autoscaler_port" autoscaler_replicas)
  for p in "${streamer_ports[@]}"; do
    v=$(metric "$p" streamer_samples_published_total)
    pub=$((pub + ${v:-0}))
  done
  gpus=$(curl -sf --max-time 10 "http://127.0.0.1:$gateway_port/api/v1/gpus" | jq -r '.count' || echo "")
  [ "$count_samples" = 1 ] && stored=$(samples_stored)
  local row
  row="$t,${st// /,},${kinds// /,},$(leases),${depth:-0},${coll:-},${pub},${gpus:-},${stored}"
  echo "$row" >>"$out_csv"
  table_row "$row"
}
defrag() { # defrag <mid|end> <elapsed>: defragment; sets defrag_report (dbSize before and after)
  local before after
  before=$(status)
  ectl defrag >/dev/null
  after=$(status)
  read -r b_size b_use _ <<<"$before"
  read -r a_size a_use _ <<<"$after"
  defrag_report="defrag ($1, at ${2}s): dbSize $(mib "$b_size") -> $(mib "$a_size") MiB, in use $(mib "$b_use") -> $(mib "$a_use") MiB"
}

# 5. The soak.
say "soak for ${duration}s, a sample every ${sample_every}s -> $out_csv (logs: $log_dir)"
table_header
t0=$(date +%s)
shapes_first=""
defrag_report=""
defragged=0
next=0
while :; do
  now=$(($(date +%s) - t0))
  if ((now >= next)); then
    for i in "${!pids[@]}"; do
      kill -0 "${pids[$i]}" 2>/dev/null || die "${names[$i]} exited unexpectedly; see $log_dir/${names[$i]}.log"
    done
    take_sample "$now"
    # Key shapes once the first retention buckets have expired, and again at the end.
    [ -z "$shapes_first" ] && ((now >= duration / 3)) && shapes_first=$(key_shapes) && shapes_first_at=$now
    if [ "$defrag_when" = mid ] && ((defragged == 0 && now >= duration / 2)); then
      defrag mid "$now"
      say "$defrag_report"
      defragged=1
    fi
    next=$((next + sample_every))
    ((next > duration && now < duration)) && next=$duration
  fi
  ((now >= duration)) && break
  sleep 1
done
shapes_last=$(key_shapes)
shapes_last_at=$(($(date +%s) - t0))
alarms=$(ectl alarm list)
live_report=""
if [ "$defrag_when" = end ]; then
  defrag end "$shapes_last_at"
  # What the data alone takes: stop producers and consumers (etcd and the gateway stay up), drop
  # the history kept for compaction's retention, and defragment.
  for ((i = ${#pids[@]} - 1; i >= 2; i--)); do stop_one "${pids[$i]}" 40; done
  stored=$( [ "$count_samples" = 1 ] && samples_stored || echo "")
  read -r _ _ rev <<<"$(status)"
  ectl compact "$rev" --physical >/dev/null
  ectl defrag >/dev/null
  read -r l_size l_use _ <<<"$(status)"
  read -r l_keys _ <<<"$(key_kinds)"
  live_report="live data alone (pipeline stopped, compacted to revision $rev, defragmented): dbSize $(mib "$l_size") MiB, in use $(mib "$l_use") MiB, $l_keys keys"
  [ -n "$stored" ] && ((stored > 0)) &&
    live_report+=", $stored samples stored ($(awk -v b="$l_use" -v n="$stored" 'BEGIN { printf "%.1f", b / n }') bytes of etcd per sample)"
fi

# 6. The verdict: mean in-use size of the last third against the middle third.
say "keys by shape at ${shapes_first_at:-?}s and at ${shapes_last_at}s"
join -1 2 -2 2 -a 1 -a 2 -e 0 -o 0,1.1,2.1 \
  <(echo "${shapes_first:-}" | awk 'NF' | sort -k2) <(echo "$shapes_last" | awk 'NF' | sort -k2) |
  awk '{ printf "  %8s %8s  %s\n", $2, $3, $1 }'
[ -n "$defrag_report" ] && echo "$defrag_report"
[ -n "$live_report" ] && echo "$live_report"
cat <<'NOTE'
dbSize is the size of etcd's bbolt file; dbSizeInUse is the part of it in pages that hold data:
the live keys plus every revision not yet compacted. Compaction frees pages for reuse (in use
drops, the file does not shrink); defragmentation rewrites the file to the pages in use.
NOTE
[ -n "$alarms" ] && echo "etcd alarms: $alarms"

verdict=$(awk -F, -v d="$duration" -v tol="$tolerance" '
  NR == 1 { next }
  $1 >= d / 3 && $1 < 2 * d / 3 { mu += $3; ms += $2; mk += $5; mn++ }
  $1 >= 2 * d / 3 { lu += $3; ls += $2; lk += $5; ln++ }
  END {
    if (mn == 0 || ln == 0) { print "FAIL too few samples"; exit }
    mu /= mn; lu /= ln; ms /= mn; ls /= ln; mk /= mn; lk /= ln
    g = (lu - mu) / mu * 100; gs = (ls - ms) / ms * 100; gk = (lk - mk) / mk * 100
    printf "%s in use: middle third %.2f MiB, last third %.2f MiB (%+.1f%%, tolerance %s%%); ", \
      (g <= tol ? "PASS" : "FAIL"), mu / 1048576, lu / 1048576, g, tol
    printf "dbSize %.2f -> %.2f MiB (%+.1f%%); keys %.0f -> %.0f (%+.1f%%)\n", \
      ms / 1048576, ls / 1048576, gs, mk, lk, gk
  }' "$out_csv")
echo
say "verdict: $verdict"
echo "samples: $out_csv"
case $verdict in
  PASS*) say "the etcd database size levels off" ;;
  *) say "the etcd database size does NOT level off"; exit 1 ;;
esac
