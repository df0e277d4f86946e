"""Offline validation of the chart's rendered manifests and of knative/.

Commands:
  validate FILE...                 every object: core kinds against the Kubernetes JSON schemas in
                                   strict mode (kubernetes-validate), KEDA and Knative kinds against
                                   their CRD schemas (validate_crds.mjs), then the pipeline's own
                                   rules (security context, mounted secrets readable by the
                                   container's user, probes, scaling bounds, references, etcd
                                   flags and a readiness that survives NOSPACE, who may reach the
                                   collector).
  expect-default RENDERED KNATIVE_DIR
                                   the default rendering holds what a default install promises, and
                                   knative/ agrees with it on the queue depth key.
  check-kn KNATIVE_DIR DOC...      every `kn service create` command in the documents works next to
                                   knative/: same namespace, its ServiceAccount and ConfigMap, and
                                   revision labels that the etcd NetworkPolicy admits.
  mutate FILE KIND NAME_SUFFIX PATH JSON_VALUE
                                   print FILE with one field of one object set to JSON_VALUE (for
                                   the negative self-tests).
Exit status 1 when a check fails, with one line per finding.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Iterator

import kubernetes_validate
import yaml

KUBERNETES_VERSION = os.environ.get("K8S_VALIDATE_KUBE_VERSION", "1.29.0")
CRD_KINDS = {
    ("keda.sh/v1alpha1", "ScaledObject"),
    ("keda.sh/v1alpha1", "TriggerAuthentication"),
    ("serving.knative.dev/v1", "Service"),
    ("monitoring.coreos.com/v1", "ServiceMonitor"),
}
# KEDA's etcd scaler reads these trigger metadata keys and silently ignores any other.
ETCD_TRIGGER_KEYS = {
    "endpoints",
    "watchKey",
    "value",
    "activationValue",
    "watchProgressNotifyInterval",
    "usernameFromEnv",
    "passwordFromEnv",
}
ETCD_TRIGGER_REQUIRED = {"endpoints", "watchKey", "value"}
ETCD_AUTH_PARAMETERS = {"tls", "ca", "cert", "key", "keyPassword", "username", "password"}
# The mode Kubernetes gives the files of a secret or configMap volume when none is set.
DEFAULT_VOLUME_MODE = 0o644
MAX_ELASTIC_REPLICAS = 10
FUNCTION_COMPONENTS = {"streamer", "collector", "gateway"}
DEFAULT_DEPTH_KEY = "/gpu-telemetry/queue/telemetry/depth"
# Every etcd the project deploys keeps lease TTLs across leader changes and restarts.
ETCD_REQUIRED_FLAGS = ("--experimental-enable-lease-checkpoint", "--experimental-enable-lease-checkpoint-persist")
# The pods that may reach the collector's port: the functions of the same release.
COLLECTOR_CLIENTS = {"streamer", "collector", "gateway"}
# The maintenance job must run often enough that a NOSPACE alarm clears within minutes.
MAINTENANCE_SCHEDULE = "*/5 * * * *"


class Manifest:
    """One object of a manifest file, with where it came from."""

    def __init__(self, source: str, index: int, doc: dict[str, Any]):
        self.source = source
        self.index = index
        self.doc = doc

    @property
    def kind(self) -> str:
        return str(self.doc.get("kind", ""))

    @property
    def api_version(self) -> str:
        return str(self.doc.get("apiVersion", ""))

    @property
    def name(self) -> str:
        return str(self.doc.get("metadata", {}).get("name", ""))

    def label(self) -> str:
        return f"{self.source}#{self.index} {self.kind}/{self.name}"


def load(paths: list[str]) -> list[Manifest]:
    manifests = []
    for path in paths:
        with open(path, encoding="utf-8") as handle:
            for index, doc in enumerate(yaml.safe_load_all(handle)):
                if doc:
                    manifests.append(Manifest(path, index, doc))
    return manifests


def pod_spec(manifest: Manifest) -> dict[str, Any] | None:
    doc = manifest.doc
    spec = doc.get("spec", {})
    if manifest.kind in ("Deployment", "StatefulSet", "Job"):
        return spec.get("template", {}).get("spec")
    if manifest.kind == "CronJob":
        return spec.get("jobTemplate", {}).get("spec", {}).get("template", {}).get("spec")
    if (manifest.api_version, manifest.kind) == ("serving.knative.dev/v1", "Service"):
        return spec.get("template", {}).get("spec")
    return None


def pod_labels(manifest: Manifest) -> dict[str, str]:
    spec = manifest.doc.get("spec", {})
    if manifest.kind == "CronJob":
        spec = spec.get("jobTemplate", {}).get("spec", {})
    return spec.get("template", {}).get("metadata", {}).get("labels", {}) or {}


def containers(spec: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield from spec.get("initContainers", []) or []
    yield from spec.get("containers", []) or []


def schema_errors(manifests: list[Manifest]) -> list[str]:
    errors = []
    crds = []
    for manifest in manifests:
        if (manifest.api_version, manifest.kind) in CRD_KINDS:
            crds.append(manifest)
            continue
        try:
            kubernetes_validate.validate(manifest.doc, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as error:
            path = "/".join(str(part) for part in error.path)
            errors.append(f"{manifest.label()}: /{path}: {error.message}")
        except kubernetes_validate.SchemaNotFoundError as error:
            errors.append(f"{manifest.label()}: {error.message}")
    if crds:
        errors.extend(crd_errors(crds))
    return errors


def crd_errors(manifests: list[Manifest]) -> list[str]:
    node_modules = os.environ.get("K8S_VALIDATE_NODE_MODULES")
    if not node_modules:
        raise SystemExit("K8S_VALIDATE_NODE_MODULES is not set (run through helm/validate.sh)")
    script = Path(__file__).with_name("validate_crds.mjs")
    with tempfile.TemporaryDirectory() as tmp:
        # Node resolves packages from the script's directory upwards, so run a copy beside them.
        runner = Path(node_modules).parent / "validate_crds.mjs"
        runner.write_text(script.read_text(encoding="utf-8"), encoding="utf-8")
        items = Path(tmp) / "items.json"
        items.write_text(
            json.dumps([{"id": i, "doc": m.doc} for i, m in enumerate(manifests)]),
            encoding="utf-8",
        )
        result = subprocess.run(
            ["node", str(runner), str(items)], capture_output=True, text=True, check=False
        )
    if result.returncode != 0:
        raise SystemExit(f"validate_crds.mjs failed:\n{result.stderr}")
    errors = []
    for entry in json.loads(result.stdout):
        for message in entry["errors"]:
            errors.append(f"{manifests[entry['id']].label()}: {message}")
    return errors


def security_errors(manifest: Manifest, spec: dict[str, Any]) -> list[str]:
    errors = []
    for container in containers(spec):
        where = f"{manifest.label()}: container {container.get('name')}"
        context = container.get("securityContext") or {}
        if context.get("runAsNonRoot") is not True:
            errors.append(f"{where}: securityContext.runAsNonRoot must be true")
        if context.get("readOnlyRootFilesystem") is not True:
            errors.append(f"{where}: securityContext.readOnlyRootFilesystem must be true")
        if context.get("allowPrivilegeEscalation") is not False:
            errors.append(f"{where}: securityContext.allowPrivilegeEscalation must be false")
        if "ALL" not in ((context.get("capabilities") or {}).get("drop") or []):
            errors.append(f"{where}: securityContext.capabilities.drop must contain ALL")
        if context.get("privileged"):
            errors.append(f"{where}: privileged containers are not allowed")
        for env in container.get("env") or []:
            # A password in the environment shows in the pod spec and every process listing.
            secret = (env.get("valueFrom") or {}).get("secretKeyRef")
            if secret and env.get("name", "").endswith("PASSWORD"):
                errors.append(f"{where}: {env['name']} comes from a Secret as an env var; mount it as a file")
    return errors


def volume_access_errors(manifest: Manifest, spec: dict[str, Any]) -> list[str]:
    """Every container can read the secret and configMap files it mounts, as the user it runs as.

    The kubelet writes those files owned by root:root with the volume's mode; when the pod has an
    fsGroup, it makes them group fsGroup and adds group read. So a non-root user reads them through
    the fsGroup, through group 0, or through the "other" bits. (Without the fsGroup, a 0440 Secret is
    unreadable for user 65532: what a Knative pod without a pod securityContext gets.)
    """
    errors = []
    pod = spec.get("securityContext") or {}
    volumes = {v.get("name"): v for v in spec.get("volumes", []) or []}
    for container in containers(spec):
        context = container.get("securityContext") or {}
        uid = context.get("runAsUser", pod.get("runAsUser"))
        gid = context.get("runAsGroup", pod.get("runAsGroup"))
        fs_group = pod.get("fsGroup")
        groups = {g for g in [gid, fs_group, *(pod.get("supplementalGroups") or [])] if g is not None}
        for mount in container.get("volumeMounts", []) or []:
            volume = volumes.get(mount.get("name"), {})
            kind = next((k for k in ("secret", "configMap") if k in volume), None)
            if kind is None:
                continue
            where = f"{manifest.label()}: container {container.get('name')}, {kind} volume {volume.get('name')!r}"
            if uid is None:
                errors.append(f"{where}: no runAsUser, so whether it can read the files cannot be checked")
                continue
            source = volume[kind] or {}
            default = source.get("defaultMode", DEFAULT_VOLUME_MODE)
            files = [(item.get("path"), item.get("mode", default)) for item in source.get("items") or []]
            for path, mode in files or [("its files", default)]:
                file_group = 0 if fs_group is None else fs_group
                if fs_group is not None:
                    mode |= 0o440
                if uid == 0:
                    can_read = bool(mode & 0o400)
                elif file_group in groups:
                    can_read = bool(mode & 0o040)
                else:
                    can_read = bool(mode & 0o004)
                if not can_read:
                    errors.append(
                        f"{where}: user {uid} cannot read {path} (mode {mode:04o}, owner root, group "
                        f"{file_group}): give the pod an fsGroup, or a mode that user can read"
                    )
    return errors


def probe_path(container: dict[str, Any], probe: str) -> str | None:
    return ((container.get(probe) or {}).get("httpGet") or {}).get("path")


def function_errors(manifest: Manifest, spec: dict[str, Any]) -> list[str]:
    component = pod_labels(manifest).get("app.kubernetes.io/component")
    if component not in FUNCTION_COMPONENTS:
        return []
    errors = []
    for container in spec.get("containers", []):
        where = f"{manifest.label()}: container {container.get('name')}"
        if probe_path(container, "livenessProbe") != "/healthz":
            errors.append(f"{where}: livenessProbe must GET /healthz")
        # A CronJob pod serves no traffic, so only long-running functions need readiness.
        if manifest.kind != "CronJob" and probe_path(container, "readinessProbe") != "/readyz":
            errors.append(f"{where}: readinessProbe must GET /readyz")
        args = container.get("args") or []
        if not args or args[0] != "run":
            errors.append(f"{where}: the function must be started as `<binary> run`")
        ports = [p.get("containerPort") for p in container.get("ports", [])]
        if ports != [8080]:
            errors.append(f"{where}: the function must expose exactly containerPort 8080")
    return errors


def etcd_member_errors(manifest: Manifest, spec: dict[str, Any]) -> list[str]:
    """An etcd StatefulSet runs with lease checkpoints and stays ready under a NOSPACE alarm."""
    if manifest.kind != "StatefulSet" or pod_labels(manifest).get("app.kubernetes.io/component") != "etcd":
        return []
    errors = []
    for container in spec.get("containers", []):
        where = f"{manifest.label()}: container {container.get('name')}"
        args = [str(a) for a in container.get("args", []) or []]
        for flag in ETCD_REQUIRED_FLAGS:
            if flag not in args:
                errors.append(f"{where}: etcd runs without {flag}")
        readiness = container.get("readinessProbe") or {}
        path = (readiness.get("httpGet") or {}).get("path")
        # /health answers unhealthy under NOSPACE unless told to exclude it; an unready member
        # leaves the Service that the functions and the maintenance job reach it through.
        if not readiness:
            errors.append(f"{where}: no readinessProbe")
        elif path is not None and "exclude=NOSPACE" not in path:
            errors.append(f"{where}: readinessProbe {path} goes unready on a NOSPACE alarm")
    return errors


def collector_policy_errors(manifests: list[Manifest]) -> list[str]:
    """When NetworkPolicies are rendered, one admits to the collector's port only the functions."""
    policies = [m for m in manifests if m.kind == "NetworkPolicy"]
    collectors = [m for m in manifests if m.kind == "Deployment" and pod_labels(m).get("app.kubernetes.io/component") == "collector"]
    if not policies or not collectors:
        return []
    errors = []
    labels = pod_labels(collectors[0])
    guarding = [p for p in policies if selector_matches(p.doc["spec"].get("podSelector", {}), labels)]
    if not guarding:
        errors.append(f"{collectors[0].label()}: no NetworkPolicy selects the collector's pods")
    for policy in guarding:
        for rule in policy.doc["spec"].get("ingress", []) or []:
            if not rule.get("from"):
                errors.append(f"{policy.label()}: an ingress rule admits every pod")
            for peer in rule.get("from", []) or []:
                if "namespaceSelector" in peer or "ipBlock" in peer:
                    continue
                selector = peer.get("podSelector", {})
                for component in {"etcd", "etcd-defrag", "unknown"}:
                    probe = {**labels, "app.kubernetes.io/component": component}
                    if selector_matches(selector, probe):
                        errors.append(f"{policy.label()}: admits {component} pods to the collector")
                admitted = {
                    c
                    for c in COLLECTOR_CLIENTS
                    if selector_matches(selector, {**labels, "app.kubernetes.io/component": c})
                }
                if not admitted:
                    errors.append(f"{policy.label()}: a peer admits none of the functions")
    return errors


