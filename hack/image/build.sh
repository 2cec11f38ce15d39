#!/usr/bin/env bash
# Build Stowage's container image here, with no registry: the release binaries
# (stowaged, stowage-overlay, vol) and the programs they run, with their shared
# libraries, taken from this Debian machine's packages (e2fsprogs, xfsprogs,
# btrfs-progs, util-linux, fuse3, coreutils; busybox-static for /bin/sh).
#
#   hack/image/build.sh [OUT_DIR]      (default target/image)
#
# Writes OUT_DIR/stowage-image.tar, an OCI archive of one layer, and prints its
# reference and manifest digest. The same tree and toolchain give the same bytes:
# entries are sorted, owned by root and dated at the last commit.
#
#   podman load -i target/image/stowage-image.tar
#   ctr -n k8s.io images import target/image/stowage-image.tar
#
# The reference is localhost/stowage/stowaged:<version of the workspace>, which
# deploy/kubernetes and the Helm chart name (imagePullPolicy IfNotPresent).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
OUT=${1:-$ROOT/target/image}
cd "$ROOT"
export PATH=$PATH:/usr/sbin:/sbin

VERSION=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
REF=localhost/stowage/stowaged:$VERSION
EPOCH=$(git log -1 --format=%ct 2>/dev/null || echo 0)

PACKAGES=(e2fsprogs xfsprogs btrfs-progs util-linux fuse3 coreutils busybox-static)
missing=()
for p in "${PACKAGES[@]}"; do
	dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if ((${#missing[@]})); then
	apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

cargo build --release --bin stowaged --bin stowage-overlay --bin vol

rootfs=$(mktemp -d)
trap 'rm -rf "$rootfs"' EXIT
# bookworm's merged /usr: the top-level directories are links into it.
mkdir -p "$rootfs"/usr/{bin,sbin,lib,lib64} "$rootfs"/{etc,tmp,run,dev,proc,sys,var/lib/stowage}
for d in bin sbin lib lib64; do ln -s "usr/$d" "$rootfs/$d"; done
chmod 1777 "$rootfs/tmp"

# A host path as the image holds it: /lib/... and /sbin/... live under /usr.
image_path() {
	local p=$1
	case $p in
	/usr/*) printf '%s' "$p" ;;
	/bin/* | /sbin/* | /lib/* | /lib64/*) printf '/usr%s' "$p" ;;
	*) printf '%s' "$p" ;;
	esac
}

# copy_file HOST_PATH [IMAGE_PATH]: the file's content (links followed).
copy_file() {
	local dest
	dest=$rootfs$(image_path "${2:-$1}")
	mkdir -p "$(dirname "$dest")"
	cp -L --preserve=mode "$1" "$dest"
}

# copy_program NAME_OR_PATH [IMAGE_PATH]: the program and every library it loads.
copy_program() {
	local src
	src=$(command -v "$1") || {
		echo "hack/image/build.sh: $1 not found" >&2
		exit 1
	}
	copy_file "$src" "${2:-$src}"
	# Every absolute path ldd prints: the libraries and the dynamic loader.
	ldd "$src" 2>/dev/null | awk '{for (i = 1; i <= NF; i++) if ($i ~ /^\//) print $i}' | while read -r lib; do
		copy_file "$lib"
	done
}

copy_program target/release/stowaged /usr/bin/stowaged
copy_program target/release/stowage-overlay /usr/bin/stowage-overlay
copy_program target/release/vol /usr/bin/vol
# The release profile keeps debug info for profiling; the image does not need it.
strip --strip-debug "$rootfs"/usr/bin/{stowaged,stowage-overlay,vol}
for p in mke2fs mkfs.ext4 e2fsck resize2fs tune2fs dumpe2fs \
	mkfs.xfs xfs_growfs xfs_repair xfs_db \
	btrfs mkfs.btrfs \
	losetup mount umount blkid nsenter findmnt \
	fusermount3 cp sync; do
	copy_program "$p"
done
copy_file /bin/busybox /usr/bin/busybox
ln -s busybox "$rootfs/usr/bin/sh"
copy_file /etc/mke2fs.conf
printf 'root:x:0:0:root:/root:/bin/sh\n' >"$rootfs/etc/passwd"
printf 'root:x:0:\n' >"$rootfs/etc/group"

mkdir -p "$OUT"
digest=$(python3 hack/image/oci.py --rootfs "$rootfs" --ref "$REF" \
	--out "$OUT/stowage-image.tar" --epoch "$EPOCH" --entrypoint /usr/bin/stowaged)
printf '%s %s %s\n' "$REF" "$digest" "$OUT/stowage-image.tar"
