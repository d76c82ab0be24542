#!/usr/bin/env bash
# regcred's local test stack, all on 127.0.0.1 (see testenv/README.md):
#   a cluster built from the Kubernetes Go modules (testenv/go.mod): etcd, kube-apiserver
#   (RBAC on), kube-controller-manager, kube-scheduler, and a kubelet node running pods with
#   Debian's containerd and runc (testenv/node.sh; REGCRED_TEST_NODE=off leaves it out);
#   moto as AWS, wrapped by testenv/fake_aws.py (token lifetimes, ECR Public, call counters,
#   a fresh password per token);
#   Debian's docker-registry behind testenv/registry_front.py, which admits a password only
#   while the token it came in is valid, as ECR does; one door per AWS account.
#
#   scripts/testenv.sh install   apt packages, Python venv, Go builds (cached; fast when present)
#   scripts/testenv.sh up        install if needed, start what is down, write .testenv/env
#   scripts/testenv.sh down      stop what `up` started (by recorded PID), wipe the data
#   scripts/testenv.sh status    what runs (exit 0 only when everything is up and healthy)
#   scripts/testenv.sh env       print the path of the env file (`source "$(... env)"`)
#   scripts/testenv.sh leftovers after down: fail if a process, mount or cgroup of the node remains
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
TESTENV=$ROOT/testenv
STATE=$ROOT/.testenv
CACHE=${REGCRED_CACHE_DIR:-$HOME/.cache/regcred}

# REGCRED_TEST_PORT_OFFSET moves every port, so a second checkout (a git worktree) can run
# a stack of its own beside this one; its state lives in its own .testenv/.
OFF=${REGCRED_TEST_PORT_OFFSET:-0}
[[ $OFF =~ ^[0-9]?00$|^0$ ]] || { echo "testenv: REGCRED_TEST_PORT_OFFSET must be 0, 100, 200 ... 900" >&2; exit 2; }
ETCD_PORT=$((23790 + OFF)) ETCD_PEER_PORT=$((23800 + OFF)) APISERVER_PORT=$((26443 + OFF))
AWS_PORT=$((25000 + OFF)) PUBLIC_PORT=$((25001 + OFF))
REGISTRY_PORT=$((25002 + OFF)) REGISTRY_BACKEND_PORT=$((25003 + OFF)) REGISTRY_B_PORT=$((25004 + OFF))
KCM_PORT=$((25010 + OFF)) SCHEDULER_PORT=$((25011 + OFF)) STREAM_PORT=$((25012 + OFF))
KUBELET_PORT=$((25013 + OFF)) KUBELET_HEALTHZ_PORT=$((25014 + OFF))
ACCOUNT=123456789012   # moto's default account, behind the registry door on REGISTRY_PORT
ACCOUNT_B=210987654321 # a second account (reached by AssumeRole), its door on REGISTRY_B_PORT
IMAGE_PATH=regcred/hello:1.0
READY_TIMEOUT=${REGCRED_TEST_READY_TIMEOUT:-180}
# Start order; stopped in reverse.
SERVICES=(etcd kube-apiserver kube-controller-manager kube-scheduler registry fake-aws containerd kubelet)