def etcd_trigger_errors(manifest: Manifest) -> list[str]:
    errors = []
    spec = manifest.doc.get("spec", {})
    max_replicas = spec.get("maxReplicaCount")
    if isinstance(max_replicas, int) and max_replicas > MAX_ELASTIC_REPLICAS:
        errors.append(f"{manifest.label()}: maxReplicaCount above {MAX_ELASTIC_REPLICAS}")
    for trigger in spec.get("triggers", []):
        if trigger.get("type") != "etcd":
            continue
        metadata = trigger.get("metadata", {})
        for key in sorted(set(metadata) - ETCD_TRIGGER_KEYS):
            errors.append(f"{manifest.label()}: etcd trigger: KEDA ignores metadata key {key!r}")
        for key in sorted(ETCD_TRIGGER_REQUIRED - set(metadata)):
            errors.append(f"{manifest.label()}: etcd trigger: missing metadata key {key!r}")
        for key in ("value", "activationValue"):
            if key in metadata:
                try:
                    float(metadata[key])
                except (TypeError, ValueError):
                    errors.append(f"{manifest.label()}: etcd trigger: {key} is not a number")
        interval = metadata.get("watchProgressNotifyInterval")
        if interval is not None and not re.fullmatch(r"[1-9][0-9]*", str(interval)):
            errors.append(
                f"{manifest.label()}: etcd trigger: watchProgressNotifyInterval must be whole seconds"
            )
        for endpoint in str(metadata.get("endpoints", "")).split(","):
            host = re.sub(r"^https?://", "", endpoint).split(":")[0]
            # KEDA's operator resolves the endpoints from its own namespace.
            if host and "." not in host:
                errors.append(
                    f"{manifest.label()}: etcd trigger: endpoint {endpoint!r} must be namespace-qualified"
                )
    return errors


