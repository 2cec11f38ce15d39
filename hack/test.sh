#!/usr/bin/env bash
# The project's test command:
#
#   sudo hack/test.sh
#
# On a Debian bookworm machine, as root (privileged tests run, never skip):
#   1. installs what is missing: system packages, csi-sanity, helm; checks loop and FUSE
#   2. cargo fmt --check, cargo clippy -D warnings, cargo build --bins
#   3. cargo test with STOWAGE_PRIVILEGED_TESTS=required; fails on any
#      SKIPPED-PRIVILEGED marker and on any ignored test
#   4. hack/csi-sanity.sh (dir, loop+ext4, loop+xfs, loop as raw block)
#   5. prints "N passed, N failed, N skipped" as its last line; exits non-zero
#      if anything failed
#
# A failing step does not stop the later ones (except that csi-sanity needs a
# successful build), so one run shows everything that is wrong.
#
# Environment: CARGO_TARGET_DIR (target), STOWAGE_TEST_LOG_DIR
# (target/test-logs), CSI_SANITY_ARGS and STOWAGE_SANITY_* (see hack/csi-sanity.sh).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

CSI_TEST_MODULE=github.com/kubernetes-csi/csi-test/v5
CSI_TEST_VERSION=v5.5.0
# helm renders and lints the chart in tests/tests/helm_chart.rs.
HELM_MODULE=helm.sh/helm/v4
HELM_VERSION=v4.3.2
APT_PACKAGES=(e2fsprogs xfsprogs btrfs-progs fuse3 util-linux iproute2 curl python3 podman runc busybox-static)

step_started=$SECONDS
header() {
	printf '\n==== %s ====\n' "$*"
	step_started=$SECONDS
}
took() {
	printf '(%s: %d s)\n' "$1" $((SECONDS - step_started))
}
die() {
	printf '\nhack/test.sh: FATAL: %s\n' "$*" >&2
	exit 1
}

# Steps that failed, each counted once in the final "failed" total (on top
# of the individual failing tests and specs).
failed_steps=()
fail_step() {
	failed_steps+=("$1")
	printf 'FAILED: %s\n' "$1" >&2
}

# ------------------------------------------------------------ root
if [[ $(id -u) -ne 0 ]]; then
	cat >&2 <<EOF
hack/test.sh must run as root: the privileged tests (mounts, loop devices,
FUSE, namespaces) and csi-sanity are part of the suite and never skip.
Run it as:  sudo hack/test.sh
EOF
	exit 1
fi

# ------------------------------------------------------------ toolchains
# Administration tools (losetup, mkfs.*, umount) live in the sbin dirs.
for sbin in /usr/local/sbin /usr/sbin /sbin; do
	[[ :$PATH: == *":$sbin:"* ]] || PATH=$PATH:$sbin
done
# sudo resets PATH; find the Rust and Go toolchains where they usually are.
if ! command -v cargo >/dev/null; then
	for env_file in "${HOME:-/root}/.cargo/env" /root/.cargo/env; do
		if [[ -f $env_file ]]; then
			# shellcheck source=/dev/null
			source "$env_file"
			break
		fi
	done
fi
if ! command -v cargo >/dev/null && [[ -n ${SUDO_USER:-} ]]; then
	user_home=$(getent passwd "$SUDO_USER" | cut -d: -f6)
	if [[ -n $user_home && -x $user_home/.cargo/bin/cargo ]]; then
		export CARGO_HOME=$user_home/.cargo RUSTUP_HOME=$user_home/.rustup
		PATH=$CARGO_HOME/bin:$PATH
	fi
fi
if ! command -v go >/dev/null && [[ -x /usr/local/go/bin/go ]]; then
	PATH=/usr/local/go/bin:$PATH
fi
export PATH

