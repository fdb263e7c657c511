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

{{/* The operator Deployments: one per entry of .Values.shards, or a single one serving
.Values.watchNamespaces (empty: the whole cluster). A JSON list of {name, namespaces};
name is "" for the single one. Fails when a namespace is in two shards, or when both
shards and watchNamespaces are set. */}}
{{- define "modelship.shards" -}}
{{- if .Values.shards -}}
{{- if .Values.watchNamespaces -}}
{{- fail "set shards or watchNamespaces, not both: each shard lists its own namespaces" -}}
{{- end -}}
{{- $seen := dict -}}
{{- range .Values.shards -}}
{{- range .namespaces -}}
{{- if hasKey $seen . -}}
{{- fail (printf "namespace %s is in two shards (%s and another): each namespace needs exactly one operator" . (get $seen .)) -}}
{{- end -}}
{{- end -}}
{{- $name := .name -}}
{{- range .namespaces -}}
{{- $_ := set $seen . $name -}}
{{- end -}}
{{- end -}}
{{- toJson .Values.shards -}}
{{- else -}}
{{- toJson (list (dict "name" "" "namespaces" .Values.watchNamespaces)) -}}
{{- end -}}
{{- end -}}

{{/* Every namespace an operator serves (JSON list; empty: the whole cluster). */}}
{{- define "modelship.namespaces" -}}
{{- $all := list -}}
{{- range (include "modelship.shards" . | fromJsonArray) -}}
{{- $all = concat $all .namespaces -}}
{{- end -}}
{{- toJson $all -}}
{{- end -}}
