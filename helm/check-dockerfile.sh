#!/usr/bin/env bash
# docker-check: checks the Dockerfile against the workspace and a release build, without Docker.
#   helm/check-dockerfile.sh [TARGET_DIR]      (default: $CARGO_TARGET_DIR, then ./target)
# Run `cargo build --release` first (with the same target dir): this script never builds.
# It checks that every COPY source exists (build-context files not excluded by .dockerignore,
# builder files as release binaries in TARGET_DIR), that every function stage's entrypoint is a
# workspace binary copied to that path and started with `run`, that every workspace binary has a
# stage and a functions/<name> package, that the image user is not root, and that the baked CSV
# path agrees with the Helm chart and knative/.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TARGET_DIR="${1:-${CARGO_TARGET_DIR:-$ROOT/target}}"
[[ "$TARGET_DIR" = /* ]] || TARGET_DIR="$PWD/$TARGET_DIR"

bash "$ROOT/.ci/install-deps" docker-check

metadata="$(mktemp)"
trap 'rm -f "$metadata"' EXIT
(cd "$ROOT" && cargo metadata --no-deps --format-version 1 --offline >"$metadata")

python3 - "$ROOT" "$TARGET_DIR" "$metadata" <<'EOF'
import json, os, re, shlex, sys
from pathlib import Path

root, target, metadata = Path(sys.argv[1]), Path(sys.argv[2]), json.load(open(sys.argv[3]))
passed, failed = 0, 0

def check(ok, what, hint=""):
    global passed, failed
    if ok:
        passed += 1
        print(f"ok   {what}")
    else:
        failed += 1
        print(f"FAIL {what}" + (f" ({hint})" if hint else ""))

binaries = {
    t["name"]: Path(p["manifest_path"]).parent
    for p in metadata["packages"]
    for t in p["targets"]
    if "bin" in t["kind"]
}
print(f"workspace binaries: {', '.join(sorted(binaries)) or 'none'}")
print(f"release binaries from: {target / 'release'}")

# Dockerfile: instructions with continuation lines joined.
lines, current = [], ""
for raw in (root / "Dockerfile").read_text().splitlines():
    stripped = raw.strip()
    if not current and (not stripped or stripped.startswith("#")):
        continue
    if stripped.startswith("#"):
        continue
    current += " " + stripped[:-1] if stripped.endswith("\\") else " " + stripped
    if not stripped.endswith("\\"):
        lines.append(current.strip())
        current = ""

stages, stage = {}, None
for line in lines:
    word, _, rest = line.partition(" ")
    word = word.upper()
    if word == "FROM":
        parts = rest.split()
        stage = parts[2] if len(parts) >= 3 and parts[1].upper() == "AS" else f"final:{parts[0]}"
        stages[stage] = {"base": parts[0], "copies": [], "entrypoint": None, "cmd": None, "env": {}, "user": None}
    elif stage is None:
        continue
    elif word == "COPY":
        args = shlex.split(rest)
        source = next((a.split("=", 1)[1] for a in args if a.startswith("--from=")), None)
        paths = [a for a in args if not a.startswith("--")]
        stages[stage]["copies"].append((source, paths[:-1], paths[-1]))
    elif word == "ENTRYPOINT":
        stages[stage]["entrypoint"] = json.loads(rest)
    elif word == "CMD":
        stages[stage]["cmd"] = json.loads(rest)
    elif word == "USER":
        stages[stage]["user"] = rest.strip()
    elif word == "ENV":
        for key, value in re.findall(r"(\w+)=(\"[^\"]*\"|\S+)", rest):
            stages[stage]["env"][key] = value.strip('"')

# .dockerignore: last matching pattern wins; a pattern also matches everything under a match.
patterns = []
for raw in (root / ".dockerignore").read_text().splitlines():
    raw = raw.strip()
    if raw and not raw.startswith("#"):
        negate = raw.startswith("!")
        patterns.append((negate, os.path.normpath(raw.lstrip("!")).lstrip("/")))

def glob_regex(pattern):
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return out

def excluded(path):
    parts = Path(path).parts
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    result = False
    for negate, pattern in patterns:
        if any(re.fullmatch(glob_regex(pattern), p) for p in prefixes):
            result = not negate
    return result

for name, info in stages.items():
    for source, sources, dest in info["copies"]:
        for src in sources:
            if source is None:
                exists = (root / src).exists()
                check(exists, f"[{name}] COPY {src}: exists in the build context", "missing file")
                if exists:
                    check(not excluded(src), f"[{name}] COPY {src}: not excluded by .dockerignore")
            elif source == "builder" and src.startswith("/src/target/"):
                built = target / src[len("/src/target/"):]
                check(built.is_file(), f"[{name}] COPY --from=builder {src}: {built} exists",
                      "run cargo build --release first")
            else:
                check(False, f"[{name}] COPY --from={source} {src}: unknown source")

functions = {n: i for n, i in stages.items() if i["entrypoint"]}
for name, info in functions.items():
    entry = info["entrypoint"]
    binary = Path(entry[0]).name
    check(binary in binaries, f"[{name}] ENTRYPOINT {entry[0]}: {binary} is a workspace binary")
    check(binary == name, f"[{name}] stage is named after its binary (FUNCTION={binary})")
    check(any(d == entry[0] for s, _, d in info["copies"] if s == "builder"),
          f"[{name}] ENTRYPOINT {entry[0]} is the binary copied from the builder")
    check(info["cmd"] == ["run"], f"[{name}] starts as `{binary} run`")
    package = root / "functions" / binary / "Cargo.toml"
    check(package.is_file(), f"[{name}] package functions/{binary} (cargo build -p {binary})")
for binary in sorted(binaries):
    check(binary in functions, f"workspace binary {binary} has an image stage")

user = next((i["user"] for i in stages.values() if i["user"]), None)
check(user is not None and user.split(":")[0] not in ("0", "root") and user.split(":")[0].isdigit(),
      f"image user {user} is numeric and not root")
builder_run = " ".join(l for l in lines if l.upper().startswith("RUN") and "cargo build" in l)
check('cargo build --release --locked -p "${FUNCTION}"' in builder_run,
      "builder runs cargo build --release --locked -p ${FUNCTION}")
check(list(stages)[-1] == "final:${FUNCTION}", "the last stage is the one FUNCTION names")

baked = stages.get("streamer", {}).get("env", {}).get("STREAMER_CSV")
values = (root / "helm/gpu-telemetry/values.yaml").read_text()
chart = re.search(r"^\s*bakedPath:\s*(\S+)", values, re.M)
check(chart is not None and chart.group(1) == baked,
      f"baked CSV {baked} is the chart's streamer.csv.bakedPath")
cronjob = (root / "knative/30-streamer-cronjob.yaml").read_text()
plain = re.search(r"name: STREAMER_CSV\s+value:\s*(\S+)", cronjob)
check(plain is not None and plain.group(1) == baked, f"baked CSV {baked} is knative/'s STREAMER_CSV")

print(f"docker-check: {passed} passed, {failed} failed")
sys.exit(1 if failed else 0)
EOF
