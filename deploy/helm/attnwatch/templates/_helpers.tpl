{{- define "attnwatch.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "attnwatch.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "attnwatch.selectorLabels" -}}
app.kubernetes.io/name: {{ include "attnwatch.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "attnwatch.labels" -}}
{{ include "attnwatch.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{/* Memory request in MiB: base + series x bytes per series. */}}
{{- define "attnwatch.memoryMiB" -}}
{{- $s := .Values.sizing -}}
{{- add (int $s.baseMemoryMiB) (div (add (mul (int64 $s.seriesPerReplica) (int64 $s.bytesPerSeries)) 1048575) 1048576) -}}
{{- end -}}

{{/* Where the API token is mounted (apiToken.mountAs=file). */}}
{{- define "attnwatch.tokenDir" -}}
/run/secrets/attnwatch
{{- end -}}
{{- define "attnwatch.tokenFile" -}}
{{ include "attnwatch.tokenDir" . }}/token
{{- end -}}

{{/* The variable that holds the API token (apiToken.mountAs=env). */}}
{{- define "attnwatch.tokenEnv" -}}
ATTNWATCH_API_TOKEN
{{- end -}}

{{- define "attnwatch.checks" -}}
{{- if not (has .Values.workload.kind (list "Deployment" "StatefulSet")) -}}
{{- fail (printf "workload.kind must be Deployment or StatefulSet, not %q" .Values.workload.kind) -}}
{{- end -}}
{{- if gt (int .Values.replicaCount) (int .Values.kafka.partitions) -}}
{{- fail (printf "replicaCount (%d) is above kafka.partitions (%d): the extra replicas would get no partition and sit idle" (int .Values.replicaCount) (int .Values.kafka.partitions)) -}}
{{- end -}}
{{- with .Values.apiToken -}}
{{- if .existingSecret -}}
{{- if not (has .mountAs (list "file" "env")) -}}
{{- fail (printf "apiToken.mountAs must be file or env, not %q" .mountAs) -}}
{{- end -}}
{{- if not .key -}}
{{- fail "apiToken.key must name the Secret's key that holds the token" -}}
{{- end -}}
{{- if and .protectMetrics $.Values.prometheusAnnotations -}}
{{- fail "apiToken.protectMetrics: scrape annotations cannot send the token; set prometheusAnnotations=false and scrape through serviceMonitor.enabled (it sends the token) or a scrape config with authorization" -}}
{{- end -}}
{{- else if .protectMetrics -}}
{{- fail "apiToken.protectMetrics needs a token: set apiToken.existingSecret" -}}
{{- end -}}
{{- end -}}
{{- if and .Values.keda.enabled (gt (int .Values.keda.maxReplicaCount) (int .Values.kafka.partitions)) -}}
{{- fail (printf "keda.maxReplicaCount (%d) is above kafka.partitions (%d)" (int .Values.keda.maxReplicaCount) (int .Values.kafka.partitions)) -}}
{{- end -}}
{{- end -}}
