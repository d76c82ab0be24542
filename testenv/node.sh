# shellcheck shell=bash
# The test stack's node: Debian's containerd + runc and a kubelet built from the pinned
# k8s.io/kubernetes, registered as node "regcred-node". Sourced by scripts/testenv.sh,
# which defines STATE, TESTENV, GOBIN_DIR, VENV, the ports and log/die.
#
# Everything lives under $NODE (.testenv/node): containerd's root, state and socket, the
# kubelet's root dir, pod logs, CNI config, registry hosts config. What the kubelet and
# containerd insist on putting elsewhere is recorded when first made and removed by
# node_teardown, which also unmounts what they mounted under $STATE, removes the cgroups
# under $CGROUP_ROOT, and puts back the kernel sysctls the kubelet changed. It never
# touches a process, mount or cgroup the stack did not create.

NODE=$STATE/node
NODE_NAME=regcred-node
# Pods' cgroups go under this parent in every cgroup v1 hierarchy (kubelet --cgroup-root),
# so teardown removes exactly what the node made.
CGROUP_ROOT=/regcred-node
CGROUP_FS=/sys/fs/cgroup
# Paths outside $NODE the kubelet (device-plugins socket, /var/log/containers links) and
# containerd's shims (/run/containerd/s) use whatever their flags say.
GLOBAL_PATHS=(/var/lib/kubelet /var/log/containers /run/containerd)
# The sysctls the kubelet sets at start (pkg/kubelet/cm setupKernelTunables); recorded
# before the first start and restored by teardown.
SYSCTLS=(vm/overcommit_memory vm/panic_on_oom kernel/panic kernel/panic_on_oops
  kernel/keys/root_maxkeys kernel/keys/root_maxbytes)
PAUSE_IMAGE=regcred.test/pause:1
# The access key id the kubelet's credential provider (regcred) signs with: tests set its
# token lifetime and count its calls at the fake AWS.
NODE_AWS_KEY=AKIAREGCREDNODE
NODE_TOKEN_TTL=${REGCRED_TEST_NODE_TOKEN_TTL:-90s}
# ECR-shaped hosts that containerd maps onto the registry fronts (hosts.toml): images named
# by them are what the kubelet asks the credential provider about.
ECR_HOST_A=$ACCOUNT.dkr.ecr.us-east-1.amazonaws.com
ECR_HOST_B=$ACCOUNT_B.dkr.ecr.eu-west-1.amazonaws.com

ctr_() { ctr --address "$NODE/containerd.sock" --namespace k8s.io "$@"; }

node_enabled() { [ "${REGCRED_TEST_NODE:-on}" != off ]; }

# ---------------------------------------------------------------------------- config

