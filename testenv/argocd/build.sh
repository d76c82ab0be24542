#!/usr/bin/env bash
# Builds the Argo CD driver (main.go: Argo CD's own code reading repository Secrets and
# pulling Helm charts, at the release go.mod pins) into DIR. Called by
# `scripts/testenv.sh install`; about 10 min on 2 cores cold.
#
#   testenv/argocd/build.sh DIR
set -euo pipefail
out=${1:?usage: $0 DIR}
cd "$(dirname "$0")"
command -v go >/dev/null || { echo "go is not installed (needed to build the Argo CD driver)" >&2; exit 1; }
version=$(go list -m -f '{{.Version}}' github.com/argoproj/argo-cd/v3)
# Build next to the target and rename into place: a killed build leaves no half binary.
mkdir -p "$(dirname "$out")"
tmp=$(mktemp -d "$(dirname "$out")/.build.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
start=$SECONDS
echo "testenv: building the Argo CD $version driver into $out" >&2
CGO_ENABLED=0 go build -trimpath -ldflags="-s -w" -o "$tmp/argocd-driver" .
rm -rf "$out"
mv "$tmp" "$out"
trap - EXIT
echo "testenv: Argo CD driver built in $((SECONDS - start))s" >&2