def trigger_auth_errors(manifest: Manifest) -> list[str]:
    errors = []
    for ref in manifest.doc.get("spec", {}).get("secretTargetRef", []) or []:
        if ref.get("parameter") not in ETCD_AUTH_PARAMETERS:
            errors.append(
                f"{manifest.label()}: secretTargetRef parameter {ref.get('parameter')!r} is not an etcd scaler parameter"
            )
    return errors


def etcd_flag(manifests: list[Manifest], flag: str) -> list[tuple[Manifest, str]]:
    found = []
    for manifest in manifests:
        if manifest.kind != "StatefulSet":
            continue
        for container in (pod_spec(manifest) or {}).get("containers", []):
            for arg in container.get("args", []) or []:
                if str(arg).startswith(f"--{flag}="):
                    found.append((manifest, str(arg).split("=", 1)[1]))
    return found


def reference_errors(manifests: list[Manifest]) -> list[str]:
    """References between objects of one rendering resolve, and the bounds hold across objects."""
    errors = []
    by_kind: dict[str, set[str]] = {}
    for manifest in manifests:
        by_kind.setdefault(manifest.kind, set()).add(manifest.name)
    for manifest in manifests:
        spec = pod_spec(manifest)
        if spec is not None:
            account = spec.get("serviceAccountName")
            if account and account != "default" and account not in by_kind.get("ServiceAccount", set()):
                errors.append(f"{manifest.label()}: ServiceAccount {account!r} is not defined")
            for container in containers(spec):
                for source in container.get("envFrom", []) or []:
                    name = (source.get("configMapRef") or {}).get("name")
                    if name and name not in by_kind.get("ConfigMap", set()):
                        errors.append(f"{manifest.label()}: ConfigMap {name!r} is not defined")
        if manifest.kind == "ScaledObject" or manifest.kind == "HorizontalPodAutoscaler":
            target = manifest.doc["spec"]["scaleTargetRef"]
            if target.get("name") not in by_kind.get(target.get("kind", "Deployment"), set()):
                errors.append(f"{manifest.label()}: scale target {target.get('name')!r} is not defined")
        if manifest.kind == "ScaledObject":
            for trigger in manifest.doc["spec"].get("triggers", []):
                ref = (trigger.get("authenticationRef") or {}).get("name")
                if ref and ref not in by_kind.get("TriggerAuthentication", set()):
                    errors.append(f"{manifest.label()}: TriggerAuthentication {ref!r} is not defined")
        if manifest.kind == "Service" and manifest.api_version == "v1":
            selector = manifest.doc.get("spec", {}).get("selector") or {}
            if selector and not any(
                selector.items() <= pod_labels(other).items() for other in manifests if pod_spec(other)
            ):
                errors.append(f"{manifest.label()}: selector matches no pod template")
        if manifest.kind == "CronJob" and pod_labels(manifest).get("app.kubernetes.io/component") == "streamer":
            parallelism = manifest.doc["spec"]["jobTemplate"]["spec"].get("parallelism", 1)
            if isinstance(parallelism, int) and parallelism > MAX_ELASTIC_REPLICAS:
                errors.append(f"{manifest.label()}: parallelism above {MAX_ELASTIC_REPLICAS}")
        if manifest.kind == "Deployment" and pod_labels(manifest).get("app.kubernetes.io/component") == "collector":
            replicas = manifest.doc["spec"].get("replicas", 0)
            if isinstance(replicas, int) and replicas > MAX_ELASTIC_REPLICAS:
                errors.append(f"{manifest.label()}: replicas above {MAX_ELASTIC_REPLICAS}")
    # KEDA re-watches when no progress notice arrives within twice its interval: the two must agree.
    intervals = {value for _, value in etcd_flag(manifests, "experimental-watch-progress-notify-interval")}
    for manifest in manifests:
        if manifest.kind != "ScaledObject":
            continue
        for trigger in manifest.doc["spec"].get("triggers", []):
            keda = trigger.get("metadata", {}).get("watchProgressNotifyInterval")
            for interval in intervals:
                if keda is not None and f"{keda}s" != interval:
                    errors.append(
                        f"{manifest.label()}: watchProgressNotifyInterval {keda} differs from etcd's {interval}"
                    )
    return errors


