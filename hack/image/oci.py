#!/usr/bin/env python3
"""Turn a root filesystem directory into an OCI image archive, byte for byte the
same for the same tree: one layer (entries sorted, times set to --epoch, owner root,
gzip without a name or time), its config, manifest and index, in a tar that both
`podman load -i` and `ctr images import` take.

    oci.py --rootfs DIR --ref localhost/stowage/stowaged:0.1.0 --out image.tar \
           [--entrypoint /usr/bin/stowaged] [--epoch SECONDS] [--env K=V ...]

Prints the image's manifest digest.
"""

import argparse
import gzip
import hashlib
import io
import json
import os
import stat
import sys
import tarfile


def layer_tar(rootfs: str, epoch: int) -> bytes:
    """The uncompressed layer: every entry under rootfs, sorted, normalised."""
    buf = io.BytesIO()
    seen_inodes: dict[tuple[int, int], str] = {}
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        paths = []
        for dirpath, dirnames, filenames in os.walk(rootfs):
            dirnames.sort()
            for name in sorted(dirnames + filenames):
                paths.append(os.path.join(dirpath, name))
        for path in sorted(paths, key=lambda p: os.path.relpath(p, rootfs)):
            arcname = os.path.relpath(path, rootfs)
            st = os.lstat(path)
            info = tarfile.TarInfo(arcname)
            info.mtime = epoch
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            info.mode = stat.S_IMODE(st.st_mode)
            if stat.S_ISDIR(st.st_mode):
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            elif stat.S_ISLNK(st.st_mode):
                info.type = tarfile.SYMTYPE
                info.linkname = os.readlink(path)
                tar.addfile(info)
            elif stat.S_ISREG(st.st_mode):
                key = (st.st_dev, st.st_ino)
                if st.st_nlink > 1 and key in seen_inodes:
                    info.type = tarfile.LNKTYPE
                    info.linkname = seen_inodes[key]
                    tar.addfile(info)
                    continue
                seen_inodes[key] = arcname
                info.size = st.st_size
                with open(path, "rb") as f:
                    tar.addfile(info, f)
            else:
                sys.exit(f"oci.py: {path}: only directories, files and links go in an image")
    return buf.getvalue()


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def canonical(obj) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rootfs", required=True)
    ap.add_argument("--ref", required=True, help="full reference, e.g. localhost/x/y:1.0")
    ap.add_argument("--out", required=True)
    ap.add_argument("--entrypoint", action="append", default=[])
    ap.add_argument("--env", action="append", default=[])
    ap.add_argument("--epoch", type=int, default=0)
    args = ap.parse_args()

    raw = layer_tar(args.rootfs, args.epoch)
    gz = io.BytesIO()
    with gzip.GzipFile(fileobj=gz, mode="wb", mtime=0, filename="") as z:
        z.write(raw)
    layer = gz.getvalue()

    env = ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"] + args.env
    created = "1970-01-01T00:00:00Z" if args.epoch == 0 else None
    config = {
        "architecture": "amd64",
        "os": "linux",
        "config": {"Env": env},
        "rootfs": {"type": "layers", "diff_ids": [sha256(raw)]},
    }
    if args.entrypoint:
        config["config"]["Entrypoint"] = args.entrypoint
    if created is None:
        import datetime

        created = datetime.datetime.fromtimestamp(args.epoch, datetime.timezone.utc).strftime(
            "%Y-%m-%dT%H:%M:%SZ"
        )
    config["created"] = created
    config_bytes = canonical(config)
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": sha256(config_bytes),
            "size": len(config_bytes),
        },
        "layers": [
            {
                "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                "digest": sha256(layer),
                "size": len(layer),
            }
        ],
    }
    manifest_bytes = canonical(manifest)
    tag = args.ref.rsplit(":", 1)[1] if ":" in args.ref.rsplit("/", 1)[-1] else "latest"
    index = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [
            {
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": sha256(manifest_bytes),
                "size": len(manifest_bytes),
                "platform": {"architecture": "amd64", "os": "linux"},
                "annotations": {
                    # podman names the image by this, containerd by the next.
                    "org.opencontainers.image.ref.name": args.ref,
                    "io.containerd.image.name": args.ref,
                    "org.opencontainers.image.version": tag,
                },
            }
        ],
    }
    files = {
        "oci-layout": canonical({"imageLayoutVersion": "1.0.0"}),
        "index.json": canonical(index),
    }
    for blob in (layer, config_bytes, manifest_bytes):
        files["blobs/sha256/" + hashlib.sha256(blob).hexdigest()] = blob

    tmp = args.out + ".tmp"
    with tarfile.open(tmp, mode="w", format=tarfile.PAX_FORMAT) as out:
        for d in ("blobs", "blobs/sha256"):
            info = tarfile.TarInfo(d)
            info.type = tarfile.DIRTYPE
            info.mode = 0o755
            info.mtime = args.epoch
            out.addfile(info)
        for name in sorted(files):
            info = tarfile.TarInfo(name)
            info.size = len(files[name])
            info.mode = 0o644
            info.mtime = args.epoch
            out.addfile(info, io.BytesIO(files[name]))
    os.replace(tmp, args.out)
    print(sha256(manifest_bytes))


if __name__ == "__main__":
    main()
