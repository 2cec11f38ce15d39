#!/usr/bin/env bash
# Fuzz the parsers of hostile input, each for a bounded time (on demand; not part of CI):
#
#   hack/fuzz.sh [SECONDS] [TARGET ...]
#
# Targets (fuzz/fuzz_targets/): tar_import (layer blobs), chunkdiff_apply (chunk-diff
# replication streams), plugin_json (Docker/Podman plugin requests), volume_params
# (StorageClass parameters and sizes), stream_header (replication stream headers, then
# a receive begun and cut off), send_stream (btrfs send streams through the checker).
# SECONDS per target defaults to 60. Needs the nightly toolchain; installs cargo-fuzz
# from crates.io when missing. Corpora and crashes stay under fuzz/ (git-ignored); the
# last line per target is libFuzzer's "Done N runs in S second(s)".
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT/fuzz"
SECONDS_PER_TARGET=${1:-60}
shift || true
TARGETS=("$@")
if [[ ${#TARGETS[@]} -eq 0 ]]; then
	TARGETS=(tar_import chunkdiff_apply plugin_json volume_params stream_header send_stream)
fi

if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
	cargo install cargo-fuzz --locked
fi

# Seeds: a few valid inputs of each kind, so the fuzzer starts past the first checks.
seed() { # TARGET NAME (content on stdin)
	mkdir -p "corpus/$1"
	cat >"corpus/$1/$2"
}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$tmp/layer/dir"
printf 'hello' >"$tmp/layer/dir/file"
ln -sf file "$tmp/layer/dir/link"
tar -C "$tmp/layer" -cf - . | seed tar_import plain.tar
tar -C "$tmp/layer" -czf - . | seed tar_import gzip.tar.gz
printf '\001{"Name":"v","Opts":{"size":"16MiB","kind":"dir"}}' | seed plugin_json 01-create
printf '\003{"Name":"v","ID":"c1"}' | seed plugin_json 03-mount
printf 'kind=loop\nfsType=xfs\nreplicas=2\nreplicationInterval=30s\n1GiB\n' | seed volume_params loop
python3 - "$ROOT/fuzz/corpus" <<'PY'
import os, struct, sys
corpus = sys.argv[1]
def cmd(c, attrs):
    payload = b"".join(struct.pack("<HH", t, len(v)) + v for t, v in attrs)
    return struct.pack("<IHI", len(payload), c, 0) + payload
stream = b"btrfs-stream\0" + struct.pack("<I", 1)
stream += cmd(1, [(15, b"data"), (1, bytes(16)), (2, struct.pack("<Q", 7))])
stream += cmd(3, [(15, b"f"), (3, struct.pack("<Q", 300))])
stream += cmd(15, [(15, b"f"), (18, struct.pack("<Q", 0)), (19, b"hello")])
stream += cmd(21, [])
os.makedirs(f"{corpus}/send_stream", exist_ok=True)
open(f"{corpus}/send_stream/full", "wb").write(b"\x07" + stream)
# A header: volume id, name, kind, snapshot, generation, format (protobuf fields).
def field(n, v):
    if isinstance(v, int):
        out = bytes([n << 3]); x = v
        while True:
            b = x & 0x7f; x >>= 7
            out += bytes([b | (0x80 if x else 0)])
            if not x: return out
    return bytes([(n << 3) | 2, len(v)]) + v
hdr = (field(1, b"v-" + b"a" * 32) + field(2, b"vol") + field(3, b"dir")
       + field(6, b"1-g1") + field(8, b"peer") + field(9, 1) + field(15, b"btrfs"))
os.makedirs(f"{corpus}/stream_header", exist_ok=True)
open(f"{corpus}/stream_header/full", "wb").write(hdr)
PY

status=0
for t in "${TARGETS[@]}"; do
	printf '\n==== %s (%s s) ====\n' "$t" "$SECONDS_PER_TARGET"
	mkdir -p "corpus/$t" "artifacts/$t"
	if ! cargo +nightly fuzz run "$t" "corpus/$t" -- \
		-max_total_time="$SECONDS_PER_TARGET" -rss_limit_mb=2048 -timeout=20 \
		-artifact_prefix="artifacts/$t/" 2>"$tmp/$t.log"; then
		status=1
		tail -40 "$tmp/$t.log"
	fi
	grep -E '^Done [0-9]+ runs' "$tmp/$t.log" | tail -1 || true
	printf 'crashes kept: %s\n' "$(find "artifacts/$t" -type f | wc -l)"
done
exit $status
