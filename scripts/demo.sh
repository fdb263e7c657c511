#!/usr/bin/env bash
# `make demo`: modelship end to end on a kind cluster.
#
#  1. kind, kubectl and helm into ./bin if missing (checksums verified: fetch-tools.sh)
#  2. a kind cluster with the ingress ports on the host (DEMO_HTTP_PORT, default 8080)
#  3. both images built and loaded into kind
#  4. ingress-nginx, and an in-cluster MLflow (sqlite) with iris-classifier v1 and v2
#  5. the Helm chart, then examples/minimal.yaml (version 1 here: the demo registry has
#     versions 1 and 2), waited for Ready, and a prediction through the ingress
#  6. version 2 rolled out: the canary's weight, analysis and promotion, live
#
# Needs Docker (a running engine), curl and about 4 GB of memory. Re-running reuses the
# cluster. `scripts/demo.sh down` deletes it. Settings: CLUSTER (modelship-demo),
# DEMO_HTTP_PORT (8080), DEMO_HTTPS_PORT (8443), MLFLOW_IMAGE, INGRESS_NGINX_VERSION.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
CLUSTER="${CLUSTER:-modelship-demo}"
export DEMO_HTTP_PORT="${DEMO_HTTP_PORT:-8080}"
export DEMO_HTTPS_PORT="${DEMO_HTTPS_PORT:-8443}"
INGRESS_NGINX_VERSION="${INGRESS_NGINX_VERSION:-controller-v1.12.1}"
VERSION="$(sed -n 's/^version = "\(.*\)"/\1/p' operator/pyproject.toml)"
NS=ml
HOST=iris.example.com

say() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }

if ! command -v docker >/dev/null 2>&1 || ! docker info >/dev/null 2>&1; then
  cat >&2 <<MSG
make demo needs a running Docker engine, and none answers here ('docker info' failed).
It creates a kind cluster (Kubernetes in Docker) and builds the two images with docker.
Install Docker (or start it), make sure 'docker info' works for your user, then run
'make demo' again. Also needed: curl, and about 4 GB of free memory. kind, kubectl and
helm are fetched into ./bin when missing.
MSG
  exit 1
fi
command -v curl >/dev/null || { echo "make demo needs curl" >&2; exit 1; }

PATH="$("$ROOT/scripts/fetch-tools.sh"):$PATH"
export PATH

if [ "${1:-}" = down ]; then
  kind delete cluster --name "$CLUSTER"
  exit 0
fi

say "Python environment (.venv) for registering the demo models"
make --no-print-directory .venv/.installed >/dev/null
MLFLOW_IMAGE="${MLFLOW_IMAGE:-ghcr.io/mlflow/mlflow:v$(.venv/bin/python -c 'import mlflow; print(mlflow.__version__)')}"
export MLFLOW_IMAGE

say "kind cluster '$CLUSTER' (ingress on localhost:$DEMO_HTTP_PORT)"
if ! kind get clusters 2>/dev/null | grep -qx "$CLUSTER"; then
  envsubst < scripts/demo/kind-config.yaml | kind create cluster --name "$CLUSTER" --config - --wait 120s
fi
kubectl config use-context "kind-$CLUSTER" >/dev/null

# The names the chart and the operator default to, so kind's copies are the ones used.
REGISTRY=ghcr.io/modelship
say "images $REGISTRY/modelship-operator:$VERSION and $REGISTRY/modelship-runtime:$VERSION"
revision="$(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
created="$(date -u +%Y-%m-%dT%H:%M:%SZ)"
for image in operator runtime; do
  docker build -q -f "Dockerfile.$image" -t "$REGISTRY/modelship-$image:$VERSION" \
    --build-arg VERSION="$VERSION" --build-arg REVISION="$revision" --build-arg CREATED="$created" .
  kind load docker-image --name "$CLUSTER" "$REGISTRY/modelship-$image:$VERSION"
done

