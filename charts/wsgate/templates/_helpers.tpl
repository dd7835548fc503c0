{{/* Names and labels shared by every template. */}}

{{- define "wsgate.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "wsgate.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* Component names: room is left for the longest suffix ("-scaler-metrics"). */}}
{{- define "wsgate.envoy" -}}{{ include "wsgate.fullname" . | trunc 48 | trimSuffix "-" }}-envoy{{- end -}}
{{- define "wsgate.scaler" -}}{{ include "wsgate.fullname" . | trunc 48 | trimSuffix "-" }}-scaler{{- end -}}
{{- define "wsgate.redis" -}}{{ include "wsgate.fullname" . | trunc 48 | trimSuffix "-" }}-redis{{- end -}}
{{- /* The replicas each admission waits for (--redis-wait-replicas):
redis.waitReplicas, or when null 1 for Sentinel and Cluster (a primary with
one replica, the smallest deployment that fails over) and 0 for a single
Redis, which has no replica to wait for. */ -}}
{{- define "wsgate.redisWaitReplicas" -}}
{{- $r := .Values.redis -}}
{{- if not (kindIs "invalid" $r.waitReplicas) -}}{{ int $r.waitReplicas }}
{{- else if and (not $r.bundled.enabled) (has $r.mode (list "sentinel" "cluster")) -}}1
{{- else -}}0
{{- end -}}
{{- end -}}
{{- define "wsgate.config" -}}{{ include "wsgate.fullname" . | trunc 48 | trimSuffix "-" }}-config{{- end -}}
{{- define "wsgate.fleetsConfig" -}}{{ include "wsgate.fullname" . | trunc 48 | trimSuffix "-" }}-fleets{{- end -}}

{{- define "wsgate.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/name: {{ include "wsgate.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Selector labels of one component: include with (list $ "envoy"). */}}
{{- define "wsgate.selectorLabels" -}}
{{- $root := index . 0 -}}
app.kubernetes.io/name: {{ include "wsgate.name" $root }}
app.kubernetes.io/instance: {{ $root.Release.Name }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end -}}

{{/* The wsgate image: tag defaults to the chart's appVersion. */}}
{{- define "wsgate.image" -}}
{{ include "wsgate.imageRef" (dict "image" .Values.image "global" .Values.global "tag" .Chart.AppVersion) }}
{{- end -}}

{{/*
An image reference, include with (dict "image" .Values.x.image "global"
.Values.global ["tag" default]). global.imageRegistry, else image.registry,
replaces the repository's registry (its first part, when that names a host:
has a '.' or ':', or is localhost); a Docker Hub official image (one part,
as redis) becomes library/<name> as a mirror serves it. With image.digest
the reference is repository@digest, the tag unused.
*/}}
{{- define "wsgate.imageRef" -}}
{{- $img := .image -}}
{{- $repo := $img.repository -}}
{{- $registry := (.global).imageRegistry | default $img.registry -}}
{{- if $registry -}}
{{- $parts := splitList "/" $repo -}}
{{- $first := first $parts -}}
{{- if and (gt (len $parts) 1) (or (contains "." $first) (contains ":" $first) (eq $first "localhost")) -}}
{{- $parts = rest $parts -}}
{{- end -}}
{{- if eq (len $parts) 1 -}}
{{- $parts = prepend $parts "library" -}}
{{- end -}}
{{- $repo = printf "%s/%s" $registry (join "/" $parts) -}}
{{- end -}}
{{- if $img.digest -}}
{{ $repo }}@{{ $img.digest }}
{{- else -}}
{{ $repo }}:{{ $img.tag | default .tag }}
{{- end -}}
{{- end -}}

{{/* Prometheus scrape annotations for the telemetry port. */}}
{{- define "wsgate.scrapeAnnotations" -}}
{{- if .Values.metrics.podAnnotations }}
prometheus.io/scrape: "true"
prometheus.io/port: "9102"
prometheus.io/path: /metrics
{{- end }}
{{- end -}}

{{/* The fleets file's fleet-wide settings, from the tracker values: every
tracker and the scaler must hold the same, one of each for all fleets. */}}
{{- define "wsgate.fleetSettings" -}}
instanceTTL: {{ .Values.tracker.instanceTTL | quote }}
expiredInstances: {{ .Values.tracker.expiredInstances | quote }}
{{- end -}}

{{/* Checksum of the fleet-wide settings: trackers and scaler take them at
start only (a running one refuses a fleets file that changes them), so a
change rolls their pods, as a change of their flags did. A change of the
fleets alone leaves it, and the pods, as they are. */}}
{{- define "wsgate.fleetSettingsChecksum" -}}
{{ include "wsgate.fleetSettings" . | sha256sum }}
{{- end -}}

{{/* Checksum of the rendered ConfigMap: a change rolls the pods that read it. */}}
{{- define "wsgate.configChecksum" -}}
{{ include (print .Template.BasePath "/configmap.yaml") . | sha256sum }}
{{- end -}}