header "toolchains"
command -v cargo >/dev/null || die "cargo not found: install Rust with rustup (for root, or run with sudo -E)"
cargo --version
cargo fmt --version || die "rustfmt is missing: rustup component add rustfmt"
cargo clippy --version || die "clippy is missing: rustup component add clippy"
command -v go >/dev/null || die "go not found: csi-sanity needs Go >= 1.25 (Debian's golang package is too old); install it under /usr/local/go"
go version

# ------------------------------------------------------------ system packages
header "system packages"
missing=()
for pkg in "${APT_PACKAGES[@]}"; do
	if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q '^install ok installed$'; then
		missing+=("$pkg")
	fi
done
if ((${#missing[@]} > 0)); then
	echo "installing: ${missing[*]}"
	export DEBIAN_FRONTEND=noninteractive
	apt-get update
	apt-get install -y --no-install-recommends "${missing[@]}"
else
	echo "all present: ${APT_PACKAGES[*]}"
fi
for tool in mkfs.ext4 mkfs.xfs mkfs.btrfs btrfs losetup mount umount fusermount3 ip python3 fincore filefrag; do
	command -v "$tool" >/dev/null || die "$tool not found after installing ${APT_PACKAGES[*]}"
done

# ------------------------------------------------------------ kernel
header "kernel: loop devices and FUSE"
if [[ ! -e /dev/loop-control ]]; then
	modprobe loop 2>/dev/null || true
fi
[[ -e /dev/loop-control ]] || die "/dev/loop-control is missing: the loop driver is not available (modprobe loop; or, in a container, give it /dev/loop-control and /dev/loopN)"
free_loop=$(losetup --find) || die "no free loop device (losetup --find failed)"
echo "loop: ok (next free: $free_loop)"
if [[ ! -e /dev/fuse ]]; then
	modprobe fuse 2>/dev/null || true
fi
[[ -c /dev/fuse ]] || die "/dev/fuse is missing: FUSE is not available (modprobe fuse)"
echo "fuse: ok"

# ------------------------------------------------------------ csi-sanity
header "csi-sanity $CSI_TEST_VERSION"
gobin=$(go env GOBIN)
[[ -n $gobin ]] || gobin=$(go env GOPATH)/bin
if [[ ! -x $gobin/csi-sanity ]]; then
	go install "$CSI_TEST_MODULE/cmd/csi-sanity@$CSI_TEST_VERSION"
fi
[[ -x $gobin/csi-sanity ]] || die "csi-sanity missing at $gobin/csi-sanity after go install"
go version -m "$gobin/csi-sanity" | awk -v m="$CSI_TEST_MODULE" '$1 == "mod" && $2 == m {print "csi-sanity: " $2 " " $3}'
if ! go version -m "$gobin/helm" 2>/dev/null | grep -q "mod[[:space:]]*$HELM_MODULE[[:space:]]*$HELM_VERSION"; then
	CGO_ENABLED=0 go install "$HELM_MODULE/cmd/helm@$HELM_VERSION"
fi
[[ -x $gobin/helm ]] || die "helm missing at $gobin/helm after go install"
export STOWAGE_HELM=$gobin/helm
echo "helm: $HELM_MODULE $HELM_VERSION"

# ------------------------------------------------------------ Rust
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
LOG_DIR=${STOWAGE_TEST_LOG_DIR:-$TARGET_DIR/test-logs}
mkdir -p "$LOG_DIR"

header "cargo fmt --all --check"
cargo fmt --all --check || fail_step "cargo fmt"
took fmt

header "cargo clippy --workspace --all-targets -- -D warnings"
cargo clippy --workspace --all-targets -- -D warnings || fail_step "cargo clippy"
took clippy

header "cargo build --workspace --bins"
build_ok=1
cargo build --workspace --bins || {
	build_ok=0
	fail_step "cargo build"
}
took build

header "cargo test --workspace --no-fail-fast -- --test-threads=2  (STOWAGE_PRIVILEGED_TESTS=required)"
export STOWAGE_PRIVILEGED_TESTS=required
test_log=$LOG_DIR/cargo-test.log
test_rc=0
cargo test --workspace --no-fail-fast -- --test-threads=2 2>&1 | tee "$test_log" || test_rc=$?
took "cargo test"
echo "log: $test_log"

# Sum the libtest "test result:" lines (unit, integration and doc tests):
#   test result: ok. 12 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out; ...
read -r cargo_passed cargo_failed cargo_ignored cargo_binaries < <(
	awk '/^test result: / {
		for (i = 1; i <= NF; i++) {
			if ($(i + 1) ~ /^passed;?$/) p += $i
			if ($(i + 1) ~ /^failed;?$/) f += $i
			if ($(i + 1) ~ /^ignored;?$/) g += $i
		}
		n++
	} END { printf "%d %d %d %d\n", p, f, g, n }' "$test_log"
)
echo "cargo test totals: $cargo_passed passed; $cargo_failed failed; $cargo_ignored ignored; in $cargo_binaries test result lines"

if ((test_rc != 0)); then
	if ((cargo_failed == 0)); then
		fail_step "cargo test (exit status $test_rc with no failing test: build error or crash?)"
	else
		echo "cargo test exit status $test_rc" >&2
	fi
fi
if grep -n 'SKIPPED-PRIVILEGED' "$test_log" >"$LOG_DIR/skipped-privileged.txt"; then
	echo "Privileged tests skipped themselves; they must run here:" >&2
	cat "$LOG_DIR/skipped-privileged.txt" >&2
	fail_step "privileged tests skipped ($(wc -l <"$LOG_DIR/skipped-privileged.txt") SKIPPED-PRIVILEGED lines)"
fi
if ((cargo_ignored > 0)); then
	echo "Ignored tests (#[ignore] or \`\`\`ignore doc tests) are not allowed: every test runs here." >&2
	grep -E '^test .* \.\.\. ignored' "$test_log" >&2 || true
	grep -E '^test result: .* [1-9][0-9]* ignored' "$test_log" >&2 || true
	fail_step "ignored tests ($cargo_ignored)"
fi
if ((cargo_binaries == 0)); then
	echo "warning: cargo test printed no 'test result:' line" >&2
fi

# ------------------------------------------------------------ csi-sanity
sanity_passed=0
sanity_failed=0
sanity_skipped=0
if ((build_ok)); then
	header "hack/csi-sanity.sh"
	sanity_results=$LOG_DIR/csi-sanity-results.txt
	: >"$sanity_results"
	sanity_rc=0
	STOWAGE_SANITY_RESULTS=$sanity_results bash "$ROOT/hack/csi-sanity.sh" || sanity_rc=$?
	took csi-sanity
	while read -r _backend p f s; do
		sanity_passed=$((sanity_passed + p))
		sanity_failed=$((sanity_failed + f))
		sanity_skipped=$((sanity_skipped + s))
	done <"$sanity_results"
	if ((sanity_rc != 0 && sanity_failed == 0)); then
		fail_step "hack/csi-sanity.sh (exit status $sanity_rc)"
	fi
else
	header "hack/csi-sanity.sh: not run (the build failed)"
	fail_step "csi-sanity (not run: the build failed)"
fi

# ------------------------------------------------------------ summary
header "summary"
echo "cargo test  -- $cargo_passed passed; $cargo_failed failed; $cargo_ignored ignored"
echo "csi-sanity  -- $sanity_passed passed; $sanity_failed failed; $sanity_skipped skipped (specs)"
if ((${#failed_steps[@]} > 0)); then
	echo "failed steps (${#failed_steps[@]}):"
	printf '  - %s\n' "${failed_steps[@]}"
fi
total_passed=$((cargo_passed + sanity_passed))
total_failed=$((cargo_failed + sanity_failed + ${#failed_steps[@]}))
echo "$total_passed passed, $total_failed failed, $sanity_skipped skipped"
((total_failed == 0))