say "ingress-nginx ($INGRESS_NGINX_VERSION)"
kubectl apply -f "https://raw.githubusercontent.com/kubernetes/ingress-nginx/$INGRESS_NGINX_VERSION/deploy/static/provider/kind/deploy.yaml" >/dev/null
kubectl -n ingress-nginx rollout status deploy/ingress-nginx-controller --timeout=300s
kubectl annotate ingressclass nginx ingressclass.kubernetes.io/is-default-class=true --overwrite >/dev/null

say "MLflow in the cluster ($MLFLOW_IMAGE), two versions of iris-classifier"
# shellcheck disable=SC2016  # envsubst's variable list, not an expansion
envsubst '$MLFLOW_IMAGE' < scripts/demo/mlflow.yaml | kubectl apply -f - >/dev/null
kubectl -n mlflow rollout status deploy/mlflow --timeout=600s
kubectl -n mlflow port-forward svc/mlflow 15000:5000 >/dev/null 2>&1 &
forward=$!
trap 'kill $forward 2>/dev/null || true' EXIT
for _ in $(seq 30); do curl -fsS localhost:15000/health >/dev/null 2>&1 && break; sleep 1; done
MLFLOW_TRACKING_URI=http://localhost:15000 .venv/bin/python scripts/demo/register_models.py
kill $forward 2>/dev/null || true

say "modelship chart"
helm upgrade --install modelship charts/modelship --namespace modelship-system --create-namespace \
  --set defaultTrackingUri=http://mlflow.mlflow:5000 --wait --timeout 5m
kubectl -n modelship-system get pods

say "examples/minimal.yaml (version 1), waiting for Ready"
kubectl create namespace "$NS" --dry-run=client -o yaml | kubectl apply -f - >/dev/null
sed 's/version: "3"/version: "1"/' examples/minimal.yaml | kubectl apply -f -
kubectl -n "$NS" wait md/iris --for=condition=Ready --timeout=600s
kubectl -n "$NS" get md iris

predict() {
  curl -fsS -D - -o /tmp/modelship-demo-body -H "Host: $HOST" -H 'Content-Type: application/json' \
    "http://localhost:$DEMO_HTTP_PORT/predict" -d '{"features": [5.1, 3.5, 1.4, 0.2]}' \
    | grep -i '^x-model-version' | tr -d '\r'
  cat /tmp/modelship-demo-body; echo
}
say "a prediction through the ingress"
echo "curl -H 'Host: $HOST' http://localhost:$DEMO_HTTP_PORT/predict -d '{\"features\": [5.1, 3.5, 1.4, 0.2]}'"
for _ in $(seq 30); do predict && break; sleep 2; done

say "version 2: canary rollout (steps 10%, 50%, 100%; traffic keeps flowing)"
kubectl -n "$NS" patch md iris --type merge -p '{"spec":{"model":{"version":"2"}}}'
( while true; do
    curl -fsS -o /dev/null -H "Host: $HOST" "http://localhost:$DEMO_HTTP_PORT/predict" \
      -d '{"features": [6.7, 3.0, 5.2, 2.3]}' || true
    sleep 0.2
  done ) &
traffic=$!
trap 'kill $traffic 2>/dev/null || true' EXIT
deadline=$((SECONDS + 900))
while [ $SECONDS -lt $deadline ]; do
  kubectl -n "$NS" get md iris --no-headers \
    -o custom-columns='PHASE:.status.phase,STABLE:.status.stable.version,CANARY:.status.canary.version,WEIGHT:.status.canary.weight,ANALYSIS:.status.canary.lastAnalysis'
  phase="$(kubectl -n "$NS" get md iris -o jsonpath='{.status.phase}')"
  stable="$(kubectl -n "$NS" get md iris -o jsonpath='{.status.stable.version}')"
  if [ "$stable" = 2 ] && [ "$phase" = Ready ]; then break; fi
  if [ "$phase" = RolledBack ]; then break; fi
  sleep 10
done
kill $traffic 2>/dev/null || true
kubectl -n "$NS" describe md iris | sed -n '/^Status:/,$p'
say "a prediction now"
predict
cat <<MSG

The cluster stays up: kubectl get md -A; make e2e runs the end-to-end suite on it;
scripts/demo.sh down deletes it.
MSG
