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

{{/*
Namespace of the watcher's copies of pull secrets (WARM_PULL_SECRET_NAMESPACE): a namespace of
their own, so that the worker's `get` on Secrets there reaches nothing else; never the release
namespace, which holds the release's own passwords.
*/}}
{{- define "warm-images.pullSecretNamespace" -}}
{{- $namespace := .Values.worker.credentials.mirrorNamespace | default (printf "%s-pull-secrets" .Release.Namespace | trunc 63 | trimSuffix "-") }}
{{- if eq $namespace .Release.Namespace }}
{{- fail "worker.credentials.mirrorNamespace must not be the release namespace: the worker may read every Secret of the mirror namespace, and the release's own passwords live in the release namespace" }}
{{- end }}
{{- $namespace }}
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

{{/* A bundled server's image (call with .Values.nats.image or .Values.redis.image): the tag
for the reader, the digest for the runtime when one is given. */}}
{{- define "warm-images.serverImage" -}}
{{- if .digest }}
{{- printf "%s:%s@%s" .repository .tag .digest }}
{{- else }}
{{- printf "%s:%s" .repository .tag }}
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
Whether the chart is rendered against a cluster (helm install/upgrade, Flux's helm-controller,
--dry-run=server): listing the release namespace's Secrets, which Helm itself needs, answers a
list there and nothing under `helm template` (Argo CD, CI), where lookup is empty.
*/}}
{{- define "warm-images.clusterReachable" -}}
{{- if lookup "v1" "Secret" .Release.Namespace "" }}true{{ end }}
{{- end }}

{{/*
A password that is the same on every render: the value given, else the one already stored in
the cluster (lookup), else, on a first install against a cluster, a random one kept from then on.
Under `helm template` there is nothing to read a generated password back from, so each render
would make a new one while running pods keep the old: fail instead, naming what to set.
Call with (dict "ctx" $ "name" "secret-name" "key" "password" "value" "" "path" "redis.auth.passwords.worker" "existing" "redis.auth.existingSecret").
*/}}
{{- define "warm-images.stableSecretValue" -}}
{{- if .value }}
{{- .value }}
{{- else }}
{{- $existing := lookup "v1" "Secret" .ctx.Release.Namespace .name }}
{{- $data := dig "data" (dict) $existing }}
{{- if hasKey $data .key }}
{{- index $data .key | b64dec }}
{{- else if include "warm-images.clusterReachable" .ctx }}
{{- randAlphaNum 32 }}
{{- else }}
{{- fail (printf "%s is empty and no cluster is at hand to keep a generated one (helm template, Argo CD): set %s or %s, or install with helm install/upgrade (chart/README.md, \"Passwords and GitOps\")" .path .path .existing) }}
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

{{/* Whether clients send a user and password to an external NATS. */}}
{{- define "warm-images.nats.auth" -}}
{{- if .Values.nats.enabled }}
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
{{- if .Values.nats.enabled }}
{{- if .Values.nats.tls.enabled }}true{{ end }}
{{- else if .Values.externalNats.tls.caSecret }}true
{{- end }}
{{- end }}

{{/*
TLS of a bundled server (call with its values, .Values.nats or .Values.redis): the certificate
Secret, of type kubernetes.io/tls with ca.crt as cert-manager writes it, is required.
*/}}
{{- define "warm-images.tls" -}}
{{- if and .enabled .tls.enabled }}
{{- if not .tls.secretName }}
{{- fail "a bundled server's tls.enabled needs tls.secretName: a Secret with tls.crt, tls.key and ca.crt (e.g. a cert-manager Certificate for the server's Service name)" }}
{{- end }}true
{{- end }}
{{- end }}

{{- define "warm-images.redis.caDir" -}}
/etc/warm-images/redis-ca
{{- end }}

{{/* Keys of the external NATS user and password in their Secret. */}}
{{- define "warm-images.nats.userKey" -}}
{{- ternary .Values.externalNats.existingSecretUserKey "nats-user" (ne .Values.externalNats.existingSecret "") }}
{{- end }}

{{- define "warm-images.nats.passwordKey" -}}
{{- ternary .Values.externalNats.existingSecretPasswordKey "nats-password" (ne .Values.externalNats.existingSecret "") }}
{{- end }}

