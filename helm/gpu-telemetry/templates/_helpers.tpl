{{/*
Names, labels and the pieces every function pod shares.
*/}}

{{- define "gpu-telemetry.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Full name prefix. Kept to 40 characters so "<fullname>-etcd-headless" and the Knative Service's
"<fullname>-gateway-<revision>" names stay within the 63-character DNS label limit.
*/}}
{{- define "gpu-telemetry.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "gpu-telemetry.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "gpu-telemetry.selectorLabels" -}}
app.kubernetes.io/name: {{ include "gpu-telemetry.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "gpu-telemetry.labels" -}}
helm.sh/chart: {{ include "gpu-telemetry.chart" . }}
{{ include "gpu-telemetry.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: gpu-telemetry
{{- end }}

{{/* Selector labels of one component: (dict "ctx" $ "component" "collector") */}}
{{- define "gpu-telemetry.componentSelectorLabels" -}}
{{ include "gpu-telemetry.selectorLabels" .ctx }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "gpu-telemetry.componentLabels" -}}
{{ include "gpu-telemetry.labels" .ctx }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "gpu-telemetry.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "gpu-telemetry.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* Image of one function: (dict "ctx" $ "function" "gateway" "image" .Values.gateway.image) */}}
{{- define "gpu-telemetry.image" -}}
{{- $repository := default (printf "%s/%s" .ctx.Values.image.registry .function) .image.repository }}
{{- $tag := default (default .ctx.Chart.AppVersion .ctx.Values.image.tag) .image.tag }}
{{- printf "%s:%s" $repository $tag }}
{{- end }}

{{/*
The etcd key whose value is the queue's pending-message count. KEDA watches it; the functions
write it. Every use in the chart goes through this one definition.
*/}}
{{- define "gpu-telemetry.queueDepthKey" -}}
{{- printf "%s/queue/%s/depth" (trimSuffix "/" .Values.telemetryPrefix) .Values.queue.topic }}
{{- end }}

{{- define "gpu-telemetry.etcdHeadlessName" -}}
{{- printf "%s-etcd-headless" (include "gpu-telemetry.fullname" .) }}
{{- end }}

{{/*
Client URLs of the bundled members, or of the external cluster, comma separated. Fully qualified:
KEDA's operator resolves them from its own namespace.
*/}}
{{- define "gpu-telemetry.etcdEndpoints" -}}
{{- if .Values.etcd.enabled }}
{{- $fullname := include "gpu-telemetry.fullname" . }}
{{- if eq (int .Values.etcd.replicas) 1 }}
{{- printf "http://%s-etcd.%s.svc.%s:2379" $fullname .Release.Namespace .Values.clusterDomain }}
{{- else }}
{{- $urls := list }}
{{- range $i := until (int .Values.etcd.replicas) }}
{{- $urls = append $urls (printf "http://%s-etcd-%d.%s.%s.svc.%s:2379" $fullname $i (include "gpu-telemetry.etcdHeadlessName" $) $.Release.Namespace $.Values.clusterDomain) }}
{{- end }}
{{- join "," $urls }}
{{- end }}
{{- else }}
{{- if not .Values.externalEtcd.endpoints }}
{{- fail "etcd.enabled=false needs externalEtcd.endpoints" }}
{{- end }}
{{- join "," .Values.externalEtcd.endpoints }}
{{- end }}
{{- end }}

{{/* --initial-cluster of the bundled members. */}}
{{- define "gpu-telemetry.etcdInitialCluster" -}}
{{- $fullname := include "gpu-telemetry.fullname" . }}
{{- $members := list }}
{{- range $i := until (int .Values.etcd.replicas) }}
{{- $members = append $members (printf "%s-etcd-%d=http://%s-etcd-%d.%s.%s.svc.%s:2380" $fullname $i $fullname $i (include "gpu-telemetry.etcdHeadlessName" $) $.Release.Namespace $.Values.clusterDomain) }}
{{- end }}
{{- join "," $members }}
{{- end }}

{{- define "gpu-telemetry.etcdTls" -}}
{{- if and (not .Values.etcd.enabled) .Values.externalEtcd.tls.enabled }}true{{ end }}
{{- end }}

{{- define "gpu-telemetry.etcdClientCert" -}}
{{- if and (include "gpu-telemetry.etcdTls" .) .Values.externalEtcd.tls.certKey .Values.externalEtcd.tls.keyKey }}true{{ end }}
{{- end }}

{{- define "gpu-telemetry.etcdAuth" -}}
{{- if and (not .Values.etcd.enabled) .Values.externalEtcd.auth.enabled }}true{{ end }}
{{- end }}

{{- define "gpu-telemetry.etcdTlsMountPath" -}}
/etc/gpu-telemetry/etcd-tls
{{- end }}

{{/* Where the etcd password is mounted as a file (ETCD_PASSWORD_FILE): no process listing or
pod spec shows it, as an environment variable's value would be. */}}
{{- define "gpu-telemetry.etcdAuthMountPath" -}}
/etc/gpu-telemetry/etcd-auth
{{- end }}

{{/* The gateway's URL inside the cluster (the Knative Service's or the Deployment's Service). */}}
{{- define "gpu-telemetry.gatewayUrl" -}}
{{- $host := printf "%s-gateway.%s.svc.%s" (include "gpu-telemetry.fullname" .) .Release.Namespace .Values.clusterDomain }}
{{- if .Values.knative.enabled }}
{{- printf "http://%s" $host }}
{{- else }}
{{- printf "http://%s:%d" $host (int .Values.gateway.service.port) }}
{{- end }}
{{- end }}

{{/* Environment of a function container: (dict "ctx" $ "port" true "extra" list) */}}
{{- define "gpu-telemetry.functionEnv" -}}
{{- $ctx := .ctx }}
{{- if .port }}
- name: PORT
  value: "8080"
{{- end }}
{{- if include "gpu-telemetry.etcdAuth" $ctx }}
- name: ETCD_USERNAME
  valueFrom:
    secretKeyRef:
      name: {{ $ctx.Values.externalEtcd.auth.existingSecret }}
      key: {{ $ctx.Values.externalEtcd.auth.usernameKey }}
{{- end }}
{{- with .extra }}
{{ toYaml . }}
{{- end }}
{{- with $ctx.Values.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "gpu-telemetry.functionEnvFrom" -}}
- configMapRef:
    name: {{ include "gpu-telemetry.fullname" . }}-config
{{- end }}

{{/* Volume mounts of a function container (TLS material, writable /tmp). */}}
{{- define "gpu-telemetry.functionVolumeMounts" -}}
{{- if .tmp }}
- name: tmp
  mountPath: /tmp
{{- end }}
{{- if include "gpu-telemetry.etcdTls" .ctx }}
- name: etcd-tls
  mountPath: {{ include "gpu-telemetry.etcdTlsMountPath" .ctx }}
  readOnly: true
{{- end }}
{{- if include "gpu-telemetry.etcdAuth" .ctx }}
- name: etcd-auth
  mountPath: {{ include "gpu-telemetry.etcdAuthMountPath" .ctx }}
  readOnly: true
{{- end }}
{{- end }}

{{/*
Volumes of a function pod: (dict "ctx" $ "tmp" true "podSecurityContext" <the pod's securityContext>).
The etcd TLS Secret's files are owned by root. With an fsGroup the kubelet hands them to that group,
so 0440 lets the pod's user, and no other, read them. Without one (the Knative Service, unless
Knative's kubernetes.podspec-securitycontext flag is on) a non-root user can read them only when
they are world-readable: 0444. The container runs nothing but the function, as that one user.
*/}}
{{- define "gpu-telemetry.functionVolumes" -}}
{{- if .tmp }}
- name: tmp
  emptyDir:
    sizeLimit: 64Mi
{{- end }}
{{- if include "gpu-telemetry.etcdTls" .ctx }}
- name: etcd-tls
  secret:
    secretName: {{ .ctx.Values.externalEtcd.tls.existingSecret }}
    defaultMode: {{ if (.podSecurityContext | default dict).fsGroup }}0440{{ else }}0444{{ end }}
{{- end }}
{{- if include "gpu-telemetry.etcdAuth" .ctx }}
- name: etcd-auth
  secret:
    secretName: {{ .ctx.Values.externalEtcd.auth.existingSecret }}
    items:
      - key: {{ .ctx.Values.externalEtcd.auth.passwordKey }}
        path: password
    defaultMode: {{ if (.podSecurityContext | default dict).fsGroup }}0440{{ else }}0444{{ end }}
{{- end }}
{{- end }}

{{- define "gpu-telemetry.livenessProbe" -}}
httpGet:
  path: /healthz
  port: 8080
{{ toYaml .Values.probes.liveness }}
{{- end }}

{{- define "gpu-telemetry.readinessProbe" -}}
httpGet:
  path: /readyz
  port: 8080
{{ toYaml .Values.probes.readiness }}
{{- end }}

{{/* Pod annotations of a function: (dict "ctx" $ "extra" .Values.collector.podAnnotations) */}}
{{- define "gpu-telemetry.functionPodAnnotations" -}}
checksum/config: {{ include (print .ctx.Template.BasePath "/configmap.yaml") .ctx | sha256sum }}
{{- if .ctx.Values.metrics.podAnnotations }}
prometheus.io/scrape: "true"
prometheus.io/port: "8080"
prometheus.io/path: /metrics
{{- end }}
{{- with .extra }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Scheduling fields of a pod spec (nodeSelector, tolerations, affinity) when set. */}}
{{- define "gpu-telemetry.scheduling" -}}
{{- with .nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}
