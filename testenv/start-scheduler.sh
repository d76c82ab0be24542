#!/usr/bin/env bash
# Runs kube-scheduler in the foreground (exec) against the stack's API server, as
# system:kube-scheduler, serving /healthz on https://127.0.0.1:PORT. One instance, no
# leader election. The binary comes from $REGCRED_TEST_BIN, else <repo>/.testenv/bin.
#
#   testenv/start-scheduler.sh PORT STATE_DIR [extra flags...]
set -euo pipefail
[ $# -ge 2 ] || { echo "usage: $0 PORT STATE_DIR [kube-scheduler flags...]" >&2; exit 2; }
port=$1 state=$2; shift 2
pki=$state/pki kubeconfig=$state/kube-scheduler.kubeconfig
bin=${REGCRED_TEST_BIN:-$(cd "$(dirname "$0")/.." && pwd)/.testenv/bin}
exec "$bin/kube-scheduler" \
  --kubeconfig="$kubeconfig" \
  --authentication-kubeconfig="$kubeconfig" \
  --authorization-kubeconfig="$kubeconfig" \
  --bind-address=127.0.0.1 \
  --secure-port="$port" \
  --tls-cert-file="$pki/controlplane.crt" \
  --tls-private-key-file="$pki/controlplane.key" \
  --leader-elect=false \
  --profiling=false \
  "$@"
