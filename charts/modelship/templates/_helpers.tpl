{{/* Full name of the release's objects, at most 63 characters. */}}
{{- define "modelship.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "modelship.selectorLabels" -}}
app.kubernetes.io/name: modelship-operator
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "modelship.labels" -}}
{{ include "modelship.selectorLabels" . }}
app.kubernetes.io/component: operator
app.kubernetes.io/part-of: modelship
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{- define "modelship.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "modelship.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* repository:tag or repository@digest; an empty tag means the appVersion. */}}
{{- define "modelship.image" -}}
{{- $image := index . 0 -}}
{{- $root := index . 1 -}}
{{- if $image.digest -}}
{{- printf "%s@%s" $image.repository $image.digest -}}
{{- else -}}
{{- printf "%s:%s" $image.repository (default $root.Chart.AppVersion $image.tag) -}}
{{- end -}}
{{- end -}}

{{/* "true" when kopf peering is on: asked for, or more than one replica. */}}
{{- define "modelship.peering" -}}
{{- if or .Values.peering.enabled (gt (int .Values.replicas) 1) -}}true{{- end -}}
{{- end -}}

{{/* Labels Prometheus puts on every runtime series: the ModelDeployment and version. */}}
{{- define "modelship.runtimeRelabelings" -}}
- sourceLabels: [__meta_kubernetes_pod_label_modelship_io_deployment]
  targetLabel: modelship_deployment
- sourceLabels: [__meta_kubernetes_pod_label_modelship_io_model_version]
  targetLabel: modelship_model_version
- sourceLabels: [__meta_kubernetes_pod_name]
  targetLabel: pod
{{- end -}}