sha12() { cat "$@" | sha256sum | cut -c1-12; }
K8S_VERSION=$(awk '$1 == "require" && $2 == "k8s.io/kubernetes" {print $3} $1 == "k8s.io/kubernetes" {print $2}' "$TESTENV/go.mod")
# Stamp the version as Kubernetes' own build does; without it the server reports
# v0.0.0-master+$Format:%H$, which kubectl (and maybe other clients) cannot parse.
LDFLAGS="" K8S_MINOR=${K8S_VERSION#v1.} K8S_MINOR=${K8S_MINOR%%.*}
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  LDFLAGS+=" -X $pkg.gitVersion=$K8S_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$K8S_MINOR -X $pkg.gitTreeState=clean"
done
# The folder names change with go.sum, the build flags, or requirements.txt.
GOBIN_DIR=$CACHE/go-k8s-$K8S_VERSION-$(sha12 "$TESTENV/go.sum" <(echo "$LDFLAGS"))/bin
VENV=$CACHE/venv-$(sha12 "$TESTENV/requirements.txt")
# helm and kubectl for the chart tests, from their own Go module (testenv/helm).
HELM_VERSION=$(awk '$1 == "helm.sh/helm/v3" {print $2}' "$TESTENV/helm/go.mod")
TOOLS_DIR=$CACHE/helm-$HELM_VERSION-$(sha12 "$TESTENV/helm/go.sum" "$TESTENV/helm/build.sh" "$TESTENV/helm/kubectl/main.go")/bin
# Argo CD's own code reading repository Secrets, for the Argo CD format tests (testenv/argocd).
ARGOCD_VERSION=$(awk '$1 == "github.com/argoproj/argo-cd/v3" {print $2}' "$TESTENV/argocd/go.mod")
ARGOCD_DIR=$CACHE/argocd-$ARGOCD_VERSION-$(sha12 "$TESTENV/argocd/go.sum" "$TESTENV/argocd/build.sh" "$TESTENV/argocd/main.go")/bin

log() { echo "testenv: $*" >&2; }
die() { log "error: $*"; exit 1; }

# shellcheck source=testenv/node.sh
source "$TESTENV/node.sh"

# ---------------------------------------------------------------------------- install

install_apt() {
  local missing=() pair
  for pair in docker-registry:docker-registry skopeo:skopeo htpasswd:apache2-utils openssl:openssl curl:curl \
    containerd:containerd runc:runc /usr/lib/cni/loopback:containernetworking-plugins \
    /bin/busybox:busybox-static; do
    command -v "${pair%%:*}" >/dev/null || missing+=("${pair#*:}")
  done
  python3 -c 'import ensurepip, venv' 2>/dev/null || missing+=(python3-venv)
  [ ${#missing[@]} -eq 0 ] && return
  [ "$(id -u)" = 0 ] || die "missing packages: ${missing[*]} (run as root, or: sudo apt-get install -y ${missing[*]})"
  log "installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q >&2
  apt-get install -y -q "${missing[@]}" >&2
  for pair in docker-registry skopeo htpasswd openssl curl containerd runc /usr/lib/cni/loopback /bin/busybox; do
    command -v "$pair" >/dev/null || die "$pair still missing after apt-get install"
  done
}

install_venv() {
  # A venv is not relocatable, so it is built in place; .complete marks a finished one.
  [ -e "$VENV/.complete" ] && "$VENV/bin/python" -c '' 2>/dev/null && return
  log "creating Python venv $VENV"
  rm -rf "$VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check -r "$TESTENV/requirements.txt" >&2
  touch "$VENV/.complete"
}

GO_BINARIES=(kube-apiserver kube-controller-manager kube-scheduler kubelet etcd credprovider-driver)

install_go() {
  local b missing=0
  for b in "${GO_BINARIES[@]}"; do [ -x "$GOBIN_DIR/$b" ] || missing=1; done
  [ $missing = 1 ] || return 0
  command -v go >/dev/null || die "go is not installed (needed to build kube-apiserver and etcd)"
  # Build into a temp folder and rename it into place: a killed build leaves no half binary.
  local start=$SECONDS
  GO_TMP=$(mktemp -d "$CACHE/go-build.XXXXXX")
  trap 'rm -rf "$GO_TMP"' EXIT
  chmod 755 "$GO_TMP" # mktemp makes it 0700
  log "building Kubernetes $K8S_VERSION (${GO_BINARIES[*]}) into $GOBIN_DIR (first time only; about 5 min on 2 cores)"
  (cd "$TESTENV" && CGO_ENABLED=0 go build -trimpath -ldflags="$LDFLAGS" -o "$GO_TMP/bin/" \
    k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager \
    k8s.io/kubernetes/cmd/kube-scheduler k8s.io/kubernetes/cmd/kubelet go.etcd.io/etcd/server/v3 \
    ./cmd/credprovider-driver) >&2 # the kubelet's credential-provider plugin code, for tests
  # go names the etcd main package (module root go.etcd.io/etcd/server/v3) "server"
  mv "$GO_TMP/bin/server" "$GO_TMP/bin/etcd"
  rm -rf "$(dirname "$GOBIN_DIR")"
  mv "$GO_TMP" "$(dirname "$GOBIN_DIR")"
  trap - EXIT
  log "Go build took $((SECONDS - start))s"
}

install() {
  mkdir -p "$CACHE"
  exec 8>"$CACHE/install.lock" # one install at a time per cache (parallel `up`s)
  flock 8
  install_apt
  install_venv
  install_go
  [ -x "$TOOLS_DIR/helm" ] && [ -x "$TOOLS_DIR/kubectl" ] || "$TESTENV/helm/build.sh" "$TOOLS_DIR"
  [ -x "$ARGOCD_DIR/argocd-driver" ] || "$TESTENV/argocd/build.sh" "$ARGOCD_DIR"
  exec 8>&-
}

# ---------------------------------------------------------------------------- config files

make_pki() {
  local d=$STATE/pki
  [ -e "$d/.complete" ] && return
  rm -rf "$d" && mkdir -p "$d/registry-certs"
  log "creating test CA and certificates in $d"
  openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=regcred-test-ca" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
    -keyout "$d/ca.key" -out "$d/ca.crt" 2>/dev/null
  local serving="subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth"
  leaf_cert apiserver "/CN=kube-apiserver" "$serving"
  leaf_cert registry "/CN=regcred-test-registry" "$serving"
  leaf_cert controlplane "/CN=regcred-test-controlplane" "$serving"
  leaf_cert admin "/O=system:masters/CN=regcred-admin" "extendedKeyUsage=clientAuth"
  leaf_cert kube-controller-manager "/CN=system:kube-controller-manager" "extendedKeyUsage=clientAuth"
  leaf_cert kube-scheduler "/CN=system:kube-scheduler" "extendedKeyUsage=clientAuth"
  leaf_cert kubelet "/O=system:nodes/CN=system:node:regcred-node" "extendedKeyUsage=clientAuth"
  # The service-account token signing key pair.
  openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$d/sa.key" 2>/dev/null
  openssl pkey -in "$d/sa.key" -pubout -out "$d/sa.pub"
  cp "$d/ca.crt" "$d/registry-certs/ca.crt" # skopeo's --cert-dir wants a folder of *.crt
  touch "$d/.complete"
}

leaf_cert() { # NAME SUBJECT EXTENSIONS: a key and a certificate signed by the test CA
  local d=$STATE/pki
  openssl req -new -newkey rsa:2048 -nodes -subj "$2" -keyout "$d/$1.key" -out "$d/$1.csr" 2>/dev/null
  openssl x509 -req -in "$d/$1.csr" -CA "$d/ca.crt" -CAkey "$d/ca.key" -CAcreateserial -days 3650 \
    -extfile <(printf 'basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n%b\n' "$3") \
    -out "$d/$1.crt" 2>/dev/null
  rm "$d/$1.csr"
}

kubeconfig_file() { # FILE CERT: a kubeconfig for the stack's API server with pki/CERT.{crt,key}
  local pki=$STATE/pki b64='base64 -w0'
  cat >"$1" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: regcred-test
  cluster:
    server: https://127.0.0.1:$APISERVER_PORT
    certificate-authority-data: $($b64 "$pki/ca.crt")
users:
- name: $2
  user:
    client-certificate-data: $($b64 "$pki/$2.crt")
    client-key-data: $($b64 "$pki/$2.key")
contexts:
- name: regcred-test
  context: {cluster: regcred-test, user: $2, namespace: default}
current-context: regcred-test
EOF
  chmod 600 "$1"
}

write_files() {
  local pki=$STATE/pki backend_pw
  kubeconfig_file "$STATE/kubeconfig" admin
  kubeconfig_file "$STATE/kube-controller-manager.kubeconfig" kube-controller-manager
  kubeconfig_file "$STATE/kube-scheduler.kubeconfig" kube-scheduler
  # Always our own policy, so skopeo behaves the same whether /etc/containers has one or not.
  echo '{"default": [{"type": "insecureAcceptAnything"}]}' >"$STATE/policy.json"
  mkdir -p "$STATE/registry"
  # The registry behind the doors takes one credential, which only the doors (and `up`,
  # to push the test image) know; clients get in only through a door, with an ECR token.
  if [ ! -s "$STATE/registry/backend-auth" ]; then
    echo "front:$(head -c 24 /dev/urandom | base64 | tr -d '/+=')" >"$STATE/registry/backend-auth"
    chmod 600 "$STATE/registry/backend-auth"
    rm -f "$STATE/registry/htpasswd"
  fi
  backend_pw=$(cut -d: -f2- "$STATE/registry/backend-auth")
  [ -s "$STATE/registry/htpasswd" ] || htpasswd -Bbc "$STATE/registry/htpasswd" front "$backend_pw" 2>/dev/null
  cat >"$STATE/registry/config.yml" <<EOF
version: 0.1
log: {level: info}
storage:
  filesystem: {rootdirectory: $STATE/data/registry}
  delete: {enabled: true}
http:
  addr: 127.0.0.1:$REGISTRY_BACKEND_PORT
  secret: regcred-test-only
  tls: {certificate: $pki/registry.crt, key: $pki/registry.key}
auth:
  htpasswd: {realm: regcred-test, path: $STATE/registry/htpasswd}
EOF
  if node_enabled; then node_write_files; fi
}

write_env() {
  local k v
  {
    echo "# written by scripts/testenv.sh up; values never need quoting"
    while read -r k v; do printf 'export %s=%s\n' "$k" "$v"; done <<EOF
KUBECONFIG $STATE/kubeconfig
REGCRED_TEST_APISERVER https://127.0.0.1:$APISERVER_PORT
REGCRED_TEST_CA $STATE/pki/ca.crt
REGCRED_TEST_STATE $STATE
REGCRED_TEST_ETCD http://127.0.0.1:$ETCD_PORT
AWS_ENDPOINT_URL http://127.0.0.1:$AWS_PORT
AWS_ENDPOINT_URL_ECR_PUBLIC http://127.0.0.1:$PUBLIC_PORT
AWS_ACCESS_KEY_ID testing
AWS_SECRET_ACCESS_KEY testing
AWS_REGION us-east-1
AWS_DEFAULT_REGION us-east-1
REGCRED_TEST_ACCOUNT $ACCOUNT
REGCRED_TEST_ACCOUNT_B $ACCOUNT_B
REGCRED_TEST_REGISTRY 127.0.0.1:$REGISTRY_PORT
REGCRED_TEST_REGISTRY_B 127.0.0.1:$REGISTRY_B_PORT
REGCRED_TEST_IMAGE_PATH $IMAGE_PATH
REGCRED_TEST_IMAGE 127.0.0.1:$REGISTRY_PORT/$IMAGE_PATH
REGCRED_TEST_ECR_HOST $ECR_HOST_A
REGCRED_TEST_ECR_HOST_B $ECR_HOST_B
REGCRED_TEST_CERT_DIR $STATE/pki/registry-certs
REGCRED_TEST_POLICY $STATE/policy.json
REGCRED_TEST_CONTROL http://127.0.0.1:$AWS_PORT/_regcred
REGCRED_TEST_BIN $GOBIN_DIR
REGCRED_TEST_VENV $VENV
REGCRED_TEST_HELM $TOOLS_DIR/helm
REGCRED_TEST_KUBECTL $TOOLS_DIR/kubectl
REGCRED_TEST_ARGOCD $ARGOCD_DIR/argocd-driver
EOF
    if node_enabled; then
      while read -r k v; do printf 'export %s=%s\n' "$k" "$v"; done <<EOF
REGCRED_TEST_NODE $NODE_NAME
REGCRED_TEST_NODE_AWS_KEY $NODE_AWS_KEY
REGCRED_TEST_NODE_TOKEN_TTL $NODE_TOKEN_TTL
REGCRED_TEST_NODE_STATE $NODE
REGCRED_TEST_CONTAINERD $NODE/containerd.sock
EOF
    fi
  } >"$STATE/env.tmp"
  mv "$STATE/env.tmp" "$STATE/env"
}

# ---------------------------------------------------------------------------- services

# Per service: the command line, a string its /proc cmdline must contain (so a recycled PID
# is never taken for ours), its port and its health check.
svc_cmd() {
  case $1 in
    etcd) echo "$TESTENV/start-etcd.sh $ETCD_PORT $ETCD_PEER_PORT $STATE/data/etcd" ;;
    kube-apiserver) echo "env REGCRED_TEST_ETCD=http://127.0.0.1:$ETCD_PORT $TESTENV/start-apiserver.sh $APISERVER_PORT /registry $STATE" ;;
    kube-controller-manager) echo "$TESTENV/start-controller-manager.sh $KCM_PORT $STATE" ;;
    kube-scheduler) echo "$TESTENV/start-scheduler.sh $SCHEDULER_PORT $STATE" ;;
    fake-aws) echo "$VENV/bin/python $TESTENV/fake_aws.py --port $AWS_PORT --public-port $PUBLIC_PORT
      --log $STATE/logs/fake-aws.log --front $REGISTRY_PORT=$ACCOUNT --front $REGISTRY_B_PORT=$ACCOUNT_B
      --backend 127.0.0.1:$REGISTRY_BACKEND_PORT --backend-auth-file $STATE/registry/backend-auth
      --tls-cert $STATE/pki/registry.crt --tls-key $STATE/pki/registry.key --ca $STATE/pki/ca.crt" ;;
    registry) echo "/usr/bin/docker-registry serve $STATE/registry/config.yml" ;;
    containerd) echo "/usr/bin/containerd --config $NODE/containerd.toml" ;;
    kubelet) echo "$GOBIN_DIR/kubelet --config=$NODE/kubelet.yaml --kubeconfig=$NODE/kubelet.kubeconfig
      --root-dir=$NODE/kubelet --cert-dir=$NODE/kubelet/pki --hostname-override=$NODE_NAME
      --image-credential-provider-config=$NODE/credential-provider-config.yaml
      --image-credential-provider-bin-dir=$NODE/plugins --v=2" ;;
  esac
}
svc_match() {
  case $1 in
    etcd) echo "--data-dir=$STATE/data/etcd" ;;
    kube-apiserver) echo "--secure-port=$APISERVER_PORT" ;;
    kube-controller-manager) echo "--secure-port=$KCM_PORT" ;;
    kube-scheduler) echo "--secure-port=$SCHEDULER_PORT" ;;
    fake-aws) echo "fake_aws.py --port $AWS_PORT" ;;
    registry) echo "$STATE/registry/config.yml" ;;
    containerd) echo "$NODE/containerd.toml" ;;
    kubelet) echo "--config=$NODE/kubelet.yaml" ;;
  esac
}
svc_port() {
  case $1 in
    etcd) echo $ETCD_PORT ;; kube-apiserver) echo $APISERVER_PORT ;;
    kube-controller-manager) echo $KCM_PORT ;; kube-scheduler) echo $SCHEDULER_PORT ;;
    fake-aws) echo $AWS_PORT ;; registry) echo $REGISTRY_BACKEND_PORT ;;
    containerd) echo $STREAM_PORT ;; kubelet) echo $KUBELET_HEALTHZ_PORT ;;
  esac
}
svc_wanted() { case $1 in containerd | kubelet) node_enabled ;; *) true ;; esac; }
http_code() { curl -s -o /dev/null -w '%{http_code}' --max-time 5 "$@" || true; }
svc_healthy() {
  local ca=(--cacert "$STATE/pki/ca.crt")
  case $1 in
    etcd) curl -sf --max-time 3 "http://127.0.0.1:$ETCD_PORT/health" | grep -q '"health":"true"' ;;
    kube-apiserver) [ "$(http_code "${ca[@]}" --cert "$STATE/pki/admin.crt" \
      --key "$STATE/pki/admin.key" "https://127.0.0.1:$APISERVER_PORT/readyz")" = 200 ] ;;
    kube-controller-manager) [ "$(http_code "${ca[@]}" "https://127.0.0.1:$KCM_PORT/healthz")" = 200 ] ;;
    kube-scheduler) [ "$(http_code "${ca[@]}" "https://127.0.0.1:$SCHEDULER_PORT/healthz")" = 200 ] ;;
    fake-aws) [ "$(http_code "http://127.0.0.1:$AWS_PORT/_regcred/health")" = 200 ] &&
      [ "$(http_code "http://127.0.0.1:$PUBLIC_PORT/_regcred/health")" = 200 ] &&
      [ "$(http_code "${ca[@]}" "https://127.0.0.1:$REGISTRY_PORT/v2/")" = 401 ] &&
      [ "$(http_code "${ca[@]}" "https://127.0.0.1:$REGISTRY_B_PORT/v2/")" = 401 ] ;;
    registry) [ "$(http_code "${ca[@]}" "https://127.0.0.1:$REGISTRY_BACKEND_PORT/v2/")" = 401 ] ;;
    containerd) ctr --address "$NODE/containerd.sock" version >/dev/null 2>&1 ;;
    kubelet) [ "$(curl -s --max-time 3 "http://127.0.0.1:$KUBELET_HEALTHZ_PORT/healthz")" = ok ] ;;
  esac
}

svc_ready_what() { [ "$1" = kube-apiserver ] && echo "/readyz OK" || echo healthy; }

# kill -0 alone is not enough: a stopped server stays a zombie until PID 1 reaps it.
alive() { [ -r "/proc/$1/stat" ] && [ "$(sed 's/.*) //' "/proc/$1/stat" | cut -d' ' -f1)" != Z ]; }

live_pid() { # prints the recorded PID of SERVICE if that process is still ours
  local pid
  pid=$(cat "$STATE/pids/$1.pid" 2>/dev/null) || return 1
  alive "$pid" || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "$(svc_match "$1")" || return 1
  echo "$pid"
}

port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_healthy() { # SERVICE PID
  local deadline=$((SECONDS + READY_TIMEOUT))
  until svc_healthy "$1"; do
    alive "$2" || { tail -n 30 "$STATE/logs/$1.log" >&2; die "$1 exited; log: $STATE/logs/$1.log"; }
    [ $SECONDS -lt $deadline ] || { tail -n 30 "$STATE/logs/$1.log" >&2; die "$1 not healthy after ${READY_TIMEOUT}s"; }
    sleep 0.5
  done
}

ms() { date +%s%3N; }

start_svc() {
  local name=$1 pid start
  start=$(ms)
  if pid=$(live_pid "$name"); then
    wait_healthy "$name" "$pid"
    return
  fi
  port_busy "$(svc_port "$name")" &&
    die "port $(svc_port "$name") ($name) is taken by a process this stack did not start (another checkout's stack?)"
  echo "=== $(date -u +%FT%TZ) starting: $(svc_cmd "$name")" >>"$STATE/logs/$name.log"
  # setsid: own session, so the server outlives this script and its terminal. The lock
  # fds 8 and 9 are closed so a running server never holds the `up` lock.
  # shellcheck disable=SC2046 # the command line is word-split on purpose (no spaces in paths)
  setsid $(svc_cmd "$name") </dev/null >>"$STATE/logs/$name.log" 2>&1 8>&- 9>&- &
  pid=$!
  echo "$pid" >"$STATE/pids/$name.pid"
  wait_healthy "$name" "$pid"
  log "$name started (pid $pid), $(svc_ready_what "$name") after $(( $(ms) - start )) ms"
}

stop_svc() {
  local name=$1 pid i
  if pid=$(live_pid "$name"); then
    kill -TERM "$pid" 2>/dev/null || true
    for i in $(seq 1 100); do alive "$pid" || break; sleep 0.1; done
    if alive "$pid"; then
      log "$name (pid $pid) ignored SIGTERM for 10s; killing"
      kill -KILL "$pid" 2>/dev/null || true
    fi
    log "stopped $name (pid $pid)"
  fi
  rm -f "$STATE/pids/$name.pid"
}

# The test app image: busybox (a shell and `sleep` for pods) and /hello.txt, pushed
# straight to the registry behind the doors.
push_image() {
  local skopeo=(skopeo --policy "$STATE/policy.json") auth image
  auth=$(cat "$STATE/registry/backend-auth")
  image=127.0.0.1:$REGISTRY_BACKEND_PORT/$IMAGE_PATH
  "${skopeo[@]}" inspect --creds "$auth" --cert-dir "$STATE/pki/registry-certs" \
    "docker://$image" >/dev/null 2>&1 && return
  rm -rf "$STATE/image"
  "$VENV/bin/python" "$TESTENV/make_image.py" "$STATE/image" 1.0 \
    --file /bin/busybox:bin/busybox:755 --symlink bin/sh:busybox --symlink bin/sleep:busybox \
    --text "hello.txt:hello from regcred's test image\\n" \
    --entrypoint '["/bin/busybox"]' --cmd '["sleep", "3600"]' >/dev/null
  "${skopeo[@]}" copy -q --dest-creds "$auth" --dest-cert-dir "$STATE/pki/registry-certs" \
    "oci:$STATE/image:1.0" "docker://$image" >&2
  log "pushed $IMAGE_PATH"
}

# ---------------------------------------------------------------------------- commands

lock_state() {
  mkdir -p "$STATE"/{pki,data,logs,pids}
  exec 9>"$STATE/lock" # serialise up/down: parallel test binaries may all call `up`
  flock -w 900 9 || die "timed out waiting for $STATE/lock"
}

up() {
  install
  lock_state
  make_pki
  ln -sfn "$GOBIN_DIR" "$STATE/bin" # start-*.sh find the binaries here
  write_files
  if node_enabled && ! live_pid kubelet >/dev/null; then
    live_pid containerd >/dev/null || node_teardown # what a crashed run left
    node_prepare_host
    node_plugin
  fi
  local name
  for name in "${SERVICES[@]}"; do
    svc_wanted "$name" || continue
    start_svc "$name"
    [ "$name" = containerd ] && node_images
  done
  push_image
  if node_enabled; then
    # The kubelet's credential provider gets short-lived tokens, so tests of the node see
    # them expire (and no long-lived one lingers in the kubelet's cache).
    curl -sf -X PUT "http://127.0.0.1:$AWS_PORT/_regcred/keys/$NODE_AWS_KEY" \
      -d "{\"ttl\": \"$NODE_TOKEN_TTL\"}" >/dev/null || die "could not set the node's token lifetime"
    wait_node_ready
  fi
  write_env
  log "up; env: $STATE/env"
}

down() {
  lock_state
  local i
  for ((i = ${#SERVICES[@]} - 1; i >= 0; i--)); do
    [ "${SERVICES[i]}" = containerd ] && node_stop_containers
    stop_svc "${SERVICES[i]}"
    [ "${SERVICES[i]}" = containerd ] && node_teardown
  done
  rm -rf "$STATE/data" "$STATE/image" "$STATE/env" "$NODE"
}

status() {
  local name pid ok=0
  for name in "${SERVICES[@]}"; do
    svc_wanted "$name" || continue
    if pid=$(live_pid "$name"); then
      if svc_healthy "$name"; then echo "$name: running (pid $pid), healthy"
      else echo "$name: running (pid $pid), NOT healthy"; ok=1; fi
    else
      echo "$name: stopped"; ok=1
    fi
  done
  return $ok
}

case ${1:-} in
  install) install ;;
  up) up ;;
  down) down ;;
  status) status ;;
  env) echo "$STATE/env"; [ -e "$STATE/env" ] ;;
  leftovers) node_leftovers || die "the node left the above behind" ;;
  *) echo "usage: $0 install|up|down|status|env|leftovers" >&2; exit 2 ;;
esac
