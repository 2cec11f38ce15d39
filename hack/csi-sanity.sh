#!/usr/bin/env bash
# Run csi-sanity (kubernetes-csi/csi-test v5.5.0) against stowaged, once per
# back end, each run with a fresh state directory and embedded btrfs pool.
#
#   sudo hack/csi-sanity.sh [--build] [dir|ext4|xfs|block|all ...]
#
#   --build        rebuild target/debug/stowaged first (also done when it is missing)
#   dir            directory volumes        (parameters: kind: dir)
#   ext4           loop volumes with ext4   (parameters: kind: loop, fsType: ext4)
#   xfs            loop volumes with xfs    (parameters: kind: loop, fsType: xfs)
#   block          loop volumes as raw block devices (kind: loop,
#                  --csi.testvolumeaccesstype=block)
#
# The dir run also modifies volumes with the mutable parameter compression=zstd
# (--csi.testvolumemutableparameters); the loop runs modify with no parameters (their
# only mutable ones, replicas and replicationInterval, need peer daemons).
#
# Environment:
#   CSI_SANITY_ARGS             extra csi-sanity/ginkgo flags, appended last (word-split),
#                               e.g. CSI_SANITY_ARGS='--ginkgo.focus=NodePublish'
#   STOWAGE_SANITY_VERBOSE=1    also stream csi-sanity's output (it is always logged)
#   STOWAGE_SANITY_LOG_DIR      where logs and junit reports go (target/csi-sanity)
#   STOWAGE_SANITY_TMPDIR       parent of the per-run temp dirs (${TMPDIR:-/tmp})
#   STOWAGE_SANITY_MAX_VOLUMES  --max-volumes-per-node for the daemon (8)
#   STOWAGE_SANITY_TIMEOUT      ginkgo suite timeout per run (20m)
#   STOWAGE_SANITY_RESULTS      file to append "BACKEND PASSED FAILED SKIPPED" lines to
#                               (hack/test.sh reads it)
#   RUST_LOG                    daemon log filter (info)
#
# Exits non-zero if a spec failed, the daemon did not start or died, or the
# cleanup could not release what a run left behind.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=hack/lib/cleanup.sh
source "$ROOT/hack/lib/cleanup.sh"

CSI_TEST_MODULE=github.com/kubernetes-csi/csi-test/v5
CSI_TEST_VERSION=v5.5.0
ALL_BACKENDS=(dir ext4 xfs block)

usage() {
	sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}"
}

die() {
	printf 'csi-sanity.sh: %s\n' "$*" >&2
	exit 1
}

header() {
	printf '\n==== %s ====\n' "$*"
}

# ---------------------------------------------------------------- arguments
build=0
backends=()
for arg in "$@"; do
	case $arg in
	--build) build=1 ;;
	-h | --help)
		usage
		exit 0
		;;
	all) backends+=("${ALL_BACKENDS[@]}") ;;
	dir | ext4 | xfs | block) backends+=("$arg") ;;
	*) die "unknown argument '$arg' (expected --build, dir, ext4, xfs, block or all)" ;;
	esac
