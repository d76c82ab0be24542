#!/usr/bin/env python3
"""Writes an OCI image layout of one layer, from files on this machine, with no downloads
and no container engine.

    python make_image.py DIR TAG [--file SRC:DEST[:MODE]] [--symlink DEST:TARGET]
                         [--text DEST:CONTENT] [--dir DEST] [--entrypoint JSON]
                         [--cmd JSON] [--user UID:GID] [--env K=V] [--name REF]
    skopeo copy oci:DIR:TAG docker://...        # or: tar it and `ctr images import`

Owners are root (0:0) and every mtime is 0, so the same inputs give the same digest.
Parents of every path are added as directories (0755). `--name` also records the full
reference (`io.containerd.image.name`), which `ctr images import` names the image by.
"""

import argparse
import gzip
import hashlib
import io
import json
import os
import sys
import tarfile


def write_blob(root, data):
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    path = os.path.join(root, "blobs", "sha256", digest.split(":")[1])
    with open(path, "wb") as f:
        f.write(data)
    return digest


def split(spec, parts, what):
    fields = spec.split(":", parts - 1)
    if len(fields) < parts - (1 if what == "--file" else 0):
        sys.exit(f"{what} {spec!r}: want {'SRC:DEST[:MODE]' if what == '--file' else 'A:B'}")
    return fields


def entries(args):
    """(path, kind, payload, mode) for every entry of the layer, parents first."""
    out = {}

    def add(path, kind, payload=None, mode=0o755):
        path = path.strip("/")
        parent = os.path.dirname(path)
        while parent and parent not in out:
            out[parent] = ("dir", None, 0o755)
            parent = os.path.dirname(parent)
        out[path] = (kind, payload, mode)

    for d in args.dir:
        add(d, "dir")
    for spec in args.file:
        src, dest, *mode = split(spec, 3, "--file")
        with open(src, "rb") as f:
            data = f.read()
        add(dest, "file", data, int(mode[0], 8) if mode else os.stat(src).st_mode & 0o777)
    for spec in args.text:
        dest, content = split(spec, 2, "--text")
        add(dest, "file", content.encode().decode("unicode_escape").encode(), 0o644)
    for spec in args.symlink:
        dest, target = split(spec, 2, "--symlink")
        add(dest, "symlink", target, 0o777)
    return sorted(out.items())


def layer_tar(items):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path, (kind, payload, mode) in items:
            info = tarfile.TarInfo(path)
            info.mode, info.mtime, info.uid, info.gid = mode, 0, 0, 0
            if kind == "dir":
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            elif kind == "symlink":
                info.type, info.linkname = tarfile.SYMTYPE, payload
                tar.addfile(info)
            else:
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))
    return buf.getvalue()


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("root", metavar="DIR")
    p.add_argument("tag", metavar="TAG")
    p.add_argument("--file", action="append", default=[], help="SRC:DEST[:MODE] (octal mode)")
    p.add_argument("--symlink", action="append", default=[], help="DEST:TARGET")
    p.add_argument("--text", action="append", default=[], help="DEST:CONTENT (\\n for newlines)")
    p.add_argument("--dir", action="append", default=[], help="an empty directory")
    p.add_argument("--entrypoint", type=json.loads, help='JSON list, e.g. ["/bin/busybox"]')
    p.add_argument("--cmd", type=json.loads, help="JSON list")
    p.add_argument("--user", help="UID:GID the image runs as")
    p.add_argument("--env", action="append", default=[], help="K=V")
    p.add_argument("--name", help="the full reference, for ctr images import")
    args = p.parse_args()

    root = args.root
    os.makedirs(os.path.join(root, "blobs", "sha256"), exist_ok=True)
    items = entries(args)
    if not items:
        sys.exit("no files: give at least one --file, --text, --symlink or --dir")
    tar = layer_tar(items)
    layer = gzip.compress(tar, mtime=0)
    layer_digest = write_blob(root, layer)
    config = {"Env": args.env or ["PATH=/usr/local/bin:/usr/bin:/bin"]}
    if args.entrypoint:
        config["Entrypoint"] = args.entrypoint
    if args.cmd:
        config["Cmd"] = args.cmd
    if args.user:
        config["User"] = args.user
    config = json.dumps({
        "architecture": "amd64",
        "os": "linux",
        "config": config,
        "rootfs": {"type": "layers", "diff_ids": ["sha256:" + hashlib.sha256(tar).hexdigest()]},
    }, sort_keys=True).encode()
    config_digest = write_blob(root, config)
    manifest = json.dumps({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": config_digest, "size": len(config)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                    "digest": layer_digest, "size": len(layer)}],
    }, sort_keys=True).encode()
    manifest_digest = write_blob(root, manifest)
    annotations = {"org.opencontainers.image.ref.name": args.tag}
    if args.name:
        annotations["io.containerd.image.name"] = args.name
    index = {
        "schemaVersion": 2,
        "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
                       "digest": manifest_digest, "size": len(manifest),
                       "annotations": annotations}],
    }
    with open(os.path.join(root, "index.json"), "w") as f:
        json.dump(index, f, sort_keys=True)
    with open(os.path.join(root, "oci-layout"), "w") as f:
        json.dump({"imageLayoutVersion": "1.0.0"}, f)
    print(manifest_digest)


if __name__ == "__main__":
    main()
