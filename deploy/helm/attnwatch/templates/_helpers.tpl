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

{{/* Kafka security: whether SASL / TLS is on, and where the pod finds the
     CA and the password file (Secrets mounted read-only). */}}
{{- define "attnwatch.kafkaSasl" -}}
{{- if hasPrefix "SASL_" .Values.kafka.security.protocol }}true{{ end -}}
{{- end -}}
{{- define "attnwatch.kafkaTls" -}}
{{- if has .Values.kafka.security.protocol (list "SSL" "SASL_SSL") }}true{{ end -}}
{{- end -}}
{{- define "attnwatch.kafkaCaDir" -}}/etc/attnwatch-kafka/ca{{- end -}}
{{- define "attnwatch.kafkaSaslDir" -}}/etc/attnwatch-kafka/sasl{{- end -}}
{{- define "attnwatch.kafkaPasswordEnv" -}}KAFKA_SASL_PASSWORD{{- end -}}

{{/* librdkafka properties that hold secrets: refused in kafka.options (the
     service refuses them in [kafka.options] too). */}}
{{- define "attnwatch.secretProperties" -}}
{{- list "sasl.password" "ssl.key.password" "ssl.key.pem" "ssl.keystore.password" "sasl.oauthbearer.client.secret" "sasl.oauthbearer.assertion.private.key.passphrase" "sasl.oauthbearer.assertion.private.key.pem" | toJson -}}
{{- end -}}

{{/* [kafka.options] as a dict: what kafka.security sets, then kafka.options. */}}
{{- define "attnwatch.kafkaOptions" -}}
{{- $s := .Values.kafka.security -}}
{{- $o := dict -}}
{{- if ne $s.protocol "PLAINTEXT" -}}
{{- $_ := set $o "security.protocol" $s.protocol -}}
{{- end -}}
{{- if include "attnwatch.kafkaSasl" . -}}
{{- $_ := set $o "sasl.mechanism" $s.sasl.mechanism -}}
{{- $_ := set $o "sasl.username" $s.sasl.username -}}
{{- end -}}
{{- if and (include "attnwatch.kafkaTls" .) $s.caSecret.name -}}
{{- $_ := set $o "ssl.ca.location" (printf "%s/%s" (include "attnwatch.kafkaCaDir" .) $s.caSecret.key) -}}
{{- end -}}
{{- range $k, $v := .Values.kafka.options -}}
{{- $_ := set $o $k (toString $v) -}}
{{- end -}}
{{- toJson $o -}}
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
{{- $s := .Values.kafka.security -}}
{{- if not (has $s.protocol (list "PLAINTEXT" "SSL" "SASL_PLAINTEXT" "SASL_SSL")) -}}
{{- fail (printf "kafka.security.protocol must be PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL, not %q" $s.protocol) -}}
{{- end -}}
{{- if include "attnwatch.kafkaSasl" . -}}
{{- if not $s.sasl.passwordSecret.name -}}
{{- fail (printf "kafka.security.protocol=%s needs kafka.security.sasl.passwordSecret.name: the Secret that holds the password (it is never written into the config)" $s.protocol) -}}
{{- end -}}
{{- if not (has $s.sasl.mechanism (list "PLAIN" "SCRAM-SHA-256" "SCRAM-SHA-512")) -}}
{{- fail (printf "kafka.security.sasl.mechanism must be PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512, not %q" $s.sasl.mechanism) -}}
{{- end -}}
{{- if not (has $s.sasl.passwordFrom (list "file" "env")) -}}
{{- fail (printf "kafka.security.sasl.passwordFrom must be file or env, not %q" $s.sasl.passwordFrom) -}}
{{- end -}}
{{- end -}}
{{- range $k, $_ := .Values.kafka.options -}}
{{- if has (lower $k) (include "attnwatch.secretProperties" $ | fromJsonArray) -}}
{{- fail (printf "kafka.options.%s is a secret and must not be written into the config: put it in a Secret (kafka.security.sasl.passwordSecret for the SASL password)" $k) -}}
{{- end -}}
{{- end -}}
{{- if regexMatch "(?m)^\\s*\\[\\s*\"?kafka\\b" (.Values.extraConfig | default "") -}}
{{- fail "extraConfig must not hold [kafka] or its subtables: use the kafka.* values (kafka.options, kafka.security)" -}}
{{- end -}}
{{- if and .Values.keda.enabled (ne $s.protocol "PLAINTEXT") (not .Values.keda.authenticationRef) -}}
{{- fail (printf "keda.enabled with kafka.security.protocol=%s needs keda.authenticationRef: a TriggerAuthentication that gives KEDA's Kafka client its credentials" $s.protocol) -}}
{{- end -}}
{{- end -}}
