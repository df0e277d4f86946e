# shellcheck shell=bash
# Sourced by check-openapi.sh and api-fuzz.sh: a Python venv with the pinned API tools from PyPI,
# created on first use in a git-ignored cache (.cache/api-tools, or $API_TOOLS_CACHE) and reused
# afterwards without network. Needs python3 with the venv module: the sourcing script runs
# .ci/install-deps first.

API_TOOLS_VENV="${API_TOOLS_CACHE:-$ROOT/.cache/api-tools}"
API_TOOLS=("schemathesis==4.32.5" "openapi-spec-validator==0.9.0")

ensure_api_tools() {
  local stamp
  stamp="$API_TOOLS_VENV/.installed-$(printf '%s\n' "${API_TOOLS[@]}" | sha256sum | cut -c1-16)"
  if [[ -f "$stamp" ]]; then
    return
  fi
  echo "installing ${API_TOOLS[*]} into $API_TOOLS_VENV"
  python3 -m venv "$API_TOOLS_VENV"
  "$API_TOOLS_VENV/bin/pip" install --quiet --disable-pip-version-check "${API_TOOLS[@]}"
  touch "$stamp"
}