{{- define "warm-images.nats.url" -}}
{{- if .Values.nats.enabled }}
{{- printf "%s://%s:4222" (ternary "tls" "nats" (eq (include "warm-images.tls" .Values.nats) "true")) (include "warm-images.componentName" (dict "ctx" . "component" "nats")) }}
{{- else if .Values.externalNats.url }}
{{- .Values.externalNats.url }}
{{- else }}
{{- fail "nats.enabled is false: set externalNats.url to the NATS server to use" }}
{{- end }}
{{- end }}

{{/*
The parts that hold credentials of their own on the bundled NATS and Redis: each runs as its own
user with only the rights it needs (chart/README.md, "Security model"). Flower and the helm test
run as "client".
*/}}
{{- define "warm-images.roles" -}}
watcher worker beat client
{{- end }}

{{/* The NATS or Redis user of one role. */}}
{{- define "warm-images.roleUser" -}}
{{- printf "warm-%s" . }}
{{- end }}

{{/*
NATS credentials of one role as env entries; call with (dict "ctx" $ "role" "worker"). On the
bundled NATS the watcher holds the account key and signs every part's user JWT, the others ask
it for theirs with their projected ServiceAccount token; an external NATS takes the single user
or token of externalNats.
*/}}
{{- define "warm-images.nats.env" -}}
{{- $ctx := .ctx }}
{{- if and (include "warm-images.nats.operator" $ctx) (eq .role "watcher") }}
- name: WARM_NATS_ACCOUNT_KEY
  valueFrom:
    secretKeyRef:
      name: {{ include "warm-images.nats.secretName" $ctx }}
      key: account-key
- name: WARM_NATS_ROLES
  value: {{ include "warm-images.nats.roles" $ctx | quote }}
- name: WARM_NATS_CREDENTIALS_PORT
  value: {{ include "warm-images.nats.exchangePort" $ctx | quote }}
{{- else if include "warm-images.nats.operator" $ctx }}
- name: WARM_NATS_CREDENTIALS_URL
  value: {{ include "warm-images.nats.exchangeUrl" $ctx | quote }}
- name: WARM_NATS_IDENTITY_TOKEN_FILE
  value: {{ printf "%s/token" (include "warm-images.nats.identityDir" $ctx) | quote }}
{{- else if include "warm-images.nats.auth" $ctx }}
- name: WARM_NATS_USER
  valueFrom:
    secretKeyRef:
      name: {{ include "warm-images.nats.secretName" $ctx }}
      key: {{ include "warm-images.nats.userKey" $ctx }}
- name: WARM_NATS_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ include "warm-images.nats.secretName" $ctx }}
      key: {{ include "warm-images.nats.passwordKey" $ctx }}
{{- end }}
{{- if include "warm-images.nats.token" $ctx }}
- name: WARM_NATS_TOKEN
  valueFrom:
    secretKeyRef:
      name: {{ include "warm-images.nats.secretName" $ctx }}
      key: {{ $ctx.Values.externalNats.existingSecretTokenKey | default "nats-token" }}
{{- end }}
{{- end }}

{{/*
Whether the bundled NATS runs in operator mode: every part has a NATS user JWT of its own,
signed by the watcher (tasks/natsauth.py, watcher/exchange.py).
*/}}
{{- define "warm-images.nats.operator" -}}
{{- if and .Values.nats.enabled .Values.nats.auth.enabled }}true{{ end }}
{{- end }}

{{/* The watcher's credentials exchange: its port, Service and URL. */}}
{{- define "warm-images.nats.exchangePort" -}}
8090
{{- end }}

{{- define "warm-images.nats.exchangeUrl" -}}
{{- printf "http://%s:%s/nats/credentials" (include "warm-images.componentName" (dict "ctx" . "component" "watcher")) (include "warm-images.nats.exchangePort" .) }}
{{- end }}

{{/* Where the projected ServiceAccount token the parts exchange is mounted. */}}
{{- define "warm-images.nats.identityDir" -}}
/var/run/secrets/warm-images
{{- end }}

