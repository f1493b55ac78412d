{{/* The chart's name (nameOverride replaces it in names and the app.kubernetes.io/name label). */}}
{{- define "wasm-shim.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The release's full name, cut to the 63 characters a label value allows; fullnameOverride replaces it. */}}
{{- define "wasm-shim.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := include "wasm-shim.name" . -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "wasm-shim.labels" -}}
app.kubernetes.io/name: {{ include "wasm-shim.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{- define "wasm-shim.selectorLabels" -}}
app.kubernetes.io/name: {{ include "wasm-shim.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: installer
{{- end -}}

{{- define "wasm-shim.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "wasm-shim.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* The installer image; the tag defaults to the chart's appVersion. */}}
{{- define "wasm-shim.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{/* The Node label (and annotations) the installer of this release's handler writes: shim/node/distributions.py
node_keys. The default handler keeps the plain names; another handler's have "-<handler>" after them, so two
releases on one node never touch each other's. */}}
{{- define "wasm-shim.nodeKeySuffix" -}}
{{- if ne .Values.runtimeClass.handler "wasmtime" -}}-{{ .Values.runtimeClass.handler }}{{- end -}}
{{- end -}}
{{- define "wasm-shim.nodeLabel" -}}wasm.shim.io/runtime{{ include "wasm-shim.nodeKeySuffix" . }}{{- end -}}
{{- define "wasm-shim.reasonAnnotation" -}}wasm.shim.io/runtime-reason{{ include "wasm-shim.nodeKeySuffix" . }}{{- end -}}
{{- define "wasm-shim.versionAnnotation" -}}wasm.shim.io/runtime-version{{ include "wasm-shim.nodeKeySuffix" . }}{{- end -}}

{{/* The shim binary containerd runs for node.runtimeType: containerd-shim-<name>-<version> from the type's last
two parts (containerd's shim.BinaryName); node.shimBinary, when set, must be that name. */}}
{{- define "wasm-shim.shimBinary" -}}
{{- $parts := splitList "." .Values.node.runtimeType -}}
{{- $derived := printf "containerd-shim-%s-%s" (index $parts (sub (len $parts) 2)) (last $parts) -}}
{{- if and .Values.node.shimBinary (ne .Values.node.shimBinary $derived) -}}
{{- fail (printf "node.shimBinary %s does not go with node.runtimeType %s: containerd runs %s for that type" .Values.node.shimBinary .Values.node.runtimeType $derived) -}}
{{- end -}}
{{- $derived -}}
{{- end -}}