def validate(paths: list[str]) -> int:
    manifests = load(paths)
    errors = schema_errors(manifests)
    for manifest in manifests:
        spec = pod_spec(manifest)
        if spec is not None:
            errors.extend(security_errors(manifest, spec))
            errors.extend(volume_access_errors(manifest, spec))
            errors.extend(function_errors(manifest, spec))
            errors.extend(etcd_member_errors(manifest, spec))
        if manifest.kind == "ScaledObject":
            errors.extend(etcd_trigger_errors(manifest))
        if manifest.kind == "TriggerAuthentication":
            errors.extend(trigger_auth_errors(manifest))
    errors.extend(reference_errors(manifests))
    errors.extend(collector_policy_errors(manifests))
    for error in errors:
        print(f"FAIL {error}")
    kinds = sorted({f"{m.kind}" for m in manifests})
    print(f"{'invalid' if errors else 'valid'}: {len(manifests)} objects ({', '.join(kinds)}) in {len(paths)} file(s)")
    return 1 if errors else 0


def only(manifests: list[Manifest], predicate, what: str, errors: list[str]) -> Manifest | None:
    matches = [m for m in manifests if predicate(m)]
    if len(matches) != 1:
        errors.append(f"expected exactly one {what}, found {len(matches)}")
        return None
    return matches[0]


