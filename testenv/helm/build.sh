#!/usr/bin/env bash
# Builds helm (helm.sh/helm/v3, pinned in go.mod) and kubectl (k8s.io/kubectl, at the
# version Helm's dependencies select) into DIR, stamped with their versions as their own
# release builds do. Called by `scripts/testenv.sh install`; about 3 min on 2 cores cold.
#
#   testenv/helm/build.sh DIR
set -euo pipefail
out=${1:?usage: $0 DIR}
cd "$(dirname "$0")"
command -v go >/dev/null || { echo "go is not installed (needed to build helm and kubectl)" >&2; exit 1; }
helm_version=$(go list -m -f '{{.Version}}' helm.sh/helm/v3)
k8s_modules=$(go list -m -f '{{.Version}}' k8s.io/client-go) # v0.37.0 means Kubernetes 1.37
k8s_minor=$(echo "$k8s_modules" | cut -d. -f2)
k8s_version=v1.${k8s_modules#v0.}
ldflags="-s -w -X helm.sh/helm/v3/internal/version.version=$helm_version"
ldflags+=" -X helm.sh/helm/v3/internal/version.gitTreeState=clean"
for pkg in helm.sh/helm/v3/pkg/lint/rules helm.sh/helm/v3/pkg/chartutil; do
  ldflags+=" -X $pkg.k8sVersionMajor=1 -X $pkg.k8sVersionMinor=$k8s_minor"
done
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  ldflags+=" -X $pkg.gitVersion=$k8s_version -X $pkg.gitMajor=1 -X $pkg.gitMinor=$k8s_minor -X $pkg.gitTreeState=clean"
done
# Build next to the target and rename into place: a killed build leaves no half binary.
mkdir -p "$(dirname "$out")"
tmp=$(mktemp -d "$(dirname "$out")/.build.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
start=$SECONDS
echo "testenv: building helm $helm_version and kubectl $k8s_version into $out" >&2
CGO_ENABLED=0 go build -trimpath -ldflags="$ldflags" -o "$tmp/" helm.sh/helm/v3/cmd/helm ./kubectl
rm -rf "$out"
mv "$tmp" "$out"
trap - EXIT
echo "testenv: helm and kubectl built in $((SECONDS - start))s" >&2
