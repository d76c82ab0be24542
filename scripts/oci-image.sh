#!/usr/bin/env bash
# Assembles regcred's container image from a static binary, without a container engine:
# the binary of the Dockerfile's build stage on the files distroless "static" gives it
# (CA certificates, /etc/passwd and /etc/group with nonroot 65532), running as 65532,
# entrypoint /usr/local/bin/regcred, command `run` — the Dockerfile's final stage.
#
#   scripts/oci-image.sh BINARY OUT_DIR [NAME]    # NAME default regcred:<version>
#
# Writes an OCI image layout to OUT_DIR and the same as an archive, OUT_DIR.tar. Then:
#   ctr -n k8s.io images import OUT_DIR.tar                  # onto a containerd node
#   skopeo copy oci:OUT_DIR:<tag> docker://REGISTRY/regcred:<tag>
# The binary: RUSTFLAGS="-C target-feature=+crt-static" cargo build --release --locked \
#   --target "$(uname -m)-unknown-linux-gnu"   (what the Dockerfile's build RUN does).
set -euo pipefail
[ $# -ge 2 ] || { echo "usage: $0 BINARY OUT_DIR [NAME]" >&2; exit 2; }
binary=$1 out=$2
root=$(cd "$(dirname "$0")/.." && pwd)
version=$(awk -F'"' '/^version = / {print $2; exit}' "$root/Cargo.toml")
name=${3:-regcred:$version}
tag=${name##*:}
certs=/etc/ssl/certs/ca-certificates.crt
[ -x "$binary" ] || { echo "$binary: not an executable" >&2; exit 2; }
[ -r "$certs" ] || { echo "$certs missing (Debian's ca-certificates package)" >&2; exit 1; }
rm -rf "$out" "$out.tar"
python3 "$root/testenv/make_image.py" "$out" "$tag" --name "$name" \
  --file "$binary:usr/local/bin/regcred:755" \
  --file "$certs:etc/ssl/certs/ca-certificates.crt:644" \
  --text 'etc/passwd:root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' \
  --text 'etc/group:root:x:0:\nnonroot:x:65532:\n' \
  --dir home/nonroot \
  --user 65532:65532 --entrypoint '["/usr/local/bin/regcred"]' --cmd '["run"]' >/dev/null
tar -C "$out" -cf "$out.tar" .
echo "$out ($name)"