def expect_default(rendered: str, knative_dir: str) -> int:
    """The default chart renders the promised stack, and knative/ agrees with it."""
    errors: list[str] = []
    chart = load([rendered])
    component = lambda m: pod_labels(m).get("app.kubernetes.io/component")  # noqa: E731

    gateway = only(
        chart,
        lambda m: (m.api_version, m.kind) == ("serving.knative.dev/v1", "Service"),
        "Knative Service",
        errors,
    )
    if gateway:
        annotations = gateway.doc["spec"]["template"]["metadata"].get("annotations", {})
        if annotations.get("autoscaling.knative.dev/min-scale") != "0":
            errors.append("gateway Knative Service: min-scale is not \"0\"")
        if annotations.get("autoscaling.knative.dev/max-scale") != "10":
            errors.append("gateway Knative Service: max-scale is not \"10\"")
        if not annotations.get("autoscaling.knative.dev/target"):
            errors.append("gateway Knative Service: no concurrency target")
        if component(gateway) != "gateway":
            errors.append("Knative Service is not the gateway")

    scaled = only(chart, lambda m: m.kind == "ScaledObject", "ScaledObject", errors)
    if scaled:
        spec = scaled.doc["spec"]
        triggers = spec.get("triggers", [])
        if [t.get("type") for t in triggers] != ["etcd"]:
            errors.append(f"ScaledObject triggers are {[t.get('type') for t in triggers]}, not [etcd]")
        if spec.get("minReplicaCount") != 0 or spec.get("maxReplicaCount") != MAX_ELASTIC_REPLICAS:
            errors.append("ScaledObject does not scale 0..10")
        if triggers and triggers[0].get("metadata", {}).get("watchKey") != DEFAULT_DEPTH_KEY:
            errors.append(f"ScaledObject does not watch {DEFAULT_DEPTH_KEY}")
        for key in ("value", "activationValue", "watchProgressNotifyInterval"):
            if triggers and key not in triggers[0].get("metadata", {}):
                errors.append(f"ScaledObject etcd trigger has no {key}")
        if spec.get("scaleTargetRef", {}).get("kind", "Deployment") != "Deployment":
            errors.append("ScaledObject does not target the collector Deployment")

    streamer = only(
        chart, lambda m: m.kind == "CronJob" and component(m) == "streamer", "streamer CronJob", errors
    )
    if streamer:
        args = pod_spec(streamer)["containers"][0].get("args", [])
        if args != ["run", "--for", "55s"]:
            errors.append(f"streamer CronJob args are {args}, not run --for 55s")
        if streamer.doc["spec"].get("schedule") != "* * * * *":
            errors.append("streamer CronJob does not run every minute")
        if streamer.doc["spec"].get("concurrencyPolicy") not in ("Forbid", "Replace"):
            errors.append("streamer CronJob lets runs overlap")

    etcd = only(chart, lambda m: m.kind == "StatefulSet" and component(m) == "etcd", "etcd StatefulSet", errors)
    if etcd:
        args = pod_spec(etcd)["containers"][0].get("args", [])
        for flag in ("--auto-compaction-mode=", "--auto-compaction-retention=", "--quota-backend-bytes="):
            if not any(str(a).startswith(flag) for a in args):
                errors.append(f"etcd StatefulSet lacks {flag}")

    for source, objects in (("chart", chart), ("knative/", load(sorted(str(p) for p in Path(knative_dir).glob("*.yaml"))))):
        maintenance = [m for m in objects if m.kind == "CronJob" and component(m) == "etcd-defrag"]
        if [m.doc["spec"].get("schedule") for m in maintenance] != [MAINTENANCE_SCHEDULE]:
            errors.append(f"{source}: the etcd maintenance CronJob does not run {MAINTENANCE_SCHEDULE!r}")
        policy_component = lambda m: (m.doc.get("metadata", {}).get("labels") or {}).get(  # noqa: E731
            "app.kubernetes.io/component"
        )
        if not any(m.kind == "NetworkPolicy" and policy_component(m) == "collector" for m in objects):
            errors.append(f"{source}: no NetworkPolicy guards the collector")

    collector = only(
        chart, lambda m: m.kind == "Deployment" and component(m) == "collector", "collector Deployment", errors
    )
    if collector and "replicas" in collector.doc["spec"]:
        errors.append("collector Deployment sets replicas although KEDA owns them")

    # knative/ keeps the same depth key literally (and the Rust tests compare it with the code).
    plain = load(sorted(str(p) for p in Path(knative_dir).glob("*.yaml")))
    keys = [
        t.get("metadata", {}).get("watchKey")
        for m in plain
        if m.kind == "ScaledObject"
        for t in m.doc["spec"].get("triggers", [])
    ]
    chart_keys = [
        t.get("metadata", {}).get("watchKey") for t in (scaled.doc["spec"]["triggers"] if scaled else [])
    ]
    if keys != chart_keys:
        errors.append(f"knative/ watches {keys}, the chart {chart_keys}")
    errors.extend(namespace_errors(plain))
    plain_kinds = sorted(f"{m.kind}" for m in plain)
    for kind in ("ConfigMap", "CronJob", "Deployment", "ScaledObject", "Service", "StatefulSet"):
        if kind not in plain_kinds:
            errors.append(f"knative/ has no {kind}")

    for error in errors:
        print(f"FAIL {error}")
    print(f"{'unexpected' if errors else 'as expected'}: default rendering and knative/")
    return 1 if errors else 0