{{/*
WARM_NATS_ROLES: the ServiceAccounts whose pods the watcher hands NATS credentials to, and the
role of each; the watcher's own is not among them (only it writes the catalog).
*/}}
{{- define "warm-images.nats.roles" -}}
{{- $roles := dict }}
{{- range $component, $role := dict "worker" "worker" "beat" "beat" "flower" "client" "test" "client" }}
{{- $_ := set $roles (include "warm-images.componentName" (dict "ctx" $ "component" $component)) $role }}
{{- end }}
{{- if not .Values.flower.enabled }}
{{- $_ := unset $roles (include "warm-images.componentName" (dict "ctx" . "component" "flower")) }}
{{- end }}
{{- toJson $roles }}
{{- end }}

{{/*
The projected token a part (not the watcher) presents to the exchange: audience warm-images,
so it opens nothing else, bound to the pod, rotated by the kubelet. Volume and mount.
*/}}
{{- define "warm-images.nats.identity.volume" -}}
{{- if include "warm-images.nats.operator" . }}
- name: nats-identity
  projected:
    sources:
      - serviceAccountToken:
          audience: warm-images
          expirationSeconds: 3600
          path: token
{{- end }}
{{- end }}

{{- define "warm-images.nats.identity.mount" -}}
{{- if include "warm-images.nats.operator" . }}
- name: nats-identity
  mountPath: {{ include "warm-images.nats.identityDir" . }}
  readOnly: true
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

{{/* A bundled Redis URL for user and password (call with (dict "ctx" $ "user" … "password" …)):
rediss:// with the CA to verify the server when redis.tls is on. */}}
{{- define "warm-images.redis.url" -}}
{{- if include "warm-images.tls" .ctx.Values.redis }}
{{- printf "rediss://%s:%s@%s/0?ssl_cert_reqs=required&ssl_ca_certs=%s/ca.crt" .user .password (include "warm-images.redis.host" .ctx) (include "warm-images.redis.caDir" .ctx) }}
{{- else }}
{{- printf "redis://%s:%s@%s/0" .user .password (include "warm-images.redis.host" .ctx) }}
{{- end }}
{{- end }}

{{/*
WARM_BROKER_URL of one role, never as plain text when it carries a password: from the chart's
Redis Secret (which holds each role's whole URL), or, with an existing Redis Secret that only
holds the passwords, assembled by the kubelet from WARM_REDIS_PASSWORD (dependent environment
variable). Call with (dict "ctx" $ "role" "worker").
*/}}
{{- define "warm-images.broker.env" -}}
{{- $ctx := .ctx }}
{{- $user := include "warm-images.roleUser" .role }}
{{- if $ctx.Values.redis.enabled }}
{{- if not $ctx.Values.redis.auth.enabled }}
- name: WARM_BROKER_URL
  value: {{ include "warm-images.redis.url" (dict "ctx" $ctx "user" "" "password" "") | replace "://:@" "://" | quote }}
{{- else if $ctx.Values.redis.auth.existingSecret }}
- name: WARM_REDIS_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ $ctx.Values.redis.auth.existingSecret }}
      key: {{ printf "%s-password" .role }}
- name: WARM_BROKER_URL
  value: {{ include "warm-images.redis.url" (dict "ctx" $ctx "user" $user "password" "$(WARM_REDIS_PASSWORD)") | quote }}
{{- else }}
- name: WARM_BROKER_URL
  valueFrom:
    secretKeyRef:
      name: {{ include "warm-images.redis.name" $ctx }}
      key: {{ printf "%s-broker-url" .role }}
{{- end }}
{{- else if or $ctx.Values.externalBroker.url $ctx.Values.externalBroker.existingSecret }}
- name: WARM_BROKER_URL
  valueFrom:
    secretKeyRef:
      name: {{ $ctx.Values.externalBroker.existingSecret | default (include "warm-images.componentName" (dict "ctx" $ctx "component" "broker")) }}
      key: {{ ternary $ctx.Values.externalBroker.existingSecretKey "broker-url" (ne $ctx.Values.externalBroker.existingSecret "") }}
{{- else }}
{{- fail "redis.enabled is false: set externalBroker.url or externalBroker.existingSecret" }}
{{- end }}
{{- end }}

