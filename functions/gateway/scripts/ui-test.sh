#!/usr/bin/env bash
# `make ui-test`: the dashboard in real headless Chromium against a gateway serving the real CSV.
#
# Starts etcd on free loopback ports (temporary data dir), fills the store with 30 passes over
# testdata/dcgm_metrics_20250718_134233.csv 40 s apart (`gateway seed`: twenty minutes of history),
# starts a collector and the gateway, streams one more pass through the queue (`streamer run
# --passes 1`) and waits until the collector has committed it, so the queue exists, has one
# member and is drained. Then it runs the browser test (functions/gateway/ui/test: node's test
# runner, playwright-core driving the system's Chromium with a fresh profile). Screenshots go to
# target/ui/; the overview and GPU page at 1280x800 are copied to functions/gateway/ui/screenshots/
# for the README. Every process it starts is stopped on exit.
#
# playwright-core comes from the npm registry on first use (pinned by package-lock.json) and stays
# in a git-ignored cache (.cache/ui-tools, or $UI_TOOLS_CACHE); it never downloads a browser.
# Needs etcd, cargo, curl, chromium, node >= 20 and npm: .ci/install-deps checks them.
set -euo pipefail
cd "$(dirname "$0")/../../.."
root=$(pwd)
# shellcheck source=functions/autoscaler/scripts/processes.sh
source functions/autoscaler/scripts/processes.sh # (the script runs from the repository root)

tools=$root/functions/gateway/ui/test
cache=${UI_TOOLS_CACHE:-$root/.cache/ui-tools}
out=${CARGO_TARGET_DIR:-$root/target}/ui
screenshots=$root/functions/gateway/ui/screenshots
csv=$root/testdata/dcgm_metrics_20250718_134233.csv

bash .ci/install-deps ui-test
chromium=${CHROMIUM:-$(command -v chromium)}
if (($(node -p 'process.versions.node.split(".")[0]') < 20)); then
  echo "ui-test: playwright-core needs Node.js 20 or newer; $(command -v node) is $(node --version)" >&2
  exit 1
fi

# 1. The test's npm packages, reinstalled only when the lockfile or Node.js changes.
stamp="$(cat "$tools/package.json" "$tools/package-lock.json" | sha256sum | cut -d' ' -f1) $(node --version)"
if [[ -d "$cache/node_modules" && "$(cat "$cache/.stamp" 2>/dev/null)" == "$stamp" ]]; then
  say "using cached playwright-core"
else
  say "installing playwright-core into $cache"
  rm -rf "$cache"
  mkdir -p "$cache"
  cp "$tools/package.json" "$tools/package-lock.json" "$cache/"
  (cd "$cache" && npm ci --no-audit --no-fund --loglevel=error >/dev/null)
  echo "$stamp" >"$cache/.stamp"
fi
# ES modules resolve packages beside the importing file: the test runs from the cache.
cp "$tools/dashboard.test.mjs" "$cache/"

# 2. Binaries.
build_functions debug

# 3. etcd, the store, a collector, the gateway, one pass through the queue.
work=$(mktemp -d "${TMPDIR:-/tmp}/ui-test.XXXXXX")
log_dir=$work/logs
mkdir -p "$log_dir"
cleanup() {
  local rc=$?
  trap - INT TERM EXIT
  stop_all >/dev/null
  if ((rc != 0)); then
    for log in "$log_dir"/*.log; do
      [[ -s "$log" ]] && { echo "--- $(basename "$log") (last 20 lines)"; tail -n 20 "$log"; }
    done
  fi
  rm -rf "$work"
  exit "$rc"
}
trap cleanup INT TERM EXIT

free_port() {
  node -e 'const s = require("net").createServer(); s.listen(0, "127.0.0.1", () => { console.log(s.address().port); s.close(); });'
}
wait_ready() { # wait_ready <url> <seconds> <what>
  for _ in $(seq 1 $(($2 * 10))); do
    curl -sf "$1" >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  echo "ui-test: $3 did not become ready within $2s ($1)" >&2
  exit 1
}

etcd_port=$(free_port)
start_etcd ui-test "$work/etcd" "$etcd_port" "$(free_port)" 5m 2147483648
wait_ready "http://127.0.0.1:$etcd_port/health" 30 etcd
export ETCD_ENDPOINTS="http://127.0.0.1:$etcd_port" TELEMETRY_PREFIX=/ui-test RUST_LOG=${RUST_LOG:-warn}

say "seeding 30 passes over the real CSV, 40 s apart"
"$bin/gateway" seed --csv "$csv" --passes 30 --interval 40s
gateway_port=$(free_port)
PORT=$(free_port) start collector "$bin/collector" run
PORT=$gateway_port start gateway "$bin/gateway" run
base="http://127.0.0.1:$gateway_port"
wait_ready "$base/readyz" 30 gateway
say "streaming one pass through the queue"
PORT=$(free_port) "$bin/streamer" run --csv "$csv" --passes 1 --interval 0s >"$log_dir/streamer.log" 2>&1
# Drained: every partition's published messages committed, by the one collector.
node - "$base/api/v1/queue" <<'EOF'
const [url] = process.argv.slice(2);
const deadline = Date.now() + 60_000;
const drained = (q) => q.exists && q.members.length === 1 && q.partitions.some((p) => p.head > 0) && q.partitions.every((p) => p.lag === 0);
(async () => {
  for (;;) {
    const queue = await (await fetch(url)).json();
    if (drained(queue)) return;
    if (Date.now() > deadline) throw new Error(`the queue did not drain within 60 s: ${JSON.stringify(queue)}`);
    await new Promise((resolve) => setTimeout(resolve, 200));
  }
})().catch((error) => { console.error(`ui-test: ${error.message}`); process.exit(1); });
EOF

# 4. The browser test.
say "browser test against $base ($($chromium --version 2>/dev/null))"
rm -rf "$out"
mkdir -p "$out"
DASHBOARD_URL=$base CHROMIUM=$chromium CHROMIUM_PROFILE=$work/chromium-profile SCREENSHOT_DIR=$out \
  node --test --test-reporter=spec "$cache/dashboard.test.mjs"
cp "$out/overview.png" "$out/gpu.png" "$screenshots/"
say "screenshots in ${out#"$root"/}/; README copies in ${screenshots#"$root"/}/"
