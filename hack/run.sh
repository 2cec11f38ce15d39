#!/usr/bin/env bash
# Runs stowaged on the embedded default pool under ./.stowage (a sparse btrfs image,
# created on first start; loop volumes' images beside it in ./.stowage/images, on this
# filesystem: the fastest layouts, the daemon's defaults), listening on
# ./.stowage/csi.sock. Installs the filesystem
# tools it needs when they are missing; builds stowaged, vol and stowage-overlay
# (which overlay=fuse image volumes run). Extra arguments go to stowaged.
#
#   sudo hack/run.sh [--pool-size 20GiB] [--node-id NAME] ...
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
[[ $(id -u) -eq 0 ]] || { echo "hack/run.sh: run as root (the daemon mounts and attaches loop devices)" >&2; exit 1; }
for sbin in /usr/local/sbin /usr/sbin /sbin; do
	[[ :$PATH: == *":$sbin:"* ]] || PATH=$PATH:$sbin
done
if ! command -v cargo >/dev/null && [[ -f ${HOME:-/root}/.cargo/env ]]; then
	# shellcheck source=/dev/null
	source "${HOME:-/root}/.cargo/env"
fi
missing=()
for pkg in e2fsprogs xfsprogs btrfs-progs util-linux; do
	dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q '^install ok installed$' || missing+=("$pkg")
done
if ((${#missing[@]} > 0)); then
	DEBIAN_FRONTEND=noninteractive apt-get update
	DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}"
fi
cargo build --release -p stowage-daemon --bin stowaged -p stowage-cli --bin vol
cargo build --release -p fuse-overlay --bin stowage-overlay
STATE=$ROOT/.stowage
mkdir -p "$STATE"
exec "$ROOT/target/release/stowaged" \
	--state-dir "$STATE" \
	--endpoint "unix://$STATE/csi.sock" \
	"$@"
