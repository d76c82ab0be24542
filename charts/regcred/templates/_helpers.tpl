{{/* Chart name, truncated to the 63 characters a label value allows. */}}
{{- define "regcred.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Release-scoped name of every object. */}}
{{- define "regcred.fullname" -}}
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

{{- define "regcred.selectorLabels" -}}
app.kubernetes.io/name: {{ include "regcred.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "regcred.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "regcred.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: regcred
{{- end }}

{{- define "regcred.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "regcred.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "regcred.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/* Every secret regcred looks after, as a JSON object: its name, with the sorted types
     regcred writes under that name. An entry of format argocd-repository or
     argocd-repo-creds writes one Secret per registry host, named <name>-<host> with the
     port's ":" as "-" (regcred derives the same names: src/formats/mod.rs, derived_name);
     any other entry one Secret of its name. Former names keep the pull-secret type: regcred
     only deletes those secrets, or gives an adopted pull secret back to its owner. */}}
{{- define "regcred.secrets" -}}
{{- $types := dict "dockerconfigjson" "kubernetes.io/dockerconfigjson" "argocd-repository" "Opaque" "argocd-repo-creds" "Opaque" "basic-auth" "kubernetes.io/basic-auth" }}
{{- $secrets := dict }}
{{- range .Values.config.secrets }}
{{- $name := default "regcred" .name }}
{{- $format := default "dockerconfigjson" .format }}
{{- $type := get $types $format }}
{{- $names := list $name }}
{{- if has $format (list "argocd-repository" "argocd-repo-creds") }}
{{- $names = list }}
{{- range .registries }}
{{- $host := . }}
{{- if kindIs "map" . }}{{ $host = .host }}{{ end }}
{{- $names = append $names (printf "%s-%s" $name ($host | toString | trim | lower | replace ":" "-")) }}
{{- end }}
{{- end }}
{{- range $names }}
{{- $_ := set $secrets . (append (get $secrets . | default list) $type | uniq | sortAlpha) }}
{{- end }}
{{- range .formerNames }}
{{- $_ := set $secrets . (append (get $secrets . | default list) "kubernetes.io/dockerconfigjson" | uniq | sortAlpha) }}
{{- end }}
{{- end }}
{{- $secrets | toJson }}
{{- end }}

{{/* The managed Secret names, sorted and distinct, as a JSON list (for resourceNames):
     the configured ones (derived per host for the Argo CD formats) and the former ones,
     whose secrets regcred removes. */}}
{{- define "regcred.secretNames" -}}
{{- include "regcred.secrets" . | fromJson | keys | sortAlpha | toJson }}
{{- end }}

{{/* The types of the secrets regcred writes, sorted and distinct, as a JSON list. */}}
{{- define "regcred.secretTypes" -}}
{{- $all := list }}
{{- range $name, $types := include "regcred.secrets" . | fromJson }}
{{- $all = concat $all $types }}
{{- end }}
{{- $all | uniq | sortAlpha | toJson }}
{{- end }}

{{/* "true" when the chart grants access to serviceaccounts: some secret adds itself to
     ServiceAccounts, or rbac.serviceAccounts keeps the access so regcred can remove the
     references it made after patching was turned off. */}}
{{- define "regcred.patchesServiceAccounts" -}}
{{- $patch := .Values.rbac.serviceAccounts }}
{{- range .Values.config.secrets }}
{{- if .serviceAccounts }}
{{- $patch = true }}
{{- end }}
{{- end }}
{{- $patch }}
{{- end }}

{{/* The admission webhook's Service, and the Secret regcred keeps its certificate in. */}}
{{- define "regcred.webhookService" -}}
{{- printf "%s-webhook" (include "regcred.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The host (name or IP, no port) of webhook.url, or "" without one. */}}
{{- define "regcred.webhookUrlHost" -}}
{{- with .Values.webhook.url }}
{{- regexReplaceAll ":[0-9]+$" (urlParse .).host "" | trimPrefix "[" | trimSuffix "]" }}
{{- end }}
{{- end }}

{{- define "regcred.webhookSecret" -}}
{{- printf "%s-webhook-tls" (include "regcred.fullname" .) }}
{{- end }}

{{/* "true" when regcred makes and rotates the webhook's certificate itself (then it needs
     its Secret and the configuration's caBundle); "false" with cert-manager or no webhook. */}}
{{- define "regcred.webhookOwnCert" -}}
{{- and .Values.webhook.enabled (not .Values.webhook.certManager.enabled) }}
{{- end }}

{{/* Fails the render early on values regcred could never run with. */}}
{{- define "regcred.validate" -}}
{{- if not (has .Values.mode (list "controller" "cronjob")) }}
{{- fail (printf "mode must be controller or cronjob, not %q" .Values.mode) }}
{{- end }}
{{- if and .Values.webhook.enabled (ne .Values.mode "controller") }}
{{- fail "webhook.enabled needs mode: controller (a CronJob cannot answer the API server)" }}
{{- end }}
{{- if not .Values.config.secrets }}
{{- fail "config.secrets must list at least one secret" }}
{{- end }}
{{- range $i, $s := .Values.config.secrets }}
{{- if not $s.registries }}
{{- fail (printf "config.secrets[%d].registries must list at least one registry" $i) }}
{{- end }}
{{- $format := default "dockerconfigjson" $s.format }}
{{- if and (eq $format "basic-auth") (ne (len $s.registries) 1) }}
{{- fail (printf "config.secrets[%d].registries: format basic-auth holds one registry's username and password; give each registry an entry of its own" $i) }}
{{- end }}
{{- if and (ne $format "dockerconfigjson") $s.serviceAccounts }}
{{- fail (printf "config.secrets[%d].serviceAccounts: only a dockerconfigjson secret can be an image pull secret, not one of format %s" $i $format) }}
{{- end }}
{{- end }}
{{- $auth := 0 }}
{{- if .Values.aws.irsaRoleArn }}{{ $auth = add1 $auth }}{{ end }}
{{- if .Values.aws.webIdentity.roleArn }}{{ $auth = add1 $auth }}{{ end }}
{{- if .Values.aws.existingSecret.name }}{{ $auth = add1 $auth }}{{ end }}
{{- if gt $auth 1 }}
{{- fail "set at most one of aws.irsaRoleArn, aws.webIdentity.roleArn and aws.existingSecret.name" }}
{{- end }}
{{- end }}

{{/* The pod spec every mode shares; `args` is regcred's command line. */}}
{{- define "regcred.podSpec" -}}
{{- $root := .root }}
{{- with $root.Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
serviceAccountName: {{ include "regcred.serviceAccountName" $root }}
# The API token is mounted below, into the regcred container only, and nowhere else.
automountServiceAccountToken: false
enableServiceLinks: false
{{- if $root.Values.hostNetwork }}
hostNetwork: true
dnsPolicy: ClusterFirstWithHostNet
{{- end }}
{{- with $root.Values.priorityClassName }}
priorityClassName: {{ . }}
{{- end }}
securityContext:
  {{- toYaml $root.Values.podSecurityContext | nindent 2 }}
containers:
  - name: regcred
    image: {{ include "regcred.image" $root }}
    imagePullPolicy: {{ $root.Values.image.pullPolicy }}
    args:
      {{- toYaml .args | nindent 6 }}
    env:
      # Also for `kubectl exec ... -- regcred check` and friends.
      - name: REGCRED_CONFIG
        value: /etc/regcred/config.yaml
      - name: REGCRED_LOG_LEVEL
        value: {{ $root.Values.log.level | quote }}
      - name: REGCRED_LOG_FORMAT
        value: {{ $root.Values.log.format | quote }}
      {{- if .controller }}
      # The Lease's namespace and this replica's identity in it.
      - name: POD_NAMESPACE
        valueFrom:
          fieldRef:
            fieldPath: metadata.namespace
      - name: POD_NAME
        valueFrom:
          fieldRef:
            fieldPath: metadata.name
      - name: REGCRED_LEASE_NAME
        value: {{ $root.Values.leaderElection.leaseName | quote }}
      {{- with $root.Values.maxWritesPerSecond }}
      - name: REGCRED_MAX_WRITES_PER_SECOND
        value: {{ . | toString | quote }}
      {{- end }}
      {{- end }}
      {{- with $root.Values.apiServer.host }}
      # The API server's address instead of the kubernetes Service's.
      - name: KUBERNETES_SERVICE_HOST
        value: {{ . | quote }}
      - name: KUBERNETES_SERVICE_PORT
        value: {{ $root.Values.apiServer.port | toString | quote }}
      {{- end }}
      {{- with $root.Values.aws.region }}
      - name: AWS_REGION
        value: {{ . | quote }}
      {{- end }}
      {{- with $root.Values.aws.webIdentity.roleArn }}
      - name: AWS_ROLE_ARN
        value: {{ . | quote }}
      - name: AWS_WEB_IDENTITY_TOKEN_FILE
        value: /var/run/secrets/regcred/aws/token
      {{- end }}
      {{- with $root.Values.aws.existingSecret }}
      {{- if .name }}
      - name: AWS_ACCESS_KEY_ID
        valueFrom:
          secretKeyRef:
            name: {{ .name }}
            key: {{ .accessKeyIdKey }}
      - name: AWS_SECRET_ACCESS_KEY
        valueFrom:
          secretKeyRef:
            name: {{ .name }}
            key: {{ .secretAccessKeyKey }}
      {{- if .sessionTokenKey }}
      - name: AWS_SESSION_TOKEN
        valueFrom:
          secretKeyRef:
            name: {{ .name }}
            key: {{ .sessionTokenKey }}
      {{- end }}
      {{- end }}
      {{- end }}
      {{- with .env }}
      {{- toYaml . | nindent 6 }}
      {{- end }}
      {{- with $root.Values.extraEnv }}
      {{- toYaml . | nindent 6 }}
      {{- end }}
    {{- with .ports }}
    ports:
      {{- toYaml . | nindent 6 }}
    {{- end }}
    {{- with .probes }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
    resources:
      {{- toYaml $root.Values.resources | nindent 6 }}
    securityContext:
      {{- toYaml $root.Values.securityContext | nindent 6 }}
    volumeMounts:
      - name: config
        mountPath: /etc/regcred
        readOnly: true
      - name: kube-api-access
        mountPath: /var/run/secrets/kubernetes.io/serviceaccount
        readOnly: true
      {{- if $root.Values.aws.webIdentity.roleArn }}
      - name: aws-token
        mountPath: /var/run/secrets/regcred/aws
        readOnly: true
      {{- end }}
      {{- with .volumeMounts }}
      {{- toYaml . | nindent 6 }}
      {{- end }}
volumes:
  - name: config
    configMap:
      name: {{ include "regcred.fullname" $root }}
  # What automountServiceAccountToken would mount, short-lived and for this container only.
  - name: kube-api-access
    projected:
      sources:
        - serviceAccountToken:
            path: token
            expirationSeconds: 3600
        - configMap:
            name: kube-root-ca.crt
            items:
              - key: ca.crt
                path: ca.crt
        - downwardAPI:
            items:
              - path: namespace
                fieldRef:
                  # Spelt out as the API server defaults it: an atomic list that differs
                  # from the live object makes every `kubectl apply` report "configured".
                  apiVersion: v1
                  fieldPath: metadata.namespace
  {{- with $root.Values.aws.webIdentity }}
  {{- if .roleArn }}
  - name: aws-token
    projected:
      sources:
        - serviceAccountToken:
            path: token
            audience: {{ .audience }}
            expirationSeconds: {{ .expirationSeconds }}
  {{- end }}
  {{- end }}
  {{- with .volumes }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
{{- with $root.Values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $root.Values.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $root.Values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $root.Values.topologySpreadConstraints }}
topologySpreadConstraints:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{/* Pod template metadata: labels, and a checksum so a config change rolls the pods. */}}
{{- define "regcred.podMetadata" -}}
labels:
  {{- include "regcred.selectorLabels" . | nindent 2 }}
  {{- with .Values.podLabels }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
annotations:
  checksum/config: {{ include (print .Template.BasePath "/configmap.yaml") . | sha256sum }}
  {{- with .Values.podAnnotations }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
{{- end }}

{{/* A probe as configured; on host network an httpGet probe asks 127.0.0.1 unless it
     names a host: the same listener, without depending on the node's address. */}}
{{- define "regcred.probe" -}}
{{- $probe := deepCopy .probe }}
{{- if and .root.Values.hostNetwork $probe.httpGet }}
{{- if not $probe.httpGet.host }}
{{- $_ := set $probe.httpGet "host" "127.0.0.1" }}
{{- end }}
{{- end }}
{{- toYaml $probe }}
{{- end }}
