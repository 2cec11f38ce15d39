#!/usr/bin/env bash
# The upstream storage e2e suite (e2e.test of Kubernetes v1.34.3, external driver
# mode, hack/k8s/e2e-driver.yaml) against Stowage in the cluster of
# hack/k8s/cluster.sh, which runs this with --e2e after its own checks. Needs the
# environment cluster.sh exports.
#
# The suite's images are built here and found through its registry override
# (KUBE_TEST_REPO_LIST): busybox, agnhost (built from the same module) and pause,
# under localhost/e2e.
#
# STOWAGE_E2E_FOCUS (a regular expression over spec names) picks the suites; the
# default is the ones that fit a CI run. Serial, Disruptive, Slow, Flaky and Windows
# specs are skipped (other Feature specs run: the snapshot suites carry one), or
# what STOWAGE_E2E_SKIP says. STOWAGE_E2E_DRIVER names another driver file
# (hack/k8s/e2e-driver-pool-image.yaml: loop volumes inside the pool).
# Prints, per suite, N passed, N failed, N skipped (from the JUnit report), and
# "e2e: N passed, N failed, N skipped" last.
set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
# shellcheck source=hack/k8s/lib.sh
source "$ROOT/hack/k8s/lib.sh"

FOCUS=${STOWAGE_E2E_FOCUS:-'External.Storage.*(\] provisioning |\] volumes |\] volumeMode |\] snapshottable |\] volume-expand |\] multiVolume |\] ephemeral |\] capacity |\] fsgroupchangepolicy )'}
SKIP=${STOWAGE_E2E_SKIP:-'\[Serial\]|\[Disruptive\]|\[Slow\]|\[Flaky\]|\[Feature:Windows\]'}
# Outside $W, so that the report outlives the way down (the next run replaces it).
OUT=$W-e2e
rm -rf "$OUT" && mkdir -p "$OUT"

[[ -x $BIN/e2e.test && -x $BIN/agnhost ]] || {
	echo "e2e.sh: run hack/k8s/build.sh (without --no-e2e) first" >&2
	exit 1
}

BUSYBOX_APPLETS=1 image localhost/e2e/busybox:1.37.0-1 "" /bin/busybox:/bin/busybox
BUSYBOX_APPLETS=1 image localhost/e2e/agnhost:2.56 /agnhost "$BIN/agnhost:/agnhost" \
	/bin/busybox:/bin/busybox
image localhost/e2e/pause:3.10.1 /pause "$BIN/pause:/pause"
# The exec specs run a shell in the suite's nginx image; no nginx is needed for that,
# so a busybox stands in under its name.
BUSYBOX_APPLETS=1 image localhost/e2e/nginx:1.14-4 "" /bin/busybox:/bin/busybox
# Likewise the multiVolume suite's pods, which run a shell and GNU dd (oflag=nocache,
# which busybox's dd lacks) in jessie-dnsutils: this machine's dd and dash (busybox's
# sh runs its own dd whatever PATH holds) with their library.
BUSYBOX_APPLETS=1 image localhost/e2e/jessie-dnsutils:1.7 "" /bin/busybox:/bin/busybox \
	/usr/bin/dd:/bin/dd /bin/dash:/bin/sh \
	/lib/x86_64-linux-gnu/libc.so.6:/lib/x86_64-linux-gnu/libc.so.6 \
	/lib64/ld-linux-x86-64.so.2:/lib64/ld-linux-x86-64.so.2
cat >"$OUT/repo-list.yaml" <<EOF
promoterE2eRegistry: localhost/e2e
gcRegistry: localhost/e2e
sigStorageRegistry: localhost/e2e/sig-storage
EOF

t0=$SECONDS
KUBE_TEST_REPO_LIST=$OUT/repo-list.yaml "$BIN/e2e.test" \
	--kubeconfig="$KC" --kubectl-path="$BIN/kubectl" --provider=local \
	--repo-root="$ROOT" -storage.testdriver="${STOWAGE_E2E_DRIVER:-hack/k8s/e2e-driver.yaml}" \
	--ginkgo.focus="$FOCUS" --ginkgo.skip="$SKIP" \
	--ginkgo.timeout=60m --ginkgo.no-color \
	--ginkgo.junit-report="$OUT/junit.xml" \
	--report-dir="$OUT" >"$OUT/e2e.log" 2>&1
rc=$?
echo "(e2e.test: $((SECONDS - t0)) s, exit $rc; log $OUT/e2e.log)"
tail -n 30 "$OUT/e2e.log"

python3 - "$OUT/junit.xml" <<'EOF'
import re, sys, collections
import xml.etree.ElementTree as ET

root = ET.parse(sys.argv[1]).getroot()
per = collections.defaultdict(lambda: [0, 0, 0])
failed = []
for tc in root.iter("testcase"):
    name = tc.get("name", "")
    m = re.search(r"\[Testpattern: ([^\]]*)\] (\S+)", name)
    if not m:
        continue
    suite = m.group(2)
    if tc.find("skipped") is not None:
        per[suite][2] += 1
    elif tc.find("failure") is not None or tc.find("error") is not None:
        per[suite][1] += 1
        failed.append(name)
    else:
        per[suite][0] += 1
total = [0, 0, 0]
for suite in sorted(per):
    p, f, s = per[suite]
    total = [total[0] + p, total[1] + f, total[2] + s]
    print(f"e2e {suite}: {p} passed, {f} failed, {s} skipped")
for name in failed:
    print(f"FAILED: {name}")
print(f"e2e: {total[0]} passed, {total[1]} failed, {total[2]} skipped")
sys.exit(1 if total[1] else 0)
EOF
