#!/usr/bin/env bash
# Put kind, kubectl and helm into ./bin when they are not on PATH, each verified
# against its SHA-256 before it is installed. Prints the directory to put on PATH.
#
# The checksum is the one the project publishes next to each download (kind's
# .sha256sum, dl.k8s.io's kubectl.sha256, get.helm.sh's .sha256sum), fetched over
# HTTPS; pin your own with KIND_SHA256, KUBECTL_SHA256 or HELM_SHA256.
set -euo pipefail

KIND_VERSION="${KIND_VERSION:-v0.27.0}"
KUBECTL_VERSION="${KUBECTL_VERSION:-v1.32.2}"
HELM_VERSION="${HELM_VERSION:-v3.17.1}"
BIN="${BIN:-$(cd "$(dirname "$0")/.." && pwd)/bin}"

os="$(uname -s | tr '[:upper:]' '[:lower:]')"
case "$(uname -m)" in
  x86_64 | amd64) arch=amd64 ;;
  aarch64 | arm64) arch=arm64 ;;
  *) echo "fetch-tools: unsupported machine $(uname -m)" >&2; exit 1 ;;
esac

mkdir -p "$BIN"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

verify() {  # FILE EXPECTED_SHA256
  local actual
  actual="$(sha256sum "$1" | awk '{print $1}')"
  if [ "$actual" != "$2" ]; then
    echo "fetch-tools: checksum mismatch for $1: expected $2, got $actual" >&2
    exit 1
  fi
}

have() { command -v "$1" >/dev/null 2>&1 || [ -x "$BIN/$1" ]; }

if ! have kind; then
  url="https://kind.sigs.k8s.io/dl/${KIND_VERSION}/kind-${os}-${arch}"
  echo "fetching kind ${KIND_VERSION}" >&2
  curl -fsSL --retry 3 -o "$tmp/kind" "$url"
  verify "$tmp/kind" "${KIND_SHA256:-$(curl -fsSL --retry 3 "$url.sha256sum" | awk '{print $1}')}"
  install -m 0755 "$tmp/kind" "$BIN/kind"
fi

if ! have kubectl; then
  url="https://dl.k8s.io/release/${KUBECTL_VERSION}/bin/${os}/${arch}/kubectl"
  echo "fetching kubectl ${KUBECTL_VERSION}" >&2
  curl -fsSL --retry 3 -o "$tmp/kubectl" "$url"
  verify "$tmp/kubectl" "${KUBECTL_SHA256:-$(curl -fsSL --retry 3 "$url.sha256")}"
  install -m 0755 "$tmp/kubectl" "$BIN/kubectl"
fi

if ! have helm; then
  archive="helm-${HELM_VERSION}-${os}-${arch}.tar.gz"
  echo "fetching helm ${HELM_VERSION}" >&2
  curl -fsSL --retry 3 -o "$tmp/$archive" "https://get.helm.sh/$archive"
  verify "$tmp/$archive" \
    "${HELM_SHA256:-$(curl -fsSL --retry 3 "https://get.helm.sh/$archive.sha256sum" | awk '{print $1}')}"
  tar -xzf "$tmp/$archive" -C "$tmp"
  install -m 0755 "$tmp/${os}-${arch}/helm" "$BIN/helm"
fi

echo "$BIN"
