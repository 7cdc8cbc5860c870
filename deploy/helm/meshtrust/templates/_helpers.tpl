{{- define "meshtrust.fullname" -}}
{{- printf "%s-meshtrust" .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "meshtrust.labels" -}}
app.kubernetes.io/name: meshtrust
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "meshtrust.selector" -}}
app.kubernetes.io/name: meshtrust
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "meshtrust.image" -}}
{{- $img := .img | default dict -}}
{{- $repo := $img.repository | default .root.Values.image.repository -}}
{{- $tag := $img.tag | default .root.Values.image.tag | default .root.Chart.AppVersion -}}
{{- printf "%s:%s" $repo $tag -}}
{{- end -}}

{{/* meshd's image: with the CA's keys on a PKCS#11 token, the cgo
variant that can load the module (deploy/image -variant pkcs11), tagged
image.pkcs11Tag, by default <image.tag or appVersion>-pkcs11. */}}
{{- define "meshtrust.meshdImage" -}}
{{- if eq .Values.meshd.ca.source "pkcs11" -}}
{{- $tag := .Values.image.pkcs11Tag | default (printf "%s-pkcs11" (.Values.image.tag | default .Chart.AppVersion)) -}}
{{- include "meshtrust.image" (dict "root" . "img" (dict "tag" $tag)) -}}
{{- else -}}
{{- include "meshtrust.image" (dict "root" . "img" dict) -}}
{{- end -}}
{{- end -}}

{{- define "meshtrust.tlsSecret" -}}
{{- .Values.mesh.tls.server.secretName | default (printf "%s-tls" (include "meshtrust.fullname" .)) -}}
{{- end -}}

{{- define "meshtrust.k8sNamespace" -}}
{{- .Values.mesh.trust.k8sSecrets.namespace | default .Release.Namespace -}}
{{- end -}}

{{- define "meshtrust.usesSpire" -}}
{{- if or .Values.mesh.tls.spire.enabled (has "spire" .Values.mesh.trust.backends) -}}true{{- end -}}
{{- end -}}

{{/* The restricted pod security profile, for every container. */}}
{{- define "meshtrust.securityContext" -}}
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop: [ALL]
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/* meshd's agent port certificate comes from the TLS Secret: TLS is on and meshd does not present its SPIRE SVID. */}}
{{- define "meshtrust.tlsFiles" -}}
{{- if and (ne .Values.mesh.tls.mode "off") (not .Values.mesh.trust.spire.serveSVID) -}}true{{- end -}}
{{- end -}}

{{/* A label selector of meshd's pods alone: the agent's pods carry the chart's selector labels too. */}}
{{- define "meshtrust.meshdPods" -}}
matchLabels:
  {{- include "meshtrust.selector" . | nindent 2 }}
matchExpressions:
  - key: app.kubernetes.io/component
    operator: NotIn
    values: [agent]
{{- end -}}
