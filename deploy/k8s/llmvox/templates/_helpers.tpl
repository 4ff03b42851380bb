{{/* Names, labels and shared pieces of the LLMVoX chart. */}}

{{- define "llmvox.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "llmvox.fullname" -}}
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

{{/* Name of a component's objects: <fullname>-<component>. Call with (list $ "asr"). */}}
{{- define "llmvox.componentName" -}}
{{- $root := index . 0 -}}
{{- printf "%s-%s" (include "llmvox.fullname" $root | trunc 50 | trimSuffix "-") (index . 1) -}}
{{- end -}}

{{- define "llmvox.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "llmvox.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: llmvox
{{- end -}}

{{/* Selector labels of a component. Call with (list $ "asr"). */}}
{{- define "llmvox.selectorLabels" -}}
{{- $root := index . 0 -}}
app.kubernetes.io/name: {{ include "llmvox.name" $root }}
app.kubernetes.io/instance: {{ $root.Release.Name }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end -}}

{{- define "llmvox.componentLabels" -}}
{{ include "llmvox.labels" (index . 0) }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end -}}

{{- define "llmvox.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "llmvox.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* Image of a component. Call with (list $ .Values.asr.image). */}}
{{- define "llmvox.image" -}}
{{- $root := index . 0 -}}
{{- $image := index . 1 -}}
{{- $repository := $image.repository -}}
{{- if $root.Values.image.registry -}}
{{- $repository = printf "%s/%s" (trimSuffix "/" $root.Values.image.registry) $repository -}}
{{- end -}}
{{- printf "%s:%s" $repository (default $root.Chart.AppVersion $root.Values.image.tag) -}}
{{- end -}}

{{/* The Secret holding redis-password, hf-token and api-keys. */}}
{{- define "llmvox.secretName" -}}
{{- default (include "llmvox.fullname" .) .Values.secrets.existingSecret -}}
{{- end -}}

{{- define "llmvox.redisHost" -}}
{{- if .Values.redis.enabled -}}
{{- include "llmvox.componentName" (list . "redis") -}}
{{- else -}}
{{- required "externalRedis.host is required when redis.enabled is false" .Values.externalRedis.host -}}
{{- end -}}
{{- end -}}

{{- define "llmvox.redisPort" -}}
{{- if .Values.redis.enabled -}}6379{{- else -}}{{ .Values.externalRedis.port }}{{- end -}}
{{- end -}}

{{- define "llmvox.redisDb" -}}
{{- if .Values.redis.enabled -}}0{{- else -}}{{ .Values.externalRedis.db }}{{- end -}}
{{- end -}}

{{- define "llmvox.redisTls" -}}
{{- if and (not .Values.redis.enabled) .Values.externalRedis.tls -}}true{{- else -}}false{{- end -}}
{{- end -}}

{{/* The services' Redis URL; $(REDIS_PASSWORD) is expanded by Kubernetes from the env entry
     defined before it (llmvox.redisEnv), so the password never sits in a ConfigMap. */}}
{{- define "llmvox.redisUrl" -}}
{{- $scheme := ternary "rediss" "redis" (eq (include "llmvox.redisTls" .) "true") -}}
{{- printf "%s://:$(REDIS_PASSWORD)@%s:%s/%s" $scheme (include "llmvox.redisHost" .) (include "llmvox.redisPort" .) (include "llmvox.redisDb" .) -}}
{{- end -}}

{{/* env entries: REDIS_PASSWORD then the URL under the given variable name.
     Call with (list $ "LLMVOX_TTS_REDIS_URL"). */}}
{{- define "llmvox.redisEnv" -}}
{{- $root := index . 0 -}}
- name: REDIS_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ include "llmvox.secretName" $root }}
      key: redis-password
- name: {{ index . 1 }}
  value: {{ include "llmvox.redisUrl" $root | quote }}
{{- end -}}

{{- define "llmvox.hfTokenEnv" -}}
- name: HF_TOKEN
  valueFrom:
    secretKeyRef:
      name: {{ include "llmvox.secretName" . }}
      key: hf-token
      optional: true
{{- end -}}