{{/*
Redis connection as WSGATE_REDIS_* environment: the binary reads every flag
from its environment, and the password never shows in the pod's argv.
*/}}
{{- define "wsgate.redisEnv" -}}
{{- $r := .Values.redis -}}
- name: WSGATE_REDIS_ADDR
{{- if $r.bundled.enabled }}
  value: {{ printf "%s:6379" (include "wsgate.redis" .) | quote }}
{{- else }}
  value: {{ join "," $r.addrs | quote }}
{{- end }}
- name: WSGATE_REDIS_PREFIX
  value: {{ $r.prefix | quote }}
{{- if not $r.bundled.enabled }}
{{- if eq $r.mode "sentinel" }}
- name: WSGATE_REDIS_MASTER_NAME
  value: {{ $r.masterName | quote }}
{{- end }}
{{- if eq $r.mode "cluster" }}
- name: WSGATE_REDIS_CLUSTER
  value: "true"
{{- else }}
- name: WSGATE_REDIS_DB
  value: {{ $r.db | quote }}
{{- end }}
{{- with $r.username }}
- name: WSGATE_REDIS_USERNAME
  value: {{ . | quote }}
{{- end }}
{{- if $r.auth.existingSecret }}
- name: WSGATE_REDIS_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ $r.auth.existingSecret }}
      key: {{ $r.auth.passwordKey }}
{{- if $r.auth.sentinelPasswordKey }}
- name: WSGATE_REDIS_SENTINEL_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ $r.auth.existingSecret }}
      key: {{ $r.auth.sentinelPasswordKey }}
{{- end }}
{{- end }}
{{- if $r.tls.enabled }}
- name: WSGATE_REDIS_TLS
  value: "true"
{{- if and $r.tls.existingSecret $r.tls.caKey }}
- name: WSGATE_REDIS_TLS_CA
  value: /etc/wsgate/redis-tls/{{ $r.tls.caKey }}
{{- end }}
{{- if $r.tls.clientCert }}
- name: WSGATE_REDIS_TLS_CERT
  value: /etc/wsgate/redis-tls/tls.crt
- name: WSGATE_REDIS_TLS_KEY
  value: /etc/wsgate/redis-tls/tls.key
{{- end }}
{{- with $r.tls.serverName }}
- name: WSGATE_REDIS_TLS_SERVER_NAME
  value: {{ . | quote }}
{{- end }}
{{- end }}
{{- end }}
{{- end -}}

{{- define "wsgate.redisTLSMount" -}}
{{- if and (not .Values.redis.bundled.enabled) .Values.redis.tls.enabled .Values.redis.tls.existingSecret }}
- name: redis-tls
  mountPath: /etc/wsgate/redis-tls
  readOnly: true
{{- end }}
{{- end -}}

{{- define "wsgate.redisTLSVolume" -}}
{{- if and (not .Values.redis.bundled.enabled) .Values.redis.tls.enabled .Values.redis.tls.existingSecret }}
- name: redis-tls
  secret:
    secretName: {{ .Values.redis.tls.existingSecret }}
{{- end }}
{{- end -}}

{{- define "wsgate.scalerAddress" -}}
{{ include "wsgate.scaler" . }}.{{ .Release.Namespace }}.svc.cluster.local:9000
{{- end -}}

{{- /* Whether the tracker runs as a native sidecar: asked for, and the
cluster (or helm template's --kube-version) is 1.29 or later. */ -}}
{{- define "wsgate.nativeSidecar" -}}
{{- if and .Values.tracker.nativeSidecar (semverCompare ">=1.29.0-0" .Capabilities.KubeVersion.Version) }}true{{ end -}}
{{- end -}}

{{- /* The tracker's --shutdown-timeout: tracker.shutdownTimeout, or the pod's
grace period less 10s, so that it answers the preStop and leaves Redis
before the kubelet kills the pod. */ -}}
{{- define "wsgate.trackerShutdownTimeout" -}}
{{- if .Values.tracker.shutdownTimeout -}}
{{ .Values.tracker.shutdownTimeout }}
{{- else -}}
{{ max 1 (sub (int .Values.envoy.terminationGracePeriodSeconds) 10) }}s
{{- end -}}
{{- end -}}

{{- /* A component's ServiceAccount name: include with (list $ "envoy").
serviceAccount.name, else <fullname>-<component> when the chart creates
it, else the namespace's default. */ -}}
{{- define "wsgate.serviceAccountName" -}}
{{- $root := index . 0 -}}
{{- $sa := (get $root.Values (index . 1)).serviceAccount -}}
{{- if $sa.name -}}
{{ $sa.name }}
{{- else if $sa.create -}}
{{ include (printf "wsgate.%s" (index . 1)) $root }}
{{- else -}}
default
{{- end -}}
{{- end -}}

{{- /* A component's podLabels, refused where they would change the
Deployment's selector: include with (list $ "envoy"). */ -}}
{{- define "wsgate.podLabels" -}}
{{- $root := index . 0 -}}
{{- $comp := index . 1 -}}
{{- $labels := (get $root.Values $comp).podLabels -}}
{{- range $k, $_ := $labels -}}
{{- if or (hasPrefix "app.kubernetes.io/" $k) (hasPrefix "helm.sh/" $k) -}}
{{- fail (printf "%s.podLabels.%s: the chart sets the app.kubernetes.io/* and helm.sh/* labels (the selector's among them); use commonLabels or another key" $comp $k) -}}
{{- end -}}
{{- end -}}
{{- with $labels }}{{ toYaml . }}{{ end -}}
{{- end -}}

{{- /* A container's probes: the chart's handler with the timing of the
values (<component>.probes.{readiness,liveness,startup}); the startup probe
only when its enabled is true. Include with (dict "probes" $values.probes
"indent" n "readiness" handler "liveness" handler), each handler a YAML
string. */ -}}
{{- define "wsgate.probes" -}}
{{- $p := .probes -}}
readinessProbe:
  {{- .readiness | nindent 2 }}
  {{- toYaml $p.readiness | nindent 2 }}
livenessProbe:
  {{- .liveness | nindent 2 }}
  {{- toYaml $p.liveness | nindent 2 }}
{{- if $p.startup.enabled }}
startupProbe:
  {{- .liveness | nindent 2 }}
  {{- toYaml (omit $p.startup "enabled") | nindent 2 }}
{{- end }}
{{- end -}}
