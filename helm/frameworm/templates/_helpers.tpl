{{/* Names and labels. */}}
{{- define "frameworm.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "frameworm.fullname" -}}
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

{{/* fullname and a suffix (list . "suffix" [max length]): the fullname is cut first, so the
     whole stays within what Kubernetes allows (63 for most names, 52 for a CronJob's). */}}
{{- define "frameworm.suffixed" -}}
{{- $root := index . 0 }}
{{- $suffix := index . 1 }}
{{- $max := 63 }}
{{- if gt (len .) 2 }}{{ $max = index . 2 }}{{ end }}
{{- $base := include "frameworm.fullname" $root | trunc (int (sub $max (add1 (len $suffix)))) | trimSuffix "-" }}
{{- printf "%s-%s" $base $suffix }}
{{- end }}

{{- define "frameworm.selectorLabels" -}}
app.kubernetes.io/name: {{ include "frameworm.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "frameworm.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "frameworm.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "frameworm.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "frameworm.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "frameworm.secretName" -}}
{{- default (include "frameworm.fullname" .) .Values.secrets.existingSecret }}
{{- end }}

{{- define "frameworm.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/* Drain timing: the one place the numbers are combined. */}}
{{- define "frameworm.drain.mode" -}}
{{- if not (has .Values.drain.mode (list "app" "preStop")) }}
{{- fail (printf "drain.mode must be app or preStop, not %q" .Values.drain.mode) }}
{{- end }}
{{- .Values.drain.mode }}
{{- end }}

{{/* FRAMEWORM_DRAIN_DELAY_S: the app drains only when no preStop sleep does it. */}}
{{- define "frameworm.drain.appDelaySeconds" -}}
{{- if eq (include "frameworm.drain.mode" .) "app" }}{{ .Values.drain.delaySeconds | int }}{{ else }}0{{ end }}
{{- end }}

{{- define "frameworm.drain.preStopSeconds" -}}
{{- if eq (include "frameworm.drain.mode" .) "preStop" }}{{ .Values.drain.delaySeconds | int }}{{ else }}0{{ end }}
{{- end }}

{{/* SIGKILL comes after: drain delay (app or preStop) + in-flight deadline + flush + margin. */}}
{{- define "frameworm.terminationGracePeriodSeconds" -}}
{{- $d := .Values.drain }}
{{- add ($d.delaySeconds | int) ($d.shutdownTimeoutSeconds | int) ($d.flushSeconds | int) ($d.marginSeconds | int) }}
{{- end }}

{{/* The registry path the server reads. */}}
{{- define "frameworm.registryLocation" -}}
{{- $source := .Values.registry.source }}
{{- if not (has $source (list "image" "pvc" "s3Pull" "s3")) }}
{{- fail (printf "registry.source must be image, pvc, s3Pull or s3, not %q" $source) }}
{{- end }}
{{- if eq $source "pvc" }}
{{- include "frameworm.registry.checkPvc" . }}
{{- end }}
{{- if eq $source "s3" }}
{{- required "registry.s3Uri is required with registry.source=s3" .Values.registry.s3Uri }}
{{- else }}
{{- .Values.registry.mountPath }}
{{- end }}
{{- end }}

{{/* "true" when the registry claim can be mounted on one node only (no ReadWriteMany). */}}
{{- define "frameworm.registry.singleNode" -}}
{{- if not (has "ReadWriteMany" .Values.registry.pvc.accessModes) }}true{{ end }}
{{- end }}

{{/* A single-node claim (ReadWriteOnce) cannot hold pods on several nodes: a second replica, an
     HPA or an Argo canary lands elsewhere and hangs in ContainerCreating (Multi-Attach error).
     ReadWriteOncePod even refuses a second pod on the same node, which every rolling update and
     the backup CronJob need. Refuse those at render time rather than leave a stuck rollout. */}}
{{- define "frameworm.registry.checkPvc" -}}
{{- $modes := .Values.registry.pvc.accessModes }}
{{- if has "ReadWriteOncePod" $modes }}
{{- fail "registry.pvc.accessModes ReadWriteOncePod cannot work: a rolling update and the backup CronJob mount the claim from a second pod. Use ReadWriteMany (or ReadWriteOnce with one replica)" }}
{{- end }}
{{- if include "frameworm.registry.singleNode" . }}
{{- $why := list }}
{{- if gt (int .Values.replicaCount) 1 }}{{ $why = append $why (printf "replicaCount=%d" (int .Values.replicaCount)) }}{{ end }}
{{- if .Values.autoscaling.enabled }}{{ $why = append $why "autoscaling.enabled" }}{{ end }}
{{- if .Values.rollout.enabled }}{{ $why = append $why "rollout.enabled (the canary runs beside the stable pods)" }}{{ end }}
{{- if $why }}
{{- fail (printf "registry.source=pvc with accessModes %v mounts on one node only, but %s puts pods on several nodes (Multi-Attach error). Use registry.pvc.accessModes=[ReadWriteMany] on a storage class that supports it, or replicaCount=1 without autoscaling and rollout" $modes (join ", " $why)) }}
{{- end }}
{{- end }}
{{- end }}

{{/* .Values.affinity, plus, for a registry claim that mounts on one node only, a required
     affinity of the server pods to each other's node. A rolling update starts the new pod
     before it stops the old one (maxUnavailable 0); scheduled on another node, it would wait
     for the claim for ever (Multi-Attach error) and the rollout would never finish. The first
     pod has no pod to join, and the scheduler lets a pod that matches its own term through. */}}
{{- define "frameworm.affinity" -}}
{{- $affinity := deepCopy .Values.affinity }}
{{- if and (eq .Values.registry.source "pvc") (include "frameworm.registry.singleNode" .) }}
{{- $term := dict "labelSelector" (dict "matchLabels" (include "frameworm.selectorLabels" . | fromYaml)) "topologyKey" "kubernetes.io/hostname" }}
{{- $podAffinity := get $affinity "podAffinity" | default dict }}
{{- $required := get $podAffinity "requiredDuringSchedulingIgnoredDuringExecution" | default list }}
{{- $_ := set $podAffinity "requiredDuringSchedulingIgnoredDuringExecution" (append $required $term) }}
{{- $_ := set $affinity "podAffinity" $podAffinity }}
{{- end }}
{{- toYaml $affinity }}
{{- end }}

{{/* TCP port of registry.s3EndpointUrl for the egress policy: its explicit port, else 80 for
     http and 443 for https. Empty when no endpoint is set. */}}
{{- define "frameworm.s3EndpointPort" -}}
{{- with .Values.registry.s3EndpointUrl }}
{{- $url := urlParse . }}
{{- $port := regexFind "[0-9]+$" (regexFind ":[0-9]+$" $url.host) }}
{{- if $port }}{{ $port }}
{{- else if eq $url.scheme "http" }}80
{{- else if eq $url.scheme "https" }}443
{{- else }}{{ fail (printf "registry.s3EndpointUrl must be an http:// or https:// URL, not %q" .) }}
{{- end }}
{{- end }}
{{- end }}

{{/* "true" when the Secret carries an optional key: a chart-made value, or listed in
     secrets.existingSecretKeys. The chart-made Secret always has a metrics-token (given, or
     generated like the pepper). Called with (list $ "key"). */}}
{{- define "frameworm.hasSecretKey" -}}
{{- $root := index . 0 }}
{{- $key := index . 1 }}
{{- $s := $root.Values.secrets }}
{{- if $s.existingSecret }}
{{- if has $key $s.existingSecretKeys }}true{{ end }}
{{- else }}
{{- $fields := dict "metrics-token" true "sentry-dsn" $s.sentryDsn "aws-credentials" $s.awsAccessKeyId "api-keys.json" $s.apiKeysFile "redis-url" $s.redisUrl }}
{{- if get $fields $key }}true{{ end }}
{{- end }}
{{- end }}

{{- define "frameworm.secretsDir" -}}/var/run/secrets/frameworm{{- end }}

{{/* The chart-made Secret's data (base64 values, as YAML). Values not given are taken from the
     Secret already in the cluster (lookup), so they survive upgrades, else generated. It is
     computed once per render and kept in .Values, so the Secret and the pod template's
     checksum/secret (which restarts the pods when a value changes) see the same random values. */}}
{{- define "frameworm.secretData" -}}
{{- if not (hasKey .Values "_frameworm_secretData") }}
{{- $name := include "frameworm.fullname" . }}
{{- $previous := (lookup "v1" "Secret" .Release.Namespace $name).data | default dict }}
{{- $s := .Values.secrets }}
{{- $data := dict }}
{{- $_ := set $data "api-key-pepper" ($s.apiKeyPepper | b64enc | default (get $previous "api-key-pepper") | default (randAlphaNum 64 | b64enc)) }}
{{- $_ := set $data "bootstrap-api-key" ($s.bootstrapApiKey | b64enc | default (get $previous "bootstrap-api-key") | default (printf "fw_%s" (randAlphaNum 40) | b64enc)) }}
{{- $_ := set $data "metrics-token" ($s.metricsToken | b64enc | default (get $previous "metrics-token") | default (randAlphaNum 48 | b64enc)) }}
{{- if .Values.redis.enabled }}
{{- $_ := set $data "redis-url" (required "secrets.redisUrl is required with redis.enabled=true and the chart-made Secret (the pods read FRAMEWORM_REDIS_URL_FILE from its redis-url key); or set secrets.existingSecret to a Secret with a redis-url key" $s.redisUrl | b64enc) }}
{{- else if $s.redisUrl }}
{{- $_ := set $data "redis-url" ($s.redisUrl | b64enc) }}
{{- end }}
{{- with $s.sentryDsn }}
{{- $_ := set $data "sentry-dsn" (. | b64enc) }}
{{- end }}
{{- with $s.apiKeysFile }}
{{- $_ := set $data "api-keys.json" (. | b64enc) }}
{{- end }}
{{- if $s.awsAccessKeyId }}
{{- $_ := set $data "aws-credentials" (printf "[default]\naws_access_key_id = %s\naws_secret_access_key = %s\n" $s.awsAccessKeyId (required "secrets.awsSecretAccessKey is required with secrets.awsAccessKeyId" $s.awsSecretAccessKey) | b64enc) }}
{{- end }}
{{- $_ := set .Values "_frameworm_secretData" (toYaml $data) }}
{{- end }}
{{- get .Values "_frameworm_secretData" }}
{{- end }}

{{/* What the app refuses to start with in production (app/config.py, _production_is_safe)
     fails the render instead, with every reason at once: else the pods crash-loop. Secrets
     left empty are generated long enough. */}}
{{- define "frameworm.checkProductionSafe" -}}
{{- if eq (toString .Values.settings.env) "production" }}
{{- $s := .Values.secrets }}
{{- $problems := list }}
{{- range $name := ternary (list) (list "apiKeyPepper" "bootstrapApiKey" "metricsToken") (not (empty $s.existingSecret)) }}
{{- /* As the app reads a mounted secret: stripped, in characters (len counts bytes). */}}
{{- $value := get $s $name | default "" | toString | trim }}
{{- if and $value (lt (len (splitList "" $value)) 32) }}
{{- $problems = append $problems (printf "secrets.%s is shorter than 32 characters (use a longer one, or leave it empty for a generated one)" $name) }}
{{- end }}
{{- end }}
{{- /* As pydantic reads a boolean setting: these spellings, any case. */}}
{{- if has (toString .Values.settings.authEnabled | lower) (list "false" "0" "off" "no" "f" "n") }}
{{- $problems = append $problems "settings.authEnabled is false" }}
{{- end }}
{{- if has (toString .Values.settings.enableDocs | lower) (list "true" "1" "on" "yes" "t" "y") }}
{{- $problems = append $problems "settings.enableDocs is true" }}
{{- end }}
{{- /* Several workers each counting rate limits in memory: a key gets its limit per worker. */}}
{{- $workers := .Values.settings.workers | default 1 | int }}
{{- $limited := not (has (toString .Values.settings.rateLimitEnabled | lower) (list "false" "0" "off" "no" "f" "n")) }}
{{- $storage := .Values.settings.rateLimitStorage | default "" | toString | trimPrefix "async+" }}
{{- $shared := or (and .Values.redis.enabled .Values.redis.rateLimits) (regexMatch "^(redis|rediss|redis\\+unix)://" $storage) }}
{{- if and (gt $workers 1) $limited (not $shared) }}
{{- $problems = append $problems (printf "settings.workers=%d count rate limits each in its own memory (set redis.enabled with redis.rateLimits, or settings.rateLimitEnabled=false, or one worker)" $workers) }}
{{- end }}
{{- if $problems }}
{{- fail (printf "the app refuses to start with these values in production (settings.env=production): %s" (join "; " $problems)) }}
{{- end }}
{{- end }}
{{- end }}

{{/* With an Ingress routing / to the Service, /metrics is reachable from outside the cluster:
     it must want a token. The chart-made Secret always has one; an existingSecret must list
     metrics-token in existingSecretKeys, unless ingress.allowPublicMetrics says otherwise. */}}
{{- define "frameworm.checkPublicMetrics" -}}
{{- $i := .Values.ingress }}
{{- if and $i.enabled (not $i.allowPublicMetrics) (not (include "frameworm.hasSecretKey" (list . "metrics-token"))) }}
{{- fail (printf "ingress.enabled exposes /metrics without a token: secrets.existingSecret %q must carry a metrics-token key listed in secrets.existingSecretKeys (or set ingress.allowPublicMetrics=true to serve /metrics publicly)" .Values.secrets.existingSecret) }}
{{- end }}
{{- end }}

{{/* With settings.metricsEnabled=false the app serves no /metrics: every scrape would fail, the
     target-down and absent alerts fire for good, and every canary measurement is Inconclusive. */}}
{{- define "frameworm.checkMetricsServed" -}}
{{- $m := .Values.monitoring }}
{{- /* Every spelling of false the app reads (pydantic's: 0, off, f, false, n, no, any case). */}}
{{- $off := has (lower (toString .Values.settings.metricsEnabled)) (list "0" "off" "f" "false" "n" "no") }}
{{- if and $off (or $m.serviceMonitor.enabled $m.prometheusRule.enabled .Values.rollout.enabled) }}
{{- fail "settings.metricsEnabled=false serves no /metrics, which monitoring.serviceMonitor, monitoring.prometheusRule and rollout.enabled (its analysis) all read: turn those off too, or keep metrics on" }}
{{- end }}
{{- end }}

{{/* A request admitted just before the listener closes must be able to finish within the
     shutdown timeout, else the drain sheds it with 503. */}}
{{- define "frameworm.checkShutdownCoversRequests" -}}
{{- $requestMs := .Values.settings.requestTimeoutMs | default 10000 | int }}
{{- $shutdownMs := mul (.Values.drain.shutdownTimeoutSeconds | int) 1000 }}
{{- if lt $shutdownMs $requestMs }}
{{- fail (printf "drain.shutdownTimeoutSeconds=%d is shorter than settings.requestTimeoutMs=%d: a request admitted just before the listener closes would be cut off by the drain. Set drain.shutdownTimeoutSeconds >= %d" (.Values.drain.shutdownTimeoutSeconds | int) $requestMs (div (add $requestMs 999) 1000)) }}
{{- end }}
{{- end }}

{{/* Settings for the ConfigMap: values.settings in FRAMEWORM_* form, then what the chart derives. */}}
{{- define "frameworm.environment" -}}
{{- $env := dict }}
{{- range $key, $value := .Values.settings }}
{{- if not (or (eq (toString $value) "") (eq (toString $value) "<nil>")) }}
{{- /* YAML numbers are float64 to Helm, and toString writes 4000000 as "4e+06", which an
       integer setting refuses: whole numbers are written as integers. */}}
{{- $text := toString $value }}
{{- if and (kindIs "float64" $value) (eq (floor $value) $value) }}
{{- $text = int64 $value | toString }}
{{- end }}
{{- $_ := set $env (printf "FRAMEWORM_%s" (snakecase $key | upper)) $text }}
{{- end }}
{{- end }}
{{- $secrets := include "frameworm.secretsDir" . }}
{{- include "frameworm.checkPublicMetrics" . }}
{{- include "frameworm.checkMetricsServed" . }}
{{- include "frameworm.checkShutdownCoversRequests" . }}
{{- include "frameworm.checkProductionSafe" . }}
{{- if not (hasKey $env "FRAMEWORM_HOST") }}
{{- $_ := set $env "FRAMEWORM_HOST" "0.0.0.0" }}
{{- end }}
{{- /* ingress-nginx keeps upstream connections 60 s: a shorter server keep-alive makes it reuse
       connections the server has just closed (sporadic 502s). */}}
{{- if and .Values.ingress.enabled (not (hasKey $env "FRAMEWORM_KEEP_ALIVE_S")) }}
{{- $_ := set $env "FRAMEWORM_KEEP_ALIVE_S" "75" }}
{{- end }}
{{- $_ := set $env "FRAMEWORM_PORT" (toString .Values.port) }}
{{- $_ := set $env "FRAMEWORM_REGISTRY" (include "frameworm.registryLocation" .) }}
{{- $_ := set $env "FRAMEWORM_DEVICE" (ternary "cuda" .Values.device .Values.gpu.enabled) }}
{{- $_ := set $env "FRAMEWORM_DRAIN_DELAY_S" (include "frameworm.drain.appDelaySeconds" .) }}
{{- $_ := set $env "FRAMEWORM_SHUTDOWN_TIMEOUT_S" (toString .Values.drain.shutdownTimeoutSeconds) }}
{{- $_ := set $env "FRAMEWORM_FORWARDED_ALLOW_IPS" (ternary .Values.ingress.controllerCIDR "127.0.0.1" .Values.ingress.enabled) }}
{{- if not (has .Values.auth.keyStore (list "hashed-file" "redis")) }}
{{- fail (printf "auth.keyStore must be hashed-file or redis, not %q" .Values.auth.keyStore) }}
{{- end }}
{{- if and (eq .Values.auth.keyStore "redis") (not .Values.redis.enabled) }}
{{- fail "auth.keyStore=redis needs redis.enabled=true" }}
{{- end }}
{{- $_ := set $env "FRAMEWORM_API_KEY_STORE" .Values.auth.keyStore }}
{{- $_ := set $env "FRAMEWORM_API_KEYS_FILE" (printf "%s/api-keys.json" $secrets) }}
{{- $_ := set $env "FRAMEWORM_API_KEY_PEPPER_FILE" (printf "%s/api-key-pepper" $secrets) }}
{{- $_ := set $env "FRAMEWORM_BOOTSTRAP_API_KEY_FILE" (printf "%s/bootstrap-api-key" $secrets) }}
{{- if .Values.redis.enabled }}
{{- $_ := set $env "FRAMEWORM_REDIS_URL_FILE" (printf "%s/redis-url" $secrets) }}
{{- if .Values.redis.rateLimits }}
{{- /* rate_limit_storage is one of the app's SECRET_FIELDS: the URL (and its password) is read
       from the mounted file, never put in an environment variable. */}}
{{- $_ := set $env "FRAMEWORM_RATE_LIMIT_STORAGE_FILE" (printf "%s/redis-url" $secrets) }}
{{- end }}
{{- end }}
{{- if include "frameworm.hasSecretKey" (list . "metrics-token") }}
{{- $_ := set $env "FRAMEWORM_METRICS_TOKEN_FILE" (printf "%s/metrics-token" $secrets) }}
{{- end }}
{{- if include "frameworm.hasSecretKey" (list . "sentry-dsn") }}
{{- $_ := set $env "FRAMEWORM_SENTRY_DSN_FILE" (printf "%s/sentry-dsn" $secrets) }}
{{- end }}
{{- if include "frameworm.hasSecretKey" (list . "aws-credentials") }}
{{- $_ := set $env "AWS_SHARED_CREDENTIALS_FILE" (printf "%s/aws-credentials" $secrets) }}
{{- end }}
{{- if .Values.registry.s3EndpointUrl }}
{{- $_ := set $env "AWS_ENDPOINT_URL" .Values.registry.s3EndpointUrl }}
{{- end }}
{{- if .Values.registry.s3Region }}
{{- $_ := set $env "AWS_DEFAULT_REGION" .Values.registry.s3Region }}
{{- end }}
{{- toYaml $env }}
{{- end }}

{{/* Restricted Pod Security, shared by every pod the chart makes. */}}
{{- define "frameworm.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ .Values.securityContext.runAsUser }}
runAsGroup: {{ .Values.securityContext.runAsGroup }}
fsGroup: {{ .Values.securityContext.fsGroup }}
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{- define "frameworm.containerSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ .Values.securityContext.runAsUser }}
runAsGroup: {{ .Values.securityContext.runAsGroup }}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
privileged: false
capabilities:
  drop: [ALL]
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{- define "frameworm.secretVolume" -}}
- name: secrets
  secret:
    secretName: {{ include "frameworm.secretName" . }}
    defaultMode: 0440
{{- end }}

{{- define "frameworm.tmpVolume" -}}
- name: tmp
  emptyDir:
    {{- with .Values.tmp.medium }}
    medium: {{ . }}
    {{- end }}
    sizeLimit: {{ .Values.tmp.sizeLimit }}
{{- end }}

{{/* "true" when a container reads the registry from S3 (registry pull, or direct reads) and
     so caches downloaded objects under XDG_CACHE_HOME. */}}
{{- define "frameworm.s3Cache" -}}
{{- if has .Values.registry.source (list "s3Pull" "s3") }}true{{ end }}
{{- end }}

{{- define "frameworm.cacheDir" -}}/var/cache/frameworm{{- end }}

{{/* The S3 download cache: a volume of its own, not the small /tmp one. */}}
{{- define "frameworm.cacheVolume" -}}
- name: cache
  emptyDir:
    sizeLimit: {{ .Values.registry.emptyDirSizeLimit }}
{{- end }}

{{- define "frameworm.registryVolume" -}}
{{- if eq .Values.registry.source "pvc" }}
- name: registry
  persistentVolumeClaim:
    claimName: {{ default (include "frameworm.suffixed" (list . "registry")) .Values.registry.pvc.existingClaim }}
{{- else if has .Values.registry.source (list "image" "s3Pull") }}
- name: registry
  emptyDir:
    sizeLimit: {{ .Values.registry.emptyDirSizeLimit }}
{{- end }}
{{- end }}

{{/* The pod template of the Deployment and of the Rollout. */}}
{{- define "frameworm.podTemplate" -}}
metadata:
  labels:
    {{- include "frameworm.selectorLabels" . | nindent 4 }}
    {{- with .Values.podLabels }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  annotations:
    checksum/config: {{ include "frameworm.environment" . | sha256sum }}
    {{- if not .Values.secrets.existingSecret }}
    # The app reads its secrets at start only: a changed value must roll the pods.
    checksum/secret: {{ include "frameworm.secretData" . | sha256sum }}
    {{- end }}
    {{- with .Values.podAnnotations }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
spec:
  serviceAccountName: {{ include "frameworm.serviceAccountName" . }}
  automountServiceAccountToken: false
  # No Service's host and port as FRAMEWORM_* variables (a Service named after the release
  # would set FRAMEWORM_PORT=tcp://...): the settings read that prefix.
  enableServiceLinks: false
  terminationGracePeriodSeconds: {{ include "frameworm.terminationGracePeriodSeconds" . }}
  securityContext:
    {{- include "frameworm.podSecurityContext" . | nindent 4 }}
  {{- with .Values.imagePullSecrets }}
  imagePullSecrets:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .Values.priorityClassName }}
  priorityClassName: {{ . }}
  {{- end }}
  {{- $source := .Values.registry.source }}
  {{- if has $source (list "image" "s3Pull") }}
  initContainers:
    - name: registry-{{ ternary "seed" "pull" (eq $source "image") }}
      image: {{ include "frameworm.image" . }}
      imagePullPolicy: {{ .Values.image.pullPolicy }}
      {{- if eq $source "image" }}
      # The image's registry (seeded at build time) is copied into the writable volume. No -a:
      # UID 10001 without capabilities may not set the times or mode of the root-owned emptyDir.
      command: ["cp", "-R", "/var/lib/frameworm/registry/.", "/mnt/registry/"]
      {{- else }}
      command: ["frameworm"]
      {{- /* The served model alone, with its stage aliases: another model's damaged files in
             the bucket must not keep this pod from starting. */}}
      args: ["registry", "pull", {{ .Values.settings.model | quote }}, "--stages", "--from", {{ required "registry.s3Uri is required with registry.source=s3Pull" .Values.registry.s3Uri | quote }}]
      envFrom:
        - configMapRef:
            name: {{ include "frameworm.fullname" . }}
      env:
        - name: FRAMEWORM_REGISTRY
          value: /mnt/registry
        - name: XDG_CACHE_HOME
          value: {{ include "frameworm.cacheDir" . }}
      {{- end }}
      securityContext:
        {{- include "frameworm.containerSecurityContext" . | nindent 8 }}
      resources:
        {{- toYaml .Values.registry.initResources | nindent 8 }}
      volumeMounts:
        - {name: registry, mountPath: /mnt/registry}
        - {name: tmp, mountPath: /tmp}
        - {name: secrets, mountPath: {{ include "frameworm.secretsDir" . }}, readOnly: true}
        {{- if include "frameworm.s3Cache" . }}
        - {name: cache, mountPath: {{ include "frameworm.cacheDir" . }}}
        {{- end }}
  {{- end }}
  containers:
    - name: frameworm
      image: {{ include "frameworm.image" . }}
      imagePullPolicy: {{ .Values.image.pullPolicy }}
      args: ["serve"]
      ports:
        - name: http
          containerPort: {{ .Values.port }}
          protocol: TCP
      envFrom:
        - configMapRef:
            name: {{ include "frameworm.fullname" . }}
      {{- if eq $source "s3" }}
      env:
        # S3 objects are cached here (models/s3.py), not in the small /tmp volume.
        - name: XDG_CACHE_HOME
          value: {{ include "frameworm.cacheDir" . }}
      {{- end }}
      {{- if eq (include "frameworm.drain.mode" .) "preStop" }}
      lifecycle:
        preStop:
          exec:
            # Keeps serving while the endpoints controller removes the pod; SIGTERM comes after.
            command: ["sleep", "{{ include "frameworm.drain.preStopSeconds" . }}"]
      {{- end }}
      startupProbe:
        httpGet: {path: /healthz, port: http}
        {{- toYaml .Values.probes.startup | nindent 8 }}
      livenessProbe:
        httpGet: {path: /healthz, port: http}
        {{- toYaml .Values.probes.liveness | nindent 8 }}
      readinessProbe:
        httpGet: {path: /readyz, port: http}
        {{- toYaml .Values.probes.readiness | nindent 8 }}
      securityContext:
        {{- include "frameworm.containerSecurityContext" . | nindent 8 }}
      resources:
        {{- $resources := deepCopy .Values.resources }}
        {{- if .Values.gpu.enabled }}
        {{- $limits := default dict $resources.limits }}
        {{- $_ := set $limits "nvidia.com/gpu" (.Values.gpu.count | int) }}
        {{- $_ := set $resources "limits" $limits }}
        {{- end }}
        {{- toYaml $resources | nindent 8 }}
      volumeMounts:
        - {name: tmp, mountPath: /tmp}
        - {name: secrets, mountPath: {{ include "frameworm.secretsDir" . }}, readOnly: true}
        {{- if ne $source "s3" }}
        - {name: registry, mountPath: {{ .Values.registry.mountPath }}}
        {{- else }}
        - {name: cache, mountPath: {{ include "frameworm.cacheDir" . }}}
        {{- end }}
  volumes:
    {{- include "frameworm.tmpVolume" . | nindent 4 }}
    {{- include "frameworm.secretVolume" . | nindent 4 }}
    {{- include "frameworm.registryVolume" . | nindent 4 }}
    {{- if include "frameworm.s3Cache" . }}
    {{- include "frameworm.cacheVolume" . | nindent 4 }}
    {{- end }}
  {{- $nodeSelector := merge (deepCopy .Values.nodeSelector) (ternary .Values.gpu.nodeSelector dict .Values.gpu.enabled) }}
  {{- with $nodeSelector }}
  nodeSelector:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- $tolerations := concat .Values.tolerations (ternary .Values.gpu.tolerations list .Values.gpu.enabled) }}
  {{- with $tolerations }}
  tolerations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with include "frameworm.affinity" . | fromYaml }}
  affinity:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .Values.topologySpreadConstraints }}
  topologySpreadConstraints:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end }}

{{/* What the HPA and the PDB point at. */}}
{{- define "frameworm.workloadRef" -}}
{{- if .Values.rollout.enabled }}
apiVersion: argoproj.io/v1alpha1
kind: Rollout
{{- else }}
apiVersion: apps/v1
kind: Deployment
{{- end }}
name: {{ include "frameworm.fullname" . }}
{{- end }}