def knative_namespace(plain: list[Manifest]) -> str | None:
    namespaces = {m.doc.get("metadata", {}).get("namespace") for m in plain if m.kind != "Namespace"}
    return next(iter(namespaces)) if len(namespaces) == 1 else None


def namespace_errors(plain: list[Manifest]) -> list[str]:
    """knative/ keeps one namespace throughout, declares it, and KEDA reaches etcd inside it."""
    namespace = knative_namespace(plain)
    if namespace is None:
        found = sorted({str(m.doc.get("metadata", {}).get("namespace")) for m in plain if m.kind != "Namespace"})
        return [f"knative/ objects are not all in one namespace: {found}"]
    errors = []
    declared = [m.name for m in plain if m.kind == "Namespace"]
    if declared != [namespace]:
        errors.append(f"knative/ declares the namespaces {declared}; its objects are in {namespace!r}")
    services = {m.name for m in plain if (m.api_version, m.kind) == ("v1", "Service")}
    for manifest in plain:
        if manifest.kind != "ScaledObject":
            continue
        for trigger in manifest.doc["spec"].get("triggers", []):
            for endpoint in str(trigger.get("metadata", {}).get("endpoints", "")).split(","):
                host = re.sub(r"^https?://", "", endpoint).split(":")[0].split(".")
                if len(host) < 3 or host[0] not in services or host[1:3] != [namespace, "svc"]:
                    errors.append(
                        f"{manifest.label()}: endpoint {endpoint!r} is not a Service of knative/ in namespace {namespace!r}"
                    )
    return errors