done
((${#backends[@]} > 0)) || backends=("${ALL_BACKENDS[@]}")

[[ $(id -u) -eq 0 ]] || die "must run as root (it mounts filesystems and attaches loop devices): sudo $0 $*"

# ---------------------------------------------------------------- tools
# Administration tools (losetup, mkfs.*, umount) live in the sbin dirs.
for sbin in /usr/local/sbin /usr/sbin /sbin; do
	[[ :$PATH: == *":$sbin:"* ]] || PATH=$PATH:$sbin
done
if ! command -v go >/dev/null && [[ -x /usr/local/go/bin/go ]]; then
	PATH=/usr/local/go/bin:$PATH
fi
if ! command -v cargo >/dev/null && [[ -f ${HOME:-/root}/.cargo/env ]]; then
	# shellcheck source=/dev/null
	source "${HOME:-/root}/.cargo/env"
fi

find_csi_sanity() {
	local gobin
	if command -v go >/dev/null; then
		gobin=$(go env GOBIN)
		[[ -n $gobin ]] || gobin=$(go env GOPATH)/bin
		printf '%s/csi-sanity' "$gobin"
	else
		command -v csi-sanity || printf '%s' "${HOME:-/root}/go/bin/csi-sanity"
	fi
}
CSI_SANITY=$(find_csi_sanity)
if [[ ! -x $CSI_SANITY ]]; then
	command -v go >/dev/null || die "csi-sanity is not installed and go is not on PATH (need Go >= 1.25)"
	header "installing csi-sanity $CSI_TEST_VERSION"
	go install "$CSI_TEST_MODULE/cmd/csi-sanity@$CSI_TEST_VERSION"
fi
[[ -x $CSI_SANITY ]] || die "csi-sanity not found at $CSI_SANITY"
if command -v go >/dev/null; then
	installed=$(go version -m "$CSI_SANITY" 2>/dev/null | awk -v m="$CSI_TEST_MODULE" '$1 == "mod" && $2 == m {print $3}')
	if [[ $installed != "$CSI_TEST_VERSION" ]]; then
		printf 'warning: %s is csi-test %s, not %s\n' "$CSI_SANITY" "${installed:-unknown}" "$CSI_TEST_VERSION" >&2
	fi
fi

TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
STOWAGED=$TARGET_DIR/debug/stowaged
if ((build)) || [[ ! -x $STOWAGED ]]; then
	header "building stowaged"
	command -v cargo >/dev/null || die "cargo not found (source ~/.cargo/env?)"
	(cd "$ROOT" && cargo build -p stowage-daemon --bin stowaged)
fi
[[ -x $STOWAGED ]] || die "$STOWAGED missing after the build"

LOG_DIR=${STOWAGE_SANITY_LOG_DIR:-$TARGET_DIR/csi-sanity}
TMP_PARENT=${STOWAGE_SANITY_TMPDIR:-${TMPDIR:-/tmp}}
MAX_VOLUMES=${STOWAGE_SANITY_MAX_VOLUMES:-8}
SUITE_TIMEOUT=${STOWAGE_SANITY_TIMEOUT:-20m}
read -r -a EXTRA_ARGS <<<"${CSI_SANITY_ARGS:-}"
mkdir -p "$LOG_DIR"

# ---------------------------------------------------------------- cleanup
# State of the run in progress, undone by the EXIT trap whatever happens.
CUR_TMP=""
CUR_DAEMON_PID=""
CUR_SANITY_PID=""
CUR_TAIL_PID=""

# Stop what the current run started and remove its temp dir.
# Returns 1 if something could not be released.
finish_run() {
	local status=0
	if [[ -n $CUR_SANITY_PID ]]; then
		stowage_stop_pid "$CUR_SANITY_PID" 10 || status=1
		CUR_SANITY_PID=""
	fi
	if [[ -n $CUR_TAIL_PID ]]; then
		stowage_stop_pid "$CUR_TAIL_PID" 2 || true
		CUR_TAIL_PID=""
	fi
	if [[ -n $CUR_DAEMON_PID ]]; then
		stowage_stop_pid "$CUR_DAEMON_PID" 10 || status=1
		CUR_DAEMON_PID=""
	fi
	if [[ -n $CUR_TMP ]]; then
		stowage_remove_dir "$CUR_TMP" || status=1
		CUR_TMP=""
	fi
	return "$status"
}

# shellcheck disable=SC2317 # invoked by the EXIT trap
on_exit() {
	local rc=$?
	if [[ -n $CUR_TMP || -n $CUR_DAEMON_PID || -n $CUR_SANITY_PID ]]; then
		printf 'csi-sanity.sh: cleaning up after an interrupted run\n' >&2
		finish_run || rc=1
	fi
	exit "$rc"
}
trap on_exit EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---------------------------------------------------------------- reporting
# parse_junit FILE: print the skipped and failed specs, then a last line
# "COUNTS passed failed skipped pending".
parse_junit() {
	python3 - "$1" <<'PY'
import sys
import xml.etree.ElementTree as ET

root = ET.parse(sys.argv[1]).getroot()
cases = root.iter("testcase")
counts = {"passed": 0, "failed": 0, "skipped": 0, "pending": 0}
skipped, failed = [], []
for case in cases:
    name = case.get("name", "")
    status = case.get("status", "")
    is_spec = name.startswith("[It]")
    label = name[len("[It]"):].strip() if is_spec else name
    if status == "passed":
        if is_spec:
            counts["passed"] += 1
    elif status == "skipped":
        el = case.find("skipped")
        msg = el.get("message", "") if el is not None else ""
        msg = msg[len("skipped - "):] if msg.startswith("skipped - ") else ""
        if is_spec:
            counts["skipped"] += 1
            skipped.append((label, msg))
    elif status == "pending":
        if is_spec:
            counts["pending"] += 1
    else:
        # failed, timedout, aborted, panicked, interrupted; a suite node
        # (BeforeSuite...) that fails counts as a failure too.
        el = case.find("failure")
        if el is None:
            el = case.find("error")
        msg = el.get("message", "") if el is not None else ""
        counts["failed"] += 1
        failed.append((label, status, msg))

# Specs that csi-sanity skipped itself (capability not offered, flag not
# set) carry a reason. Ginkgo also marks specs "skipped" that never ran
# (filtered out by --ginkgo.focus/skip, or after a suite timeout): no reason.
not_run = 0
for label, msg in skipped:
    if msg.strip():
        print(f"  SKIPPED {label}  ({msg.strip()})")
    else:
        not_run += 1
if not_run:
    print(f"  ({not_run} skipped specs did not run at all: filtered out by"
          " --ginkgo.focus/--ginkgo.skip, or the suite stopped early)")
for label, status, msg in failed:
    print(f"  FAILED  {label}  [{status}]")
    lines = msg.strip().splitlines()
    for line in lines[:12]:
        print(f"          {line}")
    if len(lines) > 12:
        print(f"          ... ({len(lines) - 12} more lines in the log)")
print("COUNTS {passed} {failed} {skipped} {pending}".format(**counts))
PY
}

# parse_summary_line LOG: fallback when there is no junit report; reads
# ginkgo's "N Passed | N Failed | [N Flaked | ]N Pending | N Skipped" line.
parse_summary_line() {
	local line p f pe s
	line=$(sed 's/\x1b\[[0-9;]*m//g' "$1" | grep -E '[0-9]+ Passed \| [0-9]+ Failed \|' | tail -n 1 || true)
	[[ -n $line ]] || return 1
	p=$(grep -oE '[0-9]+ Passed' <<<"$line" | grep -oE '[0-9]+')
	f=$(grep -oE '[0-9]+ Failed' <<<"$line" | grep -oE '[0-9]+')
	pe=$(grep -oE '[0-9]+ Pending' <<<"$line" | grep -oE '[0-9]+' || echo 0)
	s=$(grep -oE '[0-9]+ Skipped' <<<"$line" | grep -oE '[0-9]+' || echo 0)
	echo "COUNTS $p $f $s $pe"
}

show_tail() {
	local what=$1 file=$2 n=${3:-60}
	printf -- '---- last %d lines of %s (%s) ----\n' "$n" "$what" "$file"
	tail -n "$n" "$file" 2>/dev/null || true
	printf -- '---- end of %s ----\n' "$what"
}

# ---------------------------------------------------------------- one run
# run_backend records its result (record) and sets status=1 on failure; it
# returns 0 so that errexit stays in force inside it.
status=0
total_passed=0
total_failed=0
total_skipped=0
summaries=()

record() {
	local backend=$1 passed=$2 failed=$3 skipped=$4 note=${5:-}
	total_passed=$((total_passed + passed))
	total_failed=$((total_failed + failed))
	total_skipped=$((total_skipped + skipped))
	summaries+=("csi-sanity $backend: $passed passed, $failed failed, $skipped skipped${note:+  ($note)}")
	((failed == 0)) || status=1
	if [[ -n ${STOWAGE_SANITY_RESULTS:-} ]]; then
		printf '%s %d %d %d\n' "$backend" "$passed" "$failed" "$skipped" >>"$STOWAGE_SANITY_RESULTS"
	fi
}

write_parameters() {
	local backend=$1 file=$2
	case $backend in
	dir) printf 'kind: dir\n' >"$file" ;;
	ext4) printf 'kind: loop\nfsType: ext4\n' >"$file" ;;
	xfs) printf 'kind: loop\nfsType: xfs\n' >"$file" ;;
	block) printf 'kind: loop\n' >"$file" ;;
	esac
}

