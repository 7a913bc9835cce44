{{/* Chart name, used in the app.kubernetes.io/name label. */}}
{{- define "warm-images.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Resource name prefix. Truncated to 45 characters so that "<prefix>-<component>-<suffix>" stays
within the 63 characters of a DNS label.
*/}}
{{- define "warm-images.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 45 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 45 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 45 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* Name of one component's resources: call with (dict "ctx" $ "component" "watcher"). */}}
{{- define "warm-images.componentName" -}}
{{- printf "%s-%s" (include "warm-images.fullname" .ctx) .component | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "warm-images.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels of every resource; call with (dict "ctx" $ "component" "watcher"). */}}
{{- define "warm-images.labels" -}}
helm.sh/chart: {{ include "warm-images.chart" .ctx }}
{{ include "warm-images.selectorLabels" . }}
app.kubernetes.io/version: {{ .ctx.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .ctx.Release.Service }}
app.kubernetes.io/part-of: warm-images
{{- with .ctx.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Selector labels; stable across upgrades, so never add the version here. */}}
{{- define "warm-images.selectorLabels" -}}
app.kubernetes.io/name: {{ include "warm-images.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
{{- if .component }}
app.kubernetes.io/component: {{ .component }}
{{- end }}
{{- end }}

{{/* Pod template labels: the resource labels plus the component's podLabels. */}}
{{- define "warm-images.podLabels" -}}
{{ include "warm-images.labels" . }}
{{- with .podLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* The application image, by digest when one is given. */}}
{{- define "warm-images.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{- define "warm-images.imagePullSecrets" -}}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{- define "warm-images.priorityClassName" -}}
{{- if .Values.priorityClass.create }}
{{- default (include "warm-images.fullname" .) .Values.priorityClass.name }}
{{- end }}
{{- end }}

{{/* Priority class of a pod: its own, else the chart-wide one, else the created one. */}}
{{- define "warm-images.podPriority" -}}
{{- .own | default .ctx.Values.priorityClassName | default (include "warm-images.priorityClassName" .ctx) }}
{{- end }}

{{/*
Scheduling fields shared by every pod, as YAML (empty when none is set); call with
(dict "ctx" $ "values" .Values.watcher).
*/}}
{{- define "warm-images.scheduling" -}}
{{- $fields := dict }}
{{- with include "warm-images.podPriority" (dict "ctx" .ctx "own" .values.priorityClassName) }}
{{- $_ := set $fields "priorityClassName" . }}
{{- end }}
{{- range $key := list "nodeSelector" "tolerations" "affinity" }}
{{- with get $.values $key }}
{{- $_ := set $fields $key . }}
{{- end }}
{{- end }}
{{- with $fields }}
{{- toYaml . }}
{{- end }}
{{- end }}

{{/*
Returns a Secret value that is stable across upgrades: the explicit value if given, else the
value already stored in the cluster (lookup; empty under `helm template`), else a random one.
Call with (dict "ctx" $ "name" "secret-name" "key" "password" "value" "").
*/}}
{{- define "warm-images.stableSecretValue" -}}
{{- if .value }}
{{- .value }}
{{- else }}
{{- $existing := lookup "v1" "Secret" .ctx.Release.Namespace .name }}
{{- $data := dig "data" (dict) $existing }}
{{- if hasKey $data .key }}
{{- index $data .key | b64dec }}
{{- else }}
{{- randAlphaNum 32 }}
{{- end }}
{{- end }}
{{- end }}

{{/* ---------------------------------------------------------------- NATS */}}

{{- define "warm-images.nats.secretName" -}}
{{- if .Values.nats.enabled }}
{{- default (include "warm-images.componentName" (dict "ctx" . "component" "nats")) .Values.nats.auth.existingSecret }}
{{- else }}
{{- default (include "warm-images.componentName" (dict "ctx" . "component" "nats-client")) .Values.externalNats.existingSecret }}
{{- end }}
{{- end }}

{{/* Whether clients send a NATS user and password. */}}
{{- define "warm-images.nats.auth" -}}
{{- if .Values.nats.enabled }}
{{- if .Values.nats.auth.enabled }}true{{ end }}
{{- else if .Values.externalNats.user }}true
{{- else if and .Values.externalNats.existingSecret (not .Values.externalNats.existingSecretTokenKey) }}true
{{- end }}
{{- end }}

{{/* Whether clients send a NATS token instead (external NATS only). */}}
{{- define "warm-images.nats.token" -}}
{{- if not .Values.nats.enabled }}
{{- if and .Values.externalNats.user (or .Values.externalNats.token .Values.externalNats.existingSecretTokenKey) }}
{{- fail "externalNats: set a user and password or a token, not both" }}
{{- end }}
{{- if .Values.externalNats.existingSecret }}
{{- if .Values.externalNats.existingSecretTokenKey }}true{{ end }}
{{- else if .Values.externalNats.token }}true
{{- end }}
{{- end }}
{{- end }}

{{/* The CA bundle of an external NATS server with TLS, mounted in every app container. */}}
{{- define "warm-images.nats.caDir" -}}
/etc/warm-images/nats-ca
{{- end }}

{{- define "warm-images.nats.ca" -}}
{{- if and (not .Values.nats.enabled) .Values.externalNats.tls.caSecret }}true{{ end }}
{{- end }}

{{- define "warm-images.nats.userKey" -}}
{{- if .Values.nats.enabled }}
{{- ternary .Values.nats.auth.existingSecretUserKey "nats-user" (ne .Values.nats.auth.existingSecret "") }}
{{- else }}
{{- ternary .Values.externalNats.existingSecretUserKey "nats-user" (ne .Values.externalNats.existingSecret "") }}
{{- end }}
{{- end }}

{{- define "warm-images.nats.passwordKey" -}}
{{- if .Values.nats.enabled }}
{{- ternary .Values.nats.auth.existingSecretPasswordKey "nats-password" (ne .Values.nats.auth.existingSecret "") }}
{{- else }}
{{- ternary .Values.externalNats.existingSecretPasswordKey "nats-password" (ne .Values.externalNats.existingSecret "") }}
{{- end }}
{{- end }}

{{- define "warm-images.nats.url" -}}
{{- if .Values.nats.enabled }}
{{- printf "nats://%s:4222" (include "warm-images.componentName" (dict "ctx" . "component" "nats")) }}
{{- else if .Values.externalNats.url }}
{{- .Values.externalNats.url }}
{{- else }}
{{- fail "nats.enabled is false: set externalNats.url to the NATS server to use" }}
{{- end }}
{{- end }}

{{/* NATS credentials as env entries, taken from a Secret. */}}
{{- define "warm-images.nats.env" -}}
{{- if include "warm-images.nats.auth" . }}
- name: WARM_NATS_USER
  valueFrom:
    secretKeyRef:
      name: {{ include "warm-images.nats.secretName" . }}
      key: {{ include "warm-images.nats.userKey" . }}
- name: WARM_NATS_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ include "warm-images.nats.secretName" . }}
      key: {{ include "warm-images.nats.passwordKey" . }}
{{- end }}
{{- if include "warm-images.nats.token" . }}
- name: WARM_NATS_TOKEN
  valueFrom:
    secretKeyRef:
      name: {{ include "warm-images.nats.secretName" . }}
      key: {{ .Values.externalNats.existingSecretTokenKey | default "nats-token" }}
{{- end }}
{{- end }}

{{/* ---------------------------------------------------------------- broker */}}

{{- define "warm-images.redis.name" -}}
{{- include "warm-images.componentName" (dict "ctx" . "component" "redis") }}
{{- end }}

{{- define "warm-images.redis.secretName" -}}
{{- default (include "warm-images.redis.name" .) .Values.redis.auth.existingSecret }}
{{- end }}

{{- define "warm-images.redis.passwordKey" -}}
{{- ternary .Values.redis.auth.existingSecretPasswordKey "redis-password" (ne .Values.redis.auth.existingSecret "") }}
{{- end }}

{{- define "warm-images.redis.host" -}}
{{- printf "%s:6379" (include "warm-images.redis.name" .) }}
{{- end }}

{{/*
WARM_BROKER_URL, never as plain text when it carries a password: from the chart's Redis Secret
(which holds the whole URL), or, with an existing Redis Secret that only holds the password,
assembled by the kubelet from WARM_REDIS_PASSWORD (dependent environment variable).
*/}}
{{- define "warm-images.broker.env" -}}
{{- if .Values.redis.enabled }}
{{- if not .Values.redis.auth.enabled }}
- name: WARM_BROKER_URL
  value: {{ printf "redis://%s/0" (include "warm-images.redis.host" .) | quote }}
{{- else if .Values.redis.auth.existingSecret }}
- name: WARM_REDIS_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ .Values.redis.auth.existingSecret }}
      key: {{ .Values.redis.auth.existingSecretPasswordKey }}
- name: WARM_BROKER_URL
  value: {{ printf "redis://:$(WARM_REDIS_PASSWORD)@%s/0" (include "warm-images.redis.host" .) | quote }}
{{- else }}
- name: WARM_BROKER_URL
  valueFrom:
    secretKeyRef:
      name: {{ include "warm-images.redis.name" . }}
      key: broker-url
{{- end }}
{{- else if or .Values.externalBroker.url .Values.externalBroker.existingSecret }}
- name: WARM_BROKER_URL
  valueFrom:
    secretKeyRef:
      name: {{ .Values.externalBroker.existingSecret | default (include "warm-images.componentName" (dict "ctx" . "component" "broker")) }}
      key: {{ ternary .Values.externalBroker.existingSecretKey "broker-url" (ne .Values.externalBroker.existingSecret "") }}
{{- else }}
{{- fail "redis.enabled is false: set externalBroker.url or externalBroker.existingSecret" }}
{{- end }}
{{- end }}

{{/* ---------------------------------------------------------------- app containers */}}

{{/* Environment shared by every container running the application image. */}}
{{- define "warm-images.app.env" -}}
{{- $namespace := dict "name" "WARM_POD_NAMESPACE" "valueFrom" (dict "fieldRef" (dict "fieldPath" "metadata.namespace")) }}
{{- $parts := list (list $namespace | toYaml) (include "warm-images.broker.env" . | trim) (include "warm-images.nats.env" . | trim) }}
{{- $parts | compact | join "\n" }}
{{- end }}

{{- define "warm-images.app.envFrom" -}}
envFrom:
  - configMapRef:
      name: {{ include "warm-images.componentName" (dict "ctx" . "component" "config") }}
{{- end }}

{{/* A writable /tmp for containers with a read-only root filesystem. */}}
{{- define "warm-images.tmp.volume" -}}
- name: tmp
  emptyDir:
    sizeLimit: 64Mi
{{- end }}

{{- define "warm-images.tmp.mount" -}}
- name: tmp
  mountPath: /tmp
{{- end }}

{{/* Volumes of every pod running the application image: /tmp, and the NATS CA when set. */}}
{{- define "warm-images.app.volumes" -}}
{{ include "warm-images.tmp.volume" . }}
{{- if include "warm-images.nats.ca" . }}
- name: nats-ca
  secret:
    secretName: {{ .Values.externalNats.tls.caSecret }}
    items:
      - key: {{ .Values.externalNats.tls.caSecretKey }}
        path: ca.crt
{{- end }}
{{- end }}

{{- define "warm-images.app.mounts" -}}
{{ include "warm-images.tmp.mount" . }}
{{- if include "warm-images.nats.ca" . }}
- name: nats-ca
  mountPath: {{ include "warm-images.nats.caDir" . }}
  readOnly: true
{{- end }}
{{- end }}

{{/* Roll the pods when the shared configuration changes. */}}
{{- define "warm-images.configChecksum" -}}
checksum/config: {{ include (print .Template.BasePath "/configmap.yaml") . | sha256sum }}
{{- end }}

{{/* ---------------------------------------------------------------- runtime */}}

{{/*
The worker's container runtime as YAML {type, socket, api}. "auto" asks the cluster for the first
node's runtime (Helm lookup, install time); without a cluster it falls back to containerd.
k3s and RKE2 report "containerd://…-k3s…" and use their own socket path.
*/}}
{{- define "warm-images.runtime" -}}
{{- $type := .Values.worker.runtime.type }}
{{- if eq $type "auto" }}
{{- $type = "containerd" }}
{{- $nodes := lookup "v1" "Node" "" "" }}
{{- with (dig "items" (list) $nodes) }}
{{- $info := (first .).status.nodeInfo }}
{{- $version := $info.containerRuntimeVersion | default "" }}
{{- if hasPrefix "cri-o://" $version }}
{{- $type = "crio" }}
{{- else if hasPrefix "docker://" $version }}
{{- $type = "docker" }}
{{- else if or (contains "k3s" $version) (contains "k3s" $info.kubeletVersion) (contains "rke2" $info.kubeletVersion) }}
{{- $type = "k3s" }}
{{- end }}
{{- end }}
{{- end }}
{{- $sockets := dict "containerd" "/run/containerd/containerd.sock" "k3s" "/run/k3s/containerd/containerd.sock" "crio" "/var/run/crio/crio.sock" "docker" "/var/run/docker.sock" }}
{{- /* Where the runtime keeps its images: the directory the disk budget's statvfs needs. */}}
{{- $imageFs := dict "containerd" "/var/lib/containerd" "k3s" "/var/lib/rancher/k3s/agent/containerd" "crio" "/var/lib/containers/storage" "docker" "/var/lib/docker" }}
type: {{ $type }}
socket: {{ .Values.worker.runtime.socketPath | default (get $sockets $type) }}
api: {{ ternary "docker" "cri" (eq $type "docker") }}
imageFs: {{ .Values.worker.diskBudget.imageFsPath | default (get $imageFs $type) }}
{{- end }}

{{/*
Settings that cannot work together, refused at install time rather than found in a log later.
With a Redis broker a message not acknowledged within the visibility timeout is handed out
again, so a pull (or a retry's delay) longer than it would run twice. An external broker given
through an existing Secret is not known here and is not checked.
*/}}
{{- define "warm-images.validate" -}}
{{- $redis := or .Values.redis.enabled (hasPrefix "redis" .Values.externalBroker.url) }}
{{- $longest := maxf .Values.worker.pull.timeout .Values.worker.pull.retryBackoffMax }}
{{- if and $redis (le (.Values.config.brokerVisibilityTimeout | float64) $longest) }}
{{- fail (printf "config.brokerVisibilityTimeout (%v) must exceed worker.pull.timeout and worker.pull.retryBackoffMax (%v): Redis would deliver a pull still running a second time" (.Values.config.brokerVisibilityTimeout | toJson) ($longest | toJson)) }}
{{- end }}
{{- end }}
