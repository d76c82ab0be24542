#!/usr/bin/env bash
# Runs etcd in the foreground (exec, so the caller's PID is etcd's) on 127.0.0.1.
#
#   testenv/start-etcd.sh CLIENT_PORT PEER_PORT DATA_DIR [extra etcd flags...]
#
# The binary comes from $REGCRED_TEST_BIN, else <repo>/.testenv/bin (set up by
# `scripts/testenv.sh up`). Tests use this to run private instances with their own data dir.
set -euo pipefail
[ $# -ge 3 ] || { echo "usage: $0 CLIENT_PORT PEER_PORT DATA_DIR [etcd flags...]" >&2; exit 2; }
client=$1 peer=$2 data=$3; shift 3
bin=${REGCRED_TEST_BIN:-$(cd "$(dirname "$0")/.." && pwd)/.testenv/bin}
mkdir -p "$data"
# --unsafe-no-fsync: test data is throwaway, and fsync is most of etcd's latency on slow disks.
exec "$bin/etcd" \
  --name=default \
  --data-dir="$data" \
  --listen-client-urls="http://127.0.0.1:$client" \
  --advertise-client-urls="http://127.0.0.1:$client" \
  --listen-peer-urls="http://127.0.0.1:$peer" \
  --initial-advertise-peer-urls="http://127.0.0.1:$peer" \
  --initial-cluster="default=http://127.0.0.1:$peer" \
  --unsafe-no-fsync \
  --log-level=warn \
  "$@"
