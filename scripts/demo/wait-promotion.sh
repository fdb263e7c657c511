#!/usr/bin/env bash
# Wait until a ModelDeployment has promoted a model version, printing the rollout as it
# goes; when it does not, say what was seen last and exit non-zero.
#
#   scripts/demo/wait-promotion.sh NAMESPACE NAME VERSION [--timeout SECONDS] [--every SECONDS]
#
# The kubectl command is $KUBECTL (default: kubectl). Each change of the rollout's state
# is one line: phase, stable and canary versions, weight, step, and the last analysis
# (verdict, requests, error rate, p95 latency) with the Reconciling condition's message.
#
# Exit status: 0 once the phase is Ready with VERSION stable and no canary; 1 when the
# rollout of VERSION rolled back, when the phase is Failed, or when --timeout (default 900)
# seconds pass first (the message then says what was seen last); 2 on bad arguments.
set -euo pipefail

usage() { echo "usage: $0 NAMESPACE NAME VERSION [--timeout SECONDS] [--every SECONDS]" >&2; exit 2; }

[ $# -ge 3 ] || usage
ns="$1" name="$2" version="$3"
shift 3
timeout=900
every=10
while [ $# -gt 0 ]; do
  case "$1" in
    --timeout) timeout="${2:?}"; shift 2 ;;
    --every) every="${2:?}"; shift 2 ;;
    *) usage ;;
  esac
done
case "$timeout" in '' | *[!0-9]*) echo "wait-promotion: --timeout must be whole seconds: $timeout" >&2; exit 2 ;; esac
kubectl="${KUBECTL:-kubectl}"

# One field a line (a message may hold tabs, none holds a newline).
fields='{.status.phase}{"\n"}{.status.stable.version}{"\n"}{.status.canary.version}{"\n"}'
fields+='{.status.canary.weight}{"\n"}{.status.canary.step}{"\n"}'
fields+='{.status.canary.lastAnalysis.verdict}{"\n"}{.status.canary.lastAnalysis.requests}{"\n"}'
fields+='{.status.canary.lastAnalysis.errorRate}{"\n"}{.status.canary.lastAnalysis.latencyP95Ms}{"\n"}'
fields+='{.status.conditions[?(@.type=="Reconciling")].message}{"\n"}'
fields+='{.status.conditions[?(@.type=="Stalled")].message}{"\n"}'
fields+='{.status.lastRollout.version}{"\n"}{.status.lastRollout.outcome}{"\n"}'
fields+='{.status.lastRollout.reason}{"\n"}'

seen="nothing yet"
last=""
deadline=$((SECONDS + timeout))
while :; do
  if out="$("$kubectl" -n "$ns" get md "$name" -o "jsonpath=$fields" 2>&1)"; then
    {
      read -r phase; read -r stable; read -r canary; read -r weight; read -r step
      read -r verdict; read -r requests; read -r error_rate; read -r p95
      read -r reconciling; read -r stalled
      read -r last_version; read -r outcome; read -r reason
    } <<<"$out" || true
    analysis="none yet"
    if [ -n "$verdict" ]; then
      analysis="$verdict (${requests:-?} requests, error rate ${error_rate:-?}, p95 ${p95:-?} ms)"
    fi
    seen="phase ${phase:-(none)}, stable ${stable:-(none)}, canary ${canary:-(none)}"
    seen+=", weight ${weight:-0}%, step ${step:-0}, last analysis: $analysis"
    [ -z "$reconciling" ] || seen+="; $reconciling"
    if [ "$phase" = Ready ] && [ "$stable" = "$version" ] && [ -z "$canary" ]; then
      echo "promoted: version $version of $ns/$name serves all traffic ($seen)"
      exit 0
    fi
    if [ "$phase" = RolledBack ] && [ "$last_version" = "$version" ]; then
      echo "rolled back: version $version of $ns/$name was not promoted: ${reason:-no reason given}" \
        "(${outcome:-?}; $seen)" >&2
      exit 1
    fi
    if [ "$phase" = Failed ]; then
      echo "failed: $ns/$name: ${stalled:-no message} ($seen)" >&2
      exit 1
    fi
  else
    seen="$kubectl failed: $out"
  fi
  if [ "$seen" != "$last" ]; then
    echo "[$((SECONDS + timeout - deadline))s] $seen"
    last="$seen"
  fi
  if [ "$SECONDS" -ge "$deadline" ]; then
    echo "timed out: version $version of $ns/$name was not promoted within ${timeout}s;" \
      "last seen: $seen" >&2
    exit 1
  fi
  sleep "$every"
done
