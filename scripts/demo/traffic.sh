#!/usr/bin/env bash
# Prediction traffic for the demo's canary: POST /predict to URL at a steady rate until
# stopped (SIGTERM or SIGINT) or until --count requests were sent, then one summary line.
#
#   scripts/demo/traffic.sh URL [--host HOST] [--rate PER_SECOND] [--count N]
#
# URL is a base URL such as http://localhost:8080; --host sets the Host header (the
# ingress routes by it); --rate defaults to 20 requests a second. Each request is its own
# curl in the background (at most 80 in flight, each at most 10 s), so slow answers do
# not lower the rate. The bodies are JSON with their Content-Type, four iris rows in turn.
#
# The canary analysis needs spec.rollout.analysis.minRequests canary requests in a step's
# window: examples/minimal.yaml's first step sends 10% of the traffic for 60 s, so 20
# requests a second give about 120 canary requests where 20 are needed.
#
# Summary (stdout): "traffic: N requests to URL/predict in S s: 200 x N ..." with the count
# of each HTTP status (000: no answer). Exit status: 0 when at least one request got a
# 2xx answer, 1 when none did, 2 on bad arguments.
set -euo pipefail

usage() { echo "usage: $0 URL [--host HOST] [--rate PER_SECOND] [--count N]" >&2; exit 2; }

[ $# -ge 1 ] || usage
url="${1%/}"
shift
host=""
rate=20
count=0
while [ $# -gt 0 ]; do
  case "$1" in
    --host) host="${2:?}"; shift 2 ;;
    --rate) rate="${2:?}"; shift 2 ;;
    --count) count="${2:?}"; shift 2 ;;
    *) usage ;;
  esac
done
case "$url" in http://* | https://*) ;; *) echo "traffic: URL must start with http:// or https://: $url" >&2; exit 2 ;; esac
case "$rate" in '' | *[!0-9]* | 0) echo "traffic: --rate must be a whole number above 0: $rate" >&2; exit 2 ;; esac
case "$count" in '' | *[!0-9]*) echo "traffic: --count must be a whole number: $count" >&2; exit 2 ;; esac
command -v curl >/dev/null || { echo "traffic: needs curl" >&2; exit 2; }

pause="$(awk -v r="$rate" 'BEGIN { printf "%.4f", 1 / r }')"
bodies=(
  '{"features": [5.1, 3.5, 1.4, 0.2]}'
  '{"features": [6.7, 3.0, 5.2, 2.3]}'
  '{"features": [5.9, 3.0, 4.2, 1.5]}'
  '{"features": [6.3, 2.9, 5.6, 1.8]}'
)
headers=(-H 'Content-Type: application/json')
[ -z "$host" ] || headers+=(-H "Host: $host")
codes="$(mktemp)"
sent=0
started=$SECONDS

send() {  # BODY: one request; its status (000 without an answer) appended to $codes
  curl -sS -o /dev/null -w '%{http_code}\n' --max-time 10 "${headers[@]}" \
    -d "$1" "$url/predict" >>"$codes" 2>/dev/null || true
}

finish() {
  wait  # the requests in flight end within their 10 s
  local summary
  summary="$(sort "$codes" | uniq -c | awk '{ printf " %s x %s", $2, $1 }')"
  echo "traffic: $sent requests to $url/predict in $((SECONDS - started)) s:${summary:- none answered}"
  local ok
  ok="$(grep -c '^2' "$codes" || true)"
  rm -f "$codes"
  [ "$ok" -gt 0 ] || { echo "traffic: no request got a 2xx answer from $url" >&2; exit 1; }
  exit 0
}
trap finish TERM INT

while [ "$count" -eq 0 ] || [ "$sent" -lt "$count" ]; do
  send "${bodies[$((sent % ${#bodies[@]}))]}" &
  sent=$((sent + 1))
  if [ $((sent % 16)) -eq 0 ]; then  # now and then (counting costs a fork): a bound
    while [ "$(jobs -rp | wc -l)" -ge 64 ]; do sleep 0.05; done
  fi
  sleep "$pause"
done
finish