node_write_files() {
  mkdir -p "$NODE"/{cni,certs.d,plugins,pod-logs,kubelet,regcred-tokens}
  cat >"$NODE/containerd.toml" <<EOF
version = 2
root = "$NODE/containerd/root"
state = "$NODE/containerd/state"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.internal.v1.opt", "io.containerd.tracing.processor.v1.otlp"]
[grpc]
  address = "$NODE/containerd.sock"
[ttrpc]
  address = "$NODE/containerd.sock.ttrpc"
[plugins."io.containerd.grpc.v1.cri"]
  stream_server_address = "127.0.0.1"
  stream_server_port = "$STREAM_PORT"
  sandbox_image = "$PAUSE_IMAGE"
  # root here lacks CAP_SYS_RESOURCE: without this runc fails to lower OOM scores
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$NODE/cni"
  [plugins."io.containerd.grpc.v1.cri".registry]
    config_path = "$NODE/certs.d"
EOF
  # Pods use hostNetwork; the runtime reports NetworkReady only with a CNI config.
  echo '{"cniVersion": "1.0.0", "name": "loopback", "plugins": [{"type": "loopback"}]}' \
    >"$NODE/cni/10-loopback.conflist"
  # Any other registry (docker.io for an image never imported, say) goes to a closed port
  # on loopback: the node never reaches out past this machine.
  mkdir -p "$NODE/certs.d/_default"
  cat >"$NODE/certs.d/_default/hosts.toml" <<EOF
server = "https://127.0.0.1:1"
[host."https://127.0.0.1:1"]
  capabilities = ["pull", "resolve"]
EOF
  local host server pair
  for pair in "127.0.0.1:$REGISTRY_PORT=$REGISTRY_PORT" "127.0.0.1:$REGISTRY_B_PORT=$REGISTRY_B_PORT" \
    "$ECR_HOST_A=$REGISTRY_PORT" "$ECR_HOST_B=$REGISTRY_B_PORT"; do
    host=${pair%=*} server=https://127.0.0.1:${pair#*=}
    mkdir -p "$NODE/certs.d/$host"
    # `server` is also where containerd falls back to: never the real host.
    cat >"$NODE/certs.d/$host/hosts.toml" <<EOF
server = "$server"
[host."$server"]
  capabilities = ["pull", "resolve"]
  ca = "$STATE/pki/ca.crt"
EOF
  done
  kubeconfig_file "$NODE/kubelet.kubeconfig" kubelet
  cat >"$NODE/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: 127.0.0.1
port: $KUBELET_PORT
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: $KUBELET_HEALTHZ_PORT
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: false}
  x509: {clientCAFile: $STATE/pki/ca.crt}
authorization: {mode: AlwaysAllow}
containerRuntimeEndpoint: unix://$NODE/containerd.sock
podLogsDir: $NODE/pod-logs
# cgroup v1 hybrid: kubelet >= 1.35 refuses it unless told; containerd 1.6 does not say
# which driver it uses, so the kubelet takes this one.
failCgroupV1: false
cgroupDriver: cgroupfs
cgroupRoot: $CGROUP_ROOT
oomScoreAdj: 0
failSwapOn: false
makeIPTablesUtilChains: false
clusterDNS: []
resolvConf: /etc/resolv.conf
serializeImagePulls: false
# Nothing evicts or garbage-collects images on a test node.
evictionHard: {memory.available: "1Mi", nodefs.available: "0%", imagefs.available: "0%"}
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
registerNode: true
nodeStatusUpdateFrequency: 4s
EOF
  # The shipped credential-provider example, unchanged but for what a test node needs:
  # the plugin's cache under $NODE and the fake AWS in its environment.
  "$VENV/bin/python" - "$ROOT/deploy/kubelet/credential-provider-config.yaml" \
    "$NODE/credential-provider-config.yaml" "$NODE/regcred-tokens" <<EOF
import sys, yaml
src, dst, cache = sys.argv[1:]
config = yaml.safe_load(open(src))
[provider] = config["providers"]
args = provider["args"]
args[args.index("--cache-dir") + 1] = cache
provider["env"] = [{"name": k, "value": v} for k, v in [
    ("AWS_ENDPOINT_URL", "http://127.0.0.1:$AWS_PORT"),
    ("AWS_ENDPOINT_URL_ECR_PUBLIC", "http://127.0.0.1:$PUBLIC_PORT"),
    ("AWS_ACCESS_KEY_ID", "$NODE_AWS_KEY"),
    ("AWS_SECRET_ACCESS_KEY", "testing"),
    ("AWS_REGION", "us-east-1"),
    ("AWS_EC2_METADATA_DISABLED", "true"),
]]
yaml.safe_dump(config, open(dst, "w"), sort_keys=False)
EOF
}

# The regcred binary the kubelet runs as its credential provider: this checkout's build.
node_plugin() {
  local bin=$ROOT/target/debug/regcred
  if [ ! -x "$bin" ]; then
    log "building regcred for the node's credential provider"
    (cd "$ROOT" && cargo build --quiet --bin regcred) >&2
  fi
  ln -sfn "$bin" "$NODE/plugins/regcred"
}

