#!/bin/sh
# Entry point of the operator image: `kopf run` with the modelship handlers.
#
# Arguments are passed to kopf: `--all-namespaces` (the default CMD) or `-n NS` (repeat).
# With more than one replica, kopf peering needs each replica to have its own priority
# (kopf docs, "Peering / Multi-pod operators"): MODELSHIP_OPERATOR_PRIORITY if set, else
# a random one. The liveness endpoint (/healthz on :8081) backs the pod's probes.
# The operator serves its Prometheus metrics on :8080 (MODELSHIP_OPERATOR_METRICS_PORT).
set -eu
priority="${MODELSHIP_OPERATOR_PRIORITY:-$(shuf -i 1-32767 -n 1)}"
exec kopf run \
  --priority "$priority" \
  --liveness "http://0.0.0.0:${MODELSHIP_OPERATOR_HEALTH_PORT:-8081}/healthz" \
  -m modelship_operator.handlers \
  "$@"
