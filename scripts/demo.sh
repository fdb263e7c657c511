#!/usr/bin/env bash
# `make demo`: modelship end to end on a kind cluster.
#
#  1. kind, kubectl and helm into ./bin if missing (checksums verified: fetch-tools.sh)
#  2. a kind cluster with the ingress ports on the host (DEMO_HTTP_PORT, default 8080)
#  3. both images built and loaded into kind
#  4. ingress-nginx, and an in-cluster MLflow (sqlite) with iris-classifier v1 and v2
#  5. the Helm chart, then examples/minimal.yaml (version 1 here: the demo registry has
#     versions 1 and 2), waited for Ready, and a prediction through the ingress
#  6. version 2 rolled out: traffic through the ingress (scripts/demo/traffic.sh) while
#     scripts/demo/wait-promotion.sh shows the canary's weight and analyses until the
#     promotion. If the canary rolls back, or is not promoted within DEMO_ROLLOUT_TIMEOUT
#     seconds, the demo says what it saw last and exits non-zero (so does `make demo`).
#
# Needs Docker (a running engine), curl and about 4 GB of memory. Re-running reuses the
# cluster. `scripts/demo.sh rollout [VERSION]` runs step 6 alone on the running cluster
# (VERSION 2 by default; 1 rolls back the same way), needing only kubectl ($KUBECTL) and
# curl; `make demo DEMO_ARGS=rollout` does the same. `scripts/demo.sh down` deletes the
# cluster. Settings: CLUSTER (modelship-demo), DEMO_HTTP_PORT (8080), DEMO_HTTPS_PORT
# (8443), DEMO_RATE (requests a second during the rollout, 20), DEMO_ROLLOUT_TIMEOUT (900),
# DEMO_POLL_SECONDS (10, between looks at the rollout), MLFLOW_IMAGE, INGRESS_NGINX_VERSION.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
CLUSTER="${CLUSTER:-modelship-demo}"
export DEMO_HTTP_PORT="${DEMO_HTTP_PORT:-8080}"
export DEMO_HTTPS_PORT="${DEMO_HTTPS_PORT:-8443}"
INGRESS_NGINX_VERSION="${INGRESS_NGINX_VERSION:-controller-v1.12.1}"
VERSION="$(sed -n 's/^version = "\(.*\)"/\1/p' operator/pyproject.toml)"
DEMO_RATE="${DEMO_RATE:-20}"
DEMO_ROLLOUT_TIMEOUT="${DEMO_ROLLOUT_TIMEOUT:-900}"
DEMO_POLL_SECONDS="${DEMO_POLL_SECONDS:-10}"
NS=ml
HOST=iris.example.com
BASE_URL="http://localhost:$DEMO_HTTP_PORT"

say() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }

# One prediction through the ingress: the X-Model-Version header and the body; status 0
# only for a 2xx answer from VERSION (any version when none is given).
predict() {  # [VERSION]
  local headers body version
  headers="$(mktemp)" body="$(mktemp)"
  if ! curl -fsS -D "$headers" -o "$body" -H "Host: $HOST" -H 'Content-Type: application/json' \
      "$BASE_URL/predict" -d '{"features": [5.1, 3.5, 1.4, 0.2]}'; then
    rm -f "$headers" "$body"
    return 1
  fi
  version="$(sed -n 's/^[Xx]-[Mm]odel-[Vv]ersion: *//p' "$headers" | tr -d '\r')"
  echo "X-Model-Version: $version"
  cat "$body"; echo
  rm -f "$headers" "$body"
  [ -z "${1:-}" ] || [ "$version" = "$1" ]
}

# Predictions until one comes from VERSION (routing takes a moment to follow a change).
predict_until() {  # VERSION
  for _ in $(seq 30); do
    predict "$1" && return 0
    sleep 2
  done
  echo "make demo: no prediction from version $1 through $BASE_URL (Host: $HOST) in 60 s" >&2
  return 1
}

# Step 6: roll out VERSION with traffic flowing; the exit status says whether it was promoted.
rollout() {  # VERSION
  local version="$1" kubectl="${KUBECTL:-kubectl}" rc=0 traffic_rc=0 traffic
  say "version $version: canary rollout (steps 10%, 50%, 100%; $DEMO_RATE requests/s keep flowing)"
  "$kubectl" -n "$NS" patch md iris --type merge -p "{\"spec\":{\"model\":{\"version\":\"$version\"}}}"
  scripts/demo/traffic.sh "$BASE_URL" --host "$HOST" --rate "$DEMO_RATE" &
  traffic=$!
  # shellcheck disable=SC2064  # the pid is known now
  trap "kill $traffic 2>/dev/null || true" EXIT
  scripts/demo/wait-promotion.sh "$NS" iris "$version" --timeout "$DEMO_ROLLOUT_TIMEOUT" \
    --every "$DEMO_POLL_SECONDS" || rc=$?
  kill -TERM "$traffic" 2>/dev/null || true
  wait "$traffic" || traffic_rc=$?
  trap - EXIT
  "$kubectl" -n "$NS" describe md iris | sed -n '/^Status:/,$p'
  if [ "$rc" -ne 0 ]; then
    echo "make demo: version $version was not promoted (what the rollout did is above)" >&2
    return "$rc"
  fi
  [ "$traffic_rc" -eq 0 ] || { echo "make demo: the traffic got no answer" >&2; return 1; }
  say "a prediction now"
  predict_until "$version"
}

if [ "${1:-}" = rollout ]; then  # step 6 alone, on the demo's running cluster
  [ ! -d "$ROOT/bin" ] || PATH="$ROOT/bin:$PATH"
  command -v curl >/dev/null || { echo "scripts/demo.sh rollout needs curl" >&2; exit 1; }
  "${KUBECTL:-kubectl}" config use-context "kind-$CLUSTER" >/dev/null
  rollout "${2:-2}"  # under set -e, a rollout that fails ends the script with its status
  exit 0
fi

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

say "a prediction through the ingress"
echo "curl -H 'Host: $HOST' -H 'Content-Type: application/json' $BASE_URL/predict -d '{\"features\": [5.1, 3.5, 1.4, 0.2]}'"
predict_until 1

rollout 2
cat <<MSG

The cluster stays up: kubectl get md -A; make e2e runs the end-to-end suite on it;
scripts/demo.sh rollout 1 rolls back to version 1 through a canary; scripts/demo.sh down
deletes it.
MSG
