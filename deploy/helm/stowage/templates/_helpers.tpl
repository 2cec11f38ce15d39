{{/* Labels every object of the release carries. */}}
{{- define "stowage.labels" -}}
app.kubernetes.io/name: stowage
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end }}

{{/* The stowaged image reference. */}}
{{- define "stowage.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end }}

{{/* The Secret holding the cluster secret, when peering is on. */}}
{{- define "stowage.secretName" -}}
{{- if .Values.clusterSecret.existingSecret -}}
{{ .Values.clusterSecret.existingSecret }}
{{- else -}}
{{ .Release.Name }}-cluster-secret
{{- end -}}
{{- end }}

{{/* True ("true") when the daemons talk to each other. */}}
{{- define "stowage.peering" -}}
{{- if or .Values.controller.enabled .Values.peer.nodes .Values.clusterSecret.existingSecret .Values.clusterSecret.value -}}
true
{{- end -}}
{{- end }}

{{/* stowaged arguments of the peer link: secret, TLS, peers. */}}
{{- define "stowage.peerArgs" -}}
- --cluster-secret-file=/etc/stowage/cluster/secret
{{- if .Values.peerTLS.existingSecret }}
- --peer-tls-cert=/etc/stowage/tls/tls.crt
- --peer-tls-key=/etc/stowage/tls/tls.key
- --peer-tls-ca=/etc/stowage/tls/ca.crt
{{- end }}
{{- range .Values.peer.nodes }}
- --peer={{ . }}
{{- end }}
{{- end }}

{{/* Volume mounts and volumes of the peer link's secrets. */}}
{{- define "stowage.peerMounts" -}}
- name: cluster-secret
  mountPath: /etc/stowage/cluster
  readOnly: true
{{- if .Values.peerTLS.existingSecret }}
- name: peer-tls
  mountPath: /etc/stowage/tls
  readOnly: true
{{- end }}
{{- end }}
{{- define "stowage.peerVolumes" -}}
- name: cluster-secret
  secret:
    secretName: {{ include "stowage.secretName" . }}
    defaultMode: 0400
{{- if .Values.peerTLS.existingSecret }}
- name: peer-tls
  secret:
    secretName: {{ .Values.peerTLS.existingSecret }}
    defaultMode: 0400
{{- end }}
{{- end }}

{{/* Checks of the values, failing the render with a clear message. */}}
{{- define "stowage.validate" -}}
{{- if .Values.controller.enabled -}}
{{- if not .Values.peer.nodes -}}
{{- fail "controller.enabled needs peer.nodes: every node's NODE_NAME=HOST:PORT" -}}
{{- end -}}
{{- if not (or .Values.clusterSecret.existingSecret .Values.clusterSecret.value) -}}
{{- fail "controller.enabled needs the cluster secret: clusterSecret.existingSecret or clusterSecret.value" -}}
{{- end -}}
{{- end -}}
{{- range .Values.peer.nodes -}}
{{- if not (regexMatch "^[^=]+=[^:]+:[0-9]+$" .) -}}
{{- fail (printf "peer.nodes: %q is not NODE_NAME=HOST:PORT" .) -}}
{{- end -}}
{{- end -}}
{{- end }}
