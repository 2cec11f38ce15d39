#!/usr/bin/env bash
# The fault soak (on demand; not part of CI): SIGKILLs of a real stowaged during
# volume lifecycles of every kind with a workload writing and fsyncing in each
# published volume, then checks that every acknowledged volume exists, every fsynced
# byte reads back and no mount or loop device leaks. As root:
#
#   sudo hack/soak.sh [--lifecycles 300] [--kills 20] [--interval 4]
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
for sbin in /usr/local/sbin /usr/sbin /sbin; do
	[[ :$PATH: == *":$sbin:"* ]] || PATH=$PATH:$sbin
done
cargo build --bins
exec target/debug/soak "$@"
