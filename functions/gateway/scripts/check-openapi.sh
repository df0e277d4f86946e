#!/usr/bin/env bash
# Validates the gateway's OpenAPI document as OpenAPI 3.1 with openapi-spec-validator (PyPI):
# the document the code generates now, and the checked-in testdata/openapi.json (the Rust test
# `checked_in_spec_matches_the_generated_one` proves the two are equal).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../../.." && pwd)"
source "$ROOT/functions/gateway/scripts/python-tools.sh"
bash "$ROOT/.ci/install-deps" openapi
ensure_api_tools

WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
cd "$ROOT"
# Built like `make test` builds it (see api-fuzz.sh), so nothing is compiled twice.
cargo build --quiet --workspace --bins --examples
"${CARGO_TARGET_DIR:-$ROOT/target}/debug/gateway" openapi >"$WORK/openapi.json"
grep -q '"openapi": "3.1.0"' "$WORK/openapi.json" || { echo "the document is not OpenAPI 3.1" >&2; exit 1; }
"$API_TOOLS_VENV/bin/openapi-spec-validator" "$WORK/openapi.json" testdata/openapi.json
