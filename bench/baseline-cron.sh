#!/usr/bin/env bash
# The usual ECR rotation script, for comparison only (`make bench` times it against
# `regcred sync`). Serial, like the real thing: for each namespace holding the secret (or
# each namespace given), fetch a token with the AWS CLI, delete the secret, create it again.
#
#   bench/baseline-cron.sh SECRET_NAME REGISTRY_HOST [NAMESPACE...]
#
# Uses $KUBECTL (default kubectl) with $KUBECONFIG, and $AWS (default aws) with the usual
# AWS_* environment (AWS_ENDPOINT_URL points it at the test stack).
set -euo pipefail
[ $# -ge 2 ] || { echo "usage: $0 SECRET_NAME REGISTRY_HOST [NAMESPACE...]" >&2; exit 2; }
secret=$1 registry=$2; shift 2
kubectl=${KUBECTL:-kubectl}
aws=${AWS:-aws}

if [ $# -gt 0 ]; then
  namespaces=("$@")
else
  mapfile -t namespaces < <("$kubectl" get secrets --all-namespaces \
    --field-selector "metadata.name=$secret" \
    -o jsonpath='{range .items[*]}{.metadata.namespace}{"\n"}{end}')
fi

for ns in "${namespaces[@]}"; do
  password=$("$aws" ecr get-login-password)
  "$kubectl" --namespace "$ns" delete secret "$secret" --ignore-not-found >/dev/null
  "$kubectl" --namespace "$ns" create secret docker-registry "$secret" \
    --docker-server="$registry" --docker-username=AWS --docker-password="$password" >/dev/null
done
echo "rotated ${#namespaces[@]} namespaces"
