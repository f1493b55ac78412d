#!/usr/bin/env bash
# UNTESTED HERE (this machine has no Docker). The chart on a kind cluster, for machines with Docker and kind:
# create a two-node kind cluster, load the installer and example images, `helm install wasm-shim` onto the
# worker labelled wasm.shim.io/install=true (the chart's opt-in label), run a wasm Deployment, print its log, then
# delete the cluster (KEEP=1 keeps it). kind nodes run systemd, so the chart's default containerd restart
# (`nsenter -t 1 ... systemctl restart containerd`) applies and no node.restartCommand is set.
#
#   e2e/kind/run.sh            needs: docker, kind, and this clone's .venv + .tools/bin/helm (scripts/setup.sh)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
NAME="${KIND_CLUSTER_NAME:-wasm-shim-e2e}"
WORK="$(mktemp -d)"
PY=.venv/bin/python
HELM=.tools/bin/helm
INSTALLER=wasm-shim.local/installer:e2e
for cmd in docker kind kubectl; do
  command -v "$cmd" >/dev/null || { echo "e2e/kind/run.sh: $cmd not found" >&2; exit 1; }
done
cleanup() { rm -rf "$WORK"; [[ "${KEEP:-0}" == 1 ]] || kind delete cluster --name "$NAME"; }
trap cleanup EXIT

cat >"$WORK/kind.yaml" <<'YAML'
kind: Cluster
apiVersion: kind.x-k8s.io/v1alpha4
nodes:
  - role: control-plane
  - role: worker
    labels: {wasm.shim.io/install: "true"}
YAML
kind create cluster --name "$NAME" --config "$WORK/kind.yaml" --wait 120s
export KUBECONFIG="$WORK/kubeconfig"
kind get kubeconfig --name "$NAME" >"$KUBECONFIG"

guests="$("$PY" -c 'from lab.guests.fixtures import build_guests; print(build_guests())')"
.venv/bin/wasm-shim bundle build "$WORK/bundle"
"$WORK/bundle/bin/wasm-shim" image build "$WORK/installer.tar" --bundle "$WORK/bundle" \
  --test-wasm "$guests/hello.wasm" --ref "$INSTALLER"
"$PY" -m lab.cluster.images "$WORK/images" >/dev/null
for tar in "$WORK/installer.tar" "$WORK"/images/{busybox,wasm-sleep}-e2e.tar; do
  kind load image-archive "$tar" --name "$NAME"
done

"$HELM" install wasm-shim charts/wasm-shim -n wasm-system --create-namespace --wait --timeout 5m \
  --set image.repository="${INSTALLER%:*}" --set image.tag="${INSTALLER##*:}" --set image.pullPolicy=Never
kubectl get nodes -L wasm.shim.io/runtime
kubectl create deployment wasm-sleep --image=wasm-shim.local/wasm-sleep:e2e -- /sleep.wasm 3600
kubectl patch deployment wasm-sleep --type=json -p '[
  {"op": "add", "path": "/spec/template/spec/runtimeClassName", "value": "wasmtime"},
  {"op": "add", "path": "/spec/template/spec/containers/0/imagePullPolicy", "value": "Never"}]'
kubectl rollout status deployment/wasm-sleep --timeout=180s
kubectl logs deployment/wasm-sleep
"$HELM" test wasm-shim -n wasm-system --timeout 5m
"$HELM" uninstall wasm-shim -n wasm-system --wait