{{/*
The rights of the application users on the bundled Redis (ACL rules after the user's password).
Every role moves Celery messages: lists, hashes, sorted sets, pub/sub on any key; none may run
what could wipe or reconfigure the broker or scan it (@dangerous: FLUSHALL, FLUSHDB, CONFIG,
KEYS, SHUTDOWN, DEBUG, MONITOR, …). The default user, held by the Redis pod alone for its probes,
keeps every right.
*/}}
{{- define "warm-images.redis.aclRules" -}}
~* &* +@all -@dangerous
{{- end }}

{{/* ---------------------------------------------------------------- app containers */}}

{{/*
Environment shared by every container running the application image, with the credentials of
its role; call with (dict "ctx" $ "role" "worker").
*/}}
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

{{/* Volumes of every pod running the application image: /tmp, and the CAs of NATS and Redis
when they speak TLS. */}}
{{- define "warm-images.app.volumes" -}}
{{ include "warm-images.tmp.volume" . }}
{{- if include "warm-images.nats.ca" . }}
- name: nats-ca
  secret:
    secretName: {{ ternary .Values.nats.tls.secretName .Values.externalNats.tls.caSecret .Values.nats.enabled }}
    items:
      - key: {{ ternary "ca.crt" .Values.externalNats.tls.caSecretKey .Values.nats.enabled }}
        path: ca.crt
{{- end }}
{{- if include "warm-images.tls" .Values.redis }}
- name: redis-ca
  secret:
    secretName: {{ .Values.redis.tls.secretName }}
    items:
      - key: ca.crt
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
{{- if include "warm-images.tls" .Values.redis }}
- name: redis-ca
  mountPath: {{ include "warm-images.redis.caDir" . }}
  readOnly: true
{{- end }}
{{- end }}

{{/*
Roll the pods when the shared configuration or the chart's credentials change: a client keeping
an old password after the server took a new one would be locked out.
*/}}
{{- define "warm-images.configChecksum" -}}
checksum/config: {{ include (print .Template.BasePath "/configmap.yaml") . | sha256sum }}
checksum/credentials: {{ print (include (print .Template.BasePath "/nats/secret.yaml") .) (include (print .Template.BasePath "/redis/secret.yaml") .) | sha256sum }}
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
imageFsProbe: {{ .Values.worker.diskBudget.probePath | default (printf "%s/warm-images-fs-probe" (.Values.worker.diskBudget.imageFsPath | default (get $imageFs $type) | trimSuffix "/")) }}
{{- end }}

{{/* Where the worker sees the empty probe directory of the image filesystem. */}}
{{- define "warm-images.imageFsProbeMount" -}}
/var/lib/warm-images/image-fs
{{- end }}

{{/*
Settings that cannot work together, refused at install time rather than found in a log later.
With a Redis broker a message not acknowledged within the visibility timeout is handed out
again, so a pull (or a retry's delay) longer than it would run twice. An external broker given
through an existing Secret is not known here and is not checked.
*/}}
{{- define "warm-images.validate" -}}
{{- if not .Values.networkPolicy.enabled }}
{{- range $server := list "nats" "redis" }}
{{- $values := get $.Values $server }}
{{- if and $values.enabled (not $values.auth.enabled) }}
{{- fail (printf "%s.auth.enabled=false needs networkPolicy.enabled=true: without either, every pod in the cluster could use the bundled %s" $server (ternary "NATS" "Redis" (eq $server "nats"))) }}
{{- end }}
{{- end }}
{{- end }}
{{- $redis := or .Values.redis.enabled (hasPrefix "redis" .Values.externalBroker.url) }}
{{- $longest := maxf .Values.worker.pull.timeout .Values.worker.pull.retryBackoffMax }}
{{- if and $redis (le (.Values.config.brokerVisibilityTimeout | float64) $longest) }}
{{- fail (printf "config.brokerVisibilityTimeout (%v) must exceed worker.pull.timeout and worker.pull.retryBackoffMax (%v): Redis would deliver a pull still running a second time" (.Values.config.brokerVisibilityTimeout | toJson) ($longest | toJson)) }}
{{- end }}
{{- end }}
