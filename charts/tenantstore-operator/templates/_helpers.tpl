{{/* Names and labels shared by every template. */}}

{{- define "tenantstore.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "tenantstore.fullname" -}}
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

{{- define "tenantstore.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "tenantstore.selectorLabels" -}}
app.kubernetes.io/name: {{ include "tenantstore.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "tenantstore.labels" -}}
helm.sh/chart: {{ include "tenantstore.chart" . }}
{{ include "tenantstore.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: tenantstore
{{- end }}

{{- define "tenantstore.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "tenantstore.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "tenantstore.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/* The embedded (evaluation) Postgres: its object names and the admin Secret it writes. */}}
{{- define "tenantstore.postgres.fullname" -}}
{{- printf "%s-postgres" (include "tenantstore.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "tenantstore.postgres.adminSecret" -}}
{{- printf "%s-admin" (include "tenantstore.postgres.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Cross-field rules the JSON schema cannot word clearly: fail with a message that says what to change. */}}
{{- define "tenantstore.validate" -}}
{{- if and (gt (int .Values.replicaCount) 1) (not .Values.leaderElection.enabled) (not (gt (int .Values.shards) 0)) }}
{{- fail "replicaCount > 1 needs leaderElection.enabled=true (active/standby) or shards > 0 (active replicas that split the TenantStores): two active replicas would otherwise reconcile the same TenantStores" }}
{{- end }}
{{- with .Values.leaderElection }}
{{- if not (and (gt (float64 .leaseDuration) (float64 .renewDeadline)) (gt (float64 .renewDeadline) (float64 .retryPeriod))) }}
{{- fail "leaderElection needs leaseDuration > renewDeadline > retryPeriod" }}
{{- end }}
{{- end }}
{{- if eq (int .Values.health.port) (int .Values.metrics.port) }}
{{- fail "health.port and metrics.port must differ" }}
{{- end }}
{{- end }}

{{/* TenantStores, their credential Secrets and Events: cluster-wide or per watched namespace. */}}
{{- define "tenantstore.tenantRules" -}}
- apiGroups: [tenancy.dev]
  resources: [tenantstores]
  verbs: [get, list, watch, patch]
- apiGroups: [tenancy.dev]
  resources: [tenantstores/status]
  verbs: [patch]
- apiGroups: [tenancy.dev]
  resources: [tenantstoreexports]
  verbs: [get, list, watch, create, patch]
- apiGroups: [tenancy.dev]
  resources: [tenantstoreexports/status]
  verbs: [patch]
- apiGroups: [""]
  resources: [secrets]
  verbs: [get, list, watch, create, update, patch, delete]
- apiGroups: [""]
  resources: [events]
  verbs: [create]
{{- end }}