{{/* A settings map as env entries of a ConfigMap: LLMVOX_<PREFIX>_<NAME>: "value". Numbers go
     through toJson so that large integers are not written in exponent form.
     Call with (list "ASR" .Values.asr.settings). */}}
{{- define "llmvox.settingsData" -}}
{{- $prefix := index . 0 -}}
{{- range $name, $value := index . 1 }}
{{ printf "LLMVOX_%s_%s" $prefix (upper $name) }}: {{ if kindIs "string" $value }}{{ $value | quote }}{{ else }}{{ $value | toJson | quote }}{{ end }}
{{- end }}
{{- end -}}

{{/* Scheduling of a component's pod: its own nodeSelector/tolerations, plus the gpu ones when it
     asks for GPUs. Call with (list $ .Values.asr). */}}
{{- define "llmvox.scheduling" -}}
{{- $root := index . 0 -}}
{{- $c := index . 1 -}}
{{- $gpu := and (hasKey $c "gpu") (gt (int $c.gpu) 0) -}}
{{- $nodeSelector := $c.nodeSelector | default dict -}}
{{- $tolerations := $c.tolerations | default list -}}
{{- if $gpu -}}
{{- $nodeSelector = merge (deepCopy $nodeSelector) ($root.Values.gpu.nodeSelector | default dict) -}}
{{- $tolerations = concat $tolerations ($root.Values.gpu.tolerations | default list) -}}
{{- if $root.Values.gpu.runtimeClassName }}
runtimeClassName: {{ $root.Values.gpu.runtimeClassName }}
{{- end }}
{{- end }}
{{- with $nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $c.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{/* resources of a component, with its GPUs added as limits. Call with (list $ .Values.asr). */}}
{{- define "llmvox.resources" -}}
{{- $root := index . 0 -}}
{{- $c := index . 1 -}}
{{- $resources := deepCopy ($c.resources | default dict) -}}
{{- if and (hasKey $c "gpu") (gt (int $c.gpu) 0) -}}
{{- $limits := $resources.limits | default dict -}}
{{- $_ := set $limits $root.Values.gpu.resourceName (int $c.gpu) -}}
{{- $_ := set $resources "limits" $limits -}}
{{- end -}}
{{- toYaml $resources -}}
{{- end -}}

{{/* Volumes every LLMVoX pod mounts: /tmp, ~/.cache (the root filesystem is read-only) and,
     for model-loading pods, the model cache. Call with (list $ true|false). */}}
{{- define "llmvox.volumes" -}}
{{- $root := index . 0 -}}
- name: tmp
  emptyDir: {}
- name: home-cache
  emptyDir: {}
{{- if index . 1 }}
- name: models
{{- if $root.Values.modelCache.existingClaim }}
  persistentVolumeClaim:
    claimName: {{ $root.Values.modelCache.existingClaim }}
{{- else }}
  emptyDir:
    sizeLimit: {{ $root.Values.modelCache.sizeLimit }}
{{- end }}
{{- end }}
{{- end -}}

{{- define "llmvox.volumeMounts" -}}
- name: tmp
  mountPath: /tmp
- name: home-cache
  mountPath: /home/llmvox/.cache
{{- if . }}
- name: models
  mountPath: /models
{{- end }}
{{- end -}}

{{/* Default topology spread of a component over nodes, unless the values give their own. */}}
{{- define "llmvox.topologySpread" -}}
{{- $root := index . 0 -}}
{{- $c := index . 1 -}}
{{- $component := index . 2 -}}
topologySpreadConstraints:
{{- if $c.topologySpreadConstraints }}
  {{- toYaml $c.topologySpreadConstraints | nindent 2 }}
{{- else }}
  - maxSkew: 1
    topologyKey: kubernetes.io/hostname
    whenUnsatisfiable: ScheduleAnyway
    labelSelector:
      matchLabels:
        {{- include "llmvox.selectorLabels" (list $root $component) | nindent 8 }}
{{- end }}
{{- end -}}

{{/* Metrics ports (fixed: the images' defaults, and what Prometheus scrapes). */}}
{{- define "llmvox.metricsPort.asr" -}}9464{{- end -}}
{{- define "llmvox.metricsPort.llm" -}}9465{{- end -}}
{{- define "llmvox.metricsPort.tts" -}}9101{{- end -}}
