{{/* Labels every object carries. */}}
{{- define "ferry.labels" -}}
app.kubernetes.io/name: ferry
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end }}

{{/* The selector of one component's pods. */}}
{{- define "ferry.selector" -}}
app.kubernetes.io/name: ferry
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/* The image of both binaries. */}}
{{- define "ferry.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end }}

{{/* The control plane's Service host; proxies check its certificate names it. */}}
{{- define "ferry.controlPlaneHost" -}}
ferry-control-plane.{{ .Release.Namespace }}.svc
{{- end }}

{{/* Non-root, read-only, no privileges: every Ferry container. */}}
{{- define "ferry.containerSecurity" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
runAsUser: 65532
capabilities:
  drop: [ALL]
{{- end }}

{{/* A projected service-account token for certificates (audience ferry.dev/identity). */}}
{{- define "ferry.tokenVolume" -}}
name: ferry-token
projected:
  sources:
    - serviceAccountToken:
        audience: ferry.dev/identity
        expirationSeconds: 3600
        path: token
{{- end }}