# Flags a back end's run adds: mutable parameters to modify with, access type.
backend_args() {
	local backend=$1 dir=$2
	case $backend in
	dir)
		printf 'compression: zstd\n' >"$dir/mutable.yaml"
		echo "--csi.testvolumemutableparameters=$dir/mutable.yaml"
		;;
	block) echo "--csi.testvolumeaccesstype=block" ;;
	esac
	case $backend in
	ext4 | xfs | block)
		# Loop volumes are preallocated files on the host's filesystem: the attach
		# limit spec alone makes 9 volumes, 90 GiB at csi-sanity's default 10 GiB.
		echo "--csi.testvolumesize=$((1 << 30))"
		echo "--csi.testvolumeexpandsize=$((2 << 30))"
		;;
	esac
}

run_backend() {
	local backend=$1
	local logs=$LOG_DIR/$backend
	local daemon_log=$logs/stowaged.log sanity_log=$logs/csi-sanity.log junit=$logs/junit.xml
	local sock params rc i counts passed failed skipped pending note=""

	header "csi-sanity: $backend"
	rm -rf "$logs"
	mkdir -p "$logs"

	mkdir -p "$TMP_PARENT"
	CUR_TMP=$(mktemp -d "$TMP_PARENT/stowage-sanity-$backend.XXXXXX")
	CUR_TMP=$(realpath "$CUR_TMP")
	sock=$CUR_TMP/csi.sock
	params=$CUR_TMP/parameters.yaml
	mkdir -p "$CUR_TMP/state"
	write_parameters "$backend" "$params"
	cp "$params" "$logs/parameters.yaml"
	echo "temp dir:   $CUR_TMP"
	echo "logs:       $logs"
	echo "parameters: $(tr '\n' ' ' <"$params")"

	# The daemon.
	RUST_LOG=${RUST_LOG:-info} "$STOWAGED" \
		--endpoint "unix://$sock" \
		--state-dir "$CUR_TMP/state" \
		--node-id "stowage-sanity-$(hostname -s 2>/dev/null || echo node)" \
		--pool-size 64GiB \
		--max-volumes-per-node "$MAX_VOLUMES" \
		</dev/null >"$daemon_log" 2>&1 &
	CUR_DAEMON_PID=$!
	echo "stowaged:   pid $CUR_DAEMON_PID"

	for ((i = 0; i < 300; i++)); do
		[[ -S $sock ]] && break
		if ! kill -0 "$CUR_DAEMON_PID" 2>/dev/null; then
			rc=0
			wait "$CUR_DAEMON_PID" || rc=$?
			CUR_DAEMON_PID=""
			echo "FAIL: stowaged exited with status $rc before creating $sock" >&2
			show_tail "stowaged log" "$daemon_log"
			finish_run || true
			record "$backend" 0 1 0 "daemon did not start"
			return 0
		fi
		sleep 0.1
	done
	if [[ ! -S $sock ]]; then
		echo "FAIL: stowaged did not create $sock within 30 s" >&2
		show_tail "stowaged log" "$daemon_log"
		finish_run || true
		record "$backend" 0 1 0 "daemon did not start"
		return 0
	fi
	echo "socket up after $((i / 10)).$((i % 10)) s"

	# csi-sanity. The staging and mount dirs must not exist yet: csi-sanity
	# creates them (mkdir, not mkdir -p) and removes them at the end.
	local -a backend_flags=()
	mapfile -t backend_flags < <(backend_args "$backend" "$CUR_TMP")
	local -a args=(
		"--csi.endpoint=unix://$sock"
		"--csi.testvolumeparameters=$params"
		"--csi.stagingdir=$CUR_TMP/staging"
		"--csi.mountdir=$CUR_TMP/mount"
		"--csi.testnodevolumeattachlimit"
		"${backend_flags[@]}"
		"--ginkgo.v"
		"--ginkgo.no-color"
		"--ginkgo.timeout=$SUITE_TIMEOUT"
		"--ginkgo.junit-report=$junit"
		"${EXTRA_ARGS[@]}"
	)
	printf '%q ' "$CSI_SANITY" "${args[@]}" >"$logs/command"
	echo "command:    $(cat "$logs/command")"
	"$CSI_SANITY" "${args[@]}" </dev/null >"$sanity_log" 2>&1 &
	CUR_SANITY_PID=$!
	if [[ ${STOWAGE_SANITY_VERBOSE:-0} == 1 ]]; then
		tail -n +1 -f --pid="$CUR_SANITY_PID" "$sanity_log" &
		CUR_TAIL_PID=$!
	fi
	rc=0
	wait "$CUR_SANITY_PID" || rc=$?
	CUR_SANITY_PID=""
	if [[ -n $CUR_TAIL_PID ]]; then
		wait "$CUR_TAIL_PID" 2>/dev/null || true
		CUR_TAIL_PID=""
	fi
	echo "csi-sanity exit status: $rc"

	# Results.
	counts=""
	if [[ -s $junit ]]; then
		local report
		if report=$(parse_junit "$junit"); then
			grep -v '^COUNTS ' <<<"$report" || true
			counts=$(grep '^COUNTS ' <<<"$report" | tail -n 1)
		else
			echo "warning: could not parse $junit" >&2
		fi
	fi
	if [[ -z $counts ]]; then
		counts=$(parse_summary_line "$sanity_log") || counts=""
		[[ -z $counts ]] || echo "(counts from csi-sanity's summary line: no junit report)"
	fi
	if [[ -z $counts ]]; then
		counts="COUNTS 0 1 0 0"
		note="csi-sanity reported no result"
	fi
	read -r _ passed failed skipped pending <<<"$counts"
	if ((rc != 0 && failed == 0)); then
		failed=1
		note="csi-sanity exited with status $rc"
	fi
	((pending == 0)) || echo "($pending pending specs)"

	# The daemon must have survived the suite, without a panic.
	if ! kill -0 "$CUR_DAEMON_PID" 2>/dev/null; then
		failed=$((failed + 1))
		note="${note:+$note; }stowaged died during the run"
	fi
	if grep -q 'panicked at' "$daemon_log"; then
		failed=$((failed + 1))
		note="${note:+$note; }stowaged panicked"
		grep -A5 'panicked at' "$daemon_log" | head -n 30
	fi

	if ((failed > 0)); then
		[[ -s $junit ]] || show_tail "csi-sanity output" "$sanity_log" 80
		show_tail "stowaged log" "$daemon_log"
	fi

	echo "cleaning up $CUR_TMP"
	if ! finish_run; then
		failed=$((failed + 1))
		note="${note:+$note; }cleanup left mounts or loop devices behind"
	fi
	record "$backend" "$passed" "$failed" "$skipped" "$note"
	echo "${summaries[-1]}"
}

# ---------------------------------------------------------------- main
for backend in "${backends[@]}"; do
	run_backend "$backend"
done

header "csi-sanity summary"
printf '%s\n' "${summaries[@]}"
echo "csi-sanity total: $total_passed passed, $total_failed failed, $total_skipped skipped"
echo "logs and junit reports: $LOG_DIR"
exit "$status"
