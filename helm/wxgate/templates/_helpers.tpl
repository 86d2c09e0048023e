{{/* Names and labels. */}}

{{- define "wxgate.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The full name: <release>-<chart>, or the release name if it already contains the chart name. */}}
{{- define "wxgate.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "wxgate.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The recommended labels (app.kubernetes.io/*), on every resource. */}}
{{- define "wxgate.labels" -}}
helm.sh/chart: {{ include "wxgate.chart" . }}
{{ include "wxgate.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | quote }}
app.kubernetes.io/component: gateway
app.kubernetes.io/part-of: wxgate
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/* Labels that select the gateway's pods: they never change across upgrades. */}}
{{- define "wxgate.selectorLabels" -}}
app.kubernetes.io/name: {{ include "wxgate.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "wxgate.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "wxgate.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "wxgate.image" -}}
{{- $tag := .Values.image.tag | default .Chart.AppVersion }}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository $tag }}
{{- end }}
{{- end }}

{{/* Secrets. */}}

{{- define "wxgate.secretName" -}}
{{- .Values.secrets.existingSecret | default (include "wxgate.fullname" .) }}
{{- end }}

{{/* The file a Secret key is mounted as: (list $ "key-name"). */}}
{{- define "wxgate.secretFile" -}}
{{- $root := index . 0 }}
{{- printf "%s/%s" (trimSuffix "/" $root.Values.secrets.mountPath) (index . 1) }}
{{- end }}

{{/* Whether an app fetches its own token, hence needs its AppSecret. */}}
{{- define "wxgate.appNeedsSecret" -}}
{{- if ne (.tokenMode | default "stable") "external" }}true{{ end }}
{{- end }}

{{/* Shutdown and replica arithmetic. */}}

{{/* The drain delay the server will use: the value, or the server's default (5 s). */}}
{{- define "wxgate.drainDelaySecs" -}}
{{- if kindIs "invalid" .Values.server.drainDelaySecs }}5{{ else }}{{ int .Values.server.drainDelaySecs }}{{ end }}
{{- end }}

{{/* SIGTERM -> drain -> in-flight requests finish -> exit, plus a margin for the process to stop. */}}
{{- define "wxgate.terminationGracePeriodSeconds" -}}
{{- if kindIs "invalid" .Values.terminationGracePeriodSeconds }}
{{- add (include "wxgate.drainDelaySecs" . | int) (int .Values.server.shutdownTimeoutSecs) 5 }}
{{- else }}
{{- int .Values.terminationGracePeriodSeconds }}
{{- end }}
{{- end }}

{{/* The most pods that can run at once: the top of the HPA's range (or replicaCount) plus the
rollout's surge (an integer, or a percentage rounded up as Kubernetes does). */}}
{{- define "wxgate.maxPods" -}}
{{- $pods := int .Values.replicaCount }}
{{- if .Values.autoscaling.enabled }}
{{- $pods = int .Values.autoscaling.maxReplicas }}
{{- end }}
{{- $surge := .Values.rollingUpdate.maxSurge }}
{{- if kindIs "string" $surge }}
{{- $percent := trimSuffix "%" $surge | int }}
{{- $surge = div (add (mul $pods $percent) 99) 100 }}
{{- end }}
{{- add $pods (int $surge) }}
{{- end }}

{{- define "wxgate.expectedReplicas" -}}
{{- if kindIs "invalid" .Values.store.expectedReplicas }}
{{- include "wxgate.maxPods" . }}
{{- else }}
{{- int .Values.store.expectedReplicas }}
{{- end }}
{{- end }}

{{/* Rules across values that the schema cannot express; fails the render with the reason. */}}
{{- define "wxgate.validate" -}}
{{- if eq .Values.store.kind "memory" }}
{{- if or .Values.autoscaling.enabled (gt (int .Values.replicaCount) 1) }}
{{- fail "store.kind=memory keeps the limits, token and idempotency keys in each pod: use it with replicaCount=1 and autoscaling.enabled=false, or use store.kind=redis" }}
{{- end }}
{{- end }}
{{- if .Values.autoscaling.enabled }}
{{- if gt (int .Values.autoscaling.minReplicas) (int .Values.autoscaling.maxReplicas) }}
{{- fail "autoscaling.minReplicas must not exceed autoscaling.maxReplicas" }}
{{- end }}
{{- end }}
{{- $pdb := .Values.podDisruptionBudget }}
{{- if and $pdb.enabled (kindIs "invalid" $pdb.maxUnavailable) (kindIs "invalid" $pdb.minAvailable) }}
{{- fail "podDisruptionBudget: set maxUnavailable or minAvailable" }}
{{- end }}
{{- range $name, $key := .Values.apiKeys }}
{{- range $key.apps }}
{{- if and (ne . "*") (not (hasKey $.Values.apps .)) }}
{{- fail (printf "apiKeys.%s.apps: unknown app %q" $name .) }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}
