{{/* Chart name, overridable. */}}
{{- define "accessgrant-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Full name: the release name, plus the chart name unless it already contains it. */}}
{{- define "accessgrant-operator.fullname" -}}
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

{{- define "accessgrant-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "accessgrant-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "accessgrant-operator.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "accessgrant-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/component: controller
app.kubernetes.io/part-of: accessgrant-operator
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "accessgrant-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "accessgrant-operator.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "accessgrant-operator.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{- define "accessgrant-operator.webhookTlsSecret" -}}
{{- default (printf "%s-webhook-tls" (include "accessgrant-operator.fullname" .)) .Values.webhook.tlsSecretName }}
{{- end }}

{{/* The operator generates the webhook certificate itself (no mounted Secret, no cert-manager). */}}
{{- define "accessgrant-operator.webhookSelfSigned" -}}
{{- if and .Values.webhook.enabled (not .Values.webhook.tlsSecretName) (not .Values.webhook.certManagerCertificate) (not .Values.webhook.caBundle) -}}
true
{{- end -}}
{{- end }}

{{- define "accessgrant-operator.stampKeySecret" -}}
{{- printf "%s-stamp-key" (include "accessgrant-operator.fullname" .) }}
{{- end }}