# ---------------------------------------------------------------------------- host state

node_prepare_host() {
  local p h adopted=0
  # What the node will create outside $NODE, recorded once so teardown removes only that.
  if [ ! -e "$NODE/created" ]; then
    : >"$NODE/created.tmp"
    for p in "${GLOBAL_PATHS[@]}"; do [ -e "$p" ] || echo "$p" >>"$NODE/created.tmp"; done
    for p in "${SYSCTLS[@]}"; do echo "sysctl $p $(cat "/proc/sys/$p")" >>"$NODE/created.tmp"; done
    mv "$NODE/created.tmp" "$NODE/created"
  fi
  for h in "$CGROUP_FS"/*/; do
    h=${h%/}
    mountpoint -q "$h" || continue
    grep -qxF "cgroup $h$CGROUP_ROOT" "$NODE/created" && continue
    if [ -d "$h$CGROUP_ROOT" ]; then
      # Left by a stack that was killed before its teardown (its state folder may be gone,
      # as in a fresh checkout): ours by name, so adopt it for teardown, unless a node runs
      # in it now.
      [ -z "$(find "$h$CGROUP_ROOT" -name cgroup.procs -exec cat {} + 2>/dev/null)" ] ||
        die "cgroup $h$CGROUP_ROOT has processes: another regcred test node runs on this machine (REGCRED_TEST_NODE=off, or stop it first)"
      echo "cgroup $h$CGROUP_ROOT" >>"$NODE/created"
      adopted=1
      continue
    fi
    echo "cgroup $h$CGROUP_ROOT" >>"$NODE/created"
    # The v2 part of the hybrid: the kubelet makes its folders there itself.
    [ "$(basename "$h")" = unified ] && continue
    mkdir "$h$CGROUP_ROOT"
    if [ -e "$h/cpuset.cpus" ]; then # a new cpuset takes no task until it has cpus and mems
      cat "$h/cpuset.cpus" >"$h$CGROUP_ROOT/cpuset.cpus"
      cat "$h/cpuset.mems" >"$h$CGROUP_ROOT/cpuset.mems"
    fi
  done
  [ $adopted = 0 ] || log "adopted the cgroups $CGROUP_ROOT an earlier stack left behind (killed before its teardown); down removes them"
}

node_images() {
  local dir
  ctr_ images check "name==$PAUSE_IMAGE" 2>/dev/null | grep -q complete && return
  dir=$(mktemp -d "$STATE/pause.XXXXXX")
  "$VENV/bin/python" "$TESTENV/make_image.py" "$dir/oci" 1 --name "$PAUSE_IMAGE" \
    --file /bin/busybox:bin/busybox:755 --entrypoint '["/bin/busybox", "sleep", "2147483647"]' >/dev/null
  tar -C "$dir/oci" -cf "$dir/pause.tar" .
  ctr_ images import "$dir/pause.tar" >/dev/null
  rm -rf "$dir"
  log "imported $PAUSE_IMAGE into containerd"
}

node_ready() { # the Node object says Ready
  curl -sf --max-time 5 --cacert "$STATE/pki/ca.crt" --cert "$STATE/pki/admin.crt" \
    --key "$STATE/pki/admin.key" "https://127.0.0.1:$APISERVER_PORT/api/v1/nodes/$NODE_NAME" |
    "$VENV/bin/python" -c 'import json, sys
conditions = json.load(sys.stdin)["status"].get("conditions", [])
sys.exit(0 if any(c["type"] == "Ready" and c["status"] == "True" for c in conditions) else 1)' 2>/dev/null
}

wait_node_ready() {
  local start deadline
  start=$(ms) deadline=$((SECONDS + READY_TIMEOUT))
  until node_ready; do
    live_pid kubelet >/dev/null || { tail -n 30 "$STATE/logs/kubelet.log" >&2; die "kubelet exited"; }
    [ $SECONDS -lt $deadline ] || die "node $NODE_NAME not Ready after ${READY_TIMEOUT}s (log: $STATE/logs/kubelet.log)"
    sleep 0.5
  done
  log "node $NODE_NAME Ready after $(( $(ms) - start )) ms"
}

# ---------------------------------------------------------------------------- teardown

# Our shims: containerd-shim-runc-v2 processes started for our containerd's socket.
node_shims() {
  local pid
  for pid in $(pgrep -f containerd-shim-runc-v2 || true); do
    tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "-address $NODE/containerd.sock" && echo "$pid"
  done
}

# Stops every container the node runs (through containerd, which unmounts their rootfs),
# then containerd's shims; called with containerd still up.
node_stop_containers() {
  local id
  [ -S "$NODE/containerd.sock" ] && live_pid containerd >/dev/null || return 0
  for id in $(ctr_ tasks ls -q 2>/dev/null); do ctr_ tasks kill -s SIGKILL "$id" >/dev/null 2>&1 || true; done
  for id in $(ctr_ tasks ls -q 2>/dev/null); do
    ctr_ tasks delete -f "$id" >/dev/null 2>&1 || true
  done
  for id in $(ctr_ containers ls -q 2>/dev/null); do ctr_ containers delete "$id" >/dev/null 2>&1 || true; done
}

node_teardown() {
  local pid m p kind what i
  [ -e "$NODE" ] || return 0
  for pid in $(node_shims); do kill -KILL "$pid" 2>/dev/null || true; done
  # Whatever still runs in the node's own cgroups (containers whose shim is gone).
  if [ -e "$NODE/created" ]; then
    for what in $(awk '$1 == "cgroup" {print $2}' "$NODE/created"); do
      for pid in $(find "$what" -name cgroup.procs -exec cat {} + 2>/dev/null); do
        kill -KILL "$pid" 2>/dev/null || true
      done
    done
  fi
  # Mounts under the state folder, deepest first (pod volumes, rootfs, shm, netns, and the
  # kubelet's bind mount of its own root dir).
  for i in 1 2 3; do
    m=$(awk -v top="$STATE/" 'index($5, top) == 1 {print $5}' /proc/self/mountinfo | awk '{print length, $0}' |
      sort -rn | cut -d' ' -f2-)
    [ -z "$m" ] && break
    while read -r p; do umount "$p" 2>/dev/null || umount -l "$p" 2>/dev/null || true; done <<<"$m"
  done
  [ -e "$NODE/created" ] || return 0
  while read -r kind what rest; do
    case $kind in
      cgroup) for i in $(seq 1 50); do # killed tasks take a moment to leave
          [ -d "$what" ] || break
          find "$what" -depth -type d -exec rmdir {} + 2>/dev/null || sleep 0.1
        done
        [ -d "$what" ] && log "warning: could not remove cgroup $what (still in use?)" ;;
      sysctl) echo "$rest" >"/proc/sys/$what" 2>/dev/null || log "warning: could not restore sysctl $what" ;;
      /*) rm -rf "$kind" ;;
    esac
  done <"$NODE/created"
  rm -f "$NODE/created"
}

# What of the node is still on this machine: processes started for our containerd or from
# our binaries, mounts under $STATE, cgroups under $CGROUP_ROOT. Prints them; fails if any.
node_leftovers() {
  local found=0 pid cmd p
  for pid in $(pgrep -f "$NODE/|$GOBIN_DIR/kubelet" || true); do
    [ "$pid" = $$ ] && continue
    cmd=$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null) || continue
    case $cmd in *pgrep*) continue ;; esac
    echo "process $pid: $cmd"; found=1
  done
  while read -r p; do echo "mount $p"; found=1; done < <(awk -v top="$STATE/" 'index($5, top) == 1 {print $5}' /proc/self/mountinfo)
  for p in "$CGROUP_FS"/*"$CGROUP_ROOT"; do
    [ -d "$p" ] && { echo "cgroup $p"; found=1; }
  done
  return $found
}
