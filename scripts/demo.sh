#!/usr/bin/env bash
# `make demo`: regcred's main job on the local stack (a real cluster with a kubelet node,
# moto as AWS, a real registry whose tokens expire), seen from outside: namespaces fill with
# pull secrets, skopeo pulls with one, and a pod on the node pulls the private image.
set -euo pipefail
cd "$(dirname "$0")/.."
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
run() { printf '$ %s\n' "$*"; "$@"; }

step "Start the local stack (etcd, kube-apiserver, controller-manager, scheduler, a kubelet node; moto; registry)"
scripts/testenv.sh up
# shellcheck disable=SC1091
source .testenv/env
kubectl() { "$REGCRED_TEST_KUBECTL" "$@"; } # the stack's own build, whatever is on PATH

step "Build regcred"
cargo build --quiet
BIN=$PWD/target/debug/regcred
run "$BIN" --help

DEMO=$PWD/.testenv/demo
mkdir -p "$DEMO"
step "Namespaces: three for the demo team, plus kube-system (excluded by default)"
for ns in demo-a demo-b demo-c; do
  kubectl create namespace "$ns" --dry-run=client -o yaml | kubectl apply -f - >/dev/null
done
# The controller-manager gives each namespace its "default" ServiceAccount.
for ns in demo-a demo-b demo-c; do
  until kubectl -n "$ns" get serviceaccount default >/dev/null 2>&1; do sleep 0.2; done
done
run kubectl get namespaces
run kubectl get nodes

cat > "$DEMO/regcred.yaml" <<YAML
secrets:
  - name: regcred
    registries:
      - host: "$REGCRED_TEST_REGISTRY"     # the stack's registry, fronting account $REGCRED_TEST_ACCOUNT
        accountId: "$REGCRED_TEST_ACCOUNT"
        region: us-east-1
      - public.ecr.aws
    namespaces:
      include: ["demo-*"]
    serviceAccounts: ["default"]
YAML
step "The configuration"
cat "$DEMO/regcred.yaml"

step "regcred sync: one pass, one token call per registry source"
run "$BIN" sync --config "$DEMO/regcred.yaml"

COLUMNS_SPEC='NAMESPACE:.metadata.namespace,NAME:.metadata.name,TYPE:.type,EXPIRES:.metadata.annotations.regcred\.io/expires-at'
show_secrets() { # the demo namespaces' pull secrets (the stack may hold tests' too)
  kubectl get secrets -A -l app.kubernetes.io/managed-by=regcred -o custom-columns="$COLUMNS_SPEC" \
    | awk 'NR == 1 || $1 ~ /^demo-/'
}
step "The pull secrets regcred manages"
show_secrets
run kubectl -n demo-a get serviceaccount default -o jsonpath='{.imagePullSecrets}'; echo

step "skopeo pulls $REGCRED_TEST_IMAGE with the exact .dockerconfigjson regcred wrote"
kubectl -n demo-b get secret regcred -o jsonpath='{.data.\.dockerconfigjson}' | base64 -d > "$DEMO/auth.json"
echo "(registries in the secret: $(jq -r '.auths | keys | join(", ")' "$DEMO/auth.json"); passwords not shown)"
rm -rf "$DEMO/image"
run skopeo --policy "$REGCRED_TEST_POLICY" copy --quiet --authfile "$DEMO/auth.json" \
  --src-cert-dir "$REGCRED_TEST_CERT_DIR" "docker://$REGCRED_TEST_IMAGE" "dir:$DEMO/image"
echo "pulled: $(ls "$DEMO/image" | wc -l) blobs and manifest in $DEMO/image"
rm -f "$DEMO/auth.json"

step "A second sync writes nothing: every secret is sound and not yet due"
run "$BIN" sync --config "$DEMO/regcred.yaml"

step "regcred run: the controller keeps them valid, and serves namespaces as they appear"
"$BIN" run --config "$DEMO/regcred.yaml" --admin-addr 127.0.0.1:18080 --lease-namespace default \
  2> "$DEMO/run.log" &
RUN_PID=$!
trap 'kill $RUN_PID 2>/dev/null || true' EXIT
until curl -sf 127.0.0.1:18080/readyz >/dev/null; do sleep 0.2; done
echo "ready: $(curl -s 127.0.0.1:18080/readyz)"
NEW=demo-live-$(date +%s)
start=$(date +%s%N)
run kubectl create namespace "$NEW"
until kubectl -n "$NEW" get secret regcred >/dev/null 2>&1; do sleep 0.05; done
echo "secret in $NEW after $(( ($(date +%s%N) - start) / 1000000 )) ms (measured from outside, kubectl included)"
run kubectl -n demo-c delete secret regcred
until kubectl -n demo-c get secret regcred >/dev/null 2>&1; do sleep 0.05; done
echo "deleted secret in demo-c is back"
show_secrets
step "Its metrics"
curl -s 127.0.0.1:18080/metrics | grep -E '^regcred_(leader|namespaces_selected|secret_writes_total|token_refreshes_total)'

step "A pod on the node pulls the private image: no pull secret in its spec, the ServiceAccount regcred patched supplies it"
kubectl -n demo-a delete pod hello --ignore-not-found --grace-period=0 >/dev/null
run kubectl -n demo-a run hello --image="$REGCRED_TEST_IMAGE" --image-pull-policy=Always --restart=Never \
  --overrides='{"spec": {"hostNetwork": true, "terminationGracePeriodSeconds": 0}}' \
  --command -- /bin/busybox sleep 3600
run kubectl -n demo-a wait pod/hello --for=condition=Ready --timeout=120s
run kubectl -n demo-a get pod hello -o custom-columns='NAME:.metadata.name,STATUS:.status.phase,NODE:.spec.nodeName,IMAGE:.spec.containers[0].image,PULL-SECRETS:.spec.imagePullSecrets[*].name'
kubectl -n demo-a get events --field-selector involvedObject.name=hello -o custom-columns='REASON:.reason,MESSAGE:.message' | grep -E 'REASON|Pull'
kill -TERM $RUN_PID; wait $RUN_PID || true
trap - EXIT
kubectl delete namespace "$NEW" --wait=false >/dev/null

step "Done. The stack keeps running; stop it with: scripts/testenv.sh down"
