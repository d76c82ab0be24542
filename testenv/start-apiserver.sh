#!/usr/bin/env bash
# Runs kube-apiserver in the foreground (exec, so the caller's PID is the server's) on
# https://127.0.0.1:PORT, storing under ETCD_PREFIX in the etcd at $REGCRED_TEST_ETCD
# (default http://127.0.0.1:23790), with the certificates in STATE_DIR/pki that
# `scripts/testenv.sh up` made. Tests start a private second apiserver with another port
# and prefix (a fresh, empty cluster that trusts the same CA and admin certificate).
#
#   testenv/start-apiserver.sh PORT ETCD_PREFIX STATE_DIR [extra kube-apiserver flags...]
#
# The binary comes from $REGCRED_TEST_BIN, else <repo>/.testenv/bin.
# Flags follow controller-runtime's envtest, plus Node and RBAC authorization and a
# service-account issuer. A private apiserver started alone has no controller-manager: its
# new namespaces get no "default" ServiceAccount and deleted ones stay Terminating.
set -euo pipefail
[ $# -ge 3 ] || { echo "usage: $0 PORT ETCD_PREFIX STATE_DIR [kube-apiserver flags...]" >&2; exit 2; }
port=$1 prefix=$2 pki=$3/pki; shift 3
bin=${REGCRED_TEST_BIN:-$(cd "$(dirname "$0")/.." && pwd)/.testenv/bin}
issuer=https://kubernetes.default.svc
exec "$bin/kube-apiserver" \
  --bind-address=127.0.0.1 \
  --advertise-address=127.0.0.1 \
  --secure-port="$port" \
  --tls-cert-file="$pki/apiserver.crt" \
  --tls-private-key-file="$pki/apiserver.key" \
  --client-ca-file="$pki/ca.crt" \
  --authorization-mode=Node,RBAC \
  --enable-admission-plugins=NodeRestriction \
  --service-account-issuer="$issuer" \
  --api-audiences="$issuer" \
  --service-account-key-file="$pki/sa.pub" \
  --service-account-signing-key-file="$pki/sa.key" \
  --service-cluster-ip-range=10.0.0.0/24 \
  --etcd-servers="${REGCRED_TEST_ETCD:-http://127.0.0.1:23790}" \
  --etcd-prefix="$prefix" \
  --allow-privileged=true \
  --profiling=false \
  "$@"
