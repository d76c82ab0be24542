#!/usr/bin/env bash
# Runs kube-controller-manager in the foreground (exec) against the stack's API server, as
# system:kube-controller-manager, serving /healthz on https://127.0.0.1:PORT.
#
#   testenv/start-controller-manager.sh PORT STATE_DIR [extra flags...]
#
# It makes the test cluster behave like a real one: namespaces finish deleting, every
# namespace gets its "default" ServiceAccount and kube-root-ca.crt, Deployments, Jobs and
# CronJobs run, the garbage collector and the token controller work. One instance, no
# leader election. The binary comes from $REGCRED_TEST_BIN, else <repo>/.testenv/bin.
set -euo pipefail
[ $# -ge 2 ] || { echo "usage: $0 PORT STATE_DIR [kube-controller-manager flags...]" >&2; exit 2; }
port=$1 state=$2; shift 2
pki=$state/pki kubeconfig=$state/kube-controller-manager.kubeconfig
bin=${REGCRED_TEST_BIN:-$(cd "$(dirname "$0")/.." && pwd)/.testenv/bin}
exec "$bin/kube-controller-manager" \
  --kubeconfig="$kubeconfig" \
  --authentication-kubeconfig="$kubeconfig" \
  --authorization-kubeconfig="$kubeconfig" \
  --bind-address=127.0.0.1 \
  --secure-port="$port" \
  --tls-cert-file="$pki/controlplane.crt" \
  --tls-private-key-file="$pki/controlplane.key" \
  --leader-elect=false \
  --use-service-account-credentials=true \
  --service-account-private-key-file="$pki/sa.key" \
  --root-ca-file="$pki/ca.crt" \
  --cluster-signing-cert-file="$pki/ca.crt" \
  --cluster-signing-key-file="$pki/ca.key" \
  --service-cluster-ip-range=10.0.0.0/24 \
  --profiling=false \
  "$@"