def selector_matches(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    if not selector.get("matchLabels", {}).items() <= labels.items():
        return False
    for expression in selector.get("matchExpressions", []) or []:
        key, operator, values = expression["key"], expression["operator"], expression.get("values", [])
        if operator == "In" and labels.get(key) not in values:
            return False
        if operator == "NotIn" and labels.get(key) in values:
            return False
        if operator == "Exists" and key not in labels:
            return False
        if operator == "DoesNotExist" and key in labels:
            return False
    return True


def kn_commands(path: str) -> list[list[str]]:
    """The `kn service create` commands of a document, continuation lines joined."""
    text = re.sub(r"\\\n\s*", " ", Path(path).read_text(encoding="utf-8"))
    return [shlex.split(line.strip()) for line in text.splitlines() if re.match(r"\s*kn service create ", line)]


def check_kn(knative_dir: str, docs: list[str]) -> int:
    """The documented kn commands create a gateway that works beside the manifests of knative/."""
    plain = load(sorted(str(p) for p in Path(knative_dir).glob("*.yaml")))
    namespace = knative_namespace(plain)
    names = lambda kind: {m.name for m in plain if (m.api_version, m.kind) == ("v1", kind)}  # noqa: E731
    policies = [m for m in plain if m.kind == "NetworkPolicy"]
    errors = []
    count = 0
    for doc in docs:
        for command in kn_commands(doc):
            count += 1
            where = f"{doc}: kn service create {command[3] if len(command) > 3 else ''}"
            flags: dict[str, list[str]] = {}
            for flag, value in zip(command[4:], command[5:]):
                if flag.startswith("-"):
                    flags.setdefault({"-n": "--namespace", "-l": "--label"}.get(flag, flag), []).append(value)
            if flags.get("--namespace") != [namespace]:
                errors.append(f"{where}: namespace {flags.get('--namespace')}, knative/ uses {namespace!r}")
            for account in flags.get("--service-account", [None]):
                if account not in names("ServiceAccount"):
                    errors.append(f"{where}: ServiceAccount {account!r} is not in knative/")
            for source in flags.get("--env-from", []):
                if source.startswith("cm:") and source[3:] not in names("ConfigMap"):
                    errors.append(f"{where}: ConfigMap {source[3:]!r} is not in knative/")
            labels = dict(v.split("=", 1) for v in flags.get("--label", []) + flags.get("--label-revision", []))
            admitted = any(
                "namespaceSelector" not in peer and selector_matches(peer.get("podSelector", {}), labels)
                for policy in policies
                for rule in policy.doc["spec"].get("ingress", [])
                if any(p.get("port") == 2379 for p in rule.get("ports", []))
                for peer in rule.get("from", [])
            )
            if not admitted:
                errors.append(f"{where}: the etcd NetworkPolicy admits no pod with the labels {labels}")
            if flags.get("--arg", [None])[0] != "run":
                errors.append(f"{where}: the gateway must be started as `gateway run` (--arg run)")
            if flags.get("--port") != ["http1:8080"]:
                errors.append(f"{where}: --port must be http1:8080, the port every manifest uses")
    if count == 0:
        errors.append(f"no `kn service create` command in {docs}")
    for error in errors:
        print(f"FAIL {error}")
    print(f"{'broken' if errors else 'consistent'}: {count} kn command(s) against knative/")
    return 1 if errors else 0


def mutate(path: str, kind: str, name_suffix: str, field_path: str, value: str) -> int:
    docs = [d for d in yaml.safe_load_all(Path(path).read_text(encoding="utf-8")) if d]
    targets = [d for d in docs if d.get("kind") == kind and d["metadata"]["name"].endswith(name_suffix)]
    if len(targets) != 1:
        raise SystemExit(f"mutate: {len(targets)} objects match {kind} *{name_suffix}")
    node: Any = targets[0]
    parts = field_path.split(".")
    for part in parts[:-1]:
        node = node[int(part)] if isinstance(node, list) else node[part]
    last = parts[-1]
    if isinstance(node, list):
        node[int(last)] = json.loads(value)
    else:
        node[last] = json.loads(value)
    yaml.safe_dump_all(docs, sys.stdout, sort_keys=False)
    return 0


def main(argv: list[str]) -> int:
    if len(argv) >= 2 and argv[0] == "validate":
        return validate(argv[1:])
    if len(argv) == 3 and argv[0] == "expect-default":
        return expect_default(argv[1], argv[2])
    if len(argv) >= 3 and argv[0] == "check-kn":
        return check_kn(argv[1], argv[2:])
    if len(argv) == 6 and argv[0] == "mutate":
        return mutate(*argv[1:])
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
